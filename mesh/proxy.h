// The caller's side of the mesh: the in-process server behind ChannelTo channels, and each
// call it forwards as grove calls.
#ifndef GROVE_MESH_PROXY_H_
#define GROVE_MESH_PROXY_H_


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
#include "mesh/forwarder.h"
#include "mesh/metadata.h"

namespace grove::mesh_internal {

class ProxyServer;

// ---------------------------------------------------------------------------------------
// The caller's side.

// What a forwarded call shares with the router's callbacks (output and result of its
// grove.grpc_open), which may run after the reactor is gone: the queue of what goes back to
// the client, drained by one thread at a time (whoever sets `busy`), which alone touches the
// reactor and its server context, and never after Finish.
// Thread-safe.
class ProxyState {
 public:
  // `read_buffer` is the reactor's (for reads this resumes).
  ProxyState(grpc::ServerGenericBidiReactor* reactor, grpc::GenericCallbackServerContext* context,
             grpc::ByteBuffer* read_buffer)
      : reactor_(reactor), context_(context), read_buffer_(read_buffer) {}

  // Cancels the grove call; CallOptions::cancel of the open.
  CancelSource& cancel() { return cancel_; }

  // Output of the open: headers, a response message, or the requests delivered.
  void OnOutput(int stream, const std::string& data) {
    Item item;
    if (stream == kGrpcCreditStream) {
      v1::GrpcCredit credit;
      if (credit.ParseFromString(data)) OnCredit(credit);
      return;
    }
    if (stream == kGrpcAcceptedStream) {
      absl::MutexLock lock(&mu_);
      accepted_ = true;
      return;
    }
    if (stream == kGrpcHeadersStream) {
      v1::GrpcMetadata headers;
      if (!headers.ParseFromString(data)) return;
      item.kind = Item::kHeaders;
      item.initial_metadata = std::move(*headers.mutable_entries());
    } else if (stream == kGrpcMessageStream) {
      item.kind = Item::kMessage;
      item.message = data;
    } else {
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (finish_queued_) return;
      queue_.push_back(std::move(item));
    }
    Pump();
  }

  // The result of the open: the call's status, or the grove call's failure. A failure before
  // the target accepted the call goes to the retry hook first, which may open it elsewhere.
  void OnResult(absl::StatusOr<std::string> result) {
    if (!result.ok() && TryRetry(result.status())) return;
    Item item;
    item.kind = Item::kFinish;
    if (!result.ok()) {
      item.status = ToGrpcStatus(result.status());
    } else if (v1::GrpcStatus status; !status.ParseFromString(*result)) {
      item.status = grpc::Status(grpc::StatusCode::INTERNAL,
                                 "grove.grpc_open returned a result that does not decode");
    } else {
      item.status = grpc::Status(static_cast<grpc::StatusCode>(StatusCodeFromWire(status.code())), status.message(), status.error_details());
      if (status.has_initial_metadata()) {
        item.initial_metadata = std::move(*status.mutable_initial_metadata());
      }
      item.trailers = std::move(*status.mutable_trailers());
      if (status.has_response()) item.response = std::move(*status.mutable_response());
    }
    QueueFinish(std::move(item));
  }

  void Fail(grpc::Status status) {
    Item item;
    item.kind = Item::kFinish;
    item.status = std::move(status);
    QueueFinish(std::move(item));
  }

  bool finish_queued() const {
    absl::MutexLock lock(&mu_);
    return finish_queued_;
  }

  // How the call ended for the client (once the finish is queued).
  grpc::Status final_status() const {
    absl::MutexLock lock(&mu_);
    return final_status_;
  }

  // A hook that gets a failed open which the target never accepted; true when it opened the
  // call elsewhere (it must not touch its owner after starting that open). Set before the
  // first open; DropRetry before the owner goes.
  void SetRetry(std::function<bool(const absl::Status&)> retry) {
    absl::MutexLock lock(&mu_);
    retry_ = std::move(retry);
  }
  // No retry hook runs after this returns (but one on this thread, which called into the
  // reactor that is going).
  void DropRetry() {
    absl::MutexLock lock(&mu_);
    retry_ = nullptr;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return retrying_ == std::thread::id() || retrying_ == std::this_thread::get_id();
    };
    mu_.Await(absl::Condition(&idle));
  }

