// Why contexts went: the latest `history` gone contexts of a router's subtree, with the
// reason each went, so that a call to one fails UNAVAILABLE saying why (and a claim on its id
// is refused) until it is forgotten, oldest first. Thread-compatible: the router's lock
// guards it.
#ifndef GROVE_ROUTER_GONE_CONTEXTS_H_
#define GROVE_ROUTER_GONE_CONTEXTS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>

#include "absl/container/flat_hash_map.h"

namespace grove {

class GoneContexts {
 public:
  // Remembers at least one.
  explicit GoneContexts(size_t history) : history_(std::max<size_t>(history, 1)) {}

  // Records that `id` went, and why; a context already recorded keeps its first reason's
  // place in the history but takes the new reason. Forgets the oldest beyond the history.
  void Mark(uint64_t id, const std::string& reason) {
    auto [it, added] = reasons_.insert_or_assign(id, reason);
    if (!added) return;
    order_.push_back(id);
    if (order_.size() > history_) {
      reasons_.erase(order_.front());
      order_.pop_front();
    }
  }
  bool contains(uint64_t id) const { return reasons_.contains(id); }
  // Why `id` went; null when it is not (or no longer) recorded.
  const std::string* Reason(uint64_t id) const {
    auto it = reasons_.find(id);
    return it == reasons_.end() ? nullptr : &it->second;
  }
  size_t size() const { return reasons_.size(); }

 private:
  const size_t history_;
  absl::flat_hash_map<uint64_t, std::string> reasons_;
  std::deque<uint64_t> order_;  // Ids in the order they went.
};

}  // namespace grove

#endif  // GROVE_ROUTER_GONE_CONTEXTS_H_
