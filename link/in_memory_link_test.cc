// InMemoryLink on its own: the Link contract (order, Start, Close, one OnLinkDown, the wire
// format) that the router's tests rely on.
#include "link/testing/in_memory_link.h"

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"

namespace grove {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

constexpr absl::Duration kWait = absl::Seconds(20);

// Records what a link delivers and checks the LinkDelegate contract as it goes.
class RecordingDelegate : public LinkDelegate {
 public:
  // Runs on the delivery thread after each envelope is recorded (outside the lock).
  std::function<void(Link*, const v1::Envelope&)> on_envelope;

  void OnEnvelope(Link* link, v1::Envelope envelope) override {
    CheckEnter(link);
    {
      absl::MutexLock lock(&mu_);
      EXPECT_EQ(downs_, 0) << "an envelope was delivered after OnLinkDown";
      envelopes_.push_back(envelope);
    }
    if (on_envelope) on_envelope(link, envelope);
    Leave();
  }
  void OnLinkDown(Link* link, const absl::Status& reason) override {
    CheckEnter(link);
    {
      absl::MutexLock lock(&mu_);
      ++downs_;
      reason_ = reason;
    }
    Leave();
  }

  bool WaitForEnvelopes(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return envelopes_.size() >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
  }
  bool WaitForDown() {
    absl::MutexLock lock(&mu_);
    auto down = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return downs_ > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&down), kWait);
  }
  std::vector<v1::Envelope> envelopes() const {
    absl::MutexLock lock(&mu_);
    return envelopes_;
  }
  int downs() const {
    absl::MutexLock lock(&mu_);
    return downs_;
  }
  absl::Status reason() const {
    absl::MutexLock lock(&mu_);
    return reason_;
  }

 private:
  void CheckEnter(Link* link) {
    absl::MutexLock lock(&mu_);
    EXPECT_FALSE(inside_) << "callbacks for one link ran concurrently";
    inside_ = true;
    if (link_ == nullptr) link_ = link;
    EXPECT_EQ(link_, link) << "one delegate, one link";
  }
  void Leave() {
    absl::MutexLock lock(&mu_);
    inside_ = false;
  }

  mutable absl::Mutex mu_;
  Link* link_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool inside_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<v1::Envelope> envelopes_ ABSL_GUARDED_BY(mu_);
  int downs_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status reason_ ABSL_GUARDED_BY(mu_);
};

TEST(InMemoryLinkTest, DeliversBothWaysInOrderThroughTheWireFormat) {
  RecordingDelegate a, b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  {
    InMemoryNetwork::Ends ends = network.Connect("a", "b");
    EXPECT_EQ(ends.a->DebugName(), "a");
    EXPECT_EQ(ends.b->DebugName(), "b");
    ends.a->Start(&a);
    ends.b->Start(&b);
    v1::RunRequest argument;
    argument.add_argv("echo");
    argument.set_stdin(std::string("\0bytes\xff", 7));
    for (uint64_t i = 1; i <= 100; ++i) {
      ends.a->Send(CallEnvelope(1, 2, i, "f", argument));
      ends.b->Send(CallEnvelope(2, 1, 1000 + i, "g", v1::Empty()));
    }
    ASSERT_TRUE(b.WaitForEnvelopes(100));
    ASSERT_TRUE(a.WaitForEnvelopes(100));
    EXPECT_EQ(ends.b->delivered(), 100);
    EXPECT_EQ(ends.a->delivered(), 100);
    ends.b->Close(absl::UnavailableError("done"));
    ASSERT_TRUE(a.WaitForDown());
    ASSERT_TRUE(b.WaitForDown());
    EXPECT_TRUE(ends.a->down());
    EXPECT_EQ(ends.a->down_reason(), absl::UnavailableError("done"));
  }
  std::vector<v1::Envelope> at_b = b.envelopes();
  ASSERT_EQ(at_b.size(), 100u);
  for (uint64_t i = 1; i <= 100; ++i) {
    const v1::Envelope& e = at_b[i - 1];
    EXPECT_EQ(e.src(), 1u);
    EXPECT_EQ(e.dst(), 2u);
    EXPECT_EQ(e.call().id(), i);
    v1::RunRequest argument;
    ASSERT_TRUE(argument.ParseFromString(e.call().argument()));
    EXPECT_EQ(argument.stdin(), std::string("\0bytes\xff", 7));
  }
  std::vector<v1::Envelope> at_a = a.envelopes();
  ASSERT_EQ(at_a.size(), 100u);
  for (uint64_t i = 1; i <= 100; ++i) EXPECT_EQ(at_a[i - 1].call().id(), 1000 + i);
  EXPECT_TRUE(network.WaitUntilAllDown(kWait));
  EXPECT_EQ(a.downs(), 1);
  EXPECT_EQ(b.downs(), 1);
  EXPECT_EQ(a.reason(), absl::UnavailableError("done"));
  EXPECT_EQ(b.reason(), absl::UnavailableError("done"));
}

