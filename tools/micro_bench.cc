// Google Benchmark micro-benchmarks of grove's hot paths: envelope encoding and decoding,
// batching, and a call through a router to itself. Run as programs on grove run: without
// Abseil's lock-order graph (see child/agent.cc).
//
//   bazel run -c opt //tools:micro_bench
#include <future>

#include "absl/synchronization/mutex.h"
#include "benchmark/benchmark.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "router/context.h"
#include "router/router.h"
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
