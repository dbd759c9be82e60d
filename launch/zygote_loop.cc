// The zygote's own process: its loop, which forks fork children and spares on request and
// reaps them, and what a fork child does right after its fork. Single-threaded throughout.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ctime>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "launch/zygote_wire.h"

namespace grove::zygote_wire {
namespace {

// In the fork child, on its only thread, right after fork().

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

// The peer of the zygote's context, whose end of file ends the zygote.
constexpr int kContextPeer = 0;

// A child forked with a socket of its own (a new peer) and its link (the other end of which
// goes to whoever asked for it).
struct Child {
  pid_t pid = -1;
  int peer = -1;
  UniqueFd pidfd;
  UniqueFd link;
  int err = 0;  // Or how forking it failed, with `what`.
  const char* what = "";
};

// The zygote's loop: serves its peers' fork requests, keeps a spare (see launch/zygote.h),
// reaps every child and reports each exit to the peer that asked for the child. Owns its
// peers' sockets and the spare. Single-threaded; Run never returns.
class ZygoteLoop {
 public:
  ZygoteLoop(int socket, int signal_fd, const Zygote::Entry& entry)
      : self_(::getpid()), signal_fd_(signal_fd), entry_(entry) {
    peers_[kContextPeer].socket = UniqueFd(socket);
  }

  [[noreturn]] void Run() {
    std::vector<struct pollfd> fds;
    std::vector<int> ids;
    for (;;) {
      fds.assign(1, {signal_fd_, POLLIN, 0});
      ids.clear();
      for (const auto& [id, peer] : peers_) {
        fds.push_back({peer.socket.get(),
                       static_cast<short>(POLLIN | (peer.outbox.empty() ? 0 : POLLOUT)), 0});
        ids.push_back(id);
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        _exit(2);
      }
      if (fds[0].revents) Reap();
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) Read(ids[i - 1]);
      }
      Flush();
      for (int id : closed_) Close(id);
      closed_.clear();
      Refill();
    }
  }

