#include "tests/support.h"

#include <dirent.h>
#include <stdlib.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/time/clock.h"

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

std::string GroveBinary() {
  const char* srcdir = ::getenv("TEST_SRCDIR");
  return srcdir ? std::string(srcdir) + "/grove/tools/grove" : "bazel-bin/tools/grove";
}

}  // namespace grove::testing
