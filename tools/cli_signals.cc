#include "tools/cli_signals.h"

#include <errno.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <thread>

namespace grove::cli {
namespace {

std::atomic<int> caught{0};
int wake_fd = -1;

// Async-signal-safe: records the first signal and wakes the watcher; a second exits.
void OnSignal(int sig) {
  int none = 0;
  if (!caught.compare_exchange_strong(none, sig)) _exit(128 + sig);
  uint64_t one = 1;
  (void)!::write(wake_fd, &one, sizeof(one));
}

}  // namespace

CancelSource& CliCancel() {
  static CancelSource* cancel = new CancelSource();
  return *cancel;
}

int InterruptSignal() { return caught.load(); }

void HandleInterrupts() {
  wake_fd = ::eventfd(0, EFD_CLOEXEC);
  if (wake_fd < 0) return;  // Without it, the default action (exit) stays.
  // The watcher cancels outside the handler (CancelSource runs callbacks); it lives until
  // the process exits.
  std::thread([] {
    uint64_t n;
    while (::read(wake_fd, &n, sizeof(n)) < 0 && errno == EINTR) {
    }
    CliCancel().Cancel();
  }).detach();
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
}

}  // namespace grove::cli
