// grove bench's rows for gRPC services (grove.bench.Echo, bench_service.proto, which every
// context of the grove CLI hosts).
//
// The mesh: the bench's own tree, through ChannelTo with the generated stub.
//   mesh_unary_us          a unary call (16 bytes) to a child, median of 2000
//   mesh_unary_3hops_us    the same to the end of local/local/local, median of 2000
//   mesh_stream_3hops_MBps a server stream of 64 KiB messages (256 MiB) from there
//
// The ingress: a resident master of its own (private runtime directory) whose spec fronts the
// service with one local replica, called through the ingress on loopback TCP by this process,
// against the same service served here by a plain gRPC server on loopback TCP in the same run.
//   direct_unary_p50_us    a unary call (16 bytes) to the plain server, median of 2000
//   ingress_unary_p50_us   the same call through the ingress to the replica, median of 2000
//   ingress_calls_per_s    unary calls with 64 in flight (callback API), over 3 s
//   ingress_stream_MBps    a server stream of 64 KiB messages (256 MiB) through the ingress
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/fd.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "proto/control.grpc.pb.h"
#include "resident/attach.h"
#include "grove.h"
#include "tools/bench_service.h"
#include "tools/cli.h"
#include "tools/floors.h"

namespace grove::cli {
namespace {

std::unique_ptr<bench::Echo::Stub> EchoStub(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  return bench::Echo::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// Median of 2000 unary calls after 200 to warm up; -1 when one fails.
double UnaryP50Us(bench::Echo::Stub& stub) {
  bench::Payload request;
  request.set_data(std::string(16, 'x'));
  std::vector<double> us;
  for (int i = 0; i < 2200; ++i) {
    grpc::ClientContext context;
    bench::Payload reply;
    absl::Time t = absl::Now();
    if (!stub.Unary(&context, request, &reply).ok()) return -1;
    if (i >= 200) us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t));
  }
  return Percentile(us, 0.5);
}

// Unary calls per second with `in_flight` outstanding (each completion starts the next), over
// `duration`; -1 when one fails.
double CallsPerSecond(bench::Echo::Stub& stub, int in_flight, absl::Duration duration) {
  struct State {
    absl::Mutex mu;
    int outstanding ABSL_GUARDED_BY(mu) = 0;
    int64_t done ABSL_GUARDED_BY(mu) = 0;
    bool failed ABSL_GUARDED_BY(mu) = false;
    absl::Time until;
  } state;
  state.until = absl::Now() + duration;
  bench::Payload request;
  request.set_data(std::string(16, 'x'));
  // One call: its context and reply live until its callback has run.
  std::function<void()> start = [&] {
    auto* context = new grpc::ClientContext();
    auto* reply = new bench::Payload();
    stub.async()->Unary(context, &request, reply, [&, context, reply](grpc::Status status) {
      delete context;
      delete reply;
      bool again;
      {
        absl::MutexLock lock(&state.mu);
        if (!status.ok()) state.failed = true;
        ++state.done;
        again = !state.failed && absl::Now() < state.until;
        if (!again) --state.outstanding;
      }
      if (again) start();
    });
  };
  const absl::Time t = absl::Now();
  {
    absl::MutexLock lock(&state.mu);
    state.outstanding = in_flight;
  }
  for (int i = 0; i < in_flight; ++i) start();
  absl::MutexLock lock(&state.mu);
  auto idle = [&state]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state.mu) { return state.outstanding == 0; };
  state.mu.Await(absl::Condition(&idle));
  if (state.failed) return -1;
  return static_cast<double>(state.done) / absl::ToDoubleSeconds(absl::Now() - t);
}

// MB/s of a server stream of 4096 messages of 64 KiB; -1 when it fails.
double StreamMBps(bench::Echo::Stub& stub) {
  bench::StreamRequest request;
  request.set_count(4096);
  request.set_size(64 << 10);
  grpc::ClientContext context;
  absl::Time t = absl::Now();
  std::unique_ptr<grpc::ClientReader<bench::Payload>> reader = stub.Stream(&context, request);
  bench::Payload message;
  int64_t bytes = 0;
  while (reader->Read(&message)) bytes += static_cast<int64_t>(message.data().size());
  if (!reader->Finish().ok() || bytes != int64_t{4096} << 16) return -1;
  return static_cast<double>(bytes) / 1e6 / absl::ToDoubleSeconds(absl::Now() - t);
}

}  // namespace

