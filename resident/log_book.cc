#include "resident/log_book.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/printable.h"

namespace grove {
namespace {

const char* KindName(v1::LogRecord::Kind kind) {
  switch (kind) {
    case v1::LogRecord::STDOUT:
      return "stdout";
    case v1::LogRecord::STDERR:
      return "stderr";
    default:
      return "log";
  }
}

UniqueFd OpenLog(const std::string& file, int64_t* size) {
  UniqueFd fd(open(file.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  struct stat st;
  *size = fd.valid() && fstat(fd.get(), &st) == 0 ? st.st_size : 0;
  return fd;
}

}  // namespace

LogBook::LogBook(std::string file, int64_t max_file_bytes, size_t keep_lines)
    : file_(std::move(file)), max_file_bytes_(max_file_bytes), keep_lines_(keep_lines) {
  if (!file_.empty()) {
    absl::MutexLock lock(&mu_);
    fd_ = OpenLog(file_, &file_bytes_);
  }
}

void LogBook::Add(const ContextRecord& from, const v1::LogRecord& record) {
  const int64_t now_ms = absl::ToUnixMillis(absl::Now());
  // One line per line of text: a reader can filter and tail them.
  for (absl::string_view text : absl::StrSplit(absl::StripSuffix(record.text(), "\n"), '\n')) {
    v1::LogLine line;
    line.set_unix_ms(now_ms);
    line.set_context_id(from.id.value());
    line.set_context(from.name);
    line.set_kind(KindName(record.kind()));
    line.set_text(std::string(text));
    Append(std::move(line));
  }
}

void LogBook::Note(const std::string& text) {
  v1::LogLine line;
  line.set_unix_ms(absl::ToUnixMillis(absl::Now()));
  line.set_context_id(0);
  line.set_context("master");
  line.set_kind("master");
  line.set_text(text);
  Append(std::move(line));
}

void LogBook::Append(v1::LogLine line) {
  absl::MutexLock lock(&mu_);
  WriteToFileLocked(line);
  lines_.push_back(std::move(line));
  ++last_;
  if (lines_.size() > keep_lines_) lines_.pop_front();
}

void LogBook::WriteToFileLocked(const v1::LogLine& line) {
  if (!fd_.valid()) return;
  // Text from other contexts is made Printable: it cannot act on the terminal of whoever
  // reads the file, nor forge a line of another context.
  const std::string text = absl::StrCat(
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(line.unix_ms()),
                       absl::UTCTimeZone()),
      " [", Printable(line.context()), "] ", line.kind(), ": ", Printable(line.text()), "\n");
  if (file_bytes_ + static_cast<int64_t>(text.size()) > max_file_bytes_ && file_bytes_ > 0) {
    const std::string old = file_ + ".1";
    rename(file_.c_str(), old.c_str());
    fd_ = OpenLog(file_, &file_bytes_);
    if (!fd_.valid()) return;
  }
  if (write(fd_.get(), text.data(), text.size()) > 0) file_bytes_ += text.size();
}

std::vector<v1::LogLine> LogBook::Since(uint64_t* after, size_t max, absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  auto newer = [this, after]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return last_ > *after; };
  mu_.AwaitWithDeadline(absl::Condition(&newer), deadline);
  std::vector<v1::LogLine> out;
  if (last_ <= *after) return out;
  const uint64_t first_kept = last_ - lines_.size() + 1;
  uint64_t next = std::max(*after + 1, first_kept);
  for (; next <= last_ && out.size() < max; ++next) out.push_back(lines_[next - first_kept]);
  *after = next - 1;
  return out;
}

uint64_t LogBook::latest() const {
  absl::MutexLock lock(&mu_);
  return last_;
}

}  // namespace grove
