// A real sshd on loopback for the tests that cross ssh: its own config, host key and client
// keys in a temp dir, ListenAddress 127.0.0.1 on a free port. Started per fixture and torn
// down (killed and reaped) with it.
#ifndef GROVE_TESTS_SSHD_H_
#define GROVE_TESTS_SSHD_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/process.h"

namespace grove::testing {

struct SshdOptions {
  // Run in this network namespace (`ip netns exec NETNS sshd ...`); empty: this one.
  std::string netns;
  std::string address = "127.0.0.1";
  // 0: a free port on loopback.
  int port = 0;
  // Appended to sshd_config (Match blocks, ClientAlive*).
  std::string extra_config;
};

class Sshd {
 public:
  // Starts sshd and waits until it accepts connections (from this network namespace, which
  // must route to `options.address`). UNAVAILABLE when sshd is not installed (the caller
  // skips).
  static absl::StatusOr<std::unique_ptr<Sshd>> Start(const SshdOptions& options = {});
  ~Sshd();

  int port() const { return port_; }
  // A key authorized for root and for the test users.
  const std::string& identity() const { return identity_; }
  // A key authorized for nobody.
  const std::string& stranger_identity() const { return stranger_; }
  // A known_hosts file that knows this sshd.
  const std::string& known_hosts() const { return known_hosts_; }
  const std::string& dir() const { return dir_; }
  const std::string& address() const { return address_; }
  // "ssh:USER@ADDRESS:PORT,identity=...,ssh_option=UserKnownHostsFile=..."
  std::string Hop(const std::string& user) const;

 private:
  Sshd() = default;
  std::string dir_, identity_, stranger_, known_hosts_, address_;
  int port_ = 0;
  Process process_;
};

// Two hosts on this machine: network namespaces A and B, each with its own sshd, wired
// this <-veth-> A <-veth-> B, with routes so that this namespace reaches both. A chain
// ssh:A/ssh:B really crosses two links, and CutAToB() takes the A-B veth down: a real
// network failure. The sshds drop a silent client after ~3 s (ClientAliveInterval 1).
// The destructor stops both sshds and deletes the namespaces (and so the veths).
class TwoHosts {
 public:
  // UNAVAILABLE when namespaces cannot be made here (the caller skips).
  static absl::StatusOr<std::unique_ptr<TwoHosts>> Start();
  ~TwoHosts();
  Sshd& a() { return *a_; }
  Sshd& b() { return *b_; }
  absl::Status CutAToB();
  // Takes the A-B veth up again (after CutAToB).
  absl::Status RestoreAToB();

 private:
  TwoHosts() = default;
  std::unique_ptr<Sshd> a_, b_;
};

// Runs `command` with sh -c; returns its exit status (for test setup: users, sudoers).
int Shell(const std::string& command);

}  // namespace grove::testing

#endif  // GROVE_TESTS_SSHD_H_