  // Called by the reactor's OnDone before it deletes the reactor: waits until a Pump on
  // another thread has returned from its call into the reactor (the Finish that led to
  // OnDone, which gRPC may complete before that call has returned). gRPC orders the two
  // inside its core, where ThreadSanitizer cannot see it; this makes the order grove's own.
  void Settle() const {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(this, &ProxyState::OutOfTheReactor));
  }

  // A write-side operation completed (OnWriteDone, OnSendInitialMetadataDone). Returns the
  // credit to send to the target when it is time (responses delivered to the client).
  std::optional<v1::GrpcCredit> OperationDone() {
    std::optional<v1::GrpcCredit> credit;
    {
      absl::MutexLock lock(&mu_);
      busy_ = false;
      if (write_bytes_ >= 0) credit = responses_.Delivered(write_bytes_);
      write_bytes_ = -1;
    }
    Pump();
    return credit;
  }

  // A request message was sent to the target. False when its window is full: the reactor
  // must not read on; a credit resumes the reads.
  bool RequestSent(int64_t bytes) {
    absl::MutexLock lock(&mu_);
    requests_.Sent(bytes);
    if (!requests_.Full()) return true;
    read_paused_ = true;
    return false;
  }

 private:
  struct Item {
    enum Kind { kHeaders, kMessage, kFinish } kind = kMessage;
    std::string message;
    MetadataEntries initial_metadata;
    MetadataEntries trailers;
    grpc::Status status;
    std::optional<std::string> response;  // kFinish: the one response message.
  };

  // Resumes the reads of requests when the target has caught up. The read is started here,
  // outside the queue (a response write waiting for the client must not hold it up), and
  // Finish waits for it to be started.
  void OnCredit(const v1::GrpcCredit& credit) {
    {
      absl::MutexLock lock(&mu_);
      requests_.Acknowledged(credit);
      if (!read_paused_ || requests_.Full() || finish_issued_) return;
      read_paused_ = false;
      ++resuming_;
    }
    reactor_->StartRead(read_buffer_);
    {
      absl::MutexLock lock(&mu_);
      --resuming_;
    }
    Pump();
  }

  // Runs the retry hook for an open that failed UNAVAILABLE (its target gone or unreachable)
  // before the target accepted it, unless the client cancelled it.
  bool TryRetry(const absl::Status& why) {
    if (why.code() != absl::StatusCode::kUnavailable || cancel_.cancelled()) return false;
    std::function<bool(const absl::Status&)> retry;
    {
      absl::MutexLock lock(&mu_);
      if (finish_queued_ || accepted_ || retry_ == nullptr ||
          retrying_ != std::thread::id()) {
        return false;
      }
      retry = retry_;
      retrying_ = std::this_thread::get_id();
    }
    bool again = retry(why);
    absl::MutexLock lock(&mu_);
    retrying_ = std::thread::id();
    return again;
  }

  void QueueFinish(Item item) {
    {
      absl::MutexLock lock(&mu_);
      if (finish_queued_) return;
      finish_queued_ = true;
      final_status_ = item.status;
      queue_.push_back(std::move(item));
    }
    Pump();
  }

  void AddInitialMetadata(const MetadataEntries& entries) {
    for (const v1::GrpcMetadataEntry& e : entries) {
      if (Forwardable(e.key(), e.value())) context_->AddInitialMetadata(e.key(), e.value());
    }
  }

  void Pump() {
    for (;;) {
      Item item;
      {
        absl::MutexLock lock(&mu_);
        if (busy_ || queue_.empty()) return;
        if (queue_.front().kind == Item::kFinish) {
          if (resuming_ > 0) return;  // OnCredit pumps once its read has started.
          finish_issued_ = true;
        }
        item = std::move(queue_.front());
        queue_.pop_front();
        busy_ = true;  // After Finish, for good.
        in_reactor_ = std::this_thread::get_id();
      }
      switch (item.kind) {
        case Item::kHeaders:
          if (headers_sent_) break;  // Too late; cannot happen with a well-behaved target.
          AddInitialMetadata(item.initial_metadata);
          headers_sent_ = true;
          reactor_->StartSendInitialMetadata();
          return LeaveTheReactor();
        case Item::kMessage:
          headers_sent_ = true;  // The first write carries them.
          {
            absl::MutexLock lock(&mu_);
            write_bytes_ = static_cast<int64_t>(item.message.size());
          }
          write_ = ToByteBuffer(std::move(item.message));
          reactor_->StartWrite(&write_);
          return LeaveTheReactor();
        case Item::kFinish:
          if (!headers_sent_) AddInitialMetadata(item.initial_metadata);
          for (const v1::GrpcMetadataEntry& e : item.trailers) {
            if (Forwardable(e.key(), e.value())) context_->AddTrailingMetadata(e.key(), e.value());
          }
          if (item.response) {
            write_ = ToByteBuffer(std::move(*item.response));
            reactor_->StartWriteAndFinish(&write_, grpc::WriteOptions(), std::move(item.status));
          } else {
            reactor_->Finish(std::move(item.status));  // OnDone may follow at once.
          }
          return LeaveTheReactor();
      }
      absl::MutexLock lock(&mu_);
      busy_ = false;
      in_reactor_ = std::thread::id();
    }
  }

  // Pump has returned from its call into the reactor (this object outlives the reactor: the
  // caller of Pump holds it).
  void LeaveTheReactor() {
    absl::MutexLock lock(&mu_);
    in_reactor_ = std::thread::id();
  }
  // No Pump is in a call into the reactor, or only this thread's (OnDone run from within it).
  bool OutOfTheReactor() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return in_reactor_ == std::thread::id() || in_reactor_ == std::this_thread::get_id();
  }

  // Valid until Finish; touched only by the thread that set busy_.
  grpc::ServerGenericBidiReactor* const reactor_;
  grpc::GenericCallbackServerContext* const context_;
  bool headers_sent_ = false;
  grpc::ByteBuffer write_;
  grpc::ByteBuffer* const read_buffer_;

  CancelSource cancel_;
  mutable absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_queued_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_issued_ ABSL_GUARDED_BY(mu_) = false;
  // The thread of a Pump that is in a call into the reactor (none: the default id).
  std::thread::id in_reactor_ ABSL_GUARDED_BY(mu_);
  // Bytes of the response being written, -1 when the operation in flight is not one.
  int64_t write_bytes_ ABSL_GUARDED_BY(mu_) = -1;
  // Responses written to the client.
  DeliveryCount responses_ ABSL_GUARDED_BY(mu_);
  // Requests sent to the target; reads stop while the window is full.
  SendWindow requests_ ABSL_GUARDED_BY(mu_);
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  // OnCredit calls starting a read now.
  int resuming_ ABSL_GUARDED_BY(mu_) = 0;
  // The target said it is starting the call (GrpcOpenRequest::ack).
  bool accepted_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
  std::function<bool(const absl::Status&)> retry_ ABSL_GUARDED_BY(mu_);
  // The thread running the retry hook (none: the default id).
  std::thread::id retrying_ ABSL_GUARDED_BY(mu_);
};

