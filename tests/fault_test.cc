// Fault injection with real processes: a context of a 3 x 3 tree killed, hung or cut off
// from its parent while thousands of calls are in flight, the master killed with local and
// ssh descendants, and a child flooding its parent with log records.
//
// Every random choice (which context, when, which calls) comes from one seed, printed at the
// start of each test. Replay a failure with the same seed:
//
//   bazel test //tests:fault_test --test_env=GROVE_FAULT_SEED=<seed> --test_filter=...
//
// Nothing sleeps to synchronise: the tests wait on events, futures and pidfds, each with a
// deadline. (One place polls /proc, where there is nothing to wait on: a process's state
// after SIGSTOP.) The soak is in soak_test.cc; the hostile child's forged envelopes are
// tested at the router level in router/hostile_test.cc.
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <future>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/fd.h"
#include "common/process.h"
#include "common/status_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/support.h"
#include "tests/sshd.h"
#include "tests/test.pb.h"
#include "tests/test_functions.h"

extern char** environ;

namespace grove::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// How long anything that must happen may take: a failing wait means a lost event, not a
// slow machine (the suite also runs under TSan on two cores).
constexpr absl::Duration kWait = absl::Seconds(120);
// Calls in flight across the tree when a context fails.
constexpr int kCalls = 3000;
constexpr int kMiddles = 3;
constexpr int kLeavesPerMiddle = 3;

// ---------------------------------------------------------------------------------------
// Helpers.


// A pidfd for `pid` (-1 when it is gone already).
UniqueFd PidFd(int64_t pid) {
  return UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0)));
}

// Waits until the process behind `pidfd` has exited, or `deadline`.
bool ExitedBy(const UniqueFd& pidfd, absl::Time deadline) {
  for (;;) {
    struct pollfd p = {pidfd.get(), POLLIN, 0};
    int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
    int n = ::poll(&p, 1, static_cast<int>(ms));
    if (n == 1) return true;
    if (n == 0) return false;
    if (errno != EINTR) return false;
  }
}

// The state letter of process `pid` in /proc ('R', 'S', 'T', 'Z'...), or 0.
char ProcessState(int64_t pid) {
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  size_t close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? 0 : stat[close + 2];
}

std::string CommandOf(int64_t pid) {
  std::string cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
  std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
  return cmdline.substr(0, 100);
}

// The link fd of the agent `pid` (its --grove-fd=N), or -1.
int LinkFdOf(int64_t pid) {
  std::string cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
  for (absl::string_view arg : absl::StrSplit(cmdline, '\0')) {
    int fd;
    if (absl::ConsumePrefix(&arg, "--grove-fd=") && absl::SimpleAtoi(arg, &fd)) return fd;
  }
  return -1;
}

// Outcomes of many calls, each stamped with a number from one counter that the test stamps
// its own events with too, so that "answered before its context was reported gone" is an
// exact order, not a guess from clocks. Thread-safe.
class Ledger {
 public:
  struct Outcome {
    bool done = false;
    absl::Status status;
    uint64_t stamp = 0;  // When it completed.
  };

  explicit Ledger(size_t n) : outcomes_(n) {}

  uint64_t Stamp() { return next_.fetch_add(1) + 1; }

  // Records the outcome of call `i`.
  Router::Done Recorder(size_t i) {
    return [this, i](absl::StatusOr<std::string> result) {
      uint64_t stamp = Stamp();
      absl::MutexLock lock(&mu_);
      outcomes_[i] = {true, result.status(), stamp};
      ++done_;
    };
  }

  bool WaitAll(absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto all = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return done_ == outcomes_.size(); };
    return mu_.AwaitWithTimeout(absl::Condition(&all), timeout);
  }
  // Waits until each call in `calls` has completed.
  bool WaitFor(const std::set<int>& calls, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (int i : calls) {
        if (!outcomes_[i].done) return false;
      }
      return true;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&all), timeout);
  }
  size_t done() const {
    absl::MutexLock lock(&mu_);
    return done_;
  }
  std::vector<Outcome> outcomes() const {
    absl::MutexLock lock(&mu_);
    return outcomes_;
  }

 private:
  std::atomic<uint64_t> next_{0};
  mutable absl::Mutex mu_;
  std::vector<Outcome> outcomes_ ABSL_GUARDED_BY(mu_);
  size_t done_ ABSL_GUARDED_BY(mu_) = 0;
};

// Starts the call `i` of `ledger`: echo, or grove.sleep for `sleep_ms` when > 0.
void Issue(Ledger& ledger, size_t i, const Context& target, int sleep_ms,
           const CallOptions& options = {}) {
  if (sleep_ms > 0) {
    v1::SleepRequest sleep;
    sleep.set_ms(sleep_ms);
    target.CallRaw("grove.sleep", v1::SleepRequest::descriptor()->full_name(),
                   sleep.SerializeAsString(), options, ledger.Recorder(i));
  } else {
    test::Echo echo;
    echo.set_text(absl::StrCat("call ", i));
    target.CallRaw("echo", test::Echo::descriptor()->full_name(), echo.SerializeAsString(),
                   options, ledger.Recorder(i));
  }
}

CallOptions Timeout(absl::Duration d) {
  CallOptions o;
  o.timeout = d;
  return o;
}

