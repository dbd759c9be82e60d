#include "transport/grpc_link.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/grpc.h"
#include "common/status_util.h"
#include "google/protobuf/io/coded_stream.h"
#include "glog/logging.h"
#include "grpcpp/create_channel_posix.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

namespace grove {

void HoldCallbackQueue() {
  static const bool held = [] {
    // One callback-API call that never ends, on a channel whose peer never answers: the
    // channel keeps its reference on the queue. Intentionally leaked, with both socket ends
    // (a port-less server would do too, but its pollers cost ~25 us on every call).
    auto fds = SocketPair();
    if (!fds.ok()) return false;
    (void)fds->second.Release();
    auto* channel = new std::shared_ptr<grpc::Channel>(
        grpc::CreateInsecureChannelFromFd("callback queue anchor", fds->first.Release()));
    auto* stub = v1::Router::NewStub(*channel).release();
    auto* context = new grpc::ClientContext();
    auto* reactor = new grpc::ClientBidiReactor<v1::Batch, v1::Batch>();
    stub->async()->Attach(context, reactor);
    reactor->StartCall();
#if defined(__SANITIZE_ADDRESS__)
    __lsan_ignore_object(channel);
    __lsan_ignore_object(stub);
    __lsan_ignore_object(context);
    __lsan_ignore_object(reactor);
#endif
    return true;
  }();
  (void)held;
}

int LinkReceiveLimit(int64_t max_message_bytes) {
  // Room for batch framing around the largest envelope.
  int64_t limit = max_message_bytes + (int64_t{1} << 16);
  return limit > INT32_MAX ? INT32_MAX : static_cast<int>(limit);
}

int64_t BatchLimit(int64_t max_message_bytes) {
  return std::min(max_message_bytes, kMaxBatchBytes);
}

void OutQueue::Push(v1::Envelope envelope) {
  // The envelope's bytes inside the batch: its tag, its length and itself.
  size_t body = envelope.ByteSizeLong();
  size_t size = 1 + google::protobuf::io::CodedOutputStream::VarintSize64(body) + body;
  queue_.emplace_back(std::move(envelope), size);
  bytes_ += static_cast<int64_t>(size);
}

void OutQueue::Fill(v1::Batch* batch) {
  int64_t bytes = 0;
  while (!queue_.empty()) {
    auto& [envelope, size] = queue_.front();
    if (bytes > 0 && bytes + static_cast<int64_t>(size) > max_bytes_) break;
    bytes += static_cast<int64_t>(size);
    bytes_ -= static_cast<int64_t>(size);
    *batch->add_envelopes() = std::move(envelope);
    queue_.pop_front();
  }
}

// ---------------------------------------------------------------------------------------
// LinkQueue

namespace {

struct QueueState {
  absl::Mutex mu;
  grpc::CompletionQueue* cq ABSL_GUARDED_BY(mu) = nullptr;
};

QueueState& Queue() {
  static auto* state = new QueueState();  // Never destroyed: the thread outlives main().
  return *state;
}

void StartServing(grpc::CompletionQueue* cq) {
  // Detached: the queue is never shut down, and the thread ends with the process.
  std::thread([cq] { LinkQueue::Serve(cq, /*spin=*/true); }).detach();
}

// What decides whether the link thread polls (LinkQueue): the envelopes read in the current
// millisecond, and in the one before (if it was the last).
std::atomic<int64_t> g_window_start_ns{0};
std::atomic<int> g_window_envelopes{0};
std::atomic<int> g_previous_window_envelopes{0};

// Above this many envelopes read in a millisecond, a link is busy: its envelopes should
// gather into batches while the thread sleeps, and polling would take them one by one. A
// ping-pong here reads ~20 a millisecond; a stream of calls, hundreds.
constexpr int kBusyEnvelopesPerMs = 50;

// Called by the link thread for each read, with the envelopes it carried.
void NoteRead(int envelopes) {
  const int64_t now = absl::GetCurrentTimeNanos();
  const int64_t since = now - g_window_start_ns.load(std::memory_order_relaxed);
  if (since >= 1000000) {
    g_previous_window_envelopes.store(
        since < 2000000 ? g_window_envelopes.load(std::memory_order_relaxed) : 0,
        std::memory_order_relaxed);
    g_window_envelopes.store(0, std::memory_order_relaxed);
    g_window_start_ns.store(now, std::memory_order_relaxed);
  }
  g_window_envelopes.fetch_add(envelopes, std::memory_order_relaxed);
}

bool LightTraffic() {
  return std::max(g_window_envelopes.load(std::memory_order_relaxed),
                  g_previous_window_envelopes.load(std::memory_order_relaxed)) <
         kBusyEnvelopesPerMs;
}

}  // namespace

grpc::CompletionQueue* LinkQueue::Get() {
  QueueState& q = Queue();
  absl::MutexLock lock(&q.mu);
  if (q.cq == nullptr) {
    grpc_init();  // Held for the life of the process, like the queue.
    q.cq = new grpc::CompletionQueue();
    StartServing(q.cq);
  }
  return q.cq;
}

bool LinkQueue::Adopt(grpc::ServerCompletionQueue* cq) {
  QueueState& q = Queue();
  absl::MutexLock lock(&q.mu);
  if (q.cq != nullptr) return false;
  grpc_init();
  q.cq = cq;
  StartServing(cq);
  return true;
}

void LinkQueue::Serve(grpc::CompletionQueue* cq, bool spin) {
  ::pthread_setname_np(::pthread_self(), "grove-link");
  const absl::Duration spin_for = spin ? LinkSpin() : absl::ZeroDuration();
  const gpr_timespec past = gpr_time_0(GPR_CLOCK_MONOTONIC);  // A deadline already past.
  void* tag;
  bool ok;
  for (;;) {
    if (spin_for > absl::ZeroDuration() && LightTraffic()) {
      // Each AsyncNext polls the socket once (epoll_wait with no timeout); sched_yield lets
      // a thread that waits for this CPU run first.
      const absl::Time until = absl::Now() + spin_for;
      grpc::CompletionQueue::NextStatus status;
      while ((status = cq->AsyncNext(&tag, &ok, past)) == grpc::CompletionQueue::TIMEOUT &&
             absl::Now() < until) {
        sched_yield();
      }
      if (status == grpc::CompletionQueue::SHUTDOWN) return;
      if (status == grpc::CompletionQueue::GOT_EVENT) {
        static_cast<LinkOp*>(tag)->Done(ok);
        continue;
      }
    }
    if (!cq->Next(&tag, &ok)) return;
    static_cast<LinkOp*>(tag)->Done(ok);
  }
}

absl::Duration LinkSpin() {
  static const absl::Duration spin = [] {
    const char* text = getenv("GROVE_LINK_SPIN_US");
    int64_t us = 50;
    if (text != nullptr && !absl::SimpleAtoi(text, &us)) {
      LOG(WARNING) << "GROVE_LINK_SPIN_US=" << text << " is not a number: using 50";
      us = 50;
    }
    return absl::Microseconds(std::clamp<int64_t>(us, 0, 10000));
  }();
  return spin;
}

// ---------------------------------------------------------------------------------------
// DeliveryScope

namespace {
thread_local DeliveryScope* t_scope = nullptr;
}  // namespace

DeliveryScope::DeliveryScope() : outer_(t_scope) { t_scope = this; }

DeliveryScope::~DeliveryScope() {
  t_scope = outer_;
  if (outer_ != nullptr) {
    for (auto& link : deferred_) outer_->Defer(std::move(link));
    return;
  }
  // Flushing may deliver nothing (writes complete on the queue), so the list is final.
  for (auto& link : deferred_) link->Flush();
}

DeliveryScope* DeliveryScope::Current() { return t_scope; }

namespace {

// The write flow of a link's Send, under the link's lock once an envelope is queued: true
// when the caller is to write `out` now (filled from `queue`); false when a write is in
// flight (its completion writes the rest) or the write is left to this thread's open
// DeliveryScope (`*defer` is then the link to hand it).
template <typename L>
bool WriteOrDefer(OutQueue& queue, v1::Batch* out, bool& writing, bool& deferred,
                  const std::shared_ptr<L>& self, std::shared_ptr<L>* defer) {
  if (writing || deferred) return false;
  if (DeliveryScope::Current() != nullptr && self != nullptr) {
    deferred = true;
    *defer = self;
    return false;
  }
  writing = true;
  queue.Fill(out);
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// GrpcClientLink

int64_t GrpcClientLink::MaxQueuedBytes(int64_t max_message_bytes) {
  return std::max<int64_t>(int64_t{1} << 30, 16 * max_message_bytes);
}

GrpcClientLink::GrpcClientLink(std::string debug_name, int64_t max_message_bytes)
    : debug_name_(std::move(debug_name)),
      max_queued_bytes_(MaxQueuedBytes(max_message_bytes)),
      first_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      queue_(BatchLimit(max_message_bytes)) {}

GrpcClientLink::~GrpcClientLink() = default;

std::shared_ptr<GrpcClientLink> GrpcClientLink::Connect(UniqueFd fd, std::string debug_name,
                                                        int64_t max_message_bytes) {
  grpc::CompletionQueue* cq = LinkQueue::Get();
  std::shared_ptr<GrpcClientLink> link(
      new GrpcClientLink(std::move(debug_name), max_message_bytes));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(LinkReceiveLimit(max_message_bytes));
  args.SetMaxSendMessageSize(-1);
  link->channel_ = grpc::CreateCustomInsecureChannelFromFd("grove", fd.Release(), args);
  link->stub_ = v1::Router::NewStub(link->channel_);
  {
    absl::MutexLock lock(&link->mu_);
    link->self_ = link;  // Until OnFinished.
  }
  link->stream_ = link->stub_->PrepareAsyncAttach(&link->context_, cq);
  link->stream_->StartCall(&link->started_op_);
  return link;
}

void GrpcClientLink::SignalFirst() {
  uint64_t one = 1;
  (void)!::write(first_fd_.get(), &one, sizeof(one));
}

absl::StatusOr<v1::Envelope> GrpcClientLink::TakeFirstEnvelope() {
  absl::MutexLock lock(&mu_);
  if (first_) {
    v1::Envelope e = std::move(*first_);
    first_.reset();
    return e;
  }
  if (done_) return down_reason_;
  return absl::FailedPreconditionError("no envelope has arrived yet");
}

void GrpcClientLink::StartRead() { stream_->Read(&in_, &read_op_); }

void GrpcClientLink::OnStarted(bool ok) {
  bool write = false;
  {
    absl::MutexLock lock(&mu_);
    started_ = true;
    if (!ok) {
      // The call could not start: its status says why.
      read_done_ = true;
      MaybeFinish();
      return;
    }
    if (!writing_ && !queue_.empty() && !closed_) {
      writing_ = true;
      queue_.Fill(&out_);
      write = true;
    }
  }
  if (write) stream_->Write(out_, &write_op_);
  StartRead();
}

void GrpcClientLink::Start(LinkDelegate* delegate) {
  std::vector<v1::Envelope> early;
  bool down = false;
  absl::Status reason;
  bool read_more = false;
  {
    absl::MutexLock lock(&mu_);
    delegate_ = delegate;
    early.swap(early_);
    down = done_;
    reason = down_reason_;
    read_more = !read_done_ && got_first_;
  }
  for (v1::Envelope& e : early) delegate->OnEnvelope(this, std::move(e));
  if (down) {
    delegate->OnLinkDown(this, reason);
    return;
  }
  if (read_more) StartRead();
}

void GrpcClientLink::Send(v1::Envelope envelope) {
  std::shared_ptr<GrpcClientLink> defer;
  bool write = false;
  LinkDelegate* stalled = nullptr;
  absl::Status why;
  {
    absl::MutexLock lock(&mu_);
    if (closed_ || read_done_) return;
    queue_.Push(std::move(envelope));
    if (queue_.bytes() > max_queued_bytes_) {
      // A write may be stuck on the full socket, and gRPC completes it only once the peer
      // reads or the socket breaks: closing is not enough, the delegate ends the peer.
      why = absl::ResourceExhaustedError(
          absl::StrCat("it does not read its link: ", queue_.bytes() >> 20,
                       " MiB queued for it (the most is ", max_queued_bytes_ >> 20, " MiB)"));
      stalled = delegate_;
    } else if (!started_) {
      return;  // OnStarted writes what is queued.
    } else {
      write = WriteOrDefer(queue_, &out_, writing_, deferred_, self_, &defer);
    }
  }
  if (!why.ok()) {
    Close(why);
    if (stalled != nullptr) stalled->OnLinkStalled(this, why);
    return;
  }
  if (defer != nullptr) DeliveryScope::Current()->Defer(std::move(defer));
  if (write) stream_->Write(out_, &write_op_);
}

void GrpcClientLink::Flush() {
  {
    absl::MutexLock lock(&mu_);
    deferred_ = false;
    if (writing_ || !started_ || closed_ || read_done_ || queue_.empty()) return;
    writing_ = true;
    queue_.Fill(&out_);
  }
  stream_->Write(out_, &write_op_);
}

void GrpcClientLink::Close(const absl::Status& reason) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_ || done_) return;
    closed_ = true;
    close_reason_ = reason;
  }
  context_.TryCancel();
  absl::MutexLock lock(&mu_);
  if (got_first_ && delegate_ == nullptr && !read_done_) {
    // Closed before Start: no read is out to come back and end the call.
    read_done_ = true;
    MaybeFinish();
  }
}

