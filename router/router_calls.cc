// Router: calls made here (pending until their reply), calls that run here, outputs and cancels.
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
#include "router/router_internal.h"

namespace grove {

using router_internal::DeadlineOf;
using router_internal::IsCall;

size_t Router::pending_calls() const {
  absl::MutexLock lock(&mu_);
  return calls_.pending_count();
}

// ---------------------------------------------------------------------------------------
// Calls made here.
void Router::StartCall(ContextId dst, const std::string& function,
                       const std::string& argument_type, std::string argument,
                       const CallOptions& options, Done done, const std::string& result_type) {
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
  auto pending = std::make_shared<PendingCall>();
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
  if (!result_type.empty()) call->set_result_type(result_type);
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
        refused = calls_.AddPending(id, pending);
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
      if (!calls_.IsPending(id)) return;
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
    still_pending = calls_.IsPending(id);
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
  std::shared_ptr<PendingCall> call;
  {
    absl::MutexLock lock(&mu_);
    call = calls_.TakePending(call_id);
  }
  if (call == nullptr) return;  // Already completed (reply after a deadline, say).
  Finish(call, std::move(result));
}

void Router::Finish(const std::shared_ptr<PendingCall>& call,
                    absl::StatusOr<std::string> result) {
  if (call->timer) timer_.Cancel(call->timer);
  if (call->cancel_callback) call->cancel->RemoveCallback(call->cancel_callback);
  if (call->parent_callback) call->parent_cancel->RemoveCallback(call->parent_callback);
  call->done(std::move(result));
}

void Router::HandleReply(Link* from, const v1::Reply& reply) {
  absl::StatusOr<std::shared_ptr<PendingCall>> call;
  {
    absl::MutexLock lock(&mu_);
    call = calls_.TakeReply(reply.id(), from);
  }
  if (absl::IsPermissionDenied(call.status())) {
    LOG(WARNING) << "context " << self_.name() << ": dropped a reply to call " << reply.id()
                 << " that came from " << (from ? from->DebugName() : "this context")
                 << ", not from where the call went";
    return;
  }
  if (!call.ok()) return;  // Already completed (reply after a deadline, say).
  if (reply.code() == 0) {
    Finish(*call, reply.result());
  } else {
    Finish(*call, RemoteError(StatusCodeFromWire(reply.code()), reply.message(), reply.origin()));
  }
}

void Router::HandleOutput(Link* from, v1::Output* output) {
  std::shared_ptr<PendingCall> call;
  {
    absl::MutexLock lock(&mu_);
    call = calls_.PendingFrom(output->id(), from);
  }
  if (call != nullptr && call->on_output) call->on_output(output->stream(), output->data());
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

bool Router::Allowed(uint64_t src, CallableBy callable_by) const {
  if (src == self_.id() || ancestors_.contains(src)) return true;
  switch (callable_by) {
    case CallableBy::kAny:
      return true;
    case CallableBy::kDescendants: {
      absl::MutexLock lock(&mu_);
      return children_.Reaches(src);
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
  } else if (!call->result_type().empty() && call->result_type() != function->result_type) {
    refused = absl::InvalidArgumentError(
        absl::StrCat("function '", call->function(), "' in context ", self_.name(),
                     " returns ", function->result_type, ", not ", call->result_type()));
  }
  if (!refused.ok()) {
    SendReply(src, call->id(), refused, self_.name());
    return;
  }
  absl::Time deadline = call->timeout_us() > 0
                            ? absl::Now() + absl::Microseconds(call->timeout_us())
                            : absl::InfiniteFuture();
  auto context = std::make_shared<CallContext>(this, ContextId(src), call->id(), deadline);
  // Counted among the calls of the link it came over, if it takes a worker.
  IncomingCall incoming{src, call->id(), std::nullopt};
  std::string link_name;
  std::optional<int> over_quota;  // The calls running for its link, if already the most.
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Child> from_child;
    if (from != nullptr && !function->options.run_inline) {
      if (from == parent_.get()) {
        incoming.link = self_.parent();
      } else {
        from_child = children_.FindByLink(from);
        if (from_child != nullptr) incoming.link = from_child->info.id();
      }
    }
    if (shutting_down_) {
      refused = absl::UnavailableError(
          absl::StrCat("context ", self_.name(), " is shutting down"));
    } else if (!calls_.AddIncoming(incoming, context).ok()) {  // Over its link's limit.
      over_quota = calls_.running_over(*incoming.link);
      // Named on this path only: the others run for every call.
      link_name = from_child != nullptr ? absl::StrCat("the link to ", from_child->info.name())
                                        : "its parent's link";
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
    RunCall(incoming, std::move(*call), function, std::move(context));
    return;
  }
  auto shared_call = std::make_shared<v1::Call>(std::move(*call));
  bool posted = workers_.Post([this, incoming, shared_call, function, context] {
    RunCall(incoming, std::move(*shared_call), function, context);
  });
  if (!posted) {
    {
      absl::MutexLock lock(&mu_);
      calls_.RemoveIncoming(incoming);
    }
    SendReply(src, shared_call->id(),
              absl::UnavailableError(absl::StrCat("context ", self_.name(), " is shutting down")),
              self_.name());
  }
}

void Router::RunCall(const IncomingCall& incoming, v1::Call call, const Function* function,
                     std::shared_ptr<CallContext> context) {
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
    calls_.RemoveIncoming(incoming);
  }
  if (result.ok() && static_cast<int64_t>(result->size()) > options_.max_message_bytes) {
    result = absl::ResourceExhaustedError(
        absl::StrCat("the result of '", call.function(), "' is ", result->size(),
                     " bytes, over the limit of ", options_.max_message_bytes));
  }
  SendReply(incoming.src, call.id(), std::move(result), self_.name());
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
    context = calls_.FindIncoming(src, cancel.id());
  }
  if (context == nullptr) return;
  if (cancel.deadline_exceeded()) context->MarkDeadlineExceeded();
  context->cancel_source().Cancel();
}

}  // namespace grove
