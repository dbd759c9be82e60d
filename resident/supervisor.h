// Supervisor: keeps the contexts a spec declares running, by their restart policy.
//
// Each supervised path is in one state:
//
//   starting ──ok──> running ──lost──> restarting ──(backoff)──> starting
//       │                │                  │
//       └──failed────────┴──limit reached───┴─────> down (reason shown; until reload)
//
// "Lost" is what the registry says: a context's removal (SIGKILL, crash, its link or host
// gone) is seen within a millisecond of the link going. ON_FAILURE does not restart a context
// that ended cleanly (exit status 0, or shut down on request); NEVER never restarts. The
// backoff starts at `initial_ms` and doubles per restart up to `max_ms`; it starts over when
// the context had run for a whole limit window. More than `limit.restarts` restarts within
// `limit.window_s`, and the path goes down with the last reason.
#ifndef GROVE_RESIDENT_SUPERVISOR_H_
#define GROVE_RESIDENT_SUPERVISOR_H_

#include <deque>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/control.pb.h"
#include "ingress/ingress.h"
#include "proto/spec.pb.h"
#include "resident/kept_paths.h"
#include "resident/log_book.h"
#include "router/router.h"

namespace grove {

// Checks a spec: every path parses, none twice (contexts and replicas), backoff and limits not
// negative, services and ingress as ValidateServices says. INVALID_ARGUMENT naming the entry.
absl::Status ValidateSpec(const v1::Spec& spec);
// What a spec supervises: its contexts, then the replicas of its services.
std::vector<v1::SupervisedContext> SupervisedContexts(const v1::Spec& spec);
// Parses a spec (protobuf text format, the contents of `file_name`). INVALID_ARGUMENT naming
// the file, line and column.
absl::StatusOr<v1::Spec> ParseSpec(const std::string& text, const std::string& file_name);
// Reads and parses the spec file at `path` (NOT_FOUND when it cannot be read).
absl::StatusOr<v1::Spec> ReadSpecFile(const std::string& path);

// Thread-safe. Owns its restart thread and its registry subscription (both end in the
// destructor, which leaves the contexts running: the master's shutdown takes them down).
// `root`, `kept` and `log` must outlive it.
class Supervisor {
 public:
  struct State {
    std::string path;     // canonical
    std::string display;  // secrets hidden
    std::string state;    // starting, running, restarting, down
    std::string reason;   // why it is not running, or why it last restarted
    int restarts = 0;
    std::optional<ContextId> id;
  };

  Supervisor(Router* root, KeptPaths* kept, LogBook* log);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Makes `spec` the supervised set: starts the new paths (waiting for their first start, at
  // most `connect_timeout` each), stops the paths no longer in it, keeps the others running
  // with their new policy (a path that was down is started again). The spec must be valid.
  v1::ReloadReply Apply(const v1::Spec& spec, absl::Duration connect_timeout);

  // Stops supervising `canonical_path` (grove stop); false when it was not supervised.
  bool Forget(const std::string& canonical_path);

  std::vector<State> States() const;
  // The supervised paths (canonical): never stopped for being idle.
  std::vector<std::string> Paths() const;

 private:
  struct Entry {
    v1::SupervisedContext spec;
    std::string display;
    std::string state = "starting";
    std::string reason;
    int restarts = 0;
    std::optional<ContextId> id;
    // Restart times within the limit window, oldest first.
    std::deque<absl::Time> recent;
    absl::Duration backoff = absl::ZeroDuration();
    absl::Time due = absl::InfiniteFuture();
    absl::Time started = absl::InfinitePast();
    // Bumped on each Apply that replaces or re-adds it: a start that finishes for an older
    // generation is ignored.
    uint64_t generation = 0;
  };

  void OnRemoved(const ContextRecord& record);
  void Loop();
  // Starts `path` now; records the outcome (running, or a failure handled like a loss).
  void StartOne(const std::string& path, uint64_t generation, absl::Duration connect_timeout);
  // After a loss or a failed start: schedules the next try, or gives up.
  void ScheduleLocked(Entry& entry, const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Router* const root_;
  KeptPaths* const kept_;
  LogBook* const log_;
  int subscription_ = 0;

  mutable absl::Mutex mu_;
  absl::btree_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t next_generation_ ABSL_GUARDED_BY(mu_) = 1;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace grove

#endif  // GROVE_RESIDENT_SUPERVISOR_H_