// One call made on a ChannelTo channel, forwarded to its target context: grove.grpc_open,
// then a grove.grpc_send per further request message and for the half-close. For a method
// known (from this program's descriptors) to take one request, the proxy waits for it and
// sends it with the open: one grove call in all.
// Owned by gRPC: deletes itself in OnDone. Reactions may run concurrently; the read side
// (OnReadDone) is serial.
class ProxyCall final : public grpc::ServerGenericBidiReactor {
 public:
  ProxyCall(ProxyServer* server, grpc::GenericCallbackServerContext* context);

  // grpc::ServerGenericBidiReactor:
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool /*ok*/) override {
    ReactionOrder::Reaction reaction(&order_);
    if (std::optional<v1::GrpcCredit> credit = state_->OperationDone()) SendCredit(*credit);
  }
  void OnSendInitialMetadataDone(bool /*ok*/) override {
    ReactionOrder::Reaction reaction(&order_);
    state_->OperationDone();
  }
  void OnCancel() override {
    ReactionOrder::Reaction reaction(&order_);
    state_->cancel().Cancel();
  }
  void OnDone() override;

 private:
  // Sends grove.grpc_open, with the first request message and the half-close when given.
  void Open(std::optional<std::string> first_message, bool half_close);
  void Send(std::optional<std::string> message, bool half_close);
  void SendCredit(const v1::GrpcCredit& credit);

  // The retry hook (ProxyState::SetRetry) of a call whose target a CallPicker chose.
  bool Retry(const absl::Status& why);
  ContextId target() const {
    absl::MutexLock lock(&target_mu_);
    return target_;
  }

  ProxyServer* const server_;
  ReactionOrder order_;
  // Read side only (and OnCredit, while the read side is stopped).
  grpc::ByteBuffer read_;
  const std::shared_ptr<ProxyState> state_;
  mutable absl::Mutex target_mu_;
  // Changed only by a retry, which only a call with a single request gets.
  ContextId target_ ABSL_GUARDED_BY(target_mu_);
  // A CallPicker chose the target (and hears when the call is over).
  bool picked_ = false;
  // Opened again elsewhere once already (Retry).
  bool retried_ = false;
  absl::Time deadline_ = absl::InfiniteFuture();
  bool single_request_ = false;
  v1::GrpcOpenRequest open_;
};

