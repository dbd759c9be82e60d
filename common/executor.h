// Threads that grove's runtime owns: a growing worker pool for functions that may block,
// and a timer thread for deadlines.
#ifndef GROVE_COMMON_EXECUTOR_H_
#define GROVE_COMMON_EXECUTOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grove {

// Runs posted tasks on worker threads. A task never waits for a free thread: when none is
// idle a new one starts, so tasks that block (a function that calls another context, or
// sleeps) cannot starve the others. Up to `keep_idle` idle threads stay; extra idle threads
// exit after `idle_timeout`.
// Thread-safe. The destructor stops accepting tasks, waits for running ones to finish and
// for every thread to exit.
class WorkerPool {
 public:
  explicit WorkerPool(int keep_idle = 1, absl::Duration idle_timeout = absl::Seconds(2));
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;
  ~WorkerPool();

  // Returns false (and drops the task) once the pool is stopping.
  bool Post(std::function<void()> task);

  // Threads currently alive (for tests and figures).
  int threads() const;

 private:
  void Loop();

  const int keep_idle_;
  const absl::Duration idle_timeout_;
  mutable absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  int threads_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

// Runs callbacks at given times on one thread, started on first use. Callbacks run without
// any lock held and must be short (they post real work elsewhere).
// Thread-safe. The destructor drops pending callbacks and joins the thread.
class Timer {
 public:
  Timer() = default;
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  ~Timer();

  // Returns an id for Cancel; ids are never 0.
  uint64_t Schedule(absl::Time when, std::function<void()> callback);
  // True when the callback was pending and will not run.
  bool Cancel(uint64_t id);

 private:
  void Loop();

  absl::Mutex mu_;
  std::map<std::pair<absl::Time, uint64_t>, std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, absl::Time> when_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grove

#endif  // GROVE_COMMON_EXECUTOR_H_
