// ChildSet: the children of a router's context, and the routes down to its subtree.
//
// Each child comes with its link; every id of the subtree behind that link (the child's own
// included) has a route to it. The set keeps both sides of that in step: a route to a child
// is in the child's `routed()`, and only then.
//
//            ChildSet
//   by link: Link* ──> Child ─── info, link, handle, log quota, egress
//   routes:  id ─────> Child     (every id behind the child's link)
//   spawning names               (explicit names of children being started)
//   live links                   (child links added and not yet through OnLinkDown)
//
// A child leaves the set by its link (TakeByLink) when its link goes down; its routes stay
// until the router removes its subtree (RemoveRoutes), and its link counts as live until the
// router has handled its going down (LinkDownHandled).
//
// Not thread-safe: its owner guards it (the router, with its mutex). A Child's fields other
// than `info`, `link` and `handle` (set before the child is added, then read-only) and `gone`
// (thread-safe) are guarded the same way.
#ifndef GROVE_ROUTER_CHILD_SET_H_
#define GROVE_ROUTER_CHILD_SET_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "link/launcher.h"
#include "link/link.h"
#include "proto/grove.pb.h"
#include "router/log_quota.h"

namespace grove {

class ChildSet {
 public:
  // One child of this context and the subtree behind its link.
  class Child {
   public:
    v1::ContextInfo info;
    std::shared_ptr<Link> link;
    // Its process; null for a child that lives in this process.
    std::unique_ptr<ChildHandle> handle;
    // Ids outside this subtree that contexts in it have called (NoteCallOut): they are told
    // when one of those is lost.
    absl::flat_hash_set<uint64_t> egress;
    // Log records from this subtree.
    LogQuota log_quota;
    // Notified once OnLinkDown for this child has been handled.
    absl::Notification gone;

    // Ids reached through this child, the child's own included: those routed to it.
    const absl::flat_hash_set<uint64_t>& routed() const { return routed_; }

   private:
    friend class ChildSet;
    absl::flat_hash_set<uint64_t> routed_;
  };

  // `max_per_link`: the most contexts one child link may carry (the child and its live
  // descendants).
  explicit ChildSet(size_t max_per_link) : max_per_link_(max_per_link) {}
  ChildSet(const ChildSet&) = delete;
  ChildSet& operator=(const ChildSet&) = delete;

  // ---- Children ----
  // Adds `child`, with a route to its own id, and counts its link as live. ALREADY_EXISTS
  // (nothing added) when its link or its id is known already.
  absl::Status Add(std::shared_ptr<Child> child);
  // The child on `link`; null when none (never added, or taken since).
  std::shared_ptr<Child> FindByLink(const Link* link) const;
  // The child (not a deeper descendant) with id `id`; null when none.
  std::shared_ptr<Child> FindById(uint64_t id) const;
  // Takes the child on `link` out of the children, when its link went down; null when none.
  // Its routes stay (RemoveRoutes) and its link stays live (LinkDownHandled).
  std::shared_ptr<Child> TakeByLink(const Link* link);
  std::vector<std::shared_ptr<Child>> List() const;
  // The ids of the children, in order.
  std::vector<uint64_t> Ids() const;
  // The links of the children.
  std::vector<std::shared_ptr<Link>> Links() const;
  size_t size() const { return by_link_.size(); }
  bool empty() const { return by_link_.empty(); }

  // ---- Child links not yet through OnLinkDown ----
  int live_links() const { return live_links_; }
  // The going down of one link, taken out with TakeByLink, has been handled.
  void LinkDownHandled();

  // ---- Routes ----
  // The child that `id` is reached through; null when `id` is not in the subtree.
  Child* RouteOf(uint64_t id) const;
  bool Reaches(uint64_t id) const { return routes_.contains(id); }
  // Whether `child`'s link carries max_per_link contexts already.
  bool Full(const Child& child) const { return child.routed_.size() >= max_per_link_; }
  // Routes `id` to `child`, a context that joined its subtree. ALREADY_EXISTS when `id` is
  // routed already; RESOURCE_EXHAUSTED when the link is Full.
  absl::Status AddRoute(const std::shared_ptr<Child>& child, uint64_t id);
  // Removes the routes of `ids` to `child` (a subtree that went); others are left.
  void RemoveRoutes(Child& child, const std::vector<uint64_t>& ids);
  // Removes the routes of those of `ids` that lead to a deeper descendant, not to a child
  // (whose own route only its link going down removes). Returns each id removed, with the
  // child it was reached through, in the order of `ids`.
  std::vector<std::pair<uint64_t, std::shared_ptr<Child>>> RemoveDescendantRoutes(
      const std::vector<uint64_t>& ids);

  // ---- Calls out of a subtree ----
  // Records that a context behind `child` called `dst`, when `dst` is outside that subtree.
  void NoteCallOut(Child& child, uint64_t dst);
  // The links of the children, other than `except`, whose subtrees called any of `ids`; each
  // forgets those calls.
  std::vector<std::shared_ptr<Link>> TakeCallersOf(const std::vector<uint64_t>& ids,
                                                   const Child* except);

  // ---- Names of children being spawned ----
  // ALREADY_EXISTS when a child named `name` is being spawned already.
  absl::Status ReserveName(const std::string& name);
  void ReleaseName(const std::string& name);

 private:
  const size_t max_per_link_;
  absl::flat_hash_map<const Link*, std::shared_ptr<Child>> by_link_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Child>> routes_;
  absl::flat_hash_set<std::string> spawning_names_;
  // Links added and not yet LinkDownHandled: the router's Shutdown waits for zero, so that no
  // link calls into a destroyed router.
  int live_links_ = 0;
};

}  // namespace grove

#endif  // GROVE_ROUTER_CHILD_SET_H_
