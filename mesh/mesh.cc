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

namespace grove {
namespace {

constexpr char kOpen[] = "grove.grpc_open";
constexpr char kSend[] = "grove.grpc_send";

// A ChannelTo channel names its target in this metadata entry of every call (an in-process
// channel has a fixed authority).
constexpr char kTargetKey[] = "grove-target";

// How long a stream's messages may wait for its grove.grpc_open, and how long a finished
// stream is remembered so that messages still on their way to it are dropped.
constexpr absl::Duration kStreamMemory = absl::Seconds(30);

using MetadataEntries = google::protobuf::RepeatedPtrField<v1::GrpcMetadataEntry>;
using MetadataMap = std::multimap<grpc::string_ref, grpc::string_ref>;

// ---- Bytes and metadata ----

// A byte buffer holding a copy of `bytes`, in memory of gRPC's own (a slice that would own
// the string instead is freed by whichever thread drops gRPC's last reference to it, which
// gRPC's uninstrumented refcounting hides from ThreadSanitizer).
grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// Makes what one reaction of a reactor did visible to the next ones and to OnDone, which gRPC
// may run on another thread after a hand-off that ThreadSanitizer cannot see (gRPC core's
// uninstrumented closures). Each reaction holds a Reaction for its whole run; OnDone starts
// with Settle. Thread-safe.
class ReactionOrder {
 public:
  class Reaction {
   public:
    explicit Reaction(ReactionOrder* order) : order_(order) {
      order_->count_.load(std::memory_order_acquire);
    }
    ~Reaction() { order_->count_.fetch_add(1, std::memory_order_release); }
    Reaction(const Reaction&) = delete;
    Reaction& operator=(const Reaction&) = delete;

   private:
    ReactionOrder* const order_;
  };
  void Settle() { count_.load(std::memory_order_acquire); }

 private:
  std::atomic<uint64_t> count_{0};
};

std::string FromByteBuffer(const grpc::ByteBuffer& buffer) {
  std::string out;
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// Whether a metadata entry (possibly from another process) may be handed to gRPC: a legal
// key that gRPC does not manage itself, and for a text key a printable value. gRPC aborts on
// some malformed metadata, so nothing else gets through.
bool Forwardable(absl::string_view key, absl::string_view value) {
  if (key.empty() || key[0] == ':' || absl::StartsWith(key, "grpc-") || key == "user-agent" ||
      key == "te" || key == "content-type" || key == "host" || key == kTargetKey) {
    return false;
  }
  for (char c : key) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  if (absl::EndsWith(key, "-bin")) return true;
  for (char c : value) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

void CopyMetadata(const MetadataMap& from, MetadataEntries* to) {
  for (const auto& [key, value] : from) {
    absl::string_view k(key.data(), key.size());
    absl::string_view v(value.data(), value.size());
    if (!Forwardable(k, v)) continue;
    v1::GrpcMetadataEntry* entry = to->Add();
    entry->set_key(std::string(k));
    entry->set_value(std::string(v));
  }
}

grpc::StatusCode GrpcCode(int code) {
  if (code < 0 || code > static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)) {
    return grpc::StatusCode::UNKNOWN;
  }
  return static_cast<grpc::StatusCode>(code);
}

// "/package.Service/Method": printable, no spaces, one leading slash.
bool ValidMethod(const std::string& method) {
  if (method.size() < 2 || method[0] != '/') return false;
  for (char c : method) {
    if (c <= 0x20 || c > 0x7e) return false;
  }
  return true;
}

// The method's descriptor in this program, when its service is compiled in (the target runs
// this same program, so it usually is).
const google::protobuf::MethodDescriptor* FindMethod(const std::string& method) {
  if (!ValidMethod(method)) return nullptr;
  std::string name = method.substr(1);
  size_t slash = name.rfind('/');
  if (slash == std::string::npos) return nullptr;
  name[slash] = '.';
  return google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(name);
}

absl::StatusOr<ContextId> TargetOf(const MetadataMap& metadata) {
  auto it = metadata.find(kTargetKey);
  uint64_t id = 0;
  if (it == metadata.end() ||
      !absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &id)) {
    return absl::InvalidArgumentError(
        "the call names no grove context (make it on a grove::ChannelTo channel)");
  }
  return ContextId(id);
}

// Names the target context in every call of a ChannelTo channel.
class TargetInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit TargetInterceptor(std::string target) : target_(std::move(target)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      std::multimap<std::string, std::string>* metadata = methods->GetSendInitialMetadata();
      metadata->erase(kTargetKey);
      metadata->emplace(kTargetKey, target_);
    }
    methods->Proceed();
  }

