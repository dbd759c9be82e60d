#include "router/router.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/printable.h"
#include "common/status_util.h"
#include "glog/logging.h"
#include "proto/builtins.pb.h"
#include "router/log_quota.h"

namespace grove {

// One child of this context and the subtree behind its link.
struct Router::Child {
  v1::ContextInfo info;
  std::shared_ptr<Link> link;
  std::unique_ptr<ChildHandle> handle;
  // Ids reached through this child, the child's own included. Guarded by Router::mu_.
  absl::flat_hash_set<uint64_t> routed;
  // Ids outside this subtree that contexts in it have called. Guarded by Router::mu_.
  absl::flat_hash_set<uint64_t> egress;
  // Log records from this subtree. Guarded by Router::mu_.
  LogQuota log_quota;
  // Calls from this subtree running here on workers. Guarded by Router::mu_.
  std::shared_ptr<int> running_calls = std::make_shared<int>(0);
  // Notified once OnLinkDown for this child has been handled.
  absl::Notification gone;
};

// A call this context made that has not completed. Fields after construction are guarded by
// Router::mu_.
struct Router::Pending {
  uint64_t dst = 0;
  // The link the call went out on (null: this context). Its reply and output are taken from
  // there only: a child cannot answer, in another context's name, a call that did not go
  // to its subtree.
  std::shared_ptr<Link> via;
  Done done;
  std::function<void(int, const std::string&)> on_output;
  uint64_t timer = 0;
  CancelSource* cancel = nullptr;
  uint64_t cancel_callback = 0;
  CancelSource* parent_cancel = nullptr;
  uint64_t parent_callback = 0;
};

namespace {

bool IsCall(const v1::Envelope& e) { return e.body_case() == v1::Envelope::kCall; }

absl::Time DeadlineOf(const CallOptions& options) {
  absl::Time deadline = options.deadline;
  if (options.timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, absl::Now() + options.timeout);
  }
  if (options.parent != nullptr) deadline = std::min(deadline, options.parent->deadline());
  return deadline;
}

}  // namespace

Router::Router(Options options)
    : options_(std::move(options)),
      self_(options_.self),
      ancestors_(options_.ancestors.begin(), options_.ancestors.end()),
      registry_(options_.gone_history),
      gone_(options_.gone_history),
      id_blocks_(kMaxIdBlocksPerContext) {
  RegisterBuiltins();
  for (const Component& attach : options_.components) attach(*this, builtins_);
}

void Router::SetAttachment(const void* key, std::shared_ptr<void> value) {
  CHECK(attachments_.emplace(key, std::move(value)).second) << "attachment set twice";
}

std::shared_ptr<void> Router::attachment(const void* key) const {
  auto it = attachments_.find(key);
  return it == attachments_.end() ? nullptr : it->second;
}

Router::~Router() {
  absl::MutexLock lock(&mu_);
  if (!children_.empty()) {
    LOG(DFATAL) << "Router of context " << self_.name() << " destroyed with "
                << children_.size() << " children linked";
  }
  if (!shut_down_) {
    LOG(DFATAL) << "Router of context " << self_.name() << " destroyed without Shutdown()";
  }
}

void Router::AddLauncher(const std::string& method, Launcher* launcher) {
  absl::MutexLock lock(&mu_);
  launchers_[method] = launcher;
}

void Router::SetParentLink(std::shared_ptr<Link> link) {
  {
    absl::MutexLock lock(&mu_);
    parent_ = link;
  }
  link->Start(this);
}

void Router::SetShutdownHandler(std::function<void(const absl::Status&)> handler) {
  absl::MutexLock lock(&mu_);
  shutdown_handler_ = std::move(handler);
}

void Router::SetLogSink(LogSink sink) {
  absl::MutexLock lock(&mu_);
  log_sink_ = std::move(sink);
}

size_t Router::pending_calls() const {
  absl::MutexLock lock(&mu_);
  return pending_.size();
}

std::string Router::DescribeContext(uint64_t id) const {
  if (id == self_.id()) return absl::StrCat(self_.name(), " (id ", id, ")");
  std::optional<ContextRecord> record = registry_.Find(ContextId(id));
  if (record) return absl::StrCat(record->name, " (id ", id, ")");
  return absl::StrCat("context ", id);
}

Router::Route Router::RouteTo(uint64_t dst) {
  Route route;
  if (dst == self_.id()) {
    route.kind = Route::kLocal;
  } else if (auto it = routes_.find(dst); it != routes_.end()) {
    route.kind = Route::kChild;
    route.link = it->second->link;
  } else if (parent_ != nullptr && !parent_down_) {
    route.kind = Route::kParent;
    route.link = parent_;
  }
  return route;
}

void Router::Send(Route route, v1::Envelope envelope) {
  switch (route.kind) {
    case Route::kLocal:
      HandleLocal(nullptr, std::move(envelope));
      break;
    case Route::kChild:
    case Route::kParent:
      route.link->Send(std::move(envelope));
      break;
    case Route::kNone:
      VLOG(1) << "context " << self_.name() << ": dropped envelope for " << envelope.dst()
              << ": no route";
      break;
  }
}

void Router::SendToParent(v1::Envelope envelope) {
  std::shared_ptr<Link> parent;
  {
    absl::MutexLock lock(&mu_);
    if (!parent_down_) parent = parent_;
  }
  if (parent != nullptr) parent->Send(std::move(envelope));
}

// ---------------------------------------------------------------------------------------
// Calls made here.

