// LinkWatch: notices links that went silent.
//
// A link over ssh to a host that froze, or across a network that partitioned, can stay open
// for minutes: TCP sees nothing, and ssh's keepalive takes 45 s with grove's defaults. Every
// `limit / 4` the watch looks at each link's count of received envelopes (Link::received):
//   - a link that received something since the last look is fine, and so is one with a write
//     of ours in flight (its peer is slow to read, not gone: the router's stall rule, which
//     stops a child that leaves 1 GiB unread, handles that);
//   - one idle for `limit / 2` gets a Heartbeat, which its peer answers at once (the peer's
//     link thread does, whatever its workers are doing);
//   - one that received nothing at all for `limit` is closed UNAVAILABLE, "went silent for
//     10s", and its router treats it as lost (pending calls fail, the child is stopped; a
//     context whose parent link went silent shuts down).
// A busy link costs one relaxed increment per envelope; an idle healthy one, a heartbeat each
// way per `limit / 2`.
#ifndef GROVE_ROUTER_LINK_WATCH_H_
#define GROVE_ROUTER_LINK_WATCH_H_

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "link/link.h"

namespace grove {

// The status a silent link is closed with (UNAVAILABLE, naming the link and the limit), and
// whether a link went down for that reason.
absl::Status SilenceError(const Link& link, absl::Duration limit);
bool IsSilence(const absl::Status& status);

// Owns its thread. Thread-safe. `links` is called on the watch's thread, with no lock of the
// watch held; it returns the links to watch now.
class LinkWatch {
 public:
  LinkWatch(absl::Duration limit, std::function<std::vector<std::shared_ptr<Link>>()> links);
  ~LinkWatch();  // Stop().
  LinkWatch(const LinkWatch&) = delete;
  LinkWatch& operator=(const LinkWatch&) = delete;

  // Stops watching and joins the thread. Idempotent.
  void Stop();

 private:
  void Loop();

  const absl::Duration limit_;
  const std::function<std::vector<std::shared_ptr<Link>>()> links_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_LINK_WATCH_H_
