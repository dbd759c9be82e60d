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

}  // namespace grove::cli

#endif  // GROVE_TOOLS_CLI_PATHS_H_
