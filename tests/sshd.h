// A real sshd on loopback for the tests that cross ssh: its own config, host key and client
// keys in a temp dir, ListenAddress 127.0.0.1 on a free port. Started per fixture and torn
// down (killed and reaped) with it.
#ifndef GROVE_TESTS_SSHD_H_
#define GROVE_TESTS_SSHD_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/process.h"

namespace grove::testing {

class Sshd {
 public:
  // Starts sshd and waits until it accepts connections. UNAVAILABLE when sshd is not
  // installed (the caller skips).
  static absl::StatusOr<std::unique_ptr<Sshd>> Start();
  ~Sshd();

  int port() const { return port_; }
  // A key authorized for root and for the test users.
  const std::string& identity() const { return identity_; }
  // A key authorized for nobody.
  const std::string& stranger_identity() const { return stranger_; }
  // A known_hosts file that knows this sshd.
  const std::string& known_hosts() const { return known_hosts_; }
  const std::string& dir() const { return dir_; }
  // "ssh:USER@127.0.0.1:PORT,identity=...,ssh_option=UserKnownHostsFile=..."
  std::string Hop(const std::string& user) const;

 private:
  Sshd() = default;
  std::string dir_, identity_, stranger_, known_hosts_;
  int port_ = 0;
  Process process_;
};

// Runs `command` with sh -c; returns its exit status (for test setup: users, sudoers).
int Shell(const std::string& command);

}  // namespace grove::testing

#endif  // GROVE_TESTS_SSHD_H_
