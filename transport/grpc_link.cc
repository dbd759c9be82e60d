#include "transport/grpc_link.h"

#include <errno.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
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

void OutQueue::Push(v1::Envelope envelope) {
  // The envelope's bytes inside the batch: its tag, its length and itself.
  size_t body = envelope.ByteSizeLong();
  size_t size = 1 + google::protobuf::io::CodedOutputStream::VarintSize64(body) + body;
  queue_.emplace_back(std::move(envelope), size);
}

void OutQueue::Fill(v1::Batch* batch) {
  int64_t bytes = 0;
  while (!queue_.empty()) {
    auto& [envelope, size] = queue_.front();
    if (bytes > 0 && bytes + static_cast<int64_t>(size) > max_bytes_) break;
    bytes += static_cast<int64_t>(size);
    *batch->add_envelopes() = std::move(envelope);
    queue_.pop_front();
  }
}

// ---------------------------------------------------------------------------------------
// GrpcClientLink

GrpcClientLink::GrpcClientLink(std::string debug_name, int64_t max_message_bytes)
    : debug_name_(std::move(debug_name)),
      first_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      queue_(max_message_bytes) {}

GrpcClientLink::~GrpcClientLink() = default;

std::shared_ptr<GrpcClientLink> GrpcClientLink::Connect(UniqueFd fd, std::string debug_name,
                                                        int64_t max_message_bytes) {
  HoldCallbackQueue();
  std::shared_ptr<GrpcClientLink> link(
      new GrpcClientLink(std::move(debug_name), max_message_bytes));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(LinkReceiveLimit(max_message_bytes));
  args.SetMaxSendMessageSize(-1);
  link->channel_ = grpc::CreateCustomInsecureChannelFromFd("grove", fd.Release(), args);
  link->stub_ = v1::Router::NewStub(link->channel_);
  {
    absl::MutexLock lock(&link->mu_);
    link->self_ = link;
  }
  link->stub_->async()->Attach(&link->context_, link.get());
  link->StartRead(&link->in_);
  link->AddHold();
  link->StartCall();
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
  if (read_more) StartRead(&in_);
}

void GrpcClientLink::Send(v1::Envelope envelope) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_ || read_done_) return;
    queue_.Push(std::move(envelope));
    if (writing_) return;
    writing_ = true;
    queue_.Fill(&out_);
  }
  StartWrite(&out_);
}

void GrpcClientLink::Close(const absl::Status& reason) {
  {
    absl::MutexLock lock(&mu_);
    if (closed_ || done_) return;
    closed_ = true;
    close_reason_ = reason;
  }
  context_.TryCancel();
}

void GrpcClientLink::ReleaseHoldIfIdle() {
  if (read_done_ && !writing_ && !hold_released_) {
    hold_released_ = true;
    // RemoveHold may run OnDone inline, which takes mu_: release first.
    mu_.Unlock();
    RemoveHold();
    mu_.Lock();
  }
}

void GrpcClientLink::OnReadDone(bool ok) {
  LinkDelegate* delegate;
  {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      read_done_ = true;
      ReleaseHoldIfIdle();
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
  for (v1::Envelope& e : *in_.mutable_envelopes()) delegate->OnEnvelope(this, std::move(e));
  in_.Clear();
  StartRead(&in_);
}

void GrpcClientLink::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    out_.Clear();
    if (ok && !closed_ && !read_done_ && !queue_.empty()) {
      queue_.Fill(&out_);
    } else {
      writing_ = false;
      ReleaseHoldIfIdle();
      return;
    }
  }
  StartWrite(&out_);
}

