// The router's call engine: calls one and two hops away, typed functions, errors and their
// origin, deadlines (carried to nested calls, decided by either clock), cancellation, who may
// call what (CallableBy), output streamed before the result, message limits, many calls at
// once. The fixture is router/testing/router_fixture.h.
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
using ::grove::testing::ReplyGate;
using ::grove::testing::RouterTest;
using ::grove::testing::StatusIs;
using ::testing::_;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::Pair;

TEST_F(RouterTest, PingOneAndTwoHops) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  EXPECT_THAT(c1_->Ping(), IsOk());
  EXPECT_THAT(c2_->Ping(), IsOk());
  EXPECT_THAT(g_->Ping(), IsOk());
  // ping is callable by anyone: up, and sideways across the master.
  EXPECT_THAT(MasterFrom(*g_).Ping(), IsOk());
  EXPECT_THAT(From(*c2_, *g_).Ping(), IsOk());
  EXPECT_THAT(From(*g_, *c2_).Ping(), IsOk());
  // And a context may call itself.
  EXPECT_THAT(From(*g_, *g_).Ping(), IsOk());
  EXPECT_EQ(master_->pending_calls(), 0u);
}

TEST_F(RouterTest, TypedFunctionOneAndTwoHops) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  absl::StatusOr<v1::RunReply> near = c1_->Call<v1::RunReply>("test.echo", Args({"hello", "c1"}));
  ASSERT_THAT(near, IsOk());
  EXPECT_EQ(near->stdout(), "hello c1");
  EXPECT_EQ(near->stderr(), "c1");
  EXPECT_EQ(near->exit_status(), 0);  // Called by the master.

  absl::StatusOr<v1::RunReply> far = g_->Call<v1::RunReply>("test.echo", Args({"hello", "g"}));
  ASSERT_THAT(far, IsOk());
  EXPECT_EQ(far->stdout(), "hello g");
  EXPECT_EQ(far->stderr(), "g");
  EXPECT_EQ(far->exit_status(), 0);

  // c1 is g's parent, so an ancestor.
  absl::StatusOr<v1::RunReply> from_c1 = From(*c1_, *g_).Call<v1::RunReply>("test.echo",
                                                                           Args({"x"}));
  ASSERT_THAT(from_c1, IsOk());
  EXPECT_EQ(from_c1->exit_status(), static_cast<int>(c1_->id().value()));
}

TEST_F(RouterTest, InfoReportsTheCallee) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  absl::StatusOr<v1::InfoReply> info = g_->Info();
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->id(), g_->id().value());
  EXPECT_EQ(info->name(), "g");
  EXPECT_EQ(info->parent(), c1_->id().value());
  EXPECT_EQ(info->method(), "local");
  EXPECT_EQ(info->pid(), ::getpid());
}

TEST_F(RouterTest, UnknownFunctionIsNotFoundNamingFunctionAndContext) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  absl::StatusOr<v1::Empty> near = c1_->Call<v1::Empty>("test.nope", v1::Empty());
  EXPECT_THAT(near, StatusIs(absl::StatusCode::kNotFound,
                             AllOf(HasSubstr("'test.nope'"), HasSubstr("c1"))));
  EXPECT_EQ(OriginOf(near.status()), "c1");

  absl::StatusOr<v1::Empty> far = g_->Call<v1::Empty>("test.nope", v1::Empty());
  EXPECT_THAT(far, StatusIs(absl::StatusCode::kNotFound,
                            AllOf(HasSubstr("'test.nope'"), HasSubstr("context g"))));
  EXPECT_EQ(OriginOf(far.status()), "g");
}

TEST_F(RouterTest, CallToAnUnknownContextFails) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  // The master knows the whole tree: no route is NOT_FOUND, at once.
  EXPECT_THAT(Context(master_.get(), ContextId(999), "?").Ping(),
              StatusIs(absl::StatusCode::kNotFound, HasSubstr("999")));
  // From a child the call goes up, and the master answers that it has no route.
  EXPECT_THAT(Context(RouterOf(*g_), ContextId(999), "?").Ping(),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no route to context 999")));
  EXPECT_EQ(RouterOf(*g_)->pending_calls(), 0u);
}

