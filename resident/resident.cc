#include "resident/resident.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/notification.h"
#include "common/version.h"
#include "glog/logging.h"
#include "grpcpp/server_posix.h"
#include "launch/payload.h"
#include "resident/control_service.h"
#include "resident/control_socket.h"
#include "resident/kept_paths.h"
#include "resident/log_book.h"
#include "resident/supervisor.h"

namespace grove {
namespace {

// How long answered control calls get to send their replies when the master stops.
constexpr absl::Duration kReplyGrace = absl::Milliseconds(200);

// Set by SIGTERM, SIGINT and SIGHUP; the serving loop looks at it.
std::atomic<int> g_stop_signal{0};

void OnStopSignal(int sig) { g_stop_signal.store(sig); }

// Tells whoever started the master how it went, once.
class Readiness {
 public:
  explicit Readiness(int fd) : fd_(fd) {
    // Not inherited by the contexts the master starts: the starter sees EOF when it dies.
    if (fd_ >= 0) fcntl(fd_, F_SETFD, FD_CLOEXEC);
  }
  ~Readiness() { Say("error: the resident master ended before it was ready\n"); }
  void Ready() { Say("ready\n"); }
  int Fail(const std::string& why) {
    LOG(ERROR) << "resident master: " << why;
    Say(absl::StrCat("error: ", why, "\n"));
    return 1;
  }