// At most `n` lines of `lines`, for failure messages.
std::string FirstLines(const std::vector<std::string>& lines, size_t n = 10) {
  std::vector<std::string> some(lines.begin(), lines.begin() + std::min(n, lines.size()));
  return absl::StrCat(lines.size(), " in all; the first:\n  ", absl::StrJoin(some, "\n  "));
}

// One context of the test tree.
struct Node {
  Context context;
  int parent;  // Index in the tree; -1 for a child of the master.
  int64_t pid;
  UniqueFd pidfd;  // Opened while the tree is whole, so that it never names a reused pid.
};

class FaultTest : public GroveTest {
 protected:
  void SetUp() override {
    GroveTest::SetUp();
    seed_ = absl::ToUnixNanos(absl::Now()) ^ (uint64_t{static_cast<uint32_t>(::getpid())} << 32);
    if (const char* s = ::getenv("GROVE_FAULT_SEED"); s != nullptr && *s != '\0') {
      ASSERT_TRUE(absl::SimpleAtoi(s, &seed_)) << "GROVE_FAULT_SEED=" << s;
    }
    rng_.seed(seed_);
    std::printf("[ seed     ] %llu (replay: --test_env=GROVE_FAULT_SEED=%llu)\n",
                static_cast<unsigned long long>(seed_), static_cast<unsigned long long>(seed_));
    std::fflush(stdout);
    RecordProperty("seed", std::to_string(seed_));
  }

  void TearDown() override {
    nodes_.clear();  // Their pidfds, before the fixture compares fds.
    GroveTest::TearDown();
  }

  int Uniform(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  // Starts the tree: the master's children m0..m2, each with children mI-l0..mI-l2. Indices:
  // 0..2 the middles, 3 + 3 * i + j leaf j of middle i.
  void SpawnTree(Master& master) {
    for (int i = 0; i < kMiddles; ++i) {
      absl::StatusOr<Context> middle = master.Spawn(absl::StrCat("local,name=m", i));
      ASSERT_TRUE(middle.ok()) << middle.status();
      nodes_.push_back({*middle, -1, 0, UniqueFd()});
    }
    for (int i = 0; i < kMiddles; ++i) {
      for (int j = 0; j < kLeavesPerMiddle; ++j) {
        absl::StatusOr<Context> leaf =
            nodes_[i].context.Spawn(absl::StrCat("local,name=m", i, "-l", j));
        ASSERT_TRUE(leaf.ok()) << leaf.status();
        nodes_.push_back({*leaf, i, 0, UniqueFd()});
      }
    }
    for (Node& node : nodes_) {
      std::optional<ContextRecord> record = master.registry().Find(node.context.id());
      ASSERT_TRUE(record.has_value());
      node.pid = record->pid;
      node.pidfd = PidFd(node.pid);
      ASSERT_TRUE(node.pidfd.valid()) << "pidfd_open " << node.pid;
    }
  }

  // A random middle (the root of a subtree) or a random leaf.
  int PickVictim(bool middle) {
    return middle ? Uniform(0, kMiddles - 1) : Uniform(kMiddles, static_cast<int>(nodes_.size()) - 1);
  }

  // `victim` and the nodes below it.
  std::set<int> SubtreeOf(int victim) const {
    std::set<int> out = {victim};
    for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
      if (nodes_[i].parent == victim) out.insert(i);
    }
    return out;
  }

  std::string Describe(int i) const {
    const Node& n = nodes_[i];
    return absl::StrCat(n.context.name(), " (id ", n.context.id().value(), ", pid ", n.pid, ")");
  }

  // Calls ping in every node outside `lost`, which must answer.
  void ExpectOthersAnswer(const std::set<int>& lost) {
    for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
      if (lost.count(i)) continue;
      absl::Status ping = nodes_[i].context.Ping(Timeout(absl::Seconds(30)));
      EXPECT_TRUE(ping.ok()) << Describe(i) << ": " << ping;
    }
  }

  // The master's registry: exactly `lost` is gone, each with a reason that has `reason` in
  // it; everything else is connected.
  void ExpectRegistry(Master& master, const std::set<int>& lost, const std::string& reason) {
    for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
      std::optional<ContextRecord> record = master.registry().Find(nodes_[i].context.id());
      ASSERT_TRUE(record.has_value()) << Describe(i);
      if (lost.count(i)) {
        EXPECT_EQ(record->state, ContextState::kGone) << Describe(i);
        EXPECT_THAT(record->reason, HasSubstr(reason)) << Describe(i);
      } else {
        EXPECT_EQ(record->state, ContextState::kConnected) << Describe(i) << ": " << record->reason;
      }
    }
  }

  // Every process of `lost` has exited by `deadline`.
  void ExpectExited(const std::set<int>& lost, absl::Time deadline) {
    for (int i : lost) {
      EXPECT_TRUE(ExitedBy(nodes_[i].pidfd, deadline)) << Describe(i) << " is still running";
    }
  }

  // One long call (grove.sleep, 10 min) to every node, cancelled by `cancel`: the calls that
  // are surely in flight when something fails.
  void StartAnchors(Ledger& anchors, CancelSource* cancel) {
    CallOptions options;
    options.cancel = cancel;
    for (size_t i = 0; i < nodes_.size(); ++i) Issue(anchors, i, nodes_[i].context, 600000, options);
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  std::vector<Node> nodes_;
};