TEST_F(RouterTest, ArgumentTypeMismatchIsInvalidArgument) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  absl::StatusOr<v1::RunReply> wrong = g_->Call<v1::RunReply>("test.echo", v1::Empty());
  EXPECT_THAT(wrong, StatusIs(absl::StatusCode::kInvalidArgument,
                              AllOf(HasSubstr("test.echo"), HasSubstr("grove.v1.RunRequest"),
                                    HasSubstr("grove.v1.Empty"))));
  EXPECT_EQ(OriginOf(wrong.status()), "g");

  // The right type name with bytes that do not decode.
  std::promise<absl::StatusOr<std::string>> promise;
  std::future<absl::StatusOr<std::string>> result = promise.get_future();
  c1_->CallRaw("test.echo", "grove.v1.RunRequest", std::string("\xff\xff\xff", 3), {},
               [&promise](absl::StatusOr<std::string> r) { promise.set_value(std::move(r)); });
  ASSERT_TRUE(ReadyWithin(result));
  EXPECT_THAT(result.get(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("cannot decode")));
}

// A typed call names the type it will decode the result as: a function that returns another
// type fails the call instead of having its bytes parsed as the wrong message.
TEST_F(RouterTest, ResultTypeMismatchIsInvalidArgument) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  v1::RunRequest echo;
  echo.add_argv("x");
  absl::StatusOr<v1::InfoReply> wrong = g_->Call<v1::InfoReply>("test.echo", echo);
  EXPECT_THAT(wrong, StatusIs(absl::StatusCode::kInvalidArgument,
                              AllOf(HasSubstr("test.echo"), HasSubstr("returns grove.v1.RunReply"),
                                    HasSubstr("not grove.v1.InfoReply"))));
  auto async = g_->CallAsync<v1::Empty>("test.echo", echo);
  EXPECT_THAT(async.get(), StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("returns")));
  EXPECT_TRUE(g_->Call<v1::RunReply>("test.echo", echo).ok());
}

TEST_F(RouterTest, RemoteErrorKeepsCodeMessageAndOrigin) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  absl::StatusOr<v1::RunReply> direct = g_->Call<v1::RunReply>(
      "test.fail", Args({absl::StrCat(static_cast<int>(absl::StatusCode::kFailedPrecondition)),
                         "the widget is broken"}));
  EXPECT_THAT(direct, StatusIs(absl::StatusCode::kFailedPrecondition,
                               AllOf(HasSubstr("the widget is broken"),
                                     EndsWith("[in context g]"))));
  EXPECT_EQ(OriginOf(direct.status()), "g");

  // Through a nested call (master -> c1 -> g): the origin stays where the error happened, and
  // it is named once.
  absl::StatusOr<v1::RunReply> nested = c1_->Call<v1::RunReply>(
      "test.relay",
      Args({absl::StrCat(g_->id().value()), "test.fail",
            absl::StrCat(static_cast<int>(absl::StatusCode::kNotFound)), "no such widget"}));
  EXPECT_THAT(nested, StatusIs(absl::StatusCode::kNotFound,
                               AllOf(HasSubstr("no such widget"), EndsWith("[in context g]"),
                                     Not(HasSubstr("[in context g] [in context")))));
  EXPECT_EQ(OriginOf(nested.status()), "g");
}