 private:
  const std::string target_;
};

class TargetInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TargetInterceptorFactory(ContextId target) : target_(absl::StrCat(target.value())) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new TargetInterceptor(target_);
  }

 private:
  const std::string target_;
};

absl::Time DeadlineFrom(std::chrono::system_clock::time_point deadline) {
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

// Adds server reflection to a server, unless the process-wide plugin (which linking gRPC's
// reflection library registers) already did.
class ReflectionOption : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    for (const auto& plugin : *plugins) {
      if (plugin->name() == kReflectionPlugin) return;
    }
    auto reflection = std::make_unique<grpc::reflection::ProtoServerReflectionPlugin>();
    CHECK_EQ(reflection->name(), kReflectionPlugin);
    plugins->push_back(std::move(reflection));
  }

 private:
  static constexpr char kReflectionPlugin[] = "proto_server_reflection";
};

// Drops every plugin (server reflection, registered process-wide): a server with it serves
// only what it registers itself.
class NoPluginsOption : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

}  // namespace

std::unique_ptr<grpc::ServerBuilderOption> WithoutServerPlugins() {
  return std::make_unique<NoPluginsOption>();
}

// ---- Plugins registered process-wide, passed on to gRPC by the first ServerBuilder made
// outside a NoServerPluginsScope (see mesh.h).

namespace {

using PluginFactory = std::unique_ptr<grpc::ServerBuilderPlugin> (*)();
ABSL_CONST_INIT absl::Mutex plugins_mu(absl::kConstInit);
// Registered, not passed on yet (null: none).
std::vector<PluginFactory>* waiting_plugins ABSL_GUARDED_BY(plugins_mu) = nullptr;
bool plugins_passed_on ABSL_GUARDED_BY(plugins_mu) = false;
thread_local int no_plugins_scopes = 0;

}  // namespace

NoServerPluginsScope::NoServerPluginsScope() { ++no_plugins_scopes; }
NoServerPluginsScope::~NoServerPluginsScope() { --no_plugins_scopes; }

}  // namespace grove

// What the link's --wrap routes to (the real ones are __real_*): gRPC 1.51's
// grpc::ServerBuilder::InternalAddPluginFactory and its constructors (complete, base).
extern "C" {
void __real__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
    grove::PluginFactory factory);
void __real__ZN4grpc13ServerBuilderC1Ev(grpc::ServerBuilder* self);
void __real__ZN4grpc13ServerBuilderC2Ev(grpc::ServerBuilder* self);

void __wrap__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
    grove::PluginFactory factory) {
  absl::MutexLock lock(&grove::plugins_mu);
  if (grove::plugins_passed_on) {
    __real__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
        factory);
    return;
  }
  if (grove::waiting_plugins == nullptr) {
    grove::waiting_plugins = new std::vector<grove::PluginFactory>();
  }
  grove::waiting_plugins->push_back(factory);
}
}  // extern "C"

namespace grove {
namespace {

// Before a ServerBuilder is made outside a NoServerPluginsScope: the waiting plugins reach
// gRPC, once.
void PassOnPluginsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(plugins_mu) {
  if (plugins_passed_on) return;
  plugins_passed_on = true;
  if (waiting_plugins == nullptr) return;
  for (PluginFactory factory : *waiting_plugins) {
    __real__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
        factory);
  }
  delete waiting_plugins;
  waiting_plugins = nullptr;
}

// Makes a ServerBuilder with `construct` (a real constructor). The constructor creates every
// plugin on gRPC's list. In a scope, before the plugins are passed on, that list is empty (no
// plugin factory runs): it is made under plugins_mu, so that no pass-on changes the list
// meanwhile. Otherwise the plugins are passed on first, and the list changes no more (gRPC
// wants registrations before any ServerBuilder), so the constructor, which runs the plugins'
// factories, runs without the lock.
void MakeServerBuilder(grpc::ServerBuilder* self, void (*construct)(grpc::ServerBuilder*)) {
  {
    absl::MutexLock lock(&plugins_mu);
    if (no_plugins_scopes > 0 && !plugins_passed_on) {
      construct(self);
      return;
    }
    PassOnPluginsLocked();
  }
  construct(self);
}

}  // namespace
}  // namespace grove

