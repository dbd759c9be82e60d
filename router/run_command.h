// The built-in grove.run: a command in this context, its output collected or streamed.
//
// Each command leads a process group of its own, which is killed as a whole (SIGKILL) when
// the call is cancelled or its deadline passes, and when the command ends (what it left
// running in its group goes with it). The command itself dies with the context however the
// context ends (a parent-death signal); a context that ends on its own kills every group still
// running first (KillRunningCommands). A command that must outlive its run leaves the group
// on purpose: `setsid CMD`, or a service manager (systemd-run).
#ifndef GROVE_ROUTER_RUN_COMMAND_H_
#define GROVE_ROUTER_RUN_COMMAND_H_

#include <sys/types.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/builtins.pb.h"
#include "router/functions.h"

namespace grove {

// Runs request.argv to completion as grove.run does.
absl::StatusOr<v1::RunReply> RunCommand(const v1::RunRequest& request, CallContext& call);

// Kills (SIGKILL) the process group of every command running in this process, and waits up
// to `timeout` for their runs to reap them. For a context that is about to exit.
void KillRunningCommands(absl::Duration timeout);

// The process groups of the commands running in this process. Thread-safe.
class RunningCommands {
 public:
  static RunningCommands& Get();
  void Add(pid_t pgid);
  void Remove(pid_t pgid);
  void KillAll(absl::Duration timeout);
  size_t size() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_set<pid_t> groups_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grove

#endif  // GROVE_ROUTER_RUN_COMMAND_H_
