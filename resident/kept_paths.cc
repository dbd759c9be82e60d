#include "resident/kept_paths.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "link/hop.h"

namespace grove {
namespace {

// The keys of every prefix of `hops`: "a", "a/b", "a/b/c".
std::vector<std::string> PrefixKeys(const std::vector<Hop>& hops) {
  std::vector<std::string> keys;
  std::string key;
  for (const Hop& hop : hops) {
    key = key.empty() ? hop.ToString() : absl::StrCat(key, "/", hop.ToString());
    keys.push_back(key);
  }
  return keys;
}

bool IsBelow(const std::string& key, const std::string& prefix) {
  return key.size() > prefix.size() && absl::StartsWith(key, prefix) && key[prefix.size()] == '/';
}

}  // namespace

KeptPaths::Lease& KeptPaths::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    if (owner_ != nullptr) owner_->Release(keys_);
    owner_ = std::exchange(other.owner_, nullptr);
    keys_ = std::move(other.keys_);
  }
  return *this;
}

KeptPaths::Lease::~Lease() {
  if (owner_ != nullptr) owner_->Release(keys_);
}

bool KeptPaths::Live(ContextId id) const {
  std::optional<ContextRecord> record = root_->registry().Find(id);
  return record.has_value() && record->state == ContextState::kConnected;
}

absl::StatusOr<Context> KeptPaths::Ensure(const std::string& path,
                                          absl::Duration connect_timeout, Lease* lease) {
  absl::StatusOr<std::vector<Hop>> hops = ParsePath(path);
  if (!hops.ok()) return hops.status();
  const std::vector<std::string> keys = PrefixKeys(*hops);
  const absl::Time deadline = absl::Now() + connect_timeout;
  Context current(root_, kMasterId, root_->name());
  std::vector<std::string> held;
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string& key = keys[i];
    bool reused = false;
    while (true) {
      std::optional<ContextId> id;
      std::string name;
      {
        absl::MutexLock lock(&mu_);
        // Another call is starting this prefix: wait for its outcome.
        auto settled = [this, &key]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
          auto it = slots_.find(key);
          return it == slots_.end() || !it->second.starting;
        };
        mu_.Await(absl::Condition(&settled));
        const Slot& slot = slots_[key];
        id = slot.id;
        name = slot.name;
      }
      if (id.has_value() && Live(*id)) {
        current = Context(root_, *id, name);
        reused = true;
        break;
      }
      absl::MutexLock lock(&mu_);
      Slot& slot = slots_[key];
      if (slot.starting || slot.id != id) continue;  // Changed meanwhile: look again.
      slot.starting = true;
      slot.id.reset();
      slot.display = JoinPath(*hops, i + 1, /*hide_secrets=*/true);
      break;
    }
    if (!reused) {
      CallOptions options;
      options.deadline = deadline;
      absl::StatusOr<Context> next = current.Spawn((*hops)[i].ToString(), options);
      {
        absl::MutexLock lock(&mu_);
        Slot& slot = slots_[key];
        slot.starting = false;
        if (next.ok()) {
          slot.id = next->id();
          slot.name = next->name();
        } else {
          slots_.erase(key);
        }
      }
      if (!next.ok()) {
        // Outside the lock: replacing a lease releases the one it held.
        if (lease != nullptr) *lease = Lease(this, held);
        // The router's message names the hop and where it was started from.
        return absl::Status(next.status().code(),
                            absl::StrCat("path ",
                                         JoinPath(*hops, hops->size(), /*hide_secrets=*/true),
                                         ": ", next.status().message()));
      }
      current = *std::move(next);
    }
    absl::MutexLock lock(&mu_);
    Slot& slot = slots_[key];
    slot.last_used = absl::Now();
    if (lease != nullptr) {
      ++slot.holders;
      held.push_back(key);
    }
  }
  if (lease != nullptr) *lease = Lease(this, std::move(held));
  return current;
}

