// Link: the router's view of one edge of the context tree.
//
// A link carries envelopes between this context and one neighbour (its parent or one of its
// children), in order, in both directions. The router is transport-agnostic: transport/
// implements Link over a gRPC stream on an inherited socket, and the unit tests implement it
// in memory.
#ifndef GROVE_LINK_LINK_H_
#define GROVE_LINK_LINK_H_

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "proto/grove.pb.h"

namespace grove {

class Link;

// Receives what a link delivers. Implemented by the Router.
class LinkDelegate {
 public:
  virtual ~LinkDelegate() = default;
  // One received envelope. Called in arrival order, never concurrently for one link.
  virtual void OnEnvelope(Link* link, v1::Envelope envelope) = 0;
  // The link is down (peer gone, I/O error, bad input, or Close). Called exactly once, after
  // the last OnEnvelope; nothing is delivered afterwards.
  virtual void OnLinkDown(Link* link, const absl::Status& reason) = 0;
  // The link's peer stopped reading and the link gave up on it (see GrpcClientLink): the
  // link is closing, but its last write may stay stuck until the peer's end of the socket
  // goes, so the delegate should end the peer (OnLinkDown follows). Any thread, no lock held.
  virtual void OnLinkStalled(Link* link, const absl::Status& why) { (void)link, (void)why; }
};

// Thread-safe: Send and Close may be called from any thread, also from inside the delegate's
// callbacks. Owned through std::shared_ptr by whoever routes over it; the transport keeps
// itself alive until OnLinkDown has returned.
class Link {
 public:
  virtual ~Link() = default;

  // Starts delivery to `delegate`, which must stay valid until OnLinkDown has returned.
  // Nothing is delivered before Start. Call once.
  virtual void Start(LinkDelegate* delegate) = 0;

  // Queues `envelope` for sending; never blocks. Envelopes queued together are written as one
  // batch. Dropped once the link is down.
  virtual void Send(v1::Envelope envelope) = 0;

  // Takes the link down; OnLinkDown follows with `reason` (after Start).
  virtual void Close(const absl::Status& reason) = 0;

  // For logs: "link to local.1234".
  virtual std::string DebugName() const = 0;

  // Reads nothing more for `pause` (what is in flight still arrives): backpressure on a
  // neighbour that floods. Transports without it ignore the hint.
  virtual void PauseReading(absl::Duration pause) { (void)pause; }

  // Whether a write to the peer is in flight now (the peer may be slow to read it). The
  // liveness check does not call a link silent while it waits on its own write: a peer that
  // throttles what it reads (PauseReading) is slow, not gone; the stall rule handles it.
  virtual bool WriteOutstanding() { return false; }

  // Envelopes received on this link so far: counted by the router as it takes each one, read
  // by its liveness check (router/link_watch.h). A counter, not a clock: nothing per envelope
  // but one relaxed increment.
  void CountReceived() { received_.fetch_add(1, std::memory_order_relaxed); }
  uint64_t received() const { return received_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> received_{0};
};

}  // namespace grove

#endif  // GROVE_LINK_LINK_H_