TEST(InMemoryLinkTest, NothingIsDeliveredBeforeStart) {
  RecordingDelegate b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  InMemoryNetwork::Ends ends = network.Connect("a", "b");
  // Queued on a before either end is started.
  for (uint64_t i = 1; i <= 3; ++i) ends.a->Send(CallEnvelope(1, 2, i, "f", v1::Empty()));
  EXPECT_EQ(ends.b->delivered(), 0);
  ends.b->Start(&b);
  ASSERT_TRUE(b.WaitForEnvelopes(3));
  EXPECT_THAT(b.envelopes(), ::testing::SizeIs(3));
  ends.a->Close(absl::OkStatus());
  ASSERT_TRUE(b.WaitForDown());
  EXPECT_TRUE(b.reason().ok());
}

TEST(InMemoryLinkTest, SendAfterCloseIsDroppedAndCloseIsIdempotent) {
  RecordingDelegate a, b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  InMemoryNetwork::Ends ends = network.Connect("a", "b");
  ends.a->Start(&a);
  ends.b->Start(&b);
  ends.a->Close(absl::CancelledError("first"));
  ends.b->Close(absl::CancelledError("second"));
  ends.a->Close(absl::CancelledError("third"));
  ends.a->Send(CallEnvelope(1, 2, 1, "f", v1::Empty()));
  ASSERT_TRUE(network.WaitUntilAllDown(kWait));
  EXPECT_THAT(b.envelopes(), IsEmpty());
  EXPECT_EQ(a.downs(), 1);
  EXPECT_EQ(b.downs(), 1);
  EXPECT_EQ(b.reason(), absl::CancelledError("first"));
}

TEST(InMemoryLinkTest, StartingADownEndDeliversOnlyLinkDown) {
  RecordingDelegate b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  InMemoryNetwork::Ends ends = network.Connect("a", "b");
  ends.a->Send(CallEnvelope(1, 2, 1, "f", v1::Empty()));
  ends.a->Close(absl::AbortedError("gone early"));
  ends.b->Start(&b);
  ASSERT_TRUE(b.WaitForDown());
  EXPECT_THAT(b.envelopes(), IsEmpty());
  EXPECT_EQ(b.reason(), absl::AbortedError("gone early"));
}

