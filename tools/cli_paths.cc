#include "tools/cli_paths.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>

#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status_util.h"
#include "link/hop.h"

namespace grove::cli {

namespace {

// At most `limit` holders at once (0: no limit). Thread-safe.
class Slots {
 public:
  explicit Slots(int limit) : limit_(limit) {}
  void Acquire() {
    absl::MutexLock lock(&mu_);
    auto free = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return limit_ <= 0 || used_ < limit_; };
    mu_.Await(absl::Condition(&free));
    ++used_;
  }
  void Release() {
    absl::MutexLock lock(&mu_);
    --used_;
  }

 private:
  const int limit_;
  absl::Mutex mu_;
  int used_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::vector<absl::StatusOr<Context>> StartEach(Master& master,
                                               const std::vector<std::string>& paths,
                                               absl::Duration connect_timeout, int jobs) {
  std::vector<absl::StatusOr<Context>> out(paths.size(), absl::UnknownError("not started"));
  // Each path as its list of prefixes ("local", "local/local,name=x", ...), and the same
  // with secrets hidden, for messages.
  std::vector<std::vector<std::string>> prefixes(paths.size());
  std::map<std::string, std::string> shown;
  size_t depth = 0;
  for (size_t i = 0; i < paths.size(); ++i) {
    absl::StatusOr<std::vector<Hop>> hops = ParsePath(paths[i]);
    if (!hops.ok()) {
      out[i] = hops.status();
      continue;
    }
    std::string prefix, debug;
    for (const Hop& hop : *hops) {
      prefix = prefix.empty() ? hop.ToString() : absl::StrCat(prefix, "/", hop.ToString());
      debug = debug.empty() ? hop.DebugString() : absl::StrCat(debug, "/", hop.DebugString());
      prefixes[i].push_back(prefix);
      shown[prefix] = debug;
    }
    depth = std::max(depth, prefixes[i].size());
  }
  std::map<std::string, absl::StatusOr<Context>> started;
  Slots slots(jobs);
  for (size_t level = 0; level < depth; ++level) {
    // The distinct hops of this level whose parent started, each from that parent.
    std::map<std::string, std::pair<Context, std::string>> todo;
    for (const auto& p : prefixes) {
      if (level >= p.size() || started.count(p[level]) || todo.count(p[level])) continue;
      if (level > 0 && !started.at(p[level - 1]).ok()) continue;
      Context parent = level == 0 ? master.self() : *started.at(p[level - 1]);
      std::string hop = p[level].substr(level == 0 ? 0 : p[level - 1].size() + 1);
      todo.emplace(p[level], std::make_pair(parent, hop));
    }
    std::vector<std::pair<std::string, absl::StatusOr<Context>>> results(
        todo.size(), {"", absl::UnknownError("not started")});
    std::vector<std::thread> threads;
    size_t i = 0;
    for (const auto& [prefix, job] : todo) {
      results[i].first = prefix;
      threads.emplace_back([&results, &slots, i, job = job, connect_timeout] {
        CallOptions options;
        options.timeout = connect_timeout;
        slots.Acquire();
        results[i].second = job.first.Spawn(job.second, options);
        slots.Release();
      });
      ++i;
    }
    for (std::thread& t : threads) t.join();
    for (auto& [prefix, context] : results) {
      if (!context.ok()) {
        context = Annotate(context.status(), absl::StrCat("path '", shown[prefix], "'"));
      }
      started.emplace(prefix, std::move(context));
    }
  }
  for (size_t i = 0; i < paths.size(); ++i) {
    if (prefixes[i].empty()) continue;
    // The first hop of the path that failed, or its last hop.
    for (const std::string& prefix : prefixes[i]) {
      out[i] = started.at(prefix);
      if (!out[i].ok()) break;
    }
  }
  return out;
}

absl::StatusOr<std::vector<Context>> StartPaths(Master& master,
                                                const std::vector<std::string>& paths,
                                                absl::Duration connect_timeout) {
  std::vector<Context> leaves;
  for (absl::StatusOr<Context>& c : StartEach(master, paths, connect_timeout, 0)) {
    if (!c.ok()) return c.status();
    leaves.push_back(*c);
  }
  return leaves;
}

absl::StatusOr<std::vector<std::string>> ExpandGroups(const std::vector<std::string>& args,
                                                      std::string inventory) {
  bool any = false;
  for (const std::string& a : args) any |= !a.empty() && a[0] == '@';
  if (!any) return args;
  if (inventory.empty()) {
    const char* env = ::getenv("GROVE_INVENTORY");
    const char* home = ::getenv("HOME");
    inventory = env != nullptr ? env : absl::StrCat(home ? home : "", "/.config/grove/inventory");
  }
  struct stat st;
  if (::stat(inventory.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the inventory ", inventory, " is a directory, not a file"));
  }
  std::ifstream in(inventory);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the inventory ", inventory));
  std::map<std::string, std::vector<std::string>> groups;
  std::vector<std::string> all;
  std::string group, line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::string t(absl::StripAsciiWhitespace(line));
    if (t.empty() || t[0] == '#') continue;
    if (t.front() == '[') {
      if (t.back() != ']' || t.size() < 3) {
        return absl::InvalidArgumentError(
            absl::StrCat(inventory, ":", n, ": a group line is [NAME]"));
      }
      group = t.substr(1, t.size() - 2);
      groups[group];
      continue;
    }
    if (group.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(inventory, ":", n, ": a path before any [group] line"));
    }
    groups[group].push_back(t);
    all.push_back(t);
  }
  std::vector<std::string> out;
  for (const std::string& a : args) {
    if (a.empty() || a[0] != '@') {
      out.push_back(a);
      continue;
    }
    const std::string name = a.substr(1);
    if (name == "all") {
      out.insert(out.end(), all.begin(), all.end());
      continue;
    }
    auto it = groups.find(name);
    if (it == groups.end()) {
      return absl::NotFoundError(absl::StrCat("no group '", name, "' in ", inventory));
    }
    out.insert(out.end(), it->second.begin(), it->second.end());
  }
  return out;
}

bool ParsePositive(const std::string& text, double* out) {
  return absl::SimpleAtod(text, out) && *out > 0 && !std::isinf(*out);
}

std::string Redacted(const std::string& text, const std::vector<std::string>& paths) {
  std::vector<std::string> secrets;
  for (const std::string& path : paths) {
    // Each "key=value" between ',' and '/' whose key is secret; parsed by hand, so that a path
    // that does not parse is redacted too.
    for (absl::string_view part : absl::StrSplit(path, absl::ByAnyChar(",/"))) {
      size_t eq = part.find('=');
      if (eq == absl::string_view::npos || eq + 1 >= part.size()) continue;
      if (IsSecretOption(part.substr(0, eq))) secrets.emplace_back(part.substr(eq + 1));
    }
  }
  // Longest first, so that a secret inside another is not left half shown.
  std::sort(secrets.begin(), secrets.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  std::string out = text;
  for (const std::string& secret : secrets) out = absl::StrReplaceAll(out, {{secret, "***"}});
  return out;
}

}  // namespace grove::cli