void Router::StartCall(ContextId dst, const std::string& function,
                       const std::string& argument_type, std::string argument,
                       const CallOptions& options, Done done) {
  if (static_cast<int64_t>(argument.size()) > options_.max_message_bytes) {
    done(absl::ResourceExhaustedError(
        absl::StrCat("the argument of '", function, "' is ", argument.size(),
                     " bytes, over the limit of ", options_.max_message_bytes)));
    return;
  }
  absl::Time deadline = DeadlineOf(options);
  if (deadline <= absl::Now()) {
    done(absl::DeadlineExceededError(
        absl::StrCat("deadline passed before calling '", function, "' in ",
                     DescribeContext(dst.value()))));
    return;
  }
  const uint64_t id = next_call_id_.fetch_add(1, std::memory_order_relaxed);
  auto pending = std::make_shared<Pending>();
  pending->dst = dst.value();
  pending->done = std::move(done);
  pending->on_output = options.on_output;

  v1::Envelope envelope;
  envelope.set_dst(dst.value());
  envelope.set_src(self_.id());
  v1::Call* call = envelope.mutable_call();
  call->set_id(id);
  call->set_function(function);
  call->set_argument_type(argument_type);
  *call->mutable_argument() = std::move(argument);
  if (deadline != absl::InfiniteFuture()) {
    call->set_timeout_us(std::max<int64_t>(1, absl::ToInt64Microseconds(deadline - absl::Now())));
  }

  absl::Status refused;
  Route route;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      refused = absl::UnavailableError(
          absl::StrCat("context ", self_.name(), " is shutting down"));
    } else if (const std::string* gone = gone_.Reason(dst.value()); gone != nullptr) {
      refused = absl::UnavailableError(
          absl::StrCat(DescribeContext(dst.value()), " is gone: ", *gone));
    } else {
      route = RouteTo(dst.value());
      if (route.kind == Route::kNone) {
        refused = absl::NotFoundError(absl::StrCat("no context with id ", dst.value(),
                                                   " (looked up in ", self_.name(), ")"));
      } else {
        pending->via = route.link;
        pending_.emplace(id, pending);
      }
    }
  }
  if (!refused.ok()) {
    pending->done(refused);
    return;
  }
  // Deadline and cancellation are armed after the call is registered; each runs `abort`,
  // which is a no-op once the call has completed.
  auto abort = [this, id, dst](absl::Status status) {
    Route route;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;
      route = RouteTo(dst.value());
    }
    const bool deadline_exceeded = absl::IsDeadlineExceeded(status);
    Complete(id, std::move(status));
    v1::Envelope cancel;
    cancel.set_dst(dst.value());
    cancel.set_src(self_.id());
    cancel.mutable_cancel()->set_id(id);
    cancel.mutable_cancel()->set_deadline_exceeded(deadline_exceeded);
    Send(std::move(route), std::move(cancel));
  };
  uint64_t timer = 0;
  if (deadline != absl::InfiniteFuture()) {
    timer = timer_.Schedule(deadline, [abort, function, this, dst] {
      abort(absl::DeadlineExceededError(absl::StrCat(
          "deadline exceeded calling '", function, "' in ", DescribeContext(dst.value()))));
    });
  }
  uint64_t cancel_callback = 0, parent_callback = 0;
  auto cancelled = [abort, function, deadline](bool parent_deadline_exceeded) {
    // A parent cancelled by its own deadline passes that on as a deadline, not a cancel
    // (the parent's timer may fire a hair before this call's clock reaches the deadline).
    if (parent_deadline_exceeded || absl::Now() >= deadline) {
      abort(absl::DeadlineExceededError(
          absl::StrCat("deadline exceeded calling '", function, "'")));
    } else {
      abort(absl::CancelledError(absl::StrCat("call to '", function, "' cancelled")));
    }
  };
  if (options.cancel != nullptr) {
    cancel_callback = options.cancel->AddCallback([cancelled] { cancelled(false); });
  }
  if (CallContext* parent = options.parent; parent != nullptr) {
    // Runs only while registered, so while the parent is alive.
    parent_callback = parent->cancel_source().AddCallback(
        [cancelled, parent] { cancelled(parent->deadline_exceeded()); });
  }
  bool still_pending;
  {
    absl::MutexLock lock(&mu_);
    still_pending = pending_.contains(id);
    if (still_pending) {
      pending->timer = timer;
      pending->cancel = options.cancel;
      pending->cancel_callback = cancel_callback;
      pending->parent_cancel = options.parent ? &options.parent->cancel_source() : nullptr;
      pending->parent_callback = parent_callback;
    }
  }
  if (!still_pending) {
    // Completed (or aborted) meanwhile: undo what Complete could not see.
    if (timer) timer_.Cancel(timer);
    if (cancel_callback) options.cancel->RemoveCallback(cancel_callback);
    if (parent_callback) options.parent->cancel_source().RemoveCallback(parent_callback);
    return;
  }
  Send(std::move(route), std::move(envelope));
}

void Router::Complete(uint64_t call_id, absl::StatusOr<std::string> result) {
  std::shared_ptr<Pending> p;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(call_id);
    if (it == pending_.end()) return;  // Already completed (reply after a deadline, say).
    p = std::move(it->second);
    pending_.erase(it);
  }
  if (p->timer) timer_.Cancel(p->timer);
  if (p->cancel_callback) p->cancel->RemoveCallback(p->cancel_callback);
  if (p->parent_callback) p->parent_cancel->RemoveCallback(p->parent_callback);
  p->done(std::move(result));
}

void Router::HandleReply(Link* from, const v1::Reply& reply) {
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(reply.id());
    if (it == pending_.end()) return;  // Already completed (reply after a deadline, say).
    if (it->second->via.get() != from) {
      LOG(WARNING) << "context " << self_.name() << ": dropped a reply to call " << reply.id()
                   << " that came from " << (from ? from->DebugName() : "this context")
                   << ", not from where the call went";
      return;
    }
  }
  if (reply.code() == 0) {
    Complete(reply.id(), reply.result());
  } else {
    Complete(reply.id(),
             RemoteError(StatusCodeFromWire(reply.code()), reply.message(), reply.origin()));
  }
}

