// File descriptors: an owning handle and the few operations grove needs on them.
#ifndef GROVE_COMMON_FD_H_
#define GROVE_COMMON_FD_H_

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace grove {

// Owns one file descriptor and closes it on destruction. Move-only; thread-compatible.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    Reset(other.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1);

 private:
  int fd_ = -1;
};

// An AF_UNIX SOCK_STREAM socketpair, both ends close-on-exec.
absl::StatusOr<std::pair<UniqueFd, UniqueFd>> SocketPair();

// A pipe, both ends close-on-exec: {read end, write end}.
absl::StatusOr<std::pair<UniqueFd, UniqueFd>> Pipe();

// A new pseudo-terminal: our end (the master, close-on-exec) and the slave's path, for a
// child to open as its controlling terminal. Echo and output processing are off, so what
// is written to it (a password) is never echoed back and output arrives unchanged.
struct Pty {
  UniqueFd master;
  std::string slave_path;
};
absl::StatusOr<Pty> OpenPty();

absl::Status SetNonBlocking(int fd, bool on);
absl::Status SetCloseOnExec(int fd, bool on);

// Writes all of `data`, retrying on EINTR and short writes (blocking fds only).
absl::Status WriteAll(int fd, const void* data, size_t size);

// An absl::Status for errno `err` naming `what`.
absl::Status ErrnoStatus(int err, const char* what);

}  // namespace grove

#endif  // GROVE_COMMON_FD_H_
