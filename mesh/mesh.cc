#include "mesh/mesh.h"


#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_util.h"
#include "glog/logging.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/ext/health_check_service_server_builder_option.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/interceptor.h"
#include "proto/builtins.pb.h"
#include "proto/mesh.pb.h"
#include "transport/grpc_link.h"

#include "mesh/flow_control.h"
#include "mesh/host_stream.h"
#include "mesh/metadata.h"
#include "mesh/proxy.h"

namespace grove {
namespace mesh_internal {

// ---------------------------------------------------------------------------------------
// One context's mesh: the host (the program's services, health and reflection on an
// in-process server, and the streams other contexts opened on it) and the proxy (the
// in-process server behind ChannelTo channels). Both servers are built on first use.
// Owned by the router's built-ins (through the functions that use it); destroyed with the
// router, after its workers, links and timer have stopped. Thread-safe.
class Mesh {
 public:
  Mesh(Router* router, const Functions* program) : router_(router), program_(program) {}
  Mesh(const Mesh&) = delete;
  Mesh& operator=(const Mesh&) = delete;

  ~Mesh() {
    // Proxies first: their calls forward into the host (of this or another context). The
    // proxy server itself lives on while channels to it exist; their calls fail from now on.
    std::shared_ptr<ProxyServer> proxy;
    {
      absl::MutexLock lock(&proxy_mu_);
      proxy = std::move(proxy_);
      channels_.clear();
    }
    if (proxy != nullptr) proxy->Detach();
    // Then the host: its calls (the opens) are over, the router's workers having stopped. Its
    // channel goes first (an in-process channel must not outlive its server).
    std::unique_ptr<grpc::Server> host;
    std::shared_ptr<grpc::Channel> channel;
    {
      absl::MutexLock lock(&host_mu_);
      host = std::move(host_server_);
      channel = std::move(host_channel_);
    }
    host_stub_.reset();
    channel.reset();
    if (host != nullptr) host->Shutdown(std::chrono::system_clock::now());
  }

  // grove.grpc_open: runs the call to its end.
  absl::StatusOr<v1::GrpcStatus> Open(const v1::GrpcOpenRequest& request, CallContext& call) {
    if (!ValidMethod(request.method())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "'", request.method(), "' is not a gRPC method name (/package.Service/Method)"));
    }
    absl::StatusOr<grpc::GenericStub*> stub = HostStub();
    if (!stub.ok()) return stub.status();
    const Key key{call.caller().value(), request.stream()};
    std::shared_ptr<HostStream> stream;
    {
      absl::MutexLock lock(&streams_mu_);
      Sweep();
      Slot& slot = streams_[key];
      if (slot.opened) {
        return absl::AlreadyExistsError(absl::StrCat(
            "gRPC stream ", request.stream(), " is already open in context ", router_->name()));
      }
      if (slot.stream == nullptr) slot.stream = std::make_shared<HostStream>();
      slot.opened = true;
      stream = slot.stream;
    }
    std::optional<std::string> first;
    if (request.has_message()) first = request.message();
    if (first || request.half_close()) stream->Push(std::move(first), request.half_close());
    if (request.ack()) call.Output(kGrpcAcceptedStream, "");
    stream->Start(*stub, request, &call);
    uint64_t on_cancel = call.cancel_source().AddCallback([stream] { stream->Cancel(); });
    v1::GrpcStatus result = stream->Wait();
    call.cancel_source().RemoveCallback(on_cancel);
    const bool half_closed = stream->half_closed();
    {
      absl::MutexLock lock(&streams_mu_);
      streams_.erase(key);
      // Messages may still be on their way; remember the stream to drop them.
      if (!half_closed) finished_[key] = absl::Now();
    }
    return result;
  }