void GrpcClientLink::MaybeFinish() {
  if (!read_done_ || writing_ || finishing_) return;
  finishing_ = true;
  stream_->Finish(&status_, &finish_op_);
}

void GrpcClientLink::OnReadDone(bool ok) {
  LinkDelegate* delegate;
  {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      read_done_ = true;
      MaybeFinish();
      return;
    }
    if (!got_first_) {
      got_first_ = true;
      auto* envelopes = in_.mutable_envelopes();
      if (!envelopes->empty()) {
        first_ = std::move(envelopes->at(0));
        for (int i = 1; i < envelopes->size(); ++i) early_.push_back(std::move(envelopes->at(i)));
      } else {
        first_ = v1::Envelope();
      }
      in_.Clear();
      if (delegate_ == nullptr) {
        SignalFirst();
        return;  // Start() resumes reading.
      }
    }
    delegate = delegate_;
  }
  if (delegate == nullptr) return;
  NoteRead(in_.envelopes_size());
  {
    DeliveryScope scope;
    for (v1::Envelope& e : *in_.mutable_envelopes()) delegate->OnEnvelope(this, std::move(e));
  }
  in_.Clear();
  absl::Time resume_at;
  {
    absl::MutexLock lock(&mu_);
    resume_at = paused_until_;
  }
  if (resume_at > absl::Now()) {
    resume_.Set(LinkQueue::Get(), absl::ToChronoTime(resume_at), &resume_op_);
    return;
  }
  StartRead();
}

