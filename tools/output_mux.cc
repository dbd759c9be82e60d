#include "tools/output_mux.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>

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

}  // namespace grove::cli
