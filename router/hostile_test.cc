// A hostile child (SECURITY.md, "What a compromised context can and cannot do"): what it can send up its link,
// beyond what routing_test.cc and calls_test.cc already cover (spoofed sources, forged replies, calls up and
// sideways against the policy, ContextAdded/Removed outside its subtree, ids the master
// never handed out, Shutdown sent upwards).
//
// The routers run in this process on in-memory links (every envelope through the wire
// format), so the hostile side can write any envelope it likes on its end of a link, which a
// real child could do too (it owns its end of the socket). Every wait has a deadline;
// nothing sleeps to synchronise.
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>


#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "glog/logging.h"
#include "gtest/gtest.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "router/context.h"
#include "router/functions.h"
#include "link/launcher.h"
#include "router/registry.h"
#include "router/router.h"
#include "router/testing/fake_link.h"
#include "link/testing/in_memory_link.h"
#include "router/testing/in_process_launcher.h"

namespace grove {
namespace {

constexpr absl::Duration kWait = absl::Seconds(20);

// Counts what the master's log sink receives, per context name, and keeps the routers'
// notices of dropped records. Thread-safe.
class LogCounter {
 public:
  LogSink Sink() {
    return [this](const ContextRecord& from, const v1::LogRecord& record) {
      absl::MutexLock lock(&mu_);
      ++counts_[from.name];
      if (absl::StrContains(record.text(), " log records from the subtree of ")) {
        notices_.push_back(absl::StrCat(from.name, ": ", record.text()));
      }
    };
  }
  int64_t count(const std::string& name) {
    absl::MutexLock lock(&mu_);
    return counts_[name];
  }
  bool WaitFor(const std::string& name, int64_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return counts_[name] >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
  }
  std::vector<std::string> notices() {
    absl::MutexLock lock(&mu_);
    return notices_;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, int64_t> counts_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> notices_ ABSL_GUARDED_BY(mu_);
};

// The number N in "... dropped N log records from the subtree of <name>..." in `notices`
// (summed), for notices that name `name`.
int64_t Dropped(const std::vector<std::string>& notices, const std::string& name) {
  int64_t total = 0;
  for (const std::string& n : notices) {
    if (!absl::StrContains(n, absl::StrCat(" log records from the subtree of ", name, ":"))) continue;
    size_t at = n.find(" dropped ");
    int64_t count = 0;
    if (at != std::string::npos &&
        absl::SimpleAtoi(absl::string_view(n).substr(at + 9, n.find(' ', at + 9) - at - 9), &count)) {
      total += count;
    }
  }
  return total;
}

// The glog records of this process (every router of the test logs here) while it lives.
class GlogCapture : public google::LogSink {
 public:
  GlogCapture() { google::AddLogSink(this); }
  ~GlogCapture() override { google::RemoveLogSink(this); }

