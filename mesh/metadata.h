// What the mesh's two sides share: the mesh's built-in names, bytes and metadata between gRPC
// and grove messages, the interceptor that names a ChannelTo channel's target, and the
// server option that adds reflection.
#ifndef GROVE_MESH_METADATA_H_
#define GROVE_MESH_METADATA_H_


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

#include "common/context_id.h"

namespace grove::mesh_internal {

inline constexpr char kOpen[] = "grove.grpc_open";

inline constexpr char kSend[] = "grove.grpc_send";

// A ChannelTo channel names its target in this metadata entry of every call (an in-process
// channel has a fixed authority).
inline constexpr char kTargetKey[] = "grove-target";

// How long a stream's messages may wait for its grove.grpc_open, and how long a finished
// stream is remembered so that messages still on their way to it are dropped.
inline constexpr absl::Duration kStreamMemory = absl::Seconds(30);

using MetadataEntries = google::protobuf::RepeatedPtrField<v1::GrpcMetadataEntry>;

using MetadataMap = std::multimap<grpc::string_ref, grpc::string_ref>;

// ---- Bytes and metadata ----

// A byte buffer holding a copy of `bytes`, in memory of gRPC's own (a slice that would own
// the string instead is freed by whichever thread drops gRPC's last reference to it, which
// gRPC's uninstrumented refcounting hides from ThreadSanitizer).
grpc::ByteBuffer ToByteBuffer(const std::string& bytes);

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

std::string FromByteBuffer(const grpc::ByteBuffer& buffer);

// Whether a metadata entry (possibly from another process) may be handed to gRPC: a legal
// key that gRPC does not manage itself, and for a text key a printable value. gRPC aborts on
// some malformed metadata, so nothing else gets through.
bool Forwardable(absl::string_view key, absl::string_view value);

void CopyMetadata(const MetadataMap& from, MetadataEntries* to);

// "/package.Service/Method": printable, no spaces, one leading slash.
bool ValidMethod(const std::string& method);

// The method's descriptor in this program, when its service is compiled in (the target runs
// this same program, so it usually is).
const google::protobuf::MethodDescriptor* FindMethod(const std::string& method);

absl::StatusOr<ContextId> TargetOf(const MetadataMap& metadata);

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

absl::Time DeadlineFrom(std::chrono::system_clock::time_point deadline);

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
  static inline constexpr char kReflectionPlugin[] = "proto_server_reflection";
};

}  // namespace grove::mesh_internal

#endif  // GROVE_MESH_METADATA_H_
