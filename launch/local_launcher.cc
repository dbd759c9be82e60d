#include "launch/local_launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/fd.h"
#include "common/process.h"
#include "glog/logging.h"
#include "transport/grpc_link.h"

namespace grove {
namespace {

// How much of a child's early output an error quotes.
constexpr size_t kTailBytes = 4096;
// How long a child whose link broke may take to finish exiting, so that its exit status (a
// crash's signal) goes into the report. A sanitizer's process takes far longer to tear down
// (ThreadSanitizer's shadow memory).
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
constexpr int kExitWaitMs = 100;
#else
constexpr int kExitWaitMs = 5;
#endif

// A child process of this process. Thread-safe: Stop and PollExit may run concurrently.
class LocalChild : public ChildProcess {
 public:
  explicit LocalChild(Process process) : process_(std::move(process)) {}
  ~LocalChild() override {
    absl::MutexLock lock(&mu_);
    process_.Terminate(absl::ZeroDuration());
  }

  pid_t pid() const override { return process_.pid(); }
  int pidfd() const override { return process_.pidfd(); }
  std::string TryExit() override { return TryReap(); }

  std::string PollExit() override {
    // The link usually breaks a moment before the exit is visible: wait for it, briefly.
    struct pollfd p = {process_.pidfd(), POLLIN, 0};
    ::poll(&p, 1, kExitWaitMs);
    return TryReap();
  }

  std::string Stop(absl::Duration grace) override {
    if (std::string how = WaitFor(grace); !how.empty()) return how;
    Signal(SIGTERM);
    if (std::string how = WaitFor(grace); !how.empty()) return how;
    Signal(SIGKILL);
    return WaitFor(absl::InfiniteDuration());
  }

 private:
  std::string TryReap() {
    absl::MutexLock lock(&mu_);
    std::optional<int> status = process_.TryWait();
    return status ? DescribeWaitStatus(*status) : "";
  }
  void Signal(int sig) {
    absl::MutexLock lock(&mu_);
    process_.Signal(sig);
  }
  // Waits (without the lock) until the process has exited, then reaps it.
  std::string WaitFor(absl::Duration timeout) {
    absl::Time deadline = timeout == absl::InfiniteDuration() ? absl::InfiniteFuture()
                                                              : absl::Now() + timeout;
    for (;;) {
      if (std::string how = TryReap(); !how.empty()) return how;
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return "";
      struct pollfd p = {process_.pidfd(), POLLIN, 0};
      int ms = deadline == absl::InfiniteFuture()
                   ? -1
                   : static_cast<int>(absl::ToInt64Milliseconds(left) + 1);
      ::poll(&p, 1, ms);
    }
  }

  absl::Mutex mu_;
  Process process_;  // pid() and pidfd() are read without the lock; they never change.
};

void AppendTail(std::string* tail, const char* data, size_t size) {
  tail->append(data, size);
  if (tail->size() > kTailBytes) tail->erase(0, tail->size() - kTailBytes);
}

// Reads what is available on a non-blocking fd; false at EOF or error.
bool Drain(int fd, std::string* tail) {
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n > 0) {
      AppendTail(tail, buffer, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return true;
    return false;
  }
}

// This program, as a process it execs names it.
constexpr char kThisProgram[] = "/proc/self/exe";

// The argv that starts a local child's agent: this program, or this program through the
// command in $GROVE_AGENT_WRAPPER (words split on spaces: "strace -f -o /tmp/t", "valgrind
// --tool=callgrind"), which is given this program and the agent's arguments to run. A wrapper
// gets this program's path: /proc/self/exe would name the wrapper's own.
absl::StatusOr<std::vector<std::string>> AgentProgram() {
  const char* wrapper = ::getenv("GROVE_AGENT_WRAPPER");
  if (wrapper == nullptr || *wrapper == '\0') return std::vector<std::string>{kThisProgram};
  std::vector<std::string> argv = absl::StrSplit(wrapper, ' ', absl::SkipEmpty());
  char path[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path));
  if (n < 0 || n == sizeof(path)) {
    return ErrnoStatus(n < 0 ? errno : ENAMETOOLONG, "readlink /proc/self/exe");
  }
  argv.emplace_back(path, n);
  return argv;
}

}  // namespace

std::string QuoteTail(const std::string& tail) {
  if (tail.empty()) return "; it printed nothing";
  std::vector<absl::string_view> lines = absl::StrSplit(tail, '\n', absl::SkipEmpty());
  size_t first = lines.size() > 20 ? lines.size() - 20 : 0;
  std::vector<absl::string_view> last(lines.begin() + first, lines.end());
  return absl::StrCat("; its last output:\n  ", absl::StrJoin(last, "\n  "));
}

std::vector<std::string> AgentArguments(const LaunchRequest& request, int link_fd) {
  return {
      "--grove-agent",
      link_fd < 0 ? std::string("--grove-stdio") : absl::StrCat("--grove-fd=", link_fd),
      absl::StrCat("--grove-id=", request.info.id()),
      absl::StrCat("--grove-name=", request.info.name()),
      absl::StrCat("--grove-parent=", request.info.parent()),
      absl::StrCat("--grove-method=", request.info.method()),
      absl::StrCat("--grove-ancestors=", absl::StrJoin(request.ancestors, ",")),
      absl::StrCat("--grove-max-message=", request.max_message_bytes),
      absl::StrCat("--grove-minloglevel=", request.min_log_level),
      absl::StrCat("--grove-v=", request.verbosity),
      absl::StrCat("--grove-silence-ms=", absl::ToInt64Milliseconds(request.silence_limit)),
  };
}

