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
//     10s", and its router treats it as lost (pending calls fail, the child is killed).
// A router watches the links to its children only. A parent may be silent for good reason:
// the master's reading stops while its output callback waits on a reader that paused
// (`grove run ... | less`), and its children must not end the tree for that. A context cut off
// from its parent ends when its transport says so (EOF; over ssh, sshd's keepalive).
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

// What this process's deliveries are doing: how many are in progress, and how many have
// finished so far. One that does not finish (an output callback or a log sink blocked on a
// full pipe, behind a reader that paused) holds up the reading of every link of the process:
// silence then says nothing about the peers, and no link is judged until deliveries move.
struct Deliveries {
  int in_progress = 0;
  uint64_t finished = 0;
};

// Owns its thread. Thread-safe. `links` and `deliveries` are called on the watch's thread,
// with no lock of the watch held; `links` returns the links to watch now.
class LinkWatch {
 public:
  LinkWatch(absl::Duration limit, std::function<std::vector<std::shared_ptr<Link>>()> links,
            std::function<Deliveries()> deliveries);
  ~LinkWatch();  // Stop().
  LinkWatch(const LinkWatch&) = delete;
  LinkWatch& operator=(const LinkWatch&) = delete;

  // Stops watching and joins the thread. Idempotent.
  void Stop();

 private:
  void Loop();

  const absl::Duration limit_;
  const std::function<std::vector<std::shared_ptr<Link>>()> links_;
  const std::function<Deliveries()> deliveries_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_LINK_WATCH_H_
