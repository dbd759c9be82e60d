#include "launch/fork_launcher.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"
#include "launch/local_launcher.h"

namespace grove {
namespace {

// Where a zygote run again (Zygote::StartOnFirstFork) finds its socket.
constexpr int kExecutedZygoteSocketFd = 3;
// Largest request (the agent's argv); SEQPACKET carries it as one datagram.
constexpr size_t kMaxMessage = 60000;
// How long the zygote may take to answer a request when the launch has no deadline.
constexpr absl::Duration kForkTimeout = absl::Seconds(30);
// How long a fork child whose link went down may take to finish exiting.
constexpr absl::Duration kExitTimeout = absl::Milliseconds(100);
// How long an exited fork child's status may take to come from the zygote.
constexpr absl::Duration kStatusTimeout = absl::Seconds(2);
// Threads a process may have that are not the program's: ThreadSanitizer starts a
// background thread of its own in every child that fork() makes (its fork interceptor
// takes its own locks around the fork, so that thread is harmless).
#if defined(__SANITIZE_THREAD__)
constexpr int kRuntimeThreads = 1;
#else
constexpr int kRuntimeThreads = 0;
#endif

// Message kinds. Context -> zygote: kFork. Zygote -> context: kForked, kFailed, kExited.
// Zygote -> spare: kBecome.
constexpr char kFork = 'F';     // seq, argv joined by '\0'; fd: output
constexpr char kForked = 'P';   // seq, pid; fds: pidfd, the link's other end
constexpr char kFailed = 'E';   // seq, errno, text
constexpr char kExited = 'X';   // pid, wait status
constexpr char kBecome = 'B';   // argv joined by '\0'; fd: output
// Fork child -> zygote.
constexpr char kStarted = 'S';  // (nothing): it is up

// Fixed-size fields of a message, after its kind byte.
void PutInt(std::string* out, int32_t v) { out->append(reinterpret_cast<const char*>(&v), 4); }
bool GetInt(const char* data, size_t size, size_t* at, int32_t* v) {
  if (*at + 4 > size) return false;
  std::memcpy(v, data + *at, 4);
  *at += 4;
  return true;
}

// Sends one datagram with `fds` attached. Returns 0 or an errno.
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

// Receives one datagram into `data` (resized to what arrived) and the fds attached to it
// (close-on-exec). Returns the byte count, 0 at the end of file, or -errno. A datagram that
// did not fit, or whose fds did not, comes back with `*truncated` set.
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

// The argv joined by '\0' in `data` from `at` on.
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

// Closes every fd but 0, 1, 2 and `keep` (single-threaded callers only).
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

// In a fork child, from its fork until its agent takes them (Zygote::Start): its end of a
// socket to the zygote it was forked from, and that zygote's pid. Single-threaded use only.
int inherited_zygote_socket = -1;
pid_t inherited_zygote_pid = -1;

// ---- In the fork child, on its only thread, right after fork() ----

// The signal state of a new process: default dispositions, nothing blocked.
void ResetSignals() {
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::signal(sig, SIG_DFL);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// libc's generator was copied from the zygote like everything else: re-seed it, so that
// siblings differ. (Generators of the program re-seed in Functions::OnFork hooks.)
void Reseed() {
  unsigned int seed = 0;
  if (::getrandom(&seed, sizeof(seed), 0) != sizeof(seed)) {
    seed = static_cast<unsigned int>(::getpid()) ^ static_cast<unsigned int>(::time(nullptr));
  }
  ::srandom(seed);
  ::srand48(seed);
}

// What every fork child does first: a new process's signal state, its link on fd 3, stdout
// and stderr on `output` (when given; stdin is already /dev/null, as in the zygote), nothing
// else of the zygote's but its own socket to it; libc's generator re-seeded. Returns that
// socket's fd.
int StartForkChild(UniqueFd link, UniqueFd output, int zygote_end, pid_t zygote) {
  ResetSignals();
  // Above 3 first, so that no dup2 overwrites a source (dup2 clears close-on-exec on its
  // target).
  int link_fd = ::fcntl(link.get(), F_DUPFD_CLOEXEC, 10);
  int zygote_fd = ::fcntl(zygote_end, F_DUPFD_CLOEXEC, 10);
  int output_fd = output.valid() ? ::fcntl(output.get(), F_DUPFD_CLOEXEC, 10) : -1;
  link.Reset();
  if (link_fd < 0 || zygote_fd < 0 || ::dup2(link_fd, kForkChildLinkFd) < 0 ||
      (output.valid() && (output_fd < 0 || ::dup2(output_fd, 1) < 0 || ::dup2(output_fd, 2) < 0))) {
    _exit(127);
  }
  output.Reset();
  // Only the link and stdio survive, and this child's own socket to the zygote (close-on-
  // exec), through which it forks its own fork children.
  CloseAllFdsExcept({kForkChildLinkFd, zygote_fd});
  inherited_zygote_socket = zygote_fd;
  inherited_zygote_pid = zygote;
  Reseed();
  return zygote_fd;
}

[[noreturn]] void RunForkChild(UniqueFd link, UniqueFd output, int zygote_end, pid_t zygote,
                               const std::vector<std::string>& argv,
                               const Zygote::Entry& entry) {
  StartForkChild(std::move(link), std::move(output), zygote_end, zygote);
  entry.run(argv);
  _exit(1);
}

// A spare: prepares, then waits on its socket to be told which child it is.
[[noreturn]] void RunSpare(UniqueFd link, int zygote_end, pid_t zygote,
                           const std::vector<std::string>& hint, const Zygote::Entry& entry) {
  // Until it is handed out, a spare is the zygote's alone: it dies with it.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != zygote) _exit(0);
  char name[16] = {};
  ::prctl(PR_GET_NAME, name);
  ::prctl(PR_SET_NAME, "grove-spare");
  // Stdout and stderr stay /dev/null until it is handed out.
  const int zygote_fd = StartForkChild(std::move(link), UniqueFd(), zygote_end, zygote);
  entry.prepare(hint);
  std::string data;
  std::vector<UniqueFd> fds;
  bool truncated = false;
  ssize_t n = ReceiveMessage(zygote_fd, &data, &fds, &truncated, 0);
  // The end of file: the zygote is done with it.
  if (n <= 0 || truncated || data[0] != kBecome || fds.size() != 1) _exit(0);
  ::prctl(PR_SET_PDEATHSIG, 0);
  ::prctl(PR_SET_NAME, name);
  if (::dup2(fds[0].get(), 1) < 0 || ::dup2(fds[0].get(), 2) < 0) _exit(127);
  fds.clear();
  entry.run(SplitArgv(data, 1));
  _exit(1);
}

// ---- In the zygote ----

// A message waiting to be sent, with the fds that go with it (closed once sent).
struct Outgoing {
  std::string data;
  std::vector<UniqueFd> fds;
};

// A socket the zygote serves: its context's, or a fork child's (each fork child gets one, to
// ask for fork children of its own), with the messages waiting to go out on it.
struct Peer {
  UniqueFd socket;
  std::deque<Outgoing> outbox;
};

std::string Failed(int32_t seq, int err, const std::string& text) {
  std::string out(1, kFailed);
  PutInt(&out, seq);
  PutInt(&out, err);
  out += text;
  return out;
}

// The peer of the zygote's context, whose end of file ends the zygote.
constexpr int kContextPeer = 0;

// `forked`: forked by the context's main thread (Zygote::Start), rather than run by any
// thread of it (Zygote::StartOnFirstFork).
[[noreturn]] void RunZygote(int socket, pid_t context, bool forked, const Zygote::Entry& entry) {
  // A safety net: the end of file on the socket is the main signal that the context is gone.
  // (Only when the main thread started it: the signal comes when the thread that did ends.)
  if (forked) ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != context) _exit(0);
  const pid_t self = ::getpid();
  // Terminal signals go to the whole process group; the context decides when this ends.
  for (int sig : {SIGINT, SIGQUIT, SIGHUP, SIGPIPE}) ::signal(sig, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  ::sigprocmask(SIG_BLOCK, &chld, nullptr);
  int signal_fd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (signal_fd < 0 || null < 0) _exit(2);
  // The zygote holds nothing of its context's but its socket: a copy of the context's link
  // would hide the context's death from its parent.
  for (int fd = 0; fd <= 2; ++fd) ::dup2(null, fd);
  CloseAllFdsExcept({socket, signal_fd});
  SetNonBlocking(socket, true).IgnoreError();

  // By id; ids are never reused.
  std::map<int, Peer> peers;
  peers[kContextPeer].socket = UniqueFd(socket);
  int next_peer = kContextPeer + 1;
  // Live children -> the peer that asked for them, which hears of their exit. A child whose
  // peer is gone (or that nobody learnt of) is reaped without a report.
  absl::flat_hash_map<pid_t, int> requested_by;
  // A child forked with a socket of its own (a new peer) and its link (the other end of which
  // goes to whoever asked for it), `in_child` running in it.
  struct Child {
    pid_t pid = -1;
    int peer = -1;
    UniqueFd pidfd;
    UniqueFd link;
    int err = 0;  // Or how forking it failed, with `what`.
    const char* what = "";
  };
  auto fork_child = [&](const std::function<void(UniqueFd link, int zygote_end)>& in_child) {
    Child child;
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
      child.err = errno;
      child.what = "socketpair for a fork child";
      return child;
    }
    UniqueFd ours(pair[0]);
    UniqueFd theirs(pair[1]);
    absl::StatusOr<std::pair<UniqueFd, UniqueFd>> link = SocketPair();
    if (!link.ok()) {
      child.err = EMFILE;
      child.what = "socketpair for a fork child's link";
      return child;
    }
    child.pid = ::fork();
    if (child.pid == 0) {
      in_child(std::move(link->second), theirs.get());
      _exit(1);
    }
    if (child.pid < 0) {
      child.err = errno;
      child.what = "fork";
      return child;
    }
    // Opened before this process reaps the child, so it can never name a reused pid.
    child.pidfd.Reset(static_cast<int>(::syscall(SYS_pidfd_open, child.pid, 0)));
    if (!child.pidfd.valid()) {
      child.err = errno;
      child.what = "pidfd_open";
      ::kill(child.pid, SIGKILL);  // Reaped like any other, unreported.
      child.pid = -1;
      return child;
    }
    SetNonBlocking(ours.get(), true).IgnoreError();
    child.peer = next_peer++;
    peers[child.peer].socket = std::move(ours);
    child.link = std::move(link->first);
    return child;
  };
  // The spare (see fork_launcher.h) and the argv it was prepared with; the argv of the last
  // request, once the spare is to be replaced, which is done when the child asked for last
  // (the peer `refill_after`) is up, so that the two do not compete for the CPU.
  std::optional<Child> spare;
  std::vector<std::string> spare_hint;
  std::optional<std::vector<std::string>> refill;
  int refill_after = -1;
  std::vector<struct pollfd> fds;
  std::vector<int> ids;
  std::string data;
  for (;;) {
    fds.assign(1, {signal_fd, POLLIN, 0});
    ids.clear();
    for (const auto& [id, peer] : peers) {
      fds.push_back({peer.socket.get(),
                     static_cast<short>(POLLIN | (peer.outbox.empty() ? 0 : POLLOUT)), 0});
      ids.push_back(id);
    }
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      _exit(2);
    }
    if (fds[0].revents) {
      struct signalfd_siginfo info;
      while (::read(signal_fd, &info, sizeof(info)) > 0) {
      }
      int status;
      pid_t pid;
      while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
        if (spare.has_value() && spare->pid == pid) spare.reset();  // Killed: not handed out.
        auto asked = requested_by.find(pid);
        if (asked == requested_by.end()) continue;
        auto peer = peers.find(asked->second);
        requested_by.erase(asked);
        if (peer == peers.end()) continue;
        Outgoing exited;
        exited.data.assign(1, kExited);
        PutInt(&exited.data, pid);
        PutInt(&exited.data, status);
        peer->second.outbox.push_back(std::move(exited));
      }
    }
    std::vector<int> closed;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const int id = ids[i - 1];
      for (;;) {
        std::vector<UniqueFd> received;
        bool truncated = false;
        ssize_t n = ReceiveMessage(fds[i].fd, &data, &received, &truncated, MSG_DONTWAIT);
        if (n == -EAGAIN) break;
        if (n <= 0) {  // That end was closed (or broke).
          if (id == kContextPeer) _exit(0);  // The context: done.
          closed.push_back(id);
          break;
        }
        std::deque<Outgoing>& outbox = peers[id].outbox;
        size_t at = 1;
        int32_t seq = 0;
        if (data[0] == kStarted) {
          if (id == refill_after) refill_after = -1;
          continue;
        }
        if (data[0] != kFork || !GetInt(data.data(), data.size(), &at, &seq)) continue;
        if (truncated || received.size() != 1) {
          outbox.push_back({Failed(seq, EINVAL, "malformed fork request")});
          continue;
        }
        std::vector<std::string> argv = SplitArgv(data, at);
        Child child;
        if (spare.has_value() && !entry.fits(spare_hint, argv)) {
          // Prepared for another kind of child: replaced (it ends on the end of file).
          ::kill(spare->pid, SIGKILL);
          closed.push_back(spare->peer);
          spare.reset();
        }
        if (spare.has_value()) {
          // The spare becomes the child: it gets the argv and the output.
          Outgoing become;
          become.data.assign(1, kBecome);
          become.data.append(data, at, std::string::npos);
          become.fds = std::move(received);
          peers[spare->peer].outbox.push_back(std::move(become));
          child = *std::move(spare);
          spare.reset();
        } else {
          child = fork_child([&](UniqueFd link, int zygote_end) {
            RunForkChild(std::move(link), std::move(received[0]), zygote_end, self, argv, entry);
          });
          received.clear();  // The child's copies are the only ones.
        }
        refill = std::move(argv);
        refill_after = child.peer;
        if (child.pid < 0) {
          outbox.push_back({Failed(seq, child.err, child.what)});
          continue;
        }
        requested_by[child.pid] = id;
        Outgoing forked;
        forked.data.assign(1, kForked);
        PutInt(&forked.data, seq);
        PutInt(&forked.data, child.pid);
        forked.fds.push_back(std::move(child.pidfd));
        forked.fds.push_back(std::move(child.link));
        outbox.push_back(std::move(forked));
      }
    }
    for (auto& [id, peer] : peers) {
      while (!peer.outbox.empty()) {
        Outgoing& next = peer.outbox.front();
        std::vector<int> fds_out;
        for (const UniqueFd& fd : next.fds) fds_out.push_back(fd.get());
        int err = SendMessage(peer.socket.get(), next.data, fds_out, MSG_DONTWAIT);
        if (err == EAGAIN) break;  // Full: wait for POLLOUT.
        if (err != 0) {            // That end is gone.
          if (id == kContextPeer) _exit(0);
          closed.push_back(id);
          break;
        }
        peer.outbox.pop_front();
      }
    }
    for (int id : closed) {
      peers.erase(id);
      if (id == refill_after) refill_after = -1;  // It will never say it is up.
      if (spare.has_value() && id == spare->peer) {  // A spare that cannot be told: useless.
        ::kill(spare->pid, SIGKILL);  // Reaped like any other, unreported.
        spare.reset();
      }
    }
    if (refill.has_value() && !spare.has_value() && refill_after < 0) {
      Child next = fork_child([&](UniqueFd link, int zygote_end) {
        RunSpare(std::move(link), zygote_end, self, *refill, entry);
      });
      if (next.pid > 0) {
        spare = std::move(next);
        spare_hint = std::move(*refill);
      }
      refill.reset();
    }
  }
}