// ---------------------------------------------------------------------------------------
// 1. SIGKILL of one context while 3000 calls are in flight across the tree.

// How a killed context's loss is described: by its signal, or, when its parent's link saw the
// break before the exit was visible (LocalChild::PollExit waits only 5 ms for it, and the
// exit of a process with hundreds of threads can take longer on a loaded machine), by the
// link.
::testing::Matcher<std::string> HowItWasLost() {
  return ::testing::AnyOf(HasSubstr("killed by signal 9"), HasSubstr("its link failed"),
                          HasSubstr("its link closed"));
}

// Kills a random middle context (`middle`) or leaf after a random number of the calls have
// been started, and goes on starting the rest. Calls to the lost subtree either completed
// before the master learnt that it was gone (exactly: before the registry's removal event)
// or fail UNAVAILABLE naming the killed context; every other call succeeds.
class KillTest : public FaultTest {
 public:
  void Run(bool middle) {
    // Declared before the master: the master's shutdown completes what is still pending.
    Ledger ledger(kCalls);
    Ledger anchors(kMiddles + kMiddles * kLeavesPerMiddle);
    CancelSource cancel_anchors;
    absl::Notification victim_gone;
    std::atomic<uint64_t> gone_stamp{0};
    Master master(TestFunctions());
    ASSERT_NO_FATAL_FAILURE(SpawnTree(master));

    const int victim = PickVictim(middle);
    const std::set<int> lost = SubtreeOf(victim);
    const std::string victim_name = nodes_[victim].context.name();
    const ContextId victim_id = nodes_[victim].context.id();
    int subscription = master.registry().Subscribe([&](const RegistryEvent& e) {
      if (e.kind == RegistryEvent::kRemoved && e.record.id == victim_id &&
          !victim_gone.HasBeenNotified()) {
        gone_stamp = ledger.Stamp();
        victim_gone.Notify();
      }
    });
    StartAnchors(anchors, &cancel_anchors);

    // The calls: random targets, echo or grove.sleep of 1-5 ms.
    struct Planned {
      int target;
      int sleep_ms;
      uint64_t issued;
    };
    std::vector<Planned> plan(kCalls);
    for (Planned& p : plan) {
      p.target = Uniform(0, static_cast<int>(nodes_.size()) - 1);
      p.sleep_ms = Uniform(0, 1) ? Uniform(1, 5) : 0;
    }
    const int kill_at = Uniform(kCalls / 4, kCalls / 2);
    std::printf("[ victim   ] %s, lost subtree of %zu; SIGKILL after %d of %d calls\n",
                Describe(victim).c_str(), lost.size(), kill_at, kCalls);
    std::fflush(stdout);
    uint64_t kill_stamp = 0;
    for (int i = 0; i < kCalls; ++i) {
      if (i == kill_at) {
        ASSERT_EQ(::kill(static_cast<pid_t>(nodes_[victim].pid), SIGKILL), 0);
        kill_stamp = ledger.Stamp();
      }
      plan[i].issued = ledger.Stamp();
      Issue(ledger, i, nodes_[plan[i].target].context, plan[i].sleep_ms);
    }
    ASSERT_TRUE(ledger.WaitAll(kWait)) << ledger.done() << " of " << kCalls << " calls completed";
    ASSERT_TRUE(victim_gone.WaitForNotificationWithTimeout(kWait));
    master.registry().Unsubscribe(subscription);

    std::vector<std::string> bad;
    int ok_before = 0, failed_in_flight = 0, refused_after = 0, ok_elsewhere = 0;
    std::vector<Ledger::Outcome> outcomes = ledger.outcomes();
    for (int i = 0; i < kCalls; ++i) {
      const Ledger::Outcome& o = outcomes[i];
      const std::string what = absl::StrCat("call ", i, " to ", Describe(plan[i].target));
      if (!lost.count(plan[i].target)) {
        if (o.status.ok()) {
          ++ok_elsewhere;
        } else {
          bad.push_back(absl::StrCat(what, " (outside the lost subtree) failed: ",
                                     o.status.ToString()));
        }
        continue;
      }
      if (o.status.ok()) {
        ++ok_before;
        if (o.stamp > gone_stamp) {
          bad.push_back(absl::StrCat(what, " succeeded after the master reported ", victim_name,
                                     " gone"));
        }
        if (plan[i].issued > kill_stamp) {
          bad.push_back(absl::StrCat(what, " succeeded although started after the SIGKILL"));
        }
        continue;
      }
      (plan[i].issued < gone_stamp ? failed_in_flight : refused_after)++;
      if (o.status.code() != absl::StatusCode::kUnavailable ||
          !absl::StrContains(o.status.message(), absl::StrCat("lost context ", victim_name))) {
        bad.push_back(absl::StrCat(what, ": want UNAVAILABLE naming lost context ", victim_name,
                                   ", got ", o.status.ToString()));
      }
    }
    std::printf("[ calls    ] lost subtree: %d answered before the kill was seen, %d failed in "
                "flight, %d refused after; elsewhere %d answered\n",
                ok_before, failed_in_flight, refused_after, ok_elsewhere);
    std::fflush(stdout);
    EXPECT_TRUE(bad.empty()) << FirstLines(bad);
    EXPECT_GT(failed_in_flight + refused_after, 0);

    // The anchors: in flight to every context when the victim died.
    ASSERT_TRUE(anchors.WaitFor(lost, kWait)) << "a call into the lost subtree is still pending";
    for (int i : lost) {
      Ledger::Outcome o = anchors.outcomes()[i];
      EXPECT_EQ(o.status.code(), absl::StatusCode::kUnavailable) << o.status;
      EXPECT_THAT(std::string(o.status.message()),
                  HasSubstr(absl::StrCat("lost context ", victim_name)));
      EXPECT_THAT(std::string(o.status.message()), HowItWasLost());
      EXPECT_THAT(std::string(o.status.message()), HasSubstr(nodes_[i].context.name()));
    }
    ExpectRegistry(master, lost, absl::StrCat("lost context ", victim_name));
    const std::string reason = master.registry().Find(victim_id)->reason;
    EXPECT_THAT(reason, HowItWasLost());
    std::printf("[ reason   ] %s\n", reason.c_str());
    std::fflush(stdout);
    // Gone contexts fail at once; the rest of the tree answers.
    for (int i : lost) {
      absl::Status ping = nodes_[i].context.Ping();
      EXPECT_EQ(ping.code(), absl::StatusCode::kUnavailable) << ping;
      EXPECT_THAT(std::string(ping.message()), HasSubstr("is gone"));
    }
    ExpectOthersAnswer(lost);
    // The killed context's children (when it had any) exit on their own.
    ExpectExited(lost, absl::Now() + absl::Seconds(10));
    // The anchors to the survivors are still running: only the cancel ends them.
    EXPECT_EQ(anchors.done(), lost.size());
    EXPECT_EQ(master.router().pending_calls(), nodes_.size() - lost.size());
    cancel_anchors.Cancel();
    ASSERT_TRUE(anchors.WaitAll(kWait));
    for (int i = 0; i < static_cast<int>(nodes_.size()); ++i) {
      if (lost.count(i)) continue;
      EXPECT_EQ(anchors.outcomes()[i].status.code(), absl::StatusCode::kCancelled)
          << Describe(i) << ": " << anchors.outcomes()[i].status;
    }
    EXPECT_EQ(master.router().pending_calls(), 0u);
  }
};

