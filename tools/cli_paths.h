// Starting the contexts that CLI paths name: shared prefixes are one context, and the hops of
// one level start in parallel.
#ifndef GROVE_TOOLS_CLI_PATHS_H_
#define GROVE_TOOLS_CLI_PATHS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "master/master.h"

namespace grove::cli {

// Starts every context on `paths` and returns the last hop of each, in order. Fails with the
// first error (naming the path) after starting what it could.
absl::StatusOr<std::vector<Context>> StartPaths(Master& master,
                                                const std::vector<std::string>& paths,
                                                absl::Duration connect_timeout);

// Like StartPaths, but each path gets its own outcome (a path fails with the first of its
// hops that failed), and at most `jobs` hops start at once (0: no limit).
std::vector<absl::StatusOr<Context>> StartEach(Master& master,
                                               const std::vector<std::string>& paths,
                                               absl::Duration connect_timeout, int jobs);

// Replaces each "@GROUP" in `args` by the paths of that group in the inventory file
// `inventory` (empty: $GROVE_INVENTORY, else ~/.config/grove/inventory). The file is plain
// text: "[group]" lines open a group, every other non-empty line not starting with '#' is a
// path of the current group; "@all" is every path in the file.
absl::StatusOr<std::vector<std::string>> ExpandGroups(const std::vector<std::string>& args,
                                                      std::string inventory);

// A number above 0 and finite, as --timeout, --connect-timeout and -j take: false for 0,
// a negative, nan, inf or anything that is not a number.
bool ParsePositive(const std::string& text, double* out);

// `text` with the value of every secret option (password=...) of `paths` replaced by "***":
// for anything the CLI prints about those paths (names, errors, --json).
std::string Redacted(const std::string& text, const std::vector<std::string>& paths);

}  // namespace grove::cli

#endif  // GROVE_TOOLS_CLI_PATHS_H_