// A fork child, seen from its context: watched and signalled through its pidfd; its exit
// status comes from the zygote. Thread-safe: Stop and PollExit may run concurrently.
class ForkChild : public ChildProcess {
 public:
  ForkChild(std::shared_ptr<Zygote> zygote, pid_t pid, UniqueFd pidfd)
      : zygote_(std::move(zygote)), pid_(pid), pidfd_(std::move(pidfd)) {}
  ~ForkChild() override {
    if (!WaitFor(absl::ZeroDuration())) {
      Signal(SIGKILL);
      WaitFor(absl::InfiniteDuration());
    }
    zygote_->Forget(pid_);
  }

  pid_t pid() const override { return pid_; }
  int pidfd() const override { return pidfd_.get(); }

  std::string TryExit() override {
    return WaitFor(absl::ZeroDuration()) ? HowItEnded() : "";
  }

  std::string PollExit() override {
    // The link usually breaks a moment before the exit is visible (a process with many
    // threads or a large address space, as under a sanitizer, takes milliseconds to finish
    // exiting): wait for it, briefly. A process that lives on costs this wait once.
    return WaitFor(kExitTimeout) ? HowItEnded() : "";
  }

  std::string Stop(absl::Duration grace) override {
    if (WaitFor(grace)) return HowItEnded();
    Signal(SIGTERM);
    if (WaitFor(grace)) return HowItEnded();
    Signal(SIGKILL);
    WaitFor(absl::InfiniteDuration());
    return HowItEnded();
  }