void GrpcClientLink::OnResume(bool) { StartRead(); }

void GrpcClientLink::PauseReading(absl::Duration pause) {
  absl::MutexLock lock(&mu_);
  paused_until_ = std::max(paused_until_, absl::Now() + pause);
}

void GrpcClientLink::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    out_.Clear();
    if (ok && !closed_ && !read_done_ && !queue_.empty()) {
      queue_.Fill(&out_);
    } else {
      writing_ = false;
      MaybeFinish();
      return;
    }
  }
  stream_->Write(out_, &write_op_);
}

void GrpcClientLink::OnFinished(bool) {
  LinkDelegate* delegate;
  std::shared_ptr<GrpcClientLink> self;
  absl::Status reason;
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    if (!close_reason_.ok() || closed_) {
      reason = close_reason_;
    } else if (status_.ok()) {
      reason = absl::OkStatus();
    } else {
      reason = FromGrpcStatus(status_);
      if (status_.error_code() != grpc::StatusCode::UNAVAILABLE) {
        LOG(WARNING) << debug_name_ << " dropped: " << reason;
      }
    }
    down_reason_ = reason.ok() ? absl::UnavailableError("link closed") : reason;
    delegate = delegate_;
    self = std::move(self_);
  }
  if (delegate != nullptr) {
    delegate->OnLinkDown(this, reason);
  } else {
    SignalFirst();
  }
  // `self` may hold the last reference: `this` may be destroyed here.
}