extern "C" {
void __wrap__ZN4grpc13ServerBuilderC1Ev(grpc::ServerBuilder* self) {
  grove::MakeServerBuilder(self, &__real__ZN4grpc13ServerBuilderC1Ev);
}
void __wrap__ZN4grpc13ServerBuilderC2Ev(grpc::ServerBuilder* self) {
  grove::MakeServerBuilder(self, &__real__ZN4grpc13ServerBuilderC2Ev);
}
}  // extern "C"

namespace grove {

namespace {

// ---------------------------------------------------------------------------------------
// Flow control of one direction of a stream: the sender stops reading from its end once
// kWindowMessages messages or kWindowBytes bytes it sent are not acknowledged; the receiver
// acknowledges, cumulatively, every kCreditMessages messages or kCreditBytes bytes it
// delivered. The window exceeds the credit step, so a stopped sender is always credited.
constexpr int64_t kWindowMessages = 4096;
constexpr int64_t kWindowBytes = int64_t{8} << 20;
constexpr int64_t kCreditMessages = 1024;
constexpr int64_t kCreditBytes = int64_t{2} << 20;

// The sender's count. Thread-compatible: its owner's lock guards it.
class SendWindow {
 public:
  void Sent(int64_t bytes) {
    ++sent_messages_;
    sent_bytes_ += bytes;
  }
  void Acknowledged(const v1::GrpcCredit& credit) {
    acked_messages_ = std::max(acked_messages_, credit.messages());
    acked_bytes_ = std::max(acked_bytes_, credit.bytes());
  }
  bool Full() const {
    return sent_messages_ - acked_messages_ >= kWindowMessages ||
           sent_bytes_ - acked_bytes_ >= kWindowBytes;
  }

 private:
  int64_t sent_messages_ = 0;
  int64_t sent_bytes_ = 0;
  int64_t acked_messages_ = 0;
  int64_t acked_bytes_ = 0;
};

// The receiver's count. Thread-compatible: its owner's lock guards it.
class DeliveryCount {
 public:
  // Counts a delivered message; returns the credit to send when it is time.
  std::optional<v1::GrpcCredit> Delivered(int64_t bytes) {
    ++messages_;
    bytes_ += bytes;
    if (messages_ - credited_messages_ < kCreditMessages &&
        bytes_ - credited_bytes_ < kCreditBytes) {
      return std::nullopt;
    }
    credited_messages_ = messages_;
    credited_bytes_ = bytes_;
    v1::GrpcCredit credit;
    credit.set_messages(messages_);
    credit.set_bytes(bytes_);
    return credit;
  }

 private:
  int64_t messages_ = 0;
  int64_t bytes_ = 0;
  int64_t credited_messages_ = 0;
  int64_t credited_bytes_ = 0;
};

// ---------------------------------------------------------------------------------------
// The target's side.

// One gRPC call that another context opened here (grove.grpc_open), running on the host's
// in-process channel. Request messages come from the open and from grove.grpc_send calls,
// which may arrive before the open has started (they wait in the queue); the server's
// initial metadata and response messages go back as Output of the open call, and its
// status as the open's result.
//
// Ownership: shared_ptrs held by the host's stream table, the running grove.grpc_open, and
// the object itself from Start until OnDone. Thread-safe. Write-side operations (StartWrite,
// StartWritesDone, RemoveHold) are made by one thread at a time: whoever sets `busy_`.
class HostStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                         public std::enable_shared_from_this<HostStream> {
 public:
  HostStream() = default;
  HostStream(const HostStream&) = delete;
  HostStream& operator=(const HostStream&) = delete;

  // Queues a request message and/or the half-close. Never blocks.
  void Push(std::optional<std::string> message, bool half_close) {
    {
      absl::MutexLock lock(&mu_);
      if (closed_) return;  // After the half-close or the end of the call.
      if (message) queue_.push_back(Item{Item::kMessage, std::move(*message)});
      if (half_close) {
        queue_.push_back(Item{Item::kHalfClose, {}});
        queue_.push_back(Item{Item::kRelease, {}});
        closed_ = true;
        half_closed_ = true;
      }
    }
    Pump();
  }