  // grove.grpc_send: queues a message and/or credits the stream; never blocks (it runs on
  // the link's reader thread).
  absl::StatusOr<v1::Empty> Send(const v1::GrpcSendRequest& request, CallContext& call) {
    const Key key{call.caller().value(), request.stream()};
    const bool carries = request.has_message() || request.half_close();
    std::shared_ptr<HostStream> stream;
    {
      absl::MutexLock lock(&streams_mu_);
      Sweep();
      if (finished_.contains(key)) return v1::Empty();  // Too late: the call is over.
      auto it = streams_.find(key);
      if (it == streams_.end()) {
        // A credit comes only after the open: the call is over. A message may come first:
        // its open is still on its way to a worker thread.
        if (!carries) return v1::Empty();
        Slot& slot = streams_[key];
        slot.stream = std::make_shared<HostStream>();
        slot.created = absl::Now();
        it = streams_.find(key);
      }
      stream = it->second.stream;
    }
    if (request.has_consumed()) stream->Credit(request.consumed());
    if (carries) {
      std::optional<std::string> message;
      if (request.has_message()) message = request.message();
      stream->Push(std::move(message), request.half_close());
    }
    return v1::Empty();
  }

  // Calls to this context itself go through the proxy too (a local grove call), so that
  // they end cleanly with the router, like every other.
  std::shared_ptr<grpc::Channel> ChannelTo(ContextId target) {
    std::shared_ptr<ProxyServer> proxy;
    {
      absl::MutexLock lock(&proxy_mu_);
      if (auto it = channels_.find(target); it != channels_.end()) return it->second;
      if (proxy_ == nullptr) proxy_ = std::make_shared<ProxyServer>(router_);
      proxy = proxy_;
    }
    std::shared_ptr<grpc::Channel> channel =
        ProxyServer::NewChannel(std::move(proxy), target, MessageLimit());
    absl::MutexLock lock(&proxy_mu_);
    return channels_.emplace(target, std::move(channel)).first->second;
  }

 private:
  using Key = std::pair<uint64_t, uint64_t>;  // (caller, stream)
  struct Slot {
    std::shared_ptr<HostStream> stream;
    bool opened = false;
    absl::Time created;  // Of a slot made by an early grove.grpc_send.
  };

  int MessageLimit() const { return ProxyServer::MessageLimit(*router_); }

  absl::StatusOr<grpc::GenericStub*> HostStub() {
    absl::MutexLock lock(&host_mu_);
    if (absl::Status s = BuildHost(); !s.ok()) return s;
    return host_stub_.get();
  }

