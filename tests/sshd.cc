#include "tests/sshd.h"

#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/fd.h"

namespace grove::testing {
namespace {

int FreePort() {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) return 0;
  ::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

bool Accepts(int port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  return ::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
}

}  // namespace

int Shell(const std::string& command) {
  SpawnOptions options;
  options.argv = {"sh", "-c", command};
  absl::StatusOr<Process> p = Process::Spawn(options);
  if (!p.ok()) return -1;
  absl::StatusOr<int> status = p->Wait(absl::InfiniteFuture());
  return status.ok() ? ExitCodeOf(*status) : -1;
}

absl::StatusOr<std::unique_ptr<Sshd>> Sshd::Start() {
  if (::access("/usr/sbin/sshd", X_OK) != 0) return absl::UnavailableError("no sshd installed");
  std::unique_ptr<Sshd> sshd(new Sshd());
  char tmpl[] = "/tmp/grove-sshd.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return ErrnoStatus(errno, "mkdtemp");
  sshd->dir_ = tmpl;
  const std::string& d = sshd->dir_;
  sshd->identity_ = d + "/id_ed25519";
  sshd->stranger_ = d + "/stranger_ed25519";
  sshd->known_hosts_ = d + "/known_hosts";
  sshd->port_ = FreePort();
  std::string setup = absl::StrCat(
      "set -e; cd ", d, "; chmod 755 .; mkdir -p /run/sshd;",
      "ssh-keygen -q -t ed25519 -N '' -f host_ed25519;",
      "ssh-keygen -q -t ed25519 -N '' -f id_ed25519;",
      "ssh-keygen -q -t ed25519 -N '' -f stranger_ed25519;",
      "mkdir -p keys; cp id_ed25519.pub keys/root; chmod 755 keys; chmod 644 keys/*;",
      "echo \"[127.0.0.1]:", sshd->port_, " $(cat host_ed25519.pub)\" > known_hosts;",
      "cat > sshd_config <<EOF\n",
      "Port ", sshd->port_, "\nListenAddress 127.0.0.1\nHostKey ", d, "/host_ed25519\n",
      "PidFile ", d, "/sshd.pid\nAuthorizedKeysFile ", d, "/keys/%u\n",
      "PermitRootLogin prohibit-password\nPasswordAuthentication yes\n",
      "KbdInteractiveAuthentication no\nUsePAM yes\nStrictModes no\n",
      "AcceptEnv none\nPrintMotd no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
      "EOF\n");
  if (Shell(setup) != 0) return absl::InternalError("cannot set up sshd keys and config");
  SpawnOptions options;
  options.argv = {"/usr/sbin/sshd", "-D", "-E", d + "/sshd.log", "-f", d + "/sshd_config"};
  absl::StatusOr<Process> process = Process::Spawn(options);
  if (!process.ok()) return process.status();
  sshd->process_ = *std::move(process);
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!Accepts(sshd->port_)) {
    if (sshd->process_.TryWait()) return absl::InternalError("sshd exited at start");
    if (absl::Now() > deadline) return absl::DeadlineExceededError("sshd did not start");
    absl::SleepFor(absl::Milliseconds(10));  // Nothing to wait on but the port.
  }
  return sshd;
}

Sshd::~Sshd() {
  process_.Terminate(absl::Seconds(2));
  if (::getenv("GROVE_KEEP_SSHD") == nullptr) Shell(absl::StrCat("rm -rf ", dir_));
}

std::string Sshd::Hop(const std::string& user) const {
  return absl::StrCat("ssh:", user, "@127.0.0.1:", port_, ",identity=", identity_,
                      ",ssh_option=UserKnownHostsFile=", known_hosts_);
}

}  // namespace grove::testing
