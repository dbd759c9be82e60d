// The resident master's verbs: grove up, down, status, logs, stop, reload (docs/resident.md).
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "common/json.h"
#include "common/printable.h"
#include "common/status_util.h"
#include "proto/control.grpc.pb.h"
#include "resident/attach.h"
#include "resident/control_service.h"
#include "resident/control_socket.h"
#include "resident/resident.h"
#include "resident/supervisor.h"
#include "tools/cli.h"
#include "tools/cli_paths.h"
#include "tools/cli_signals.h"
#include "tools/output_mux.h"

#include "tools/cli_attach.h"

namespace grove::cli {
namespace {

std::string Seconds(absl::Duration d) {
  d = absl::Trunc(d, absl::Seconds(1));
  return d == absl::ZeroDuration() ? "0s" : absl::FormatDuration(d);
}

std::string Ago(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  return Seconds(absl::Now() - absl::FromUnixMillis(unix_ms));
}

// Waits until process `pid` has exited (not our child: through a pidfd). False on timeout.
bool WaitForExit(pid_t pid, absl::Duration timeout) {
  int fd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) return errno == ESRCH;
  pollfd p{fd, POLLIN, 0};
  int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout)));
  close(fd);
  return ready > 0;
}

std::string Absolute(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) != nullptr ? std::string(buf) : path;
}

// Runs `program` as a detached resident master (its own session, stdin and stdout on
// /dev/null, stderr in the log) and waits for it to say it is ready.
int StartDetached(const std::string& program, ResidentOptions options) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    fprintf(stderr, "grove up: pipe: %s\n", strerror(errno));
    return kExitFailed;
  }
  options.ready_fd = fds[1];
  std::vector<std::string> args = {program};
  for (std::string& a : ResidentArgs(options)) args.push_back(std::move(a));
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = options.dir + "/master.log";
  const pid_t first = fork();
  if (first < 0) {
    fprintf(stderr, "grove up: fork: %s\n", strerror(errno));
    return kExitFailed;
  }
  if (first == 0) {
    // The intermediate process: a new session, then the master as its child, so that the
    // master is not this CLI's child and never gets a controlling terminal.
    setsid();
    if (fork() != 0) _exit(0);
    int null = open("/dev/null", O_RDWR);
    int err = open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0600);
    dup2(null, 0);
    dup2(null, 1);
    if (err >= 0) dup2(err, 2);
    fcntl(fds[1], F_SETFD, 0);
    const char* home = getenv("HOME");
    if (home == nullptr || chdir(home) != 0) (void)!chdir("/");
    execv(program.c_str(), argv.data());
    dprintf(fds[1], "error: cannot run %s: %s\n", program.c_str(), strerror(errno));
    _exit(127);
  }
  close(fds[1]);
  waitpid(first, nullptr, 0);
  std::string said;
  char buf[512];
  pollfd p{fds[0], POLLIN, 0};
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (absl::Now() < deadline) {
    int ready = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(deadline - absl::Now())));
    if (ready <= 0) break;
    ssize_t n = read(fds[0], buf, sizeof(buf));
    if (n <= 0) break;
    said.append(buf, n);
  }
  close(fds[0]);
  if (said.rfind("ready", 0) == 0) return 0;
  if (said.rfind("error: ", 0) == 0) {
    fprintf(stderr, "grove up: %s", Printable(said.substr(7)).c_str());
    if (said.back() != '\n') fputc('\n', stderr);
  } else {
    fprintf(stderr, "grove up: the resident master did not start (see %s)\n", log.c_str());
  }
  return kExitFailed;
}

