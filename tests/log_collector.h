// Collects the log records that reach a test's master, and waits for one that matches.
#ifndef GROVE_TESTS_LOG_COLLECTOR_H_
#define GROVE_TESTS_LOG_COLLECTOR_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/router.h"

namespace grove::testing {

struct CollectedLog {
  std::string context;
  v1::LogRecord record;
};

// Thread-safe.
class LogCollector {
 public:
  LogSink Sink() {
    return [this](const ContextRecord& from, const v1::LogRecord& record) {
      absl::MutexLock lock(&mu_);
      logs_.push_back({from.name, record});
      bytes_ += record.text().size();
    };
  }
  // Waits until a record satisfies `match`; false at the timeout.
  bool WaitFor(const std::function<bool(const CollectedLog&)>& match, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto found = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const CollectedLog& log : logs_) {
        if (match(log)) return true;
      }
      return false;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&found), timeout);
  }
  // Waits until at least `bytes` of text arrived from `context`.
  bool WaitForBytes(size_t bytes, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return bytes_ >= bytes; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

 private:
  absl::Mutex mu_;
  std::vector<CollectedLog> logs_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace grove::testing

#endif  // GROVE_TESTS_LOG_COLLECTOR_H_
