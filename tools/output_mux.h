// OutputMux: how `grove run` shows the output of several contexts at once.
#ifndef GROVE_TOOLS_OUTPUT_MUX_H_
#define GROVE_TOOLS_OUTPUT_MUX_H_

#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "proto/builtins.pb.h"

namespace grove::cli {

// Writes streamed output, prefixed with the context name when `prefix` is set (names padded
// to one width, each in its own colour on a terminal), whole lines at a time so that
// contexts do not interleave within a line. A closed stdout (`| head -1`) cancels the CLI
// (CliCancel) and drops the rest. Thread-safe.
class OutputMux {
 public:
  OutputMux(bool prefix, const std::vector<std::string>& names);
  void Write(const std::string& context, int stream, const std::string& data);
  // Whether stdout was closed under it.
  bool broken();
  // Prints what is left of unfinished lines.
  void Flush();

 private:
  void WriteLocked(const std::string& context, int stream, const std::string& data);
  void PrintLine(FILE* f, int stream, const std::string& context, absl::string_view line);

  const bool prefix_;
  size_t width_ = 0;
  bool colour_[2];
  std::map<std::string, const char*> colours_;
  std::mutex mu_;
  std::map<std::pair<std::string, int>, std::string> partial_;  // Guarded by mu_.
  bool broken_ = false;                                         // Guarded by mu_.
};

// The prefixes of `grove run` for contexts named `names` with ids `ids` (0: not started): a
// name that two different contexts share (children of different parents) gets its id,
// "name#7", so that no two contexts print under one prefix.
std::vector<std::string> DistinctLabels(std::vector<std::string> names,
                                        const std::vector<uint64_t>& ids);

// How `grove run` went in one context.
struct RunOutcome {
  int status = 0;     // The CLI's exit status for it (the command's, or 124, 255, 1).
  std::string state;  // ok, failed, timed out, unreachable
  std::string error;  // What went wrong, for the summary.
  absl::StatusOr<v1::RunReply> reply = absl::UnknownError("not run");
};

// The outcome of `reply`, one context's answer to a run with `timeout_s` (0: none) over
// `paths` (for hiding their secrets in the error).
RunOutcome OutcomeOf(absl::StatusOr<v1::RunReply> reply, double timeout_s,
                     const std::vector<std::string>& paths);

// Ends a `grove run`: the error lines (or, with `json`, the JSON array) and the summary line,
// for `outcomes[i]` of `names[i]` at `paths[i]`. Returns the worst exit status (141 when
// stdout was closed under `mux`).
int ReportRuns(const std::vector<RunOutcome>& outcomes, const std::vector<std::string>& names,
               const std::vector<std::string>& paths, bool json, OutputMux& mux);

}  // namespace grove::cli

#endif  // GROVE_TOOLS_OUTPUT_MUX_H_