 private:
  void Say(const std::string& text) {
    if (fd_ < 0) return;
    (void)!write(fd_, text.data(), text.size());
    close(fd_);
    fd_ = -1;
  }
  int fd_;
};

// The supervisor's view of every supervised path, for the ingress.
std::vector<ReplicaLocation> ReplicaLocations(Router& root, const Supervisor& supervisor) {
  std::vector<ReplicaLocation> locations;
  for (const Supervisor::State& state : supervisor.States()) {
    ReplicaLocation& l = locations.emplace_back();
    l.path = state.path;
    l.id = state.id;
    l.state = state.state;
    l.reason = state.reason;
    if (state.id.has_value()) {
      if (std::optional<ContextRecord> record = root.registry().Find(*state.id)) {
        l.name = record->name;
      }
    }
  }
  return locations;
}

}  // namespace

absl::StatusOr<std::optional<ResidentOptions>> ResidentFromArgs(int argc, char** argv) {
  std::optional<ResidentOptions> options;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (!absl::ConsumePrefix(&arg, "--grove-")) continue;
    if (!options.has_value()) options.emplace();
    if (absl::ConsumePrefix(&arg, "resident=")) {
      options->dir = std::string(arg);
    } else if (absl::ConsumePrefix(&arg, "spec=")) {
      options->spec_file = std::string(arg);
    } else if (absl::ConsumePrefix(&arg, "idle-timeout=")) {
      double seconds;
      if (!absl::SimpleAtod(arg, &seconds) || !(seconds > 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--grove-idle-timeout needs seconds above 0, not '", arg, "'"));
      }
      options->idle_timeout = absl::Seconds(seconds);
    } else if (absl::ConsumePrefix(&arg, "ready-fd=")) {
      if (!absl::SimpleAtoi(arg, &options->ready_fd) || options->ready_fd < 0) {
        return absl::InvalidArgumentError(absl::StrCat("bad --grove-ready-fd '", arg, "'"));
      }
      options->stderr_to_log = true;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", argv[i]));
    }
  }
  if (options.has_value() && options->dir.empty()) {
    return absl::InvalidArgumentError("--grove-resident=DIR is needed with the other --grove- flags");
  }
  return options;
}

std::vector<std::string> ResidentArgs(const ResidentOptions& options) {
  std::vector<std::string> args = {absl::StrCat("--grove-resident=", options.dir)};
  if (!options.spec_file.empty()) args.push_back(absl::StrCat("--grove-spec=", options.spec_file));
  args.push_back(absl::StrCat("--grove-idle-timeout=",
                              absl::ToDoubleSeconds(options.idle_timeout)));
  if (options.ready_fd >= 0) args.push_back(absl::StrCat("--grove-ready-fd=", options.ready_fd));
  return args;
}

int ServeResident(Router& root, const ResidentOptions& given) {
  ResidentOptions options = given;
  if (options.dir.empty()) options.dir = DefaultResidentDir();
  Readiness readiness(options.ready_fd);
  if (absl::Status dir = EnsurePrivateDir(options.dir); !dir.ok()) {
    return readiness.Fail(std::string(dir.message()));
  }
  absl::StatusOr<UniqueFd> lock = TakeMasterLock(options.dir);
  if (!lock.ok()) return readiness.Fail(std::string(lock.status().message()));

  std::optional<v1::Spec> spec;
  if (!options.spec_file.empty()) {
    absl::StatusOr<v1::Spec> parsed = ReadSpecFile(options.spec_file);
    if (!parsed.ok()) return readiness.Fail(std::string(parsed.status().message()));
    spec = *std::move(parsed);
  }

  // Shared with the router's log sink, which may still be called while the tree goes down
  // after this function returns.
  auto log = std::make_shared<LogBook>(options.dir + "/master.log");
  if (options.stderr_to_log) {
    UniqueFd err(open((options.dir + "/master.log").c_str(),
                      O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
    if (err.valid()) dup2(err.get(), 2);
  }
  root.SetLogSink([log](const ContextRecord& from, const v1::LogRecord& record) {
    log->Add(from, record);
  });
  KeptPaths kept(&root);
  auto supervisor = std::make_unique<Supervisor>(&root, &kept, log.get());
  Supervisor* supervised = supervisor.get();
  auto ingress = std::make_unique<Ingress>(IngressOptions{
      &root, [&root, supervised] { return ReplicaLocations(root, *supervised); },
      [log](const std::string& line) { log->Note(line); }});

  absl::Notification stop;
  const std::string socket = options.dir + "/control.sock";
  v1::VersionReply version;
  version.set_api_version(kControlApiVersion);
  absl::StatusOr<const Payload*> self = ThisProgram();
  version.set_build(self.ok() ? (*self)->sha256 : "unknown");
  version.set_version(kGroveVersion);
  version.set_pid(getpid());
  version.set_started_unix_ms(absl::ToUnixMillis(absl::Now()));
  version.set_socket(socket);
  version.set_log_file(log->file());
  ControlService service({&root, &kept, supervisor.get(), ingress.get(), log.get(), version,
                          options.idle_timeout, [&stop] {
                            if (!stop.HasBeenNotified()) stop.Notify();
                          }});
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  builder.SetMaxReceiveMessageSize(-1);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr) return readiness.Fail("cannot start the control service");
  grpc::Server* raw_server = server.get();
  absl::StatusOr<std::unique_ptr<ControlListener>> listener =
      ControlListener::Listen(socket, [raw_server](UniqueFd fd) {
        grpc::AddInsecureChannelFromFd(raw_server, fd.Release());
      });
  if (!listener.ok()) {
    server->Shutdown();
    return readiness.Fail(std::string(listener.status().message()));
  }

  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaction(sig, &action, nullptr);

  log->Note(absl::StrCat("resident master pid ", getpid(), " serving ", socket, " (build ",
                         version.build().substr(0, 12), ", idle timeout ",
                         absl::FormatDuration(options.idle_timeout), ")"));
  if (spec.has_value()) {
    // The ingress first, as a reload does: an address that cannot be bound starts nothing.
    if (absl::Status served = ingress->Apply(*spec); !served.ok()) {
      listener->reset();
      server->Shutdown(absl::ToChronoTime(absl::Now()));
      ingress.reset();
      supervisor.reset();
      return readiness.Fail(absl::StrCat(options.spec_file, ": ", served.message()));
    }
    v1::ReloadReply applied = supervisor->Apply(*spec, absl::Seconds(30));
    log->Note(absl::StrCat("spec ", options.spec_file, ": ", applied.started_size(),
                           " supervised contexts"));
    ingress->CheckNow();  // Ready means: the replicas that are up take calls.
  }
  readiness.Ready();

  // Every so often: stop what has been idle too long, and look for a stop signal.
  const absl::Duration tick =
      std::min(absl::Milliseconds(200), std::max(absl::Milliseconds(10), options.idle_timeout / 4));
  while (!stop.WaitForNotificationWithTimeout(tick)) {
    if (int sig = g_stop_signal.load(); sig != 0) {
      log->Note(absl::StrCat("stopping on signal ", sig, " (", strsignal(sig), ")"));
      break;
    }
    for (const std::string& path :
         kept.Idle(absl::Now(), options.idle_timeout, supervisor->Paths())) {
      absl::StatusOr<int> stopped = kept.Stop(path);
      if (stopped.ok()) {
        log->Note(absl::StrCat("stopped ", path, ": unused for ",
                               absl::FormatDuration(options.idle_timeout)));
      }
    }
  }
  log->Note("shutting down: the tree goes down, deepest first");
  listener->reset();
  // Calls that have answered (the Shutdown that asked for this) get their replies out for a
  // moment; then what is still in flight is cancelled (commands are killed, follows end).
  // Shutdown returns once every handler has.
  server->Shutdown(absl::ToChronoTime(absl::Now() + kReplyGrace));
  // No calls from clients, and no restarts, while the tree goes down.
  ingress.reset();
  supervisor.reset();
  root.Shutdown(absl::CancelledError("the resident master shut down"));
  log->Note("resident master stopped");
  return 0;
}

}  // namespace grove
