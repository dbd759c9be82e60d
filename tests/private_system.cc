#include "tests/private_system.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/fd.h"

namespace grove::testing {
namespace {

std::atomic<bool> entered{false};

// Set in the environment of a process in the private view: its children are in it too.
constexpr char kInheritedVariable[] = "GROVE_TEST_PRIVATE_SYSTEM";

absl::Status Mount(const char* source, const char* target, const char* type,
                   unsigned long flags, const char* data, const char* what) {
  if (::mount(source, target, type, flags, data) != 0) {
    return ErrnoStatus(errno, absl::StrCat("private system: ", what, " ", target).c_str());
  }
  return absl::OkStatus();
}

bool IsDirectory(const char* path) {
  struct stat st;
  return ::lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

absl::Status EnterPrivateSystem() {
  if (::geteuid() != 0) {
    return absl::FailedPreconditionError("private system: needs root (a mount namespace)");
  }
  // A test's own helper process (the test binary run again) is in its parent's view already,
  // and must see the files its parent made there (in /tmp, say): it stays in it.
  if (const char* inherited = ::getenv(kInheritedVariable);
      inherited != nullptr && std::string(inherited) == "1") {
    entered = true;
    return absl::OkStatus();
  }
  if (::unshare(CLONE_NEWNS) != 0) return ErrnoStatus(errno, "private system: unshare");
  // Nothing mounted from here on propagates back to the host's namespace.
  if (absl::Status s = Mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr, "make private");
      !s.ok()) {
    return s;
  }
  // /srv: owned by root, 0755 (sshd's ChrootDirectory insists), holding the copy of /etc.
  if (absl::Status s = Mount("grove-test", "/srv", "tmpfs", MS_NOSUID | MS_NODEV,
                             "mode=0755,size=256m", "mount a tmpfs on");
      !s.ok()) {
    return s;
  }
  // cp -a keeps owners, modes and symlinks (sudo refuses a sudoers file not owned by root).
  if (::system("cp -a /etc /srv/etc") != 0) {
    return absl::InternalError("private system: cp -a /etc /srv/etc failed");
  }
  if (absl::Status s = Mount("/srv/etc", "/etc", nullptr, MS_BIND | MS_REC, nullptr, "bind over");
      !s.ok()) {
    return s;
  }
  for (const char* dir : {"/home", "/var/log", "/var/lib/sudo", "/var/mail", "/run/sudo"}) {
    if (!IsDirectory(dir)) continue;  // Where nothing is, nothing of the host can change.
    if (absl::Status s = Mount("grove-test", dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755",
                               "mount a tmpfs on");
        !s.ok()) {
      return s;
    }
  }
  // /tmp too: what the tests' users and contexts leave there (agent caches of users without a
  // home, temporary directories of a test that was killed) goes with the namespace.
  if (absl::Status s = Mount("grove-test", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777",
                             "mount a tmpfs on");
      !s.ok()) {
    return s;
  }
  entered = true;
  ::setenv(kInheritedVariable, "1", 1);  // For the processes this one starts.
  return absl::OkStatus();
}

bool PrivateSystem() { return entered; }

}  // namespace grove::testing
