#include "router/functions.h"

#include <algorithm>

#include "glog/logging.h"
#include "router/router.h"

namespace grove {

void CancelSource::Cancel() {
  absl::flat_hash_map<uint64_t, std::function<void()>> callbacks;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return;
    cancelled_ = true;
    callbacks.swap(callbacks_);
    running_ = std::this_thread::get_id();
  }
  for (auto& [id, callback] : callbacks) callback();
  absl::MutexLock lock(&mu_);
  running_ = std::thread::id();
}

bool CancelSource::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

uint64_t CancelSource::AddCallback(std::function<void()> callback) {
  {
    absl::MutexLock lock(&mu_);
    if (!cancelled_) {
      uint64_t id = next_id_++;
      callbacks_.emplace(id, std::move(callback));
      return id;
    }
  }
  callback();
  return 0;
}

void CancelSource::RemoveCallback(uint64_t id) {
  std::function<void()> dropped;  // Destroyed outside the lock.
  absl::MutexLock lock(&mu_);
  auto it = callbacks_.find(id);
  if (it != callbacks_.end()) {
    dropped = std::move(it->second);
    callbacks_.erase(it);
    return;
  }
  if (running_ != std::thread::id() && running_ != std::this_thread::get_id()) {
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return running_ == std::thread::id();
    };
    mu_.Await(absl::Condition(&done));
  }
}

void CallContext::Output(int stream, std::string data) {
  router_->SendOutput(caller_, call_id_, stream, std::move(data));
}

void Functions::Add(Function function) {
  CHECK(!function.name.empty()) << "a function needs a name";
  std::string name = function.name;
  bool inserted =
      functions_.emplace(name, std::make_unique<Function>(std::move(function))).second;
  CHECK(inserted) << "function '" << name << "' registered twice";
}

const Function* Functions::Find(const std::string& name) const {
  auto it = functions_.find(name);
  return it == functions_.end() ? nullptr : it->second.get();
}

std::vector<std::string> Functions::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, f] : functions_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace grove
