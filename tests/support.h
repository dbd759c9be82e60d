// What the multi-process tests share beyond leak_check.h: files, /proc, waiting on a
// condition with a deadline, the built CLI; and the status matchers (common/testing/status_matchers.h).
#ifndef GROVE_TESTS_SUPPORT_H_
#define GROVE_TESTS_SUPPORT_H_

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"

namespace grove::testing {

// The whole file at `path` ("" if unreadable).
std::string ReadFile(const std::string& path);

// The names in directory `path` but "." and ".." (none if unreadable).
std::vector<std::string> ListDir(const std::string& path);

// Polls `done` until it holds or `timeout` passes (for states with nothing to wait on, such
// as /proc); true if it held.
bool WaitUntil(const std::function<bool()>& done, absl::Duration timeout = absl::Seconds(10));

// The pids of live (not zombie) processes whose command line, arguments joined by spaces,
// contains `text`.
std::vector<pid_t> ProcessesWith(const std::string& text);

// `path` (from the repository's root) in the test's runfiles; under bazel-bin/ outside a
// test.
std::string Runfile(const std::string& path);
// The grove CLI built with the tests (//tools:grove in the test's runfiles).
std::string GroveBinary();

// What a run of the CLI did.
struct Ran {
  int status = -1;  // Exit status (-1: it did not end within the deadline, and was killed).
  std::string out, err;
};
// Runs the grove CLI with `args` (and this process's environment), collecting its stdout and
// stderr until it exits; at most `timeout`.
Ran RunGrove(std::vector<std::string> args, absl::Duration timeout = absl::Seconds(60));
// The same for any program: argv[0] is its path.
Ran RunCommand(std::vector<std::string> argv, absl::Duration timeout = absl::Seconds(60));

}  // namespace grove::testing

#endif  // GROVE_TESTS_SUPPORT_H_
