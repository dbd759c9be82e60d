// Where a resident master listens, and who may connect.
//
// The control socket is a Unix socket in a directory that only its user can enter (0700,
// owned by the user: made so, or refused when it is not). The master also checks the peer's
// uid (SO_PEERCRED) of every connection it accepts and closes those of another uid, so a
// socket whose directory was opened up by mistake is still the user's alone. Nothing listens
// on TCP.
//
// Files in the directory: control.sock (the socket), master.lock (flock'd by the running
// master for its life: a second master cannot start, and a socket left by a master that died
// is known stale), master.log (and master.log.1: the resident master's log, size-capped).
#ifndef GROVE_RESIDENT_CONTROL_SOCKET_H_
#define GROVE_RESIDENT_CONTROL_SOCKET_H_

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "common/fd.h"
#include "grpcpp/grpcpp.h"

namespace grove {

// The default directory of this user's resident master: $GROVE_RUNTIME_DIR if set, else
// $XDG_RUNTIME_DIR/grove, else $HOME/.cache/grove/run.
std::string DefaultResidentDir();
// The socket a CLI attaches to: $GROVE_SOCKET if set, else DefaultResidentDir()/control.sock.
std::string DefaultControlSocket();

// Makes `dir` (and its parents) if missing, mode 0700. FAILED_PRECONDITION when it exists but
// is not a directory owned by this user, or is open to the group or others.
absl::Status EnsurePrivateDir(const std::string& dir);

// The lock a running resident master holds (flock, exclusive, for its life). Taking it proves
// no master runs with this directory: a socket found there is stale and is removed.
// FAILED_PRECONDITION "already running" (naming the pid in the lock file) when it is held.
absl::StatusOr<UniqueFd> TakeMasterLock(const std::string& dir);

// Accepts connections on a Unix socket and hands each one from this user (SO_PEERCRED uid)
// to `on_connection`; closes the others and logs who they were. Owns the listening socket and
// its accept thread; the destructor stops accepting, joins the thread and removes the
// socket file. Thread-safe.
class ControlListener {
 public:
  // Binds `socket_path` (its directory must pass EnsurePrivateDir; a file already there is
  // replaced: the caller holds the master lock). `on_connection` runs on the accept thread
  // with a connected, non-blocking, close-on-exec socket it now owns.
  static absl::StatusOr<std::unique_ptr<ControlListener>> Listen(
      const std::string& socket_path, std::function<void(UniqueFd)> on_connection);
  ~ControlListener();
  ControlListener(const ControlListener&) = delete;
  ControlListener& operator=(const ControlListener&) = delete;

  // Connections refused so far (another uid).
  int refused() const;

 private:
  ControlListener(std::string path, UniqueFd fd, std::function<void(UniqueFd)> on_connection);
  void AcceptLoop();

  const std::string path_;
  const UniqueFd fd_;
  const std::function<void(UniqueFd)> on_connection_;
  std::atomic<int> refused_{0};
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

// A gRPC channel to the control socket at `socket_path`, connected now. UNAVAILABLE naming
// the socket when nothing listens there (no file: no resident master; refused: one died and
// left its socket).
absl::StatusOr<std::shared_ptr<grpc::Channel>> ConnectControl(const std::string& socket_path);

}  // namespace grove

#endif  // GROVE_RESIDENT_CONTROL_SOCKET_H_