void PrintStatus(const v1::StatusReply& s, bool json) {
  if (json) {
    std::vector<std::string> items;
    auto item = [](const v1::ContextStatus& c) {
      return absl::StrCat(
          "{\"id\":", c.id(), ",\"name\":", JsonQuote(c.name()), ",\"path\":", JsonQuote(c.path()),
          ",\"state\":", JsonQuote(c.state()), ",\"supervised\":", c.supervised() ? "true" : "false",
          ",\"restarts\":", c.restarts(), ",\"pid\":", c.pid(), ",\"host\":", JsonQuote(c.host()),
          ",\"method\":", JsonQuote(c.method()), ",\"parent\":", c.parent(),
          ",\"reason\":", JsonQuote(c.reason()), "}");
    };
    for (const v1::ContextStatus& c : s.contexts()) items.push_back(item(c));
    for (const v1::ContextStatus& c : s.down()) items.push_back(item(c));
    std::vector<std::string> services;
    for (const v1::ServiceStatus& service : s.services()) {
      std::vector<std::string> names, replicas;
      for (const std::string& name : service.names()) names.push_back(JsonQuote(name));
      for (const v1::ServiceStatus::Replica& r : service.replicas()) {
        replicas.push_back(absl::StrCat(
            "{\"path\":", JsonQuote(r.path()), ",\"id\":", r.id(), ",\"health\":",
            JsonQuote(r.health()), ",\"in_flight\":", r.in_flight(), ",\"calls\":", r.calls(),
            ",\"failed\":", r.failed(), "}"));
      }
      services.push_back(absl::StrCat("{\"names\":[", absl::StrJoin(names, ","),
                                      "],\"replicas\":[", absl::StrJoin(replicas, ","), "]}"));
    }
    printf("{\"pid\":%lld,\"uptime_ms\":%lld,\"build\":%s,\"version\":%s,\"socket\":%s,"
           "\"log\":%s,\"api_version\":%d,\"contexts\":[%s],\"ingress\":%s,"
           "\"services\":[%s]}\n",
           static_cast<long long>(s.master().pid()), static_cast<long long>(s.uptime_ms()),
           JsonQuote(s.master().build()).c_str(), JsonQuote(s.master().version()).c_str(),
           JsonQuote(s.master().socket()).c_str(), JsonQuote(s.master().log_file()).c_str(),
           s.master().api_version(), absl::StrJoin(items, ",").c_str(),
           JsonQuote(s.ingress()).c_str(), absl::StrJoin(services, ",").c_str());
    return;
  }
  printf("resident master pid %lld, up %s, grove %s (build %s), control API v%d\n",
         static_cast<long long>(s.master().pid()),
         Seconds(absl::Milliseconds(s.uptime_ms())).c_str(),
         s.master().version().c_str(), s.master().build().substr(0, 12).c_str(),
         s.master().api_version());
  printf("socket %s\nlog    %s\nidle timeout %s (unsupervised kept contexts)\n",
         s.master().socket().c_str(), s.master().log_file().c_str(),
         absl::FormatDuration(absl::Milliseconds(s.idle_timeout_ms())).c_str());
  printf("%-5s %-22s %-28s %-11s %-8s %-8s %-9s %s\n", "ID", "NAME", "PATH", "STATE", "RESTARTS",
         "PID", "IDLE", "REASON");
  auto row = [](const v1::ContextStatus& c, bool live) {
    std::string restarts = c.supervised() ? absl::StrCat(c.restarts()) : "-";
    printf("%-5s %-22s %-28s %-11s %-8s %-8s %-9s %s\n",
           live ? absl::StrCat(c.id()).c_str() : "-", Printable(c.name()).c_str(),
           c.path().empty() ? "-" : Printable(c.path()).c_str(), c.state().c_str(),
           restarts.c_str(), live ? absl::StrCat(c.pid()).c_str() : "-",
           c.path().empty() || !live ? "-" : Ago(c.last_used_unix_ms()).c_str(),
           Printable(c.reason()).c_str());
  };
  for (const v1::ContextStatus& c : s.contexts()) row(c, true);
  for (const v1::ContextStatus& c : s.down()) row(c, false);
  if (s.services().empty()) return;
  printf("\ningress %s\n", s.ingress().empty() ? "(none: the spec has no ingress listen)"
                                                 : s.ingress().c_str());
  printf("%-28s %-28s %-5s %-14s %-9s %-9s %s\n", "SERVICE", "REPLICA", "ID", "HEALTH",
         "IN-FLIGHT", "CALLS", "FAILED");
  for (const v1::ServiceStatus& service : s.services()) {
    const std::string names = absl::StrJoin(service.names(), ",");
    for (const v1::ServiceStatus::Replica& r : service.replicas()) {
      printf("%-28s %-28s %-5s %-14s %-9d %-9lld %lld\n", Printable(names).c_str(),
             Printable(r.path()).c_str(), r.id() == 0 ? "-" : absl::StrCat(r.id()).c_str(),
             Printable(r.health()).c_str(), r.in_flight(), static_cast<long long>(r.calls()),
             static_cast<long long>(r.failed()));
    }
  }
}

// Splits the attach options off a verb's arguments (before "--"): --fresh, --attach SOCKET.

}  // namespace