TEST_F(RouterTest, DeadlineExceededFailsTheCallAndCancelsTheCallee) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  // The callee's answer is held until the caller's clock has decided: otherwise it can win the
  // race with CANCELLED (see DeadlineIsDeadlineExceededEvenWhenTheCalleeAnswersFirst).
  std::shared_ptr<ReplyGate> gate = ReplyGate::Install(*launcher_->parent_end(c1_->id()));
  CallOptions options;
  options.timeout = absl::Milliseconds(50);
  const absl::Time start = absl::Now();
  absl::StatusOr<v1::Empty> slept = g_->Call<v1::Empty>("grove.sleep", Ms(10000), options);
  EXPECT_THAT(slept, StatusIs(absl::StatusCode::kDeadlineExceeded,
                              AllOf(HasSubstr("grove.sleep"), HasSubstr("g (id"))));
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(master_->pending_calls(), 0u);
  // The callee saw its deadline pass: its 10 s sleep ended at once, and it says why.
  ASSERT_TRUE(gate->WaitForReplies(1));
  EXPECT_EQ(gate->replies()[0].code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(gate->replies()[0].origin(), "g");
  EXPECT_THAT(gate->replies()[0].message(), HasSubstr("ran past its deadline"));
  gate->Release();

  // A function of ours, one hop away.
  gate->Hold();
  absl::StatusOr<v1::Empty> blocked = c1_->Call<v1::Empty>("test.block", Ms(30000), options);
  EXPECT_THAT(blocked, StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("test.block")));
  EXPECT_TRUE(probe_.WaitCancelled(1));
  EXPECT_EQ(master_->pending_calls(), 0u);
  gate->Release();

  // A deadline already passed never leaves.
  CallOptions past;
  past.deadline = absl::Now() - absl::Seconds(1);
  EXPECT_THAT(c1_->Ping(past), StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("c1")));
}

TEST_F(RouterTest, ACancelSentForAPassedDeadlineIsDeadlineExceededAtTheCallee) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  // The caller's clock reaches a deadline before the callee's does (the callee starts its clock
  // when the call arrives), so the caller's cancel can arrive first. It says why it was sent.
  std::shared_ptr<ReplyGate> gate = ReplyGate::Install(*launcher_->parent_end(c1_->id()));
  gate->Release();
  std::shared_ptr<InMemoryLink> down = launcher_->parent_end(c1_->id());
  const uint64_t c1 = c1_->id().value();
  auto call_then_cancel = [&](uint64_t id, bool deadline_exceeded) {
    v1::Envelope call = CallEnvelope(0, c1, id, "grove.sleep", Ms(30000));
    call.mutable_call()->set_timeout_us(absl::ToInt64Microseconds(absl::Seconds(30)));
    down->Send(call);
    v1::Envelope cancel;
    cancel.set_src(0);
    cancel.set_dst(c1);
    cancel.mutable_cancel()->set_id(id);
    cancel.mutable_cancel()->set_deadline_exceeded(deadline_exceeded);
    down->Send(cancel);
  };
  call_then_cancel(101, true);
  ASSERT_TRUE(gate->WaitForReplies(1));
  EXPECT_EQ(gate->replies()[0].code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(gate->replies()[0].message(), HasSubstr("ran past its deadline"));
  // A cancel for any other reason stays a cancel.
  call_then_cancel(102, false);
  ASSERT_TRUE(gate->WaitForReplies(2));
  EXPECT_EQ(gate->replies()[1].code(), static_cast<int>(absl::StatusCode::kCancelled));
}

TEST_F(RouterTest, DeadlineCarriesOverToNestedCalls) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  std::shared_ptr<ReplyGate> gate = ReplyGate::Install(*launcher_->parent_end(c1_->id()));
  CallOptions options;
  options.timeout = absl::Milliseconds(200);
  // master -> c1 (a function that calls, passing its CallContext) -> g (blocks for 30 s).
  absl::StatusOr<v1::Empty> relayed = c1_->Call<v1::Empty>(
      "test.relay_block", Args({absl::StrCat(g_->id().value()), "30000"}), options);
  EXPECT_THAT(relayed,
              StatusIs(absl::StatusCode::kDeadlineExceeded, HasSubstr("test.relay_block")));
  EXPECT_EQ(master_->pending_calls(), 0u);
  // The nested call inherited the deadline: g's function is cancelled, c1's call returns.
  EXPECT_TRUE(probe_.WaitCancelled(1));
  ASSERT_TRUE(probe_.WaitRelayed(1));
  EXPECT_EQ(RouterOf(*c1_)->pending_calls(), 0u);
  // c1's late answer is an error (which one depends on which timer or reply wins in c1; see
  // NestedCallPastItsInheritedDeadlineIsDeadlineExceeded).
  ASSERT_TRUE(gate->WaitForReplies(1));
  EXPECT_NE(gate->replies()[0].code(), 0);
  gate->Release();
}