 private:
  // True once the process has exited (within `timeout`).
  bool WaitFor(absl::Duration timeout) const {
    absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture()
                                                              : absl::Now() + timeout;
    for (;;) {
      absl::Duration left = deadline - absl::Now();
      int ms = deadline == absl::InfiniteFuture()
                   ? -1
                   : static_cast<int>(std::max<int64_t>(0, absl::ToInt64Milliseconds(left)));
      struct pollfd p = {pidfd_.get(), POLLIN, 0};
      int n = ::poll(&p, 1, ms);
      if (n > 0) return true;
      if (n == 0 && ms >= 0 && absl::Now() >= deadline) return false;
      if (n < 0 && errno != EINTR) return false;
    }
  }
  // Through the pidfd: never a reused pid. Once the zygote has reaped the child this fails
  // (ESRCH), which is what it should do.
  void Signal(int sig) const { ::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0); }
  // Once the process has exited: how, as the zygote reports it.
  std::string HowItEnded() {
    {
      absl::MutexLock lock(&mu_);
      if (!how_.empty()) return how_;
    }
    absl::StatusOr<int> status = zygote_->WaitStatus(pid_, absl::Now() + kStatusTimeout);
    std::string how = status.ok() ? DescribeWaitStatus(*status)
                                  : absl::StrCat("exited (", status.status().message(), ")");
    absl::MutexLock lock(&mu_);
    if (how_.empty()) how_ = how;
    return how_;
  }

  const std::shared_ptr<Zygote> zygote_;
  const pid_t pid_;
  const UniqueFd pidfd_;
  absl::Mutex mu_;
  std::string how_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

