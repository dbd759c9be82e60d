// The router's routing table and id blocks, against a child that lies: spoofed sources from
// either side, replies to calls that went elsewhere, registry changes outside a child's
// subtree, ids (unique, from blocks the master hands out, never claimed without one),
// control envelopes only from the parent, log records routed to the master's sink. The
// fixture is router/testing/router_fixture.h.
#include <atomic>
#include <future>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_util.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "router/context.h"
#include "router/registry.h"
#include "router/router.h"
#include "router/testing/fake_link.h"
#include "router/testing/router_fixture.h"

namespace grove {
namespace {

using ::grove::testing::IsOk;
using ::grove::testing::kWait;
using ::grove::testing::ReadyNow;
using ::grove::testing::ReadyWithin;
using ::grove::testing::RouterTest;
using ::grove::testing::StatusIs;
using ::testing::_;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::Pair;

TEST_F(RouterTest, EnvelopeWithASpoofedSourceFromAChildIsDropped) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  // Watch what c2 receives from the master.
  auto replies_to_spoof = std::make_shared<std::atomic<int>>(0);
  constexpr uint64_t kSpoofedCallId = 424242;
  launcher_->child_end(c2_->id())->SetObserver([replies_to_spoof](const v1::Envelope& e) {
    if (e.has_reply() && e.reply().id() == kSpoofedCallId) replies_to_spoof->fetch_add(1);
  });

  // c1 pretends to be c2.
  launcher_->child_end(c1_->id())
      ->Send(CallEnvelope(c2_->id().value(), 0, kSpoofedCallId, "test.record", v1::Empty()));
  // A legitimate call on the same link, after it: test.record runs inline, in arrival order,
  // so once this one is answered the spoofed one has been handled (or dropped).
  ASSERT_THAT(MasterFrom(*c1_).Call<v1::Empty>("test.record", v1::Empty()), IsOk());
  EXPECT_THAT(probe_.callers(), ElementsAre(c1_->id().value()));
  // Had the master answered the spoofed call, the reply would have reached c2 before this
  // ping's call did.
  ASSERT_THAT(c2_->Ping(), IsOk());
  EXPECT_EQ(replies_to_spoof->load(), 0);
  EXPECT_EQ(master_->pending_calls(), 0u);

  // A child may speak for its own descendants, though.
  launcher_->child_end(c1_->id())
      ->Send(CallEnvelope(g_->id().value(), 0, kSpoofedCallId, "test.record", v1::Empty()));
  ASSERT_THAT(MasterFrom(*c1_).Call<v1::Empty>("test.record", v1::Empty()), IsOk());
  EXPECT_THAT(probe_.callers(),
              ElementsAre(c1_->id().value(), g_->id().value(), c1_->id().value()));
}

TEST_F(RouterTest, ReplyFromAChildToACallThatWentElsewhereIsDropped) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  // The master calls c2; the call's id is what c2 receives.
  auto call_id = std::make_shared<std::atomic<uint64_t>>(0);
  launcher_->child_end(c2_->id())->SetObserver([call_id](const v1::Envelope& e) {
    if (e.has_call() && e.call().function() == "test.block") call_id->store(e.call().id());
  });
  CallOptions options;
  options.timeout = absl::Seconds(2);
  std::future<absl::StatusOr<v1::Empty>> to_c2 =
      c2_->CallAsync<v1::Empty>("test.block", Ms(30000), options);
  ASSERT_TRUE(probe_.WaitStarted(1));
  ASSERT_NE(call_id->load(), 0u);

  // c1 answers it (as itself and as its child g), and sends output for it.
  for (uint64_t src : {c1_->id().value(), g_->id().value()}) {
    v1::Envelope forged;
    forged.set_src(src);
    forged.set_dst(0);
    forged.mutable_reply()->set_id(call_id->load());
    launcher_->child_end(c1_->id())->Send(forged);
  }
  // Handled in arrival order on c1's link, so done once this call is answered.
  ASSERT_THAT(MasterFrom(*c1_).Call<v1::Empty>("test.record", v1::Empty()), IsOk());
  EXPECT_FALSE(ReadyNow(to_c2));
  // Only c2's own side could have ended it: its deadline does.
  ASSERT_TRUE(ReadyWithin(to_c2));
  EXPECT_THAT(to_c2.get(), StatusIs(absl::StatusCode::kDeadlineExceeded, _));
}

TEST_F(RouterTest, EnvelopeWithASpoofedSourceFromTheParentIsDropped) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  // From above, c1 accepts any source outside its subtree, but not its own child's id nor
  // its own.
  std::shared_ptr<InMemoryLink> down = launcher_->parent_end(c1_->id());
  down->Send(CallEnvelope(g_->id().value(), c1_->id().value(), 1, "test.record", v1::Empty()));
  down->Send(CallEnvelope(c1_->id().value(), c1_->id().value(), 2, "test.record", v1::Empty()));
  ASSERT_THAT(c1_->Call<v1::Empty>("test.record", v1::Empty()), IsOk());
  EXPECT_THAT(probe_.callers(), ElementsAre(0u));
}