// ---------------------------------------------------------------------------------------
// GrpcServerLink

GrpcServerLink::GrpcServerLink(std::string debug_name, int64_t max_message_bytes)
    : debug_name_(std::move(debug_name)), queue_(BatchLimit(max_message_bytes)) {}

GrpcServerLink::~GrpcServerLink() = default;

void GrpcServerLink::Start(LinkDelegate* delegate) {
  mu_.Lock();
  delegate_ = delegate;
  if (finished_ || read_done_) {
    MaybeDown();  // Unlocks.
    return;
  }
  reading_ = true;
  mu_.Unlock();
  stream_.Read(&in_, &read_op_);
}

void GrpcServerLink::Send(v1::Envelope envelope) {
  std::shared_ptr<GrpcServerLink> defer;
  bool write;
  {
    absl::MutexLock lock(&mu_);
    if (closing_ || finished_) return;
    queue_.Push(std::move(envelope));
    write = WriteOrDefer(queue_, &out_, writing_, deferred_, self_, &defer);
  }
  if (defer != nullptr) DeliveryScope::Current()->Defer(std::move(defer));
  if (write) stream_.Write(out_, &write_op_);
}

void GrpcServerLink::Flush() {
  absl::MutexLock lock(&mu_);
  deferred_ = false;
  if (writing_ || finished_ || queue_.empty()) {
    MaybeFinish();  // A Close may have waited for this.
    return;
  }
  writing_ = true;
  queue_.Fill(&out_);
  mu_.Unlock();
  stream_.Write(out_, &write_op_);
  mu_.Lock();
}