void Router::HandleOutput(Link* from, v1::Output* output) {
  std::shared_ptr<Pending> p;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(output->id());
    if (it == pending_.end() || it->second->via.get() != from) return;
    p = it->second;
  }
  if (p->on_output) p->on_output(output->stream(), output->data());
}

void Router::SendOutput(ContextId caller, uint64_t call_id, int stream, std::string data) {
  v1::Envelope envelope;
  envelope.set_dst(caller.value());
  envelope.set_src(self_.id());
  v1::Output* output = envelope.mutable_output();
  output->set_id(call_id);
  output->set_stream(stream);
  *output->mutable_data() = std::move(data);
  Route route;
  {
    absl::MutexLock lock(&mu_);
    route = RouteTo(caller.value());
  }
  Send(std::move(route), std::move(envelope));
}

void Router::SendLog(v1::LogRecord record) {
  if (is_master()) {
    LogSink sink;
    {
      absl::MutexLock lock(&mu_);
      sink = log_sink_;
    }
    if (sink) sink(RecordFromInfo(self_), record);
    return;
  }
  v1::Envelope envelope;
  envelope.set_dst(0);
  envelope.set_src(self_.id());
  *envelope.mutable_log() = std::move(record);
  SendToParent(std::move(envelope));
}

// ---------------------------------------------------------------------------------------
// Envelopes arriving on links.

void Router::OnEnvelope(Link* link, v1::Envelope envelope) {
  const uint64_t src = envelope.src();
  const uint64_t dst = envelope.dst();
  const auto body = envelope.body_case();
  bool from_parent = false;
  bool spoofed = false;
  Route route;
  int64_t logs_dropped = 0;
  std::string logs_from;
  std::shared_ptr<Link> over_quota;  // A child link whose log record was dropped.
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Child> from_child;
    if (parent_ != nullptr && link == parent_.get()) {
      from_parent = true;
      spoofed = src == self_.id() || routes_.contains(src);
    } else if (auto it = children_.find(link); it != children_.end()) {
      from_child = it->second;
      spoofed = src != from_child->info.id() && !from_child->routed.contains(src);
    } else {
      return;  // A link that is already down.
    }
    if (!spoofed && body == v1::Envelope::kLog && from_child != nullptr) {
      const absl::Time now = absl::Now();
      if (!from_child->log_quota.Take(now, envelope.log().text().size())) {
        over_quota = from_child->link;
      } else {
        logs_dropped = from_child->log_quota.TakeDropped(now);
        if (logs_dropped > 0) logs_from = from_child->info.name();
      }
    }
    if (!spoofed && body != v1::Envelope::kAdded && body != v1::Envelope::kRemoved &&
        body != v1::Envelope::kRefused && body != v1::Envelope::kGranted) {
      route = RouteTo(dst);
      if (from_child != nullptr && body == v1::Envelope::kCall &&
          !from_child->routed.contains(dst)) {
        from_child->egress.insert(dst);
      }
    }
  }
  if (over_quota != nullptr) {
    // Read no more from it for a moment: the flood waits in its own context, not here.
    over_quota->PauseReading(kLogPause);
    return;
  }
  if (spoofed) {
    LOG(WARNING) << "context " << self_.name() << ": dropped an envelope from "
                 << link->DebugName() << " whose source id " << src
                 << " is not reachable through that link";
    return;
  }
  if (logs_dropped > 0) {
    v1::LogRecord notice;
    notice.set_kind(v1::LogRecord::GLOG);
    notice.set_severity(1);  // WARNING
    notice.set_text(absl::StrCat("context ", self_.name(), " dropped ", logs_dropped,
                                 " log records from the subtree of ", logs_from, ": over ",
                                 kLogRecordsPerSecond, " records or ",
                                 kLogBytesPerSecond / (1 << 20), " MiB a second"));
    SendLog(std::move(notice));
  }
  switch (body) {
    case v1::Envelope::kAdded:
      HandleAdded(link, std::move(envelope));
      return;
    case v1::Envelope::kRemoved:
      HandleRemoved(link, std::move(envelope));
      return;
    case v1::Envelope::kRefused:
      if (from_parent) HandleRefused(std::move(envelope));
      return;
    case v1::Envelope::kGranted:
      if (from_parent) HandleGranted(std::move(envelope));
      return;
    case v1::Envelope::kShutdown:
      if (from_parent) {
        RequestShutdown(absl::CancelledError(
            absl::StrCat("context ", self_.name(), " was asked to shut down")));
      }
      return;
    case v1::Envelope::kHello:
    case v1::Envelope::BODY_NOT_SET:
      LOG(WARNING) << "context " << self_.name() << ": dropped an unexpected envelope ("
                   << body << ") from " << link->DebugName();
      return;
    default:
      break;
  }
  if (route.kind == Route::kLocal) {
    HandleLocal(link, std::move(envelope));
    return;
  }
  if (route.kind == Route::kChild && route.link.get() != link) {
    route.link->Send(std::move(envelope));
    return;
  }
  if (route.kind == Route::kParent && !from_parent) {
    route.link->Send(std::move(envelope));
    return;
  }
  // No route: answer a call, drop anything else (a reply or cancel for a gone caller).
  if (IsCall(envelope)) {
    std::string why;
    {
      absl::MutexLock lock(&mu_);
      if (const std::string* gone = gone_.Reason(dst); gone != nullptr) why = *gone;
    }
    absl::Status status =
        why.empty() ? absl::UnavailableError(absl::StrCat("no route to context ", dst,
                                                          " at context ", self_.name(),
                                                          " (id ", self_.id(), ")"))
                    : absl::UnavailableError(absl::StrCat(DescribeContext(dst),
                                                          " is gone: ", why));
    SendReply(src, envelope.call().id(), status, self_.name());
  }
}

