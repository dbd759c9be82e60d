#include "launch/fork_launcher.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "launch/local_launcher.h"

namespace grove {
namespace {

// How long a fork child whose link went down may take to finish exiting.
constexpr absl::Duration kExitTimeout = absl::Milliseconds(100);
// How long an exited fork child's status may take to come from the zygote.
constexpr absl::Duration kStatusTimeout = absl::Seconds(2);

class ForkChild : public ChildProcess {
 public:
  ForkChild(std::shared_ptr<Zygote> zygote, pid_t pid, UniqueFd pidfd)
      : zygote_(std::move(zygote)), pid_(pid), pidfd_(std::move(pidfd)) {}
  ~ForkChild() override {
    if (!WaitFor(absl::ZeroDuration())) {
      Signal(SIGKILL);
      WaitFor(absl::InfiniteDuration());
    }
    zygote_->Forget(pid_);
  }

  pid_t pid() const override { return pid_; }
  int pidfd() const override { return pidfd_.get(); }

  std::string TryExit() override {
    return WaitFor(absl::ZeroDuration()) ? HowItEnded() : "";
  }

  std::string PollExit() override {
    // The link usually breaks a moment before the exit is visible (a process with many
    // threads or a large address space, as under a sanitizer, takes milliseconds to finish
    // exiting): wait for it, briefly. A process that lives on costs this wait once.
    return WaitFor(kExitTimeout) ? HowItEnded() : "";
  }

  std::string Stop(absl::Duration grace) override {
    if (WaitFor(grace)) return HowItEnded();
    Signal(SIGTERM);
    if (WaitFor(grace)) return HowItEnded();
    Signal(SIGKILL);
    WaitFor(absl::InfiniteDuration());
    return HowItEnded();
  }

 private:
  // True once the process has exited (within `timeout`).
  bool WaitFor(absl::Duration timeout) const {
    absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture()
                                                              : absl::Now() + timeout;
    for (;;) {
      absl::Duration left = deadline - absl::Now();
      int ms = deadline == absl::InfiniteFuture()
                   ? -1
                   : static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(left)));
      struct pollfd p = {pidfd_.get(), POLLIN, 0};
      int n = ::poll(&p, 1, ms);
      if (n > 0) return true;
      if (n == 0 && ms >= 0 && absl::Now() >= deadline) return false;
      if (n < 0 && errno != EINTR) return false;
    }
  }
  // Through the pidfd: never a reused pid. Once the zygote has reaped the child this fails
  // (ESRCH), which is what it should do.
  void Signal(int sig) const { ::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0); }
  // Once the process has exited: how, as the zygote reports it.
  std::string HowItEnded() {
    {
      absl::MutexLock lock(&mu_);
      if (!how_.empty()) return how_;
    }
    absl::StatusOr<int> status = zygote_->WaitStatus(pid_, absl::Now() + kStatusTimeout);
    std::string how = status.ok() ? DescribeWaitStatus(*status)
                                  : absl::StrCat("exited (", status.status().message(), ")");
    absl::MutexLock lock(&mu_);
    if (how_.empty()) how_ = how;
    return how_;
  }

  const std::shared_ptr<Zygote> zygote_;
  const pid_t pid_;
  const UniqueFd pidfd_;
  absl::Mutex mu_;
  std::string how_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

ForkLauncher::ForkLauncher(std::shared_ptr<Zygote> zygote, std::string why_none)
    : zygote_(std::move(zygote)), why_none_(std::move(why_none)) {}

absl::StatusOr<LaunchedChild> ForkLauncher::Launch(const Hop& hop, const LaunchRequest& request) {
  for (const auto& [key, value] : hop.options) {
    if (key != "name") {
      return absl::InvalidArgumentError(absl::StrCat(
          "hop '", hop.DebugString(), "': unknown option '", key, "' (fork takes name)"));
    }
  }
  if (!hop.target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("hop '", hop.DebugString(), "': fork takes no target"));
  }
  if (zygote_ == nullptr) return absl::FailedPreconditionError(why_none_);
  auto output = Pipe();
  if (!output.ok()) return output.status();
  std::vector<std::string> argv = {program_invocation_name};
  for (std::string& arg : AgentArguments(request, kForkChildLinkFd)) argv.push_back(std::move(arg));
  absl::StatusOr<Zygote::Forked> forked =
      zygote_->Fork(argv, output->second.get(), request.deadline);
  if (!forked.ok()) return forked.status();
  // The child's copy must be the only one: a leaked copy would hide its death.
  output->second.Reset();
  auto process = std::make_unique<ForkChild>(zygote_, forked->pid, std::move(forked->pidfd));
  return LinkUp(std::move(forked->link), std::move(process), std::move(output->first),
                absl::StrCat("fork child ", request.info.id()), "", request);
}

}  // namespace grove
