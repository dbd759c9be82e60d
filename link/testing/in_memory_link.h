// In-memory links: both ends of one edge of a context tree, in one process, for router tests.
//
// What one end sends, the other end's delivery thread receives, in order. Every envelope is
// serialized on Send and parsed back on delivery, so whatever a router sends crosses the wire
// format exactly as it would over gRPC; bytes that do not parse as a grove.v1.Envelope take
// the link down with DATA_LOSS.
//
//   InMemoryNetwork network;
//   InMemoryNetwork::Ends ends = network.Connect("link to child", "link to parent");
//   child_router.SetParentLink(ends.b);   // starts ends.b
//   ends.a->Start(&parent_side_delegate);
//   ...
//   ends.a->Close(absl::UnavailableError("cut"));  // OnLinkDown on both sides, once each
//
// An InMemoryNetwork owns the delivery threads of the links it made and joins them all in its
// destructor, so a test leaves no thread behind.
#ifndef GROVE_LINK_TESTING_IN_MEMORY_LINK_H_
#define GROVE_LINK_TESTING_IN_MEMORY_LINK_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/grove.pb.h"
#include "link/link.h"

namespace grove {

class InMemoryNetwork;

// One end of an in-memory link. Made by InMemoryNetwork::Connect.
//
// Follows the Link contract: nothing is delivered before Start; envelopes are delivered in
// the order the peer sent them, one at a time, on this end's delivery thread; OnLinkDown comes
// exactly once (after Start), after the last OnEnvelope. Taking the link down (Close on either
// end, malformed input, or the last reference to an end that was never started going away)
// drops whatever was not delivered yet and brings OnLinkDown to both started ends, with the
// same reason. A started end keeps itself alive until its OnLinkDown has returned.
//
// Thread-safe: every method may be called from any thread, also from inside the delegate's
// callbacks.
class InMemoryLink final : public Link, public std::enable_shared_from_this<InMemoryLink> {
 public:
  InMemoryLink(const InMemoryLink&) = delete;
  InMemoryLink& operator=(const InMemoryLink&) = delete;
  // Takes the link down (CANCELLED) when it is still up; only possible for an end that was
  // never started, since a started end keeps itself alive until it is down.
  ~InMemoryLink() override;

  // Link:
  void Start(LinkDelegate* delegate) override;
  void Send(v1::Envelope envelope) override;
  void Close(const absl::Status& reason) override;
  std::string DebugName() const override { return name_; }

  // Sends `bytes` to the peer as if they were a serialized envelope (to test bad input).
  void SendBytesForTesting(std::string bytes);
  // Runs `observer` on the delivery thread with every envelope this end receives, just before
  // the delegate gets it. Set it before the envelopes of interest are sent.
  void SetObserver(std::function<void(const v1::Envelope&)> observer);

  // While held, this end delivers nothing (what arrives waits, in order): its owner looks
  // frozen to the peer, as a stopped process or a cut network would.
  void HoldDelivery(bool hold);
  // True once the link is down (OnLinkDown may still be on its way).
  bool down() const;
  // Why the link went down; OK while it is up (or when closed with an OK status).
  absl::Status down_reason() const;
  // Envelopes handed to this end's delegate so far.
  int64_t delivered() const;

 private:
  friend class InMemoryNetwork;
  struct Pair;
  struct Threads;

  InMemoryLink(std::shared_ptr<Pair> pair, std::shared_ptr<Threads> threads, int side,
               std::string name);
  // The delivery thread: envelopes until the link is down, then OnLinkDown.
  void Deliver(LinkDelegate* delegate);
  void Enqueue(std::string bytes);

  const std::shared_ptr<Pair> pair_;
  const std::shared_ptr<Threads> threads_;
  const int side_;
  const std::string name_;
};

// Makes linked pairs of InMemoryLinks and owns their delivery threads. Thread-safe.
// Destroy it after the routers using its links have been shut down; its destructor takes
// every link still up down (so OnLinkDown reaches every started end) and joins every thread.
class InMemoryNetwork {
 public:
  struct Ends {
    std::shared_ptr<InMemoryLink> a;
    std::shared_ptr<InMemoryLink> b;
  };

  InMemoryNetwork();
  InMemoryNetwork(const InMemoryNetwork&) = delete;
  InMemoryNetwork& operator=(const InMemoryNetwork&) = delete;
  ~InMemoryNetwork();

  // A new link: what `a` sends, `b` receives, and the other way round. The names are what
  // DebugName returns on each end.
  Ends Connect(std::string a_name, std::string b_name);

  // Takes every link made here down with `reason`.
  void CloseAll(const absl::Status& reason);

  // Waits until every end started so far has had its OnLinkDown return (and has let go of
  // itself). False if some end is still up after `timeout`.
  bool WaitUntilAllDown(absl::Duration timeout);

  // Started ends whose OnLinkDown has not returned yet.
  int live_ends() const;
  // Delivery threads started so far (joined or not).
  int threads_started() const;

 private:
  const std::shared_ptr<InMemoryLink::Threads> threads_;
};

// An envelope carrying call `id` of `function` with `argument`, from `src` to `dst`: what a
// test (or a lying child) writes on a link.
v1::Envelope CallEnvelope(uint64_t src, uint64_t dst, uint64_t id, const std::string& function,
                          const google::protobuf::Message& argument);

}  // namespace grove

#endif  // GROVE_LINK_TESTING_IN_MEMORY_LINK_H_
