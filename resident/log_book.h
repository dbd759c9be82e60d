// LogBook: what a resident master's tree writes (contexts' stdout, stderr and glog records,
// and the master's own events), kept in two places:
//   - a file, one line per record ("2026-12-07T23:59:01.123Z [web] stderr: text"), capped:
//     past `max_file_bytes` it is renamed to FILE.1 (replacing the previous one) and begun
//     again, so at most twice the cap is on disk;
//   - the latest `keep_lines` records in memory, numbered, for `grove logs` and the control
//     API's Logs (which asks for what came after the last number it saw, and waits).
#ifndef GROVE_RESIDENT_LOG_BOOK_H_
#define GROVE_RESIDENT_LOG_BOOK_H_

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/fd.h"
#include "proto/control.pb.h"
#include "router/registry.h"

namespace grove {

// Thread-safe. Owns the log file's descriptor. Add never blocks on readers.
class LogBook {
 public:
  // `file` may be empty (memory only).
  LogBook(std::string file, int64_t max_file_bytes = int64_t{16} << 20, size_t keep_lines = 10000);
  LogBook(const LogBook&) = delete;
  LogBook& operator=(const LogBook&) = delete;

  // A record of the tree (the master's LogSink).
  void Add(const ContextRecord& from, const v1::LogRecord& record);
  // One of the resident master's own events ("restarted web: lost ...").
  void Note(const std::string& text);

  // The records numbered above `*after`, at most `max`, waiting until `deadline` for one when
  // there are none; advances `*after` past what it returns. A reader that fell behind by more
  // than the kept lines continues with the oldest kept.
  std::vector<v1::LogLine> Since(uint64_t* after, size_t max, absl::Time deadline) const;
  // The number of the latest record (0 before any).
  uint64_t latest() const;

  const std::string& file() const { return file_; }

 private:
  void Append(v1::LogLine line);
  void WriteToFileLocked(const v1::LogLine& line) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string file_;
  const int64_t max_file_bytes_;
  const size_t keep_lines_;
  mutable absl::Mutex mu_;
  UniqueFd fd_ ABSL_GUARDED_BY(mu_);
  int64_t file_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<v1::LogLine> lines_ ABSL_GUARDED_BY(mu_);
  // The number of lines_.back().
  uint64_t last_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace grove

#endif  // GROVE_RESIDENT_LOG_BOOK_H_
