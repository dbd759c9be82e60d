// LinkWatch through real routers joined by in-memory links: an idle link lives on heartbeats,
// a child that stops reading (a frozen process, a cut network) is dropped within the limit,
// with its pending calls failed and the reason saying the link went silent, and a parent whose
// output callback blocks (a reader that paused) neither drops its children nor is dropped.
#include "router/link_watch.h"

#include <unistd.h>

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/builtins.pb.h"
#include "link/testing/in_memory_link.h"
#include "router/context.h"
#include "router/functions.h"
#include "router/router.h"
#include "router/testing/in_process_launcher.h"

namespace grove {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kLimit = absl::Milliseconds(400);

class LinkWatchTest : public ::testing::Test {
 protected:
  LinkWatchTest() {
    // Streams a line of output, then answers.
    functions_.Register<v1::Empty, v1::Empty>(
        "test.print", [](const v1::Empty&, CallContext& call) -> absl::StatusOr<v1::Empty> {
          call.Output(1, "a line\n");
          return v1::Empty();
        });
    launcher_ = std::make_unique<InProcessLauncher>(&network_, &functions_);
    Router::Options options;
    options.self.set_id(0);
    options.self.set_name("master");
    options.self.set_method("master");
    options.self.set_pid(::getpid());
    options.stop_grace = absl::Milliseconds(100);
    options.silence_limit = kLimit;
    master_ = std::make_unique<Router>(options);
    master_->AddLauncher("local", launcher_.get());
  }
  ~LinkWatchTest() override {
    launcher_->ShutdownAll();
    master_->Shutdown(absl::CancelledError("the test is over"));
    EXPECT_TRUE(network_.WaitUntilAllDown(absl::Seconds(20)));
    master_.reset();
    launcher_.reset();
  }

  Functions functions_;
  InMemoryNetwork network_;
  std::unique_ptr<InProcessLauncher> launcher_;
  std::unique_ptr<Router> master_;
};

TEST_F(LinkWatchTest, AnIdleLinkLivesOnHeartbeats) {
  absl::StatusOr<Context> child = Context(master_.get(), kMasterId, "master").Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  // Heartbeats' answers reach the master while nothing else is sent: several limits' worth.
  std::atomic<int> answers{0};
  absl::Notification enough;
  launcher_->parent_end(child->id())->SetObserver([&](const v1::Envelope& envelope) {
    if (envelope.has_heartbeat() && envelope.heartbeat().reply() && ++answers == 6) {
      enough.Notify();
    }
  });
  ASSERT_TRUE(enough.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_TRUE(child->Ping().ok());
  EXPECT_EQ(master_->registry().Find(child->id())->state, ContextState::kConnected);
  EXPECT_FALSE(launcher_->parent_end(child->id())->down());
}

TEST_F(LinkWatchTest, ASilentPeerIsDroppedAndItsCallsFail) {
  absl::StatusOr<Context> child = Context(master_.get(), kMasterId, "master").Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  // The child stops reading: it neither answers heartbeats nor anything else.
  launcher_->child_end(child->id())->HoldDelivery(true);
  absl::Notification failed;
  absl::Status status;
  child->CallRaw("grove.ping", "grove.v1.Empty", "", {}, [&](absl::StatusOr<std::string> r) {
    status = r.status();
    failed.Notify();
  });
  ASSERT_TRUE(failed.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(status.message(), HasSubstr("went silent"));
  std::optional<ContextRecord> record = master_->registry().Find(child->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->state, ContextState::kGone);
  EXPECT_THAT(record->reason, HasSubstr("went silent for 400ms"));
  launcher_->child_end(child->id())->HoldDelivery(false);
}

// A reader that pauses (`grove run ... | less`) blocks the output callback, and with it this
// process's reading of every link, for longer than the limit: that is not the peers' silence.
TEST_F(LinkWatchTest, AnOutputCallbackThatBlocksIsNotSilence) {
  absl::StatusOr<Context> child = Context(master_.get(), kMasterId, "master").Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  absl::Notification never;
  CallOptions options;
  options.on_output = [&never](int, const std::string&) {
    // The reader, away for three limits' time.
    never.WaitForNotificationWithTimeout(kLimit * 3);
  };
  absl::StatusOr<v1::Empty> done = child->Call<v1::Empty>("test.print", v1::Empty(), options);
  EXPECT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(master_->registry().Find(child->id())->state, ContextState::kConnected);
  EXPECT_TRUE(child->Ping().ok());
}

}  // namespace
}  // namespace grove
