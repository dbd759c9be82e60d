// What the parts of the Router (router.cc, router_calls.cc, router_children.cc,
// router_membership.cc) share beyond router.h: small helpers. The records of a child and of a
// pending call are ChildSet::Child (router/child_set.h) and PendingCall (router/call_table.h).
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
