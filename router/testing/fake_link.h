// Fakes for driving one Router by hand, with no thread and no transport: the envelope fuzzer
// (fuzz/envelope_fuzzer.cc) and the routing micro-benchmark (tools/micro_bench.cc). A
// FakeLink hands what the router sends to a function on the sender's thread, and delivers
// to the router on the caller's, so a run is deterministic up to the router's own workers.
// LinkChildHandle is also what the router tests' in-process children stop by.
#ifndef GROVE_ROUTER_TESTING_FAKE_LINK_H_
#define GROVE_ROUTER_TESTING_FAKE_LINK_H_

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "link/launcher.h"
#include "link/link.h"

namespace grove {

// One end of a link, as the router sees it. No thread: Send hands the envelope to `on_send`
// on the caller's thread; Deliver calls the router. Thread-safe.
class FakeLink final : public Link {
 public:
  using OnSend = std::function<void(FakeLink* link, v1::Envelope envelope)>;

  FakeLink(std::string name, OnSend on_send)
      : name_(std::move(name)), on_send_(std::move(on_send)) {}

  void Start(LinkDelegate* delegate) override {
    absl::MutexLock lock(&mu_);
    CHECK(delegate_ == nullptr) << name_ << ": started twice";
    delegate_ = delegate;
  }
  void Send(v1::Envelope envelope) override {
    {
      absl::MutexLock lock(&mu_);
      if (down_) return;
    }
    on_send_(this, std::move(envelope));
  }
  // OnLinkDown at once, on this thread (once, and only after Start).
  void Close(const absl::Status& reason) override {
    LinkDelegate* delegate;
    {
      absl::MutexLock lock(&mu_);
      if (down_) return;
      down_ = true;
      delegate = delegate_;
    }
    if (delegate != nullptr) delegate->OnLinkDown(this, reason);
  }
  std::string DebugName() const override { return name_; }

  // `envelope` as if the peer sent it. Never concurrently with itself or Close for one link
  // (the callers make sure), as the Link contract says.
  void Deliver(v1::Envelope envelope) {
    LinkDelegate* delegate;
    {
      absl::MutexLock lock(&mu_);
      if (down_ || delegate_ == nullptr) return;
      delegate = delegate_;
    }
    delegate->OnEnvelope(this, std::move(envelope));
  }

 private:
  const std::string name_;
  const OnSend on_send_;
  absl::Mutex mu_;
  LinkDelegate* delegate_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool down_ ABSL_GUARDED_BY(mu_) = false;
};

// The "process" behind a child that lives in this process (on a fake or an in-memory link):
// stopping it closes its link. Thread-safe.
class LinkChildHandle final : public ChildHandle {
 public:
  explicit LinkChildHandle(std::shared_ptr<Link> link) : link_(std::move(link)) {}
  std::string PollExit() override { return ""; }
  std::string Stop(absl::Duration) override {
    link_->Close(absl::CancelledError("stopped by its parent"));
    return "stopped";
  }

 private:
  const std::shared_ptr<Link> link_;
};

// Answers `e` on `link` as a router's parent answers "grove.id_block" (the block of ids a
// router that is not the master asks for before its first spawn): `count` ids from `first`.
// False, and nothing sent, when `e` is not that call from `router_id`.
inline bool AnswerIdBlock(FakeLink& link, const v1::Envelope& e, uint64_t router_id,
                          uint64_t parent_id, uint64_t first, uint64_t count) {
  if (!e.has_call() || e.src() != router_id || e.call().function() != "grove.id_block") {
    return false;
  }
  v1::IdBlockReply block;
  block.set_first(first);
  block.set_count(count);
  v1::Envelope reply;
  reply.set_src(parent_id);
  reply.set_dst(router_id);
  reply.mutable_reply()->set_id(e.call().id());
  reply.mutable_reply()->set_result(block.SerializeAsString());
  link.Deliver(std::move(reply));
  return true;
}

}  // namespace grove

#endif  // GROVE_ROUTER_TESTING_FAKE_LINK_H_