void Router::HandleLocal(Link* from, v1::Envelope envelope) {
  switch (envelope.body_case()) {
    case v1::Envelope::kCall:
      HandleCall(from, std::move(envelope));
      break;
    case v1::Envelope::kReply:
      HandleReply(from, envelope.reply());
      break;
    case v1::Envelope::kCancel:
      HandleCancel(envelope.src(), envelope.cancel());
      break;
    case v1::Envelope::kOutput:
      HandleOutput(from, envelope.mutable_output());
      break;
    case v1::Envelope::kLog: {
      LogSink sink;
      {
        absl::MutexLock lock(&mu_);
        sink = log_sink_;
      }
      if (!sink) break;
      std::optional<ContextRecord> record = registry_.Find(ContextId(envelope.src()));
      if (!record) {
        record.emplace();
        record->id = ContextId(envelope.src());
        record->name = absl::StrCat("context ", envelope.src());
      }
      sink(*record, envelope.log());
      break;
    }
    default:
      VLOG(1) << "context " << self_.name() << ": ignored envelope " << envelope.body_case();
      break;
  }
}

bool Router::Allowed(uint64_t src, CallableBy callable_by) const {
  if (src == self_.id() || ancestors_.contains(src)) return true;
  switch (callable_by) {
    case CallableBy::kAny:
      return true;
    case CallableBy::kDescendants: {
      absl::MutexLock lock(&mu_);
      return routes_.contains(src);
    }
    case CallableBy::kAncestors:
      return false;
  }
  return false;
}

const Function* Router::FindFunction(const std::string& name) const {
  const Function* function = builtins_.Find(name);
  if (function == nullptr && options_.functions != nullptr) function = options_.functions->Find(name);
  return function;
}

void Router::HandleCall(Link* from, v1::Envelope envelope) {
  const uint64_t src = envelope.src();
  v1::Call* call = envelope.mutable_call();
  const Function* function = builtins_.Find(call->function());
  if (function == nullptr && options_.functions != nullptr) {
    function = options_.functions->Find(call->function());
  }
  absl::Status refused;
  if (function == nullptr) {
    refused = absl::NotFoundError(
        absl::StrCat("no function '", call->function(), "' in context ", self_.name()));
  } else if (!Allowed(src, function->options.callable_by)) {
    refused = absl::PermissionDeniedError(absl::StrCat(
        DescribeContext(src), " may not call '", call->function(), "' in context ",
        self_.name(), ": only its ancestors may, unless it is registered as callable by ",
        function->options.callable_by == CallableBy::kAncestors ? "descendants or any context"
                                                                : "any context"));
  } else if (call->argument_type() != function->argument_type) {
    refused = absl::InvalidArgumentError(
        absl::StrCat("function '", call->function(), "' in context ", self_.name(), " takes ",
                     function->argument_type, ", not ", call->argument_type()));
  }
  if (!refused.ok()) {
    SendReply(src, call->id(), refused, self_.name());
    return;
  }
  absl::Time deadline = call->timeout_us() > 0
                            ? absl::Now() + absl::Microseconds(call->timeout_us())
                            : absl::InfiniteFuture();
  auto context = std::make_shared<CallContext>(this, ContextId(src), call->id(), deadline);
  std::shared_ptr<int> quota;  // Counts this call among its link's, if it takes a worker.
  std::string link_name;
  std::optional<int> over_quota;  // The calls running for its link, if already the most.
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Child> from_child;
    if (from != nullptr && !function->options.run_inline) {
      if (from == parent_.get()) {
        quota = parent_running_calls_;
      } else if (auto it = children_.find(from); it != children_.end()) {
        from_child = it->second;
        quota = from_child->running_calls;
      }
    }
    if (shutting_down_) {
      refused = absl::UnavailableError(
          absl::StrCat("context ", self_.name(), " is shutting down"));
    } else if (quota != nullptr && *quota >= options_.max_running_calls_per_link) {
      over_quota = *quota;
      // Named on this path only: the others run for every call.
      link_name = from_child != nullptr ? absl::StrCat("the link to ", from_child->info.name())
                                        : "its parent's link";
    } else {
      if (quota != nullptr) ++*quota;
      incoming_[{src, call->id()}] = context;
    }
  }
  if (over_quota.has_value()) {
    refused = absl::ResourceExhaustedError(absl::StrCat(
        "context ", self_.name(), " already runs ", *over_quota, " calls that came over ",
        link_name, ", the most one link may: '", call->function(), "' from ",
        DescribeContext(src), " refused"));
  }
  if (!refused.ok()) {
    SendReply(src, call->id(), refused, self_.name());
    return;
  }
  if (function->options.run_inline) {
    RunCall(src, std::move(*call), function, std::move(context), nullptr);
    return;
  }
  auto shared_call = std::make_shared<v1::Call>(std::move(*call));
  bool posted = workers_.Post([this, src, shared_call, function, context, quota] {
    RunCall(src, std::move(*shared_call), function, context, quota);
  });
  if (!posted) {
    {
      absl::MutexLock lock(&mu_);
      incoming_.erase({src, shared_call->id()});
      if (quota != nullptr) --*quota;
    }
    SendReply(src, shared_call->id(),
              absl::UnavailableError(absl::StrCat("context ", self_.name(), " is shutting down")),
              self_.name());
  }
}