TEST_F(KillTest, SigkillOfALeafWhileThousandsOfCallsAreInFlight) { Run(/*middle=*/false); }

TEST_F(KillTest, SigkillOfASubtreeRootWhileThousandsOfCallsAreInFlight) { Run(/*middle=*/true); }

// ---------------------------------------------------------------------------------------
// 2. SIGSTOP: a hung context (tree_test has the single-child case without load).

class HangTest : public FaultTest {
 public:
  void Run(bool middle) {
    Ledger ledger(kCalls);
    Ledger stuck(kMiddles + kMiddles * kLeavesPerMiddle);
    MasterOptions options;
    options.stop_grace = absl::Milliseconds(200);
    Master master(TestFunctions(), options);
    ASSERT_NO_FATAL_FAILURE(SpawnTree(master));

    const int victim = PickVictim(middle);
    const std::set<int> hung = SubtreeOf(victim);
    const std::string victim_name = nodes_[victim].context.name();
    const int stop_at = Uniform(kCalls / 4, kCalls / 2);
    std::printf("[ victim   ] %s, hung subtree of %zu; SIGSTOP after %d of %d calls\n",
                Describe(victim).c_str(), hung.size(), stop_at, kCalls);
    std::fflush(stdout);

    // Calls into the hung subtree carry a short deadline; the others a long one they must
    // never need.
    const absl::Duration kShort = absl::Milliseconds(500);
    std::vector<int> target(kCalls);
    std::vector<uint64_t> issued(kCalls);
    uint64_t stopped_stamp = 0;
    for (int i = 0; i < kCalls; ++i) {
      if (i == stop_at) {
        ASSERT_EQ(::kill(static_cast<pid_t>(nodes_[victim].pid), SIGSTOP), 0);
        // Stopped for sure before the next call leaves (polling /proc: nothing to wait on).
        absl::Time deadline = absl::Now() + absl::Seconds(10);
        while (ProcessState(nodes_[victim].pid) != 'T') {
          ASSERT_LT(absl::Now(), deadline) << "SIGSTOP did not stop " << Describe(victim);
          absl::SleepFor(absl::Milliseconds(1));
        }
        stopped_stamp = ledger.Stamp();
        // Calls without a deadline into the hung subtree: they wait until it is shut down.
        for (int h : hung) Issue(stuck, h, nodes_[h].context, 0);
      }
      target[i] = Uniform(0, static_cast<int>(nodes_.size()) - 1);
      issued[i] = ledger.Stamp();
      Issue(ledger, i, nodes_[target[i]].context, Uniform(0, 1) ? Uniform(1, 5) : 0,
            Timeout(hung.count(target[i]) ? kShort : absl::Seconds(60)));
    }
    ASSERT_TRUE(ledger.WaitAll(kWait)) << ledger.done() << " of " << kCalls << " calls completed";

    std::vector<std::string> bad;
    int ok_before = 0, expired = 0, ok_elsewhere = 0;
    std::vector<Ledger::Outcome> outcomes = ledger.outcomes();
    for (int i = 0; i < kCalls; ++i) {
      const absl::Status& s = outcomes[i].status;
      const std::string what = absl::StrCat("call ", i, " to ", Describe(target[i]));
      if (!hung.count(target[i])) {
        if (s.ok()) {
          ++ok_elsewhere;
        } else {
          bad.push_back(absl::StrCat(what, " (outside the hung subtree) failed: ", s.ToString()));
        }
      } else if (s.ok()) {
        ++ok_before;
        if (issued[i] > stopped_stamp) {
          bad.push_back(absl::StrCat(what, " was answered although the context was stopped"));
        }
      } else if (s.code() == absl::StatusCode::kDeadlineExceeded) {
        ++expired;
      } else {
        bad.push_back(absl::StrCat(what, ": want DEADLINE_EXCEEDED, got ", s.ToString()));
      }
    }
    std::printf("[ calls    ] hung subtree: %d answered before the stop, %d DEADLINE_EXCEEDED; "
                "elsewhere %d answered\n",
                ok_before, expired, ok_elsewhere);
    std::fflush(stdout);
    EXPECT_TRUE(bad.empty()) << FirstLines(bad);
    EXPECT_GT(expired, 0);
    // The calls without a deadline are still waiting; the rest of the tree answers.
    EXPECT_EQ(stuck.done(), 0u);
    ExpectOthersAnswer(hung);
    ExpectRegistry(master, {}, "");

    // Shutting the hung context down still works: its parent ends it with SIGKILL.
    absl::Time start = absl::Now();
    absl::Status shutdown = nodes_[victim].context.Shutdown();
    ASSERT_TRUE(shutdown.ok()) << shutdown;
    std::printf("[ shutdown ] %s shut down in %lld ms\n", victim_name.c_str(),
                static_cast<long long>(absl::ToInt64Milliseconds(absl::Now() - start)));
    std::fflush(stdout);
    ASSERT_TRUE(stuck.WaitFor(hung, kWait));
    for (int h : hung) {
      const absl::Status s = stuck.outcomes()[h].status;
      EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << Describe(h) << ": " << s;
      EXPECT_THAT(std::string(s.message()), HasSubstr(absl::StrCat("lost context ", victim_name)));
    }
    ExpectRegistry(master, hung, absl::StrCat("lost context ", victim_name));
    // Ended by SIGKILL (after SIGTERM, which a stopped process does not act on): it took two
    // grace periods, and the reason says so unless the link's break was seen first.
    const std::string reason = master.registry().Find(nodes_[victim].context.id())->reason;
    EXPECT_THAT(reason, HowItWasLost());
    std::printf("[ reason   ] %s\n", reason.c_str());
    std::fflush(stdout);
    ExpectExited(hung, absl::Now() + absl::Seconds(10));
    ExpectOthersAnswer(hung);
    EXPECT_EQ(master.router().pending_calls(), 0u);
  }
};

