// Zygote, seen from its context: starting it, asking it for fork children, hearing of
// their exits.
#include "launch/zygote.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "glog/logging.h"
#include "launch/zygote_wire.h"

namespace grove {
namespace {

using zygote_wire::GetInt;
using zygote_wire::inherited_zygote_pid;
using zygote_wire::inherited_zygote_socket;
using zygote_wire::kExecutedZygoteSocketFd;
using zygote_wire::kExited;
using zygote_wire::kFailed;
using zygote_wire::kFork;
using zygote_wire::kForked;
using zygote_wire::kMaxMessage;
using zygote_wire::kStarted;
using zygote_wire::PutInt;
using zygote_wire::ReceiveMessage;
using zygote_wire::RunZygote;
using zygote_wire::SendMessage;

// How long the zygote may take to answer a request when the launch has no deadline.
constexpr absl::Duration kForkTimeout = absl::Seconds(30);
// Threads a process may have that are not the program's: ThreadSanitizer starts a
// background thread of its own in every child that fork() makes (its fork interceptor
// takes its own locks around the fork, so that thread is harmless).
#if defined(__SANITIZE_THREAD__)
constexpr int kRuntimeThreads = 1;
#else
constexpr int kRuntimeThreads = 0;
#endif

// The zygote runs single-threaded: started before any thread of this process (CHECK).
void CheckSingleThreaded() {
  int threads = zygote_wire::CountThreads();
  CHECK(threads <= 1 + kRuntimeThreads)
      << "the zygote must start before any thread does (this process has " << threads
      << "): start it at the top of main()";
}

}  // namespace

int InheritedZygoteSocket() { return inherited_zygote_socket; }

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

}  // namespace grove
