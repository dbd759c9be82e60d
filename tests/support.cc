#include "tests/support.h"

#include <dirent.h>
#include <poll.h>
#include <unistd.h>
#include <stdlib.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"
#include "common/fd.h"
#include "common/process.h"

namespace grove::testing {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> out;
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return out;
  for (struct dirent* e; (e = ::readdir(dir)) != nullptr;) {
    std::string name = e->d_name;
    if (name != "." && name != "..") out.push_back(name);
  }
  ::closedir(dir);
  return out;
}

bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));  // Polling: the states checked have no event.
  }
  return true;
}

std::vector<pid_t> ProcessesWith(const std::string& text) {
  std::vector<pid_t> pids;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return pids;
  for (struct dirent* e; (e = ::readdir(proc)) != nullptr;) {
    int pid = 0;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    const std::string dir = std::string("/proc/") + e->d_name;
    std::string stat = ReadFile(dir + "/stat");
    size_t close = stat.rfind(')');
    if (close == std::string::npos || stat.substr(close + 2, 1) == "Z") continue;
    std::string cmdline = ReadFile(dir + "/cmdline");
    for (char& c : cmdline) {
      if (c == '\0') c = ' ';
    }
    if (absl::StrContains(cmdline, text)) pids.push_back(pid);
  }
  ::closedir(proc);
  return pids;
}

std::string Runfile(const std::string& path) {
  const char* srcdir = ::getenv("TEST_SRCDIR");
  return srcdir ? std::string(srcdir) + "/grove/" + path : "bazel-bin/" + path;
}

std::string GroveBinary() { return Runfile("tools/grove"); }

Ran RunGrove(std::vector<std::string> args, absl::Duration timeout) {
  args.insert(args.begin(), GroveBinary());
  return RunCommand(std::move(args), timeout);
}

Ran RunCommand(std::vector<std::string> args, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  Ran ran;
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> out = Pipe();
  absl::StatusOr<std::pair<UniqueFd, UniqueFd>> err = Pipe();
  if (!out.ok() || !err.ok()) return ran;
  SpawnOptions spawn;
  spawn.argv = std::move(args);
  spawn.fds = {{1, out->second.get()}, {2, err->second.get()}};
  absl::StatusOr<Process> cli = Process::Spawn(spawn);
  if (!cli.ok()) {
    ran.err = cli.status().ToString();
    return ran;
  }
  out->second.Reset();
  err->second.Reset();
  // Both pipes drained together: either could fill up while the other is read.
  SetNonBlocking(out->first.get(), true).IgnoreError();
  SetNonBlocking(err->first.get(), true).IgnoreError();
  bool out_open = true, err_open = true;
  while (out_open || err_open) {
    struct pollfd fds[2] = {{out_open ? out->first.get() : -1, POLLIN, 0},
                            {err_open ? err->first.get() : -1, POLLIN, 0}};
    const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (left <= 0 || ::poll(fds, 2, static_cast<int>(left)) <= 0) break;
    char buffer[4096];
    for (int i = 0; i < 2; ++i) {
      if (!fds[i].revents) continue;
      ssize_t n = ::read(fds[i].fd, buffer, sizeof(buffer));
      if (n > 0) {
        (i == 0 ? ran.out : ran.err).append(buffer, n);
      } else {
        (i == 0 ? out_open : err_open) = false;
      }
    }
  }
  absl::StatusOr<int> status = cli->Wait(std::max(deadline, absl::Now() + absl::Seconds(1)));
  ran.status = status.ok() ? ExitCodeOf(*status) : -1;
  return ran;
}

}  // namespace grove::testing