void GrpcClientLink::OnDone(const grpc::Status& status) {
  LinkDelegate* delegate;
  std::shared_ptr<GrpcClientLink> self;
  absl::Status reason;
  {
    absl::MutexLock lock(&mu_);
    done_ = true;
    if (!close_reason_.ok() || closed_) {
      reason = close_reason_;
    } else if (status.ok()) {
      reason = absl::OkStatus();
    } else {
      reason = FromGrpcStatus(status);
      if (status.error_code() != grpc::StatusCode::UNAVAILABLE) {
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
    : debug_name_(std::move(debug_name)), queue_(max_message_bytes) {}

GrpcServerLink::~GrpcServerLink() = default;

void GrpcServerLink::Start(LinkDelegate* delegate) {
  {
    absl::MutexLock lock(&mu_);
    delegate_ = delegate;
    if (finished_) return;
  }
  StartRead(&in_);
}

void GrpcServerLink::Send(v1::Envelope envelope) {
  {
    absl::MutexLock lock(&mu_);
    if (closing_ || finished_) return;
    queue_.Push(std::move(envelope));
    if (writing_) return;
    writing_ = true;
    queue_.Fill(&out_);
  }
  StartWrite(&out_);
}

void GrpcServerLink::Close(const absl::Status& reason) {
  absl::MutexLock lock(&mu_);
  if (closing_) return;
  closing_ = true;
  down_reason_ = reason;
  MaybeFinish();
}

void GrpcServerLink::MaybeFinish() {
  if (finished_ || writing_ || !(closing_ || read_done_)) return;
  finished_ = true;
  mu_.Unlock();
  Finish(grpc::Status::OK);
  mu_.Lock();
}

void GrpcServerLink::OnReadDone(bool ok) {
  LinkDelegate* delegate;
  {
    absl::MutexLock lock(&mu_);
    if (!ok) {
      read_done_ = true;
      if (down_reason_.ok()) down_reason_ = absl::UnavailableError("the parent closed the link");
      MaybeFinish();
      return;
    }
    delegate = delegate_;
  }
  for (v1::Envelope& e : *in_.mutable_envelopes()) delegate->OnEnvelope(this, std::move(e));
  in_.Clear();
  StartRead(&in_);
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
  StartWrite(&out_);
}

void GrpcServerLink::OnCancel() {
  absl::MutexLock lock(&mu_);
  read_done_ = true;
  if (down_reason_.ok()) down_reason_ = absl::UnavailableError("the parent link was cancelled");
  MaybeFinish();
}

void GrpcServerLink::OnDone() {
  LinkDelegate* delegate;
  absl::Status reason;
  std::shared_ptr<GrpcServerLink> self;
  {
    absl::MutexLock lock(&mu_);
    delegate = delegate_;
    reason = down_reason_;
    self = std::move(self_);
  }
  if (delegate != nullptr) delegate->OnLinkDown(this, reason);
}

// ---------------------------------------------------------------------------------------
// AgentService

namespace {

// Answers an Attach that is not the first with ALREADY_EXISTS.
class RefusedAttach : public grpc::ServerBidiReactor<v1::Batch, v1::Batch> {
 public:
  RefusedAttach() {
    Finish(grpc::Status(grpc::StatusCode::ALREADY_EXISTS, "this context is already attached"));
  }
  void OnDone() override { delete this; }
};

}  // namespace

AgentService::AgentService(std::string debug_name, int64_t max_message_bytes,
                           std::function<void(std::shared_ptr<GrpcServerLink>)> on_attach)
    : debug_name_(std::move(debug_name)),
      max_message_bytes_(max_message_bytes),
      on_attach_(std::move(on_attach)) {}

grpc::ServerBidiReactor<v1::Batch, v1::Batch>* AgentService::Attach(
    grpc::CallbackServerContext*) {
  {
    absl::MutexLock lock(&mu_);
    if (attached_) return new RefusedAttach();
    attached_ = true;
  }
  auto link = std::make_shared<GrpcServerLink>(debug_name_, max_message_bytes_);
  {
    absl::MutexLock lock(&link->mu_);
    link->self_ = link;
  }
  on_attach_(link);
  return link.get();
}

}  // namespace grove