  void send(google::LogSeverity, const char*, const char*, int, const struct ::tm*,
            const char* message, size_t message_len) override {
    absl::MutexLock lock(&mu_);
    messages_.emplace_back(message, message_len);
  }
  // Whether a record so far contains `text`.
  bool Saw(absl::string_view text) {
    absl::MutexLock lock(&mu_);
    return std::any_of(messages_.begin(), messages_.end(),
                       [&](const std::string& m) { return absl::StrContains(m, text); });
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> messages_ ABSL_GUARDED_BY(mu_);
};

// What the master of a HostileChildTest remembers and allows (Router::Options).
struct Limits {
  size_t gone_history = kDefaultGoneHistory;
  size_t max_contexts_per_link = Router::Options().max_contexts_per_link;
  int max_running_calls_per_link = Router::Options().max_running_calls_per_link;
};

class HostileChildTest : public ::testing::Test {
 protected:
  explicit HostileChildTest(Limits limits = Limits()) {
    // Who am I and who called: callable by any context, so that sideways calls reach it.
    functions_.Register<v1::Empty, v1::InfoReply>(
        "test.whoami",
        [](const v1::Empty&, CallContext& call) -> absl::StatusOr<v1::InfoReply> {
          v1::InfoReply out;
          out.set_id(call.router().id().value());
          out.set_name(call.router().name());
          out.set_parent(call.caller().value());
          return out;
        },
        {CallableBy::kAny, true});
    // Blocks until cancelled (or `ms`), counting starts and cancellations.
    functions_.Register<v1::SleepRequest, v1::Empty>(
        "test.block",
        [this](const v1::SleepRequest& in, CallContext& call) -> absl::StatusOr<v1::Empty> {
          {
            absl::MutexLock lock(&mu_);
            ++blocks_started_;
          }
          absl::Notification cancelled;
          uint64_t id = call.cancel_source().AddCallback([&cancelled] { cancelled.Notify(); });
          bool was = cancelled.WaitForNotificationWithTimeout(absl::Milliseconds(in.ms()));
          if (id != 0) call.cancel_source().RemoveCallback(id);
          absl::MutexLock lock(&mu_);
          if (!was) return v1::Empty();
          ++blocks_cancelled_;
          return absl::CancelledError("block cancelled");
        },
        {CallableBy::kAny, false});
    launcher_ = std::make_unique<InProcessLauncher>(&network_, &functions_);
    Router::Options options;
    options.self.set_id(0);
    options.self.set_name("master");
    options.self.set_method("master");
    options.self.set_host("in-memory");
    options.functions = &functions_;
    options.stop_grace = absl::Milliseconds(100);
    options.gone_history = limits.gone_history;
    options.max_contexts_per_link = limits.max_contexts_per_link;
    options.max_running_calls_per_link = limits.max_running_calls_per_link;
    master_ = std::make_unique<Router>(options);
    master_->AddLauncher("local", launcher_.get());
    master_->SetLogSink(logs_.Sink());
  }

  void TearDown() override {
    launcher_->ShutdownAll();
    master_->Shutdown(absl::CancelledError("the test is over"));
    EXPECT_TRUE(network_.WaitUntilAllDown(kWait));
    master_.reset();
    launcher_.reset();
  }

  Context Master() { return Context(master_.get(), kMasterId, "master"); }
  // `target` as seen from `from`'s router.
  Context From(const Context& from, const Context& target) {
    Router* r = from.id() == kMasterId ? master_.get() : launcher_->router(from.id());
    CHECK(r != nullptr);
    return Context(r, target.id(), target.name());
  }
  Context Spawn(const Context& parent, const std::string& name) {
    absl::StatusOr<Context> c = parent.Spawn(absl::StrCat("local,name=", name));
    CHECK(c.ok()) << c.status();
    return *c;
  }
  // Sends `envelope` up the link of child `from`, as a hostile child would.
  void SendUp(const Context& from, v1::Envelope envelope) {
    launcher_->child_end(from.id())->Send(std::move(envelope));
  }
  // A round trip up `from`'s link: once it is answered, everything `from` sent before it has
  // been handled by its parent (one link delivers in order, on one thread).
  void Flush(const Context& from) {
    absl::StatusOr<v1::InfoReply> r =
        From(from, Master()).Call<v1::InfoReply>("test.whoami", v1::Empty());
    ASSERT_TRUE(r.ok()) << r.status();
  }
  // After a flood of `flooded` records from `from`'s link in `as`'s name: sends one more
  // record at a time until the records that reached the master and those its parent said it
  // dropped add up to all that were sent (the count goes up with a record that passes, at
  // most once a second). Returns how many it sent, the flood included.
  int SendUntilDropsAreReported(const Context& from, const Context& as, int flooded) {
    int sent = flooded;
    const absl::Time deadline = absl::Now() + kWait;
    while (logs_.count(as.name()) + Dropped(logs_.notices(), as.name()) < sent &&
           absl::Now() < deadline) {
      v1::Envelope log;
      log.set_src(as.id().value());
      log.set_dst(0);
      log.mutable_log()->set_text("after the flood");
      SendUp(from, log);
      ++sent;
      Flush(from);
    }
    return sent;
  }
  int blocks_started() {
    absl::MutexLock lock(&mu_);
    return blocks_started_;
  }
  int blocks_cancelled() {
    absl::MutexLock lock(&mu_);
    return blocks_cancelled_;
  }
  bool WaitBlocksStarted(int n) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return blocks_started_ >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
  }

