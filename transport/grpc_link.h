// Links over gRPC: one bidirectional Router.Attach stream on a connected socket.
//
// The parent is the gRPC client on its end of the socket (GrpcClientLink); the child serves
// gRPC on its end (AgentService, which makes a GrpcServerLink when the parent attaches). No
// context listens on a port. Each side queues envelopes and writes everything queued as one
// Batch whenever the previous write completes, so there is at most one write in flight (the
// callback API's rule) and a burst of small envelopes costs one write.
#ifndef GROVE_TRANSPORT_GRPC_LINK_H_
#define GROVE_TRANSPORT_GRPC_LINK_H_

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/fd.h"
#include "grpcpp/grpcpp.h"
#include "proto/grove.grpc.pb.h"
#include "router/link.h"

namespace grove {

// gRPC 1.51 serves the callback API from one process-wide completion queue that is reference
// counted by the channels and servers using it; when the count drops to zero it is torn down,
// and that teardown races with the next user ("assertion failed: prior > 0" in
// grpc_cq_internal_unref). This takes one reference for the life of the process (a call that
// never ends), so the queue is built once and never torn down. Idempotent; thread-safe.
void HoldCallbackQueue();

// Receive limit of a link carrying envelopes of at most `max_message_bytes`.
int LinkReceiveLimit(int64_t max_message_bytes);

// Outgoing envelopes of one link, packed into batches of at most `max_bytes` (an envelope
// larger than that goes alone). Thread-compatible; the link guards it.
class OutQueue {
 public:
  explicit OutQueue(int64_t max_bytes) : max_bytes_(max_bytes) {}
  void Push(v1::Envelope envelope);
  bool empty() const { return queue_.empty(); }
  // Moves queued envelopes into `batch` (which must be empty).
  void Fill(v1::Batch* batch);

 private:
  const int64_t max_bytes_;
  std::deque<std::pair<v1::Envelope, size_t>> queue_;
};

// The parent's side of a link. Owns the gRPC channel on its socket and the Attach call.
// Keeps itself alive until gRPC is done with it. Thread-safe.
class GrpcClientLink : public Link, public grpc::ClientBidiReactor<v1::Batch, v1::Batch> {
 public:
  // Takes `fd` (a connected socket) and opens the Attach stream on it.
  static std::shared_ptr<GrpcClientLink> Connect(UniqueFd fd, std::string debug_name,
                                                 int64_t max_message_bytes);
  ~GrpcClientLink() override;

  // Readable (an eventfd) once the first envelope has arrived or the link has failed.
  int first_envelope_fd() const { return first_fd_.get(); }
  // The first envelope (the child's Hello), once first_envelope_fd() is readable; the error
  // that took the link down otherwise. Call once.
  absl::StatusOr<v1::Envelope> TakeFirstEnvelope();

  // Link:
  void Start(LinkDelegate* delegate) override;
  void Send(v1::Envelope envelope) override;
  void Close(const absl::Status& reason) override;
  std::string DebugName() const override { return debug_name_; }

  // grpc::ClientBidiReactor:
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnDone(const grpc::Status& status) override;

 private:
  GrpcClientLink(std::string debug_name, int64_t max_message_bytes);
  void SignalFirst();
  void ReleaseHoldIfIdle() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string debug_name_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Router::Stub> stub_;
  grpc::ClientContext context_;
  UniqueFd first_fd_;
  v1::Batch in_;   // Touched only by the read flow.
  v1::Batch out_;  // Touched only by the write in flight.

  absl::Mutex mu_;
  OutQueue queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
  LinkDelegate* delegate_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool got_first_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<v1::Envelope> first_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::Envelope> early_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status down_reason_ ABSL_GUARDED_BY(mu_);
  absl::Status close_reason_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<GrpcClientLink> self_ ABSL_GUARDED_BY(mu_);
};

// The child's side of a link: the server half of the Attach stream. Thread-safe.
class GrpcServerLink : public Link, public grpc::ServerBidiReactor<v1::Batch, v1::Batch> {
 public:
  GrpcServerLink(std::string debug_name, int64_t max_message_bytes);
  ~GrpcServerLink() override;

  // Link:
  void Start(LinkDelegate* delegate) override;
  void Send(v1::Envelope envelope) override;
  // Sends what is queued, then ends the stream.
  void Close(const absl::Status& reason) override;
  std::string DebugName() const override { return debug_name_; }

  // grpc::ServerBidiReactor:
  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  friend class AgentService;
  void MaybeFinish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string debug_name_;
  v1::Batch in_;
  v1::Batch out_;

  absl::Mutex mu_;
  OutQueue queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  LinkDelegate* delegate_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Status down_reason_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<GrpcServerLink> self_ ABSL_GUARDED_BY(mu_);
};

// The child's gRPC service: accepts the one Attach stream its parent opens and hands the
// link to `on_attach` (before anything is read from it). A second Attach is refused.
// Thread-safe.
class AgentService : public v1::Router::CallbackService {
 public:
  AgentService(std::string debug_name, int64_t max_message_bytes,
               std::function<void(std::shared_ptr<GrpcServerLink>)> on_attach);

  grpc::ServerBidiReactor<v1::Batch, v1::Batch>* Attach(
      grpc::CallbackServerContext* context) override;

 private:
  const std::string debug_name_;
  const int64_t max_message_bytes_;
  std::function<void(std::shared_ptr<GrpcServerLink>)> on_attach_;
  absl::Mutex mu_;
  bool attached_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace grove

#endif  // GROVE_TRANSPORT_GRPC_LINK_H_