int InheritedZygoteSocket() { return inherited_zygote_socket; }

// ---------------------------------------------------------------------------------------
// Zygote, in its context.

// The zygote runs single-threaded: started before any thread of this process (CHECK).
void CheckSingleThreaded() {
  int threads = CountThreads();
  CHECK(threads <= 1 + kRuntimeThreads)
      << "the zygote must start before any thread does (this process has " << threads
      << "): start it at the top of main()";
}

absl::StatusOr<std::shared_ptr<Zygote>> Zygote::Start(Entry entry) {
  if (int inherited = std::exchange(inherited_zygote_socket, -1); inherited >= 0) {
    // A fork child: a copy of its zygote as that zygote was, so a zygote of its own would
    // be one more identical copy. It asks the one it came from.
    std::shared_ptr<Zygote> zygote(
        new Zygote(UniqueFd(inherited), inherited_zygote_pid, std::nullopt));
    zygote->fork_child_ = true;
    return zygote;
  }
  CheckSingleThreaded();
  ::fflush(nullptr);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return ErrnoStatus(errno, "socketpair for the zygote");
  }
  const pid_t context = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(sv[0]);
    ::close(sv[1]);
    return ErrnoStatus(err, "fork of the zygote");
  }
  if (pid == 0) {
    ::close(sv[0]);
    RunZygote(sv[1], context, /*forked=*/true, entry);
  }
  ::close(sv[1]);
  UniqueFd socket(sv[0]);
  absl::StatusOr<Process> process = Process::Adopt(pid);
  if (!process.ok()) return process.status();
  return std::shared_ptr<Zygote>(new Zygote(std::move(socket), pid, *std::move(process)));
}

