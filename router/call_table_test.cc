#include "router/call_table.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "router/testing/fake_link.h"

namespace grove {
namespace {

using ::grove::testing::IsOk;
using ::grove::testing::StatusIs;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

std::shared_ptr<Link> NewLink(const char* name) {
  return std::make_shared<FakeLink>(name, [](FakeLink*, v1::Envelope) {});
}

std::shared_ptr<PendingCall> CallTo(uint64_t dst, std::shared_ptr<Link> via) {
  auto call = std::make_shared<PendingCall>();
  call->dst = dst;
  call->via = std::move(via);
  return call;
}

std::shared_ptr<CallContext> Running(uint64_t src, uint64_t id) {
  return std::make_shared<CallContext>(nullptr, ContextId(src), id, absl::InfiniteFuture());
}

std::vector<uint64_t> DstsOf(const std::vector<std::shared_ptr<PendingCall>>& calls) {
  std::vector<uint64_t> dsts;
  for (const auto& call : calls) dsts.push_back(call->dst);
  return dsts;
}

TEST(CallTableTest, AReplyIsTakenOnceAndOnlyFromTheLinkItsCallWentOutOn) {
  CallTable table(10);
  std::shared_ptr<Link> child = NewLink("child");
  std::shared_ptr<Link> other = NewLink("other");
  std::shared_ptr<PendingCall> call = CallTo(5, child);
  ASSERT_THAT(table.AddPending(1, call), IsOk());

  EXPECT_THAT(table.TakeReply(1, other.get()), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(table.TakeReply(1, nullptr), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_TRUE(table.IsPending(1));  // A forged reply leaves the call waiting for its own.

  absl::StatusOr<std::shared_ptr<PendingCall>> taken = table.TakeReply(1, child.get());
  ASSERT_THAT(taken, IsOk());
  EXPECT_EQ(*taken, call);
  EXPECT_FALSE(table.IsPending(1));
  EXPECT_EQ(table.pending_count(), 0u);
  EXPECT_THAT(table.TakeReply(1, child.get()), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(table.TakePending(1), nullptr);
}

TEST(CallTableTest, ACallToThisContextTakesItsReplyFromThisContextOnly) {
  CallTable table(10);
  std::shared_ptr<Link> link = NewLink("parent");
  ASSERT_THAT(table.AddPending(1, CallTo(0, nullptr)), IsOk());
  EXPECT_THAT(table.TakeReply(1, link.get()), StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(table.TakeReply(1, nullptr), IsOk());
}

TEST(CallTableTest, ACallIdIsPendingOnce) {
  CallTable table(10);
  std::shared_ptr<PendingCall> first = CallTo(5, nullptr);
  ASSERT_THAT(table.AddPending(1, first), IsOk());
  EXPECT_THAT(table.AddPending(1, CallTo(6, nullptr)), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(table.pending_count(), 1u);
  EXPECT_EQ(table.TakePending(1), first);
}

TEST(CallTableTest, OutputIsTakenOnlyFromTheCallsLinkAndLeavesItPending) {
  CallTable table(10);
  std::shared_ptr<Link> child = NewLink("child");
  std::shared_ptr<Link> other = NewLink("other");
  std::shared_ptr<PendingCall> call = CallTo(5, child);
  ASSERT_THAT(table.AddPending(1, call), IsOk());
  EXPECT_EQ(table.PendingFrom(1, other.get()), nullptr);
  EXPECT_EQ(table.PendingFrom(2, child.get()), nullptr);
  EXPECT_EQ(table.PendingFrom(1, child.get()), call);
  EXPECT_TRUE(table.IsPending(1));
}

TEST(CallTableTest, CallsToALostSubtreeAreAllTakenAndNothingElse) {
  CallTable table(10);
  std::shared_ptr<Link> lost = NewLink("lost");
  std::shared_ptr<Link> kept = NewLink("kept");
  ASSERT_THAT(table.AddPending(1, CallTo(5, lost)), IsOk());
  ASSERT_THAT(table.AddPending(2, CallTo(6, lost)), IsOk());
  ASSERT_THAT(table.AddPending(3, CallTo(5, lost)), IsOk());
  ASSERT_THAT(table.AddPending(4, CallTo(7, kept)), IsOk());
  ASSERT_THAT(table.AddPending(5, CallTo(8, nullptr)), IsOk());

  EXPECT_THAT(DstsOf(table.TakePendingTo({5, 6})), UnorderedElementsAre(5, 5, 6));
  EXPECT_EQ(table.pending_count(), 2u);
  EXPECT_TRUE(table.IsPending(4));
  EXPECT_TRUE(table.IsPending(5));
  EXPECT_THAT(table.TakePendingTo({5, 6}), IsEmpty());  // Taken once.

  EXPECT_THAT(DstsOf(table.TakePendingWhere([](uint64_t dst) { return dst == 8; })),
              UnorderedElementsAre(8));
  EXPECT_THAT(DstsOf(table.TakeAllPending()), UnorderedElementsAre(7));
  EXPECT_EQ(table.pending_count(), 0u);
}

TEST(CallTableTest, CallsFromLostCallersAreFoundAndStayUntilTheyEnd) {
  CallTable table(10);
  std::shared_ptr<CallContext> from5 = Running(5, 1);
  std::shared_ptr<CallContext> also_from5 = Running(5, 2);
  std::shared_ptr<CallContext> from9 = Running(9, 1);
  ASSERT_THAT(table.AddIncoming({5, 1, std::nullopt}, from5), IsOk());
  ASSERT_THAT(table.AddIncoming({5, 2, std::nullopt}, also_from5), IsOk());
  ASSERT_THAT(table.AddIncoming({9, 1, std::nullopt}, from9), IsOk());

  EXPECT_THAT(table.IncomingFrom({5, 6}), UnorderedElementsAre(from5, also_from5));
  EXPECT_EQ(table.incoming_count(), 3u);  // They leave as they end.
  EXPECT_EQ(table.FindIncoming(5, 2), also_from5);
  EXPECT_EQ(table.FindIncoming(9, 2), nullptr);  // Call ids are per caller.
  EXPECT_THAT(table.AllIncoming(), UnorderedElementsAre(from5, also_from5, from9));

  table.RemoveIncoming({5, 1, std::nullopt});
  EXPECT_EQ(table.FindIncoming(5, 1), nullptr);
  EXPECT_THAT(table.IncomingFrom({5}), UnorderedElementsAre(also_from5));
}

TEST(CallTableTest, RunningCallsAreLimitedPerLink) {
  CallTable table(2);
  ASSERT_THAT(table.AddIncoming({5, 1, 10}, Running(5, 1)), IsOk());
  ASSERT_THAT(table.AddIncoming({6, 1, 10}, Running(6, 1)), IsOk());
  EXPECT_THAT(table.AddIncoming({5, 2, 10}, Running(5, 2)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(table.FindIncoming(5, 2), nullptr);  // Refused: not recorded.
  EXPECT_EQ(table.running_over(10), 2);

  // Another link, and calls not counted, are not held back.
  EXPECT_THAT(table.AddIncoming({7, 1, 11}, Running(7, 1)), IsOk());
  EXPECT_THAT(table.AddIncoming({5, 3, std::nullopt}, Running(5, 3)), IsOk());
  EXPECT_EQ(table.running_over(11), 1);

  table.RemoveIncoming({5, 1, 10});
  EXPECT_EQ(table.running_over(10), 1);
  EXPECT_THAT(table.AddIncoming({5, 2, 10}, Running(5, 2)), IsOk());

  table.RemoveIncoming({6, 1, 10});
  table.RemoveIncoming({5, 2, 10});
  table.RemoveIncoming({7, 1, 11});
  EXPECT_EQ(table.running_over(10), 0);
  EXPECT_EQ(table.running_over(11), 0);
}

// A caller that reuses a call id while the first still runs: the table keeps the latest, and
// each call counts in and out of its link once.
TEST(CallTableTest, AReusedCallIdReplacesTheEntryAndCountsBothCalls) {
  CallTable table(10);
  std::shared_ptr<CallContext> first = Running(5, 1);
  std::shared_ptr<CallContext> second = Running(5, 1);
  ASSERT_THAT(table.AddIncoming({5, 1, 10}, first), IsOk());
  ASSERT_THAT(table.AddIncoming({5, 1, 10}, second), IsOk());
  EXPECT_EQ(table.FindIncoming(5, 1), second);
  EXPECT_EQ(table.running_over(10), 2);
  table.RemoveIncoming({5, 1, 10});
  table.RemoveIncoming({5, 1, 10});
  EXPECT_EQ(table.running_over(10), 0);
  EXPECT_EQ(table.incoming_count(), 0u);
}

TEST(CallTableTest, ALinkWithNoCallsAllowedRefusesEveryCountedCall) {
  CallTable table(0);
  EXPECT_THAT(table.AddIncoming({5, 1, 10}, Running(5, 1)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(table.running_over(10), 0);
  EXPECT_THAT(table.AddIncoming({5, 1, std::nullopt}, Running(5, 1)), IsOk());
}

}  // namespace
}  // namespace grove
