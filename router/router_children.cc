// Router: this context's children: spawning, stopping and reaping them, their links going down,
// and the router's own shutdown.
#include "router/router.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/printable.h"
#include "common/process.h"
#include "common/status_util.h"
#include "glog/logging.h"
#include "proto/builtins.pb.h"
#include "router/log_quota.h"
#include "router/router_internal.h"

namespace grove {

void Router::OnLinkStalled(Link* link, const absl::Status& why) {
  std::shared_ptr<Child> child;
  {
    absl::MutexLock lock(&mu_);
    child = children_.FindByLink(link);
  }
  if (child == nullptr || child->handle == nullptr) return;
  LOG(WARNING) << "context " << self_.name() << ": stopping child " << child->info.name()
               << ": " << why;
  StopInBackground(child);
}

void Router::StopInBackground(const std::shared_ptr<Child>& child, bool at_once) {
  // StopChild may be waiting for the same process: Stop is idempotent.
  const absl::Duration grace = at_once ? absl::ZeroDuration() : options_.stop_grace;
  workers_.Post([child, grace] { child->handle->Stop(grace); });
}

void Router::OnLinkDown(Link* link, const absl::Status& reason) {
  std::shared_ptr<Child> child;
  std::vector<std::shared_ptr<PendingCall>> pending_up;
  {
    absl::MutexLock lock(&mu_);
    if (parent_ != nullptr && link == parent_.get()) {
      parent_down_ = true;
      pending_up = calls_.TakePendingWhere(
          [this](uint64_t dst) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return dst != self_.id() && !children_.Reaches(dst);
          });
    } else {
      child = children_.TakeByLink(link);
      if (child == nullptr) return;
    }
  }
  if (child == nullptr) {
    // The parent is gone: nothing above can answer any more, and this context must end.
    std::string why = absl::StrCat("context ", self_.name(), " lost its parent link: ",
                                   reason.ok() ? "closed" : std::string(reason.message()));
    for (const auto& call : pending_up) Finish(call, absl::UnavailableError(why));
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
    ids.assign(child->routed().begin(), child->routed().end());
  }
  RemoveContexts(child, std::move(ids), why);
  // And reaps it; at once when its link went silent: it cannot be asked to exit (an ssh
  // client to a host that is cut off would otherwise linger until its own keepalive).
  if (child->handle != nullptr) StopInBackground(child, IsSilence(reason));
  child->gone.Notify();
  // The last touch of `this` for this link: Shutdown may return as soon as the count is 0.
  absl::MutexLock lock(&mu_);
  children_.LinkDownHandled();
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
          !children_.ReserveName(name).ok()) {
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
    children_.ReleaseName(name);
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
  request.silence_limit = options_.silence_limit;
  request.min_log_level = options_.min_log_level;
  request.verbosity = options_.verbosity;
  request.deadline = deadline;
  absl::StatusOr<LaunchedChild> launched = launcher->Launch(hop, request);
  if (!launched.ok()) {
    forget_name();
    absl::Status status = launched.status();
    if (absl::StrContains(status.message(), "Too many open files")) {
      status = absl::Status(status.code(), absl::StrCat(status.message(), " (", OpenFilesHint(), ")"));
    }
    return Annotate(status,
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
  std::shared_ptr<Link> parent;
  absl::Status refused;
  {
    absl::MutexLock lock(&mu_);
    if (shutting_down_) {
      refused = absl::UnavailableError(absl::StrCat("context ", self_.name(), " is shutting down"));
    } else {
      refused = children_.Add(child);  // Routes its id to it.
      if (refused.ok() && !parent_down_) parent = parent_;
    }
  }
  if (!refused.ok()) {
    forget_name();
    child->link->Close(absl::CancelledError(refused.message()));
    child->handle->Stop(absl::ZeroDuration());
    return refused;
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
  std::vector<uint64_t> ids;
  {
    absl::MutexLock lock(&mu_);
    ids = children_.Ids();
  }
  return std::vector<ContextId>(ids.begin(), ids.end());
}

absl::Status Router::StopChild(ContextId id) {
  std::shared_ptr<Child> child;
  {
    absl::MutexLock lock(&mu_);
    child = children_.FindById(id.value());
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
    children = children_.List();
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
  // Links are closed on purpose from here on, and slowly (children get a grace period).
  if (watch_ != nullptr) watch_->Stop();
  StopAllChildren();
  {
    // Links that went down on their own may still be inside OnLinkDown.
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](ChildSet* children) { return children->live_links() == 0; }, &children_));
  }
  std::vector<std::shared_ptr<PendingCall>> pending;
  std::vector<std::shared_ptr<CallContext>> running;
  std::shared_ptr<Link> parent;
  {
    absl::MutexLock lock(&mu_);
    pending = calls_.TakeAllPending();
    running = calls_.AllIncoming();
    parent = parent_;
  }
  std::string message = absl::StrCat("context ", self_.name(), " is shutting down");
  if (!why.ok()) absl::StrAppend(&message, ": ", why.message());
  for (const auto& call : pending) Finish(call, absl::UnavailableError(message));
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
