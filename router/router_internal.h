// What the parts of the Router (router.cc, router_calls.cc, router_children.cc,
// router_membership.cc) share beyond router.h: the records of a child and of a pending call.
// Not for users of grove.
#ifndef GROVE_ROUTER_ROUTER_INTERNAL_H_
#define GROVE_ROUTER_ROUTER_INTERNAL_H_

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
#include "router/router.h"

namespace grove {

// One child of this context and the subtree behind its link.
struct Router::Child {
  v1::ContextInfo info;
  std::shared_ptr<Link> link;
  std::unique_ptr<ChildHandle> handle;
  // Ids reached through this child, the child's own included. Guarded by Router::mu_.
  absl::flat_hash_set<uint64_t> routed;
  // Ids outside this subtree that contexts in it have called. Guarded by Router::mu_.
  absl::flat_hash_set<uint64_t> egress;
  // Log records from this subtree. Guarded by Router::mu_.
  LogQuota log_quota;
  // Calls from this subtree running here on workers. Guarded by Router::mu_.
  std::shared_ptr<int> running_calls = std::make_shared<int>(0);
  // Notified once OnLinkDown for this child has been handled.
  absl::Notification gone;
};

// A call this context made that has not completed. Fields after construction are guarded by
// Router::mu_.
struct Router::Pending {
  uint64_t dst = 0;
  // The link the call went out on (null: this context). Its reply and output are taken from
  // there only: a child cannot answer, in another context's name, a call that did not go
  // to its subtree.
  std::shared_ptr<Link> via;
  Done done;
  std::function<void(int, const std::string&)> on_output;
  uint64_t timer = 0;
  CancelSource* cancel = nullptr;
  uint64_t cancel_callback = 0;
  CancelSource* parent_cancel = nullptr;
  uint64_t parent_callback = 0;
};

namespace router_internal {

inline bool IsCall(const v1::Envelope& e) { return e.body_case() == v1::Envelope::kCall; }

inline absl::Time DeadlineOf(const CallOptions& options) {
  absl::Time deadline = options.deadline;
  if (options.timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, absl::Now() + options.timeout);
  }
  if (options.parent != nullptr) deadline = std::min(deadline, options.parent->deadline());
  return deadline;
}

}  // namespace router_internal

}  // namespace grove

#endif  // GROVE_ROUTER_ROUTER_INTERNAL_H_