TEST_F(HangTest, StoppedLeafTimesOutItsCallsAndIsStillShutDown) { Run(/*middle=*/false); }

TEST_F(HangTest, StoppedSubtreeRootTimesOutItsCallsAndIsStillShutDown) { Run(/*middle=*/true); }

// ---------------------------------------------------------------------------------------
// 3. A link that breaks while both processes live.

// Shuts down (shutdown(2), both directions) the victim's end of its link from outside: a
// duplicate of the agent's link fd taken with pidfd_getfd shares its socket. Neither process
// is signalled: the parent must notice the broken link, and the victim must notice that its
// parent is gone and exit on its own.
class CutLinkTest : public FaultTest {
 public:
  void Run(bool middle) {
    Ledger anchors(kMiddles + kMiddles * kLeavesPerMiddle);
    CancelSource cancel_anchors;
    absl::Notification victim_gone;
    MasterOptions options;
    // Long enough that the master never signals a child during the test: a middle that
    // exits does so on its own. (Contexts started by children keep the default 2 s.)
    options.stop_grace = absl::Seconds(30);
    Master master(TestFunctions(), options);
    ASSERT_NO_FATAL_FAILURE(SpawnTree(master));
    const int victim = PickVictim(middle);
    const std::set<int> lost = SubtreeOf(victim);
    const std::string victim_name = nodes_[victim].context.name();
    const ContextId victim_id = nodes_[victim].context.id();
    int subscription = master.registry().Subscribe([&](const RegistryEvent& e) {
      if (e.kind == RegistryEvent::kRemoved && e.record.id == victim_id &&
          !victim_gone.HasBeenNotified()) {
        victim_gone.Notify();
      }
    });
    StartAnchors(anchors, &cancel_anchors);
    // Pings after the anchors, on the same links: once they answer, every anchor has arrived.
    ExpectOthersAnswer({});

    const int link_fd = LinkFdOf(nodes_[victim].pid);
    ASSERT_GE(link_fd, 0) << "no --grove-fd in the command line of " << Describe(victim);
    std::printf("[ victim   ] %s: shutdown(2) of its link fd %d\n", Describe(victim).c_str(),
                link_fd);
    std::fflush(stdout);
    {
      UniqueFd copy(static_cast<int>(::syscall(SYS_pidfd_getfd, nodes_[victim].pidfd.get(), link_fd, 0)));
      ASSERT_TRUE(copy.valid()) << "pidfd_getfd: " << std::strerror(errno);
      ASSERT_EQ(::shutdown(copy.get(), SHUT_RDWR), 0) << std::strerror(errno);
    }
    const absl::Time cut = absl::Now();
    ASSERT_TRUE(victim_gone.WaitForNotificationWithTimeout(kWait));
    master.registry().Unsubscribe(subscription);
    std::printf("[ detected ] in %lld ms\n",
                static_cast<long long>(absl::ToInt64Milliseconds(absl::Now() - cut)));

    // The calls pending into the lost subtree fail at once, naming it; new ones are refused.
    ASSERT_TRUE(anchors.WaitFor(lost, kWait)) << "a call into the lost subtree is still pending";
    for (int i : lost) {
      Ledger::Outcome o = anchors.outcomes()[i];
      EXPECT_EQ(o.status.code(), absl::StatusCode::kUnavailable) << Describe(i) << ": " << o.status;
      EXPECT_THAT(std::string(o.status.message()),
                  HasSubstr(absl::StrCat("lost context ", victim_name)));
      EXPECT_THAT(std::string(o.status.message()), Not(HasSubstr("signal")));
      absl::Status ping = nodes_[i].context.Ping();
      EXPECT_EQ(ping.code(), absl::StatusCode::kUnavailable) << ping;
    }
    ExpectRegistry(master, lost, absl::StrCat("lost context ", victim_name));
    // "its link closed", or how it exited when that was visible at once: never a signal.
    EXPECT_THAT(master.registry().Find(victim_id)->reason, Not(HasSubstr("signal")));
    // The victim (and its children) exit on their own: before any grace period of its
    // parent's (30 s for the master, 2 s in a middle) has run out.
    const absl::Time deadline = cut + (middle ? absl::Seconds(10) : absl::Milliseconds(1500));
    for (int i : lost) {
      EXPECT_TRUE(ExitedBy(nodes_[i].pidfd, deadline)) << Describe(i) << " did not exit on its own";
    }
    std::printf("[ exited   ] %lld ms after the cut\n",
                static_cast<long long>(absl::ToInt64Milliseconds(absl::Now() - cut)));
    std::fflush(stdout);
    ExpectOthersAnswer(lost);
    EXPECT_EQ(master.router().pending_calls(), nodes_.size() - lost.size());
    cancel_anchors.Cancel();
    ASSERT_TRUE(anchors.WaitAll(kWait));
    EXPECT_EQ(master.router().pending_calls(), 0u);
  }
};

