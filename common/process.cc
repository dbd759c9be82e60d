#include "common/process.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace grove {
namespace {

// Defaults restored in every spawned child, whatever this process did with them.
constexpr int kDefaultSignals[] = {SIGPIPE, SIGINT,  SIGTERM, SIGHUP,
                                   SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2};

// Lowest fd number used for the temporary copies handed to posix_spawn, chosen above any
// fd number a child is given so that source and target never coincide.
constexpr int kSpawnScratchFd = 64;

std::vector<char*> CStrings(const std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (const std::string& s : strings) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

// The path posix_spawnp would run for `file`: as is when it holds a '/', otherwise the first
// executable match in this process's PATH. Empty when there is none.
std::string FindExecutable(const std::string& file) {
  if (file.find('/') != std::string::npos) return file;
  const char* path = ::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  for (size_t start = 0; start <= dirs.size();) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    std::string candidate = absl::StrCat(dir.empty() ? "." : dir, "/", file);
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

// Spawn with a parent-death signal, which posix_spawn cannot set: vfork, then in the child
// (which shares this process's memory until it execs, and so does nothing but system calls)
// the process group, the signal, the fds, the directory and exec. Every signal is blocked
// around the vfork, so no handler of this process runs in the child; exec restores handlers
// to their defaults.
absl::StatusOr<Process> SpawnWithParentDeathSignal(const SpawnOptions& options,
                                                   const std::vector<UniqueFd>& scratch) {
  const std::string path = FindExecutable(options.argv[0]);
  if (path.empty()) {
    return ErrnoStatus(ENOENT, absl::StrCat("cannot start ", options.argv[0]).c_str());
  }
  std::vector<char*> argv = CStrings(options.argv);
  std::vector<char*> envp;
  if (options.env) envp = CStrings(*options.env);
  char* const* env = options.env ? envp.data() : environ;
  const char* cwd = options.cwd.empty() ? nullptr : options.cwd.c_str();
  const pid_t parent = ::getpid();
  const bool group = options.new_process_group;
  // The child reports a failure before exec as its errno on this pipe; exec closes it. (A
  // sanitizer's runtime may make vfork a fork, so nothing is passed through memory.)
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe");
  UniqueFd report_read(report[0]), report_write(report[1]);
  const int report_fd = report_write.get();
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = ::vfork();
  if (pid == 0) {
    auto fail = [report_fd]() {
      int err = errno;
      (void)!::write(report_fd, &err, sizeof(err));
      _exit(127);
    };
    for (int sig : kDefaultSignals) ::signal(sig, SIG_DFL);
    if (group) ::setpgid(0, 0);
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || ::getppid() != parent) _exit(127);
    for (size_t i = 0; i < scratch.size(); ++i) {
      if (::dup2(scratch[i].get(), options.fds[i].first) < 0) fail();
    }
    if (cwd != nullptr && ::chdir(cwd) != 0) fail();
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(path.c_str(), argv.data(), env);
    fail();
  }
  const int vfork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) return ErrnoStatus(vfork_errno, "vfork");
  report_write.Reset();
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(report_read.get(), &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);
  if (n == sizeof(child_errno)) {
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return ErrnoStatus(child_errno, absl::StrCat("cannot start ", options.argv[0],
                                                 cwd == nullptr ? "" : absl::StrCat(" in ", cwd))
                                        .c_str());
  }
  return Process::Adopt(pid);
}

}  // namespace

