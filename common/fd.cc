#include "common/fd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <termios.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace grove {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

absl::Status ErrnoStatus(int err, const char* what) {
  absl::StatusCode code = absl::StatusCode::kInternal;
  switch (err) {
    case ENOENT:
      code = absl::StatusCode::kNotFound;
      break;
    case EACCES:
    case EPERM:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case EAGAIN:
    case ENOSPC:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case EINVAL:
    case ENOTDIR:
    case ENOEXEC:
      code = absl::StatusCode::kInvalidArgument;
      break;
    case EPIPE:
    case ECONNRESET:
      code = absl::StatusCode::kUnavailable;
      break;
    default:
      break;
  }
  return absl::Status(code, absl::StrCat(what, ": ", std::strerror(err)));
}

absl::StatusOr<std::pair<UniqueFd, UniqueFd>> SocketPair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    return ErrnoStatus(errno, "socketpair");
  }
  return std::make_pair(UniqueFd(sv[0]), UniqueFd(sv[1]));
}

absl::StatusOr<std::pair<UniqueFd, UniqueFd>> Pipe() {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return ErrnoStatus(errno, "pipe2");
  return std::make_pair(UniqueFd(p[0]), UniqueFd(p[1]));
}

absl::StatusOr<Pty> OpenPty() {
  Pty pty;
  pty.master.Reset(::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!pty.master.valid()) return ErrnoStatus(errno, "posix_openpt");
  if (::grantpt(pty.master.get()) != 0) return ErrnoStatus(errno, "grantpt");
  if (::unlockpt(pty.master.get()) != 0) return ErrnoStatus(errno, "unlockpt");
  char name[128];
  if (int err = ::ptsname_r(pty.master.get(), name, sizeof(name)); err != 0) {
    return ErrnoStatus(err, "ptsname_r");
  }
  pty.slave_path = name;
  // Set the modes through the slave (opened here without becoming our terminal).
  UniqueFd slave(::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!slave.valid()) return ErrnoStatus(errno, "open of a pty slave");
  struct termios modes;
  if (::tcgetattr(slave.get(), &modes) != 0) return ErrnoStatus(errno, "tcgetattr");
  modes.c_lflag &= ~(ECHO | ECHOE | ECHOK | ECHONL);
  modes.c_oflag &= ~OPOST;
  if (::tcsetattr(slave.get(), TCSANOW, &modes) != 0) return ErrnoStatus(errno, "tcsetattr");
  return pty;
}

absl::Status SetNonBlocking(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return ErrnoStatus(errno, "fcntl(F_GETFL)");
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (::fcntl(fd, F_SETFL, flags) != 0) return ErrnoStatus(errno, "fcntl(F_SETFL)");
  return absl::OkStatus();
}

absl::Status SetCloseOnExec(int fd, bool on) {
  int flags = ::fcntl(fd, F_GETFD);
  if (flags < 0) return ErrnoStatus(errno, "fcntl(F_GETFD)");
  flags = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  if (::fcntl(fd, F_SETFD, flags) != 0) return ErrnoStatus(errno, "fcntl(F_SETFD)");
  return absl::OkStatus();
}

absl::Status WriteAll(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, "write");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace grove
