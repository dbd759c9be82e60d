// Router: construction, wiring, and moving envelopes between links (routing and delivery).
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

Router::Router(Options options)
    : options_(std::move(options)),
      self_(options_.self),
      ancestors_(options_.ancestors.begin(), options_.ancestors.end()),
      registry_(options_.gone_history),
      children_(options_.max_contexts_per_link),
      gone_(options_.gone_history),
      calls_(options_.max_running_calls_per_link),
      id_blocks_(kMaxIdBlocksPerContext) {
  RegisterBuiltins();
  for (const Component& attach : options_.components) attach(*this, builtins_);
  if (options_.silence_limit > absl::ZeroDuration()) {
    watch_ = std::make_unique<LinkWatch>(
        options_.silence_limit,
        [this] {
          // Child links only: see link_watch.h on why a parent is never judged silent.
          absl::MutexLock lock(&mu_);
          return children_.Links();
        },
        [this] {
          return Deliveries{delivering_.load(std::memory_order_relaxed),
                            delivered_.load(std::memory_order_relaxed)};
        });
  }
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
  } else if (const Child* child = children_.RouteOf(dst); child != nullptr) {
    route.kind = Route::kChild;
    route.link = child->link;
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
  link->CountReceived();
  // For LinkWatch: a delivery that never ends (an output callback blocked) is ours, not the
  // peers' silence.
  delivering_.fetch_add(1, std::memory_order_relaxed);
  struct Delivered {
    Router* router;
    ~Delivered() {
      router->delivered_.fetch_add(1, std::memory_order_relaxed);
      router->delivering_.fetch_sub(1, std::memory_order_relaxed);
    }
  } delivered{this};
  if (envelope.body_case() == v1::Envelope::kHeartbeat) {  // This link's own: never routed.
    if (!envelope.heartbeat().reply()) {
      v1::Envelope answer;
      answer.mutable_heartbeat()->set_reply(true);
      link->Send(std::move(answer));
    }
    return;
  }
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
      spoofed = src == self_.id() || children_.Reaches(src);
    } else {
      from_child = children_.FindByLink(link);
      if (from_child == nullptr) return;  // A link that is already down.
      spoofed = src != from_child->info.id() && !from_child->routed().contains(src);
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
      if (from_child != nullptr && body == v1::Envelope::kCall) {
        children_.NoteCallOut(*from_child, dst);
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

}  // namespace grove
