#include "common/executor.h"

#include <pthread.h>

#include <utility>

namespace grove {

WorkerPool::WorkerPool(int keep_idle, absl::Duration idle_timeout)
    : keep_idle_(keep_idle), idle_timeout_(idle_timeout) {}

WorkerPool::~WorkerPool() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  mu_.Await(absl::Condition(
      +[](int* threads) { return *threads == 0; }, &threads_));
}

bool WorkerPool::Post(std::function<void()> task) {
  bool start_thread = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    tasks_.push_back(std::move(task));
    if (idle_ < static_cast<int>(tasks_.size())) {
      ++threads_;
      start_thread = true;
    }
  }
  if (start_thread) std::thread([this] { Loop(); }).detach();
  return true;
}

int WorkerPool::threads() const {
  absl::MutexLock lock(&mu_);
  return threads_;
}

void WorkerPool::Loop() {
  pthread_setname_np(pthread_self(), "grove-worker");
  mu_.Lock();
  for (;;) {
    if (tasks_.empty()) {
      if (stopping_) break;
      ++idle_;
      bool got = mu_.AwaitWithTimeout(
          absl::Condition(
              +[](WorkerPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
                return !p->tasks_.empty() || p->stopping_;
              },
              this),
          idle_timeout_);
      --idle_;
      if (!got && idle_ >= keep_idle_) break;
      continue;
    }
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    mu_.Unlock();
    task();
    task = nullptr;
    mu_.Lock();
  }
  // The last touch of `this`: the destructor may return as soon as threads_ reaches 0.
  --threads_;
  mu_.Unlock();
}

Timer::~Timer() {
  std::thread thread;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    queue_.clear();
    when_.clear();
    thread = std::move(thread_);
  }
  if (thread.joinable()) thread.join();
}

uint64_t Timer::Schedule(absl::Time when, std::function<void()> callback) {
  absl::MutexLock lock(&mu_);
  uint64_t id = next_id_++;
  if (stopping_) return id;
  queue_.emplace(std::make_pair(when, id), std::move(callback));
  when_[id] = when;
  if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
  return id;
}

bool Timer::Cancel(uint64_t id) {
  std::function<void()> dropped;  // Destroyed after the lock is released.
  absl::MutexLock lock(&mu_);
  auto it = when_.find(id);
  if (it == when_.end()) return false;
  auto q = queue_.find(std::make_pair(it->second, id));
  dropped = std::move(q->second);
  queue_.erase(q);
  when_.erase(it);
  return true;
}

void Timer::Loop() {
  pthread_setname_np(pthread_self(), "grove-timer");
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    if (queue_.empty()) {
      mu_.Await(absl::Condition(
          +[](Timer* t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(t->mu_) {
            return t->stopping_ || !t->queue_.empty();
          },
          this));
      continue;
    }
    auto first = queue_.begin();
    absl::Time when = first->first.first;
    if (absl::Now() < when) {
      size_t size = queue_.size();
      auto head_changed = [this, when, size]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || queue_.size() != size || queue_.empty() ||
               queue_.begin()->first.first != when;
      };
      mu_.AwaitWithDeadline(absl::Condition(&head_changed), when);
      continue;
    }
    std::function<void()> callback = std::move(first->second);
    when_.erase(first->first.second);
    queue_.erase(first);
    mu_.Unlock();
    callback();
    callback = nullptr;
    mu_.Lock();
  }
}

}  // namespace grove