TEST_F(RouterTest, CancelSourceCancelsTheCall) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  CancelSource cancel;
  CallOptions options;
  options.cancel = &cancel;
  std::future<absl::StatusOr<v1::Empty>> call =
      g_->CallAsync<v1::Empty>("test.block", Ms(30000), options);
  ASSERT_TRUE(probe_.WaitStarted(1));
  EXPECT_EQ(master_->pending_calls(), 1u);
  cancel.Cancel();
  ASSERT_TRUE(ReadyWithin(call));
  EXPECT_THAT(call.get(), StatusIs(absl::StatusCode::kCancelled, HasSubstr("test.block")));
  EXPECT_EQ(master_->pending_calls(), 0u);
  // The Cancel envelope travels two hops and stops the function.
  EXPECT_TRUE(probe_.WaitCancelled(1));
}

TEST_F(RouterTest, AlreadyCancelledCallNeverLeaves) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  CancelSource cancel;
  cancel.Cancel();
  CallOptions options;
  options.cancel = &cancel;
  std::future<absl::StatusOr<v1::Empty>> call =
      c1_->CallAsync<v1::Empty>("test.record", v1::Empty(), options);
  ASSERT_TRUE(ReadyNow(call));
  EXPECT_THAT(call.get(), StatusIs(absl::StatusCode::kCancelled, HasSubstr("test.record")));
  EXPECT_EQ(master_->pending_calls(), 0u);
  // test.record runs inline in arrival order, so had the call been sent, c1 would have
  // recorded it before answering this ping.
  ASSERT_THAT(c1_->Ping(), IsOk());
  EXPECT_THAT(probe_.callers(), IsEmpty());
}

TEST_F(RouterTest, ChildCallingUpNeedsAnExposedFunction) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  Context master_from_c1 = MasterFrom(*c1_);
  EXPECT_THAT(master_from_c1.Call<v1::InfoReply>("test.ancestors", v1::Empty()),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr("test.ancestors"), HasSubstr("c1"),
                             HasSubstr("master"))));
  absl::StatusOr<v1::InfoReply> allowed =
      master_from_c1.Call<v1::InfoReply>("test.descendants", v1::Empty());
  ASSERT_THAT(allowed, IsOk());
  EXPECT_EQ(allowed->id(), 0u);
  EXPECT_EQ(allowed->parent(), c1_->id().value());
  EXPECT_THAT(master_from_c1.Call<v1::InfoReply>("test.any", v1::Empty()), IsOk());

  // Two levels down is a descendant too.
  Context master_from_g = MasterFrom(*g_);
  EXPECT_THAT(master_from_g.Call<v1::InfoReply>("test.descendants", v1::Empty()), IsOk());
  EXPECT_THAT(master_from_g.Call<v1::InfoReply>("test.ancestors", v1::Empty()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("g (id")));
  // g calling its own parent.
  EXPECT_THAT(From(*g_, *c1_).Call<v1::InfoReply>("test.descendants", v1::Empty()), IsOk());
  EXPECT_THAT(From(*g_, *c1_).Call<v1::InfoReply>("test.ancestors", v1::Empty()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("test.ancestors")));

  // The built-ins that act on a context are for its ancestors only: a child cannot run
  // commands in the master, start contexts there, or read its info.
  EXPECT_THAT(master_from_c1.Run(Args({"/bin/true"})),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("grove.run")));
  v1::SpawnRequest spawn;
  spawn.set_hop("local");
  EXPECT_THAT(master_from_c1.Call<v1::SpawnReply>("grove.spawn", spawn),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("grove.spawn")));
  EXPECT_THAT(master_from_c1.Info(), StatusIs(absl::StatusCode::kPermissionDenied, _));
  EXPECT_EQ(launcher_->launches(), 3);
}

