#include "router/child_set.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"

namespace grove {

// ---------------------------------------------------------------------------------------
// Children.
absl::Status ChildSet::Add(std::shared_ptr<Child> child) {
  const uint64_t id = child->info.id();
  if (by_link_.contains(child->link.get())) {
    return absl::AlreadyExistsError(
        absl::StrCat("the link of child ", child->info.name(), " is linked already"));
  }
  if (routes_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("id ", id, " is routed already"));
  }
  child->routed_.insert(id);
  routes_[id] = child;
  by_link_[child->link.get()] = std::move(child);
  ++live_links_;
  return absl::OkStatus();
}

std::shared_ptr<ChildSet::Child> ChildSet::FindByLink(const Link* link) const {
  auto it = by_link_.find(link);
  return it == by_link_.end() ? nullptr : it->second;
}

std::shared_ptr<ChildSet::Child> ChildSet::FindById(uint64_t id) const {
  for (const auto& [link, child] : by_link_) {
    if (child->info.id() == id) return child;
  }
  return nullptr;
}

std::shared_ptr<ChildSet::Child> ChildSet::TakeByLink(const Link* link) {
  auto it = by_link_.find(link);
  if (it == by_link_.end()) return nullptr;
  std::shared_ptr<Child> child = std::move(it->second);
  by_link_.erase(it);
  return child;
}

std::vector<std::shared_ptr<ChildSet::Child>> ChildSet::List() const {
  std::vector<std::shared_ptr<Child>> children;
  children.reserve(by_link_.size());
  for (const auto& [link, child] : by_link_) children.push_back(child);
  return children;
}

std::vector<uint64_t> ChildSet::Ids() const {
  std::vector<uint64_t> ids;
  ids.reserve(by_link_.size());
  for (const auto& [link, child] : by_link_) ids.push_back(child->info.id());
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::vector<std::shared_ptr<Link>> ChildSet::Links() const {
  std::vector<std::shared_ptr<Link>> links;
  links.reserve(by_link_.size());
  for (const auto& [link, child] : by_link_) links.push_back(child->link);
  return links;
}

void ChildSet::LinkDownHandled() {
  DCHECK_GT(live_links_, 0);
  --live_links_;
}

// ---------------------------------------------------------------------------------------
// Routes.
ChildSet::Child* ChildSet::RouteOf(uint64_t id) const {
  auto it = routes_.find(id);
  return it == routes_.end() ? nullptr : it->second.get();
}

absl::Status ChildSet::AddRoute(const std::shared_ptr<Child>& child, uint64_t id) {
  if (routes_.contains(id)) {
    return absl::AlreadyExistsError(absl::StrCat("id ", id, " is routed already"));
  }
  if (Full(*child)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the link to ", child->info.name(), " already carries ",
                     child->routed_.size(), " contexts, the most one link may"));
  }
  routes_[id] = child;
  child->routed_.insert(id);
  return absl::OkStatus();
}

void ChildSet::RemoveRoutes(Child& child, const std::vector<uint64_t>& ids) {
  for (uint64_t id : ids) {
    if (child.routed_.erase(id) > 0) routes_.erase(id);
  }
}

std::vector<std::pair<uint64_t, std::shared_ptr<ChildSet::Child>>>
ChildSet::RemoveDescendantRoutes(const std::vector<uint64_t>& ids) {
  std::vector<std::pair<uint64_t, std::shared_ptr<Child>>> removed;
  for (uint64_t id : ids) {
    auto route = routes_.find(id);
    if (route == routes_.end()) continue;
    std::shared_ptr<Child> child = route->second;
    if (child->info.id() == id) continue;
    routes_.erase(route);
    child->routed_.erase(id);
    removed.emplace_back(id, std::move(child));
  }
  return removed;
}

// ---------------------------------------------------------------------------------------
// Calls out of a subtree.
void ChildSet::NoteCallOut(Child& child, uint64_t dst) {
  if (!child.routed_.contains(dst)) child.egress.insert(dst);
}

std::vector<std::shared_ptr<Link>> ChildSet::TakeCallersOf(const std::vector<uint64_t>& ids,
                                                           const Child* except) {
  std::vector<std::shared_ptr<Link>> callers;
  for (const auto& [link, child] : by_link_) {
    if (child.get() == except) continue;
    bool called = false;
    for (uint64_t id : ids) called |= child->egress.erase(id) > 0;
    if (called) callers.push_back(child->link);
  }
  return callers;
}

// ---------------------------------------------------------------------------------------
// Names of children being spawned.
absl::Status ChildSet::ReserveName(const std::string& name) {
  if (!spawning_names_.insert(name).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("a child named '", name, "' is being spawned already"));
  }
  return absl::OkStatus();
}

void ChildSet::ReleaseName(const std::string& name) { spawning_names_.erase(name); }

}  // namespace grove