// The generic handler of the proxy server: every call becomes a ProxyCall.
class ProxyService final : public grpc::CallbackGenericService {
 public:
  explicit ProxyService(ProxyServer* server) : server_(server) {}
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    return new ProxyCall(server_, context);
  }

 private:
  ProxyServer* const server_;
};

// The in-process server behind a context's ChannelTo channels, and their link to its router;
// or, made by a Forwarder (forwarder.h), a listening server whose calls go where its
// CallPicker says. Owned by shared_ptrs: the context's Mesh and every channel (an in-process
// channel must not outlive its server), so it may outlive the router: Detach (when the router
// goes) turns every later call into UNAVAILABLE. Thread-safe.
class ProxyServer {
 public:
  explicit ProxyServer(Router* router)
      : router_(router), name_(router->name()), picker_(nullptr), service_(this) {
    HoldCallbackQueue();  // The callback API's queue must never be torn down and rebuilt.
    NoServerPluginsScope no_plugins;
    grpc::ServerBuilder builder;
    builder.RegisterCallbackGenericService(&service_);
    // It forwards everything: no health service or plugin of its own.
    builder.SetOption(std::make_unique<grpc::HealthCheckServiceServerBuilderOption>(nullptr));
    builder.SetOption(WithoutServerPlugins());
    builder.SetMaxReceiveMessageSize(MessageLimit(*router));
    builder.SetMaxSendMessageSize(-1);
    server_ = builder.BuildAndStart();
    CHECK(server_ != nullptr) << "cannot start the in-process gRPC proxy server";
  }
  ProxyServer(const ProxyServer&) = delete;
  ProxyServer& operator=(const ProxyServer&) = delete;

