#include "files/files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/fd.h"
#include "common/printable.h"
#include "common/sha256.h"
#include "common/status_util.h"
#include "proto/builtins.pb.h"
#include "proto/files.pb.h"
#include "router/context.h"
#include "files/fanout.h"
#include "files/file_writer.h"
#include "files/kernel_copy.h"
#include "files/origin.h"
#include "files/paths.h"
#include "files/scan.h"
#include "files/service.h"

namespace grove {

using files_internal::BaseName;
using files_internal::CheckListing;
using files_internal::CopyHeldFile;
using files_internal::Fanout;
using files_internal::FileWriter;
using files_internal::Join;
using files_internal::KernelCopies;
using files_internal::Matches;
using files_internal::OriginOf;
using files_internal::PathError;
using files_internal::PullDestination;
using files_internal::RegisterFileFunctions;
using files_internal::Scan;

namespace {

// A transfer's progress, passed to TransferOptions::progress on the transferring thread. It
// never goes back: a push whose kernel copies got part way before a target asked for the bytes
// streams that file from its start, and is reported again only past where the copies were.
// Thread-compatible.
class Progress {
 public:
  Progress(const TransferOptions& options, int64_t total) : options_(options), total_(total) {
    if (options_.progress) options_.progress(0, total_);
  }
  void Report(int64_t done) {
    if (done <= shown_ || !options_.progress) return;
    shown_ = done;
    options_.progress(done, total_);
  }