TEST_F(RouterTest, SiblingCallsNeedAFunctionCallableByAny) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  Context c1_from_c2 = From(*c2_, *c1_);
  EXPECT_THAT(c1_from_c2.Call<v1::InfoReply>("test.ancestors", v1::Empty()),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       AllOf(HasSubstr(absl::StrCat("context ", c2_->id().value())),
                             HasSubstr("test.ancestors"), HasSubstr("context c1"))));
  EXPECT_THAT(c1_from_c2.Call<v1::InfoReply>("test.descendants", v1::Empty()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("test.descendants")));
  absl::StatusOr<v1::InfoReply> any = c1_from_c2.Call<v1::InfoReply>("test.any", v1::Empty());
  ASSERT_THAT(any, IsOk());
  EXPECT_EQ(any->id(), c1_->id().value());
  EXPECT_EQ(any->parent(), c2_->id().value());

  // A cousin, two hops away on the other side.
  Context g_from_c2 = From(*c2_, *g_);
  EXPECT_THAT(g_from_c2.Call<v1::InfoReply>("test.ancestors", v1::Empty()),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("test.ancestors")));
  EXPECT_THAT(g_from_c2.Call<v1::InfoReply>("test.any", v1::Empty()), IsOk());
  EXPECT_THAT(From(*g_, *c2_).Call<v1::InfoReply>("test.any", v1::Empty()), IsOk());

  // Downward calls are always allowed.
  EXPECT_THAT(g_->Call<v1::InfoReply>("test.ancestors", v1::Empty()), IsOk());
  EXPECT_THAT(From(*c1_, *g_).Call<v1::InfoReply>("test.ancestors", v1::Empty()), IsOk());
}

TEST_F(RouterTest, OutputIsStreamedBeforeTheResult) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  absl::Mutex mu;
  std::vector<std::pair<int, std::string>> output;
  size_t output_at_done = 0;
  CallOptions options;
  options.on_output = [&](int stream, const std::string& data) {
    absl::MutexLock lock(&mu);
    output.emplace_back(stream, data);
  };
  std::promise<absl::StatusOr<std::string>> promise;
  std::future<absl::StatusOr<std::string>> result = promise.get_future();
  g_->CallRaw("test.chatter", "grove.v1.RunRequest", Args({"a", "b", "c"}).SerializeAsString(),
              options, [&](absl::StatusOr<std::string> r) {
                {
                  absl::MutexLock lock(&mu);
                  output_at_done = output.size();
                }
                promise.set_value(std::move(r));
              });
  ASSERT_TRUE(ReadyWithin(result));
  ASSERT_THAT(result.get(), IsOk());
  absl::MutexLock lock(&mu);
  EXPECT_THAT(output, ElementsAre(Pair(1, "a"), Pair(2, "b"), Pair(1, "c")));
  EXPECT_EQ(output_at_done, 3u);
}

TEST_F(RouterTest, MessagesOverTheLimitAreRefused) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  // An argument over the limit never leaves.
  v1::RunRequest huge = Args({std::string(kMaxMessageBytes, 'x')});
  absl::StatusOr<v1::RunReply> sent = g_->Call<v1::RunReply>("test.echo", huge);
  EXPECT_THAT(sent, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("test.echo")));
  EXPECT_EQ(OriginOf(sent.status()), "");
  // A result over the limit (the children inherit the master's limit) becomes an error there.
  absl::StatusOr<v1::RunReply> big = g_->Call<v1::RunReply>("test.big", Ms(kMaxMessageBytes));
  EXPECT_THAT(big, StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("test.big")));
  EXPECT_EQ(OriginOf(big.status()), "g");
  EXPECT_EQ(RouterOf(*g_)->max_message_bytes(), kMaxMessageBytes);
  // Just under the limit is fine.
  EXPECT_THAT(g_->Call<v1::RunReply>("test.big", Ms(kMaxMessageBytes - 100)), IsOk());
}