absl::StatusOr<LaunchedChild> LocalLauncher::Launch(const Hop& hop, const LaunchRequest& request) {
  for (const auto& [key, value] : hop.options) {
    if (key != "name") {
      return absl::InvalidArgumentError(
          absl::StrCat("hop '", hop.DebugString(), "': unknown option '", key, "' (local takes name)"));
    }
  }
  if (!hop.target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("hop '", hop.DebugString(), "': local takes no target"));
  }
  auto link_fds = SocketPair();
  if (!link_fds.ok()) return link_fds.status();
  auto output = Pipe();
  if (!output.ok()) return output.status();
  UniqueFd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null.valid()) return ErrnoStatus(errno, "open /dev/null");

  constexpr int kChildLinkFd = 3;
  SpawnOptions options;
  absl::StatusOr<std::vector<std::string>> program = AgentProgram();
  if (!program.ok()) return program.status();
  options.argv = *std::move(program);
  for (std::string& arg : AgentArguments(request, kChildLinkFd)) options.argv.push_back(std::move(arg));
  options.fds = {{0, null.get()},
                 {1, output->second.get()},
                 {2, output->second.get()},
                 {kChildLinkFd, link_fds->second.get()}};
  absl::StatusOr<Process> process = Process::Spawn(options);
  if (!process.ok()) {
    if (options.argv[0] == kThisProgram) return process.status();
    return absl::Status(process.status().code(),
                        absl::StrCat(process.status().message(), " (GROVE_AGENT_WRAPPER)"));
  }
  // The child's copies must be the only ones: a leaked copy would hide its death.
  link_fds->second.Reset();
  output->second.Reset();
  null.Reset();
  return LinkUp(std::move(link_fds->first), *std::move(process), std::move(output->first),
                absl::StrCat("local child ", request.info.id()), "", request);
}

absl::StatusOr<LaunchedChild> LinkUp(UniqueFd socket, Process process, UniqueFd output,
                                     const std::string& what, std::string tail,
                                     const LaunchRequest& request) {
  return LinkUp(std::move(socket), std::make_unique<LocalChild>(std::move(process)),
                std::move(output), what, std::move(tail), request);
}

absl::StatusOr<LaunchedChild> LinkUp(UniqueFd socket, std::unique_ptr<ChildProcess> process,
                                     UniqueFd output, const std::string& what,
                                     std::string tail, const LaunchRequest& request) {
  const pid_t pid = process->pid();
  SetNonBlocking(output.get(), true).IgnoreError();
  std::shared_ptr<GrpcClientLink> link = GrpcClientLink::Connect(
      std::move(socket), absl::StrCat("link to ", what, " (pid ", pid, ")"),
      request.max_message_bytes);
  bool output_open = true;
  absl::Status failure;
  for (;;) {
    struct pollfd fds[3] = {{link->first_envelope_fd(), POLLIN, 0},
                            {process->pidfd(), POLLIN, 0},
                            {output_open ? output.get() : -1, POLLIN, 0}};
    int ms = -1;
    if (request.deadline != absl::InfiniteFuture()) {
      absl::Duration left = request.deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        failure = absl::DeadlineExceededError(absl::StrCat(
            what, " (pid ", pid, ") did not link up before the deadline", QuoteTail(tail)));
        break;
      }
      ms = static_cast<int>(absl::ToInt64Milliseconds(left) + 1);
    }
    int n = ::poll(fds, 3, ms);
    if (n < 0 && errno != EINTR) {
      failure = ErrnoStatus(errno, "poll");
      break;
    }
    if (fds[2].revents) output_open = Drain(output.get(), &tail);
    if (fds[0].revents) {
      absl::StatusOr<v1::Envelope> first = link->TakeFirstEnvelope();
      if (first.ok() && first->has_hello()) {
        Drain(output.get(), &tail);
        if (!tail.empty()) {
          LOG(INFO) << what << " (pid " << pid
                    << ") printed before linking up: " << tail;
        }
        LaunchedChild child;
        child.info = first->hello().info();
        child.link = std::move(link);
        child.handle = std::move(process);
        return child;
      }
      // The link failed first: the process is about to exit; report how.
      if (!first.ok()) {
        struct pollfd p = {process->pidfd(), POLLIN, 0};
        ::poll(&p, 1, 1000);
        if (process->TryExit().empty()) {
          failure = absl::UnavailableError(absl::StrCat(what, " (pid ", pid,
                                                        ") broke the link: ", first.status().message(),
                                                        QuoteTail(tail)));
          break;
        }
      } else {
        failure = absl::InternalError(absl::StrCat(what, " (pid ", pid,
                                                   ") sent something other than a Hello first"));
        break;
      }
    }
    if (fds[1].revents || !process->TryExit().empty()) {
      if (std::string how = process->TryExit(); !how.empty()) {
        while (output_open && Drain(output.get(), &tail)) {
          struct pollfd p = {output.get(), POLLIN, 0};
          if (::poll(&p, 1, 100) <= 0) break;
        }
        failure = absl::UnavailableError(absl::StrCat(what, " (pid ", pid, ") ", how,
                                                      " before linking up", QuoteTail(tail)));
        break;
      }
    }
  }
  link->Close(failure);
  process->Stop(absl::ZeroDuration());
  return failure;
}

}  // namespace grove