absl::StatusOr<std::shared_ptr<Zygote>> Zygote::StartOnFirstFork() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    return ErrnoStatus(errno, "socketpair for the zygote");
  }
  std::shared_ptr<Zygote> zygote(new Zygote(UniqueFd(sv[0]), -1, std::nullopt));
  absl::MutexLock lock(&zygote->fork_mu_);
  zygote->unstarted_end_.Reset(sv[1]);
  return zygote;
}

void Zygote::RunExecuted(Entry entry) {
  CheckSingleThreaded();
  RunZygote(kExecutedZygoteSocketFd, ::getppid(), /*forked=*/false, entry);
}

void Zygote::StartNow() {
  if (!unstarted_end_.valid()) return;
  {
    absl::MutexLock lock(&mu_);
    if (gone_) return unstarted_end_.Reset();  // Stopped first.
  }
  SpawnOptions spawn;
  spawn.argv = {"/proc/self/exe", kZygoteFlag};
  UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  absl::StatusOr<Process> process = absl::InternalError("no /dev/null");
  if (null.valid()) {
    // Stderr stays this context's until the zygote's loop starts: a failure to get there
    // shows in its log.
    spawn.fds = {{0, null.get()},
                 {1, null.get()},
                 {2, 2},
                 {kExecutedZygoteSocketFd, unstarted_end_.get()}};
    process = Process::Spawn(spawn);
  }
  unstarted_end_.Reset();
  absl::MutexLock lock(&mu_);
  if (!process.ok()) {
    if (!gone_) {
      gone_ = absl::StrCat("the zygote could not be started: ", process.status().message());
    }
    return;
  }
  pid_ = process->pid();
  process_ = *std::move(process);
}

