// The zygote: the single-threaded process that forks a context's `fork` children. Its
// wire protocol is in zygote_wire.h, its loop in zygote_loop.cc, its handle in the context
// (Zygote) in zygote.cc, and the `fork` launcher that uses it in fork_launcher.h.
//
// fork() without exec is unusable once gRPC has started a thread (its threads and locks are
// not in the child), so fork children come from a zygote: a helper process that stays
// single-threaded and forks every fork child on request. The master forks its zygote at startup, while it still
// has only one thread (Zygote::Start); a child context runs its program again as its zygote
// when it is first asked to fork (Zygote::StartOnFirstFork), since a child's state at
// startup is the program's anyway. A fork child therefore starts as a copy of its context's
// program as it was when the zygote started (code and state, no threads, no gRPC), gets a
// fresh id and link like any other child, and runs the agent in-process (see StartZygote in
// child/agent.h, which supplies that entry point).
//
//      context ── SOCK_SEQPACKET socketpair ──> zygote (single-threaded, reaps)
//         │  request: agent argv + output pipe (SCM_RIGHTS)          │ fork()
//         │  reply: pid + {pidfd, link end} (SCM_RIGHTS);             │
//         │  later: "pid exited: status"                              ▼
//         └─────────────────── link (gRPC) ───────────────────────── fork child
//                                        its own socket to the same zygote ┘
//
// The zygote makes each child's link (a socketpair: the child's end on its fd 3, the other
// to the context that asked). Once it has forked a child, a zygote keeps a spare: a fork
// child forked ahead of the next request, which has done what every fork child does at its
// start whichever child it becomes (Entry::prepare: gRPC's start, the agent's server, its
// link served) and waits on its socket. A request that fits the spare (Entry::fits) hands it
// its argv and output instead of forking, and the context connects to a child that is
// already serving. Once that child is up (SayStarted), the zygote forks the next spare (not
// earlier: the two would compete for the CPU). A spare is named grove-spare (its comm) until
// it is handed out, and dies with its zygote (PDEATHSIG until then).
//
// The fork child is the zygote's child, not its context's: the zygote reaps it and reports
// its wait status over the socket; the context watches it through the pidfd (which the
// zygote opened before the child could be reaped, so it never names a reused pid) and
// signals it through the same pidfd. A fork child does not start a zygote of its own: it
// would be one more copy of the same state. The zygote gives each fork child a socket of
// its own, over which it forks the fork child's fork children (and reports their exits
// there), so one zygote serves a context and its whole subtree of fork descendants. The
// zygote exits when its context's socket closes (its context stopped it or died), and its
// context reaps it.
#ifndef GROVE_LAUNCH_ZYGOTE_H_
#define GROVE_LAUNCH_ZYGOTE_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/fd.h"
#include "common/process.h"

namespace grove {

// A context's zygote: the process (when this context started it) and this context's end of
// a socket to it. Thread-safe. Shared by the fork launcher and the handles of the fork
// children, so that it outlives them.
class Zygote {
 public:
  // What a fork child runs.
  struct Entry {
    // In a spare (see above), right after its fork, on its only thread, with stdio
    // /dev/null, its link on fd 3 (whose other end goes to whoever gets the spare) and no
    // other fd but its socket to the zygote: the work every fork child does whichever child
    // it becomes.
    // `hint` is the argv of the request before (the next one is most likely alike). May
    // start threads; returns when done.
    std::function<void(const std::vector<std::string>& hint)> prepare;
    // With the argv its context asked for (argv[0] is this program); must not return (the
    // child exits with status 1 if it does). Runs with stdin /dev/null, stdout and stderr on
    // the output pipe and the link on fd 3: in a spare, after `prepare`, on the thread that
    // ran it; in a child forked on request, on its only thread, with no other fd open.
    std::function<void(const std::vector<std::string>& argv)> run;
    // In the zygote: whether a spare prepared with `hint` can run `argv`.
    std::function<bool(const std::vector<std::string>& hint,
                       const std::vector<std::string>& argv)>
        fits;
  };

  // Forks the zygote. This process must still be single-threaded: a zygote forked after a
  // thread started would copy whatever that thread held. That is a programmer error (CHECK,
  // "start the zygote before any thread": at the top of main()). Pending stdio output is
  // flushed first, so that the zygote's copies of the buffers are empty. In a fork child
  // (the first call only): the zygote it was forked from, through the socket it was given;
  // `entry` is then that zygote's, which is this one's.
  static absl::StatusOr<std::shared_ptr<Zygote>> Start(Entry entry);

  // A zygote that starts on the first Fork, by running this program again with
  // kZygoteFlag (which must lead to RunExecuted before any thread starts: RunAgent does
  // that). For a child context, whose program state at startup is all a fork child can
  // inherit from it anyway: a context that never forks costs no second process, and its
  // pages are not shared copy-on-write with one.
  static absl::StatusOr<std::shared_ptr<Zygote>> StartOnFirstFork();
  // In a program run with kZygoteFlag: serves its fd 3 as the zygote; never returns.
  // Single-threaded callers only (CHECK).
  [[noreturn]] static void RunExecuted(Entry entry);

