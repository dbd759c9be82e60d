// Scale: one master and 1000 live contexts on this machine, 10 local children x 9 fork
// children x 10 fork children (100 under a sanitizer, whose shadow memory would not fit 1000
// processes): spawned in parallel, every one called at once, every one listed in the
// registry by name, and nothing left once the tree is shut down (the fixture checks).
#include <sys/resource.h>

#include <atomic>
#include <future>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kLeavesPerFork = 0;  // 10 + 90 contexts.
#else
constexpr int kLeavesPerFork = 10;  // 10 + 90 + 900 contexts.
#endif
constexpr int kLocal = 10;
constexpr int kForksPerLocal = 9;
constexpr int kTotal = kLocal + kLocal * kForksPerLocal * (1 + kLeavesPerFork);

class ScaleTest : public GroveTest {};

TEST_F(ScaleTest, AThousandContextsAnswerOneCallEachAndAllAreListed) {
  Master master(TestFunctions());
  absl::Mutex mu;
  std::vector<Context> contexts;
  std::vector<std::string> errors;
  std::vector<std::thread> threads;
  for (int i = 0; i < kLocal; ++i) {
    threads.emplace_back([&, i] {
      std::vector<Context> mine;
      auto keep = [&](absl::StatusOr<Context> c) {
        if (!c.ok()) {
          absl::MutexLock lock(&mu);
          errors.push_back(c.status().ToString());
          return false;
        }
        mine.push_back(*c);
        return true;
      };
      absl::StatusOr<Context> local = master.Spawn(absl::StrCat("local,name=l", i));
      if (!keep(local)) return;
      for (int j = 0; j < kForksPerLocal; ++j) {
        absl::StatusOr<Context> fork = local->Spawn(absl::StrCat("fork,name=l", i, ".f", j));
        if (!keep(fork)) return;
        for (int k = 0; k < kLeavesPerFork; ++k) {
          if (!keep(fork->Spawn(absl::StrCat("fork,name=l", i, ".f", j, ".f", k)))) return;
        }
      }
      absl::MutexLock lock(&mu);
      contexts.insert(contexts.end(), mine.begin(), mine.end());
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(errors.empty()) << errors.size() << " spawns failed, the first: " << errors[0];
  ASSERT_EQ(contexts.size(), static_cast<size_t>(kTotal));

  // One call to each, all in flight together; each answers with its own name and pid.
  std::vector<std::future<absl::StatusOr<v1::InfoReply>>> calls;
  for (const Context& c : contexts) {
    calls.push_back(c.CallAsync<v1::InfoReply>("grove.info", v1::Empty(),
                                               {.timeout = absl::Seconds(120)}));
  }
  std::set<int64_t> pids;
  for (size_t i = 0; i < calls.size(); ++i) {
    absl::StatusOr<v1::InfoReply> info = calls[i].get();
    ASSERT_TRUE(info.ok()) << contexts[i].name() << ": " << info.status();
    EXPECT_EQ(info->name(), contexts[i].name());
    pids.insert(info->pid());
  }
  EXPECT_EQ(pids.size(), static_cast<size_t>(kTotal));

  // The master's registry has every one, by id and by name, with its parent.
  int listed = 0;
  for (const ContextRecord& r : master.registry().List(false)) {
    if (r.id == master.router().id()) continue;
    ++listed;
    EXPECT_EQ(r.state, ContextState::kConnected) << r.name;
  }
  EXPECT_EQ(listed, kTotal);
  for (const Context& c : contexts) {
    absl::StatusOr<Context> by_name = master.Find(c.name());
    ASSERT_TRUE(by_name.ok()) << c.name() << ": " << by_name.status();
    EXPECT_EQ(by_name->id(), c.id());
  }
  std::optional<ContextRecord> leaf = master.registry().Find(contexts.back().id());
  ASSERT_TRUE(leaf.has_value());
  EXPECT_NE(leaf->parent, master.router().id());

  master.Shutdown();
  for (const ContextRecord& r : master.registry().List(true)) {
    if (r.id != master.router().id()) {
      EXPECT_EQ(r.state, ContextState::kGone) << r.name;
    }
  }
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kDirect = 100;
constexpr rlim_t kSoftLimit = 128;
#else
constexpr int kDirect = 1000;
constexpr rlim_t kSoftLimit = 1024;  // Debian's default.
#endif

// A master started under a low soft limit on open files raises it to the hard limit, so that
// it holds 1000 direct children (several fds each) where 1024 fds would stop it at ~200.
TEST_F(ScaleTest, AThousandDirectChildrenUnderTheDefaultSoftLimitOnOpenFiles) {
  struct rlimit before;
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &before), 0);
  if (before.rlim_max <= static_cast<rlim_t>(kDirect) * 8) {
    GTEST_SKIP() << "the hard limit (" << before.rlim_max << ") is too low to test this";
  }
  struct rlimit low = {kSoftLimit, before.rlim_max};
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  {
    MasterOptions options;
    options.zygote = TestZygote();
    Master master(TestFunctions(), options);
    struct rlimit now;
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &now), 0);
    EXPECT_EQ(now.rlim_cur, before.rlim_max);
    absl::Mutex mu;
    std::vector<std::string> errors;
    std::vector<std::thread> threads;
    std::atomic<int> started{0};
    for (int t = 0; t < 10; ++t) {
      threads.emplace_back([&, t] {
        for (int i = t; i < kDirect; i += 10) {
          absl::StatusOr<Context> c = master.Spawn(absl::StrCat("fork,name=d", i));
          if (c.ok()) {
            ++started;
          } else {
            absl::MutexLock lock(&mu);
            errors.push_back(c.status().ToString());
          }
        }
      });
    }
    for (std::thread& t : threads) t.join();
    ASSERT_TRUE(errors.empty()) << errors.size() << " spawns failed, the first: " << errors[0];
    EXPECT_EQ(started.load(), kDirect);
    int listed = 0;
    for (const ContextRecord& r : master.registry().List(false)) {
      listed += r.parent == master.router().id() && r.id != master.router().id();
    }
    EXPECT_EQ(listed, kDirect);
  }
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &before), 0);
}

}  // namespace
}  // namespace grove::testing