Zygote::Zygote(UniqueFd socket, pid_t pid, std::optional<Process> process)
    : socket_(std::move(socket)), pid_(pid), process_(std::move(process)) {}

Zygote::~Zygote() { Stop(); }

void Zygote::Stop() {
  absl::MutexLock lock(&mu_);
  if (stopped_) return;
  stopped_ = true;
  ::shutdown(socket_.get(), SHUT_RDWR);
  ReapIfOurs();
  if (!gone_) gone_ = absl::StrCat("the zygote (pid ", pid_, ") was stopped");
}

absl::Status Zygote::GoneError() const {
  return absl::FailedPreconditionError(*gone_);
}

void Zygote::ReapIfOurs() {
  if (process_ && !process_->reaped() && !process_->Wait(absl::Now() + absl::Seconds(1)).ok()) {
    process_->Terminate(absl::ZeroDuration());
  }
}

void Zygote::MarkGone(const std::string& why) {
  if (gone_) return;
  // Exiting (the end of file came from its exit): reap it to say how.
  ReapIfOurs();
  std::string how = process_ && process_->status() ? DescribeWaitStatus(*process_->status()) : "";
  gone_ = absl::StrCat("the zygote (pid ", pid_, ") is gone", why.empty() ? "" : ": ", why,
                       how.empty() ? "" : why.empty() ? ": " : "; it ", how);
}

