// Files: push and pull files and directory trees between this context and others.
//
//   absl::StatusOr<grove::TransferSummary> pushed =
//       grove::PushFiles(master.router(), {web1.id(), web2.id()}, "/etc/app.conf", "/etc/");
//   absl::StatusOr<grove::TransferSummary> pulled =
//       grove::PullFiles(master.router(), web1.id(), "/var/log/app", "/tmp/logs", {.recursive = true});
//
// Bytes travel in chunks over the links as ordinary calls (grove.file_receive, then
// grove.file_chunk with a few chunks in flight per link), so no hop ever holds a whole file
// and small calls on the same link interleave with them. A push to several contexts sends
// each chunk once per link: a context on the way to several targets receives it once and
// relays it to each child that leads to them. Each file is written under a temporary name
// in its target directory, verified against the source's SHA-256, given the source's mode
// and modification time, and renamed into place; symlinks stay symlinks. A failure (missing
// source, no permission, disk full, a context lost mid-transfer) names the path and the
// context and leaves nothing partial under the final name: the temporary file is removed.
//
// A target on this host that may open the pushing process's files (it runs as the same user,
// or as root) copies each file in the kernel instead: it opens the sender's open file through
// /proc/<pid>/fd, copy_file_range()s it to the temporary name and renames it into place, and no
// byte travels on the links (grove.file_copy). No digest is needed where nothing was in
// transit: the copy is checked instead against the source's identity, size and change time,
// before and after, so a source changed meanwhile fails with DATA_LOSS. Another host, another
// user or another pid namespace cannot open the file; the sender learns so from the first
// file and streams to that target as above. A pull does the same the other way: the source
// holds its file open (grove.file_hold) while this context opens it through /proc and copies
// it; where it cannot, the files are listed again with their digests and streamed.
#ifndef GROVE_FILES_FILES_H_
#define GROVE_FILES_FILES_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/context_id.h"
#include "router/component.h"
#include "router/functions.h"
#include "router/router.h"

namespace grove {

struct TransferOptions {
  // Copy a directory and everything under it (otherwise a directory source is an error).
  bool recursive = false;
  // Deadline and cancellation of the whole transfer (with `call.parent`, a transfer made by a
  // function ends with that function's call, kernel copies included).
  CallOptions call;
  // Called with the bytes of file data done and the total, on the transferring thread: 0
  // first, then as chunks go or kernel copies advance (every 16 MiB), never backwards.
  std::function<void(int64_t done, int64_t total)> progress;
  int64_t chunk_bytes = int64_t{256} << 10;
  // Chunks in flight per link.
  int window = 8;
  // Copy in the kernel where both ends are on this host (see above); false streams every byte.
  bool kernel_copy = true;
};

struct TargetResult {
  ContextId id;
  absl::Status status;
};

struct TransferSummary {
  // Bytes of file data read from the source, and entries (files, directories, symlinks).
  int64_t bytes = 0;
  int64_t entries = 0;
  // One per target (a pull has one: this context).
  std::vector<TargetResult> results;
  bool ok() const;
};

// Copies `src` (a path in this context) to `dest` in every context of `targets` (each below
// this one). As with cp: when `dest` is an existing directory there, the copy goes inside it
// under `src`'s base name. Blocks until done. An error status means nothing was sent (bad
// source); otherwise each target's outcome is in the summary.
absl::StatusOr<TransferSummary> PushFiles(Router& router, const std::vector<ContextId>& targets,
                                          const std::string& src, const std::string& dest,
                                          const TransferOptions& options = {});

// Copies `src` in context `from` (below this one) to `dest` here.
absl::StatusOr<TransferSummary> PullFiles(Router& router, ContextId from, const std::string& src,
                                          const std::string& dest,
                                          const TransferOptions& options = {});

// Files as a component of each router (router/component.h): the built-ins behind the two
// (grove.file_receive, grove.file_chunk, grove.file_copy, grove.file_stat, grove.file_list,
// grove.file_read, grove.file_hold, and grove.file_stats: bytes received, relayed, copied and
// served), callable by ancestors only.
Component FilesComponent();

}  // namespace grove

#endif  // GROVE_FILES_FILES_H_