TEST_F(CutLinkTest, ALeafWhoseLinkBreaksIsMarkedGoneAndExitsOnItsOwn) { Run(/*middle=*/false); }

TEST_F(CutLinkTest, ASubtreeRootWhoseLinkBreaksIsMarkedGoneAndExitsOnItsOwn) {
  Run(/*middle=*/true);
}

// ---------------------------------------------------------------------------------------
// 4. SIGKILL of the master, with local and ssh descendants.

constexpr char kTreePathsVariable[] = "GROVE_FAULT_TREE_PATHS";

// Not a test: the master that MasterKillTest starts in a process of its own (this binary,
// run with --gtest_filter=FaultHelper.DISABLED_TreeMaster --gtest_also_run_disabled_tests).
// Starts the paths in $GROVE_FAULT_TREE_PATHS (one per line), prints "context PID NAME" for
// each context and then "ready", and waits to be killed.
TEST(FaultHelper, DISABLED_TreeMaster) {
  const char* paths = ::getenv(kTreePathsVariable);
  if (paths == nullptr) GTEST_SKIP() << "only run by MasterKillTest";
  Master master(TestFunctions());
  for (absl::string_view path : absl::StrSplit(paths, '\n', absl::SkipEmpty())) {
    absl::StatusOr<Context> c = master.SpawnPath(std::string(path));
    if (!c.ok()) {
      std::printf("failed %s\n", c.status().ToString().c_str());
      std::fflush(stdout);
      _exit(1);
    }
  }
  for (const ContextRecord& r : master.registry().List(false)) {
    if (r.id == kMasterId) continue;
    std::printf("context %lld %s\n", static_cast<long long>(r.pid), r.name.c_str());
  }
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) ::pause();
}

