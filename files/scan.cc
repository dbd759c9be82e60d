#include "files/scan.h"

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
#include "files/paths.h"

namespace grove::files_internal {

// The entries under `root` (itself first, then pre-order), files with their SHA-256 when
// `hash` (otherwise empty files only: a push hashes the others while it sends them).
absl::Status Scan(const std::string& root, const std::string& rel, bool recursive, bool hash,
                  int depth, const std::string& where, std::vector<v1::FileEntry>* out) {
  const std::string path = Join(root, rel);
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return PathError(errno, "read", path, where);
  v1::FileEntry entry;
  entry.set_path(rel);
  entry.set_mode(st.st_mode & 07777);
  entry.set_mtime_ns(MtimeNs(st));
  if (S_ISLNK(st.st_mode)) {
    std::string target(4096, '\0');
    ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
    if (n < 0) return PathError(errno, "read the symlink", path, where);
    target.resize(static_cast<size_t>(n));
    entry.set_kind(v1::FileEntry::SYMLINK);
    entry.set_symlink_target(target);
    out->push_back(std::move(entry));
    return absl::OkStatus();
  }
  if (S_ISREG(st.st_mode)) {
    // Opened even when not hashed: an unreadable file fails the scan, before anything is sent.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return PathError(errno, "read", path, where);
    entry.set_kind(v1::FileEntry::FILE);
    entry.set_size(st.st_size);
    if (hash || st.st_size == 0) {
      absl::StatusOr<std::string> digest = Sha256Of(fd.get(), path, where);
      if (!digest.ok()) return digest.status();
      // A file that says it is empty but is not (/proc, /sys): its size cannot be trusted.
      if (st.st_size == 0 && *digest != kEmptySha256) {
        return absl::FailedPreconditionError(absl::StrCat(
            path, " in context ", where, " reports a size of 0 but has contents (a /proc or "
            "/sys file?): it cannot be copied as a file; copy its contents with grove run cat"));
      }
      entry.set_sha256(*digest);
    }
    out->push_back(std::move(entry));
    return absl::OkStatus();
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " in context ", where, " is not a regular file, directory or symlink"));
  }
  if (!recursive) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " in context ", where, " is a directory (copy it with recursive)"));
  }
  if (depth > kMaxDepth) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": directories nest too deep"));
  }
  entry.set_kind(v1::FileEntry::DIRECTORY);
  out->push_back(std::move(entry));
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), ::closedir);
  if (dir == nullptr) return PathError(errno, "list", path, where);
  std::vector<std::string> names;
  for (struct dirent* e; (e = ::readdir(dir.get())) != nullptr;) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string child = rel.empty() ? name : absl::StrCat(rel, "/", name);
    if (absl::Status s = Scan(root, child, true, hash, depth + 1, where, out); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}


}  // namespace grove::files_internal
