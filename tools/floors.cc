// The floors of a round trip (floors.h).
#include "tools/floors.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/fd.h"
#include "common/process.h"
#include "grpcpp/create_channel_posix.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/server_posix.h"
#include "proto/grove.grpc.pb.h"

namespace grove::cli {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

std::vector<double> RoundTripTimesUs(int calls, const std::function<bool()>& round_trip) {
  for (int i = 0; i < 200; ++i) round_trip();
  std::vector<double> us;
  us.reserve(calls);
  for (int i = 0; i < calls; ++i) {
    absl::Time t = absl::Now();
    if (!round_trip()) break;
    us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t));
  }
  return us;
}

void PrintFigure(bool json, const char* peer, const std::string& metric, double value,
                 const std::string& unit, const char* reference) {
  if (json) {
    printf("{\"peer\":\"%s\",\"metric\":\"%s\",\"value\":%.2f,\"unit\":\"%s\"}\n", peer,
           metric.c_str(), value, unit.c_str());
  } else if (*reference == '\0') {
    printf("%-36s %12.2f %s\n", metric.c_str(), value, unit.c_str());
  } else {
    printf("%-36s %12.2f %-8s %s\n", metric.c_str(), value, unit.c_str(), reference);
  }
  fflush(stdout);
}

namespace {

constexpr char kPeerFlag[] = "--grove-bench-peer";
constexpr char kFloorFlag[] = "--grove-bench-floor";

// The peer's side of a floor: `kind` is "socket" or "grpc". Returns the exit status.
int ServeFloorPeer(const std::string& kind) {
  if (kind == "socket") {
    char buf[64];
    for (;;) {
      ssize_t n = ::read(3, buf, sizeof buf);
      if (n <= 0 || ::write(3, buf, n) != n) return 0;
    }
  }
  if (kind != "grpc") return 2;
  class Echo final : public grpc::CallbackGenericService {
    grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
      class Reactor final : public grpc::ServerGenericBidiReactor {
       public:
        Reactor() { StartRead(&message_); }
        void OnReadDone(bool ok) override {
          if (ok) {
            StartWrite(&message_);
          } else {
            Finish(grpc::Status::OK);
          }
        }
        void OnWriteDone(bool ok) override {
          if (ok) {
            StartRead(&message_);
          } else {
            Finish(grpc::Status::OK);
          }
        }
        void OnDone() override { delete this; }

       private:
        grpc::ByteBuffer message_;
      };
      return new Reactor;
    }
  } echo;
  grpc::ServerBuilder builder;
  builder.RegisterCallbackGenericService(&echo);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || !SetNonBlocking(3, true).ok()) return 1;
  grpc::AddInsecureChannelFromFd(server.get(), 3);
  char c;
  while (::read(0, &c, 1) > 0) {
  }
  server->Shutdown(std::chrono::system_clock::now());
  return 0;
}

// A started peer, and the measuring end of its socketpair. Ending it (the destructor) closes its
// stdin and reaps it.
class Peer {
 public:
  static absl::StatusOr<Peer> Start(const std::string& kind) {
    absl::StatusOr<std::pair<UniqueFd, UniqueFd>> link = SocketPair();
    if (!link.ok()) return link.status();
    absl::StatusOr<std::pair<UniqueFd, UniqueFd>> stdin_pipe = Pipe();
    if (!stdin_pipe.ok()) return stdin_pipe.status();
    SpawnOptions spawn;
    spawn.argv = {"/proc/self/exe", kPeerFlag, kind};
    spawn.fds = {{0, stdin_pipe->first.get()}, {1, STDERR_FILENO}, {2, STDERR_FILENO},
                 {3, link->second.get()}};
    absl::StatusOr<Process> process = Process::Spawn(spawn);
    if (!process.ok()) return process.status();
    Peer peer;
    peer.process_ = std::move(*process);
    peer.stdin_ = std::move(stdin_pipe->second);
    peer.fd_ = std::move(link->first);
    return peer;
  }
  Peer(Peer&&) = default;
  ~Peer() {
    if (!stdin_.valid()) return;
    stdin_.Reset();
    process_.Wait(absl::Now() + absl::Seconds(10)).IgnoreError();
  }
  UniqueFd& fd() { return fd_; }

 private:
  Peer() = default;
  Process process_;
  UniqueFd stdin_, fd_;
};

absl::StatusOr<double> SocketFloorUs(int calls) {
  absl::StatusOr<Peer> peer = Peer::Start("socket");
  if (!peer.ok()) return peer.status();
  const int fd = peer->fd().get();
  std::vector<double> us = RoundTripTimesUs(calls, [fd] {
    char c = 0;
    return ::write(fd, &c, 1) == 1 && ::read(fd, &c, 1) == 1;
  });
  if (static_cast<int>(us.size()) < calls) {
    return absl::InternalError("the socket peer stopped answering");
  }
  return Percentile(us, 0.5);
}

absl::StatusOr<double> GrpcStreamFloorUs(int calls) {
  absl::StatusOr<Peer> peer = Peer::Start("grpc");
  if (!peer.ok()) return peer.status();
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomInsecureChannelFromFd(
      "bench", peer->fd().Release(), grpc::ChannelArguments());
  std::unique_ptr<v1::Router::Stub> stub = v1::Router::NewStub(channel);
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReaderWriter<v1::Batch, v1::Batch>> stream = stub->Attach(&context);
  v1::Batch ping, pong;
  std::vector<double> us =
      RoundTripTimesUs(calls, [&] { return stream->Write(ping) && stream->Read(&pong); });
  if (static_cast<int>(us.size()) < calls) {
    return absl::InternalError("the gRPC peer stopped answering");
  }
  stream->WritesDone();
  if (grpc::Status s = stream->Finish(); !s.ok()) {
    return absl::InternalError(absl::StrCat("the gRPC peer's stream: ", s.error_message()));
  }
  return Percentile(us, 0.5);
}