TEST_F(RouterTest, ManyCallsInFlightFromManyThreads) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  std::vector<std::future<absl::StatusOr<v1::RunReply>>> calls;
  for (int i = 0; i < 200; ++i) {
    const Context& target = i % 2 == 0 ? *g_ : *c2_;
    calls.push_back(target.CallAsync<v1::RunReply>("test.echo", Args({absl::StrCat(i)})));
  }
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(ReadyWithin(calls[i])) << i;
    absl::StatusOr<v1::RunReply> reply = calls[i].get();
    ASSERT_THAT(reply, IsOk());
    EXPECT_EQ(reply->stdout(), absl::StrCat(i));
    EXPECT_EQ(reply->stderr(), i % 2 == 0 ? "g" : "c2");
  }
  // Several threads, several callers, sideways and up.
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (const Context* caller : {&*c1_, &*c2_, &*g_}) {
    threads.emplace_back([&, caller] {
      for (int i = 0; i < 50; ++i) {
        if (!MasterFrom(*caller).Call<v1::InfoReply>("test.any", v1::Empty()).ok()) ++failures;
        if (!From(*caller, *c2_).Ping().ok()) ++failures;
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(master_->pending_calls(), 0u);
}

// A call past its deadline fails with DEADLINE_EXCEEDED even when the callee answers first
// (Router::RunCall, router/router_calls.cc): the callee's own deadline timer cancels the
// function (its deadline is the caller's plus the transit time), and a function that returns
// CANCELLED on cancellation (grove.sleep does) is reported as DEADLINE_EXCEEDED, as
// CallOptions promises. Deterministic here: call A's `done` runs on the master's timer thread
// and keeps it busy until call B has completed, so B can only complete through the callee's
// reply.
TEST_F(RouterTest, DeadlineIsDeadlineExceededEvenWhenTheCalleeAnswersFirst) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  auto b_done = std::make_shared<std::promise<absl::StatusOr<std::string>>>();
  std::shared_future<absl::StatusOr<std::string>> b_result = b_done->get_future().share();
  CallOptions a_options;
  a_options.timeout = absl::Milliseconds(50);
  master_->StartCall(c1_->id(), "test.block", "grove.v1.SleepRequest",
                     Ms(30000).SerializeAsString(), a_options,
                     [b_result](absl::StatusOr<std::string>) {
                       // On the timer thread (A's deadline): hold it until B is decided.
                       b_result.wait_for(absl::ToChronoMilliseconds(kWait));
                     });
  CallOptions b_options;
  b_options.timeout = absl::Milliseconds(300);
  master_->StartCall(c1_->id(), "grove.sleep", "grove.v1.SleepRequest",
                     Ms(30000).SerializeAsString(), b_options,
                     [b_done](absl::StatusOr<std::string> r) { b_done->set_value(std::move(r)); });
  ASSERT_EQ(b_result.wait_for(absl::ToChronoMilliseconds(kWait)), std::future_status::ready);
  EXPECT_THAT(b_result.get(), StatusIs(absl::StatusCode::kDeadlineExceeded, _));
}

// A nested call inherits its parent's deadline exactly; the parent's deadline timer (scheduled
// first, so run first) cancels the parent's CallContext, and the nested call passes that on as
// DEADLINE_EXCEEDED, not CANCELLED (Router::StartCall with CallOptions::parent).
TEST_F(RouterTest, NestedCallPastItsInheritedDeadlineIsDeadlineExceeded) {
  ASSERT_NO_FATAL_FAILURE(SpawnTree());
  std::shared_ptr<ReplyGate> gate = ReplyGate::Install(*launcher_->parent_end(c1_->id()));
  CallOptions options;
  options.timeout = absl::Milliseconds(200);
  absl::StatusOr<v1::Empty> relayed = c1_->Call<v1::Empty>(
      "test.relay_block", Args({absl::StrCat(g_->id().value()), "30000"}), options);
  ASSERT_TRUE(gate->WaitForReplies(1));
  gate->Release();
  // What c1's function got back from its nested call, and returned.
  EXPECT_EQ(gate->replies()[0].code(), static_cast<int>(absl::StatusCode::kDeadlineExceeded))
      << gate->replies()[0].message();
}

}  // namespace
}  // namespace grove
