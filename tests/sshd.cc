#include "tests/sshd.h"

#include <arpa/inet.h>
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

bool Accepts(const std::string& address, int port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_in a = {};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, address.c_str(), &a.sin_addr);
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

absl::StatusOr<std::unique_ptr<Sshd>> Sshd::Start(const SshdOptions& opts) {
  if (::access("/usr/sbin/sshd", X_OK) != 0) return absl::UnavailableError("no sshd installed");
  std::unique_ptr<Sshd> sshd(new Sshd());
  char tmpl[] = "/tmp/grove-sshd.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return ErrnoStatus(errno, "mkdtemp");
  sshd->dir_ = tmpl;
  const std::string& d = sshd->dir_;
  sshd->identity_ = d + "/id_ed25519";
  sshd->stranger_ = d + "/stranger_ed25519";
  sshd->known_hosts_ = d + "/known_hosts";
  sshd->port_ = opts.port != 0 ? opts.port : FreePort();
  sshd->address_ = opts.address;
  const std::string known_as =
      sshd->port_ == 22 ? opts.address : absl::StrCat("[", opts.address, "]:", sshd->port_);
  std::string setup = absl::StrCat(
      "set -e; cd ", d, "; chmod 755 .; mkdir -p /run/sshd;",
      "ssh-keygen -q -t ed25519 -N '' -f host_ed25519;",
      "ssh-keygen -q -t ed25519 -N '' -f id_ed25519;",
      "ssh-keygen -q -t ed25519 -N '' -f stranger_ed25519;",
      "mkdir -p keys; cp id_ed25519.pub keys/root; chmod 755 keys; chmod 644 keys/*;",
      "echo \"", known_as, " $(cat host_ed25519.pub)\" > known_hosts;",
      "cat > sshd_config <<EOF\n",
      "Port ", sshd->port_, "\nListenAddress ", opts.address, "\nHostKey ", d, "/host_ed25519\n",
      "PidFile ", d, "/sshd.pid\nAuthorizedKeysFile ", d, "/keys/%u\n",
      "PermitRootLogin prohibit-password\nPasswordAuthentication yes\n",
      "KbdInteractiveAuthentication no\nUsePAM yes\nStrictModes no\n",
      "AcceptEnv none\nPrintMotd no\nSubsystem sftp internal-sftp\nLogLevel ERROR\n",
      opts.extra_config, "\nEOF\n");
  if (Shell(setup) != 0) return absl::InternalError("cannot set up sshd keys and config");
  SpawnOptions options;
  if (!opts.netns.empty()) options.argv = {"ip", "netns", "exec", opts.netns};
  for (const char* arg : {"/usr/sbin/sshd", "-D", "-E"}) options.argv.push_back(arg);
  for (std::string arg : {d + "/sshd.log", std::string("-f"), d + "/sshd_config"}) {
    options.argv.push_back(arg);
  }
  absl::StatusOr<Process> process = Process::Spawn(options);
  if (!process.ok()) return process.status();
  sshd->process_ = *std::move(process);
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!Accepts(opts.address, sshd->port_)) {
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
  return absl::StrCat("ssh:", user, "@", address_, ":", port_, ",identity=", identity_,
                      ",ssh_option=UserKnownHostsFile=", known_hosts_);
}

namespace {
constexpr char kNetnsA[] = "grove-host-a";
constexpr char kNetnsB[] = "grove-host-b";
constexpr char kAliveConfig[] = "ClientAliveInterval 1\nClientAliveCountMax 2\n";
}  // namespace

absl::StatusOr<std::unique_ptr<TwoHosts>> TwoHosts::Start() {
  // Leftovers of a run that was killed first go.
  Shell(absl::StrCat("ip link del grove-r0 2>/dev/null; ip netns del ", kNetnsA,
                     " 2>/dev/null; ip netns del ", kNetnsB, " 2>/dev/null; true"));
  const std::string wiring = absl::StrCat(
      "set -e; A=", kNetnsA, "; B=", kNetnsB, ";",
      "ip netns add $A; ip netns add $B;",
      "ip link add grove-r0 type veth peer name grove-a0 netns $A;",
      "ip -n $A link add grove-a1 type veth peer name grove-b0 netns $B;",
      "ip addr add 10.77.1.1/24 dev grove-r0; ip link set grove-r0 up;",
      "ip -n $A addr add 10.77.1.2/24 dev grove-a0; ip -n $A link set grove-a0 up;",
      "ip -n $A addr add 10.77.2.1/24 dev grove-a1; ip -n $A link set grove-a1 up;",
      "ip -n $A link set lo up; ip -n $B link set lo up;",
      "ip -n $B addr add 10.77.2.2/24 dev grove-b0; ip -n $B link set grove-b0 up;",
      "ip route add 10.77.2.0/24 via 10.77.1.2;",
      "ip -n $B route add default via 10.77.2.1;",
      "ip netns exec $A sysctl -qw net.ipv4.ip_forward=1");
  std::unique_ptr<TwoHosts> hosts(new TwoHosts());
  if (Shell(wiring + " 2>/dev/null") != 0) {
    return absl::UnavailableError("cannot create network namespaces and veths here");
  }
  SshdOptions a;
  a.netns = kNetnsA;
  a.address = "10.77.1.2";
  a.port = 22;
  a.extra_config = kAliveConfig;
  absl::StatusOr<std::unique_ptr<Sshd>> sshd_a = Sshd::Start(a);
  if (!sshd_a.ok()) return sshd_a.status();
  hosts->a_ = *std::move(sshd_a);
  SshdOptions b = a;
  b.netns = kNetnsB;
  b.address = "10.77.2.2";
  absl::StatusOr<std::unique_ptr<Sshd>> sshd_b = Sshd::Start(b);
  if (!sshd_b.ok()) return sshd_b.status();
  hosts->b_ = *std::move(sshd_b);
  return hosts;
}

TwoHosts::~TwoHosts() {
  a_.reset();
  b_.reset();
  // The root end of the veth goes explicitly: a namespace lingers while the kernel still
  // holds a reference to it, and with it the veth and our routes.
  Shell(absl::StrCat("ip link del grove-r0; ip netns del ", kNetnsA, "; ip netns del ", kNetnsB));
}

absl::Status TwoHosts::CutAToB() {
  if (Shell(absl::StrCat("ip -n ", kNetnsA, " link set grove-a1 down")) != 0) {
    return absl::InternalError("cannot take the A-B veth down");
  }
  return absl::OkStatus();
}

absl::Status TwoHosts::RestoreAToB() {
  if (Shell(absl::StrCat("ip -n ", kNetnsA, " link set grove-a1 up")) != 0) {
    return absl::InternalError("cannot take the A-B veth up");
  }
  return absl::OkStatus();
}

}  // namespace grove::testing