absl::StatusOr<double> GrpcCallbackFloorUs(int calls) {
  absl::StatusOr<Peer> peer = Peer::Start("grpc");
  if (!peer.ok()) return peer.status();
  class PingPong final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    explicit PingPong(int calls) : calls_(calls) {
      grpc::Slice empty("");
      ping_ = grpc::ByteBuffer(&empty, 1);  // A default ByteBuffer is no message at all.
      us_.reserve(calls);
    }
    void Start(grpc::GenericStub& stub) {
      stub.PrepareBidiStreamingCall(&context_, "/grove.v1.Router/Attach", {}, this);
      AddHold();  // The write side stays open until the last reply.
      Send();
      StartRead(&pong_);
      StartCall();
    }
    // The next ping goes once both its reply and its write's completion are in (gRPC allows
    // one write at a time, and the reply can come first); the two may run on two threads.
    void OnReadDone(bool ok) override {
      if (ok && ++received_ > 200) {
        us_.push_back(absl::ToDoubleMicroseconds(absl::Now() - sent_));
      }
      Next(ok);
    }
    void OnWriteDone(bool ok) override { Next(ok); }
    void OnDone(const grpc::Status& status) override {
      status_ = status;
      done_.Notify();
    }
    absl::StatusOr<double> Wait() {
      done_.WaitForNotification();
      if (!status_.ok() || received_ != calls_ + 200) {
        return absl::InternalError(
            absl::StrCat("the gRPC peer's stream: ", status_.error_message()));
      }
      return Percentile(us_, 0.5);
    }

   private:
    void Next(bool ok) {
      if (!ok) failed_.store(true, std::memory_order_relaxed);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      if (failed_.load(std::memory_order_relaxed) || received_ == calls_ + 200) {
        if (!failed_.load(std::memory_order_relaxed)) StartWritesDone();
        return RemoveHold();  // The stream ends: OnDone.
      }
      Send();
      StartRead(&pong_);
    }
    void Send() {
      pending_.store(2, std::memory_order_relaxed);
      sent_ = absl::Now();
      StartWrite(&ping_);
    }
    const int calls_;
    grpc::ClientContext context_;
    grpc::ByteBuffer ping_, pong_;
    std::atomic<int> pending_{0};  // Of the ping in flight: its reply and its write.
    std::atomic<bool> failed_{false};
    int received_ = 0;  // Written by the read callback, read by the one that goes on.
    absl::Time sent_;
    std::vector<double> us_;
    grpc::Status status_;
    absl::Notification done_;
  };
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomInsecureChannelFromFd(
      "bench", peer->fd().Release(), grpc::ChannelArguments());
  grpc::GenericStub stub(channel);
  PingPong ping_pong(calls);
  ping_pong.Start(stub);
  return ping_pong.Wait();
}

// The measuring process of a floor: prints its median.
int MeasureFloor(const std::string& metric, int calls) {
  absl::StatusOr<double> us = metric == "socketpair_rtt_us"      ? SocketFloorUs(calls)
                              : metric == "grpc_stream_rtt_us"   ? GrpcStreamFloorUs(calls)
                              : metric == "grpc_callback_rtt_us" ? GrpcCallbackFloorUs(calls)
                                                                 : absl::InvalidArgumentError(
                                                                       "no such floor");
  if (!us.ok()) {
    fprintf(stderr, "%s: %s\n", metric.c_str(), us.status().ToString().c_str());
    return 1;
  }
  printf("%.3f\n", *us);
  return 0;
}

}  // namespace

std::optional<int> RunFloorProcess(int argc, char** argv) {
  if (argc == 3 && std::strcmp(argv[1], kPeerFlag) == 0) return ServeFloorPeer(argv[2]);
  if (argc == 4 && std::strcmp(argv[1], kFloorFlag) == 0) {
    int calls = 0;
    if (!absl::SimpleAtoi(argv[3], &calls) || calls < 1) return 2;
    return MeasureFloor(argv[2], calls);
  }
  return std::nullopt;
}

absl::StatusOr<double> FloorUs(const std::string& metric, int calls) {
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> out = Pipe();
  if (!out.ok()) return out.status();
  SpawnOptions spawn;
  spawn.argv = {"/proc/self/exe", kFloorFlag, metric, absl::StrCat(calls)};
  spawn.fds = {{1, out->second.get()}, {2, STDERR_FILENO}};
  absl::StatusOr<Process> process = Process::Spawn(spawn);
  if (!process.ok()) return process.status();
  out->second.Reset();
  std::string printed;
  char buffer[256];
  for (ssize_t n; (n = ::read(out->first.get(), buffer, sizeof buffer)) != 0;) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::InternalError(absl::StrCat("reading ", metric, "'s result"));
    printed.append(buffer, n);
  }
  absl::StatusOr<int> status = process->Wait(absl::Now() + absl::Seconds(60));
  double us = 0;
  if (!status.ok() || *status != 0 ||
      !absl::SimpleAtod(absl::StripAsciiWhitespace(printed), &us)) {
    return absl::InternalError(absl::StrCat(
        "measuring ", metric, " failed: ",
        status.ok() ? DescribeWaitStatus(*status) : status.status().ToString()));
  }
  return us;
}

}  // namespace grove::cli
