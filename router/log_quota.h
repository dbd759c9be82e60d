// Log quotas: how much of the log traffic from behind one child link a router passes on.
#ifndef GROVE_ROUTER_LOG_QUOTA_H_
#define GROVE_ROUTER_LOG_QUOTA_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace grove {

// How many log records, and bytes of their text, the whole subtree behind one child link may
// send per second; a burst of one second's worth passes. Records over it are dropped where
// they arrive (so that a flooding context cannot fill its parent's link to the master and
// stall every reply behind it), and counted; the count goes up as one record of this
// context's own when a record passes again, at most once a second.
// The quota is sized for an uninstrumented build: under ThreadSanitizer, which makes every
// record about ten times as costly to route, it is a tenth, so that the same share of a
// link thread goes to a flood.
#if defined(__SANITIZE_THREAD__)
inline constexpr double kLogRecordsPerSecond = 2000;
#else
inline constexpr double kLogRecordsPerSecond = 20000;
#endif
// How long a child link over its log quota is not read from (see Link::PauseReading).
inline constexpr absl::Duration kLogPause = absl::Milliseconds(20);
inline constexpr double kLogBytesPerSecond = 8 << 20;

// A token bucket for kLogRecordsPerSecond and kLogBytesPerSecond. Thread-compatible.
class LogQuota {
 public:
  // Whether a record of `bytes` may pass at `now`; counts it as dropped otherwise.
  bool Take(absl::Time now, size_t bytes) {
    const double seconds = std::max(0.0, absl::ToDoubleSeconds(now - last_));
    last_ = now;
    records_ = std::min(kLogRecordsPerSecond, records_ + seconds * kLogRecordsPerSecond);
    bytes_ = std::min(kLogBytesPerSecond, bytes_ + seconds * kLogBytesPerSecond);
    if (records_ < 1 || bytes_ < static_cast<double>(bytes)) {
      ++dropped_;
      return false;
    }
    records_ -= 1;
    bytes_ -= static_cast<double>(bytes);
    return true;
  }
  // Records dropped since the last report, when there are some and the last report is a
  // second old; 0 otherwise.
  int64_t TakeDropped(absl::Time now) {
    if (dropped_ == 0 || now - last_report_ < absl::Seconds(1)) return 0;
    last_report_ = now;
    return std::exchange(dropped_, 0);
  }

 private:
  absl::Time last_ = absl::Now();
  absl::Time last_report_ = absl::InfinitePast();
  double records_ = kLogRecordsPerSecond;
  double bytes_ = kLogBytesPerSecond;
  int64_t dropped_ = 0;
};

}  // namespace grove

#endif  // GROVE_ROUTER_LOG_QUOTA_H_
