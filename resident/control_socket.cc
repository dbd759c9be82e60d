#include "resident/control_socket.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "glog/logging.h"
#include "grpcpp/create_channel_posix.h"

namespace grove {
namespace {

std::string Env(const char* name) {
  const char* value = getenv(name);
  return value == nullptr ? "" : value;
}

absl::Status Errno(const std::string& what) {
  return absl::ErrnoToStatus(errno, what);
}

absl::StatusOr<sockaddr_un> SocketAddress(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("control socket path ", path, " is ", path.size(),
                     " bytes; a Unix socket path must be under ", sizeof(address.sun_path),
                     " (set GROVE_RUNTIME_DIR to a shorter directory)"));
  }
  memcpy(address.sun_path, path.data(), path.size());
  return address;
}

}  // namespace

std::string DefaultResidentDir() {
  if (std::string dir = Env("GROVE_RUNTIME_DIR"); !dir.empty()) return dir;
  if (std::string dir = Env("XDG_RUNTIME_DIR"); !dir.empty()) return dir + "/grove";
  std::string home = Env("HOME");
  if (home.empty()) home = "/tmp";
  return home + "/.cache/grove/run";
}

std::string DefaultControlSocket() {
  if (std::string socket = Env("GROVE_SOCKET"); !socket.empty()) return socket;
  return DefaultResidentDir() + "/control.sock";
}

absl::Status EnsurePrivateDir(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("empty directory name");
  // Parents first (0700 too: they are made for this use only).
  for (size_t slash = dir.find('/', 1); slash != std::string::npos;
       slash = dir.find('/', slash + 1)) {
    if (mkdir(dir.substr(0, slash).c_str(), 0700) != 0 && errno != EEXIST) {
      return Errno(absl::StrCat("cannot make ", dir.substr(0, slash)));
    }
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Errno(absl::StrCat("cannot make ", dir));
  }
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0) return Errno(absl::StrCat("cannot stat ", dir));
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  }
  if (st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir, " belongs to uid ", st.st_uid, ", not to this user (uid ", geteuid(), ")"));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        dir, " is open to other users (mode ", absl::StrCat(absl::Hex(st.st_mode & 0777)),
        " in hex); the control socket's directory must be 0700: chmod 700 ", dir));
  }
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> TakeMasterLock(const std::string& dir) {
  const std::string path = dir + "/master.lock";
  UniqueFd fd(open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd.valid()) return Errno(absl::StrCat("cannot open ", path));
  if (flock(fd.get(), LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return Errno(absl::StrCat("cannot lock ", path));
    char buf[32] = {};
    ssize_t n = pread(fd.get(), buf, sizeof(buf) - 1, 0);
    std::string pid = n > 0 ? std::string(absl::StripAsciiWhitespace(std::string(buf, n))) : "?";
    return absl::FailedPreconditionError(
        absl::StrCat("a resident master is already running (pid ", pid, ", lock ", path, ")"));
  }
  std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd.get(), 0) != 0 || pwrite(fd.get(), pid.data(), pid.size(), 0) < 0) {
    return Errno(absl::StrCat("cannot write ", path));
  }
  return fd;
}

absl::StatusOr<std::unique_ptr<ControlListener>> ControlListener::Listen(
    const std::string& socket_path, std::function<void(UniqueFd)> on_connection) {
  absl::StatusOr<sockaddr_un> address = SocketAddress(socket_path);
  if (!address.ok()) return address.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Errno("socket(AF_UNIX)");
  // The caller holds the master lock: whatever is there was left by a master that died.
  if (unlink(socket_path.c_str()) != 0 && errno != ENOENT) {
    return Errno(absl::StrCat("cannot remove the stale socket ", socket_path));
  }
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
    return Errno(absl::StrCat("cannot bind ", socket_path));
  }
  if (chmod(socket_path.c_str(), 0600) != 0 || listen(fd.get(), 128) != 0) {
    const absl::Status status = Errno(absl::StrCat("cannot listen on ", socket_path));
    unlink(socket_path.c_str());
    return status;
  }
  return std::unique_ptr<ControlListener>(
      new ControlListener(socket_path, std::move(fd), std::move(on_connection)));
}

ControlListener::ControlListener(std::string path, UniqueFd fd,
                                 std::function<void(UniqueFd)> on_connection)
    : path_(std::move(path)), fd_(std::move(fd)), on_connection_(std::move(on_connection)) {
  thread_ = std::thread([this] { AcceptLoop(); });
}

ControlListener::~ControlListener() {
  stopping_.store(true);
  // Wakes accept() (it fails EINVAL on a listening socket that was shut down).
  shutdown(fd_.get(), SHUT_RDWR);
  thread_.join();
  unlink(path_.c_str());
}

int ControlListener::refused() const { return refused_.load(); }

void ControlListener::AcceptLoop() {
  const uid_t self = geteuid();
  while (!stopping_.load()) {
    UniqueFd conn(accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn.valid()) {
      if (stopping_.load()) return;
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        // Out of fds: refuse this one by letting the backlog wait (logged once per burst).
        LOG_EVERY_N(ERROR, 100) << "control socket " << path_ << ": accept: " << strerror(errno);
        usleep(10000);
        continue;
      }
      LOG(ERROR) << "control socket " << path_ << ": accept: " << strerror(errno);
      return;
    }
    ucred peer{};
    socklen_t size = sizeof(peer);
    if (getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &peer, &size) != 0) {
      LOG(WARNING) << "control socket " << path_ << ": refused a connection whose peer is "
                   << "unknown (SO_PEERCRED: " << strerror(errno) << ")";
      refused_.fetch_add(1);
      continue;
    }
    if (peer.uid != self) {
      LOG(WARNING) << "control socket " << path_ << ": refused a connection from uid "
                   << peer.uid << " (pid " << peer.pid << "): only uid " << self
                   << " may attach";
      refused_.fetch_add(1);
      continue;
    }
    on_connection_(std::move(conn));
  }
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> ConnectControl(const std::string& socket_path) {
  absl::StatusOr<sockaddr_un> address = SocketAddress(socket_path);
  if (!address.ok()) return address.status();
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Errno("socket(AF_UNIX)");
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*address), sizeof(*address)) != 0) {
    const int error = errno;
    if (error == ENOENT) {
      return absl::UnavailableError(
          absl::StrCat("no resident master: nothing at ", socket_path, " (start one: grove up)"));
    }
    if (error == ECONNREFUSED) {
      return absl::UnavailableError(absl::StrCat(
          "no resident master: ", socket_path,
          " was left by one that is gone (grove status; grove up starts a new one)"));
    }
    return absl::UnavailableError(
        absl::StrCat("cannot connect to ", socket_path, ": ", strerror(error)));
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  return grpc::CreateCustomInsecureChannelFromFd("grove-control", fd.Release(), args);
}

}  // namespace grove
