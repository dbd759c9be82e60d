#include "tools/output_mux.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/printable.h"
#include "tools/cli_paths.h"
#include "tools/cli_signals.h"

namespace grove::cli {
namespace {

constexpr const char* kPalette[6] = {"\033[36m", "\033[33m", "\033[35m",
                                     "\033[32m", "\033[34m", "\033[31m"};

}  // namespace

OutputMux::OutputMux(bool prefix, const std::vector<std::string>& names) : prefix_(prefix) {
  for (const std::string& n : names) width_ = std::max(width_, n.size());
  colour_[0] = ::isatty(1) != 0;
  colour_[1] = ::isatty(2) != 0;
  for (size_t i = 0; i < names.size(); ++i) colours_[names[i]] = kPalette[i % 6];
}

void OutputMux::Write(const std::string& context, int stream, const std::string& data) {
  bool broke = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_) return;
    WriteLocked(context, stream, data);
    if (stream == 1 && ferror(stdout) && errno == EPIPE) broken_ = broke = true;
  }
  if (broke) CliCancel().Cancel();
}

bool OutputMux::broken() {
  std::lock_guard<std::mutex> lock(mu_);
  return broken_;
}

void OutputMux::WriteLocked(const std::string& context, int stream, const std::string& data) {
  FILE* f = stream == 2 ? stderr : stdout;
  if (!prefix_) {
    fwrite(data.data(), 1, data.size(), f);
    fflush(f);
    return;
  }
  std::string& partial = partial_[{context, stream}];
  partial += data;
  size_t start = 0;
  for (size_t nl; (nl = partial.find('\n', start)) != std::string::npos; start = nl + 1) {
    PrintLine(f, stream, context, absl::string_view(partial).substr(start, nl - start));
  }
  partial.erase(0, start);
  fflush(f);
}

void OutputMux::Flush() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [key, partial] : partial_) {
    if (!partial.empty()) PrintLine(key.second == 2 ? stderr : stdout, key.second, key.first, partial);
  }
  partial_.clear();
}

void OutputMux::PrintLine(FILE* f, int stream, const std::string& context, absl::string_view line) {
  const bool colour = colour_[stream == 2 ? 1 : 0];
  const std::string pad(width_ > context.size() ? width_ - context.size() : 0, ' ');
  fprintf(f, "%s[%s]%s%s %.*s\n", colour ? colours_[context] : "", context.c_str(),
          colour ? "\033[0m" : "", pad.c_str(), static_cast<int>(line.size()), line.data());
}

RunOutcome OutcomeOf(absl::StatusOr<v1::RunReply> reply, double timeout_s,
                     const std::vector<std::string>& paths) {
  RunOutcome o;
  o.reply = std::move(reply);
  if (!o.reply.ok()) {
    const absl::StatusCode code = o.reply.status().code();
    const bool lost = code == absl::StatusCode::kUnavailable;
    const bool late = code == absl::StatusCode::kDeadlineExceeded;
    o.state = lost ? "unreachable" : late ? "timed out" : "failed";
    o.status = lost ? kExitUnreachable : late ? kExitTimeout : kExitFailed;
    o.error = late ? absl::StrCat("timed out after ", timeout_s, " s")
                   : Redacted(std::string(o.reply.status().message()), paths);
  } else {
    o.status = o.reply->exit_status();
    o.state = o.status == 0 ? "ok" : "failed";
    if (o.status != 0) o.error = absl::StrCat("exit status ", o.status);
  }
  return o;
}

int ReportRuns(const std::vector<RunOutcome>& outcomes, const std::vector<std::string>& names,
               const std::vector<std::string>& paths, bool json, OutputMux& mux) {
  int ok = 0, failed = 0, unreachable = 0, worst = 0;
  std::string json_out = "[";
  for (size_t i = 0; i < outcomes.size(); ++i) {
    const RunOutcome& o = outcomes[i];
    ok += o.state == "ok";
    failed += o.state == "failed" || o.state == "timed out";
    unreachable += o.state == "unreachable";
    worst = std::max(worst, o.status);
    if (json) {
      absl::StrAppend(&json_out, i ? "," : "", "\n{\"context\":", JsonQuote(names[i]),
                      ",\"path\":", JsonQuote(Redacted(paths[i], paths)),
                      ",\"state\":", JsonQuote(o.state),
                      ",\"exit_status\":", o.reply.ok() ? o.reply->exit_status() : -1);
      if (o.reply.ok()) {
        absl::StrAppend(&json_out, ",\"stdout\":", JsonQuote(o.reply->stdout()),
                        ",\"stderr\":", JsonQuote(o.reply->stderr()));
      }
      if (!o.error.empty()) absl::StrAppend(&json_out, ",\"error\":", JsonQuote(o.error));
      json_out += "}";
    } else if (!o.error.empty() && !mux.broken()) {
      fprintf(stderr, "grove run: %s: %s: %s\n", Printable(names[i]).c_str(), o.state.c_str(),
              Printable(o.error).c_str());
    }
  }
  if (mux.broken()) return kExitBrokenPipe;
  if (json) {
    printf("%s\n]\n", json_out.c_str());
  } else if (outcomes.size() > 1 || failed + unreachable > 0) {
    fprintf(stderr, "grove run: %d ok, %d failed, %d unreachable\n", ok, failed, unreachable);
  }
  return worst;
}

std::vector<std::string> DistinctLabels(std::vector<std::string> names,
                                        const std::vector<uint64_t>& ids) {
  std::map<std::string, std::set<uint64_t>> contexts;
  for (size_t i = 0; i < names.size(); ++i) contexts[names[i]].insert(ids[i]);
  for (size_t i = 0; i < names.size(); ++i) {
    if (contexts[names[i]].size() > 1 && ids[i] != 0) absl::StrAppend(&names[i], "#", ids[i]);
  }
  return names;
}

}  // namespace grove::cli
