// Links over gRPC: one bidirectional Router.Attach stream on a connected socket.
//
// The parent is the gRPC client on its end of the socket (GrpcClientLink); the child serves
// gRPC on its end (AgentService, which makes a GrpcServerLink when the parent attaches). No
// context listens on a port. Each side queues envelopes and writes everything queued as one
// Batch whenever the previous write completes, so there is at most one write in flight and a
// burst of small envelopes costs one write.
//
// Both ends use gRPC's completion-queue API, served by one thread per process ("grove-link",
// see LinkQueue): the thread that polls the socket runs the link's code itself. gRPC's
// callback API hands every completion between two "nexting" threads of its own, which
// measured twice the round-trip time on this kind of machine (2 vCPUs): ~155 us against
// ~79 us for a ping-pong on one stream. See docs/architecture.md, "Links".
#ifndef GROVE_TRANSPORT_GRPC_LINK_H_
#define GROVE_TRANSPORT_GRPC_LINK_H_

#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/fd.h"
#include "grpcpp/alarm.h"
#include "grpcpp/grpcpp.h"
#include "proto/grove.grpc.pb.h"
#include "link/link.h"

namespace grove {

// gRPC 1.51 serves the callback API (used by the mesh, mesh/) from one process-wide
// completion queue that is reference counted by the channels and servers using it; when the
// count drops to zero it is torn down, and that teardown races with the next user ("assertion
// failed: prior > 0" in grpc_cq_internal_unref). This takes one reference for the life of the
// process (a call that never ends), so the queue is built once and never torn down.
// Idempotent; thread-safe.
void HoldCallbackQueue();

// One operation on a completion queue: the tag passed to gRPC. Done runs on the queue's
// thread with the operation's outcome.
class LinkOp {
 public:
  virtual void Done(bool ok) = 0;

 protected:
  ~LinkOp() = default;
};

// The completion queue every link of this process uses, and its one thread ("grove-link"),
// which runs each LinkOp's Done. Created on first use and kept for the life of the process
// (never shut down: it ends with the process). The agent's server queue becomes it when
// AdoptServerQueue comes first. Thread-safe.
//
// While traffic is light, the thread polls the queue for a while after each completion
// before it sleeps (LinkSpin()): the next envelope of a ping-pong then finds it awake, which
// spares the wake-up of a sleeping thread on another CPU. It does not while its links are
// busy (50 envelopes read in a millisecond): waking less often then lets envelopes gather
// into batches.
class LinkQueue {
 public:
  static grpc::CompletionQueue* Get();
  // Makes `cq` (a server's queue, after BuildAndStart) the process's link queue and starts
  // its thread; false (nothing changes) when the queue exists already.
  static bool Adopt(grpc::ServerCompletionQueue* cq);
  // Serves `cq` until it is shut down and drained, running each LinkOp (a server's own
  // queue when the process's queue is another). `spin`: as the process's link queue.
  static void Serve(grpc::CompletionQueue* cq, bool spin = false);
};

// How long the link thread polls after a completion before it sleeps: GROVE_LINK_SPIN_US
// microseconds (read once; 0 turns polling off), 50 by default.
absl::Duration LinkSpin();

// The most a batch carries (an envelope larger than that goes alone). One thread serves
// every link of a process, and a batch is handled whole before the next completion: small
// batches keep a link that floods (logs, output) from holding up the others for long.
inline constexpr int64_t kMaxBatchBytes = 64 << 10;
int64_t BatchLimit(int64_t max_message_bytes);

// Receive limit of a link carrying envelopes of at most `max_message_bytes`.
int LinkReceiveLimit(int64_t max_message_bytes);

// Outgoing envelopes of one link, packed into batches of at most `max_bytes` (an envelope
// larger than that goes alone). Thread-compatible; the link guards it.
class OutQueue {
 public:
  explicit OutQueue(int64_t max_bytes) : max_bytes_(max_bytes) {}
  void Push(v1::Envelope envelope);
  bool empty() const { return queue_.empty(); }
  // What is queued, in bytes.
  int64_t bytes() const { return bytes_; }
  // Moves queued envelopes into `batch` (which must be empty).
  void Fill(v1::Batch* batch);