absl::StatusOr<Process> Process::Spawn(const SpawnOptions& options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return absl::InvalidArgumentError("cannot start a process with an empty argv");
  }
  if (options.kill_with_parent && !options.controlling_terminal.empty()) {
    return absl::InvalidArgumentError("kill_with_parent cannot go with a controlling terminal");
  }
  // Copies of the source fds at high numbers, close-on-exec, so that dup2 always clears
  // close-on-exec on the target and no mapping overwrites another's source.
  std::vector<UniqueFd> scratch;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  for (const auto& [child_fd, parent_fd] : options.fds) {
    int copy = ::fcntl(parent_fd, F_DUPFD_CLOEXEC, kSpawnScratchFd);
    if (copy < 0) {
      posix_spawn_file_actions_destroy(&actions);
      return ErrnoStatus(errno, "dup of an fd for a child");
    }
    scratch.emplace_back(copy);
    posix_spawn_file_actions_adddup2(&actions, copy, child_fd);
  }
  if (options.kill_with_parent) {
    posix_spawn_file_actions_destroy(&actions);
    absl::StatusOr<Process> process = SpawnWithParentDeathSignal(options, scratch);
    if (process.ok()) process->leads_group_ = options.new_process_group;
    return process;
  }
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (!options.controlling_terminal.empty() && !options.terminal_fds.empty()) {
    // glibc runs setsid before the file actions, so this open (without O_NOCTTY) makes the
    // terminal the new session's controlling terminal.
    flags |= POSIX_SPAWN_SETSID;
    const int first = options.terminal_fds[0];
    posix_spawn_file_actions_addopen(&actions, first, options.controlling_terminal.c_str(),
                                     O_RDWR, 0);
    for (size_t i = 1; i < options.terminal_fds.size(); ++i) {
      posix_spawn_file_actions_adddup2(&actions, first, options.terminal_fds[i]);
    }
  }
  if (!options.cwd.empty()) {
    posix_spawn_file_actions_addchdir_np(&actions, options.cwd.c_str());
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  if (options.new_process_group) {
    flags |= POSIX_SPAWN_SETPGROUP;
    posix_spawnattr_setpgroup(&attr, 0);
  }
  sigset_t mask;
  sigemptyset(&mask);
  posix_spawnattr_setsigmask(&attr, &mask);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (int sig : kDefaultSignals) sigaddset(&defaults, sig);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, flags);

  std::vector<char*> argv = CStrings(options.argv);
  std::vector<char*> envp;
  if (options.env) envp = CStrings(*options.env);
  pid_t pid = -1;
  int err = ::posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(),
                           options.env ? envp.data() : environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (err != 0) {
    return ErrnoStatus(err, absl::StrCat("cannot start ", options.argv[0],
                                         options.cwd.empty() ? "" : " in " + options.cwd)
                                .c_str());
  }
  absl::StatusOr<Process> process = Adopt(pid);
  if (process.ok()) process->leads_group_ = options.new_process_group;
  return process;
}

absl::StatusOr<Process> Process::Adopt(pid_t pid) {
  Process process;
  process.pid_ = pid;
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    absl::Status status = ErrnoStatus(errno, "pidfd_open");
    // Without a pidfd: kill and reap by pid (it is our child, so the pid cannot be reused
    // before it is reaped).
    ::kill(pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    process.pid_ = -1;
    return status;
  }
  process.pidfd_.Reset(pidfd);
  return process;
}

Process::Process(Process&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::move(other.pidfd_)),
      status_(std::exchange(other.status_, std::nullopt)),
      leads_group_(std::exchange(other.leads_group_, false)) {}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0 && !status_) Terminate(absl::ZeroDuration());
    if (pid_ > 0 && leads_group_) ::kill(-pid_, SIGKILL);
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::move(other.pidfd_);
    status_ = std::exchange(other.status_, std::nullopt);
    leads_group_ = std::exchange(other.leads_group_, false);
  }
  return *this;
}

Process::~Process() {
  if (pid_ > 0 && !status_) Terminate(absl::ZeroDuration());
  if (pid_ > 0 && leads_group_) ::kill(-pid_, SIGKILL);  // What it started in its group.
}

std::optional<int> Process::TryWait() {
  if (status_ || pid_ <= 0) return status_;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    status_ = status;
  } else if (r < 0 && errno == ECHILD) {
    status_ = 0;  // Reaped elsewhere; nothing left to wait for.
  }
  return status_;
}

