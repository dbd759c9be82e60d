// Router: contexts joining and leaving the tree: ContextAdded (checked against the id blocks),
// ContextRemoved and ContextRefused, id blocks granted and allocated.
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

// ---------------------------------------------------------------------------------------
// The tree: contexts added and removed.
void Router::HandleAdded(Link* from, v1::Envelope envelope) {
  const v1::ContextInfo& info = envelope.added().info();
  std::shared_ptr<Link> parent;
  std::string refused;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<Child> child = children_.FindByLink(from);
    if (child == nullptr) {
      refused = "it did not come from a child link";
    } else if (info.name().empty() || !IsPlainText(info.name())) {
      refused = absl::StrCat("its name '", Printable(info.name()),
                             "' is not one line of UTF-8 text without controls");
    } else if (info.id() == self_.id() || children_.Reaches(info.id()) ||
               gone_.contains(info.id()) || ancestors_.contains(info.id())) {
      refused = absl::StrCat("id ", info.id(), " is already in use");
    } else if (is_master() && !id_blocks_.HandedOut(info.id())) {
      refused = absl::StrCat("id ", info.id(), " was never handed out by the master");
    } else if (!id_blocks_.Covers(info.id(), info.parent())) {
      refused = absl::StrCat("id ", info.id(), " is not in a block handed to its parent ",
                             info.parent());
    } else if (info.parent() != child->info.id() && !child->routed().contains(info.parent())) {
      refused = absl::StrCat("its parent ", info.parent(), " is not behind that link");
    } else if (children_.Full(*child)) {
      refused = absl::StrCat("the link to ", child->info.name(), " already carries ",
                             child->routed().size(), " contexts, the most one link may");
    } else if (!id_blocks_.Take(info.id(), info.parent())) {
      refused = absl::StrCat("id ", info.id(), " was used before");
    } else if (absl::Status added = children_.AddRoute(child, info.id()); !added.ok()) {
      refused = std::string(added.message());
    } else if (!parent_down_) {
      parent = parent_;
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
      if (std::shared_ptr<Child> child = children_.FindByLink(from); child != nullptr) {
        notice.set_dst(child->info.id());
        link = child->link;
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
    if (!children_.Reaches(owner)) {
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
    const Child* route = children_.RouteOf(owner);
    // Not for this context itself, for one gone since, or malformed.
    if (route == nullptr || !id_blocks_.Record(owner, block.first(), block.count())) return;
    if (route->info.id() != owner) down = route->link;
  }
  if (down != nullptr) down->Send(std::move(envelope));
}

void Router::HandleRefused(v1::Envelope envelope) {
  // Per child link, the ids of the notice that were routed through it.
  absl::flat_hash_map<std::shared_ptr<Link>, v1::Envelope> down;
  std::vector<uint64_t> forgotten;
  {
    const std::vector<uint64_t> ids(envelope.refused().ids().begin(),
                                    envelope.refused().ids().end());
    absl::MutexLock lock(&mu_);
    // A child of ours keeps its route: its own link says otherwise.
    for (const auto& [id, child] : children_.RemoveDescendantRoutes(ids)) {
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
    child = children_.FindByLink(from);
    if (child != nullptr) {
      // A child may only report contexts behind itself (not itself: that is OnLinkDown's).
      ids.erase(std::remove_if(ids.begin(), ids.end(),
                               [&](uint64_t id) {
                                 return id == child->info.id() || !child->routed().contains(id);
                               }),
                ids.end());
    }
  }
  RemoveContexts(child, std::move(ids), envelope.removed().reason());
}

void Router::RemoveContexts(const std::shared_ptr<Child>& child, std::vector<uint64_t> ids,
                            const std::string& reason) {
  if (ids.empty()) return;
  std::vector<std::shared_ptr<PendingCall>> failed;
  std::vector<std::shared_ptr<CallContext>> orphaned;
  std::vector<std::shared_ptr<Link>> tell;
  std::shared_ptr<Link> parent;
  {
    absl::MutexLock lock(&mu_);
    if (child != nullptr) {
      children_.RemoveRoutes(*child, ids);
      for (uint64_t id : ids) {
        gone_.Mark(id, reason);
        id_blocks_.DropOwner(id);
      }
      if (!parent_down_) parent = parent_;
    } else {
      // A notice from the parent: never about our own subtree.
      ids.erase(std::remove_if(ids.begin(), ids.end(),
                               [&](uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
                                 return id == self_.id() || children_.Reaches(id);
                               }),
                ids.end());
      for (uint64_t id : ids) gone_.Mark(id, reason);
    }
    absl::flat_hash_set<uint64_t> lost(ids.begin(), ids.end());
    failed = calls_.TakePendingTo(lost);
    orphaned = calls_.IncomingFrom(lost);
    tell = children_.TakeCallersOf(ids, child.get());
  }
  if (ids.empty()) return;
  if (child != nullptr) registry_.MarkGone(ids, reason);
  for (const auto& call : failed) {
    Finish(call, absl::UnavailableError(absl::StrCat("call to ", DescribeContext(call->dst),
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

}  // namespace grove