 private:
  const int64_t max_bytes_;
  std::deque<std::pair<v1::Envelope, size_t>> queue_;
  int64_t bytes_ = 0;
};

// A link whose writes can be held back while its queue's thread delivers a batch of
// envelopes: what the delivery sends (replies, forwarded calls) then leaves as one write per
// link, at the end of the batch, instead of one per envelope. See DeliveryScope.
class Corkable {
 public:
  virtual ~Corkable() = default;
  // Writes what is queued, unless a write is in flight (its completion writes the rest).
  virtual void Flush() = 0;
};

// On the stack of a link queue's thread around the delivery of one received batch. Sends on
// that thread meanwhile only queue; the links they touched are flushed when the outermost
// scope ends. Thread-compatible (one per thread).
class DeliveryScope {
 public:
  DeliveryScope();
  ~DeliveryScope();
  // The open scope on this thread, or null.
  static DeliveryScope* Current();
  // Flushes `link` when the scope ends (once, however often it is added).
  void Defer(std::shared_ptr<Corkable> link) { deferred_.push_back(std::move(link)); }

 private:
  DeliveryScope* const outer_;
  std::vector<std::shared_ptr<Corkable>> deferred_;
};

// A LinkOp that calls a member function of its owner.
template <typename T>
class MemberOp final : public LinkOp {
 public:
  MemberOp(T* owner, void (T::*done)(bool)) : owner_(owner), done_(done) {}
  void Done(bool ok) override { (owner_->*done_)(ok); }

 private:
  T* const owner_;
  void (T::*const done_)(bool);
};

// The parent's side of a link. Owns the gRPC channel on its socket and the Attach call.
// Keeps itself alive until gRPC is done with it (every operation it started has come back
// from the queue). A child that stops reading while envelopes keep coming for it (hostile,
// or stopped while calls to it go on) would make its queue grow without end: past
// MaxQueuedBytes the link is closed (RESOURCE_EXHAUSTED) and the child's subtree is lost.
// Thread-safe.
class GrpcClientLink : public Link, public Corkable {
 public:
  // Takes `fd` (a connected socket) and opens the Attach stream on it.
  static std::shared_ptr<GrpcClientLink> Connect(UniqueFd fd, std::string debug_name,
                                                 int64_t max_message_bytes);
  // The most a link for envelopes of at most `max_message_bytes` queues unwritten: 16 of
  // them, and at least 1 GiB.
  static int64_t MaxQueuedBytes(int64_t max_message_bytes);
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
  bool WriteOutstanding() override;
  std::string DebugName() const override { return debug_name_; }
  void PauseReading(absl::Duration pause) override;
  // Corkable:
  void Flush() override;

 private:
  GrpcClientLink(std::string debug_name, int64_t max_message_bytes);
  void OnResume(bool ok);
  void SignalFirst();
  // Queue callbacks, on the link queue's thread.
  void OnStarted(bool ok);
  void OnReadDone(bool ok);
  void OnWriteDone(bool ok);
  void OnFinished(bool ok);
  void StartRead();
  // Once reading is over and no write is in flight: asks for the call's status (once).
  void MaybeFinish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string debug_name_;
  const int64_t max_queued_bytes_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Router::Stub> stub_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientAsyncReaderWriter<v1::Batch, v1::Batch>> stream_;
  UniqueFd first_fd_;
  v1::Batch in_;   // Touched only by the read flow.
  v1::Batch out_;  // Touched only by the write in flight.
  grpc::Status status_;  // Set by Finish, read in OnFinished.
  MemberOp<GrpcClientLink> started_op_{this, &GrpcClientLink::OnStarted};
  MemberOp<GrpcClientLink> read_op_{this, &GrpcClientLink::OnReadDone};
  MemberOp<GrpcClientLink> write_op_{this, &GrpcClientLink::OnWriteDone};
  MemberOp<GrpcClientLink> finish_op_{this, &GrpcClientLink::OnFinished};
  MemberOp<GrpcClientLink> resume_op_{this, &GrpcClientLink::OnResume};
  grpc::Alarm resume_;  // Set while reading is paused; its op then starts the next read.

