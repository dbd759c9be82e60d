#include "files/origin.h"

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

// This kernel's boot id ("" if unreadable: no kernel copies then).
const std::string& BootId() {
  static const std::string* id = [] {
    std::string line;
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::getline(in, line);
    return new std::string(line);
  }();
  return *id;
}

// Where a context on this host can open the regular file `fd` of this process
// (grove.file_copy, grove.file_hold).
absl::StatusOr<v1::Origin> OriginOf(int fd, const std::string& path, const std::string& where) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return PathError(errno, "read", path, where);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " in context ", where, " is not a regular file"));
  }
  v1::Origin origin;
  origin.set_boot_id(BootId());
  origin.set_pid(::getpid());
  origin.set_fd(fd);
  origin.set_dev(st.st_dev);
  origin.set_ino(st.st_ino);
  origin.set_size(st.st_size);
  origin.set_ctime_ns(CtimeNs(st));
  return origin;
}

// True if the open file `fd` is still the one `origin` describes, unchanged.
bool Matches(int fd, const v1::Origin& origin) {
  struct stat st;
  return ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == origin.dev() &&
         st.st_ino == origin.ino() && st.st_size == origin.size() &&
         CtimeNs(st) == origin.ctime_ns();
}

// The sender's file named by `origin`, opened through /proc; invalid when this context cannot
// open it (another host, user or pid namespace) or it is no longer that file, unchanged.
UniqueFd OpenOrigin(const v1::Origin& origin) {
  if (origin.boot_id().empty() || origin.boot_id() != BootId() || origin.pid() <= 0 ||
      origin.fd() < 0) {
    return UniqueFd();
  }
  // O_NONBLOCK: a fifo must not hold the open; it fails the check below.
  UniqueFd fd(::open(absl::StrCat("/proc/", origin.pid(), "/fd/", origin.fd()).c_str(),
                     O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid() || !Matches(fd.get(), origin)) return UniqueFd();
  return fd;
}


}  // namespace grove::files_internal