TEST_F(RouterTest, ChildCannotAddOrRemoveContextsOutsideItsSubtree) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  std::shared_ptr<InMemoryLink> up = launcher_->child_end(c1_->id());
  auto added = [&](uint64_t id, uint64_t parent, const std::string& name) {
    v1::Envelope e;
    e.set_src(c1_->id().value());
    e.set_dst(0);
    v1::ContextInfo* info = e.mutable_added()->mutable_info();
    info->set_id(id);
    info->set_parent(parent);
    info->set_name(name);
    up->Send(e);
  };
  added(c2_->id().value(), c1_->id().value(), "stolen");  // An id in use elsewhere.
  added(0, c1_->id().value(), "fake-master");               // The master's own id.
  added(9999, 5555, "orphan");                              // A parent not behind c1.
  v1::Envelope removed;
  removed.set_src(c1_->id().value());
  removed.mutable_removed()->add_ids(c2_->id().value());  // Not behind c1.
  removed.mutable_removed()->add_ids(c1_->id().value());  // Itself: that is OnLinkDown's job.
  removed.mutable_removed()->set_reason("lies");
  up->Send(removed);

  // Everything above was handled before this call on the same link.
  ASSERT_THAT(MasterFrom(*c1_).Ping(), IsOk());
  Registry& registry = master_->registry();
  EXPECT_EQ(registry.live_count(), 3u);
  EXPECT_EQ(registry.Find(c2_->id())->name, "c2");
  EXPECT_EQ(registry.Find(c2_->id())->state, ContextState::kConnected);
  EXPECT_EQ(registry.Find(c1_->id())->state, ContextState::kConnected);
  EXPECT_FALSE(registry.Find(ContextId(9999)).has_value());
  EXPECT_FALSE(registry.FindByName("stolen").has_value());
  EXPECT_FALSE(registry.FindByName("fake-master").has_value());
  EXPECT_THAT(c2_->Ping(), IsOk());
  EXPECT_THAT(c1_->Ping(), IsOk());
}

TEST_F(RouterTest, IdsAreUniqueAndNeverReused) {
  std::vector<uint64_t> ids;
  for (int round = 0; round < 3; ++round) {
    absl::StatusOr<Context> child = Master().Spawn("local,name=child");
    ASSERT_THAT(child, IsOk());
    ids.push_back(child->id().value());
    absl::StatusOr<Context> grandchild = child->Spawn("local,name=grandchild");
    ASSERT_THAT(grandchild, IsOk());
    ids.push_back(grandchild->id().value());
    // Stopped by its parent, on the master's request.
    ASSERT_THAT(Context(master_.get(), grandchild->id(), grandchild->name()).Shutdown(), IsOk());
    EXPECT_EQ(master_->registry().Find(grandchild->id())->state, ContextState::kGone);
    absl::StatusOr<Context> second = child->Spawn("local,name=grandchild");
    ASSERT_THAT(second, IsOk());
    ids.push_back(second->id().value());
    ASSERT_THAT(child->Shutdown(), IsOk());
    EXPECT_EQ(master_->registry().Find(child->id())->state, ContextState::kGone);
    EXPECT_EQ(master_->registry().Find(second->id())->state, ContextState::kGone);
  }
  std::set<uint64_t> unique(ids.begin(), ids.end());
  EXPECT_EQ(unique.size(), ids.size()) << absl::StrJoin(ids, ", ");
  EXPECT_EQ(unique.count(0), 0u);
  // The registry kept every record, gone ones included.
  EXPECT_EQ(master_->registry().List(/*include_gone=*/true).size(), ids.size());
  EXPECT_EQ(master_->registry().live_count(), 0u);
}

TEST_F(RouterTest, ChildrenTakeIdsFromBlocksTheMasterHandsOut) {
  absl::StatusOr<Context> c1 = Master().Spawn("local,name=c1");
  ASSERT_THAT(c1, IsOk());
  absl::StatusOr<Context> c2 = Master().Spawn("local,name=c2");
  ASSERT_THAT(c2, IsOk());
  absl::StatusOr<Context> g1 = c1->Spawn("local");  // c1 asks the master for a block.
  ASSERT_THAT(g1, IsOk());
  absl::StatusOr<Context> c3 = Master().Spawn("local,name=c3");
  ASSERT_THAT(c3, IsOk());
  absl::StatusOr<Context> g2 = c1->Spawn("local");  // From the same block.
  ASSERT_THAT(g2, IsOk());
  absl::StatusOr<Context> h1 = c2->Spawn("local");  // c2's own block.
  ASSERT_THAT(h1, IsOk());
  absl::StatusOr<Context> gg = g1->Spawn("local");  // A grandchild's block, asked two hops up.
  ASSERT_THAT(gg, IsOk());

  const std::set<uint64_t> by_master = {c1->id().value(), c2->id().value(), c3->id().value()};
  const std::vector<uint64_t> by_children = {g1->id().value(), g2->id().value(),
                                             h1->id().value(), gg->id().value()};
  std::set<uint64_t> all(by_master);
  for (uint64_t id : by_children) {
    EXPECT_EQ(by_master.count(id), 0u) << id;
    all.insert(id);
  }
  EXPECT_EQ(all.size(), 7u);
  // The master's own counter moved past the block it gave c1.
  EXPECT_GT(c3->id().value(), g2->id().value());
  EXPECT_EQ(g2->id().value(), g1->id().value() + 1);

  // Only the master hands out blocks.
  v1::IdBlockRequest request;
  request.set_count(10);
  EXPECT_THAT(c1->Call<v1::IdBlockReply>("grove.id_block", request),
              StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("master")));
}