 private:
  // Reaps every child that exited; tells the peer that asked for it.
  void Reap() {
    struct signalfd_siginfo info;
    while (::read(signal_fd_, &info, sizeof(info)) > 0) {
    }
    int status;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      if (spare_.has_value() && spare_->pid == pid) spare_.reset();  // Killed: not handed out.
      auto asked = requested_by_.find(pid);
      if (asked == requested_by_.end()) continue;
      auto peer = peers_.find(asked->second);
      requested_by_.erase(asked);
      if (peer == peers_.end()) continue;
      Outgoing exited;
      exited.data.assign(1, kExited);
      PutInt(&exited.data, pid);
      PutInt(&exited.data, status);
      peer->second.outbox.push_back(std::move(exited));
    }
  }

  // Reads every message peer `id` has sent.
  void Read(int id) {
    const int socket = peers_[id].socket.get();
    for (;;) {
      std::vector<UniqueFd> received;
      bool truncated = false;
      ssize_t n = ReceiveMessage(socket, &data_, &received, &truncated, MSG_DONTWAIT);
      if (n == -EAGAIN) return;
      if (n <= 0) {  // That end was closed (or broke).
        if (id == kContextPeer) _exit(0);  // The context: done.
        closed_.push_back(id);
        return;
      }
      if (data_[0] == kStarted) {
        if (id == refill_after_) refill_after_ = -1;
        continue;
      }
      size_t at = 1;
      int32_t seq = 0;
      if (data_[0] != kFork || !GetInt(data_.data(), data_.size(), &at, &seq)) continue;
      if (truncated || received.size() != 1) {
        peers_[id].outbox.push_back({Failed(seq, EINVAL, "malformed fork request")});
        continue;
      }
      Serve(id, seq, at, std::move(received[0]));
    }
  }

  // Answers fork request `seq` of peer `id` (its argv in data_ from `at` on): with the spare
  // if it fits, else with a child forked now.
  void Serve(int id, int32_t seq, size_t at, UniqueFd output) {
    std::vector<std::string> argv = SplitArgv(data_, at);
    std::deque<Outgoing>& outbox = peers_[id].outbox;
    if (spare_.has_value() && !entry_.fits(spare_hint_, argv)) {
      // Prepared for another kind of child: replaced (it ends on the end of file).
      ::kill(spare_->pid, SIGKILL);
      closed_.push_back(spare_->peer);
      spare_.reset();
    }
    Child child;
    if (spare_.has_value()) {
      // The spare becomes the child: it gets the argv and the output.
      Outgoing become;
      become.data.assign(1, kBecome);
      become.data.append(data_, at, std::string::npos);
      become.fds.push_back(std::move(output));
      peers_[spare_->peer].outbox.push_back(std::move(become));
      child = *std::move(spare_);
      spare_.reset();
    } else {
      child = Fork([&](UniqueFd link, int zygote_end) {
        RunForkChild(std::move(link), std::move(output), zygote_end, self_, argv, entry_);
      });
      output.Reset();  // The child's copy is the only one.
    }
    refill_ = std::move(argv);
    refill_after_ = child.peer;
    if (child.pid < 0) {
      outbox.push_back({Failed(seq, child.err, child.what)});
      return;
    }
    requested_by_[child.pid] = id;
    Outgoing forked;
    forked.data.assign(1, kForked);
    PutInt(&forked.data, seq);
    PutInt(&forked.data, child.pid);
    forked.fds.push_back(std::move(child.pidfd));
    forked.fds.push_back(std::move(child.link));
    outbox.push_back(std::move(forked));
  }

  // Forks a child with a socket of its own (a new peer) and a link, `in_child` running in it.
  Child Fork(const std::function<void(UniqueFd link, int zygote_end)>& in_child) {
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
    child.peer = next_peer_++;
    peers_[child.peer].socket = std::move(ours);
    child.link = std::move(link->first);
    return child;
  }

  // Sends what each outbox holds, as far as each socket takes it.
  void Flush() {
    for (auto& [id, peer] : peers_) {
      while (!peer.outbox.empty()) {
        Outgoing& next = peer.outbox.front();
        std::vector<int> fds_out;
        for (const UniqueFd& fd : next.fds) fds_out.push_back(fd.get());
        int err = SendMessage(peer.socket.get(), next.data, fds_out, MSG_DONTWAIT);
        if (err == EAGAIN) break;  // Full: wait for POLLOUT.
        if (err != 0) {            // That end is gone.
          if (id == kContextPeer) _exit(0);
          closed_.push_back(id);
          break;
        }
        peer.outbox.pop_front();
      }
    }
  }

  void Close(int id) {
    peers_.erase(id);
    if (id == refill_after_) refill_after_ = -1;  // It will never say it is up.
    if (spare_.has_value() && id == spare_->peer) {  // A spare that cannot be told: useless.
      ::kill(spare_->pid, SIGKILL);  // Reaped like any other, unreported.
      spare_.reset();
    }
  }

  // Forks the next spare once the child asked for last is up.
  void Refill() {
    if (!refill_.has_value() || spare_.has_value() || refill_after_ >= 0) return;
    Child next = Fork([&](UniqueFd link, int zygote_end) {
      RunSpare(std::move(link), zygote_end, self_, *refill_, entry_);
    });
    if (next.pid > 0) {
      spare_ = std::move(next);
      spare_hint_ = std::move(*refill_);
    }
    refill_.reset();
  }

  const pid_t self_;
  const int signal_fd_;
  const Zygote::Entry& entry_;
  // By id; ids are never reused.
  std::map<int, Peer> peers_;
  int next_peer_ = kContextPeer + 1;
  // Peers whose socket ended during this round, closed at its end.
  std::vector<int> closed_;
  // Live children -> the peer that asked for them, which hears of their exit. A child whose
  // peer is gone (or that nobody learnt of) is reaped without a report.
  absl::flat_hash_map<pid_t, int> requested_by_;
  // The spare and the argv it was prepared with; the argv of the last request, once the
  // spare is to be replaced, which is done when the child asked for last (the peer
  // `refill_after_`) is up, so that the two do not compete for the CPU.
  std::optional<Child> spare_;
  std::vector<std::string> spare_hint_;
  std::optional<std::vector<std::string>> refill_;
  int refill_after_ = -1;
  std::string data_;
};

}  // namespace

[[noreturn]] void RunZygote(int socket, pid_t context, bool forked, const Zygote::Entry& entry) {
  // A safety net: the end of file on the socket is the main signal that the context is gone.
  // (Only when the main thread started it: the signal comes when the thread that did ends.)
  if (forked) ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != context) _exit(0);
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
  ZygoteLoop(socket, signal_fd, entry).Run();
}

}  // namespace grove::zygote_wire