  absl::Mutex mu_;
  OutQueue queue_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool deferred_ ABSL_GUARDED_BY(mu_) = false;  // In a DeliveryScope's list.
  absl::Time paused_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finishing_ ABSL_GUARDED_BY(mu_) = false;
  LinkDelegate* delegate_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool got_first_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<v1::Envelope> first_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::Envelope> early_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status down_reason_ ABSL_GUARDED_BY(mu_);
  absl::Status close_reason_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<GrpcClientLink> self_ ABSL_GUARDED_BY(mu_);
};

// The child's side of a link: the server half of the Attach stream. Keeps itself alive
// until gRPC is done with it. Thread-safe.
class GrpcServerLink : public Link, public Corkable {
 public:
  GrpcServerLink(std::string debug_name, int64_t max_message_bytes);
  ~GrpcServerLink() override;

  // Link:
  void Start(LinkDelegate* delegate) override;
  void Send(v1::Envelope envelope) override;
  // Sends what is queued, then ends the stream.
  void Close(const absl::Status& reason) override;
  bool WriteOutstanding() override;
  std::string DebugName() const override { return debug_name_; }
  // Corkable:
  void Flush() override;

 private:
  friend class AgentService;
  // Queue callbacks, on the link queue's thread.
  void OnReadDone(bool ok);
  void OnWriteDone(bool ok);
  void OnFinished(bool ok);
  // Ends the call once nothing is being written and reading is over or Close was called.
  void MaybeFinish() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Delivers OnLinkDown and lets go of itself once the call is finished and no read is out.
  void MaybeDown() ABSL_UNLOCK_FUNCTION(mu_);

  const std::string debug_name_;
  grpc::ServerContext context_;
  grpc::ServerAsyncReaderWriter<v1::Batch, v1::Batch> stream_{&context_};
  v1::Batch in_;
  v1::Batch out_;
  MemberOp<GrpcServerLink> read_op_{this, &GrpcServerLink::OnReadDone};
  MemberOp<GrpcServerLink> write_op_{this, &GrpcServerLink::OnWriteDone};
  MemberOp<GrpcServerLink> finish_op_{this, &GrpcServerLink::OnFinished};

  absl::Mutex mu_;
  OutQueue queue_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool deferred_ ABSL_GUARDED_BY(mu_) = false;  // In a DeliveryScope's list.
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;       // Finish was called.
  bool finish_done_ ABSL_GUARDED_BY(mu_) = false;    // ... and came back.
  bool down_delivered_ ABSL_GUARDED_BY(mu_) = false;
  LinkDelegate* delegate_ ABSL_GUARDED_BY(mu_) = nullptr;
  absl::Status down_reason_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<GrpcServerLink> self_ ABSL_GUARDED_BY(mu_);
};

// The child's gRPC service: accepts the Attach stream its parent opens and hands the link
// to `on_attach` (before anything is read from it). Only the first Attach is taken: the
// socket is private to the parent, which attaches once. Thread-safe.
//
//   AgentService service(max);
//   grpc::ServerBuilder builder;
//   service.AddTo(&builder);
//   std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
//   service.Start(name, on_attach);   // then grpc::AddInsecureChannelFromFd(server.get(), fd)
//
// The server can be built before anyone knows what the link will be called (a spare fork
// child builds it before it is told who it is).
//
// Its server queue becomes the process's link queue when there is none yet (the agent);
// otherwise (a test serving links in a process that has its own) it gets a thread of its
// own, which ends after the server's Shutdown, in the destructor.
class AgentService {
 public:
  explicit AgentService(int64_t max_message_bytes);
  ~AgentService();

  // Registers the service and its completion queue. Before BuildAndStart.
  void AddTo(grpc::ServerBuilder* builder);
  // Waits for the Attach, which makes a link named `debug_name` and hands it to `on_attach`.
  // After BuildAndStart, before the server gets its socket; once.
  void Start(std::string debug_name,
             std::function<void(std::shared_ptr<GrpcServerLink>)> on_attach);

 private:
  void OnAttached(bool ok);

  const int64_t max_message_bytes_;
  std::function<void(std::shared_ptr<GrpcServerLink>)> on_attach_;  // Set by Start.
  v1::Router::AsyncService service_;
  std::unique_ptr<grpc::ServerCompletionQueue> cq_;
  std::shared_ptr<GrpcServerLink> pending_;  // Set in Start, taken by OnAttached.
  MemberOp<AgentService> attached_op_{this, &AgentService::OnAttached};
  std::unique_ptr<std::thread> own_thread_;  // Unless cq_ is the process's link queue.
  bool adopted_ = false;
};

}  // namespace grove

#endif  // GROVE_TRANSPORT_GRPC_LINK_H_