bool KeptPaths::AwaitStarts(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& [key, slot] : slots_) {
      if (slot.starting) return false;
    }
    return true;
  };
  if (none()) return false;
  mu_.AwaitWithDeadline(absl::Condition(&none), deadline);
  return true;
}

void KeptPaths::Release(const std::vector<std::string>& keys) {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (const std::string& key : keys) {
    auto it = slots_.find(key);
    if (it == slots_.end()) continue;
    it->second.holders = std::max(0, it->second.holders - 1);
    it->second.last_used = now;
  }
}

absl::StatusOr<int> KeptPaths::Stop(const std::string& path) {
  absl::StatusOr<std::string> key = CanonicalPath(path);
  if (!key.ok()) return key.status();
  std::optional<ContextId> id;
  std::string name, display;
  int count = 0;
  {
    absl::MutexLock lock(&mu_);
    auto it = slots_.find(*key);
    if (it == slots_.end() || !it->second.id.has_value()) {
      return absl::NotFoundError(absl::StrCat("no context is kept at path ", path));
    }
    id = it->second.id;
    name = it->second.name;
    display = it->second.display;
    for (auto s = slots_.begin(); s != slots_.end();) {
      if (s->first == *key || IsBelow(s->first, *key)) {
        slots_.erase(s++);
        ++count;
      } else {
        ++s;
      }
    }
  }
  if (Live(*id)) {
    absl::Status stopped = Context(root_, *id, name).Shutdown();
    if (!stopped.ok() && Live(*id)) {
      return absl::Status(stopped.code(), absl::StrCat("cannot stop ", name, " (path ", display,
                                                       "): ", stopped.message()));
    }
  }
  return count;
}

KeptPaths::Entry KeptPaths::EntryOf(const std::string& key, const Slot& s) {
  return Entry{key, s.display, *s.id, s.name, s.last_used, s.holders};
}

std::optional<KeptPaths::Entry> KeptPaths::Find(const std::string& path) const {
  absl::StatusOr<std::string> key = CanonicalPath(path);
  if (!key.ok()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  auto it = slots_.find(*key);
  if (it == slots_.end() || !it->second.id.has_value()) return std::nullopt;
  const Slot& s = it->second;
  return EntryOf(it->first, s);
}

std::optional<KeptPaths::Entry> KeptPaths::FindByPathOrName(const std::string& which) const {
  if (std::optional<Entry> entry = Find(which)) return entry;
  absl::MutexLock lock(&mu_);
  for (const auto& [key, s] : slots_) {
    if (s.id.has_value() && s.name == which) {
      return EntryOf(key, s);
    }
  }
  return std::nullopt;
}

std::optional<KeptPaths::Entry> KeptPaths::FindById(ContextId id) const {
  absl::MutexLock lock(&mu_);
  for (const auto& [key, s] : slots_) {
    if (s.id == id) return EntryOf(key, s);
  }
  return std::nullopt;
}

std::vector<KeptPaths::Entry> KeptPaths::List() const {
  std::vector<Entry> out;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, s] : slots_) {
      if (s.id.has_value()) out.push_back(EntryOf(key, s));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const Entry& a, const Entry& b) { return a.path < b.path; });
  return out;
}

std::vector<std::string> KeptPaths::Idle(absl::Time now, absl::Duration idle,
                                         const std::vector<std::string>& exempt) const {
  std::vector<std::string> busy(exempt);
  std::vector<std::string> idle_keys;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [key, s] : slots_) {
      if (!s.id.has_value()) continue;
      if (s.holders > 0 || s.starting || now - s.last_used < idle) {
        busy.push_back(key);
      } else {
        idle_keys.push_back(key);
      }
    }
  }
  std::vector<std::string> out;
  for (const std::string& key : idle_keys) {
    bool needed = std::any_of(busy.begin(), busy.end(), [&](const std::string& b) {
      return b == key || IsBelow(b, key);
    });
    if (!needed) out.push_back(key);
  }
  // Deepest first: a child before its parent.
  std::sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    return std::count(a.begin(), a.end(), '/') > std::count(b.begin(), b.end(), '/');
  });
  return out;
}

}  // namespace grove