TEST_F(RouterTest, ShutdownEnvelopeIsObeyedOnlyFromTheParent) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  auto master_asked = std::make_shared<std::atomic<bool>>(false);
  master_->SetShutdownHandler([master_asked](const absl::Status&) { *master_asked = true; });
  v1::Envelope shutdown;
  shutdown.mutable_shutdown();

  // From a child to the master: ignored.
  shutdown.set_src(c1_->id().value());
  shutdown.set_dst(0);
  launcher_->child_end(c1_->id())->Send(shutdown);
  ASSERT_THAT(MasterFrom(*c1_).Ping(), IsOk());
  EXPECT_FALSE(master_asked->load());

  // From the parent: the child asks its owner to shut it down.
  shutdown.set_src(0);
  shutdown.set_dst(c2_->id().value());
  launcher_->parent_end(c2_->id())->Send(shutdown);
  absl::Status why;
  ASSERT_TRUE(launcher_->WaitShutdownRequested(c2_->id(), &why));
  EXPECT_THAT(why, StatusIs(absl::StatusCode::kCancelled, HasSubstr("asked to shut down")));
  EXPECT_FALSE(launcher_->ShutdownRequested(c1_->id()));
}

// The master refuses a ContextAdded for an id it has not handed out (Router::HandleAdded in
// router/router_membership.cc, IdBlocks::HandedOut), so a child cannot claim the id the master
// will give its next child, take over its route or leave its record in the registry.
TEST_F(RouterTest, ChildCannotClaimAnIdTheMasterHasNotHandedOut) {
  absl::StatusOr<Context> c1 = Master().Spawn("local,name=c1");
  ASSERT_THAT(c1, IsOk());
  const uint64_t next_master_id = c1->id().value() + 1;
  v1::Envelope added;
  added.set_src(c1->id().value());
  added.set_dst(0);
  v1::ContextInfo* info = added.mutable_added()->mutable_info();
  info->set_id(next_master_id);
  info->set_parent(c1->id().value());
  info->set_name("squatter");
  launcher_->child_end(c1->id())->Send(added);
  ASSERT_THAT(MasterFrom(*c1).Ping(), IsOk());  // The ContextAdded has been handled.

  absl::StatusOr<Context> fresh = Master().Spawn("local,name=fresh");
  ASSERT_THAT(fresh, IsOk());
  std::optional<ContextRecord> record = master_->registry().Find(fresh->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->name, "fresh");
  EXPECT_EQ(record->parent, kMasterId);
  EXPECT_FALSE(master_->registry().FindByName("squatter").has_value());
}

TEST_F(RouterTest, LogRecordsReachTheMastersSink) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  struct Logs {
    absl::Mutex mu;
    std::vector<std::pair<std::string, std::string>> lines ABSL_GUARDED_BY(mu);
  };
  auto logs = std::make_shared<Logs>();
  master_->SetLogSink([logs](const ContextRecord& from, const v1::LogRecord& record) {
    absl::MutexLock lock(&logs->mu);
    logs->lines.emplace_back(from.name, record.text());
  });
  v1::LogRecord record;
  record.set_kind(v1::LogRecord::STDERR);
  record.set_text("from g");
  RouterOf(*g_)->SendLog(record);
  record.set_text("from c1");
  RouterOf(*c1_)->SendLog(record);
  record.set_text("from master");
  master_->SendLog(record);
  absl::MutexLock lock(&logs->mu);
  Logs* l = logs.get();
  auto three = [l]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(l->mu) { return l->lines.size() >= 3; };
  ASSERT_TRUE(logs->mu.AwaitWithTimeout(absl::Condition(&three), kWait));
  EXPECT_THAT(logs->lines, Contains(Pair("g", "from g")));
  EXPECT_THAT(logs->lines, Contains(Pair("c1", "from c1")));
  EXPECT_THAT(logs->lines, Contains(Pair("master", "from master")));
}

}  // namespace
}  // namespace grove
