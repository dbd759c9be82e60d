// The `local` method: a child process on this host, running this same program (re-executed
// from /proc/self/exe) as an agent on one end of a socketpair.
#ifndef GROVE_LAUNCH_LOCAL_LAUNCHER_H_
#define GROVE_LAUNCH_LOCAL_LAUNCHER_H_

#include <string>
#include <vector>

#include "router/launcher.h"

namespace grove {

// Command-line flags of an agent, shared by every launcher that starts this program.
std::vector<std::string> AgentArguments(const LaunchRequest& request, int link_fd);

// Stateless; thread-safe.
class LocalLauncher : public Launcher {
 public:
  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override;
};

}  // namespace grove

#endif  // GROVE_LAUNCH_LOCAL_LAUNCHER_H_
