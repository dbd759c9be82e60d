// Fewer HTTP/2 WINDOW_UPDATE frames of their own, in gRPC 1.51.
//
// gRPC 1.51's chttp2 transport sends a stream WINDOW_UPDATE at once whenever a read is pending
// and any byte of the stream's initial window is used (StreamFlowControl::UpdateAction:
// `announced_window_delta_ < 0`). A context that only answers calls sends it with the reply,
// in the same write. A relay does not: it forwards each envelope on another link, so every
// envelope it relays costs a write of 26 bytes on the link it came from, and a wake-up of the
// process at the other end, for nothing (measured: at depth 4, 2 of the 4 writes and 2 of the
// 4 wake-ups of each middle context per round trip).
//
// Later gRPC releases hurry only once half the initial window is used (`<= -initial/2`) and
// otherwise queue the update for the next write on that transport. This wrapper (ld --wrap;
// the callers are other archive members) applies that rule to 1.51: it downgrades an
// "update immediately" to "queue" when the replica of 1.51's rule below agrees with what gRPC
// decided (so the private fields it reads are where it expects them) and the later rule
// would not hurry. An update that a stalled peer waits for is never held back: a peer can
// send half a window (32 KiB by default) before the update is hurried.
//
// Thread-safety: called under the transport's combiner; keeps no state but `trusted`.
#include <cstdint>
#include <cstring>

#include <atomic>

#include "glog/logging.h"
#include "grpcpp/version_info.h"

namespace {

// grpc_core::chttp2::FlowControlAction of gRPC 1.51 (flow_control.h): four one-byte
// urgencies, then two uint32_t. Returned and passed in registers, like the real one.
struct FlowControlAction {
  uint8_t send_stream_update;
  uint8_t send_transport_update;
  uint8_t send_initial_window_update;
  uint8_t send_max_frame_size_update;
  uint32_t initial_window_size;
  uint32_t max_frame_size;
};
static_assert(sizeof(FlowControlAction) == 12, "the layout of gRPC 1.51's FlowControlAction");

constexpr uint8_t kUpdateImmediately = 1;
constexpr uint8_t kQueueUpdate = 2;

// False once the replica disagreed with gRPC: the wrapper then only passes through.
std::atomic<bool> trusted{true};

template <typename T>
T Load(const void* base, size_t offset) {
  T value;
  std::memcpy(&value, static_cast<const char*>(base) + offset, sizeof(T));
  return value;
}

}  // namespace

extern "C" {
FlowControlAction __real__ZN9grpc_core6chttp217StreamFlowControl12UpdateActionENS0_17FlowControlActionE(
    void* self, FlowControlAction action);
// grpc_core::chttp2::StreamFlowControl::DesiredAnnounceSize() const.
int64_t _ZNK9grpc_core6chttp217StreamFlowControl19DesiredAnnounceSizeEv(const void* self);

FlowControlAction __wrap__ZN9grpc_core6chttp217StreamFlowControl12UpdateActionENS0_17FlowControlActionE(
    void* self, FlowControlAction action) {
  FlowControlAction result =
      __real__ZN9grpc_core6chttp217StreamFlowControl12UpdateActionENS0_17FlowControlActionE(
          self, action);
#if GRPC_CPP_VERSION_MAJOR == 1 && GRPC_CPP_VERSION_MINOR == 51
  if (result.send_stream_update != kUpdateImmediately ||
      !trusted.load(std::memory_order_relaxed)) {
    return result;
  }
  // StreamFlowControl in 1.51: TransportFlowControl* tfc_ at 0, int64_t min_progress_size_ at
  // 8, announced_window_delta_ at 24; the transport's sent initial window (uint32_t) at 200
  // of TransportFlowControl.
  const void* tfc = Load<const void*>(self, 0);
  const int64_t min_progress_size = Load<int64_t>(self, 8);
  const int64_t announced_window_delta = Load<int64_t>(self, 24);
  const int64_t sent_init_window = tfc == nullptr ? -1 : Load<uint32_t>(tfc, 200);
  const int64_t desired = _ZNK9grpc_core6chttp217StreamFlowControl19DesiredAnnounceSizeEv(self);
  const int64_t hurry_up_size = sent_init_window / 2 > 8192 ? sent_init_window / 2 : 8192;
  const bool reader_rule =
      min_progress_size > 0 &&
      (announced_window_delta < 0 || (announced_window_delta == 0 && sent_init_window == 0));
  const bool replica = sent_init_window >= 0 && desired > 0 &&
                       (desired > hurry_up_size || reader_rule);
  if (!replica) {
    trusted.store(false, std::memory_order_relaxed);
    LOG(WARNING) << "gRPC's stream flow control is not laid out as grove expects; its "
                    "WINDOW_UPDATEs are left as they are";
    return result;
  }
  const bool later_rule = desired > hurry_up_size ||
                          (min_progress_size > 0 && announced_window_delta <= -sent_init_window / 2);
  if (!later_rule) result.send_stream_update = kQueueUpdate;
#endif
  return result;
}
}  // extern "C"