int BenchMesh(Master& master, bool json, const std::function<bool(const std::string&)>& wants) {
  if (!wants("mesh_unary_us") && !wants("mesh_unary_3hops_us") &&
      !wants("mesh_stream_3hops_MBps")) {
    return 0;
  }
  absl::StatusOr<Context> far = master.SpawnPath("local/local/local");
  absl::StatusOr<Context> near = master.Spawn("local");
  if (!far.ok() || !near.ok()) {
    fprintf(stderr, "grove bench: cannot start the mesh's contexts: %s\n",
            (far.ok() ? near.status() : far.status()).ToString().c_str());
    return 1;
  }
  auto emit = [json](const std::string& metric, double value, const char* unit) {
    PrintFigure(json, "grove", metric, value, unit, BenchReference(metric));
  };
  int failed = 0;
  std::unique_ptr<bench::Echo::Stub> one = bench::Echo::NewStub(ChannelTo(*near));
  std::unique_ptr<bench::Echo::Stub> three = bench::Echo::NewStub(ChannelTo(*far));
  if (wants("mesh_unary_us")) {
    double us = UnaryP50Us(*one);
    us > 0 ? emit("mesh_unary_us", us, "us") : void(++failed);
  }
  if (wants("mesh_unary_3hops_us")) {
    double us = UnaryP50Us(*three);
    us > 0 ? emit("mesh_unary_3hops_us", us, "us") : void(++failed);
  }
  if (wants("mesh_stream_3hops_MBps")) {
    double mbps = StreamMBps(*three);
    mbps > 0 ? emit("mesh_stream_3hops_MBps", mbps, "MB/s") : void(++failed);
  }
  if (failed != 0) fprintf(stderr, "grove bench: %d mesh measurements failed\n", failed);
  return failed == 0 ? 0 : 1;
}

int BenchIngress(bool json, const std::function<bool(const std::string&)>& wants) {
  const bool any = wants("direct_unary_p50_us") || wants("ingress_unary_p50_us") ||
                   wants("ingress_calls_per_s") || wants("ingress_stream_MBps");
  if (!any) return 0;
  auto emit = [json](const std::string& metric, double value, const char* unit) {
    PrintFigure(json, "grove", metric, value, unit, BenchReference(metric));
  };
  int failed = 0;

  // The same service, served directly by a plain gRPC server on loopback TCP.
  if (wants("direct_unary_p50_us") || wants("ingress_unary_p50_us")) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&TheBenchEcho());
    std::unique_ptr<grpc::Server> direct = builder.BuildAndStart();
    double us = direct != nullptr && port > 0
                    ? UnaryP50Us(*EchoStub(absl::StrCat("127.0.0.1:", port)))
                    : -1;
    if (direct != nullptr) direct->Shutdown();
    if (us > 0) {
      emit("direct_unary_p50_us", us, "us");
    } else {
      ++failed;
    }
  }

  char tmpl[] = "/tmp/grove-bench-ingress.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return 1;
  const std::string dir = tmpl;
  const std::string run_dir = dir + "/run";
  std::ofstream(dir + "/spec") << "service {\n  name: \"grove.bench.Echo\"\n"
                                  "  replica { path: \"local,name=bench-replica\" }\n"
                                  "  health_interval_ms: 50\n}\n"
                                  "ingress { listen: \"127.0.0.1:0\" }\n";
  const UniqueFd null(open("/dev/null", O_WRONLY | O_CLOEXEC));
  std::string address;
  absl::StatusOr<std::unique_ptr<AttachedTree>> tree =
      RunSelfIn(run_dir, {"up", dir + "/spec"}, null.get()) == 0
          ? Attach(run_dir + "/control.sock")
          : absl::StatusOr<std::unique_ptr<AttachedTree>>(absl::UnavailableError("up"));
  // Ready once the replica is SERVING (the spec's first health round has run by then).
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (tree.ok() && address.empty() && absl::Now() < deadline) {
    grpc::ClientContext context;
    v1::StatusReply status;
    if ((*tree)->stub().Status(&context, v1::StatusRequest(), &status).ok() &&
        status.services_size() == 1 && status.services(0).replicas(0).health() == "SERVING") {
      address = status.ingress();
    } else {
      absl::SleepFor(absl::Milliseconds(20));  // Polls a state with nothing to wait on.
    }
  }
  if (address.empty()) {
    fprintf(stderr, "grove bench: the resident master's ingress did not come up\n");
    ++failed;
  } else {
    std::unique_ptr<bench::Echo::Stub> stub = EchoStub(address);
    if (wants("ingress_unary_p50_us")) {
      double us = UnaryP50Us(*stub);
      us > 0 ? emit("ingress_unary_p50_us", us, "us") : void(++failed);
    }
    if (wants("ingress_calls_per_s")) {
      double rate = CallsPerSecond(*stub, 64, absl::Seconds(3));
      rate > 0 ? emit("ingress_calls_per_s", rate, "calls/s") : void(++failed);
    }
    if (wants("ingress_stream_MBps")) {
      double mbps = StreamMBps(*stub);
      mbps > 0 ? emit("ingress_stream_MBps", mbps, "MB/s") : void(++failed);
    }
  }
  if (tree.ok()) tree->reset();
  if (RunSelfIn(run_dir, {"down"}, null.get()) != 0) ++failed;
  std::filesystem::remove_all(dir);
  if (failed != 0) fprintf(stderr, "grove bench: %d ingress measurements failed\n", failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace grove::cli
