#include "mesh/metadata.h"


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


namespace grove::mesh_internal {

// ---- Bytes and metadata ----

// A byte buffer holding a copy of `bytes`, in memory of gRPC's own (a slice that would own
// the string instead is freed by whichever thread drops gRPC's last reference to it, which
// gRPC's uninstrumented refcounting hides from ThreadSanitizer).
grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

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

absl::Time DeadlineFrom(std::chrono::system_clock::time_point deadline) {
  if (deadline == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(deadline);
}

}  // namespace grove::mesh_internal
