#include "router/registry.h"

#include <algorithm>

namespace grove {

const char* ContextStateName(ContextState state) {
  return state == ContextState::kConnected ? "connected" : "gone";
}

ContextRecord RecordFromInfo(const v1::ContextInfo& info) {
  ContextRecord r;
  r.id = ContextId(info.id());
  r.name = info.name();
  r.parent = ContextId(info.parent());
  r.method = info.method();
  r.host = info.host();
  r.pid = info.pid();
  r.user = info.user();
  return r;
}

bool Registry::Add(const v1::ContextInfo& info) {
  RegistryEvent event{RegistryEvent::kAdded, RecordFromInfo(info)};
  {
    absl::MutexLock lock(&mu_);
    if (!records_.emplace(info.id(), event.record).second) return false;
    ++live_;
    by_name_[info.name()].push_back(info.id());
  }
  Notify({event});
  return true;
}

std::vector<ContextRecord> Registry::MarkGone(const std::vector<uint64_t>& ids,
                                              const std::string& reason) {
  std::vector<RegistryEvent> events;
  {
    absl::MutexLock lock(&mu_);
    for (uint64_t id : ids) {
      auto it = records_.find(id);
      if (it == records_.end() || it->second.state == ContextState::kGone) continue;
      it->second.state = ContextState::kGone;
      it->second.reason = reason;
      --live_;
      events.push_back({RegistryEvent::kRemoved, it->second});
      gone_order_.push_back(id);
    }
    while (gone_order_.size() > gone_history_) {
      auto oldest = records_.find(gone_order_.front());
      gone_order_.pop_front();
      if (oldest != records_.end() && oldest->second.state == ContextState::kGone) {
        EraseLocked(oldest);
      }
    }
  }
  Notify(events);
  std::vector<ContextRecord> records;
  for (RegistryEvent& e : events) records.push_back(std::move(e.record));
  return records;
}

void Registry::Forget(ContextId id) {
  std::vector<RegistryEvent> events;
  {
    absl::MutexLock lock(&mu_);
    auto it = records_.find(id.value());
    if (it == records_.end()) return;
    ContextRecord record = EraseLocked(it);
    if (record.state != ContextState::kGone) --live_;
    record.state = ContextState::kGone;
    record.reason = "refused";
    events.push_back({RegistryEvent::kRemoved, std::move(record)});
  }
  Notify(events);
}

ContextRecord Registry::EraseLocked(
    absl::flat_hash_map<uint64_t, ContextRecord>::iterator it) {
  ContextRecord record = std::move(it->second);
  records_.erase(it);
  auto name = by_name_.find(record.name);
  if (name != by_name_.end()) {
    std::vector<uint64_t>& ids = name->second;
    ids.erase(std::remove(ids.begin(), ids.end(), record.id.value()), ids.end());
    if (ids.empty()) by_name_.erase(name);
  }
  return record;
}

std::optional<ContextRecord> Registry::Find(ContextId id) const {
  absl::MutexLock lock(&mu_);
  auto it = records_.find(id.value());
  if (it == records_.end()) return std::nullopt;
  return it->second;
}

std::optional<ContextRecord> Registry::FindByName(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return std::nullopt;
  for (auto id = it->second.rbegin(); id != it->second.rend(); ++id) {
    const ContextRecord& r = records_.at(*id);
    if (r.state == ContextState::kConnected) return r;
  }
  return records_.at(it->second.back());
}

std::vector<ContextRecord> Registry::List(bool include_gone) const {
  std::vector<ContextRecord> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [id, r] : records_) {
      if (include_gone || r.state != ContextState::kGone) out.push_back(r);
    }
  }
  std::sort(out.begin(), out.end(),
            [](const ContextRecord& a, const ContextRecord& b) { return a.id < b.id; });
  return out;
}

size_t Registry::live_count() const {
  absl::MutexLock lock(&mu_);
  return live_;
}

size_t Registry::size() const {
  absl::MutexLock lock(&mu_);
  return records_.size();
}

int Registry::Subscribe(std::function<void(const RegistryEvent&)> callback) {
  absl::MutexLock lock(&subscribers_mu_);
  int id = next_subscriber_++;
  subscribers_.emplace(id, std::make_shared<std::function<void(const RegistryEvent&)>>(
                               std::move(callback)));
  return id;
}

void Registry::Unsubscribe(int id) {
  std::shared_ptr<std::function<void(const RegistryEvent&)>> dropped;
  absl::MutexLock lock(&subscribers_mu_);
  auto it = subscribers_.find(id);
  if (it == subscribers_.end()) return;
  dropped = std::move(it->second);
  subscribers_.erase(it);
}

void Registry::Notify(const std::vector<RegistryEvent>& events) {
  if (events.empty()) return;
  std::vector<std::shared_ptr<std::function<void(const RegistryEvent&)>>> subscribers;
  {
    absl::MutexLock lock(&subscribers_mu_);
    for (const auto& [id, s] : subscribers_) subscribers.push_back(s);
  }
  for (const auto& s : subscribers) {
    for (const RegistryEvent& e : events) (*s)(e);
  }
}

}  // namespace grove
