#include "launch/zygote_wire.h"

#include <dirent.h>
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"

namespace grove::zygote_wire {

int inherited_zygote_socket = -1;
pid_t inherited_zygote_pid = -1;

void PutInt(std::string* out, int32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }

bool GetInt(const char* data, size_t size, size_t* at, int32_t* v) {
  if (*at + 4 > size) return false;
  std::memcpy(v, data + *at, 4);
  *at += 4;
  return true;
}

int SendMessage(int socket, const std::string& data, const std::vector<int>& fds, int flags) {
  struct iovec iov = {const_cast<char*>(data.data()), data.size()};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    struct cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    if (::sendmsg(socket, &msg, flags | MSG_NOSIGNAL) >= 0) return 0;
    if (errno != EINTR) return errno;
  }
}

ssize_t ReceiveMessage(int socket, std::string* data, std::vector<UniqueFd>* fds,
                       bool* truncated, int flags) {
  data->resize(kMaxMessage + 1);
  struct iovec iov = {data->data(), data->size()};
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(socket, &msg, flags | MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds->emplace_back(fd);
    }
  }
  *truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 ||
               static_cast<size_t>(n) > kMaxMessage;
  data->resize(static_cast<size_t>(n) > kMaxMessage ? kMaxMessage : n);
  return n;
}

std::vector<std::string> SplitArgv(const std::string& data, size_t at) {
  std::vector<std::string> argv;
  for (size_t start = at; start < data.size();) {
    size_t end = data.find('\0', start);
    if (end == std::string::npos) end = data.size();
    argv.emplace_back(data, start, end - start);
    start = end + 1;
  }
  return argv;
}

std::string Failed(int32_t seq, int err, const std::string& text) {
  std::string out(1, kFailed);
  PutInt(&out, seq);
  PutInt(&out, err);
  out += text;
  return out;
}

int CountThreads() {
  DIR* dir = ::opendir("/proc/self/task");
  if (dir == nullptr) return -1;  // No /proc: cannot tell.
  int n = 0;
  while (struct dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n;
}

void CloseAllFdsExcept(std::initializer_list<int> keep) {
  std::vector<int> fds;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (struct dirent* e = ::readdir(dir)) {
      int fd;
      if (!absl::SimpleAtoi(e->d_name, &fd) || fd <= 2 || fd == ::dirfd(dir)) continue;
      if (std::find(keep.begin(), keep.end(), fd) == keep.end()) fds.push_back(fd);
    }
    ::closedir(dir);
  }
  for (int fd : fds) ::close(fd);
}

}  // namespace grove::zygote_wire
