// Starting and reaping child processes without leaking fds or zombies.
//
// Spawning uses posix_spawn (vfork semantics: cheap even in a large, multi-threaded
// process, and nothing but exec runs in the child). Every started process is tracked by a
// pidfd, so exit can be awaited with poll() and a deadline.
#ifndef GROVE_COMMON_PROCESS_H_
#define GROVE_COMMON_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/fd.h"

namespace grove {

struct SpawnOptions {
  // argv[0] is searched in PATH unless it contains a '/'.
  std::vector<std::string> argv;
  // The child's whole environment, "KEY=VALUE"; unset means this process's environment.
  std::optional<std::vector<std::string>> env;
  // Working directory of the child; empty means this process's.
  std::string cwd;
  // {fd in the child, fd in this process}: each is dup2'ed into place. Every other fd of
  // this process is close-on-exec and so not inherited.
  std::vector<std::pair<int, int>> fds;
  // When set, the child starts a new session and opens this terminal (a PTY's slave path),
  // which so becomes its controlling terminal, onto each of `terminal_fds` (after `fds`).
  std::string controlling_terminal;
  std::vector<int> terminal_fds;
  // The child leads a process group of its own (its pgid is its pid), so that
  // Process::SignalGroup reaches everything it starts that stays in its group.
  bool new_process_group = false;
  // The child gets SIGKILL when the thread that started it ends, this whole process included,
  // however it ends (PR_SET_PDEATHSIG, set between fork and exec, and checked against a
  // parent that died meanwhile, so that it cannot race). Not with `controlling_terminal`.
  bool kill_with_parent = false;
};

// One started child process. Owns its pid and pidfd; the destructor kills (SIGKILL) and
// reaps a process that has not been reaped yet, so no zombie is ever left, and kills the rest
// of the process group it leads, if it leads one.
// Move-only. Thread-compatible: Wait/TryWait from one thread at a time; pidfd() may be
// polled from any thread.
class Process {
 public:
  static absl::StatusOr<Process> Spawn(const SpawnOptions& options);
  // Takes charge of `pid`, a child this process forked itself: opens its pidfd. On failure
  // the child is killed and reaped.
  static absl::StatusOr<Process> Adopt(pid_t pid);

  Process() = default;
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;
  ~Process();

  pid_t pid() const { return pid_; }
  int pidfd() const { return pidfd_.get(); }
  bool reaped() const { return status_.has_value(); }
  // The wait status once reaped.
  std::optional<int> status() const { return status_; }

  // Reaps the process if it has exited; returns its wait status then.
  std::optional<int> TryWait();
  // Waits until the process exits or `deadline` passes (kDeadlineExceeded then).
  absl::StatusOr<int> Wait(absl::Time deadline);
  // Sends `sig` unless the process was already reaped.
  void Signal(int sig);
  // Sends `sig` to the process group the process leads (SpawnOptions::new_process_group),
  // also once the process itself was reaped while others of its group live on; to the
  // process alone when it leads none.
  void SignalGroup(int sig);
  // Whether the process leads a process group of its own.
  bool leads_group() const { return leads_group_; }
  // SIGTERM, then SIGKILL after `grace`; returns the wait status.
  int Terminate(absl::Duration grace);

 private:
  pid_t pid_ = -1;
  UniqueFd pidfd_;
  std::optional<int> status_;
  bool leads_group_ = false;
};

// Raises this process's soft limit on open files (RLIMIT_NOFILE) to its hard limit: a context
// holds a few fds per child link, and Debian's default soft limit (1024) would cap a tree at a
// few hundred children. Processes it starts inherit the raised limit. Returns the limit now.
uint64_t RaiseOpenFileLimit();

// What EMFILE means for a context: how many fds this process holds, its limit, and how to
// raise the hard one. For errors that end in "Too many open files".
std::string OpenFilesHint();

// "exited with status 3", "killed by signal 9 (Killed)".
std::string DescribeWaitStatus(int status);

// This host's name, and the name of the user this process runs as (the uid if it has none).
std::string CurrentHostName();
std::string CurrentUserName();

// The conventional shell exit code for a wait status: the exit status, or 128 + signal.
int ExitCodeOf(int status);

// The parent of process `pid`, from /proc/PID/stat; -1 when it is gone.
pid_t ParentOf(pid_t pid);

// Every live process below `roots` (by parent pid, from /proc), the roots excluded.
std::set<pid_t> DescendantsOf(const std::set<pid_t>& roots);

}  // namespace grove

#endif  // GROVE_COMMON_PROCESS_H_