void Router::RunCall(uint64_t src, v1::Call call, const Function* function,
                     std::shared_ptr<CallContext> context, std::shared_ptr<int> quota) {
  uint64_t timer = 0;
  if (context->deadline() != absl::InfiniteFuture()) {
    std::weak_ptr<CallContext> weak = context;
    timer = timer_.Schedule(context->deadline(), [weak] {
      if (auto c = weak.lock()) {
        c->MarkDeadlineExceeded();
        c->cancel_source().Cancel();
      }
    });
  }
  absl::StatusOr<std::string> result = function->invoke(call.argument(), *context);
  if (timer) timer_.Cancel(timer);
  if (!result.ok() && context->cancelled() &&
      (context->deadline_exceeded() || absl::Now() >= context->deadline())) {
    result = absl::DeadlineExceededError(
        absl::StrCat("'", call.function(), "' ran past its deadline in ", self_.name()));
  }
  {
    absl::MutexLock lock(&mu_);
    incoming_.erase({src, call.id()});
    if (quota != nullptr) --*quota;
  }
  if (result.ok() && static_cast<int64_t>(result->size()) > options_.max_message_bytes) {
    result = absl::ResourceExhaustedError(
        absl::StrCat("the result of '", call.function(), "' is ", result->size(),
                     " bytes, over the limit of ", options_.max_message_bytes));
  }
  SendReply(src, call.id(), std::move(result), self_.name());
}

void Router::SendReply(uint64_t dst, uint64_t call_id, const absl::StatusOr<std::string>& result,
                       const std::string& origin) {
  v1::Envelope envelope;
  envelope.set_dst(dst);
  envelope.set_src(self_.id());
  v1::Reply* reply = envelope.mutable_reply();
  reply->set_id(call_id);
  if (result.ok()) {
    reply->set_result(std::move(*result));
  } else {
    reply->set_code(static_cast<int>(result.status().code()));
    // A status that already names its origin (a nested call's error) keeps it.
    std::string from = OriginOf(result.status());
    reply->set_message(std::string(result.status().message()));
    reply->set_origin(from.empty() ? origin : from);
    if (!from.empty()) {
      // Strip the " [in context X]" suffix RemoteError added; the caller adds it again.
      std::string suffix = absl::StrCat(" [in context ", from, "]");
      const std::string& m = reply->message();
      if (m.size() >= suffix.size() && m.compare(m.size() - suffix.size(), suffix.size(),
                                                 suffix) == 0) {
        reply->set_message(m.substr(0, m.size() - suffix.size()));
      }
    }
  }
  Route route;
  {
    absl::MutexLock lock(&mu_);
    route = RouteTo(dst);
  }
  Send(std::move(route), std::move(envelope));
}

void Router::HandleCancel(uint64_t src, const v1::Cancel& cancel) {
  std::shared_ptr<CallContext> context;
  {
    absl::MutexLock lock(&mu_);
    auto it = incoming_.find({src, cancel.id()});
    if (it == incoming_.end()) return;
    context = it->second;
  }
  if (cancel.deadline_exceeded()) context->MarkDeadlineExceeded();
  context->cancel_source().Cancel();
}

// ---------------------------------------------------------------------------------------
// The tree: contexts added and removed.

void Router::HandleAdded(Link* from, v1::Envelope envelope) {
  const v1::ContextInfo& info = envelope.added().info();
  std::shared_ptr<Link> parent;
  std::string refused;
  {
    absl::MutexLock lock(&mu_);
    auto it = children_.find(from);
    if (it == children_.end()) {
      refused = "it did not come from a child link";
    } else if (info.name().empty() || !IsPlainText(info.name())) {
      refused = absl::StrCat("its name '", Printable(info.name()),
                             "' is not one line of UTF-8 text without controls");
    } else if (info.id() == self_.id() || routes_.contains(info.id()) ||
               gone_.contains(info.id()) || ancestors_.contains(info.id())) {
      refused = absl::StrCat("id ", info.id(), " is already in use");
    } else if (is_master() && !id_blocks_.HandedOut(info.id())) {
      refused = absl::StrCat("id ", info.id(), " was never handed out by the master");
    } else if (!id_blocks_.Covers(info.id(), info.parent())) {
      refused = absl::StrCat("id ", info.id(), " is not in a block handed to its parent ",
                             info.parent());
    } else if (info.parent() != it->second->info.id() &&
               !it->second->routed.contains(info.parent())) {
      refused = absl::StrCat("its parent ", info.parent(), " is not behind that link");
    } else if (it->second->routed.size() >= options_.max_contexts_per_link) {
      refused = absl::StrCat("the link to ", it->second->info.name(), " already carries ",
                             it->second->routed.size(), " contexts, the most one link may");
    } else if (!id_blocks_.Take(info.id(), info.parent())) {
      refused = absl::StrCat("id ", info.id(), " was used before");
    } else {
      routes_[info.id()] = it->second;
      it->second->routed.insert(info.id());
      if (!parent_down_) parent = parent_;
    }
  }
  if (!refused.empty()) {
    LOG(WARNING) << "context " << self_.name() << ": ignored ContextAdded for "
                 << Printable(info.name()) << " (id " << info.id() << ") from "
                 << from->DebugName()
                 << ": " << refused;
    // Contexts below that took the route on the way up drop it again.
    v1::Envelope notice;
    notice.set_src(self_.id());
    notice.mutable_refused()->add_ids(info.id());
    notice.mutable_refused()->set_reason(refused);
    std::shared_ptr<Link> link;
    {
      absl::MutexLock lock(&mu_);
      if (auto it = children_.find(from); it != children_.end()) {
        notice.set_dst(it->second->info.id());
        link = it->second->link;
      }
    }
    if (link != nullptr) link->Send(std::move(notice));
    return;
  }
  registry_.Add(info);
  if (parent != nullptr) parent->Send(std::move(envelope));
}

