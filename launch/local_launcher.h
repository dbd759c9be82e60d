// The `local` method: a child process on this host, running this same program (re-executed
// from /proc/self/exe) as an agent on one end of a socketpair.
#ifndef GROVE_LAUNCH_LOCAL_LAUNCHER_H_
#define GROVE_LAUNCH_LOCAL_LAUNCHER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "common/fd.h"
#include "common/process.h"
#include "link/launcher.h"

namespace grove {

// Command-line flags of an agent, shared by every launcher that starts this program. A
// `link_fd` of -1 means the link is the agent's stdin and stdout (--grove-stdio).
std::vector<std::string> AgentArguments(const LaunchRequest& request, int link_fd);

// A started child process as LinkUp watches it, and then the handle the router keeps.
// Thread-safe.
class ChildProcess : public ChildHandle {
 public:
  virtual pid_t pid() const = 0;
  // Readable once the process has exited. Never changes.
  virtual int pidfd() const = 0;
  // How the process ended ("killed by signal 9 (Killed)"), or "" while it runs. Does not
  // wait, except briefly for the exit status once pidfd() is readable.
  virtual std::string TryExit() = 0;
};

// Links up with a started child whose agent serves gRPC on the other end of `socket`: opens
// the link, waits for its Hello while collecting what it prints on `output` (appended to
// `tail`), and fails with that output quoted if the process exits or the deadline passes
// first (then the process is killed and reaped). `what` names the child in messages.
// Shared by every launcher.
absl::StatusOr<LaunchedChild> LinkUp(UniqueFd socket, Process process, UniqueFd output,
                                     const std::string& what, std::string tail,
                                     const LaunchRequest& request);
// The same for a child process that is not this process's own (a fork child, which the
// zygote forked): `process` becomes the LaunchedChild's handle.
absl::StatusOr<LaunchedChild> LinkUp(UniqueFd socket, std::unique_ptr<ChildProcess> process,
                                     UniqueFd output, const std::string& what,
                                     std::string tail, const LaunchRequest& request);

// "; its last output:\n  ..." (the last 20 lines of `tail`), or "; it printed nothing".
std::string QuoteTail(const std::string& tail);

// Stateless; thread-safe.
class LocalLauncher : public Launcher {
 public:
  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override;
};

}  // namespace grove

#endif  // GROVE_LAUNCH_LOCAL_LAUNCHER_H_