  // Starts the call on `stub` (which outlives it). `call`, the open's context, must stay
  // valid until Wait returns.
  void Start(grpc::GenericStub* stub, const v1::GrpcOpenRequest& request, CallContext* call) {
    call_ = call;
    method_ = request.method();
    const google::protobuf::MethodDescriptor* method = FindMethod(method_);
    single_response_ = method != nullptr && !method->server_streaming();
    for (const v1::GrpcMetadataEntry& e : request.metadata()) {
      if (Forwardable(e.key(), e.value())) context_.AddMetadata(e.key(), e.value());
    }
    if (call->deadline() != absl::InfiniteFuture()) {
      context_.set_deadline(absl::ToChronoTime(call->deadline()));
    }
    keep_alive_ = shared_from_this();
    stub->PrepareBidiStreamingCall(&context_, method_, grpc::StubOptions(), this);
    // Writes are started from outside the reactions (grove.grpc_send): the hold keeps the
    // call from ending under them until the half-close or the end of the responses.
    AddHold();
    StartRead(&read_);
    StartCall();
    {
      absl::MutexLock lock(&mu_);
      started_ = true;
    }
    Pump();
  }

  // Cancels the call (the grove call was cancelled, or its caller lost). Any thread, any time
  // after Start.
  void Cancel() {
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;  // Reads never stop again.
    }
    context_.TryCancel();
    ResumeReads(/*force=*/true);
  }

  // The caller has delivered this many responses: reads resume if they had stopped.
  void Credit(const v1::GrpcCredit& credit) {
    {
      absl::MutexLock lock(&mu_);
      responses_.Acknowledged(credit);
    }
    ResumeReads(/*force=*/false);
  }

  // Blocks until the call is over; returns how it ended.
  v1::GrpcStatus Wait() {
    done_.WaitForNotification();
    return result_;
  }

  bool half_closed() const {
    absl::MutexLock lock(&mu_);
    return half_closed_;
  }

 private:
  struct Item {
    enum Kind { kMessage, kHalfClose, kRelease } kind;
    std::string data;
  };

  // Starts the next write-side operation unless one is in flight.
  void Pump() {
    Item item;
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      if (!started_ || busy_ || queue_.empty()) return;
      item = std::move(queue_.front());
      queue_.pop_front();
      if (item.kind == Item::kMessage && !queue_.empty() &&
          queue_.front().kind == Item::kHalfClose) {
        queue_.pop_front();  // StartWriteLast half-closes too.
        last = true;
      }
      busy_ = item.kind != Item::kRelease;
    }
    switch (item.kind) {
      case Item::kMessage:
        write_bytes_ = static_cast<int64_t>(item.data.size());
        write_ = ToByteBuffer(std::move(item.data));
        if (last) {
          StartWriteLast(&write_, grpc::WriteOptions());
        } else {
          StartWrite(&write_);
        }
        return;
      case Item::kHalfClose:
        StartWritesDone();
        return;
      case Item::kRelease:
        RemoveHold();  // May end the call here and now: nothing of this object after it.
        return;
    }
  }

  // A write-side operation completed; `message` when it wrote a request message.
  void WriteSideDone(bool message) {
    std::optional<v1::GrpcCredit> credit;
    {
      absl::MutexLock lock(&mu_);
      busy_ = false;
      if (message) credit = requests_.Delivered(write_bytes_);
    }
    if (credit) call_->Output(kGrpcCreditStream, credit->SerializeAsString());
    Pump();
  }

  // Sends a response message back (from a reaction), then reads the next one, unless the
  // caller has too many not yet delivered: then reads stop (holding the call open, so that
  // what the server sent is not lost) until Credit or Cancel.
  void SendResponse(std::string message) {
    const int64_t bytes = static_cast<int64_t>(message.size());
    call_->Output(kGrpcMessageStream, std::move(message));
    {
      absl::MutexLock lock(&mu_);
      responses_.Sent(bytes);
      if (responses_.Full() && !cancelled_) {
        read_paused_ = true;
        AddHold();  // An atomic count only: no call-out under the lock.
        return;
      }
    }
    StartRead(&read_);
  }