absl::StatusOr<v1::IdBlockReply> Router::GrantIdBlock(uint64_t owner, uint32_t count) {
  v1::Envelope granted;
  granted.set_src(self_.id());
  granted.set_dst(owner);
  granted.mutable_granted()->set_count(count);
  {
    absl::MutexLock lock(&mu_);
    // Blocks go with their owner (RemoveContexts): none for one already gone.
    if (!routes_.contains(owner)) {
      return absl::FailedPreconditionError(absl::StrCat("context ", owner, " is not in the tree"));
    }
    granted.mutable_granted()->set_first(id_blocks_.GrantFromCounter(count));
  }
  v1::IdBlockReply reply;
  reply.set_first(granted.granted().first());
  reply.set_count(count);
  // Recorded here, and told to the contexts between (ahead of the reply, on the same links).
  HandleGranted(std::move(granted));
  return reply;
}

void Router::HandleGranted(v1::Envelope envelope) {
  const uint64_t owner = envelope.dst();
  const v1::IdBlockGranted& block = envelope.granted();
  std::shared_ptr<Link> down;
  {
    absl::MutexLock lock(&mu_);
    auto route = routes_.find(owner);
    // Not for this context itself, for one gone since, or malformed.
    if (route == routes_.end() || !id_blocks_.Record(owner, block.first(), block.count())) return;
    if (route->second->info.id() != owner) down = route->second->link;
  }
  if (down != nullptr) down->Send(std::move(envelope));
}

void Router::HandleRefused(v1::Envelope envelope) {
  // Per child link, the ids of the notice that were routed through it.
  absl::flat_hash_map<std::shared_ptr<Link>, v1::Envelope> down;
  std::vector<uint64_t> forgotten;
  {
    absl::MutexLock lock(&mu_);
    for (uint64_t id : envelope.refused().ids()) {
      auto route = routes_.find(id);
      if (route == routes_.end()) continue;
      std::shared_ptr<Child> child = route->second;
      if (child->info.id() == id) continue;  // A child of ours: its own link says otherwise.
      routes_.erase(route);
      child->routed.erase(id);
      forgotten.push_back(id);
      v1::Envelope& notice = down[child->link];
      notice.set_src(self_.id());
      notice.set_dst(child->info.id());
      notice.mutable_refused()->add_ids(id);
      notice.mutable_refused()->set_reason(envelope.refused().reason());
    }
  }
  for (uint64_t id : forgotten) {
    LOG(WARNING) << "context " << self_.name() << ": dropped context id " << id
                 << ", refused above: " << envelope.refused().reason();
    registry_.Forget(ContextId(id));
  }
  for (auto& [link, notice] : down) link->Send(std::move(notice));
}

void Router::HandleRemoved(Link* from, v1::Envelope envelope) {
  std::vector<uint64_t> ids(envelope.removed().ids().begin(), envelope.removed().ids().end());
  std::shared_ptr<Child> child;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = children_.find(from); it != children_.end()) {
      child = it->second;
      // A child may only report contexts behind itself (not itself: that is OnLinkDown's).
      ids.erase(std::remove_if(ids.begin(), ids.end(),
                               [&](uint64_t id) {
                                 return id == child->info.id() || !child->routed.contains(id);
                               }),
                ids.end());
    }
  }
  RemoveContexts(child, std::move(ids), envelope.removed().reason());
}

void Router::RemoveContexts(const std::shared_ptr<Child>& child, std::vector<uint64_t> ids,
                            const std::string& reason) {
  if (ids.empty()) return;
  std::vector<uint64_t> failed;
  std::vector<std::shared_ptr<CallContext>> orphaned;
  std::vector<std::shared_ptr<Link>> tell;
  std::shared_ptr<Link> parent;
  {
    absl::MutexLock lock(&mu_);
    if (child != nullptr) {
      for (uint64_t id : ids) {
        routes_.erase(id);
        child->routed.erase(id);
        gone_.Mark(id, reason);
        id_blocks_.DropOwner(id);
      }
      if (!parent_down_) parent = parent_;
    } else {
      // A notice from the parent: never about our own subtree.
      ids.erase(std::remove_if(ids.begin(), ids.end(),
                               [&](uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                                 return id == self_.id() || routes_.contains(id);
                               }),
                ids.end());
      for (uint64_t id : ids) gone_.Mark(id, reason);
    }
    absl::flat_hash_set<uint64_t> lost(ids.begin(), ids.end());
    for (const auto& [id, p] : pending_) {
      if (lost.contains(p->dst)) failed.push_back(id);
    }
    for (const auto& [key, context] : incoming_) {
      if (lost.contains(key.first)) orphaned.push_back(context);
    }
    for (const auto& [link, c] : children_) {
      if (c == child) continue;
      bool talked = false;
      for (uint64_t id : ids) talked |= c->egress.erase(id) > 0;
      if (talked) tell.push_back(c->link);
    }
  }
  if (ids.empty()) return;
  if (child != nullptr) registry_.MarkGone(ids, reason);
  for (uint64_t id : failed) {
    uint64_t dst = 0;
    {
      absl::MutexLock lock(&mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) continue;
      dst = it->second->dst;
    }
    Complete(id, absl::UnavailableError(absl::StrCat("call to ", DescribeContext(dst),
                                                     " failed: ", reason)));
  }
  for (const auto& context : orphaned) context->cancel_source().Cancel();
  v1::Envelope notice;
  notice.set_src(self_.id());
  v1::ContextRemoved* removed = notice.mutable_removed();
  for (uint64_t id : ids) removed->add_ids(id);
  removed->set_reason(reason);
  for (const auto& link : tell) link->Send(notice);
  if (parent != nullptr) parent->Send(std::move(notice));
}

