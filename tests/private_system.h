// A private view of the system for tests that must change it: users, groups, passwords,
// sudoers rules, home directories, a chroot.
//
// EnterPrivateSystem() moves this process into a mount namespace of its own and binds, over
// the originals, a copy of /etc and empty file systems over the places that user management,
// sudo, su and sshd write (/home, /var/log, /var/lib/sudo, /var/mail), over /tmp, and one for
// the tests' own use (/srv). Whatever the tests then add (useradd, chpasswd, /etc/sudoers.d) is seen by
// this process and every process it starts (sshd, sudo, su, the contexts), and by nobody
// else; it goes with the namespace when the last of those processes exits, however the test
// ends (SIGKILL included). Nothing is written to the host's disk.
#ifndef GROVE_TESTS_PRIVATE_SYSTEM_H_
#define GROVE_TESTS_PRIVATE_SYSTEM_H_

#include "absl/status/status.h"

namespace grove::testing {

// Enters the private view described above. Must run while the process has one thread
// (unshare(CLONE_NEWNS) refuses a process whose threads share its file system context).
// FAILED_PRECONDITION when not root; otherwise the errno of the step that failed. Once it
// failed, the process may be partly moved (a namespace with some of the mounts): the caller
// must then not change the system (PrivateSystem() stays false).
absl::Status EnterPrivateSystem();

// True once EnterPrivateSystem succeeded in this process: the tests that add users may.
bool PrivateSystem();

}  // namespace grove::testing

#endif  // GROVE_TESTS_PRIVATE_SYSTEM_H_