TEST_F(FaultTest, KillingTheMasterTakesLocalAndSshDescendantsDownWithinOneSecond) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (a loopback sshd)";
  absl::StatusOr<std::unique_ptr<Sshd>> sshd = Sshd::Start();
  if (!sshd.ok()) GTEST_SKIP() << sshd.status();
  char tmpl[] = "/tmp/grove-cache.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string cache = tmpl;

  // The helper's environment: ours, without what tells a gtest binary that Bazel runs it (it
  // would write this test's XML or premature-exit file).
  SpawnOptions spawn;
  spawn.env.emplace();
  for (char** e = environ; *e != nullptr; ++e) {
    absl::string_view kv = *e;
    if (absl::StartsWith(kv, "TEST_") || absl::StartsWith(kv, "GTEST_") ||
        absl::StartsWith(kv, "TESTBRIDGE_") || absl::StartsWith(kv, "XML_OUTPUT_FILE=") ||
        absl::StartsWith(kv, "GROVE_FAULT_")) {
      continue;
    }
    spawn.env->emplace_back(kv);
  }
  spawn.env->push_back(absl::StrCat(
      kTreePathsVariable, "=local/local,name=local-leaf\nlocal,name=local-single\n",
      (*sshd)->Hop("root"), ",cache_dir=", cache, "/local,name=behind-ssh\n"));
  auto out = Pipe();
  ASSERT_TRUE(out.ok());
  spawn.argv = {Readlink("/proc/self/exe"), "--gtest_filter=FaultHelper.DISABLED_TreeMaster",
                "--gtest_also_run_disabled_tests"};
  spawn.fds = {{1, out->second.get()}};
  absl::StatusOr<Process> master = Process::Spawn(spawn);
  ASSERT_TRUE(master.ok()) << master.status();
  out->second.Reset();

  // Its contexts, as it reports them.
  std::string text;
  const absl::Time ready_by = absl::Now() + kWait;
  while (!absl::StrContains(text, "\nready\n")) {
    struct pollfd p = {out->first.get(), POLLIN, 0};
    int64_t ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(ready_by - absl::Now()));
    ASSERT_EQ(::poll(&p, 1, static_cast<int>(ms)), 1) << "the helper master is not ready:\n" << text;
    char buffer[4096];
    ssize_t n = ::read(out->first.get(), buffer, sizeof(buffer));
    ASSERT_GT(n, 0) << "the helper master exited early:\n" << text;
    text.append(buffer, static_cast<size_t>(n));
  }
  std::map<int64_t, std::string> watched;  // pid -> what it is
  std::set<int64_t> contexts;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> words = absl::StrSplit(line, absl::MaxSplits(' ', 2));
    int64_t pid;
    if (words.size() == 3 && words[0] == "context" && absl::SimpleAtoi(words[1], &pid)) {
      contexts.insert(pid);
      watched[pid] = absl::StrCat("context ", words[2]);
    }
  }
  ASSERT_EQ(contexts.size(), 5u) << text;
  // Everything below the master and below each context: the ssh client, zygotes, contexts.
  std::set<pid_t> roots(contexts.begin(), contexts.end());
  roots.insert(master->pid());
  for (pid_t pid : DescendantsOf(roots)) {
    if (!watched.count(pid)) watched[pid] = CommandOf(pid);
  }
  std::map<int64_t, UniqueFd> pidfds;
  for (const auto& [pid, what] : watched) {
    pidfds[pid] = PidFd(pid);
    ASSERT_TRUE(pidfds[pid].valid()) << pid << " " << what;
    std::printf("[ watching ] %lld %s\n", static_cast<long long>(pid), what.c_str());
  }
  bool saw_ssh = false;
  for (const auto& [pid, what] : watched) saw_ssh |= absl::StartsWith(what, "ssh -T ");
  EXPECT_TRUE(saw_ssh) << "no ssh client below the master";
  std::fflush(stdout);

  master->Signal(SIGKILL);
  const absl::Time killed = absl::Now();
  const absl::Time deadline = killed + absl::Seconds(1);
  for (const auto& [pid, pidfd] : pidfds) {
    bool gone = ExitedBy(pidfd, deadline);
    std::printf("[ gone     ] %lld %s: %s\n", static_cast<long long>(pid), watched[pid].c_str(),
                gone ? absl::StrCat(absl::ToInt64Milliseconds(absl::Now() - killed), " ms").c_str()
                     : "STILL RUNNING after 1 s");
    EXPECT_TRUE(gone) << pid << " (" << watched[pid] << ") outlived its master by more than 1 s";
  }
  std::fflush(stdout);
  EXPECT_TRUE(master->Wait(absl::Now() + absl::Seconds(10)).ok());
  // Whatever outlived the deadline must still go before the fixture looks.
  for (const auto& [pid, pidfd] : pidfds) ExitedBy(pidfd, absl::Now() + absl::Seconds(10));
  pidfds.clear();
  sshd->reset();
  Shell("rm -rf " + cache);
}

// ---------------------------------------------------------------------------------------
// 5. A child that floods its parent with log records.

