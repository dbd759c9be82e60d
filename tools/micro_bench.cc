// Google Benchmark micro-benchmarks of grove's hot paths: envelope encoding and decoding,
// batching, routing an envelope down a subtree of 1 to 100 000 contexts, and a call through a
// router to itself. Run as programs on grove run: without Abseil's lock-order graph (see
// child/agent.cc).
//
//   bazel run -c opt //tools:micro_bench
#include <atomic>
#include <future>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "router/context.h"
#include "router/router.h"
#include "router/testing/fake_link.h"
#include "transport/grpc_link.h"

namespace grove {
namespace {

v1::Envelope SmallCall() {
  v1::Envelope e;
  e.set_dst(12);
  e.set_src(0);
  v1::Call* call = e.mutable_call();
  call->set_id(123456);
  call->set_function("grove.ping");
  call->set_argument_type("grove.v1.Empty");
  call->set_timeout_us(1000000);
  return e;
}

void BM_EncodeSmallEnvelope(benchmark::State& state) {
  v1::Envelope e = SmallCall();
  std::string out;
  for (auto _ : state) {
    out.clear();
    e.SerializeToString(&out);
    benchmark::DoNotOptimize(out);
  }
}
BENCHMARK(BM_EncodeSmallEnvelope);

void BM_DecodeSmallEnvelope(benchmark::State& state) {
  std::string bytes = SmallCall().SerializeAsString();
  v1::Envelope e;
  for (auto _ : state) {
    e.ParseFromString(bytes);
    benchmark::DoNotOptimize(e);
  }
}
BENCHMARK(BM_DecodeSmallEnvelope);

void BM_DecodeBatch(benchmark::State& state) {
  v1::Batch batch;
  for (int i = 0; i < state.range(0); ++i) *batch.add_envelopes() = SmallCall();
  std::string bytes = batch.SerializeAsString();
  v1::Batch decoded;
  for (auto _ : state) {
    decoded.ParseFromString(bytes);
    benchmark::DoNotOptimize(decoded);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_DecodeBatch)->Arg(1)->Arg(16)->Arg(256);

void BM_OutQueueFill(benchmark::State& state) {
  OutQueue queue(kDefaultMaxMessageBytes);
  v1::Batch batch;
  for (auto _ : state) {
    for (int i = 0; i < state.range(0); ++i) queue.Push(SmallCall());
    queue.Fill(&batch);
    batch.Clear();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_OutQueueFill)->Arg(1)->Arg(64);

// A relay (id 3, under the master) with one child, A (id 1), below which A announced `routes`
// contexts. The links are fakes without threads (router/testing/fake_link.h): what the
// router sends is counted on the sending thread, so a benchmark loop measures the router alone.
// Owns the router and both links. Thread-compatible: one benchmark loop delivers at a time.
class Relay final : public Launcher {
 public:
  static constexpr uint64_t kMasterId = 0, kChildId = 1, kSelfId = 3, kFirstBehind = 1000;

  explicit Relay(int routes) : router_(Options()) {
    parent_ = std::make_shared<FakeLink>("parent link", [](FakeLink* link, v1::Envelope e) {
      AnswerIdBlock(*link, e, kSelfId, kMasterId, kChildId, 1);  // The relay's ids.
    });
    router_.AddLauncher("local", this);
    router_.SetParentLink(parent_);
    CHECK(router_.SpawnChild(*ParseHop("local,name=a"), absl::Now() + absl::Seconds(10)).ok());
    for (int i = 0; i < routes; ++i) {
      v1::Envelope added;
      added.set_src(kChildId);
      added.set_dst(kMasterId);
      v1::ContextInfo* info = added.mutable_added()->mutable_info();
      info->set_id(kFirstBehind + i);
      info->set_parent(i < 10 ? kChildId : kFirstBehind + i / 10);  // Ten children each.
      info->set_name(absl::StrCat("c", i));
      info->set_method("fork");
      child_->Deliver(std::move(added));
    }
    CHECK(router_.registry().Find(ContextId(kFirstBehind + routes - 1)).has_value());
  }
  ~Relay() override { router_.Shutdown(absl::CancelledError("benchmark over")); }

  // Launcher: A, on a fake link that counts what reaches it.
  absl::StatusOr<LaunchedChild> Launch(const Hop&, const LaunchRequest& request) override {
    child_ = std::make_shared<FakeLink>("link to a",
                                        [this](FakeLink*, v1::Envelope) { ++delivered_; });
    LaunchedChild launched;
    launched.link = child_;
    launched.info = request.info;
    launched.handle = std::make_unique<LinkChildHandle>(child_);
    return launched;
  }

  FakeLink& parent() { return *parent_; }
  int64_t delivered() const { return delivered_.load(); }

 private:
  static Router::Options Options() {
    Router::Options options;
    options.self.set_id(kSelfId);
    options.self.set_name("relay");
    options.self.set_parent(kMasterId);
    options.self.set_method("local");
    options.ancestors = {kMasterId};
    options.stop_grace = absl::ZeroDuration();
    return options;
  }

  Router router_;
  std::shared_ptr<FakeLink> parent_, child_;
  std::atomic<int64_t> delivered_{0};
};

// A call envelope from the parent link to one of the `state.range(0)` contexts behind A, in
// turn, forwarded down to A's link: the lookup, the checks on the way and the send, plus a
// copy of the small envelope per iteration (BM_CopySmallEnvelope alone).
void BM_RouteDown(benchmark::State& state) {
  const int routes = state.range(0);
  Relay relay(routes);
  v1::Envelope call = SmallCall();
  uint64_t i = 0;
  for (auto _ : state) {
    call.set_dst(Relay::kFirstBehind + (i++ * 7919) % routes);  // Spread over the table.
    relay.parent().Deliver(call);
  }
  CHECK_EQ(relay.delivered(), static_cast<int64_t>(i)) << "envelopes lost on the way";
  state.SetItemsProcessed(i);
}
BENCHMARK(BM_RouteDown)->Arg(1)->Arg(1000)->Arg(100000);

void BM_CopySmallEnvelope(benchmark::State& state) {
  v1::Envelope call = SmallCall();
  for (auto _ : state) {
    v1::Envelope copy = call;
    benchmark::DoNotOptimize(copy);
  }
}
BENCHMARK(BM_CopySmallEnvelope);

// A master router with no children, and itself as a Context to call.
struct LoneMaster {
  static Router::Options Options() {
    Router::Options options;
    options.self.set_id(0);
    options.self.set_name("bench");
    return options;
  }
  LoneMaster() : router(Options()), self(&router, kMasterId, "bench") {}
  ~LoneMaster() { router.Shutdown(absl::OkStatus()); }

  Router router;
  Context self;
};

// A call from a router to itself: lookup, policy, dispatch and completion, no transport.
void BM_RouterSelfCall(benchmark::State& state) {
  LoneMaster master;
  std::string empty;
  for (auto _ : state) {
    std::promise<void> done;
    master.self.CallRaw("grove.ping", v1::Empty::descriptor()->full_name(), empty, {},
                        [&](absl::StatusOr<std::string>) { done.set_value(); });
    done.get_future().wait();
  }
}
BENCHMARK(BM_RouterSelfCall);

// The same through the typed, blocking Context::Call: argument encoding, waiting for the result
// and decoding it.
void BM_ContextCallSelf(benchmark::State& state) {
  LoneMaster master;
  for (auto _ : state) {
    absl::StatusOr<v1::Empty> reply = master.self.Call<v1::Empty>("grove.ping", v1::Empty());
    benchmark::DoNotOptimize(reply);
  }
}
BENCHMARK(BM_ContextCallSelf);

}  // namespace
}  // namespace grove

int main(int argc, char** argv) {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