int Up(const std::vector<std::string>& args) {
  ResidentOptions options;
  std::string program;
  bool foreground = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--idle-timeout") {
      double seconds;
      if (i + 1 >= args.size() || !ParsePositive(args[i + 1], &seconds)) {
        fprintf(stderr, "grove up: --idle-timeout needs a number of seconds above 0\n");
        return kExitUsage;
      }
      options.idle_timeout = absl::Seconds(seconds);
      ++i;
    } else if (a == "--program" && i + 1 < args.size()) {
      program = args[++i];
    } else if (a == "--foreground") {
      foreground = true;
    } else if (a.size() > 1 && a[0] == '-') {
      fprintf(stderr, "grove up: unknown option %s (see grove up --help)\n", a.c_str());
      return kExitUsage;
    } else if (options.spec_file.empty()) {
      options.spec_file = Absolute(a);
    } else {
      fprintf(stderr, "grove up: one SPEC at most (see grove up --help)\n");
      return kExitUsage;
    }
  }
  if (!options.spec_file.empty()) {
    absl::StatusOr<v1::Spec> spec = ReadSpecFile(options.spec_file);
    if (!spec.ok()) {
      fprintf(stderr, "grove up: %s\n", std::string(spec.status().message()).c_str());
      return kExitUsage;
    }
  }
  options.dir = DefaultResidentDir();
  if (absl::Status dir = EnsurePrivateDir(options.dir); !dir.ok()) {
    fprintf(stderr, "grove up: %s\n", std::string(dir.message()).c_str());
    return kExitFailed;
  }
  const std::string socket = options.dir + "/control.sock";
  v1::VersionReply running;
  if (Open(socket, &running).ok()) {
    fprintf(stderr, "grove up: a resident master is already running (pid %lld, socket %s)\n",
            static_cast<long long>(running.pid()), socket.c_str());
    return kExitFailed;
  }
  if (program.empty()) program = Absolute("/proc/self/exe");
  if (foreground) {
    std::vector<std::string> args_out = {program};
    for (std::string& a : ResidentArgs(options)) args_out.push_back(std::move(a));
    std::vector<char*> argv;
    for (std::string& a : args_out) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(program.c_str(), argv.data());
    fprintf(stderr, "grove up: cannot run %s: %s\n", program.c_str(), strerror(errno));
    return kExitFailed;
  }
  if (int status = StartDetached(program, options); status != 0) return status;
  if (!Open(socket, &running).ok()) {
    fprintf(stderr, "grove up: the resident master said it was ready but does not answer at %s\n",
            socket.c_str());
    return kExitFailed;
  }
  printf("grove: resident master up (pid %lld)\nsocket %s\nlog    %s\n",
         static_cast<long long>(running.pid()), socket.c_str(), running.log_file().c_str());
  return 0;
}

int Down(const std::vector<std::string>& args) {
  if (!args.empty()) {
    fprintf(stderr, "grove down: takes no arguments\n");
    return kExitUsage;
  }
  const std::string socket = DefaultControlSocket();
  v1::VersionReply version;
  absl::StatusOr<std::unique_ptr<AttachedTree>> stub = Open(socket, &version);
  if (!stub.ok()) {
    if (stub.status().code() == absl::StatusCode::kUnavailable) {
      printf("grove: no resident master is running (%s)\n",
             std::string(stub.status().message()).c_str());
      return 0;
    }
    fprintf(stderr, "grove down: %s\n", std::string(stub.status().message()).c_str());
    return kExitFailed;
  }
  grpc::ClientContext context;
  v1::ShutdownReply reply;
  grpc::Status status = (*stub)->stub().Shutdown(&context, v1::ShutdownRequest(), &reply);
  // The master may stop its server before the answer leaves: the call is then cancelled, and
  // the master's exit (below) is what says it went.
  if (!status.ok() && status.error_code() != grpc::StatusCode::CANCELLED &&
      status.error_code() != grpc::StatusCode::UNAVAILABLE) {
    fprintf(stderr, "grove down: %s\n", Message(status).c_str());
    return kExitFailed;
  }
  stub->reset();  // Its connection would hold the master's server up as it stops.
  if (!WaitForExit(static_cast<pid_t>(version.pid()), absl::Seconds(60))) {
    fprintf(stderr, "grove down: the resident master (pid %lld) is still running after 60 s\n",
            static_cast<long long>(version.pid()));
    return kExitFailed;
  }
  printf("grove: resident master (pid %lld) stopped, with its tree\n",
         static_cast<long long>(version.pid()));
  return 0;
}

int Status(const std::vector<std::string>& args) {
  bool json = false;
  for (const std::string& a : args) {
    if (a == "--json") {
      json = true;
    } else {
      fprintf(stderr, "grove status: unknown argument %s (only --json)\n", a.c_str());
      return kExitUsage;
    }
  }
  const std::string socket = DefaultControlSocket();
  v1::VersionReply version;
  absl::StatusOr<std::unique_ptr<AttachedTree>> stub = Open(socket, &version);
  if (!stub.ok()) {
    if (json) {
      printf("{\"running\":false,\"socket\":%s,\"why\":%s}\n", JsonQuote(socket).c_str(),
             JsonQuote(std::string(stub.status().message())).c_str());
    } else {
      printf("grove: %s\n", std::string(stub.status().message()).c_str());
    }
    return 3;  // As `systemctl status` for a unit that is not running.
  }
  grpc::ClientContext context;
  v1::StatusReply reply;
  grpc::Status status = (*stub)->stub().Status(&context, v1::StatusRequest(), &reply);
  if (!status.ok()) {
    fprintf(stderr, "grove status: %s\n", Message(status).c_str());
    return kExitFailed;
  }
  PrintStatus(reply, json);
  return 0;
}

