#include "child/agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <optional>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/fd.h"
#include "common/process.h"
#include "glog/logging.h"
#include "grpcpp/server_posix.h"
#include "launch/local_launcher.h"
#include "launch/payload.h"
#include "launch/remote_launcher.h"
#include "launch/standard.h"
#include "proto/builtins.pb.h"
#include "proto/files.pb.h"
#include "proto/mesh.pb.h"
#include "mesh/mesh.h"
#include "router/router.h"
#include "router/run_command.h"
#include "transport/grpc_link.h"
#include "transport/relay.h"

namespace grove {
namespace {

// Debian builds Abseil without NDEBUG, so absl::Mutex keeps a process-wide lock-order graph,
// behind one global spinlock, on every Lock and Unlock: 5-10% of a call's CPU, and a lock
// every thread of a busy context meets. Every program on grove (it links this file) runs
// without it, as with an NDEBUG Abseil; the multi-process tests turn it back on in main().
[[maybe_unused]] const bool kNoMutexDeadlockGraph = [] {
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

// Longest line forwarded as one record; longer lines are split.
constexpr size_t kMaxLine = 16384;

struct AgentFlags {
  int fd = -1;
  // Router::Options::silence_limit (the parent's).
  absl::Duration silence_limit = kDefaultSilenceLimit;
  // The link is on stdin/stdout (pipes, from ssh, sudo or a container runtime).
  bool stdio = false;
  v1::ContextInfo info;
  std::vector<uint64_t> ancestors;
  int64_t max_message_bytes = kDefaultMaxMessageBytes;
  int min_log_level = 0;
  int verbosity = 0;
  // kExpectFlag: the digest this executable must have (remote methods); kUploadedFlag.
  std::string expect;
  bool uploaded = false;
};

// A child holds no fd of its parent's but stdio and its link, even ones the parent's own code
// opened without close-on-exec; and a fork child's socket to its zygote.
void CloseInheritedFds(int link_fd, int zygote_fd) {
  std::vector<int> fds;
  if (DIR* dir = ::opendir("/proc/self/fd")) {
    while (struct dirent* e = ::readdir(dir)) {
      int fd;
      if (absl::SimpleAtoi(e->d_name, &fd) && fd > 2 && fd != link_fd && fd != zygote_fd &&
          fd != ::dirfd(dir)) {
        fds.push_back(fd);
      }
    }
    ::closedir(dir);
  }
  for (int fd : fds) ::close(fd);
}

bool ParseFlags(int argc, char** argv, AgentFlags* flags, std::string* error) {
  for (int i = 2; i < argc; ++i) {
    absl::string_view arg = argv[i];
    size_t eq = arg.find('=');
    absl::string_view key = arg.substr(0, eq);
    absl::string_view value = eq == absl::string_view::npos ? "" : arg.substr(eq + 1);
    uint64_t u = 0;
    int64_t n = 0;
    bool ok = true;
    if (key == "--grove-fd") {
      ok = absl::SimpleAtoi(value, &flags->fd);
    } else if (key == "--grove-stdio") {
      flags->stdio = true;
    } else if (key == "--grove-id") {
      ok = absl::SimpleAtoi(value, &u);
      flags->info.set_id(u);
    } else if (key == "--grove-name") {
      flags->info.set_name(std::string(value));
    } else if (key == "--grove-parent") {
      ok = absl::SimpleAtoi(value, &u);
      flags->info.set_parent(u);
    } else if (key == "--grove-method") {
      flags->info.set_method(std::string(value));
    } else if (key == "--grove-ancestors") {
      for (absl::string_view a : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        ok = ok && absl::SimpleAtoi(a, &u);
        flags->ancestors.push_back(u);
      }
    } else if (key == "--grove-max-message") {
      ok = absl::SimpleAtoi(value, &n) && n > 0;
      flags->max_message_bytes = n;
    } else if (key == "--grove-minloglevel") {
      ok = absl::SimpleAtoi(value, &flags->min_log_level);
    } else if (key == "--grove-v") {
      ok = absl::SimpleAtoi(value, &flags->verbosity);
    } else if (key == "--grove-silence-ms") {
      ok = absl::SimpleAtoi(value, &n) && n >= 0;
      flags->silence_limit = absl::Milliseconds(n);
    } else if (key == kExpectFlag) {
      flags->expect = std::string(value);
      ok = !value.empty();
    } else if (key == kUploadedFlag) {
      flags->uploaded = true;
    } else {
      *error = absl::StrCat("unknown agent flag ", arg);
      return false;
    }
    if (!ok) {
      *error = absl::StrCat("bad agent flag ", arg);
      return false;
    }
  }
  if (flags->fd < 0 && !flags->stdio) {
    *error = "missing --grove-fd or --grove-stdio";
    return false;
  }
  return true;
}



// Captures this process's stdout and stderr (pipes over fds 1 and 2, read here), collects
// glog records, watches the parent link for hang-up, and forwards all of it, on the thread
// that calls Run (the agent's main thread). Thread-safe.
class IoForwarder : public google::LogSink {
 public:
  IoForwarder(Router* router, int link_fd, std::function<void(const absl::Status&)> on_parent_lost)
      : router_(router), on_parent_lost_(std::move(on_parent_lost)) {
    watch_.Reset(::fcntl(link_fd, F_DUPFD_CLOEXEC, 3));
    wake_.Reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  }

  // Replaces fds 1 and 2 by pipes read here. Called before any thread starts.
  absl::Status CaptureStdio() {
    for (int target : {1, 2}) {
      auto pipe = Pipe();
      if (!pipe.ok()) return pipe.status();
      if (::dup2(pipe->second.get(), target) < 0) return ErrnoStatus(errno, "dup2");
      SetNonBlocking(pipe->first.get(), true).IgnoreError();
      (target == 1 ? out_ : err_) = std::move(pipe->first);
    }
    ::setvbuf(stdout, nullptr, _IOLBF, 0);
    return absl::OkStatus();
  }

  // Forwards until Stop is called (from another thread); returns then.
  void Run() {
    Loop();
    absl::MutexLock lock(&mu_);
    done_ = true;
  }

  // Has Run forward what is still buffered and return; waits for that.
  void Stop() {
    ::fflush(stdout);
    ::fflush(stderr);
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    Wake();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }

  // google::LogSink: queue the record; the thread forwards it (never from here, so that a
  // log statement inside the transport cannot re-enter it).
  void send(google::LogSeverity severity, const char* /*full_filename*/,
            const char* base_filename, int line, const struct ::tm* /*tm_time*/,
            const char* message, size_t message_len) override {
    v1::LogRecord record;
    record.set_kind(v1::LogRecord::GLOG);
    record.set_severity(severity);
    record.set_file(base_filename);
    record.set_line(line);
    record.set_text(std::string(message, message_len));
    {
      absl::MutexLock lock(&mu_);
      if (records_.size() >= 10000) return;  // Flooding: drop rather than grow.
      records_.push_back(std::move(record));
    }
    Wake();
  }

 private:
  void Wake() {
    uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof(one));
  }

  void ForwardLines(v1::LogRecord::Kind kind, std::string* buffer, bool flush) {
    size_t start = 0;
    for (;;) {
      size_t nl = buffer->find('\n', start);
      size_t end = nl == std::string::npos ? buffer->size() : nl;
      if (nl == std::string::npos && !flush && end - start < kMaxLine) break;
      if (end == start && nl == std::string::npos) break;
      size_t len = std::min(end - start, kMaxLine);
      v1::LogRecord record;
      record.set_kind(kind);
      record.set_text(buffer->substr(start, len));
      router_->SendLog(std::move(record));
      start += len;
      if (start == nl) ++start;
    }
    buffer->erase(0, start);
  }

  // Reads what is available; false at EOF.
  bool ReadInto(int fd, std::string* buffer) {
    char chunk[65536];
    for (;;) {
      ssize_t n = ::read(fd, chunk, sizeof(chunk));
      if (n > 0) {
        buffer->append(chunk, static_cast<size_t>(n));
        if (buffer->size() > 4 * kMaxLine) return true;  // Forward before reading more.
        continue;
      }
      return n < 0 && (errno == EAGAIN || errno == EINTR);
    }
  }

  void Loop() {
    std::string out_buffer, err_buffer;
    bool parent_lost = false;
    for (;;) {
      struct pollfd fds[4] = {{out_.get(), POLLIN, 0},
                              {err_.get(), POLLIN, 0},
                              {wake_.get(), POLLIN, 0},
                              {parent_lost ? -1 : watch_.get(), POLLRDHUP, 0}};
      if (::poll(fds, 4, -1) < 0 && errno != EINTR) break;
      bool stopping;
      std::deque<v1::LogRecord> records;
      {
        absl::MutexLock lock(&mu_);
        stopping = stopping_;
        records.swap(records_);
      }
      if (fds[2].revents) {
        uint64_t n;
        (void)!::read(wake_.get(), &n, sizeof(n));
      }
      if (fds[0].revents || stopping) ReadInto(out_.get(), &out_buffer);
      if (fds[1].revents || stopping) ReadInto(err_.get(), &err_buffer);
      ForwardLines(v1::LogRecord::STDOUT, &out_buffer, stopping);
      ForwardLines(v1::LogRecord::STDERR, &err_buffer, stopping);
      for (v1::LogRecord& r : records) router_->SendLog(std::move(r));
      if (stopping) break;
      if (fds[3].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
        parent_lost = true;
        on_parent_lost_(absl::UnavailableError("the parent link hung up"));
      }
    }
  }

  Router* const router_;
  const std::function<void(const absl::Status&)> on_parent_lost_;
  UniqueFd out_, err_, watch_, wake_;
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<v1::LogRecord> records_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

bool IsAgentInvocation(int argc, char** argv) {
  // Started by ssh as its SSH_ASKPASS helper (the ssh launcher's password path): answer the
  // prompt and end. The password lives only in ssh's environment.
  if (const char* password = ::getenv("GROVE_ASKPASS_PASSWORD");
      password != nullptr && ::getenv("SSH_ASKPASS") != nullptr) {
    std::string line = std::string(password) + "\n";
    WriteAll(1, line.data(), line.size()).IgnoreError();
    _exit(0);
  }
  // Run by the first stage to check a cached or uploaded agent: hash ourselves and end.
  if (argc == 2 && std::strncmp(argv[1], kVerifyFlag, sizeof(kVerifyFlag) - 1) == 0) {
    _exit(VerifySelf(argv[1] + sizeof(kVerifyFlag) - 1));
  }
  return argc >= 2 &&
         (std::strcmp(argv[1], "--grove-agent") == 0 || std::strcmp(argv[1], kZygoteFlag) == 0);
}

namespace {

// What takes a context down, and the one reason it goes.
struct Ending {
  Router* router = nullptr;
  IoForwarder* io = nullptr;
  std::shared_ptr<Zygote> zygote;
  std::string name;
  absl::Mutex mu;
  bool started ABSL_GUARDED_BY(mu) = false;
  // Set before the thread that reads it starts.
  absl::Status reason;
};

// The thread that ends a context; never returns.
void* EndContext(void* arg) {
  auto* ending = static_cast<Ending*>(arg);
  pthread_setname_np(pthread_self(), "grove-end");
  VLOG(1) << "context " << ending->name << " shutting down: " << ending->reason;
  // Deepest first: children (and their subtrees) go before this context's last words.
  ending->router->StopAllChildren();
  google::RemoveLogSink(ending->io);
  ending->io->Stop();
  ending->router->Shutdown(ending->reason);
  // Commands still running (grove.run) go, their process groups whole, and are reaped by the
  // runs that started them, before the process exits.
  KillRunningCommands(absl::Seconds(2));
  // Its fork children are gone with the rest: the zygote ends on the end of file; reap it.
  if (ending->zygote != nullptr) ending->zygote->Stop();
  ::fflush(nullptr);
  _exit(0);
}

// The agent's gRPC server, started before it has its socket. Intentionally leaked: the
// process ends with _exit.
struct AgentServer {
  AgentService* service = nullptr;
  grpc::Server* server = nullptr;
};

AgentServer StartAgentServer(int64_t max_message_bytes) {
  AgentServer started;
  started.service = new AgentService(max_message_bytes);
  NoServerPluginsScope no_plugins;  // Not even made: see mesh/mesh.h.
  grpc::ServerBuilder builder;
  started.service->AddTo(&builder);
  builder.SetOption(WithoutServerPlugins());  // No reflection (and its threads) here.
  builder.SetMaxReceiveMessageSize(LinkReceiveLimit(max_message_bytes));
  builder.SetMaxSendMessageSize(-1);
  started.server = builder.BuildAndStart().release();
  if (started.server == nullptr) {
    fprintf(stderr, "grove agent: cannot start the gRPC server\n");
    _exit(2);
  }
  return started;
}

// In a spare fork child, once its Entry::prepare has run: the server it started for the
// child it becomes. Main thread only.
std::optional<AgentServer> prepared_server;

// An argv for RunAgent (pointing into `args`).
std::vector<char*> ArgvOf(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

// The message limit an agent run with `args` has (the default when they do not parse).
int64_t MaxMessageBytesOf(const std::vector<std::string>& args) {
  std::vector<char*> argv = ArgvOf(args);
  AgentFlags flags;
  std::string error;
  ParseFlags(static_cast<int>(args.size()), argv.data(), &flags, &error);
  return flags.max_message_bytes;
}

// What a fork child of this program runs. Also does, before the zygote starts, work every
// context does at startup anyway, so that fork children inherit it: the descriptors of
// grove's messages (one message per .proto file builds the file: the router's built-ins,
// files and mesh; a fork child built them itself, 0.35 ms of its start).
Zygote::Entry ForkChildEntry(const Functions& functions) {
  v1::Envelope::descriptor();
  v1::InfoReply::descriptor();
  v1::ChunkRequest::descriptor();
  v1::GrpcOpenRequest::descriptor();
  Zygote::Entry entry;
  // A spare: the user's fork hooks (while it has one thread, as they expect), then gRPC's
  // start and the server, for the limit the fork child before it had.
  entry.prepare = [&functions](const std::vector<std::string>& hint) {
    functions.RunForkHooks();
    prepared_server = StartAgentServer(MaxMessageBytesOf(hint));
    // Its link is served from now on: its parent's first messages wait until the agent
    // takes the link (AgentService::Start), not for the server.
    if (!SetNonBlocking(kForkChildLinkFd, true).ok()) _exit(2);
    grpc::AddInsecureChannelFromFd(prepared_server->server, kForkChildLinkFd);
  };
  // What prepare built depends on the limit alone.
  entry.fits = [](const std::vector<std::string>& hint, const std::vector<std::string>& argv) {
    return MaxMessageBytesOf(hint) == MaxMessageBytesOf(argv);
  };
  entry.run = [&functions](const std::vector<std::string>& args) {
    if (!prepared_server.has_value()) functions.RunForkHooks();
    std::vector<char*> argv = ArgvOf(args);
    RunAgent(static_cast<int>(args.size()), argv.data(), functions);
  };
  return entry;
}

}  // namespace

absl::StatusOr<std::shared_ptr<Zygote>> StartZygote(const Functions& functions) {
  RaiseOpenFileLimit();  // Before the fork: the zygote and its children inherit it.
  return Zygote::Start(ForkChildEntry(functions));
}

void RunAgent(int argc, char** argv, const Functions& functions) {
  // Run again by a context to be its zygote (Zygote::StartOnFirstFork).
  if (argc == 2 && std::strcmp(argv[1], kZygoteFlag) == 0) {
    RaiseOpenFileLimit();
    Zygote::RunExecuted(ForkChildEntry(functions));
  }
  RaiseOpenFileLimit();  // Inherited by its fork children (the zygote forks after this).
  AgentFlags flags;
  std::string error;
  if (!ParseFlags(argc, argv, &flags, &error)) {
    fprintf(stderr, "grove agent: %s\n", error.c_str());
    _exit(2);
  }
  // Before anything else: run only as the very file the parent sent (launch/payload.h).
  if (!flags.expect.empty() && VerifySelf(flags.expect.c_str()) != 0) {
    if (!flags.uploaded) _exit(kStaleAgentExit);  // A stale cached copy: the shell uploads.
    std::string line = absl::StrCat(kFailMarker, "upload did not verify\n");
    WriteAll(1, line.data(), line.size()).IgnoreError();
    _exit(1);
  }
  ::signal(SIGPIPE, SIG_IGN);
  // (A spare closed them before gRPC opened its own.)
  if (!prepared_server.has_value()) CloseInheritedFds(flags.fd, InheritedZygoteSocket());
  // Commands this context runs must not inherit its link: a copy in a process that outlives
  // it would hide its death from its parent.
  if (flags.fd >= 0) SetCloseOnExec(flags.fd, true).IgnoreError();
  // The zygote: a fork child's is the one it came from; any other child's starts when it
  // is first asked to fork, as a fresh run of this program (what a fork child of it could
  // inherit is the program as it starts: its threads and gRPC cannot be). Without one this
  // context offers no `fork`.
  absl::StatusOr<std::shared_ptr<Zygote>> zygote =
      InheritedZygoteSocket() >= 0 ? StartZygote(functions) : Zygote::StartOnFirstFork();
  if (flags.stdio) {
    // The link arrives on pipes: relay them to a socketpair and serve on its other end. The
    // boot marker goes out first, so the parent knows that what follows is gRPC.
    int in = ::fcntl(0, F_DUPFD_CLOEXEC, 3);
    int out = ::fcntl(1, F_DUPFD_CLOEXEC, 3);
    auto pair = SocketPair();
    int null = ::open("/dev/null", O_RDWR);
    if (in < 0 || out < 0 || !pair.ok() || null < 0 ||
        !WriteAll(out, kBootMarker, kMarkerSize).ok()) {
      fprintf(stderr, "grove agent: cannot set up the stdio link\n");
      _exit(2);
    }
    ::dup2(null, 0);
    ::close(null);
    flags.fd = pair->second.Release();
    new Relay(UniqueFd(in), UniqueFd(out), std::move(pair->first));  // Lives until _exit.
  }
  v1::ContextInfo& info = flags.info;
  info.set_pid(::getpid());
  info.set_host(CurrentHostName());
  info.set_user(CurrentUserName());
  if (info.name().empty()) info.set_name(absl::StrCat(info.method(), ".", ::getpid()));

  // Intentionally leaked: the process ends with _exit, never by destroying these.
  Router::Options router_options = StandardRouterOptions(
      info, flags.ancestors, &functions, flags.max_message_bytes, flags.min_log_level,
      flags.verbosity);
  router_options.silence_limit = flags.silence_limit;
  auto* router = new Router(std::move(router_options));
  auto* launchers = new StandardLaunchers(
      zygote.ok() ? *zygote : nullptr,
      zygote.ok() ? "" : absl::StrCat("context ", info.name(), " has no zygote: ",
                                      zygote.status().message()));
  launchers->AddTo(*router);

  // The first request to end (a shutdown call, the parent's link gone) starts a thread that
  // takes this context down (EndContext); until it is done, the main thread goes on
  // forwarding stdio and logs.
  auto* ending = new Ending();
  ending->router = router;
  ending->zygote = zygote.ok() ? *zygote : nullptr;
  ending->name = info.name();
  auto finish = [ending](const absl::Status& reason) {
    {
      absl::MutexLock lock(&ending->mu);
      if (ending->started) return;
      ending->started = true;
      ending->reason = reason;
    }
    pthread_t thread;
    if (::pthread_create(&thread, nullptr, &EndContext, ending) != 0) _exit(1);
    ::pthread_detach(thread);
  };
  auto* io = new IoForwarder(router, flags.fd, finish);
  ending->io = io;
  router->SetShutdownHandler(finish);
  if (absl::Status s = io->CaptureStdio(); !s.ok()) {
    fprintf(stderr, "grove agent: cannot capture stdio: %s\n", s.ToString().c_str());
    _exit(2);
  }
  // A fork child of a program that initialised glog before its zygote started has it
  // initialised already.
  if (!google::IsGoogleLoggingInitialized()) google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = false;
  FLAGS_alsologtostderr = false;
  FLAGS_stderrthreshold = google::FATAL;
  FLAGS_minloglevel = flags.min_log_level;
  FLAGS_v = flags.verbosity;
  for (int s = 0; s < google::NUM_SEVERITIES; ++s) google::SetLogDestination(s, "");
  google::AddLogSink(io);

  // A spare serves its link already, with this limit (Entry::fits).
  const bool prepared = prepared_server.has_value();
  AgentServer server = prepared ? *prepared_server : StartAgentServer(flags.max_message_bytes);
  // Its queue becomes this process's link queue, also for the links to children.
  server.service->Start(absl::StrCat("link to the parent of ", info.name()),
                        [router, info, zygote = ending->zygote](
                            std::shared_ptr<GrpcServerLink> link) {
                          v1::Envelope hello;
                          hello.set_src(info.id());
                          hello.set_dst(info.parent());
                          *hello.mutable_hello()->mutable_info() = info;
                          link->Send(std::move(hello));
                          router->SetParentLink(std::move(link));
                          if (zygote != nullptr) zygote->SayStarted();
                        });
  if (!prepared) {
    // The server side does not set O_NONBLOCK itself; without it every call hangs.
    if (!SetNonBlocking(flags.fd, true).ok()) _exit(2);
    grpc::AddInsecureChannelFromFd(server.server, flags.fd);
  }

  io->Run();
  for (;;) ::pause();  // EndContext ends the process.
}

}  // namespace grove