// Counts log records per context without keeping them. Thread-safe.
class LogCounter {
 public:
  LogSink Sink() {
    return [this](const ContextRecord& from, const v1::LogRecord&) {
      absl::MutexLock lock(&mu_);
      ++counts_[from.name];
    };
  }
  int64_t count(const std::string& name) {
    absl::MutexLock lock(&mu_);
    return counts_[name];
  }
  bool WaitFor(const std::string& name, int64_t n, absl::Duration timeout) {
    absl::MutexLock lock(&mu_);
    auto enough = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return counts_[name] >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, int64_t> counts_ ABSL_GUARDED_BY(mu_);
};

int64_t RssKib(int64_t pid) {
  std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  size_t at = status.find("VmRSS:");
  int64_t kib = 0;
  if (at != std::string::npos) {
    std::istringstream in(status.substr(at + 6));
    in >> kib;
  }
  return kib;
}

// A child (and a grandchild, through its parent) print as fast as they can: `yes`, run with
// its output inherited, so that every line becomes one log record. Meanwhile the master
// calls their siblings and the grandchild's parent, which must answer within a deadline.
// (Each router lets through at most a quota of log records per child link and drops the
// rest with a count: router/log_quota.h, LogQuota. Without it the middle context would
// forward every record, its link to the master would fill, and its replies, and its other
// child's, would queue behind them for seconds.)
TEST_F(FaultTest, AChildFloodingLogsDoesNotStallTheRestOfTheTree) {
  LogCounter logs;
  CancelSource stop_flood;
  MasterOptions options;
  options.log_sink = logs.Sink();
  // The links' liveness bound, scaled like every bound here: under ASan, in the full suite, a
  // flooder's link once went 10 s with nothing read by its parent and was closed as silent.
  options.link_silence_limit = kDefaultSilenceLimit * kSlowdown;
  Master master(TestFunctions(), options);
  absl::StatusOr<Context> flooder = master.Spawn("local,name=flooder");
  absl::StatusOr<Context> quiet = master.Spawn("local,name=quiet");
  absl::StatusOr<Context> middle = master.Spawn("local,name=middle");
  ASSERT_TRUE(flooder.ok() && quiet.ok() && middle.ok());
  absl::StatusOr<Context> deep_flooder = middle->Spawn("local,name=deep-flooder");
  absl::StatusOr<Context> deep_quiet = middle->Spawn("local,name=deep-quiet");
  ASSERT_TRUE(deep_flooder.ok() && deep_quiet.ok());

  // Calls to the quiet contexts, for `duration`: latency of each (every one must answer
  // within 1 s, or 10 s under TSan, which slows everything down about that much).
  const absl::Duration kDeadline = absl::Seconds(1) * kSlowdown;
  std::vector<std::string> bad;
  auto probe = [&](absl::Duration duration) {
    std::map<std::string, std::vector<absl::Duration>> latencies;
    const absl::Time until = absl::Now() + duration;
    while (absl::Now() < until) {
      for (const Context* c : {&*quiet, &*middle, &*deep_quiet}) {
        absl::Time start = absl::Now();
        test::Echo echo;
        echo.set_text("still there?");
        absl::StatusOr<test::Echo> reply = c->Call<test::Echo>("echo", echo, Timeout(kDeadline));
        latencies[c->name()].push_back(absl::Now() - start);
        if (!reply.ok()) bad.push_back(absl::StrCat(c->name(), ": ", reply.status().ToString()));
      }
    }
    std::string out;
    for (auto& [name, l] : latencies) {
      std::sort(l.begin(), l.end());
      absl::StrAppend(&out, " ", name, ": ", l.size(), " calls, median ",
                      absl::ToInt64Microseconds(l[l.size() / 2]), " us, max ",
                      absl::ToInt64Microseconds(l.back()), " us;");
    }
    return out;
  };
  std::printf("[ no flood ]%s\n", probe(absl::Milliseconds(500)).c_str());

  // 20 M lines each (40 MB of "y\n"), bounded so that the test ends even if nothing drains.
  v1::RunRequest flood;
  flood.add_argv("sh");
  flood.add_argv("-c");
  flood.add_argv("yes | head -c 40000000");
  flood.set_output(v1::RunRequest::INHERIT);
  CallOptions flood_options;
  flood_options.cancel = &stop_flood;
  auto flood_a = flooder->CallAsync<v1::RunReply>("grove.run", flood, flood_options);
  auto flood_b = deep_flooder->CallAsync<v1::RunReply>("grove.run", flood, flood_options);
  ASSERT_TRUE(logs.WaitFor("flooder", 10000, kWait));
  ASSERT_TRUE(logs.WaitFor("deep-flooder", 10000, kWait));

  // While it goes on: calls to the siblings (and to the middle) each answer within 1 s.
  std::printf("[ flood    ]%s\n", probe(absl::Seconds(3) * kSlowdown).c_str());
  // The flooder itself: its replies queue behind its own records.
  absl::Time start = absl::Now();
  absl::Status own = flooder->Ping(Timeout(absl::Seconds(30)));
  absl::Duration own_latency = absl::Now() - start;
  std::printf("[ flood    ] %lld + %lld records so far, %lld + %lld notices of dropped ones; "
              "ping to the flooder: %s in %lld ms\n",
              static_cast<long long>(logs.count("flooder")),
              static_cast<long long>(logs.count("deep-flooder")),
              static_cast<long long>(logs.count("master")),
              static_cast<long long>(logs.count("middle")), own.ToString().c_str(),
              static_cast<long long>(absl::ToInt64Milliseconds(own_latency)));
  for (const Context* c : {&*flooder, &*middle, &*deep_flooder}) {
    absl::StatusOr<v1::InfoReply> info = c->Info(Timeout(absl::Seconds(30)));
    if (info.ok()) {
      std::printf("[ rss      ] %s: %lld KiB\n", c->name().c_str(),
                  static_cast<long long>(RssKib(info->pid())));
    }
  }
  std::printf("[ rss      ] master: %lld KiB\n", static_cast<long long>(RssKib(::getpid())));
  std::fflush(stdout);
  EXPECT_TRUE(bad.empty()) << FirstLines(bad);
  // The master said that it dropped records (its notices are records of its own).
  EXPECT_GT(logs.count("master"), 0);
  stop_flood.Cancel();
  for (auto* f : {&flood_a, &flood_b}) {
    ASSERT_EQ(f->wait_for(absl::ToChronoMilliseconds(kWait)), std::future_status::ready);
    absl::StatusOr<v1::RunReply> r = f->get();
    EXPECT_TRUE(r.ok() || r.status().code() == absl::StatusCode::kCancelled) << r.status();
  }
}

}  // namespace
}  // namespace grove::testing