void Router::OnLinkStalled(Link* link, const absl::Status& why) {
  std::shared_ptr<Child> child;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = children_.find(link); it != children_.end()) child = it->second;
  }
  if (child == nullptr || child->handle == nullptr) return;
  LOG(WARNING) << "context " << self_.name() << ": stopping child " << child->info.name()
               << ": " << why;
  StopInBackground(child);
}

void Router::StopInBackground(const std::shared_ptr<Child>& child) {
  // StopChild may be waiting for the same process: Stop is idempotent.
  workers_.Post([child, grace = options_.stop_grace] { child->handle->Stop(grace); });
}

void Router::OnLinkDown(Link* link, const absl::Status& reason) {
  std::shared_ptr<Child> child;
  std::vector<uint64_t> pending_up;
  {
    absl::MutexLock lock(&mu_);
    if (parent_ != nullptr && link == parent_.get()) {
      parent_down_ = true;
      for (const auto& [id, p] : pending_) {
        if (!routes_.contains(p->dst) && p->dst != self_.id()) pending_up.push_back(id);
      }
    } else if (auto it = children_.find(link); it != children_.end()) {
      child = it->second;
      children_.erase(it);
    } else {
      return;
    }
  }
  if (child == nullptr) {
    // The parent is gone: nothing above can answer any more, and this context must end.
    std::string why = absl::StrCat("context ", self_.name(), " lost its parent link: ",
                                   reason.ok() ? "closed" : std::string(reason.message()));
    for (uint64_t id : pending_up) Complete(id, absl::UnavailableError(why));
    RequestShutdown(absl::UnavailableError(why));
    absl::MutexLock lock(&mu_);
    parent_link_done_ = true;
    return;
  }
  VLOG(1) << "context " << self_.name() << ": link to child " << child->info.name()
          << " down: " << reason;
  std::string how = child->handle ? child->handle->PollExit() : "";
  if (reason.code() == absl::StatusCode::kResourceExhausted) {
    // The link gave up on the child (OnLinkStalled), which was then stopped.
    how = how.empty() ? std::string(reason.message()) : absl::StrCat(reason.message(), "; ", how);
  } else if (how.empty()) {
    how = reason.ok() ? "its link closed"
                      : absl::StrCat("its link failed: ", reason.message());
  }
  std::string why = absl::StrCat("lost context ", child->info.name(), " (id ",
                                 child->info.id(), "): ", how);
  std::vector<uint64_t> ids;
  {
    absl::MutexLock lock(&mu_);
    ids.assign(child->routed.begin(), child->routed.end());
  }
  RemoveContexts(child, std::move(ids), why);
  if (child->handle != nullptr) StopInBackground(child);  // And reaps it.
  child->gone.Notify();
  // The last touch of `this` for this link: Shutdown may return as soon as the count is 0.
  absl::MutexLock lock(&mu_);
  --live_child_links_;
}

// ---------------------------------------------------------------------------------------
// Children.

absl::StatusOr<ContextId> Router::AllocateId() {
  {
    absl::MutexLock lock(&mu_);
    if (std::optional<uint64_t> id = id_blocks_.NextLocal(is_master())) return ContextId(*id);
  }
  absl::MutexLock block_lock(&id_block_mu_);
  {
    absl::MutexLock lock(&mu_);
    if (std::optional<uint64_t> id = id_blocks_.NextLocal(false)) return ContextId(*id);
  }
  v1::IdBlockRequest request;
  request.set_count(1000);
  absl::Notification done;
  absl::StatusOr<std::string> reply;
  CallOptions options;
  options.timeout = absl::Seconds(30);
  StartCall(kMasterId, "grove.id_block", v1::IdBlockRequest::descriptor()->full_name(),
            request.SerializeAsString(), options, [&](absl::StatusOr<std::string> r) {
              reply = std::move(r);
              done.Notify();
            });
  done.WaitForNotification();
  if (!reply.ok()) return Annotate(reply.status(), "cannot get context ids from the master");
  v1::IdBlockReply block;
  if (!block.ParseFromString(*reply) || block.count() == 0) {
    return absl::InternalError("the master sent a malformed id block");
  }
  absl::MutexLock lock(&mu_);
  id_blocks_.SetLocalBlock(block.first(), block.count());
  return ContextId(*id_blocks_.NextLocal(false));
}

std::string Router::DefaultName(const Hop& hop) const {
  // Local children are "<method>.<pid>" (the child names itself). Others show the chain, as
  // "ssh.web1.sudo.root": the parent's name (unless it is the master), the method, the target.
  if (hop.method == "local" || hop.method == "fork") return "";
  std::string target = hop.target;
  if (target.empty() && (hop.method == "sudo" || hop.method == "su")) target = "root";
  for (char& c : target) {
    if (c == ' ' || c == '/') c = '_';
  }
  std::string name = absl::StrCat(hop.method, target.empty() ? "" : ".", target);
  return is_master() ? name : absl::StrCat(self_.name(), ".", name);
}

