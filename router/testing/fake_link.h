// Fakes for driving one Router by hand, with no thread and no transport: the envelope fuzzer
// (fuzz/envelope_fuzzer.cc) and the routing micro-benchmark (tools/micro_bench.cc). A
// FakeLink hands what the router sends to a function on the sender's thread, and delivers
// to the router on the caller's, so a run is deterministic up to the router's own workers.
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
#include "proto/grove.pb.h"
#include "router/launcher.h"
#include "router/link.h"

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

// The process behind a fake child: stopping it takes its link down. Thread-safe.
class FakeChildHandle final : public ChildHandle {
 public:
  explicit FakeChildHandle(std::shared_ptr<FakeLink> link) : link_(std::move(link)) {}
  std::string PollExit() override { return ""; }
  std::string Stop(absl::Duration) override {
    link_->Close(absl::UnavailableError("stopped"));
    return "stopped";
  }

 private:
  const std::shared_ptr<FakeLink> link_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_TESTING_FAKE_LINK_H_