absl::StatusOr<int> Process::Wait(absl::Time deadline) {
  while (!TryWait()) {
    absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(
          absl::StrCat("process ", pid_, " still running at the deadline"));
    }
    struct pollfd p = {pidfd_.get(), POLLIN, 0};
    int ms = deadline == absl::InfiniteFuture()
                 ? -1
                 : static_cast<int>(absl::ToInt64Milliseconds(left) + 1);
    ::poll(&p, 1, ms);
  }
  return *status_;
}

void Process::Signal(int sig) {
  if (pid_ > 0 && !status_) {
    ::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0);
  }
}

void Process::SignalGroup(int sig) {
  if (pid_ <= 0) return;
  // The group outlives its leader's reaping; its number is not reused while it has members.
  if (leads_group_) {
    ::kill(-pid_, sig);
  } else {
    Signal(sig);
  }
}

int Process::Terminate(absl::Duration grace) {
  if (pid_ <= 0) return 0;
  if (TryWait()) return *status_;
  if (grace > absl::ZeroDuration()) {
    Signal(SIGTERM);
    if (Wait(absl::Now() + grace).ok()) return *status_;
  }
  Signal(SIGKILL);
  return Wait(absl::InfiniteFuture()).value_or(0);
}

uint64_t RaiseOpenFileLimit() {
  struct rlimit limit;
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    struct rlimit raised = {limit.rlim_max, limit.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur;
}

std::string OpenFilesHint() {
  struct rlimit limit = {};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  int open = 0;
  if (DIR* fds = ::opendir("/proc/self/fd")) {
    while (::readdir(fds) != nullptr) ++open;
    ::closedir(fds);
    open -= 3;  // ".", ".." and the directory's own fd.
  }
  return absl::StrCat("this process holds ", open, " open files and may hold ", limit.rlim_cur,
                      " (RLIMIT_NOFILE, hard limit ", limit.rlim_max,
                      "); each direct child needs about 4: raise the hard limit (ulimit -Hn, "
                      "LimitNOFILE= in a systemd unit, /etc/security/limits.conf)");
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return absl::StrCat("killed by signal ", WTERMSIG(status), " (",
                        ::strsignal(WTERMSIG(status)), ")");
  }
  return absl::StrCat("wait status ", status);
}

std::string CurrentHostName() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return host;
}

std::string CurrentUserName() {
  struct passwd pw;
  struct passwd* result = nullptr;
  char buffer[4096];
  if (::getpwuid_r(::geteuid(), &pw, buffer, sizeof(buffer), &result) == 0 && result) {
    return pw.pw_name;
  }
  return absl::StrCat(::geteuid());
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

pid_t ParentOf(pid_t pid) {
  UniqueFd fd(::open(absl::StrCat("/proc/", pid, "/stat").c_str(), O_RDONLY | O_CLOEXEC));
  char stat[1024];
  ssize_t n = fd.valid() ? ::read(fd.get(), stat, sizeof(stat) - 1) : -1;
  if (n <= 0) return -1;
  stat[n] = '\0';
  // "pid (comm) state ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
  const char* close = ::strrchr(stat, ')');
  char state;
  int ppid = -1;
  if (close == nullptr || std::sscanf(close + 1, " %c %d", &state, &ppid) != 2) return -1;
  return ppid;
}

std::set<pid_t> DescendantsOf(const std::set<pid_t>& roots) {
  std::map<pid_t, std::vector<pid_t>> children;
  if (DIR* dir = ::opendir("/proc")) {
    while (struct dirent* e = ::readdir(dir)) {
      pid_t pid;
      if (absl::SimpleAtoi(e->d_name, &pid)) children[ParentOf(pid)].push_back(pid);
    }
    ::closedir(dir);
  }
  std::set<pid_t> out;
  std::vector<pid_t> todo(roots.begin(), roots.end());
  while (!todo.empty()) {
    pid_t pid = todo.back();
    todo.pop_back();
    for (pid_t child : children[pid]) {
      if (out.insert(child).second) todo.push_back(child);
    }
  }
  return out;
}

}  // namespace grove
