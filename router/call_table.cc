#include "router/call_table.h"

#include "absl/strings/str_cat.h"

namespace grove {

// ---------------------------------------------------------------------------------------
// Calls this context made.
absl::Status CallTable::AddPending(uint64_t id, std::shared_ptr<PendingCall> call) {
  if (!pending_.emplace(id, std::move(call)).second) {
    return absl::AlreadyExistsError(absl::StrCat("call ", id, " is pending already"));
  }
  return absl::OkStatus();
}

std::shared_ptr<PendingCall> CallTable::TakePending(uint64_t id) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return nullptr;
  std::shared_ptr<PendingCall> call = std::move(it->second);
  pending_.erase(it);
  return call;
}

absl::StatusOr<std::shared_ptr<PendingCall>> CallTable::TakeReply(uint64_t id, const Link* from) {
  auto it = pending_.find(id);
  if (it == pending_.end()) {
    return absl::NotFoundError(absl::StrCat("call ", id, " is not pending"));
  }
  if (it->second->via.get() != from) {
    return absl::PermissionDeniedError(
        absl::StrCat("call ", id, " did not go out where its reply came from"));
  }
  std::shared_ptr<PendingCall> call = std::move(it->second);
  pending_.erase(it);
  return call;
}

std::shared_ptr<PendingCall> CallTable::PendingFrom(uint64_t id, const Link* from) const {
  auto it = pending_.find(id);
  if (it == pending_.end() || it->second->via.get() != from) return nullptr;
  return it->second;
}

std::vector<std::shared_ptr<PendingCall>> CallTable::TakePendingTo(
    const absl::flat_hash_set<uint64_t>& dsts) {
  return TakePendingWhere([&dsts](uint64_t dst) { return dsts.contains(dst); });
}

std::vector<std::shared_ptr<PendingCall>> CallTable::TakePendingWhere(
    absl::FunctionRef<bool(uint64_t dst)> lost) {
  std::vector<std::shared_ptr<PendingCall>> taken;
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (lost(it->second->dst)) {
      taken.push_back(std::move(it->second));
      pending_.erase(it++);
    } else {
      ++it;
    }
  }
  return taken;
}

std::vector<std::shared_ptr<PendingCall>> CallTable::TakeAllPending() {
  std::vector<std::shared_ptr<PendingCall>> taken;
  taken.reserve(pending_.size());
  for (auto& [id, call] : pending_) taken.push_back(std::move(call));
  pending_.clear();
  return taken;
}

// ---------------------------------------------------------------------------------------
// Calls running here.
absl::Status CallTable::AddIncoming(const IncomingCall& call,
                                    std::shared_ptr<CallContext> context) {
  if (call.link.has_value()) {
    int& running = running_by_link_[*call.link];
    if (running >= max_running_per_link_) {
      const int now = running;  // `running` goes with the entry an empty count erases.
      if (now == 0) running_by_link_.erase(*call.link);
      return absl::ResourceExhaustedError(absl::StrCat(now, " calls that came over link ",
                                                       *call.link,
                                                       " are running, the most one link may"));
    }
    ++running;
  }
  incoming_[{call.src, call.id}] = std::move(context);
  return absl::OkStatus();
}

void CallTable::RemoveIncoming(const IncomingCall& call) {
  incoming_.erase({call.src, call.id});
  if (!call.link.has_value()) return;
  auto it = running_by_link_.find(*call.link);
  if (it == running_by_link_.end()) return;
  if (--it->second <= 0) running_by_link_.erase(it);
}

std::shared_ptr<CallContext> CallTable::FindIncoming(uint64_t src, uint64_t id) const {
  auto it = incoming_.find({src, id});
  return it == incoming_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<CallContext>> CallTable::IncomingFrom(
    const absl::flat_hash_set<uint64_t>& srcs) const {
  std::vector<std::shared_ptr<CallContext>> found;
  for (const auto& [key, context] : incoming_) {
    if (srcs.contains(key.first)) found.push_back(context);
  }
  return found;
}

std::vector<std::shared_ptr<CallContext>> CallTable::AllIncoming() const {
  std::vector<std::shared_ptr<CallContext>> all;
  all.reserve(incoming_.size());
  for (const auto& [key, context] : incoming_) all.push_back(context);
  return all;
}

int CallTable::running_over(uint64_t link) const {
  auto it = running_by_link_.find(link);
  return it == running_by_link_.end() ? 0 : it->second;
}

}  // namespace grove