  // Stops the zygote (see Stop).
  ~Zygote();
  Zygote(const Zygote&) = delete;
  Zygote& operator=(const Zygote&) = delete;

  // -1 until the zygote has started.
  pid_t pid() const {
    absl::MutexLock lock(&mu_);
    return pid_;
  }

  struct Forked {
    pid_t pid = -1;
    // Readable once the child has exited; valid for pidfd_send_signal until it is reaped.
    UniqueFd pidfd;
    // This end of its link (a socketpair the zygote made; the child has the other on fd 3).
    UniqueFd link;
  };
  // A child that runs the entry with `argv` and `output_fd` as its stdout and stderr (copied:
  // this process keeps its own): the spare, if it fits, or one forked now. Requests are
  // served one at a time. FAILED_PRECONDITION when the zygote is gone (saying how it
  // ended), DEADLINE_EXCEEDED when it does not answer before `deadline`, the fork's errno
  // when it fails.
  absl::StatusOr<Forked> Fork(const std::vector<std::string>& argv, int output_fd,
                              absl::Time deadline);

  // In a fork child, once it is linked up: tells the zygote it came from, which forks its
  // next spare then (not while this child starts). Elsewhere a no-op. Never blocks.
  void SayStarted();

  // The wait status of fork child `pid` once the zygote has reaped it and said so; waits
  // until `deadline` for that. DEADLINE_EXCEEDED when no report came by then; UNAVAILABLE
  // when the zygote is gone (its exit then goes unreported).
  absl::StatusOr<int> WaitStatus(pid_t pid, absl::Time deadline);
  // Nobody will ask for the status of `pid` any more: drops it (now, or when it comes).
  void Forget(pid_t pid);

  // Closes the socket. A zygote this context started exits on the end of file: waits for
  // that (SIGKILL after a second) and reaps it. Later Forks fail. Idempotent; blocks.
  void Stop();

 private:
  // `process`: set when this context started the zygote (and so reaps it).
  Zygote(UniqueFd socket, pid_t pid, std::optional<Process> process);
  // Starts the zygote of StartOnFirstFork, once; marks it gone when it cannot be started.
  void StartNow() ABSL_EXCLUSIVE_LOCKS_REQUIRED(fork_mu_) ABSL_LOCKS_EXCLUDED(mu_);

  // The zygote's answer to a fork request.
  struct Reply {
    // Declared, so that clang sees a default constructor before the class is complete.
    Reply() {}
    absl::Status status;  // OK: `pid`, `pidfd` and `link` are set.
    pid_t pid = -1;
    UniqueFd pidfd;
    UniqueFd link;
  };
  // Waits until `ready` holds (evaluated with mu_ held), reading from the socket meanwhile
  // (one thread at a time does). False at `deadline`.
  bool WaitUntil(const std::function<bool()>& ready, absl::Time deadline)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Reads every message available without blocking; records them. Marks the zygote gone
  // at the end of file.
  void ReadAvailable() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MarkGone(const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A zygote this context started: waits for it to exit (SIGKILL after a second) and reaps it.
  void ReapIfOurs() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status GoneError() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant until destruction: shut down (not closed) by Stop, so that it may be used
  // without the lock.
  const UniqueFd socket_;
  // Set by Start before it shares this: a fork child's, attached to the zygote it came from.
  bool fork_child_ = false;

  // Serialises fork requests: at most one reply is awaited at a time.
  absl::Mutex fork_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  // The zygote's end of the socket, until StartNow gives it to the zygote it starts.
  UniqueFd unstarted_end_ ABSL_GUARDED_BY(fork_mu_);
  mutable absl::Mutex mu_;
  pid_t pid_ ABSL_GUARDED_BY(mu_);
  std::optional<Process> process_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  // A thread is reading the socket (without mu_); others wait on mu_.
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  int32_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  // The request whose reply Fork is waiting for (0: none), and that reply once it came.
  int32_t awaiting_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<Reply> reply_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<pid_t, int> exits_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<pid_t> forgotten_ ABSL_GUARDED_BY(mu_);
  // Set once the zygote is gone: how (and then no more messages come).
  std::optional<std::string> gone_ ABSL_GUARDED_BY(mu_);
};

// argv[1] of a program run to be a zygote (Zygote::StartOnFirstFork).
inline constexpr char kZygoteFlag[] = "--grove-zygote";

// Where a fork child has its link (its agent's --grove-fd); a spare serves it there.
inline constexpr int kForkChildLinkFd = 3;

// In a fork child whose agent has not taken it yet (Zygote::Start does): its socket to the
// zygote it came from. Otherwise -1.
int InheritedZygoteSocket();

}  // namespace grove

#endif  // GROVE_LAUNCH_ZYGOTE_H_