void GrpcServerLink::Close(const absl::Status& reason) {
  absl::MutexLock lock(&mu_);
  if (closing_) return;
  closing_ = true;
  down_reason_ = reason;
  MaybeFinish();
}

void GrpcServerLink::MaybeFinish() {
  if (finished_ || writing_ || deferred_ || !(closing_ || read_done_)) return;
  finished_ = true;
  // An outstanding read comes back (not ok) once the call is over.
  stream_.Finish(grpc::Status::OK, &finish_op_);
}

void GrpcServerLink::MaybeDown() {
  if (!finish_done_ || reading_ || down_delivered_ || delegate_ == nullptr) {
    mu_.Unlock();
    return;
  }
  down_delivered_ = true;
  LinkDelegate* delegate = delegate_;
  absl::Status reason = down_reason_;
  std::shared_ptr<GrpcServerLink> self = std::move(self_);
  mu_.Unlock();
  delegate->OnLinkDown(this, reason);
  // `self` may hold the last reference: `this` may be destroyed here.
}

void GrpcServerLink::OnReadDone(bool ok) {
  mu_.Lock();
  if (!ok) {
    reading_ = false;
    read_done_ = true;
    if (down_reason_.ok()) down_reason_ = absl::UnavailableError("the parent closed the link");
    MaybeFinish();
    MaybeDown();  // Unlocks.
    return;
  }
  LinkDelegate* delegate = delegate_;
  mu_.Unlock();
  NoteRead(in_.envelopes_size());
  {
    DeliveryScope scope;
    for (v1::Envelope& e : *in_.mutable_envelopes()) delegate->OnEnvelope(this, std::move(e));
  }
  in_.Clear();
  stream_.Read(&in_, &read_op_);
}

void GrpcServerLink::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    out_.Clear();
    if (!ok) {
      read_done_ = true;
      if (down_reason_.ok()) down_reason_ = absl::UnavailableError("write to the parent failed");
    }
    if (ok && !finished_ && !queue_.empty()) {
      queue_.Fill(&out_);
    } else {
      writing_ = false;
      MaybeFinish();
      return;
    }
  }
  stream_.Write(out_, &write_op_);
}

void GrpcServerLink::OnFinished(bool) {
  mu_.Lock();
  finish_done_ = true;
  if (down_reason_.ok()) down_reason_ = absl::UnavailableError("the link was closed");
  MaybeDown();  // Unlocks.
}

// ---------------------------------------------------------------------------------------
// AgentService

AgentService::AgentService(int64_t max_message_bytes) : max_message_bytes_(max_message_bytes) {}

AgentService::~AgentService() {
  if (adopted_) {
    (void)cq_.release();  // The process's link queue: it lives on.
    return;
  }
  if (cq_ != nullptr) cq_->Shutdown();  // After the server's Shutdown.
  if (own_thread_ != nullptr) own_thread_->join();
}

void AgentService::AddTo(grpc::ServerBuilder* builder) {
  builder->RegisterService(&service_);
  cq_ = builder->AddCompletionQueue();
}

void AgentService::Start(std::string debug_name,
                         std::function<void(std::shared_ptr<GrpcServerLink>)> on_attach) {
  on_attach_ = std::move(on_attach);
  adopted_ = LinkQueue::Adopt(cq_.get());
  if (!adopted_) {
    grpc::CompletionQueue* cq = cq_.get();
    own_thread_ = std::make_unique<std::thread>([cq] { LinkQueue::Serve(cq); });
  }
  pending_ = std::make_shared<GrpcServerLink>(std::move(debug_name), max_message_bytes_);
  {
    absl::MutexLock lock(&pending_->mu_);
    pending_->self_ = pending_;  // Until the link is down (or the request fails).
  }
  GrpcServerLink* link = pending_.get();
  service_.RequestAttach(&link->context_, &link->stream_, cq_.get(), cq_.get(), &attached_op_);
}

void AgentService::OnAttached(bool ok) {
  std::shared_ptr<GrpcServerLink> link = std::move(pending_);
  if (!ok) {
    // The server shut down before the parent attached.
    absl::MutexLock lock(&link->mu_);
    link->self_.reset();
    return;
  }
  on_attach_(std::move(link));
}

bool GrpcClientLink::WriteOutstanding() {
  absl::MutexLock lock(&mu_);
  return writing_;
}

bool GrpcServerLink::WriteOutstanding() {
  absl::MutexLock lock(&mu_);
  return writing_;
}

}  // namespace grove
