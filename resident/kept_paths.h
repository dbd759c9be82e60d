// KeptPaths: the contexts a resident master keeps, keyed by the path that started them.
//
// `Ensure("ssh:web1/sudo:root")` starts "ssh:web1" under the master and "sudo:root" under it,
// unless they are live already, and returns the last; the next Ensure of that path (or of
// "ssh:web1" alone) finds them again. Two clients ensuring the same path at once start it
// once: the second waits for the first. A path is forgotten when its context is stopped or
// gone (the next Ensure starts it again).
//
// Idle contexts: each path remembers when it was last used, and how many calls hold it
// (Lease). `Idle` names the paths nobody held for a while, deepest first, for the resident
// master to stop.
#ifndef GROVE_RESIDENT_KEPT_PATHS_H_
#define GROVE_RESIDENT_KEPT_PATHS_H_

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "router/context.h"
#include "router/router.h"

namespace grove {

// Thread-safe. Owns nothing but its table; the router must outlive it.
class KeptPaths {
 public:
  struct Entry {
    // The canonical path ("ssh:web1/sudo:root": each hop as ParseHop reads it back).
    std::string path;
    // The same with secrets ("password=") replaced by "***": for messages and status.
    std::string display;
    ContextId id;
    std::string name;
    absl::Time last_used;
    int holders = 0;
  };

  // Holds a path in use (not idle) while it lives. Movable.
  class Lease {
   public:
    Lease() = default;
    Lease(KeptPaths* owner, std::vector<std::string> keys) : owner_(owner), keys_(std::move(keys)) {}
    Lease(Lease&& other) noexcept
        : owner_(std::exchange(other.owner_, nullptr)), keys_(std::move(other.keys_)) {}
    Lease& operator=(Lease&& other) noexcept;
    ~Lease();

   private:
    KeptPaths* owner_ = nullptr;
    std::vector<std::string> keys_;
  };

  explicit KeptPaths(Router* root) : root_(root) {}
  KeptPaths(const KeptPaths&) = delete;
  KeptPaths& operator=(const KeptPaths&) = delete;

  // Starts what is missing of `path` and returns its last context, held by `lease` (when not
  // null) until the lease ends. Errors name the hop that failed and the path.
  absl::StatusOr<Context> Ensure(const std::string& path, absl::Duration connect_timeout,
                                 Lease* lease = nullptr);

  // Stops the context at `path` and its subtree (the path and every kept path below it are
  // forgotten). Returns how many kept paths went. NOT_FOUND when `path` is not kept.
  absl::StatusOr<int> Stop(const std::string& path);

  // The entry of a kept path, if any.
  std::optional<Entry> Find(const std::string& path) const;
  // The entry kept at `path_or_name`: a path, or the name of a kept context ("web" for
  // "local,name=web").
  std::optional<Entry> FindByPathOrName(const std::string& path_or_name) const;
  // The kept path of context `id`, if any.
  std::optional<Entry> FindById(ContextId id) const;
  // Every kept path, by path.
  std::vector<Entry> List() const;
  // Waits until no path is being started, or `deadline`. True when it found one starting
  // (a context it is adding may get its path only when that start ends).
  bool AwaitStarts(absl::Time deadline) const;
  // Kept paths not held and unused since `now - idle`, deepest first, excluding `exempt`
  // (supervised paths) and the prefixes of paths that are still in use or exempt.
  std::vector<std::string> Idle(absl::Time now, absl::Duration idle,
                                const std::vector<std::string>& exempt) const;

 private:
  struct Slot {
    std::string display;
    bool starting = false;
    std::optional<ContextId> id;
    std::string name;
    absl::Time last_used = absl::InfinitePast();
    int holders = 0;
  };
  // The entry of a slot that has a context.
  static Entry EntryOf(const std::string& key, const Slot& slot);
  void Release(const std::vector<std::string>& keys);
  bool Live(ContextId id) const;

  Router* const root_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Slot> slots_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grove

#endif  // GROVE_RESIDENT_KEPT_PATHS_H_
