// LinkWatch through real routers joined by in-memory links: an idle link lives on heartbeats,
// a peer that stops reading (a frozen process, a cut network) is dropped within the limit,
// with its pending calls failed and the reason saying the link went silent.
#include "router/link_watch.h"

#include <unistd.h>

#include <atomic>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "link/testing/in_memory_link.h"
#include "router/context.h"
#include "router/router.h"
#include "router/testing/in_process_launcher.h"

namespace grove {
namespace {

using ::testing::HasSubstr;

constexpr absl::Duration kLimit = absl::Milliseconds(400);

class LinkWatchTest : public ::testing::Test {
 protected:
  LinkWatchTest() {
    launcher_ = std::make_unique<InProcessLauncher>(&network_, nullptr);
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

TEST_F(LinkWatchTest, AChildWhoseParentFallsSilentShutsDown) {
  absl::StatusOr<Context> child = Context(master_.get(), kMasterId, "master").Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  // The master stops reading this link: the child hears nothing from above.
  launcher_->parent_end(child->id())->HoldDelivery(true);
  absl::Status why;
  ASSERT_TRUE(launcher_->WaitShutdownRequested(child->id(), &why, absl::Seconds(20)));
  EXPECT_THAT(why.message(), HasSubstr("went silent"));
  launcher_->parent_end(child->id())->HoldDelivery(false);
}

}  // namespace
}  // namespace grove
