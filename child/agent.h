// The agent: what a child context runs. It recovers its link from the command line, captures
// its stdout and stderr (forwarded up as log records tagged with its name), forwards its glog
// records at the master's level, serves gRPC on the inherited socket, and exits when its
// parent asks or goes away, taking its own subtree down first.
#ifndef GROVE_CHILD_AGENT_H_
#define GROVE_CHILD_AGENT_H_

#include <memory>

#include "absl/status/statusor.h"
#include "launch/fork_launcher.h"
#include "router/functions.h"

namespace grove {

// True when this process was started as a grove agent (argv[1] is --grove-agent).
bool IsAgentInvocation(int argc, char** argv);

// Runs the agent until the context ends; never returns (the process exits). `functions` are
// the program's, registered in main() exactly as in the master.
[[noreturn]] void RunAgent(int argc, char** argv, const Functions& functions);

// Starts this process's zygote, which the `fork` method forks children from: each runs
// `functions`' fork hooks (Functions::OnFork), then the agent, in-process. `functions` must
// outlive the process. Call it while the process has one thread (a programmer error
// otherwise: CHECK), as early as possible: a fork child starts as a copy of this process as
// it is now. grove::Main and RunAgent call it themselves.
absl::StatusOr<std::shared_ptr<Zygote>> StartZygote(const Functions& functions);

}  // namespace grove

#endif  // GROVE_CHILD_AGENT_H_