  void ResumeReads(bool force) {
    {
      absl::MutexLock lock(&mu_);
      if (!read_paused_ || (!force && responses_.Full())) return;
      read_paused_ = false;
    }
    StartRead(&read_);
    RemoveHold();  // May end the call here and now: nothing of this object after it.
  }

  // grpc::ClientBidiReactor:
  //
  // The first read is started with the call (a read started after the server has finished
  // would miss its message), so the first message may complete before the headers; it then
  // waits for them, and the reads resume after the headers went out.
  void OnReadInitialMetadataDone(bool ok) override {
    ReactionOrder::Reaction reaction(&order_);
    if (ok && !single_response_) {
      v1::GrpcMetadata headers;
      CopyMetadata(context_.GetServerInitialMetadata(), headers.mutable_entries());
      call_->Output(kGrpcHeadersStream, headers.SerializeAsString());
      headers_sent_ = true;
    }
    std::optional<std::string> early;
    {
      absl::MutexLock lock(&mu_);
      headers_done_ = true;
      early.swap(early_message_);
    }
    if (early) {
      if (single_response_ && !result_.has_response()) {
        result_.set_response(std::move(*early));
        StartRead(&read_);
      } else {
        SendResponse(std::move(*early));
      }
    }
  }

  void OnReadDone(bool ok) override {
    ReactionOrder::Reaction reaction(&order_);
    if (ok) {
      std::string message = FromByteBuffer(read_);
      read_.Clear();
      if (single_response_ && !result_.has_response()) {
        // It goes with the result (the server has no more to send).
        result_.set_response(std::move(message));
        StartRead(&read_);
        return;
      }
      {
        absl::MutexLock lock(&mu_);
        if (!headers_done_) {
          early_message_ = std::move(message);
          return;
        }
      }
      SendResponse(std::move(message));
      return;
    }
    // The server has finished: nothing more needs to go out; let the call end.
    {
      absl::MutexLock lock(&mu_);
      if (!closed_) {
        closed_ = true;
        queue_.clear();
        queue_.push_back(Item{Item::kRelease, {}});
      }
    }
    Pump();
  }

  void OnWriteDone(bool /*ok*/) override {
    ReactionOrder::Reaction reaction(&order_);
    WriteSideDone(/*message=*/true);
  }
  void OnWritesDoneDone(bool /*ok*/) override {
    ReactionOrder::Reaction reaction(&order_);
    WriteSideDone(/*message=*/false);
  }

  void OnDone(const grpc::Status& status) override {
    order_.Settle();
    result_.set_code(static_cast<int>(status.error_code()));
    result_.set_message(status.error_message());
    result_.set_error_details(status.error_details());
    if (!headers_sent_) {
      result_.set_has_initial_metadata(true);
      CopyMetadata(context_.GetServerInitialMetadata(), result_.mutable_initial_metadata());
    }
    CopyMetadata(context_.GetServerTrailingMetadata(), result_.mutable_trailers());
    // The last reference may be this one: the object goes when OnDone returns.
    std::shared_ptr<HostStream> self = std::move(keep_alive_);
    done_.Notify();
  }

  grpc::ClientContext context_;
  ReactionOrder order_;
  std::string method_;
  // Set in Start; used by the reactions, which all run before Wait returns.
  CallContext* call_ = nullptr;
  std::shared_ptr<HostStream> keep_alive_;
  // Set in Start: the method returns one message, which goes with the result.
  bool single_response_ = false;
  // Reactions only (one read at a time).
  grpc::ByteBuffer read_;
  bool headers_sent_ = false;  // headers_sent_ is read in OnDone, after every reaction.
  // The thread that set busy_ only (and the completion of its operation).
  grpc::ByteBuffer write_;
  int64_t write_bytes_ = 0;
  // Written by the reactions (the response) and OnDone, read after done_.
  v1::GrpcStatus result_;
  absl::Notification done_;