  // Listening at `options.listen` (see Forwarder::Start); check server() for success.
  ProxyServer(Router* router, const ForwarderOptions& options, int* port)
      : router_(router), name_(router->name()), picker_(options.picker), service_(this) {
    HoldCallbackQueue();
    // Process-wide: the standard health service on every server built from now on that does
    // not opt out (the in-process ones do); this one serves it for the forwarded services.
    grpc::EnableDefaultHealthCheckService(true);
    NoServerPluginsScope no_plugins;
    grpc::ServerBuilder builder;
    builder.RegisterCallbackGenericService(&service_);
    builder.SetOption(WithoutServerPlugins());
    const int limit = options.max_message_bytes > 0
                          ? static_cast<int>(std::min<int64_t>(options.max_message_bytes, INT32_MAX))
                          : MessageLimit(*router);
    builder.SetMaxReceiveMessageSize(limit);
    builder.SetMaxSendMessageSize(limit);
    builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                               std::max(1, options.max_streams_per_connection));
    // gRPC sets SO_REUSEPORT by default: a second server on a taken port would share it.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddListeningPort(options.listen, options.credentials, port);
    server_ = builder.BuildAndStart();
  }

  ~ProxyServer() {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
  }

  grpc::Server* server() const { return server_.get(); }
  // Stops taking calls; those in flight are cancelled at `deadline`.
  void Shutdown(absl::Time deadline) {
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(deadline));
  }

  // The target of a call: the picker's choice, or the one its ChannelTo channel names (never
  // retried elsewhere).
  absl::StatusOr<CallPicker::Picked> Pick(const grpc::GenericCallbackServerContext& context) {
    if (picker_ != nullptr) return picker_->Pick(context.method(), context.client_metadata());
    absl::StatusOr<ContextId> target = TargetOf(context.client_metadata());
    if (!target.ok()) return target.status();
    return CallPicker::Picked{*target, false};
  }
  bool has_picker() const { return picker_ != nullptr; }
  CallPicker* picker() const { return picker_; }

  // A channel whose calls go to `target`. It holds `self` (this server).
  static std::shared_ptr<grpc::Channel> NewChannel(std::shared_ptr<ProxyServer> self,
                                                   ContextId target, int message_limit) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(message_limit);
    std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> names;
    names.push_back(std::make_unique<TargetInterceptorFactory>(target));
    struct Holder {
      std::shared_ptr<ProxyServer> server;
      std::shared_ptr<grpc::Channel> channel;  // Destroyed first.
    };
    auto holder = std::make_shared<Holder>();
    holder->channel =
        self->server_->experimental().InProcessChannelWithInterceptors(args, std::move(names));
    holder->server = std::move(self);
    grpc::Channel* channel = holder->channel.get();
    return std::shared_ptr<grpc::Channel>(std::move(holder), channel);
  }

  // Router::StartCall, unless the router is gone: then false, and `done` is not called.
  bool StartCall(ContextId dst, const std::string& function, const std::string& argument_type,
                 std::string argument, const CallOptions& options, Router::Done done) {
    Router* router;
    {
      absl::MutexLock lock(&mu_);
      if (router_ == nullptr) return false;
      router = router_;
      ++active_;
    }
    router->StartCall(dst, function, argument_type, std::move(argument), options, std::move(done));
    absl::MutexLock lock(&mu_);
    --active_;
    return true;
  }

  // The router is going: no call starts after this returns.
  void Detach() {
    absl::MutexLock lock(&mu_);
    router_ = nullptr;
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return active_ == 0; };
    mu_.Await(absl::Condition(&idle));
  }

  // A target knows a stream by (caller's context id, stream): every proxy server of a
  // context (its ChannelTo server, its forwarders) takes stream numbers from one counter of
  // the process, so that two never open the same stream in one target.
  static uint64_t NextStream() {
    static std::atomic<uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }
  const std::string& name() const { return name_; }

  static int MessageLimit(const Router& router) {
    return static_cast<int>(std::min<int64_t>(router.max_message_bytes(), INT32_MAX));
  }

 private:
  absl::Mutex mu_;
  Router* router_ ABSL_GUARDED_BY(mu_);
  // StartCalls in progress.
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  const std::string name_;
  CallPicker* const picker_;  // Null for ChannelTo's in-process server.
  ProxyService service_;  // Outlives server_.
  std::unique_ptr<grpc::Server> server_;
};


}  // namespace grove::mesh_internal

#endif  // GROVE_MESH_PROXY_H_
