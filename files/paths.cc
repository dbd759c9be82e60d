#include "files/paths.h"

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

namespace grove::files_internal {

// "cannot create /x/y in context web1: Permission denied", with the errno's canonical code.
absl::Status PathError(int err, absl::string_view what, const std::string& path,
                       const std::string& where) {
  absl::Status base = ErrnoStatus(err, "");
  return absl::Status(base.code(), absl::StrCat("cannot ", what, " ", path, " in context ",
                                                where, base.message()));
}

// SHA-256 of the bytes of the open file `fd` (`path` and `where` name it in errors).
absl::StatusOr<std::string> Sha256Of(int fd, const std::string& path, const std::string& where) {
  Sha256 sha;
  std::string buffer(1 << 20, '\0');
  for (int64_t offset = 0;;) {
    ssize_t n = ::pread(fd, buffer.data(), buffer.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return PathError(errno, "read", path, where);
    if (n == 0) break;
    sha.Update(buffer.data(), static_cast<size_t>(n));
    offset += n;
  }
  return sha.HexDigest();
}

std::string Join(const std::string& dir, const std::string& rel) {
  if (rel.empty()) return dir;
  if (!dir.empty() && dir.back() == '/') return dir + rel;
  return absl::StrCat(dir, "/", rel);
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

int64_t MtimeNs(const struct stat& st) {
  return int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
}

int64_t CtimeNs(const struct stat& st) {
  return int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec;
}


struct timespec ToTimespec(int64_t ns) {
  struct timespec t;
  t.tv_sec = ns / 1000000000;
  t.tv_nsec = ns % 1000000000;
  return t;
}


}  // namespace grove::files_internal