  mutable absl::Mutex mu_;
  std::deque<Item> queue_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool busy_ ABSL_GUARDED_BY(mu_) = false;
  // No more writes will be queued (half-close queued, or the call is over).
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool half_closed_ ABSL_GUARDED_BY(mu_) = false;
  // OnReadInitialMetadataDone has run; until then a message read waits here.
  bool headers_done_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<std::string> early_message_ ABSL_GUARDED_BY(mu_);
  // Responses sent to the caller; reads stop while its window is full.
  SendWindow responses_ ABSL_GUARDED_BY(mu_);
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // Requests written to the service.
  DeliveryCount requests_ ABSL_GUARDED_BY(mu_);
};

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

  // The result of the open: the call's status, or the grove call's failure.
  void OnResult(absl::StatusOr<std::string> result) {
    Item item;
    item.kind = Item::kFinish;
    if (!result.ok()) {
      item.status = ToGrpcStatus(result.status());
    } else if (v1::GrpcStatus status; !status.ParseFromString(*result)) {
      item.status = grpc::Status(grpc::StatusCode::INTERNAL,
                                 "grove.grpc_open returned a result that does not decode");
    } else {
      item.status = grpc::Status(GrpcCode(status.code()), status.message(), status.error_details());
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

  void QueueFinish(Item item) {
    {
      absl::MutexLock lock(&mu_);
      if (finish_queued_) return;
      finish_queued_ = true;
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
  void OnDone() override {
    order_.Settle();
    state_->Settle();
    delete this;
  }

 private:
  // Sends grove.grpc_open, with the first request message and the half-close when given.
  void Open(std::optional<std::string> first_message, bool half_close);
  void Send(std::optional<std::string> message, bool half_close);
  void SendCredit(const v1::GrpcCredit& credit);

  ProxyServer* const server_;
  ReactionOrder order_;
  // Read side only (and OnCredit, while the read side is stopped).
  grpc::ByteBuffer read_;
  const std::shared_ptr<ProxyState> state_;
  ContextId target_;
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

// The in-process server behind a context's ChannelTo channels, and their link to its router.
// Owned by shared_ptrs: the context's Mesh and every channel (an in-process channel must not
// outlive its server), so it may outlive the router: Detach (when the router goes) turns
// every later call into UNAVAILABLE. Thread-safe.
class ProxyServer {
 public:
  explicit ProxyServer(Router* router) : router_(router), name_(router->name()), service_(this) {
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

  ~ProxyServer() { server_->Shutdown(std::chrono::system_clock::now()); }

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

  uint64_t NextStream() { return next_stream_.fetch_add(1, std::memory_order_relaxed); }
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
  std::atomic<uint64_t> next_stream_{1};
  ProxyService service_;  // Outlives server_.
  std::unique_ptr<grpc::Server> server_;
};

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
  absl::StatusOr<ContextId> target = TargetOf(context->client_metadata());
  if (!target.ok()) {
    state_->Fail(ToGrpcStatus(target.status()));
    return;
  }
  target_ = *target;
  deadline_ = DeadlineFrom(context->deadline());
  open_.set_stream(server_->NextStream());
  open_.set_method(context->method());
  CopyMetadata(context->client_metadata(), open_.mutable_metadata());
  const google::protobuf::MethodDescriptor* method = FindMethod(context->method());
  single_request_ = method != nullptr && !method->client_streaming();
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
      target_, kOpen, v1::GrpcOpenRequest::descriptor()->full_name(), open_.SerializeAsString(),
      options, [state](absl::StatusOr<std::string> result) { state->OnResult(std::move(result)); });
  if (!started) {
    state_->Fail(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              absl::StrCat("context ", server_->name(),
                                           " is gone: its grove::ChannelTo channels carry no "
                                           "more calls")));
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
  server_->StartCall(target_, kSend, v1::GrpcSendRequest::descriptor()->full_name(),
                     send.SerializeAsString(), options, [](absl::StatusOr<std::string>) {});
}

void ProxyCall::SendCredit(const v1::GrpcCredit& credit) {
  v1::GrpcSendRequest send;
  send.set_stream(open_.stream());
  *send.mutable_consumed() = credit;
  CallOptions options;
  options.deadline = deadline_;
  server_->StartCall(target_, kSend, v1::GrpcSendRequest::descriptor()->full_name(),
                     send.SerializeAsString(), options, [](absl::StatusOr<std::string>) {});
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

}  // namespace

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
