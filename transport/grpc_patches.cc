// Two patches to gRPC 1.51's chttp2 transport and epoll poller, applied with ld --wrap (the
// callers are other archive members), that spare a context wake-ups gRPC's own code costs it.
// Both only change when gRPC is woken or writes, never what it writes.
//
// 1. Fewer HTTP/2 WINDOW_UPDATE frames of their own.
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
// otherwise queue the update for the next write on that transport. The wrapper of
// UpdateAction applies that rule to 1.51: it downgrades an "update immediately" to "queue"
// when the replica of 1.51's rule below agrees with what gRPC decided (so the private fields
// it reads are where it expects them) and the later rule would not hurry. An update that a
// stalled peer waits for is never held back: a peer can send half a window (32 KiB by
// default) before the update is hurried.
//
// 2. No wake-up when the peer has read what this process wrote.
//
// The epoll poller registers every socket for EPOLLIN | EPOLLOUT, edge-triggered. A Unix
// socket signals EPOLLOUT each time the peer reads (the sender's buffer space comes back), so
// every message sent wakes the sending process once more when it is read, for nothing unless
// a write is waiting for room (measured at depth 4: ~1.7 of each middle context's ~3.7
// wake-ups per round trip). The wrapper of epoll_ctl registers gRPC's sockets for EPOLLIN
// only, and the wrapper of grpc_fd_notify_on_write (which gRPC calls only when a write or
// connect must wait for room) adds EPOLLOUT to that socket from then on, before gRPC starts
// waiting: a socket that is writable by then reports it at once (epoll_ctl re-checks), one that
// is not reports it when room comes.
//
// Thread-safety: UpdateAction runs under the transport's combiner and keeps no state but
// `trusted`; the epoll wrappers keep their table under a mutex and make no call under it.
#include <sys/epoll.h>

#include <cstdint>
#include <cstring>

#include <atomic>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
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

namespace {

constexpr uint32_t kGrpcSocketEvents = EPOLLIN | EPOLLOUT | EPOLLET;  // ev_epoll1_linux.cc

// gRPC's sockets registered without EPOLLOUT, by fd: the epoll set and the registration's data.
struct Registration {
  int epfd;
  uint64_t data;
};
absl::Mutex registrations_mu(absl::kConstInit);
absl::flat_hash_map<int, Registration>* registrations ABSL_GUARDED_BY(registrations_mu) = nullptr;

}  // namespace

struct grpc_fd;
struct grpc_closure;

extern "C" {
int _Z18grpc_fd_wrapped_fdP7grpc_fd(grpc_fd* fd);  // grpc_fd_wrapped_fd(grpc_fd*)
int __real_epoll_ctl(int epfd, int op, int fd, struct epoll_event* event);
void __real__Z23grpc_fd_notify_on_writeP7grpc_fdP12grpc_closure(grpc_fd* fd, grpc_closure* closure);

int __wrap_epoll_ctl(int epfd, int op, int fd, struct epoll_event* event) {
  if (op != EPOLL_CTL_ADD || event == nullptr || event->events != kGrpcSocketEvents) {
    return __real_epoll_ctl(epfd, op, fd, event);
  }
  struct epoll_event readable = *event;
  readable.events = EPOLLIN | EPOLLET;
  const int result = __real_epoll_ctl(epfd, op, fd, &readable);
  if (result == 0) {
    absl::MutexLock lock(&registrations_mu);
    if (registrations == nullptr) registrations = new absl::flat_hash_map<int, Registration>();
    (*registrations)[fd] = Registration{epfd, event->data.u64};
  }
  return result;
}

// grpc_fd_notify_on_write(grpc_fd*, grpc_closure*).
void __wrap__Z23grpc_fd_notify_on_writeP7grpc_fdP12grpc_closure(grpc_fd* fd,
                                                              grpc_closure* closure) {
  const int n = _Z18grpc_fd_wrapped_fdP7grpc_fd(fd);
  Registration found{-1, 0};
  {
    absl::MutexLock lock(&registrations_mu);
    if (registrations != nullptr) {
      if (auto it = registrations->find(n); it != registrations->end()) {
        found = it->second;
        registrations->erase(it);
      }
    }
  }
  if (found.epfd >= 0) {
    struct epoll_event all;
    all.events = kGrpcSocketEvents;
    all.data.u64 = found.data;
    if (__real_epoll_ctl(found.epfd, EPOLL_CTL_MOD, n, &all) != 0) {
      PLOG(ERROR) << "epoll_ctl(EPOLL_CTL_MOD) of gRPC's fd " << n;
    }
  }
  __real__Z23grpc_fd_notify_on_writeP7grpc_fdP12grpc_closure(fd, closure);
}
}  // extern "C"
