#include "tools/cli_paths.h"

#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_util.h"

namespace grove::cli {

absl::StatusOr<std::vector<Context>> StartPaths(Master& master,
                                                const std::vector<std::string>& paths,
                                                absl::Duration connect_timeout) {
  // Each path as its list of prefixes ("local", "local/local,name=x", ...), and the same
  // with secrets hidden, for messages.
  std::vector<std::vector<std::string>> prefixes;
  std::map<std::string, std::string> shown;
  size_t depth = 0;
  for (const std::string& path : paths) {
    absl::StatusOr<std::vector<Hop>> hops = ParsePath(path);
    if (!hops.ok()) return hops.status();
    std::vector<std::string> p;
    std::string prefix, debug;
    for (const Hop& hop : *hops) {
      prefix = prefix.empty() ? hop.ToString() : absl::StrCat(prefix, "/", hop.ToString());
      debug = debug.empty() ? hop.DebugString() : absl::StrCat(debug, "/", hop.DebugString());
      p.push_back(prefix);
      shown[prefix] = debug;
    }
    depth = std::max(depth, p.size());
    prefixes.push_back(std::move(p));
  }
  std::map<std::string, Context> started;
  for (size_t level = 0; level < depth; ++level) {
    // The distinct hops of this level, each started from its (already started) parent.
    std::map<std::string, std::pair<Context, std::string>> todo;
    for (const auto& p : prefixes) {
      if (level >= p.size() || started.count(p[level]) || todo.count(p[level])) continue;
      Context parent = level == 0 ? master.self() : started.at(p[level - 1]);
      std::string hop = p[level].substr(level == 0 ? 0 : p[level - 1].size() + 1);
      todo.emplace(p[level], std::make_pair(parent, hop));
    }
    std::vector<std::pair<std::string, absl::StatusOr<Context>>> results(
        todo.size(), {"", absl::UnknownError("not started")});
    std::vector<std::thread> threads;
    size_t i = 0;
    for (const auto& [prefix, job] : todo) {
      results[i].first = prefix;
      threads.emplace_back([&results, i, job = job, connect_timeout] {
        CallOptions options;
        options.timeout = connect_timeout;
        results[i].second = job.first.Spawn(job.second, options);
      });
      ++i;
    }
    for (std::thread& t : threads) t.join();
    for (auto& [prefix, context] : results) {
      if (!context.ok()) {
        return Annotate(context.status(), absl::StrCat("path '", shown[prefix], "'"));
      }
      started.emplace(prefix, *context);
    }
  }
  std::vector<Context> leaves;
  for (const auto& p : prefixes) leaves.push_back(started.at(p.back()));
  return leaves;
}

}  // namespace grove::cli