  absl::Status BuildHost() ABSL_EXCLUSIVE_LOCKS_REQUIRED(host_mu_) {
    if (host_built_) return host_status_;
    host_built_ = true;
    // Process-wide: servers built from now on get the health service unless they opt out
    // (the proxies do). The agent's own server is built before any mesh use.
    grpc::EnableDefaultHealthCheckService(true);
    HoldCallbackQueue();  // As in ProxyServer.
    grpc::ServerBuilder builder;
    if (program_ != nullptr) {
      for (grpc::Service* service : program_->services()) builder.RegisterService(service);
    }
    builder.SetOption(std::make_unique<ReflectionOption>());
    builder.SetMaxReceiveMessageSize(MessageLimit());
    builder.SetMaxSendMessageSize(-1);
    host_server_ = builder.BuildAndStart();
    if (host_server_ == nullptr) {
      host_status_ = absl::FailedPreconditionError(
          absl::StrCat("cannot start the gRPC services of context ", router_->name(),
                       " (a service registered twice, or an async service?)"));
      LOG(ERROR) << host_status_;
      return host_status_;
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(MessageLimit());
    host_channel_ = host_server_->InProcessChannel(args);
    host_stub_ = std::make_unique<grpc::GenericStub>(host_channel_);
    return host_status_;
  }

  // Forgets what waited too long: messages whose open never came, finished streams.
  void Sweep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(streams_mu_) {
    const absl::Time now = absl::Now();
    if (now - last_sweep_ < absl::Seconds(1)) return;
    last_sweep_ = now;
    absl::erase_if(finished_, [now](const auto& f) { return now - f.second > kStreamMemory; });
    absl::erase_if(streams_, [now](const auto& s) {
      return !s.second.opened && now - s.second.created > kStreamMemory;
    });
  }

  Router* const router_;
  const Functions* const program_;

  absl::Mutex host_mu_;
  bool host_built_ ABSL_GUARDED_BY(host_mu_) = false;
  absl::Status host_status_ ABSL_GUARDED_BY(host_mu_);
  std::unique_ptr<grpc::Server> host_server_ ABSL_GUARDED_BY(host_mu_);
  std::shared_ptr<grpc::Channel> host_channel_ ABSL_GUARDED_BY(host_mu_);
  // Set once with the server; used without the lock after that.
  std::unique_ptr<grpc::GenericStub> host_stub_;

  absl::Mutex streams_mu_;
  absl::flat_hash_map<Key, Slot> streams_ ABSL_GUARDED_BY(streams_mu_);
  absl::flat_hash_map<Key, absl::Time> finished_ ABSL_GUARDED_BY(streams_mu_);
  absl::Time last_sweep_ ABSL_GUARDED_BY(streams_mu_) = absl::InfinitePast();

  absl::Mutex proxy_mu_;
  std::shared_ptr<ProxyServer> proxy_ ABSL_GUARDED_BY(proxy_mu_);
  absl::flat_hash_map<ContextId, std::shared_ptr<grpc::Channel>> channels_
      ABSL_GUARDED_BY(proxy_mu_);
};

ProxyCall::ProxyCall(ProxyServer* server, grpc::GenericCallbackServerContext* context)
    : server_(server), state_(std::make_shared<ProxyState>(this, context, &read_)) {
  absl::StatusOr<CallPicker::Picked> picked = server_->Pick(*context);
  if (!picked.ok()) {
    state_->Fail(ToGrpcStatus(picked.status()));
    return;
  }
  {
    absl::MutexLock lock(&target_mu_);
    target_ = picked->target;
  }
  picked_ = server_->has_picker();
  deadline_ = DeadlineFrom(context->deadline());
  open_.set_stream(server_->NextStream());
  open_.set_method(context->method());
  CopyMetadata(context->client_metadata(), open_.mutable_metadata());
  const google::protobuf::MethodDescriptor* method = FindMethod(context->method());
  single_request_ = method != nullptr && !method->client_streaming();
  if (picked_) {
    open_.set_ack(true);
    // Only a call whose one request went with its open can be opened again elsewhere.
    if (single_request_ && picked->retriable) {
      state_->SetRetry([this](const absl::Status& why) { return Retry(why); });
    }
  }
  // A streaming client may wait for the server before it writes: open at once.
  if (!single_request_) Open(std::nullopt, /*half_close=*/false);
  StartRead(&read_);
}

void ProxyCall::Open(std::optional<std::string> first_message, bool half_close) {
  if (first_message) open_.set_message(std::move(*first_message));
  open_.set_half_close(half_close);
  CallOptions options;
  options.deadline = deadline_;
  options.cancel = &state_->cancel();
  std::shared_ptr<ProxyState> state = state_;
  options.on_output = [state](int stream, const std::string& data) {
    state->OnOutput(stream, data);
  };
  bool started = server_->StartCall(
      target(), kOpen, v1::GrpcOpenRequest::descriptor()->full_name(), open_.SerializeAsString(),
      options, [state](absl::StatusOr<std::string> result) { state->OnResult(std::move(result)); });
  if (!started) {
    state_->Fail(grpc::Status(
        grpc::StatusCode::UNAVAILABLE,
        server_->has_picker()
            ? absl::StrCat("the forwarder of context ", server_->name(), " is shutting down")
            : absl::StrCat("context ", server_->name(),
                           " is gone: its grove::ChannelTo channels carry no more calls")));
  }
}

void ProxyCall::Send(std::optional<std::string> message, bool half_close) {
  v1::GrpcSendRequest send;
  send.set_stream(open_.stream());
  if (message) send.set_message(std::move(*message));
  send.set_half_close(half_close);
  CallOptions options;
  options.deadline = deadline_;
  // The outcome is the open's: a send fails only when the open does.
  server_->StartCall(target(), kSend, v1::GrpcSendRequest::descriptor()->full_name(),
                     send.SerializeAsString(), options, [](absl::StatusOr<std::string>) {});
}

void ProxyCall::SendCredit(const v1::GrpcCredit& credit) {
  v1::GrpcSendRequest send;
  send.set_stream(open_.stream());
  *send.mutable_consumed() = credit;
  CallOptions options;
  options.deadline = deadline_;
  server_->StartCall(target(), kSend, v1::GrpcSendRequest::descriptor()->full_name(),
                     send.SerializeAsString(), options, [](absl::StatusOr<std::string>) {});
}

bool ProxyCall::Retry(const absl::Status& why) {
  if (retried_) return false;  // Once.
  retried_ = true;
  const ContextId lost = target();
  server_->picker()->Done(lost, ToGrpcStatus(why));
  std::optional<ContextId> next = server_->picker()->Retry(open_.method(), lost, why);
  if (!next.has_value()) {
    // The call fails with `why`; Done was said for `lost` already.
    picked_ = false;
    return false;
  }
  {
    absl::MutexLock lock(&target_mu_);
    target_ = *next;
  }
  // The open carries the request and the half-close; this object may be gone once it starts.
  open_.set_stream(server_->NextStream());
  Open(std::nullopt, /*half_close=*/true);
  return true;
}

void ProxyCall::OnDone() {
  state_->DropRetry();
  order_.Settle();
  state_->Settle();
  if (picked_) server_->picker()->Done(target(), state_->final_status());
  delete this;
}

void ProxyCall::OnReadDone(bool ok) {
  ReactionOrder::Reaction reaction(&order_);
  if (single_request_) {
    if (!ok && state_->cancel().cancelled()) {
      state_->Fail(grpc::Status(grpc::StatusCode::CANCELLED, "the call was cancelled"));
      return;
    }
    // Without a request (the client half-closed at once) the open half-closes alone.
    Open(ok ? std::optional<std::string>(FromByteBuffer(read_)) : std::nullopt,
         /*half_close=*/true);
    return;
  }
  if (state_->finish_queued()) return;
  if (ok) {
    std::string message = FromByteBuffer(read_);
    read_.Clear();
    const int64_t bytes = static_cast<int64_t>(message.size());
    Send(std::move(message), false);
    if (state_->RequestSent(bytes)) StartRead(&read_);
    return;
  }
  if (!state_->cancel().cancelled()) Send(std::nullopt, true);
}

// The key of the mesh's attachment to each router (Router::SetAttachment).
constexpr char kMeshKey = 0;

std::shared_ptr<Mesh> MeshOf(const Router& router) {
  std::shared_ptr<Mesh> mesh = std::static_pointer_cast<Mesh>(router.attachment(&kMeshKey));
  CHECK(mesh != nullptr) << "the mesh is not attached to the router of " << router.name()
                         << " (Router::Options::components lacks MeshComponent())";
  return mesh;
}

}  // namespace mesh_internal

using mesh_internal::kOpen;
using mesh_internal::kSend;
using mesh_internal::Mesh;
using mesh_internal::MeshOf;
using mesh_internal::kMeshKey;

std::shared_ptr<grpc::Channel> ChannelTo(const Context& context) {
  return MeshOf(context.router())->ChannelTo(context.id());
}

Component MeshComponent() {
  return [](Router& router, Functions& builtins) {
    auto mesh = std::make_shared<Mesh>(&router, router.program_functions());
    builtins.Add(Functions::MakeFunction<v1::GrpcOpenRequest, v1::GrpcStatus>(
        kOpen,
        [mesh](const v1::GrpcOpenRequest& request, CallContext& call) {
          return mesh->Open(request, call);
        },
        {}));
    builtins.Add(Functions::MakeFunction<v1::GrpcSendRequest, v1::Empty>(
        kSend,
        [mesh](const v1::GrpcSendRequest& request, CallContext& call) {
          return mesh->Send(request, call);
        },
        {CallableBy::kAncestors, /*run_inline=*/true}));
    router.SetAttachment(&kMeshKey, std::move(mesh));
  };
}

}  // namespace grove

