// Flow control of one direction of a mesh stream, end to end.
#ifndef GROVE_MESH_FLOW_CONTROL_H_
#define GROVE_MESH_FLOW_CONTROL_H_


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


}  // namespace grove::mesh_internal

#endif  // GROVE_MESH_FLOW_CONTROL_H_