TEST(InMemoryLinkTest, DestroyingAnUnstartedEndTakesTheLinkDown) {
  RecordingDelegate b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  InMemoryNetwork::Ends ends = network.Connect("a", "b");
  ends.b->Start(&b);
  ends.a.reset();
  ASSERT_TRUE(b.WaitForDown());
  EXPECT_EQ(b.reason().code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(b.reason().message(), HasSubstr("destroyed"));
}

TEST(InMemoryLinkTest, AStartedEndOutlivesItsLastReferenceUntilItIsDown) {
  RecordingDelegate a, b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  std::shared_ptr<InMemoryLink> b_end;
  {
    InMemoryNetwork::Ends ends = network.Connect("a", "b");
    ends.a->Start(&a);
    ends.b->Start(&b);
    b_end = ends.b;
  }  // The only reference to `a` is gone, but it is started: it stays up.
  b_end->Send(CallEnvelope(2, 1, 7, "f", v1::Empty()));
  ASSERT_TRUE(a.WaitForEnvelopes(1));
  EXPECT_EQ(a.downs(), 0);
  b_end->Close(absl::OkStatus());
  ASSERT_TRUE(network.WaitUntilAllDown(kWait));
  EXPECT_EQ(a.downs(), 1);
  EXPECT_EQ(network.live_ends(), 0);
}

TEST(InMemoryLinkTest, BytesThatAreNotAnEnvelopeTakeTheLinkDown) {
  RecordingDelegate a, b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  InMemoryNetwork::Ends ends = network.Connect("a", "b");
  ends.a->Start(&a);
  ends.b->Start(&b);
  ends.a->Send(CallEnvelope(1, 2, 1, "f", v1::Empty()));
  ends.a->SendBytesForTesting(std::string("\xff\xff\xff\xff", 4));
  ends.a->Send(CallEnvelope(1, 2, 2, "f", v1::Empty()));
  ASSERT_TRUE(network.WaitUntilAllDown(kWait));
  ASSERT_EQ(b.envelopes().size(), 1u);
  EXPECT_EQ(b.envelopes()[0].call().id(), 1u);
  EXPECT_EQ(b.reason().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(a.reason().code(), absl::StatusCode::kDataLoss);
}

TEST(InMemoryLinkTest, CallbacksMaySendAndClose) {
  RecordingDelegate a, b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  InMemoryNetwork::Ends ends = network.Connect("a", "b");
  // b answers every envelope, and closes the link at the third.
  b.on_envelope = [](Link* link, const v1::Envelope& e) {
    v1::Envelope reply;
    reply.set_src(2);
    reply.set_dst(1);
    reply.mutable_reply()->set_id(e.call().id());
    link->Send(reply);
    if (e.call().id() == 3) link->Close(absl::CancelledError("enough"));
  };
  ends.a->Start(&a);
  ends.b->Start(&b);
  for (uint64_t i = 1; i <= 5; ++i) ends.a->Send(CallEnvelope(1, 2, i, "f", v1::Empty()));
  ASSERT_TRUE(network.WaitUntilAllDown(kWait));
  EXPECT_EQ(b.reason(), absl::CancelledError("enough"));
  EXPECT_EQ(a.downs(), 1);
  EXPECT_EQ(b.downs(), 1);
  // Whatever a received were replies, in order; nothing after the close was delivered.
  std::vector<v1::Envelope> replies = a.envelopes();
  EXPECT_LE(replies.size(), 3u);
  for (size_t i = 0; i < replies.size(); ++i) EXPECT_EQ(replies[i].reply().id(), i + 1);
  EXPECT_LE(b.envelopes().size(), 3u);
}

TEST(InMemoryLinkTest, NetworkDestructorClosesEverythingAndJoins) {
  RecordingDelegate a, b, c;
  {
    InMemoryNetwork network;
    InMemoryNetwork::Ends one = network.Connect("a", "b");
    InMemoryNetwork::Ends two = network.Connect("c", "d");
    one.a->Start(&a);
    one.b->Start(&b);
    two.a->Start(&c);  // Its peer is never started.
    EXPECT_EQ(network.threads_started(), 3);
    EXPECT_EQ(network.live_ends(), 3);
  }
  EXPECT_EQ(a.downs(), 1);
  EXPECT_EQ(b.downs(), 1);
  EXPECT_EQ(c.downs(), 1);
  EXPECT_EQ(c.reason().code(), absl::StatusCode::kCancelled);
}

TEST(InMemoryLinkTest, ConcurrentSendersKeepPerSenderOrder) {
  RecordingDelegate a, b;
  InMemoryNetwork network;  // Joins its threads before the delegates go.
  InMemoryNetwork::Ends ends = network.Connect("a", "b");
  ends.a->Start(&a);
  ends.b->Start(&b);
  constexpr int kThreads = 4;
  constexpr int kEach = 250;
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&ends, t] {
      for (int i = 0; i < kEach; ++i) {
        ends.a->Send(CallEnvelope(1 + t, 100, i, "f", v1::Empty()));
      }
    });
  }
  for (std::thread& sender : senders) sender.join();
  ASSERT_TRUE(b.WaitForEnvelopes(kThreads * kEach));
  std::vector<int64_t> next(kThreads, 0);
  for (const v1::Envelope& e : b.envelopes()) {
    int t = static_cast<int>(e.src()) - 1;
    EXPECT_EQ(static_cast<int64_t>(e.call().id()), next[t]++);
  }
  ends.a->Close(absl::OkStatus());
  EXPECT_TRUE(network.WaitUntilAllDown(kWait));
}

}  // namespace
}  // namespace grove
