// Registry: the records of every context below one context.
//
// Every router keeps one for its own subtree; the master's is therefore the whole tree. It
// is updated by ContextAdded / ContextRemoved events as they travel up, so it also holds the
// contexts that children started on their own, under the names they were given there.
//
// Context lifecycle, as recorded here:
//
//          (1) ContextAdded           (2) link lost / shut down / ancestor lost
//   ──────────────────────> CONNECTED ─────────────────────────────────────> GONE
//
//   (1) the parent linked the child up (its Hello arrived) and told its ancestors.
//   (2) the context's link (or an ancestor's) went down; the record stays, with the reason,
//       until more than `gone_history` records are gone: then the oldest gone record is
//       dropped, so that a long-lived tree that starts and stops contexts keeps its memory
//       flat. Ids are never reused, so a GONE record is never revived.
#ifndef GROVE_ROUTER_REGISTRY_H_
#define GROVE_ROUTER_REGISTRY_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "common/context_id.h"
#include "proto/grove.pb.h"

namespace grove {

enum class ContextState { kConnected, kGone };

struct ContextRecord {
  ContextId id;
  std::string name;
  ContextId parent;
  std::string method;
  std::string host;
  int64_t pid = 0;
  std::string user;
  ContextState state = ContextState::kConnected;
  // Why it is gone.
  std::string reason;
};

const char* ContextStateName(ContextState state);

struct RegistryEvent {
  enum Kind { kAdded, kRemoved };
  Kind kind;
  ContextRecord record;
};

// How many gone contexts a registry (and a router, for its "is gone" answers) remembers.
inline constexpr size_t kDefaultGoneHistory = 4096;

// Thread-safe. Subscribers are called outside the registry's lock, on the thread that applied
// the change; they must not block.
class Registry {
 public:
  // Keeps the records of the latest `gone_history` contexts to go (at least 1).
  explicit Registry(size_t gone_history = kDefaultGoneHistory)
      : gone_history_(std::max<size_t>(gone_history, 1)) {}
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Records a new context. Returns false (and changes nothing) when the id is already known
  // (live, or gone and still remembered: the router keeps ids unique beyond that).
  bool Add(const v1::ContextInfo& info);
  // Marks `ids` gone; returns the records that were live. Drops the oldest gone records
  // beyond the history (subscribers are not told: they saw those contexts go).
  std::vector<ContextRecord> MarkGone(const std::vector<uint64_t>& ids, const std::string& reason);

  // Drops the record of `id` altogether (a context that was never really there: its
  // ContextAdded was refused further up); subscribers see it removed.
  void Forget(ContextId id);

  std::optional<ContextRecord> Find(ContextId id) const;
  // The live context with that name (or, if none is live, the latest gone one).
  std::optional<ContextRecord> FindByName(const std::string& name) const;
  // Sorted by id.
  std::vector<ContextRecord> List(bool include_gone) const;
  size_t live_count() const;
  // Live and remembered gone records.
  size_t size() const;

  // Returns an id for Unsubscribe. A callback already running when Unsubscribe is called may
  // still finish after Unsubscribe returns.
  int Subscribe(std::function<void(const RegistryEvent&)> callback);
  void Unsubscribe(int id);

 private:
  void Notify(const std::vector<RegistryEvent>& events);
  // Removes the record at `it` from records_ and by_name_; returns it.
  ContextRecord EraseLocked(absl::flat_hash_map<uint64_t, ContextRecord>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t gone_history_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, ContextRecord> records_ ABSL_GUARDED_BY(mu_);
  // Every id that carried each name, oldest first.
  absl::flat_hash_map<std::string, std::vector<uint64_t>> by_name_ ABSL_GUARDED_BY(mu_);
  size_t live_ ABSL_GUARDED_BY(mu_) = 0;
  // Ids in the order they went; may name records already forgotten.
  std::deque<uint64_t> gone_order_ ABSL_GUARDED_BY(mu_);

  absl::Mutex subscribers_mu_;
  int next_subscriber_ ABSL_GUARDED_BY(subscribers_mu_) = 1;
  absl::flat_hash_map<int, std::shared_ptr<std::function<void(const RegistryEvent&)>>>
      subscribers_ ABSL_GUARDED_BY(subscribers_mu_);
};

ContextRecord RecordFromInfo(const v1::ContextInfo& info);

}  // namespace grove

#endif  // GROVE_ROUTER_REGISTRY_H_
