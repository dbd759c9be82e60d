#include "tests/leak_check.h"
#include "tests/support.h"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "launch/payload.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"

namespace grove::testing {
namespace {

// Whether a process whose executable is `exe` and command line `cmdline` runs (or starts) a
// copy of this program: remote methods run it from a cache file named by its digest.
bool RunsThisProgram(const std::string& exe, const std::string& cmdline) {
  absl::StatusOr<const Payload*> self = ThisProgram();
  if (!self.ok()) return true;  // Cannot tell: count it.
  return absl::StrContains(exe, (*self)->sha256) || absl::StrContains(cmdline, (*self)->sha256);
}

}  // namespace

std::string Readlink(const std::string& path) {
  char buffer[4096] = {0};
  ssize_t n = ::readlink(path.c_str(), buffer, sizeof(buffer) - 1);
  return n < 0 ? "" : std::string(buffer, n);
}

bool SanitizerRuntimeFd(int pid, const std::string& target) {
  return kSlowdown > 1 && target == absl::StrCat("/proc/", pid, "/maps");
}

ProcessState CaptureState() {
  ProcessState state;
  std::string self_fd = "/proc/self/fd";
  for (const std::string& fd : ListDir(self_fd)) {
    char target[512] = {0};
    ssize_t n = ::readlink((self_fd + "/" + fd).c_str(), target, sizeof(target) - 1);
    if (n < 0) continue;  // The directory stream itself, closed by now.
    if (SanitizerRuntimeFd(::getpid(), target)) continue;
    state.fds.insert(absl::StrCat(fd, " -> ", target));
  }
  for (const std::string& task : ListDir("/proc/self/task")) {
    std::string comm = ReadFile(absl::StrCat("/proc/self/task/", task, "/comm"));
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    state.thread_names.push_back(comm);
  }
  std::sort(state.thread_names.begin(), state.thread_names.end());
  // gRPC keeps process-wide threads of its own (timers, executors) while it is initialised,
  // and sizes those pools by load: they are not grove's to count. Every thread grove starts
  // is named "grove-*"; threads of the test itself keep the main thread's name.
  const std::string main_name = state.thread_names.empty() ? "" :
      ReadFile(absl::StrCat("/proc/self/task/", ::getpid(), "/comm"));
  for (const std::string& name : state.thread_names) {
    if (absl::StartsWith(name, "grove-") || absl::StrCat(name, "\n") == main_name) {
      ++state.threads;
    }
  }
  const pid_t self = ::getpid();
  const pid_t self_session = ::getsid(0);
  char exe[512] = {0};
  if (::readlink("/proc/self/exe", exe, sizeof(exe) - 1) < 0) exe[0] = '\0';
  for (const std::string& pid : ListDir("/proc")) {
    int p = 0;
    if (!absl::SimpleAtoi(pid, &p) || p == self) continue;
    std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
    size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    // A zygote's spare fork child (launch/fork_launcher.h) is its zygote's, which outlives
    // tests (the master's) or ends with its context, and the spare with it (fork_test
    // checks both).
    if (stat.compare(stat.find('(') + 1, close - stat.find('(') - 1, "grove-spare") == 0) {
      continue;
    }
    std::istringstream rest(stat.substr(close + 2));
    std::string st;
    int ppid = 0, pgrp = 0, session = 0;
    rest >> st >> ppid >> pgrp >> session;
    char their_exe[512] = {0};
    if (::readlink(absl::StrCat("/proc/", pid, "/exe").c_str(), their_exe,
                   sizeof(their_exe) - 1) < 0) {
      their_exe[0] = '\0';  // Gone, or not ours to read.
    }
    std::string cmdline = ReadFile(absl::StrCat("/proc/", pid, "/cmdline"));
    // This binary, or a cached copy of it run by a remote method.
    // Processes of this binary stay in this test's session (local and fork agents never call
    // setsid); one in another session belongs to another run of the same test
    // (bazel test --runs_per_test=N), which bazel starts in a session of its own.
    // A remote method's agent (and the su, sudo or sh that starts it) is of this test when it
    // runs this program's digest: another test binary running at the same time ships its own.
    bool agent = st != "Z" && ((std::string(their_exe) == exe && session == self_session) ||
                               (cmdline.find("--grove-agent") != std::string::npos &&
                                cmdline.find("--grove-stdio") != std::string::npos &&
                                RunsThisProgram(their_exe, cmdline)));
    if (ppid != self && !agent) continue;
    for (char& c : cmdline) {
      if (c == '\0') c = ' ';
    }
    std::string line = absl::StrCat(pid, " ", st, " ", cmdline.substr(0, 120));
    if (ppid == self) state.children.push_back(line);
    if (agent) state.agents.push_back(line);
  }
  return state;
}

void GroveTest::SetUp() { before_ = CaptureState(); }

void GroveTest::TearDown() {
  ProcessState after;
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  // Processes that were there before the test (a suite's sshd) are not the test's.
  // Entries are "pid state cmdline"; the state changes, so compare pids.
  auto forget_old = [](std::vector<std::string>* now, const std::vector<std::string>& before) {
    auto pid = [](const std::string& p) { return p.substr(0, p.find(' ')); };
    now->erase(std::remove_if(now->begin(), now->end(),
                              [&](const std::string& p) {
                                for (const std::string& b : before) {
                                  if (pid(b) == pid(p)) return true;
                                }
                                return false;
                              }),
               now->end());
  };
  for (;;) {
    after = CaptureState();
    forget_old(&after.children, before_.children);
    forget_old(&after.agents, before_.agents);
    bool clean = after.children.empty() && after.agents.empty() &&
                 after.threads <= before_.threads &&
                 after.fds == before_.fds;
    if (clean || absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(20));  // Polling /proc: nothing to wait on.
  }
  EXPECT_TRUE(after.children.empty())
      << "processes left behind:\n  " << absl::StrJoin(after.children, "\n  ");
  EXPECT_TRUE(after.agents.empty())
      << "agents of this test still running:\n  " << absl::StrJoin(after.agents, "\n  ");
  EXPECT_LE(after.threads, before_.threads) << "threads left behind: before [" << absl::StrJoin(before_.thread_names, ", ")
      << "], after [" << absl::StrJoin(after.thread_names, ", ") << "]";
  std::vector<std::string> leaked, closed;
  for (const std::string& fd : after.fds) {
    if (!before_.fds.count(fd)) leaked.push_back(fd);
  }
  for (const std::string& fd : before_.fds) {
    if (!after.fds.count(fd)) closed.push_back(fd);
  }
  EXPECT_TRUE(leaked.empty()) << "fds left open:\n  " << absl::StrJoin(leaked, "\n  ");
  EXPECT_TRUE(closed.empty()) << "fds closed that the test did not open:\n  "
                              << absl::StrJoin(closed, "\n  ");
  // Never leave a leak to the next test: kill and reap whatever is left.
  for (const std::string& agent : after.agents) ::kill(std::stoi(agent), SIGKILL);
  for (const std::string& child : after.children) {
    pid_t pid = std::stoi(child);
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
}

}  // namespace grove::testing
