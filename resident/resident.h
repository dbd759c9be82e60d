// A resident master: a grove tree that outlives the program that asked for it, reachable
// through a control socket (proto/control.proto), its contexts kept by path and supervised by
// a spec. `grove up` starts one (the grove CLI itself, or any program built with grove::Main,
// which serves as one when its argv carries --grove-resident=DIR).
//
//   DIR/control.sock  the control socket (this user only: see control_socket.h)
//   DIR/master.lock   held while the master runs
//   DIR/master.log    the tree's output and log records, and the master's own (capped)
#ifndef GROVE_RESIDENT_RESIDENT_H_
#define GROVE_RESIDENT_RESIDENT_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "router/router.h"

namespace grove {

struct ResidentOptions {
  // The runtime directory (socket, lock, log). Empty: DefaultResidentDir().
  std::string dir;
  // A spec (proto/spec.proto, text format) to bring up before the master says it is ready.
  std::string spec_file;
  // Kept contexts that nobody used for this long are stopped (supervised ones never are).
  absl::Duration idle_timeout = absl::Minutes(10);
  // When >= 0: a pipe to whoever started the master, which gets "ready\n" once the socket
  // answers, or "error: ...\n" when the master cannot start; then it is closed.
  int ready_fd = -1;
  // Whether the master's own stderr goes to the log file too (a detached master has no
  // terminal).
  bool stderr_to_log = false;
};

// The flags `grove up` passes to the program it starts:
//   --grove-resident=DIR [--grove-spec=FILE] [--grove-idle-timeout=SECONDS]
//   [--grove-ready-fd=N]
// nullopt when argv has no --grove-resident; INVALID_ARGUMENT naming a bad flag.
absl::StatusOr<std::optional<ResidentOptions>> ResidentFromArgs(int argc, char** argv);
// The same flags, for starting a program as a resident master.
std::vector<std::string> ResidentArgs(const ResidentOptions& options);

// Serves `root` (a master's router) as a resident master until a Shutdown call through the
// socket, SIGTERM, SIGINT or SIGHUP; then stops supervising and returns (the master's
// destructor takes the tree down). Returns the process's exit status: 0, or 1 when it could
// not start (already running, bad spec, socket), which it says on `ready_fd` and stderr.
int ServeResident(Router& root, const ResidentOptions& options);

}  // namespace grove

#endif  // GROVE_RESIDENT_RESIDENT_H_
