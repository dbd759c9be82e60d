// The `fork` method: a child forked, without exec, from its context's zygote (see
// launch/zygote.h for how fork children come to be).
#ifndef GROVE_LAUNCH_FORK_LAUNCHER_H_
#define GROVE_LAUNCH_FORK_LAUNCHER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "launch/zygote.h"
#include "link/launcher.h"

namespace grove {

// Options: name=NAME; no target. Thread-safe.
class ForkLauncher : public Launcher {
 public:
  // `zygote` may be null: every launch then fails with `why_none` (FAILED_PRECONDITION).
  ForkLauncher(std::shared_ptr<Zygote> zygote, std::string why_none);

  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override;

 private:
  const std::shared_ptr<Zygote> zygote_;
  const std::string why_none_;
};

}  // namespace grove

#endif  // GROVE_LAUNCH_FORK_LAUNCHER_H_
