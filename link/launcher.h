// Launcher: a way to start a child context (one per method: local, fork, ssh, ...).
//
// Any context can be a parent, so every context carries launchers. The router declares this
// interface; launch/ implements it and child/ and master/ install the implementations, so
// router/ does not depend on launch/.
#ifndef GROVE_LINK_LAUNCHER_H_
#define GROVE_LINK_LAUNCHER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/grove.pb.h"
#include "link/hop.h"
#include "link/link.h"

namespace grove {

// Everything a launcher needs to know about the child it starts.
struct LaunchRequest {
  // id, name (empty: the child picks "<method>.<pid>"), parent and method.
  v1::ContextInfo info;
  // The child's ancestors, nearest first (its parent first, the master last).
  std::vector<uint64_t> ancestors;
  int64_t max_message_bytes = 0;
  // glog settings the child runs with (the master's).
  int min_log_level = 0;
  int verbosity = 0;
  // The child's links are closed when they deliver nothing for this long (zero: never); see
  // router/link_watch.h.
  absl::Duration silence_limit = absl::ZeroDuration();
  absl::Time deadline = absl::InfiniteFuture();
};

// The process (or session) behind one child. Owned by the router's record of the child.
// Thread-safe.
class ChildHandle {
 public:
  virtual ~ChildHandle() = default;
  // Without blocking: how the child ended ("killed by signal 9 (Killed)"), or "" while it
  // runs or when unknown.
  virtual std::string PollExit() = 0;
  // Makes sure the child is gone: waits `grace` for it to exit on its own, then SIGTERM, then
  // SIGKILL after another `grace`; reaps it. Returns how it ended. Blocks.
  virtual std::string Stop(absl::Duration grace) = 0;
};

struct LaunchedChild {
  // Connected, its Hello received, not yet started (see Link::Start).
  std::shared_ptr<Link> link;
  // What the child reported in its Hello.
  v1::ContextInfo info;
  std::unique_ptr<ChildHandle> handle;
};

// Thread-safe: several launches may run at once.
class Launcher {
 public:
  virtual ~Launcher() = default;
  // Starts the child and links up with it. Errors name the hop and say what failed: could
  // not start (errno), exited early (with its last output lines), timed out (the process is
  // killed and reaped), refused.
  virtual absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) = 0;
};

}  // namespace grove

#endif  // GROVE_LINK_LAUNCHER_H_