 private:
  const TransferOptions& options_;
  const int64_t total_;
  int64_t shown_ = 0;
};

int64_t TotalBytes(const std::vector<v1::FileEntry>& entries) {
  int64_t total = 0;
  for (const v1::FileEntry& e : entries) total += e.kind() == v1::FileEntry::FILE ? e.size() : 0;
  return total;
}


}  // namespace

bool TransferSummary::ok() const {
  for (const TargetResult& r : results) {
    if (!r.status.ok()) return false;
  }
  return true;
}


absl::StatusOr<TransferSummary> PushFiles(Router& router, const std::vector<ContextId>& targets,
                                          const std::string& src, const std::string& dest,
                                          const TransferOptions& options) {
  if (dest.empty() || dest[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("push: '", dest, "' is not an absolute path"));
  }
  std::vector<v1::FileEntry> entries;
  absl::Status scanned = Scan(src, "", options.recursive, /*hash=*/false, 0, router.name(),
                              &entries);
  if (!scanned.ok()) return scanned;
  TransferSummary summary;
  summary.entries = static_cast<int64_t>(entries.size());
  // Where the copy goes in each target: inside `dest` when that is a directory there.
  std::map<std::string, std::vector<uint64_t>> by_root;
  {
    std::vector<std::future<absl::StatusOr<v1::StatReply>>> stats;
    v1::StatRequest stat;
    stat.set_path(dest);
    for (ContextId t : targets) {
      stats.push_back(Context(&router, t, "").CallAsync<v1::StatReply>("grove.file_stat", stat,
                                                                      options.call));
    }
    for (size_t i = 0; i < targets.size(); ++i) {
      absl::StatusOr<v1::StatReply> st = stats[i].get();
      if (!st.ok()) {
        summary.results.push_back({targets[i], st.status()});
        continue;
      }
      std::string root = st->is_directory() ? Join(dest, BaseName(src)) : dest;
      by_root[root].push_back(targets[i].value());
    }
  }
  const int64_t total = TotalBytes(entries) * static_cast<int64_t>(by_root.size());
  int64_t done = 0;
  Progress progress(options, total);
  const uint64_t self = router.id().value();
  std::set<uint64_t> streamed;  // Targets that cannot copy in the kernel (grove.file_copy).
  for (auto& [root, group] : by_root) {
    std::vector<uint64_t> live = group;
    auto drop_failed = [&summary, &live](std::vector<TargetResult> results) {
      for (TargetResult& r : results) {
        if (r.status.ok()) continue;
        live.erase(std::remove(live.begin(), live.end(), r.id.value()), live.end());
        summary.results.push_back(std::move(r));
      }
    };
    for (const v1::FileEntry& entry : entries) {
      if (live.empty()) break;
      if (options.call.cancel != nullptr && options.call.cancel->cancelled()) {
        return absl::CancelledError(absl::StrCat("push of ", src, " cancelled"));
      }
      const std::string path = Join(root, entry.path());
      const bool has_bytes = entry.kind() == v1::FileEntry::FILE && entry.size() > 0;
      const std::string local = Join(src, entry.path());
      UniqueFd fd;
      std::vector<uint64_t> stream = live;
      // The source as it was opened: what a kernel copy opens, and what the streamed bytes
      // are checked against before the last chunk goes (a file rewritten or grown meanwhile
      // is never committed anywhere).
      absl::StatusOr<v1::Origin> origin = v1::Origin();
      if (has_bytes) {
        fd.Reset(::open(local.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd.valid()) return PathError(errno, "read", local, router.name());
        origin = OriginOf(fd.get(), local, router.name());
        if (!origin.ok()) return origin.status();
      }
      if (has_bytes && options.kernel_copy) {
        // Every target that can copies in the kernel, all at once; the rest get the bytes.
        v1::CopyRequest copy;
        copy.set_dest(path);
        *copy.mutable_entry() = entry;
        *copy.mutable_origin() = *origin;
        stream.clear();
        std::vector<uint64_t> copying;
        for (uint64_t t : live) {
          (t == self || streamed.count(t) != 0 ? stream : copying).push_back(t);
        }
        std::vector<TargetResult> failed;
        for (auto& [t, reply] : KernelCopies(router, copying, copy, options.call,
                                             [&](int64_t least) {
                                               progress.Report(done + least);
                                             })) {
          if (!reply.ok()) {
            failed.push_back({ContextId(t), reply.status()});
          } else if (!reply->copied()) {
            streamed.insert(t);
            stream.push_back(t);
          }
        }
        drop_failed(std::move(failed));
        if (stream.empty()) {
          summary.bytes += entry.size();
          done += entry.size();
          progress.Report(done);
          continue;
        }
      }
      Fanout fanout(router, stream, options, options.call.parent);
      fanout.Open(entry, path, false);
      absl::Status changed;
      if (has_bytes) {
        std::string buffer;
        Sha256 sha;  // Sent with the last chunk (the entry went without it: see Scan).
        for (int64_t offset = 0; offset < entry.size();) {
          buffer.resize(static_cast<size_t>(std::min(options.chunk_bytes, entry.size() - offset)));
          ssize_t n = ::pread(fd.get(), buffer.data(), buffer.size(), offset);
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            return n == 0 ? absl::DataLossError(absl::StrCat(local, " shrank while it was sent"))
                          : PathError(errno, "read", local, router.name());
          }
          buffer.resize(static_cast<size_t>(n));
          sha.Update(buffer.data(), buffer.size());
          const bool last = offset + n == entry.size();
          if (last && (origin->size() != entry.size() || !Matches(fd.get(), *origin))) {
            changed = absl::DataLossError(absl::StrCat(
                local, " in context ", router.name(), " changed while it was sent"));
            fanout.Abort();  // The receivers drop what they wrote.
            break;
          }
          if (fanout.Write(offset, buffer, last ? sha.HexDigest() : "") == 0) break;
          offset += n;
          summary.bytes += n;
          done += n;
          progress.Report(done);
        }
      }
      std::vector<TargetResult> results = fanout.Finish();
      if (!changed.ok()) {
        for (TargetResult& r : results) r.status = changed;
      }
      drop_failed(std::move(results));
    }
    // Directories get their times once their contents are in place, deepest first.
    for (auto it = entries.rbegin(); it != entries.rend() && !live.empty(); ++it) {
      if (it->kind() != v1::FileEntry::DIRECTORY) continue;
      Fanout fanout(router, live, options, options.call.parent);
      fanout.Open(*it, Join(root, it->path()), true);
      drop_failed(fanout.Finish());
    }
    for (uint64_t t : live) summary.results.push_back({ContextId(t), absl::OkStatus()});
  }
  return summary;
}

absl::StatusOr<TransferSummary> PullFiles(Router& router, ContextId from, const std::string& src,
                                          const std::string& dest, const TransferOptions& options) {
  Context remote(&router, from, "");
  v1::ListRequest list;
  list.set_path(src);
  list.set_recursive(options.recursive);
  list.set_without_digests(options.kernel_copy);  // Asked for once a file must be streamed.
  absl::StatusOr<v1::ListReply> listed =
      remote.Call<v1::ListReply>("grove.file_list", list, options.call);
  if (!listed.ok()) return listed.status();
  bool stream = !options.kernel_copy;
  std::map<std::string, std::string> digests;  // By entry path, once streaming.
  struct stat st;
  const std::string root =
      ::stat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode) ? Join(dest, BaseName(src)) : dest;
  const std::string where = router.name();
  std::vector<v1::FileEntry> entries(listed->entries().begin(), listed->entries().end());
  std::optional<ContextRecord> source = router.registry().Find(from);
  if (absl::Status checked =
          CheckListing(entries, source.has_value() ? source->name : absl::StrCat(from.value()));
      !checked.ok()) {
    return checked;
  }
  PullDestination destination(root, where);
  TransferSummary summary;
  summary.entries = static_cast<int64_t>(entries.size());
  Progress progress(options, TotalBytes(entries));
  auto fail = [&summary, from](absl::Status status) {
    summary.results.push_back({from, std::move(status)});
    return summary;
  };
  for (const v1::FileEntry& entry : entries) {
    if (options.call.cancel != nullptr && options.call.cancel->cancelled()) {
      return fail(absl::CancelledError(absl::StrCat("pull of ", src, " cancelled")));
    }
    absl::StatusOr<std::unique_ptr<FileWriter>> writer = destination.Begin(entry, false);
    if (!writer.ok()) return fail(writer.status());
    if (entry.kind() != v1::FileEntry::FILE) continue;
    if (!stream && entry.size() > 0) {
      absl::StatusOr<bool> copied =
          CopyHeldFile(router, from, Join(src, entry.path()), entry.size(), **writer, options.call,
                       [&](int64_t n) { progress.Report(summary.bytes + n); });
      absl::Status committed = copied.ok() && *copied ? (*writer)->CommitCopy() : copied.status();
      if (!committed.ok()) return fail(committed);  // The writer removes its temporary file.
      if (*copied) {
        summary.bytes += entry.size();
        progress.Report(summary.bytes);
        continue;
      }
      // This context cannot open the files there: stream this one and the rest, with digests.
      stream = true;
      list.set_without_digests(false);
      absl::StatusOr<v1::ListReply> again =
          remote.Call<v1::ListReply>("grove.file_list", list, options.call);
      if (!again.ok()) return fail(again.status());
      for (const v1::FileEntry& e : again->entries()) digests[e.path()] = e.sha256();
    }
    // Reads with `window` chunks in flight; each reply is written at its offset.
    std::vector<std::pair<int64_t, std::future<absl::StatusOr<v1::ReadReply>>>> in_flight;
    absl::Status failed;
    int64_t next = 0;
    auto collect_one = [&]() {
      auto [offset, future] = std::move(in_flight.front());
      in_flight.erase(in_flight.begin());
      absl::StatusOr<v1::ReadReply> reply = future.get();
      if (!reply.ok()) {
        if (failed.ok()) failed = reply.status();
        return;
      }
      if (failed.ok()) failed = (*writer)->Write(offset, reply->data());
      summary.bytes += static_cast<int64_t>(reply->data().size());
      progress.Report(summary.bytes);
    };
    while (next < entry.size() && failed.ok()) {
      while (static_cast<int>(in_flight.size()) >= options.window) collect_one();
      v1::ReadRequest read;
      read.set_path(Join(src, entry.path()));
      read.set_offset(next);
      read.set_length(std::min(options.chunk_bytes, entry.size() - next));
      in_flight.emplace_back(next, remote.CallAsync<v1::ReadReply>("grove.file_read", read,
                                                                  options.call));
      next += read.length();
    }
    while (!in_flight.empty()) collect_one();
    if (failed.ok()) failed = (*writer)->Commit(digests[entry.path()]);
    if (!failed.ok()) return fail(failed);  // The writer removes its temporary file.
  }
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->kind() != v1::FileEntry::DIRECTORY) continue;
    absl::StatusOr<std::unique_ptr<FileWriter>> done = destination.Begin(*it, true);
    if (!done.ok()) return fail(done.status());
  }
  summary.results.push_back({from, absl::OkStatus()});
  return summary;
}

Component FilesComponent() {
  return [](Router& router, Functions& builtins) { RegisterFileFunctions(&router, &builtins); };
}

}  // namespace grove