absl::StatusOr<v1::ContextInfo> Router::SpawnChild(const Hop& hop, absl::Time deadline) {
  const std::string name = hop.Get("name");
  Launcher* launcher = nullptr;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      return absl::UnavailableError(absl::StrCat("context ", self_.name(), " is shutting down"));
    }
    if (auto it = launchers_.find(hop.method); it != launchers_.end()) launcher = it->second;
    if (launcher != nullptr && !name.empty()) {
      std::optional<ContextRecord> existing = registry_.FindByName(name);
      if ((existing && existing->state == ContextState::kConnected) ||
          !spawning_names_.insert(name).second) {
        return absl::AlreadyExistsError(absl::StrCat("a context named '", name,
                                                     "' already exists under ", self_.name()));
      }
    }
  }
  if (launcher == nullptr) {
    return absl::UnimplementedError(absl::StrCat("method '", hop.method,
                                                 "' is not available in context ", self_.name()));
  }
  auto forget_name = [&] {
    if (name.empty()) return;
    absl::MutexLock lock(&mu_);
    spawning_names_.erase(name);
  };
  absl::StatusOr<ContextId> id = AllocateId();
  if (!id.ok()) {
    forget_name();
    return id.status();
  }
  LaunchRequest request;
  request.info.set_id(id->value());
  request.info.set_name(name.empty() ? DefaultName(hop) : name);
  request.info.set_parent(self_.id());
  request.info.set_method(hop.method);
  request.ancestors.push_back(self_.id());
  request.ancestors.insert(request.ancestors.end(), options_.ancestors.begin(),
                           options_.ancestors.end());
  request.max_message_bytes = options_.max_message_bytes;
  request.min_log_level = options_.min_log_level;
  request.verbosity = options_.verbosity;
  request.deadline = deadline;
  absl::StatusOr<LaunchedChild> launched = launcher->Launch(hop, request);
  if (!launched.ok()) {
    forget_name();
    return Annotate(launched.status(),
                    absl::StrCat("cannot start '", hop.DebugString(), "' from ", self_.name()));
  }
  auto child = std::make_shared<Child>();
  child->info = launched->info;
  child->info.set_id(id->value());
  child->info.set_parent(self_.id());
  child->info.set_method(hop.method);
  if (!request.info.name().empty()) child->info.set_name(request.info.name());
  // A local child names itself: shown and sent up as text, whatever it says.
  if (!IsPlainText(child->info.name())) child->info.set_name(Printable(child->info.name()));
  child->link = std::move(launched->link);
  child->handle = std::move(launched->handle);
  child->routed.insert(id->value());
  std::shared_ptr<Link> parent;
  bool refused = false;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      refused = true;
    } else {
      children_[child->link.get()] = child;
      routes_[id->value()] = child;
      ++live_child_links_;
      if (!parent_down_) parent = parent_;
    }
  }
  if (refused) {
    forget_name();
    child->link->Close(absl::CancelledError("shutting down"));
    child->handle->Stop(absl::ZeroDuration());
    return absl::UnavailableError(absl::StrCat("context ", self_.name(), " is shutting down"));
  }
  registry_.Add(child->info);
  forget_name();
  if (parent != nullptr) {
    v1::Envelope added;
    added.set_dst(0);
    added.set_src(self_.id());
    *added.mutable_added()->mutable_info() = child->info;
    parent->Send(std::move(added));
  }
  child->link->Start(this);
  return child->info;
}

std::vector<ContextId> Router::Children() const {
  std::vector<ContextId> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [link, child] : children_) out.push_back(ContextId(child->info.id()));
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status Router::StopChild(ContextId id) {
  std::shared_ptr<Child> child;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [link, c] : children_) {
      if (c->info.id() == id.value()) child = c;
    }
  }
  if (child == nullptr) {
    return absl::NotFoundError(absl::StrCat(DescribeContext(id.value()),
                                            " is not a live child of ", self_.name()));
  }
  AskToShutDown(*child);
  WaitUntilStopped(child);
  return absl::OkStatus();
}

void Router::AskToShutDown(const Child& child) {
  v1::Envelope shutdown;
  shutdown.set_dst(child.info.id());
  shutdown.set_src(self_.id());
  shutdown.mutable_shutdown();
  child.link->Send(std::move(shutdown));
}

void Router::WaitUntilStopped(const std::shared_ptr<Child>& child) {
  std::string how = child->handle->Stop(options_.stop_grace);
  VLOG(1) << "context " << self_.name() << ": stopped child " << child->info.name() << ": "
          << how;
  // The process is gone, so its link goes down within milliseconds; close it in case a copy
  // of its socket survives elsewhere.
  if (!child->gone.WaitForNotificationWithTimeout(absl::Seconds(1))) {
    child->link->Close(absl::UnavailableError("the context was stopped"));
    child->gone.WaitForNotification();
  }
}

void Router::StopAllChildren() {
  std::vector<std::shared_ptr<Child>> children;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [link, c] : children_) children.push_back(c);
  }
  // Ask all at once so that they shut down in parallel, then wait for each.
  for (const auto& child : children) AskToShutDown(*child);
  for (const auto& child : children) WaitUntilStopped(child);
}

void Router::RequestShutdown(const absl::Status& why) {
  std::function<void(const absl::Status&)> handler;
  {
    absl::MutexLock lock(&mu_);
    if (shutdown_requested_) return;
    shutdown_requested_ = true;
    handler = shutdown_handler_;
  }
  if (handler) handler(why);
}

void Router::Shutdown(const absl::Status& why) {
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) return;
    shutting_down_ = true;
  }
  StopAllChildren();
  {
    // Links that went down on their own may still be inside OnLinkDown.
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](int* live) { return *live == 0; }, &live_child_links_));
  }
  std::vector<uint64_t> pending;
  std::vector<std::shared_ptr<CallContext>> running;
  std::shared_ptr<Link> parent;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, p] : pending_) pending.push_back(id);
    for (const auto& [key, context] : incoming_) running.push_back(context);
    parent = parent_;
  }
  std::string message = absl::StrCat("context ", self_.name(), " is shutting down");
  if (!why.ok()) absl::StrAppend(&message, ": ", why.message());
  for (uint64_t id : pending) Complete(id, absl::UnavailableError(message));
  for (const auto& context : running) context->cancel_source().Cancel();
  if (parent != nullptr) {
    parent->Close(why);
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&parent_link_done_), absl::Seconds(2));
  }
  absl::MutexLock lock(&mu_);
  shut_down_ = true;
}

}  // namespace grove
