// The `fork` method, with real processes: fork children forked from their context's zygote
// answer calls like any child, hold nothing of their parent's, differ where they must, nest,
// die visibly, and leave no zygote behind.
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/fd.h"
#include "common/process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/support.h"
#include "tests/log_collector.h"
#include "tests/test.pb.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;

test::Echo MakeEcho(const std::string& text) {
  test::Echo e;
  e.set_text(text);
  return e;
}


// The processes whose parent is `pid`.
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc");
  while (struct dirent* e = dir ? ::readdir(dir) : nullptr) {
    int p;
    if (absl::SimpleAtoi(e->d_name, &p) && ParentOf(p) == pid) out.push_back(p);
  }
  if (dir) ::closedir(dir);
  return out;
}

// fd number -> target of every fd of `pid`.
std::map<int, std::string> FdsOf(pid_t pid) {
  std::map<int, std::string> out;
  const std::string dir_path = absl::StrCat("/proc/", pid, "/fd");
  DIR* dir = ::opendir(dir_path.c_str());
  while (struct dirent* e = dir ? ::readdir(dir) : nullptr) {
    int fd;
    if (absl::SimpleAtoi(e->d_name, &fd)) out[fd] = Readlink(absl::StrCat(dir_path, "/", fd));
  }
  if (dir) ::closedir(dir);
  return out;
}

// The pipes and sockets (by inode: "pipe:[123]") `pid` holds.
std::set<std::string> PipesAndSocketsOf(pid_t pid) {
  std::set<std::string> out;
  for (const auto& [fd, target] : FdsOf(pid)) {
    if (absl::StartsWith(target, "pipe:") || absl::StartsWith(target, "socket:")) {
      out.insert(target);
    }
  }
  return out;
}

// True once `pid` is no longer a live process (gone or a zombie).
bool Ended(pid_t pid) {
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  size_t close = stat.rfind(')');
  return close == std::string::npos || stat.substr(close + 2, 1) == "Z";
}


}  // namespace
}  // namespace grove::testing
