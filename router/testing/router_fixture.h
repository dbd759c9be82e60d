// The fixture of the router's tests (calls_test, children_test, routing_test): small trees
// of routers in one process, joined by in-memory links that carry every envelope through the
// wire format.
//
// The master (id 0) is built by the fixture; children are started through grove's own spawn
// path (Router::SpawnChild, or the "grove.spawn" built-in for grandchildren) by an
// InProcessLauncher that creates each child's Router in this process. Every wait is on an
// event with a deadline; nothing sleeps to synchronise.
#ifndef GROVE_ROUTER_TESTING_ROUTER_FIXTURE_H_
#define GROVE_ROUTER_TESTING_ROUTER_FIXTURE_H_

#include <unistd.h>

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "link/testing/in_memory_link.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "router/context.h"
#include "router/functions.h"
#include "router/registry.h"
#include "router/router.h"
#include "router/testing/in_process_launcher.h"

namespace grove::testing {

// How long any expected event may take. Generous: a failing wait means a lost event, not a
// slow machine.
inline constexpr absl::Duration kWait = absl::Seconds(20);

template <typename T>
bool ReadyWithin(std::future<T>& future, absl::Duration timeout = kWait) {
  return future.wait_for(absl::ToChronoMilliseconds(timeout)) == std::future_status::ready;
}

template <typename T>
bool ReadyNow(std::future<T>& future) {
  return future.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

// What the test functions saw, shared by every router in a test. Thread-safe.
class Probe {
 public:
  void Started() {
    absl::MutexLock lock(&mu_);
    ++started_;
  }
  void Finished(bool cancelled) {
    absl::MutexLock lock(&mu_);
    ++finished_;
    if (cancelled) ++cancelled_;
  }
  void Record(uint64_t caller) {
    absl::MutexLock lock(&mu_);
    callers_.push_back(caller);
  }

  void Relayed() {
    absl::MutexLock lock(&mu_);
    ++relayed_;
  }

  bool WaitStarted(int n) { return WaitFor(&started_, n); }
  bool WaitRelayed(int n) { return WaitFor(&relayed_, n); }
  bool WaitCancelled(int n, absl::Duration timeout = kWait) {
    return WaitFor(&cancelled_, n, timeout);
  }
  bool WaitFinished(int n) { return WaitFor(&finished_, n); }

  int started() const {
    absl::MutexLock lock(&mu_);
    return started_;
  }
  int cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }
  std::vector<uint64_t> callers() const {
    absl::MutexLock lock(&mu_);
    return callers_;
  }

 private:
  bool WaitFor(const int* counter, int n, absl::Duration timeout = kWait) {
    absl::MutexLock lock(&mu_);
    auto reached = [counter, n]() { return *counter >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&reached), timeout);
  }

  mutable absl::Mutex mu_;
  int started_ ABSL_GUARDED_BY(mu_) = 0;
  int finished_ ABSL_GUARDED_BY(mu_) = 0;
  int cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  int relayed_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> callers_ ABSL_GUARDED_BY(mu_);
};

// Records what the master's registry reports. Thread-safe.
class RegistryLog {
 public:
  std::function<void(const RegistryEvent&)> Callback() {
    return [this](const RegistryEvent& event) {
      absl::MutexLock lock(&mu_);
      events_.push_back(event);
    };
  }
  bool WaitFor(RegistryEvent::Kind kind, ContextId id) {
    absl::MutexLock lock(&mu_);
    auto seen = [this, kind, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const RegistryEvent& e : events_) {
        if (e.kind == kind && e.record.id == id) return true;
      }
      return false;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&seen), kWait);
  }
  std::vector<RegistryEvent> events() const {
    absl::MutexLock lock(&mu_);
    return events_;
  }

 private:
  mutable absl::Mutex mu_;
  std::vector<RegistryEvent> events_ ABSL_GUARDED_BY(mu_);
};

// Holds replies on their way into the master (on the master's end of one child's link) while
// holding, and records them. Lets a test make the caller's own clock decide a deadline, as it
// does whenever the callee's reply is slower than the caller's timer.
class ReplyGate {
 public:
  // Installs the gate on `link`, holding from the start.
  static std::shared_ptr<ReplyGate> Install(InMemoryLink& link) {
    auto gate = std::make_shared<ReplyGate>();
    link.SetObserver([gate](const v1::Envelope& e) {
      if (e.has_reply()) gate->Pass(e.reply());
    });
    return gate;
  }