void Zygote::ReadAvailable() {
  std::string data;
  for (;;) {
    if (gone_) return;
    std::vector<UniqueFd> fds;
    bool truncated = false;
    ssize_t n = ReceiveMessage(socket_.get(), &data, &fds, &truncated, MSG_DONTWAIT);
    if (n == -EAGAIN) return;
    if (n == 0) return MarkGone("");
    if (n < 0) return MarkGone(absl::StrCat("its socket failed: ", strerror(-n)));
    size_t at = 1;
    int32_t a = 0, b = 0;
    bool ok = !truncated && GetInt(data.data(), data.size(), &at, &a);
    if (ok && data[0] == kExited && GetInt(data.data(), data.size(), &at, &b)) {
      if (forgotten_.erase(a) == 0) exits_[a] = b;
    } else if (ok && data[0] == kForked && GetInt(data.data(), data.size(), &at, &b) &&
               fds.size() == 2) {
      if (a != 0 && a == awaiting_ && !reply_) {
        reply_.emplace();
        reply_->pid = b;
        reply_->pidfd = std::move(fds[0]);
        reply_->link = std::move(fds[1]);
      } else {
        // The answer to a request that gave up waiting: nobody owns that child.
        ::syscall(SYS_pidfd_send_signal, fds[0].get(), SIGKILL, nullptr, 0);
        forgotten_.insert(b);
      }
    } else if (ok && data[0] == kFailed && GetInt(data.data(), data.size(), &at, &b)) {
      if (a != 0 && a == awaiting_ && !reply_) {
        reply_.emplace();
        reply_->status = ErrnoStatus(b, absl::StrCat("the zygote (pid ", pid_, "): ",
                                                     data.substr(at)).c_str());
      }
    } else {
      LOG(ERROR) << "ignoring a malformed message from the zygote (pid " << pid_ << ")";
    }
  }
}

bool Zygote::WaitUntil(const std::function<bool()>& ready, absl::Time deadline) {
  mu_.Lock();
  for (;;) {
    if (ready()) break;
    if (gone_ || absl::Now() >= deadline) break;
    if (!reading_) {
      // Read on behalf of every waiter, without the lock.
      reading_ = true;
      mu_.Unlock();
      int ms = deadline == absl::InfiniteFuture()
                   ? -1
                   : static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now()) + 1);
      struct pollfd p = {socket_.get(), POLLIN, 0};
      ::poll(&p, 1, ms);
      mu_.Lock();
      reading_ = false;
      ReadAvailable();
    } else {
      auto wake = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !reading_ || ready(); };
      mu_.AwaitWithDeadline(absl::Condition(&wake), deadline);
    }
  }
  bool result = ready();
  mu_.Unlock();
  return result;
}