  static v1::Envelope Added(const Context& src, uint64_t id, uint64_t parent,
                            const std::string& name) {
    v1::Envelope e;
    e.set_src(src.id().value());
    e.set_dst(0);
    v1::ContextInfo* info = e.mutable_added()->mutable_info();
    info->set_id(id);
    info->set_parent(parent);
    info->set_name(name);
    return e;
  }

  // Declared in destruction order: the network (joining link threads) goes last.
  InMemoryNetwork network_;
  LogCounter logs_;
  absl::Mutex mu_;
  int blocks_started_ ABSL_GUARDED_BY(mu_) = 0;
  int blocks_cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  Functions functions_;
  std::unique_ptr<InProcessLauncher> launcher_;
  std::unique_ptr<Router> master_;
};

// ---- Log records ----

TEST_F(HostileChildTest, LogRecordsAreTaggedWithTheirRealSourceOnly) {
  Context c1 = Spawn(Master(), "c1");
  Context c2 = Spawn(Master(), "c2");
  Context g1 = Spawn(c1, "g1");
  v1::Envelope log;
  log.set_dst(0);
  log.mutable_log()->set_text("a record");
  log.set_src(c2.id().value());  // In its sibling's name: dropped.
  SendUp(c1, log);
  log.set_src(0);  // In the master's name: dropped.
  SendUp(c1, log);
  log.set_src(g1.id().value());  // In its own child's name: allowed.
  SendUp(c1, log);
  log.set_src(c1.id().value());
  SendUp(c1, log);
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  EXPECT_EQ(logs_.count("c2"), 0);
  EXPECT_EQ(logs_.count("master"), 0);
  EXPECT_EQ(logs_.count("g1"), 1);
  EXPECT_EQ(logs_.count("c1"), 1);
}

// Sends `n` log records up the link of `from`, in its name, as fast as the link takes them.
void Flood(const std::shared_ptr<InMemoryLink>& end, const Context& from, int n) {
  v1::Envelope log;
  log.set_src(from.id().value());
  log.set_dst(0);
  log.mutable_log()->set_text(std::string(100, 'y'));
  for (int i = 0; i < n; ++i) end->Send(log);
}

// A child sends 200 000 log records as fast as its link takes them. The master's calls to its
// sibling answer meanwhile, each within a second; the master takes what the quota lets
// through (router/log_quota.h: 20 000 a second, a burst of as many), drops the rest and
// says how many it dropped (once a second, when records pass): nothing goes without a count.
TEST_F(HostileChildTest, LogFloodIsCappedAndDoesNotStallCallsToASibling) {
  Context c1 = Spawn(Master(), "c1");
  Context c2 = Spawn(Master(), "c2");
  constexpr int kFlood = 200000;
  const absl::Time start = absl::Now();
  std::thread flood([&] { Flood(launcher_->child_end(c1.id()), c1, kFlood); });
  ASSERT_TRUE(logs_.WaitFor("c1", 1000));
  absl::Duration worst;
  for (int calls = 0; calls < 100; ++calls) {
    CallOptions options;
    options.timeout = absl::Seconds(1);
    absl::Time before = absl::Now();
    absl::StatusOr<v1::InfoReply> r = c2.Call<v1::InfoReply>("test.whoami", v1::Empty(), options);
    worst = std::max(worst, absl::Now() - before);
    ASSERT_TRUE(r.ok()) << "call " << calls << " during the flood: " << r.status();
  }
  flood.join();
  ASSERT_NO_FATAL_FAILURE(Flush(c1));  // The whole flood has been handled.
  const int sent = SendUntilDropsAreReported(c1, c1, kFlood);
  const absl::Duration took = absl::Now() - start;
  const int64_t passed = logs_.count("c1");
  const int64_t dropped = Dropped(logs_.notices(), "c1");
  LOG(INFO) << "in " << took << ": " << passed << " records passed, " << dropped
            << " dropped; the slowest of 100 calls to the sibling took " << worst;
  EXPECT_EQ(passed + dropped, sent);
  EXPECT_LE(passed, 20000 + 20000 * absl::ToDoubleSeconds(took));
  EXPECT_GT(dropped, 0);
}

// The same from a grandchild: its parent c1 drops the excess before forwarding it, so that
// c1's own link to the master stays free for replies.
TEST_F(HostileChildTest, LogFloodFromAGrandchildIsCappedByItsParent) {
  Context c1 = Spawn(Master(), "c1");
  Context g1 = Spawn(c1, "g1");
  Context g2 = Spawn(c1, "g2");
  constexpr int kFlood = 200000;
  const absl::Time start = absl::Now();
  std::thread flood([&] { Flood(launcher_->child_end(g1.id()), g1, kFlood); });
  ASSERT_TRUE(logs_.WaitFor("g1", 1000));
  for (int calls = 0; calls < 100; ++calls) {
    CallOptions options;
    options.timeout = absl::Seconds(1);
    for (const Context* c : {&c1, &g2}) {
      absl::StatusOr<v1::InfoReply> r = c->Call<v1::InfoReply>("test.whoami", v1::Empty(), options);
      ASSERT_TRUE(r.ok()) << "call " << calls << " to " << c->name() << ": " << r.status();
    }
  }
  flood.join();
  ASSERT_NO_FATAL_FAILURE(Flush(g1));
  // c1 let through at most its quota and said how many it dropped. (What c1 forwards counts
  // against the master's quota for c1's subtree in turn, which may drop a few more, c1's
  // notices included: so no exact sum here.)
  int sent = kFlood;
  for (const absl::Time deadline = absl::Now() + kWait;
       Dropped(logs_.notices(), "g1") == 0 && absl::Now() < deadline; ++sent) {
    Flood(launcher_->child_end(g1.id()), g1, 1);
    ASSERT_NO_FATAL_FAILURE(Flush(g1));
  }
  const int64_t dropped_by_c1 = Dropped(logs_.notices(), "g1");
  EXPECT_GT(dropped_by_c1, 0);
  EXPECT_LE(logs_.count("g1") + dropped_by_c1, sent);
  EXPECT_LE(logs_.count("g1"), 20000 + 20000 * absl::ToDoubleSeconds(absl::Now() - start));
}

// ---- Cancels and control envelopes ----

TEST_F(HostileChildTest, ChildCannotCancelAnotherContextsCall) {
  Context c1 = Spawn(Master(), "c1");
  Context c2 = Spawn(Master(), "c2");
  // The master calls c2; c1 learns the call's id (ids are small counters, easy to guess).
  auto call_id = std::make_shared<std::atomic<uint64_t>>(0);
  launcher_->child_end(c2.id())->SetObserver([call_id](const v1::Envelope& e) {
    if (e.has_call() && e.call().function() == "test.block") call_id->store(e.call().id());
  });
  CancelSource cancel;
  CallOptions options;
  options.cancel = &cancel;
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  auto blocked = c2.CallAsync<v1::Empty>("test.block", sleep, options);
  ASSERT_TRUE(WaitBlocksStarted(1));
  for (uint64_t src : {c1.id().value(), uint64_t{0}}) {  // As itself, and in the master's name.
    v1::Envelope e;
    e.set_src(src);
    e.set_dst(c2.id().value());
    e.mutable_cancel()->set_id(call_id->load());
    SendUp(c1, e);
  }
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  // The cancels went (or not) to c2 ahead of this ping, on the master's link to c2.
  ASSERT_TRUE(c2.Ping().ok());
  EXPECT_EQ(blocks_cancelled(), 0);
  EXPECT_NE(blocked.wait_for(std::chrono::seconds(0)), std::future_status::ready);
  cancel.Cancel();
  EXPECT_EQ(blocked.get().status().code(), absl::StatusCode::kCancelled);
}

TEST_F(HostileChildTest, ShutdownSentSidewaysIsIgnored) {
  Context c1 = Spawn(Master(), "c1");
  Context c2 = Spawn(Master(), "c2");
  Context g2 = Spawn(c2, "g2");
  for (const Context* target : {&c2, &g2}) {
    v1::Envelope e;
    e.set_src(c1.id().value());
    e.set_dst(target->id().value());
    e.mutable_shutdown();
    SendUp(c1, e);
  }
  // Envelopes of no kind, and a second Hello, are dropped too; the link stays up.
  v1::Envelope empty;
  empty.set_src(c1.id().value());
  empty.set_dst(c2.id().value());
  SendUp(c1, empty);
  v1::Envelope hello = empty;
  hello.mutable_hello()->mutable_info()->set_id(c2.id().value());
  hello.mutable_hello()->mutable_info()->set_name("c2-again");
  SendUp(c1, hello);
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  for (const Context* c : {&c1, &c2, &g2}) {
    EXPECT_TRUE(c->Ping().ok()) << c->name();
    EXPECT_EQ(master_->registry().Find(c->id())->state, ContextState::kConnected);
  }
  EXPECT_EQ(master_->registry().Find(c2.id())->name, "c2");
}

// ---- Ids ----

TEST_F(HostileChildTest, IdBlocksAreBounded) {
  Context c1 = Spawn(Master(), "c1");
  v1::IdBlockRequest request;
  request.set_count(4000000000u);
  absl::StatusOr<v1::IdBlockReply> block =
      From(c1, Master()).Call<v1::IdBlockReply>("grove.id_block", request);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_LE(block->count(), 100000u);
  // The master's own next child still gets a fresh id above the block.
  Context c2 = Spawn(Master(), "c2");
  EXPECT_GE(c2.id().value(), block->first() + block->count());
}

// The master remembers who asked for each id block and accepts a ContextAdded only for an
// id in a block of its parent: c1 cannot take the id c2 will give its next child.
TEST_F(HostileChildTest, ChildCannotClaimAnIdFromAnotherSubtreesBlock) {
  Context c1 = Spawn(Master(), "c1");
  Context c2 = Spawn(Master(), "c2");
  Context g2 = Spawn(c2, "g2");  // c2 now holds a block; g2 took its first id.
  Context g1 = Spawn(c1, "g1");  // c1 too.
  const uint64_t next_of_c2 = g2.id().value() + 1;
  SendUp(c1, Added(c1, next_of_c2, c1.id().value(), "squatter"));
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  absl::StatusOr<Context> rightful = c2.Spawn("local,name=rightful");
  ASSERT_TRUE(rightful.ok()) << rightful.status();
  ASSERT_EQ(rightful->id().value(), next_of_c2);
  std::optional<ContextRecord> record = master_->registry().Find(rightful->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->name, "rightful");
  EXPECT_EQ(record->parent, c2.id());
  EXPECT_FALSE(master_->registry().FindByName("squatter").has_value());
  absl::StatusOr<v1::InfoReply> who = rightful->Call<v1::InfoReply>("test.whoami", v1::Empty());
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(who->name(), "rightful");
  (void)g1;
}

// A name that would act on a terminal is refused; the id it claimed stays free for c1.
TEST_F(HostileChildTest, AContextNamedWithControlsIsRefused) {
  Context c1 = Spawn(Master(), "c1");
  Context g1 = Spawn(c1, "g1");  // c1 now holds a block; g1 took its first id.
  const uint64_t next = g1.id().value() + 1;
  SendUp(c1, Added(c1, next, c1.id().value(), "evil\x1b]0;owned\x07"));
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  EXPECT_FALSE(master_->registry().Find(ContextId(next)).has_value());
  absl::StatusOr<Context> rightful = c1.Spawn("local,name=rightful");
  ASSERT_TRUE(rightful.ok()) << rightful.status();
  EXPECT_EQ(rightful->id().value(), next);
  EXPECT_EQ(master_->registry().Find(rightful->id())->name, "rightful");
}

// g1 claims c2's id, and answers in c2's name every call that reaches it for c2: calls from
// c1 to c2 reach the real c2 (c1 refused the claim; see the next test).
TEST_F(HostileChildTest, GrandchildCannotTakeOverTheIdOfAContextElsewhere) {
  Context c1 = Spawn(Master(), "c1");
  Context c2 = Spawn(Master(), "c2");
  Context g1 = Spawn(c1, "g1");
  SendUp(g1, Added(g1, c2.id().value(), g1.id().value(), "fake-c2"));
  ASSERT_NO_FATAL_FAILURE(Flush(g1));
  // g1 answers every call that reaches it for c2, in c2's name.
  std::shared_ptr<InMemoryLink> g1_end = launcher_->child_end(g1.id());
  const uint64_t c2_id = c2.id().value();
  std::weak_ptr<InMemoryLink> weak_end = g1_end;  // The observer is the end's own.
  g1_end->SetObserver([weak_end, c2_id](const v1::Envelope& e) {
    std::shared_ptr<InMemoryLink> g1_end = weak_end.lock();
    if (g1_end == nullptr || !e.has_call() || e.dst() != c2_id) return;
    v1::InfoReply forged;
    forged.set_id(c2_id);
    forged.set_name("forged by g1");
    v1::Envelope reply;
    reply.set_src(c2_id);
    reply.set_dst(e.src());
    reply.mutable_reply()->set_id(e.call().id());
    reply.mutable_reply()->set_result(forged.SerializeAsString());
    g1_end->Send(reply);
  });
  CallOptions options;
  options.timeout = absl::Seconds(5);
  absl::StatusOr<v1::InfoReply> who =
      From(c1, c2).Call<v1::InfoReply>("test.whoami", v1::Empty(), options);
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(who->name(), "c2");
  EXPECT_EQ(master_->registry().Find(c2.id())->name, "c2");
}

// c1 knows the blocks the master handed to g1 (IdBlockGranted, on the way down), so it
// refuses g1's claim on c2's id itself: the claim never reaches the master, and c1 never
// routes c2's id to g1, not even for the round trip a refusal from the master would take.
TEST_F(HostileChildTest, AMiddleContextRefusesAClaimOutsideTheClaimantsBlocks) {
  GlogCapture glog;
  Context c1 = Spawn(Master(), "c1");
  Context c2 = Spawn(Master(), "c2");
  Context g1 = Spawn(c1, "g1");
  Context h1 = Spawn(g1, "h1");  // g1 now holds a block, which c1 was told of.
  SendUp(g1, Added(g1, c2.id().value(), g1.id().value(), "fake-c2"));
  ASSERT_NO_FATAL_FAILURE(Flush(g1));  // Through c1 and the master, behind the claim.
  EXPECT_TRUE(glog.Saw(absl::StrCat("context c1: ignored ContextAdded for fake-c2 (id ",
                                    c2.id().value(), ")")));
  EXPECT_TRUE(glog.Saw("is not in a block handed to its parent"));
  EXPECT_FALSE(glog.Saw("context master: ignored ContextAdded for fake-c2"));
  EXPECT_FALSE(glog.Saw("dropped context id"));  // No route to take back.
  // A claim inside g1's own block still goes through every context on the way.
  const uint64_t next = h1.id().value() + 1;
  SendUp(g1, Added(g1, next, g1.id().value(), "h2"));
  ASSERT_NO_FATAL_FAILURE(Flush(g1));
  std::optional<ContextRecord> h2 = master_->registry().Find(ContextId(next));
  ASSERT_TRUE(h2.has_value());
  EXPECT_EQ(h2->name, "h2");
  EXPECT_EQ(h2->parent, g1.id());
}

// A master that remembers one gone context: what it forgot must not become reusable.
class ForgetfulMasterTest : public HostileChildTest {
 protected:
  ForgetfulMasterTest()
      : HostileChildTest(Limits{/*gone_history=*/1}) {}
};

// Once the master has forgotten g1 (its record and why it went), c1 claims g1's id again for
// a new child. The id lies in c1's own block and nothing live or remembered holds it; the
// block's record of the ids it gave out is what refuses it.
TEST_F(ForgetfulMasterTest, AForgottenIdIsNotGivenOutAgain) {
  Context c1 = Spawn(Master(), "c1");
  Context g1 = Spawn(c1, "g1");
  ASSERT_TRUE(g1.Shutdown().ok());
  absl::StatusOr<v1::InfoReply> to_gone = g1.Call<v1::InfoReply>("test.whoami", v1::Empty());
  EXPECT_EQ(to_gone.status().code(), absl::StatusCode::kUnavailable) << to_gone.status();
  EXPECT_TRUE(absl::StrContains(to_gone.status().message(), "is gone")) << to_gone.status();
  // Two more contexts go; the master now remembers only the last.
  for (const char* name : {"x", "y"}) ASSERT_TRUE(Spawn(Master(), name).Shutdown().ok());
  EXPECT_FALSE(master_->registry().Find(g1.id()).has_value());
  EXPECT_FALSE(master_->registry().FindByName("g1").has_value());
  ASSERT_TRUE(master_->registry().FindByName("y").has_value());
  EXPECT_EQ(master_->registry().size(), 2u);  // c1 and y.
  to_gone = g1.Call<v1::InfoReply>("test.whoami", v1::Empty());
  EXPECT_EQ(to_gone.status().code(), absl::StatusCode::kNotFound) << to_gone.status();

  SendUp(c1, Added(c1, g1.id().value(), c1.id().value(), "revenant"));
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  EXPECT_FALSE(master_->registry().FindByName("revenant").has_value());
  EXPECT_FALSE(master_->registry().Find(g1.id()).has_value());
  // c1's next child gets an id of its own, and the master takes it.
  Context g2 = Spawn(c1, "g2");
  EXPECT_NE(g2.id(), g1.id());
  absl::StatusOr<v1::InfoReply> who = g2.Call<v1::InfoReply>("test.whoami", v1::Empty());
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(who->name(), "g2");
}

// A context keeps its latest kMaxIdBlocksPerContext id blocks; asking for more drops the
// oldest, so that a child asking for blocks in a loop holds the master's memory bounded.
TEST_F(HostileChildTest, IdBlocksPerContextAreBounded) {
  Context c1 = Spawn(Master(), "c1");
  v1::IdBlockRequest request;
  request.set_count(10);
  std::vector<v1::IdBlockReply> blocks;
  for (size_t i = 0; i < Router::kMaxIdBlocksPerContext + 1; ++i) {
    absl::StatusOr<v1::IdBlockReply> block =
        From(c1, Master()).Call<v1::IdBlockReply>("grove.id_block", request);
    ASSERT_TRUE(block.ok()) << block.status();
    blocks.push_back(*block);
  }
  SendUp(c1, Added(c1, blocks.front().first(), c1.id().value(), "from-the-first"));
  SendUp(c1, Added(c1, blocks[1].first(), c1.id().value(), "from-the-second"));
  SendUp(c1, Added(c1, blocks.back().first(), c1.id().value(), "from-the-last"));
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  EXPECT_FALSE(master_->registry().FindByName("from-the-first").has_value());
  EXPECT_TRUE(master_->registry().FindByName("from-the-second").has_value());
  EXPECT_TRUE(master_->registry().FindByName("from-the-last").has_value());
}

// A master whose child links carry three contexts at most, and run three calls at once.
class SmallLinkTest : public HostileChildTest {
 protected:
  SmallLinkTest()
      : HostileChildTest(Limits{kDefaultGoneHistory, /*max_contexts_per_link=*/3,
                                /*max_running_calls_per_link=*/3}) {}
};

// c1's link carries c1, g1 and one more; a fourth is refused until one of them goes, and the
// limit is per link: c2's subtree is not affected.
TEST_F(SmallLinkTest, AddedContextsAreLimitedPerLink) {
  Context c1 = Spawn(Master(), "c1");
  Context g1 = Spawn(c1, "g1");  // c1 now holds a block, from g1's id on.
  const uint64_t first = g1.id().value() + 1;
  SendUp(c1, Added(c1, first, c1.id().value(), "third"));
  SendUp(c1, Added(c1, first + 1, c1.id().value(), "fourth"));
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  EXPECT_TRUE(master_->registry().FindByName("third").has_value());
  EXPECT_FALSE(master_->registry().FindByName("fourth").has_value());
  EXPECT_EQ(master_->registry().live_count(), 3u);

  Context c2 = Spawn(Master(), "c2");
  Context h1 = Spawn(c2, "h1");
  absl::StatusOr<v1::InfoReply> who = h1.Call<v1::InfoReply>("test.whoami", v1::Empty());
  ASSERT_TRUE(who.ok()) << who.status();

  v1::Envelope removed;
  removed.set_src(c1.id().value());
  removed.set_dst(0);
  removed.mutable_removed()->add_ids(first);
  removed.mutable_removed()->set_reason("stopped");
  SendUp(c1, removed);
  SendUp(c1, Added(c1, first + 2, c1.id().value(), "fifth"));
  ASSERT_NO_FATAL_FAILURE(Flush(c1));
  EXPECT_TRUE(master_->registry().FindByName("fifth").has_value());
  EXPECT_EQ(master_->registry().FindByName("third")->state, ContextState::kGone);
}

// c1's subtree may run three calls at once in the master (each holds a worker thread there);
// a fourth is refused until one ends. Calls over c2's link are counted apart, and a function
// that runs inline (it takes no thread) is not counted.
TEST_F(SmallLinkTest, CallsRunningPerLinkAreLimited) {
  Context c1 = Spawn(Master(), "c1");
  Context g1 = Spawn(c1, "g1");
  Context c2 = Spawn(Master(), "c2");
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  std::vector<std::unique_ptr<CancelSource>> cancels;
  std::vector<std::future<absl::StatusOr<v1::Empty>>> blocked;
  auto block = [&](const Context& from) {
    cancels.push_back(std::make_unique<CancelSource>());
    CallOptions options;
    options.cancel = cancels.back().get();
    blocked.push_back(From(from, Master()).CallAsync<v1::Empty>("test.block", sleep, options));
  };
  block(c1);
  block(g1);
  block(c1);
  ASSERT_TRUE(WaitBlocksStarted(3));
  absl::StatusOr<v1::Empty> refused =
      From(g1, Master()).Call<v1::Empty>("test.block", sleep);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_TRUE(absl::StrContains(refused.status().message(),
                                "already runs 3 calls that came over the link to c1"))
      << refused.status();
  EXPECT_TRUE(From(g1, Master()).Call<v1::InfoReply>("test.whoami", v1::Empty()).ok());
  block(c2);
  ASSERT_TRUE(WaitBlocksStarted(4));
  cancels[0]->Cancel();
  EXPECT_EQ(blocked[0].get().status().code(), absl::StatusCode::kCancelled);
  // The caller hears CANCELLED at once; the master counts the call out once its function
  // has returned: until then a call that would not block is still refused.
  v1::SleepRequest no_sleep;
  absl::Status admitted = absl::ResourceExhaustedError("not tried");
  for (const absl::Time deadline = absl::Now() + kWait;
       admitted.code() == absl::StatusCode::kResourceExhausted && absl::Now() < deadline;) {
    admitted = From(g1, Master()).Call<v1::Empty>("test.block", no_sleep).status();
  }
  EXPECT_TRUE(admitted.ok()) << admitted;
  block(g1);
  ASSERT_TRUE(WaitBlocksStarted(6));  // The short call counts as started too.
  for (size_t i = 1; i < cancels.size(); ++i) {
    cancels[i]->Cancel();
    EXPECT_EQ(blocked[i].get().status().code(), absl::StatusCode::kCancelled);
  }
}

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  FLAGS_logtostderr = true;
  google::InitGoogleLogging(argv[0]);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