int Logs(const std::vector<std::string>& args) {
  v1::LogsRequest request;
  for (const std::string& a : args) {
    if (a == "-f" || a == "--follow") {
      request.set_follow(true);
    } else if (a.size() > 1 && a[0] == '-') {
      fprintf(stderr, "grove logs: unknown option %s (grove logs [-f] [PATH])\n", a.c_str());
      return kExitUsage;
    } else if (request.path().empty()) {
      request.set_path(a);
    } else {
      fprintf(stderr, "grove logs: one PATH at most\n");
      return kExitUsage;
    }
  }
  v1::VersionReply version;
  absl::StatusOr<std::unique_ptr<AttachedTree>> stub = Open(DefaultControlSocket(), &version);
  if (!stub.ok()) {
    fprintf(stderr, "grove logs: %s\n", std::string(stub.status().message()).c_str());
    return kExitUnreachable;
  }
  HandleInterrupts();
  CliCall call;
  std::unique_ptr<grpc::ClientReader<v1::LogLine>> reader =
      (*stub)->stub().Logs(call.get(), request);
  v1::LogLine line;
  while (reader->Read(&line)) {
    const std::string when = absl::FormatTime("%H:%M:%E3S", absl::FromUnixMillis(line.unix_ms()),
                                              absl::LocalTimeZone());
    if (printf("%s [%s] %s: %s\n", when.c_str(), Printable(line.context()).c_str(),
               line.kind().c_str(), Printable(line.text()).c_str()) < 0 ||
        fflush(stdout) != 0) {
      call.get()->TryCancel();
      return kExitBrokenPipe;
    }
  }
  grpc::Status status = reader->Finish();
  if (InterruptSignal() != 0) return 128 + InterruptSignal();
  if (!status.ok()) {
    fprintf(stderr, "grove logs: %s\n", Message(status).c_str());
    return ExitFor(status.error_code());
  }
  return 0;
}

int StopPath(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    fprintf(stderr, "grove stop: need PATH (one)\n");
    return kExitUsage;
  }
  v1::VersionReply version;
  absl::StatusOr<std::unique_ptr<AttachedTree>> stub = Open(DefaultControlSocket(), &version);
  if (!stub.ok()) {
    fprintf(stderr, "grove stop: %s\n", std::string(stub.status().message()).c_str());
    return kExitUnreachable;
  }
  CliCall call;
  v1::StopPathRequest request;
  request.set_path(args[0]);
  v1::StopPathReply reply;
  grpc::Status status = (*stub)->stub().Stop(call.get(), request, &reply);
  if (!status.ok()) {
    fprintf(stderr, "grove stop: %s\n", Redacted(Message(status), args).c_str());
    return ExitFor(status.error_code());
  }
  printf("grove: stopped %s\n", Redacted(args[0], args).c_str());
  return 0;
}

int Reload(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    fprintf(stderr, "grove reload: need SPEC (one file)\n");
    return kExitUsage;
  }
  absl::StatusOr<v1::Spec> spec = ReadSpecFile(args[0]);
  if (!spec.ok()) {
    fprintf(stderr, "grove reload: %s\n", std::string(spec.status().message()).c_str());
    return kExitUsage;
  }
  v1::VersionReply version;
  absl::StatusOr<std::unique_ptr<AttachedTree>> stub = Open(DefaultControlSocket(), &version);
  if (!stub.ok()) {
    fprintf(stderr, "grove reload: %s\n", std::string(stub.status().message()).c_str());
    return kExitUnreachable;
  }
  CliCall call;
  v1::ReloadRequest request;
  *request.mutable_spec() = *spec;
  v1::ReloadReply reply;
  grpc::Status status = (*stub)->stub().Reload(call.get(), request, &reply);
  if (!status.ok()) {
    fprintf(stderr, "grove reload: %s\n", Message(status).c_str());
    return ExitFor(status.error_code());
  }
  for (const std::string& p : reply.started()) printf("started %s\n", Printable(p).c_str());
  for (const std::string& p : reply.stopped()) printf("stopped %s\n", Printable(p).c_str());
  for (const std::string& p : reply.kept()) printf("kept    %s\n", Printable(p).c_str());
  return 0;
}

}  // namespace grove::cli