absl::StatusOr<Zygote::Forked> Zygote::Fork(const std::vector<std::string>& argv, int output_fd,
                                            absl::Time deadline) {
  absl::MutexLock fork_lock(&fork_mu_);
  StartNow();
  int32_t seq;
  {
    absl::MutexLock lock(&mu_);
    ReadAvailable();
    if (gone_) return GoneError();
    seq = ++next_seq_;
    awaiting_ = seq;
    reply_.reset();
  }
  auto done_waiting = [this] {
    absl::MutexLock lock(&mu_);
    awaiting_ = 0;
    reply_.reset();
  };
  std::string request(1, kFork);
  PutInt(&request, seq);
  request += absl::StrJoin(argv, std::string(1, '\0'));
  if (request.size() > kMaxMessage) {
    done_waiting();
    return absl::InvalidArgumentError("the fork request is too large");
  }
  absl::Time wait_until = std::min(deadline, absl::Now() + kForkTimeout);
  for (;;) {
    int err = SendMessage(socket_.get(), request, {output_fd}, MSG_DONTWAIT);
    if (err == 0) break;
    if (err == EAGAIN && absl::Now() < wait_until) {
      struct pollfd p = {socket_.get(), POLLOUT, 0};
      ::poll(&p, 1, 10);
      continue;
    }
    done_waiting();
    absl::MutexLock lock(&mu_);
    ReadAvailable();
    if (err == EPIPE || err == ECONNRESET) MarkGone("its socket broke");
    if (gone_) return GoneError();
    if (err == EAGAIN) {
      return absl::DeadlineExceededError(
          absl::StrCat("the zygote (pid ", pid_, ") took no request before the deadline"));
    }
    return ErrnoStatus(err, "sending a request to the zygote");
  }
  auto answered = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return reply_.has_value() || gone_.has_value();
  };
  WaitUntil(answered, wait_until);
  absl::MutexLock lock(&mu_);
  std::optional<Reply> reply = std::move(reply_);
  reply_.reset();
  awaiting_ = 0;  // A late answer is killed when it comes.
  if (!reply) {
    if (gone_) return GoneError();
    return absl::DeadlineExceededError(
        absl::StrCat("the zygote (pid ", pid_, ") did not answer before the deadline"));
  }
  if (!reply->status.ok()) return reply->status;
  Forked forked;
  forked.pid = reply->pid;
  forked.pidfd = std::move(reply->pidfd);
  forked.link = std::move(reply->link);
  return forked;
}

void Zygote::SayStarted() {
  if (!fork_child_) return;
  // Lost if the socket is full or gone: the zygote then forks its next spare when the next
  // request comes, or this child ends.
  SendMessage(socket_.get(), std::string(1, kStarted), {}, MSG_DONTWAIT);
}

absl::StatusOr<int> Zygote::WaitStatus(pid_t pid, absl::Time deadline) {
  auto reported = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return exits_.contains(pid) || gone_.has_value();
  };
  WaitUntil(reported, deadline);
  absl::MutexLock lock(&mu_);
  if (auto it = exits_.find(pid); it != exits_.end()) return it->second;
  if (gone_) return absl::UnavailableError(absl::StrCat("status unknown: ", *gone_));
  return absl::DeadlineExceededError(
      absl::StrCat("no status from the zygote (pid ", pid_, ")"));
}

void Zygote::Forget(pid_t pid) {
  absl::MutexLock lock(&mu_);
  if (exits_.erase(pid) == 0 && !gone_) forgotten_.insert(pid);
}

// ---------------------------------------------------------------------------------------
// ForkLauncher.

ForkLauncher::ForkLauncher(std::shared_ptr<Zygote> zygote, std::string why_none)
    : zygote_(std::move(zygote)), why_none_(std::move(why_none)) {}

absl::StatusOr<LaunchedChild> ForkLauncher::Launch(const Hop& hop, const LaunchRequest& request) {
  for (const auto& [key, value] : hop.options) {
    if (key != "name") {
      return absl::InvalidArgumentError(absl::StrCat(
          "hop '", hop.DebugString(), "': unknown option '", key, "' (fork takes name)"));
    }
  }
  if (!hop.target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("hop '", hop.DebugString(), "': fork takes no target"));
  }
  if (zygote_ == nullptr) return absl::FailedPreconditionError(why_none_);
  auto output = Pipe();
  if (!output.ok()) return output.status();
  std::vector<std::string> argv = {program_invocation_name};
  for (std::string& arg : AgentArguments(request, kForkChildLinkFd)) argv.push_back(std::move(arg));
  absl::StatusOr<Zygote::Forked> forked =
      zygote_->Fork(argv, output->second.get(), request.deadline);
  if (!forked.ok()) return forked.status();
  // The child's copy must be the only one: a leaked copy would hide its death.
  output->second.Reset();
  auto process = std::make_unique<ForkChild>(zygote_, forked->pid, std::move(forked->pidfd));
  return LinkUp(std::move(forked->link), std::move(process), std::move(output->first),
                absl::StrCat("fork child ", request.info.id()), "", request);
}

}  // namespace grove