  void Hold() {
    absl::MutexLock lock(&mu_);
    holding_ = true;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    holding_ = false;
  }
  // Waits until `n` replies have reached the gate.
  bool WaitForReplies(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return replies_.size() >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), kWait);
  }
  std::vector<v1::Reply> replies() const {
    absl::MutexLock lock(&mu_);
    return replies_;
  }

 private:
  // On the link's delivery thread.
  void Pass(const v1::Reply& reply) {
    absl::MutexLock lock(&mu_);
    replies_.push_back(reply);
    auto open = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !holding_; };
    mu_.AwaitWithTimeout(absl::Condition(&open), kWait);
  }

  mutable absl::Mutex mu_;
  bool holding_ ABSL_GUARDED_BY(mu_) = true;
  std::vector<v1::Reply> replies_ ABSL_GUARDED_BY(mu_);
};

// The master of a tree of routers in this process (id 0, "master"), with a launcher that
// starts each child's Router here on an in-memory link, and the functions every context of
// the tree offers. Owns the network, the routers and the launcher; TearDown shuts the tree
// down and waits for every link to be down.
class RouterTest : public ::testing::Test {
 protected:
  static constexpr int64_t kMaxMessageBytes = int64_t{1} << 20;

  RouterTest() {
    RegisterFunctions();
    launcher_ = std::make_unique<InProcessLauncher>(&network_, &functions_);
    Router::Options options;
    options.self.set_id(0);
    options.self.set_name("master");
    options.self.set_method("master");
    options.self.set_host("in-memory");
    options.self.set_pid(::getpid());
    options.functions = &functions_;
    options.max_message_bytes = kMaxMessageBytes;
    options.stop_grace = absl::Milliseconds(100);
    master_ = std::make_unique<Router>(options);
    master_->AddLauncher("local", launcher_.get());
    master_->registry().Subscribe(registry_log_.Callback());
  }

  void TearDown() override {
    // Children first (newest first), then the master; then wait until every OnLinkDown has
    // returned before any router is destroyed.
    launcher_->ShutdownAll();
    master_->Shutdown(absl::CancelledError("the test is over"));
    EXPECT_TRUE(network_.WaitUntilAllDown(kWait))
        << network_.live_ends() << " link ends are still up after every router shut down";
    master_.reset();
    launcher_.reset();
  }

  // The functions every context of the test tree offers (as a real program registers them
  // once, in main()).
  void RegisterFunctions();

  Context Master() const { return Context(master_.get(), kMasterId, "master"); }
  // A handle on `target` as seen from `from`'s router.
  Context From(const Context& from, const Context& target) const {
    return Context(RouterOf(from), target.id(), target.name());
  }
  Context MasterFrom(const Context& from) const {
    return Context(RouterOf(from), kMasterId, "master");
  }
  Router* RouterOf(const Context& c) const {
    if (c.id() == kMasterId) return master_.get();
    Router* router = launcher_->router(c.id());
    CHECK(router != nullptr) << "no router for context " << c.id();
    return router;
  }

  // Spawns c1 and c2 under the master and g under c1.
  void SpawnTree() {
    absl::StatusOr<Context> c1 = Master().Spawn("local,name=c1");
    ASSERT_THAT(c1, IsOk());
    absl::StatusOr<Context> c2 = Master().Spawn("local,name=c2");
    ASSERT_THAT(c2, IsOk());
    absl::StatusOr<Context> g = c1->Spawn("local,name=g");
    ASSERT_THAT(g, IsOk());
    c1_.emplace(*c1);
    c2_.emplace(*c2);
    g_.emplace(*g);
  }

  static v1::RunRequest Args(std::vector<std::string> argv) {
    v1::RunRequest request;
    for (std::string& arg : argv) request.add_argv(std::move(arg));
    return request;
  }
  static v1::SleepRequest Ms(int64_t ms) {
    v1::SleepRequest request;
    request.set_ms(ms);
    return request;
  }

  // Declared in destruction order: the network (joining link threads) goes last.
  InMemoryNetwork network_;
  Probe probe_;
  RegistryLog registry_log_;
  Functions functions_;
  std::unique_ptr<InProcessLauncher> launcher_;
  std::unique_ptr<Router> master_;
  std::optional<Context> c1_, c2_, g_;
};

}  // namespace grove::testing

#endif  // GROVE_ROUTER_TESTING_ROUTER_FIXTURE_H_
