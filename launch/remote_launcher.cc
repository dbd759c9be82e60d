#include "launch/remote_launcher.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/random/random.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/fd.h"
#include "common/status_util.h"
#include "common/process.h"
#include "glog/logging.h"
#include "launch/local_launcher.h"
#include "launch/marker.h"
#include "launch/payload.h"

extern char** environ;

namespace grove {
namespace {

constexpr absl::Duration kDefaultConnectTimeout = absl::Seconds(30);
constexpr size_t kTailBytes = 4096;

// A started command whose stdin and stdout are one end of a socketpair (`socket` is ours) and
// whose stderr is a pipe (`err` is our end). With a terminal (su), stdin and stderr are
// instead a PTY that is the command's controlling terminal: `err` reads it and `terminal`
// keeps it open for the child's life (closing it would hang up the session), and stdout
// alone is the socket (the shell command moves stdin onto it).
struct Started {
  UniqueFd socket;
  Process process;
  UniqueFd err;
  UniqueFd terminal;
};

absl::StatusOr<Started> StartCommand(const std::vector<std::string>& argv,
                                     const std::vector<std::string>& extra_env,
                                     bool with_terminal) {
  auto link = SocketPair();
  if (!link.ok()) return link.status();
  SpawnOptions options;
  options.argv = argv;
  if (!extra_env.empty()) {
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    options.env = std::move(env);
  }
  Started started;
  UniqueFd err_write;
  if (with_terminal) {
    absl::StatusOr<Pty> pty = OpenPty();
    if (!pty.ok()) return pty.status();
    options.fds = {{1, link->second.get()}};
    options.controlling_terminal = pty->slave_path;
    options.terminal_fds = {0, 2};
    started.err.Reset(::fcntl(pty->master.get(), F_DUPFD_CLOEXEC, 0));
    if (!started.err.valid()) return ErrnoStatus(errno, "dup of a pty");
    started.terminal = std::move(pty->master);
  } else {
    auto err = Pipe();
    if (!err.ok()) return err.status();
    options.fds = {{0, link->second.get()}, {1, link->second.get()}, {2, err->second.get()}};
    started.err = std::move(err->first);
    err_write = std::move(err->second);
  }
  absl::StatusOr<Process> process = Process::Spawn(options);
  if (!process.ok()) return process.status();
  started.socket = std::move(link->first);
  started.process = *std::move(process);
  SetNonBlocking(started.err.get(), true).IgnoreError();
  return started;
}

// A child reached through a terminal: holds the PTY as long as the child lives.
// Thread-safe (the inner handle is).
class TerminalChild : public ChildHandle {
 public:
  TerminalChild(std::unique_ptr<ChildHandle> inner, UniqueFd terminal)
      : inner_(std::move(inner)), terminal_(std::move(terminal)) {}
  std::string PollExit() override { return inner_->PollExit(); }
  std::string Stop(absl::Duration grace) override { return inner_->Stop(grace); }

 private:
  std::unique_ptr<ChildHandle> inner_;
  UniqueFd terminal_;
};

// Decides what stderr output means while bootstrapping: an error to stop with, a reply to
// write into the command's stdin (a password at a prompt), or nothing yet.
struct StderrVerdict {
  absl::Status error;
  std::string reply;
};
using StderrJudge = std::function<StderrVerdict(const std::string& err_tail, size_t new_from)>;

// How much of the first stage, printed back, shows a command that echoes its input.
constexpr size_t kEchoProbe = 32;

void AppendTail(std::string* tail, const char* data, size_t size) {
  tail->append(data, size);
  if (tail->size() > kTailBytes) tail->erase(0, tail->size() - kTailBytes);
}

// The error for an ARCH or FAIL marker and the line after it.
absl::Status MarkerError(MarkerScanner::Event event, const std::string& detail,
                         const std::string& what) {
  if (event == MarkerScanner::Event::kArch) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " is a ", detail, " machine; this program is built for another architecture"));
  }
  return absl::DataLossError(absl::StrCat(what, ": ", detail));
}

// Runs the bootstrap exchange on a started command: writes `script` to its stdin when not
// empty (for commands that end in a shell), uploads the payload when the first stage asks,
// and returns once the agent's boot marker arrives (the socket then carries gRPC). `*tail`
// collects what the command printed.
absl::Status Bootstrap(Started& s, const Payload& payload, const std::string& script,
                       const StderrJudge& judge, absl::Time deadline, const std::string& what,
                       std::string* tail) {
  BootstrapCounters& counters = GlobalBootstrapCounters();
  if (!script.empty()) {
    std::string line = script + "\n";
    if (absl::Status w = WriteAll(s.socket.get(), line.data(), line.size()); !w.ok()) {
      return Annotate(w, absl::StrCat("cannot send the first stage to ", what));
    }
    counters.bytes_sent += static_cast<int64_t>(line.size());
  }
  MarkerScanner markers;
  std::string err_tail;
  const int64_t deadline_ms = absl::ToUnixMillis(deadline);
  const std::string* upload = nullptr;  // The compressed program, once the target asks for it.
  size_t uploaded = 0;                  // How much of it is sent.
  for (;;) {
    int64_t left = deadline_ms - absl::ToUnixMillis(absl::Now());
    if (left <= 0) {
      return absl::DeadlineExceededError(absl::StrCat(
          what, " did not start its agent before the deadline", QuoteTail(*tail + err_tail)));
    }
    struct pollfd fds[3] = {{s.socket.get(), POLLIN, 0},
                            {s.err.valid() ? s.err.get() : -1, POLLIN, 0},
                            {s.process.pidfd(), POLLIN, 0}};
    if (::poll(fds, 3, static_cast<int>(std::min<int64_t>(left, 1000))) < 0 && errno != EINTR) {
      return ErrnoStatus(errno, "poll");
    }
    if (fds[1].revents) {
      char buffer[4096];
      ssize_t n = ::read(s.err.get(), buffer, sizeof(buffer));
      if (n > 0) {
        size_t from = err_tail.size();
        err_tail.append(buffer, n);
        StderrVerdict verdict = judge(err_tail, from);
        if (!verdict.error.ok()) return verdict.error;
        if (!verdict.reply.empty()) {
          // A password: to the terminal when there is one (su), else to stdin (sudo -S).
          int to = s.terminal.valid() ? s.terminal.get() : s.socket.get();
          WriteAll(to, verdict.reply.data(), verdict.reply.size()).IgnoreError();
        }
        if (err_tail.size() > kTailBytes) err_tail.erase(0, err_tail.size() - kTailBytes);
      } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
        s.err.Reset();  // EOF, or EIO from a PTY nobody holds any more.
      }
    }
    if (fds[0].revents) {
      // One byte at a time, so that nothing after the boot marker (gRPC) is consumed here.
      char c;
      ssize_t n = ::recv(s.socket.get(), &c, 1, 0);
      if (n == 1) {
        AppendTail(tail, &c, 1);
        // What it printed is the first stage itself: it echoes its input, it is no shell.
        if (!script.empty() && absl::EndsWith(*tail, script.substr(0, kEchoProbe))) {
          return absl::FailedPreconditionError(absl::StrCat(
              what, " echoed the first stage back instead of running it: the command must end "
              "in a POSIX shell that reads its stdin (sh, bash, dash, busybox sh)"));
        }
        MarkerScanner::Event event = markers.Feed(c);
        if (event == MarkerScanner::Event::kBoot) {
          VLOG(1) << what << ": agent booted";
          tail->resize(tail->size() - kMarkerSize);
          return absl::OkStatus();
        }
        const bool asks = event == MarkerScanner::Event::kNeed ||
                          event == MarkerScanner::Event::kZstd;
        if (asks || event == MarkerScanner::Event::kMore) {
          tail->resize(tail->size() - kMarkerSize);
          const bool twice = asks && upload != nullptr;
          const bool too_much = !asks && (upload == nullptr || uploaded == upload->size());
          if (twice || too_much) {
            return absl::UnavailableError(absl::StrCat(
                what, twice ? " asked for the agent twice" : " asked for more of the agent than "
                "there is", QuoteTail(*tail + err_tail)));
          }
          std::string size_line;
          if (asks) {
            const bool zstd = event == MarkerScanner::Event::kZstd;
            VLOG(1) << what << ": asks for the agent (" << (zstd ? "zstd" : "gzip") << ")";
            absl::StatusOr<const std::string*> compressed =
                CompressedProgram(zstd ? Codec::kZstd : Codec::kGzip);
            if (!compressed.ok()) return compressed.status();
            upload = *compressed;
            size_line = absl::StrCat(upload->size(), "\n");
            counters.uploads += 1;
            if (zstd) counters.zstd_uploads += 1;
          }
          // The size line with the first piece, then one piece per request (see FirstStage).
          const size_t piece = std::min(kUploadChunk, upload->size() - uploaded);
          absl::Status w = WriteAll(s.socket.get(), size_line.data(), size_line.size());
          if (w.ok()) w = WriteAll(s.socket.get(), upload->data() + uploaded, piece);
          if (!w.ok()) return Annotate(w, absl::StrCat("cannot upload the agent to ", what));
          uploaded += piece;
          counters.bytes_sent += static_cast<int64_t>(size_line.size() + piece);
          if (uploaded == upload->size()) {
            VLOG(1) << what << ": uploaded " << upload->size() << " bytes";
          }
        }
        if (event == MarkerScanner::Event::kArch || event == MarkerScanner::Event::kFail) {
          return MarkerError(event, markers.detail(), what);
        }
        continue;
      }
      if (n == 0 && markers.in_detail()) {
        return MarkerError(markers.pending(), markers.detail(), what);  // No final newline.
      }
      if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
        // EOF: the command is ending. Report how, with what it printed.
        struct pollfd p = {s.process.pidfd(), POLLIN, 0};
        ::poll(&p, 1, 2000);
        while (s.err.valid()) {
          char buffer[4096];
          ssize_t m = ::read(s.err.get(), buffer, sizeof(buffer));
          if (m <= 0) break;
          err_tail.append(buffer, m);
        }
        StderrVerdict verdict = judge(err_tail, 0);
        if (!verdict.error.ok()) return verdict.error;
        std::optional<int> status = s.process.TryWait();
        return absl::UnavailableError(absl::StrCat(
            what, " ", status ? DescribeWaitStatus(*status) : "closed its output",
            " before its agent started", QuoteTail(*tail + err_tail)));
      }
    }
  }
}

// Launches `argv` and links up with the agent it ends up running.
absl::StatusOr<LaunchedChild> LaunchThrough(const std::vector<std::string>& argv,
                                            const std::vector<std::string>& env,
                                            const std::string& script_on_stdin,
                                            const StderrJudge& judge, const std::string& what,
                                            LaunchRequest request, bool with_terminal = false) {
  if (request.deadline == absl::InfiniteFuture()) {
    request.deadline = absl::Now() + kDefaultConnectTimeout;
  }
  absl::StatusOr<const Payload*> payload = ThisProgram();
  if (!payload.ok()) return payload.status();
  PrepareCompressedProgram();  // In case the target asks for it: meanwhile, ssh connects.
  absl::StatusOr<Started> started = StartCommand(argv, env, with_terminal);
  if (!started.ok()) {
    return Annotate(started.status(), absl::StrCat("cannot start ", argv[0], " for ", what));
  }
  std::string tail;
  absl::Status booted =
      Bootstrap(*started, **payload, script_on_stdin, judge, request.deadline, what, &tail);
  if (!booted.ok()) {
    // The connect failed: kill the command and reap it.
    started->process.Terminate(absl::ZeroDuration());
    return booted;
  }
  absl::StatusOr<LaunchedChild> child =
      LinkUp(std::move(started->socket), std::move(started->process), std::move(started->err),
             what, std::move(tail), request);
  if (child.ok() && started->terminal.valid()) {
    child->handle =
        std::make_unique<TerminalChild>(std::move(child->handle), std::move(started->terminal));
  }
  return child;
}

std::string ScriptFor(const Hop& hop, const LaunchRequest& request) {
  absl::StatusOr<const Payload*> payload = ThisProgram();
  if (!payload.ok()) return "";
  return FirstStage(**payload, hop.Get("cache_dir"), AgentArguments(request, -1));
}

absl::Status CheckOptions(const Hop& hop, std::initializer_list<absl::string_view> allowed) {
  for (const auto& [key, value] : hop.options) {
    bool ok = false;
    for (absl::string_view a : allowed) ok |= key == a;
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat("hop '", hop.DebugString(), "': unknown option '",
                                                     key, "' for ", hop.method));
    }
  }
  return absl::OkStatus();
}

// The password a hop gives (password=... or password_env=VAR), or "".
absl::StatusOr<std::string> PasswordOf(const Hop& hop) {
  if (hop.Has("password")) return hop.Get("password");
  if (hop.Has("password_env")) {
    const char* value = ::getenv(hop.Get("password_env").c_str());
    if (value == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          "hop '", hop.method, "': environment variable ", hop.Get("password_env"), " is not set"));
    }
    return std::string(value);
  }
  return std::string();
}

// A user name as sudo and su take it: no option look-alikes, no shell syntax.
absl::Status CheckUserName(const Hop& hop, const std::string& user) {
  bool ok = !user.empty() && user[0] != '-';
  for (char c : user) ok &= absl::ascii_isalnum(c) || c == '_' || c == '-' || c == '.' || c == '$';
  if (!ok) {
    return absl::InvalidArgumentError(
        absl::StrCat("hop '", hop.DebugString(), "': '", user, "' is not a user name"));
  }
  return absl::OkStatus();
}

std::string SelfPath() {
  char path[4096] = {0};
  ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
  return n > 0 ? std::string(path, n) : "/proc/self/exe";
}

}  // namespace

BootstrapCounters& GlobalBootstrapCounters() {
  static BootstrapCounters* counters = new BootstrapCounters();
  return *counters;
}

absl::StatusOr<LaunchedChild> CommandLauncher::Launch(const Hop& hop,
                                                      const LaunchRequest& request) {
  if (absl::Status s = CheckOptions(hop, {"name", "cache_dir"}); !s.ok()) return s;
  std::vector<std::string> argv = absl::StrSplit(hop.target, ' ', absl::SkipEmpty());
  if (argv.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("hop '", hop.DebugString(), "': command needs an argv (command:ARGV)"));
  }
  std::string what = absl::StrCat("command '", hop.target, "'");
  StderrJudge judge = [](const std::string&, size_t) { return StderrVerdict(); };
  return LaunchThrough(argv, {}, ScriptFor(hop, request), judge, what, request);
}

absl::StatusOr<LaunchedChild> SshLauncher::Launch(const Hop& hop, const LaunchRequest& request) {
  if (absl::Status s = CheckOptions(hop, {"name", "cache_dir", "identity", "ssh_option",
                                          "check_host_keys", "compression", "password",
                                          "password_env", "connect_timeout"});
      !s.ok()) {
    return s;
  }
  if (hop.target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("hop '", hop.DebugString(), "': ssh needs a host (ssh:[user@]host[:port])"));
  }
  absl::StatusOr<std::string> password = PasswordOf(hop);
  if (!password.ok()) return password.status();
  std::string host = hop.target, user, port;
  if (size_t at = host.rfind('@'); at != std::string::npos) {
    user = host.substr(0, at);
    host = host.substr(at + 1);
  }
  if (size_t colon = host.rfind(':'); colon != std::string::npos && host.find(']') == std::string::npos) {
    port = host.substr(colon + 1);
    host = host.substr(0, colon);
  }
  LaunchRequest req = request;
  int timeout_s = 30;
  if (hop.Has("connect_timeout") && !absl::SimpleAtoi(hop.Get("connect_timeout"), &timeout_s)) {
    return absl::InvalidArgumentError("ssh: connect_timeout must be a number of seconds");
  }
  req.deadline = std::min(request.deadline, absl::Now() + absl::Seconds(timeout_s));

  // ssh keeps the first value it is given for an option: the user's ssh_option=... come
  // first, so they override the defaults below.
  std::vector<std::string> argv = {"ssh", "-T"};
  for (const auto& [key, value] : hop.options) {
    if (key == "ssh_option") argv.insert(argv.end(), {"-o", value});
  }
  argv.insert(argv.end(), {"-o", absl::StrCat("ConnectTimeout=", timeout_s), "-o",
                           "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"});
  std::vector<std::string> env;
  if (password->empty()) {
    argv.insert(argv.end(), {"-o", "BatchMode=yes"});
  } else {
    // The password reaches ssh through SSH_ASKPASS (this program, in askpass mode): never a
    // PTY, never argv.
    argv.insert(argv.end(), {"-o", "BatchMode=no", "-o", "NumberOfPasswordPrompts=1",
                             "-o", "PreferredAuthentications=password,keyboard-interactive"});
    env = {absl::StrCat("SSH_ASKPASS=", SelfPath()), "SSH_ASKPASS_REQUIRE=force",
           "DISPLAY=grove", absl::StrCat("GROVE_ASKPASS_PASSWORD=", *password)};
  }
  if (!port.empty()) argv.insert(argv.end(), {"-p", port});
  if (!user.empty()) argv.insert(argv.end(), {"-l", user});
  if (hop.Has("identity")) argv.insert(argv.end(), {"-i", hop.Get("identity"), "-o", "IdentitiesOnly=yes"});
  std::string check = hop.Has("check_host_keys") ? hop.Get("check_host_keys") : "yes";
  if (check == "yes") {
    argv.insert(argv.end(), {"-o", "StrictHostKeyChecking=yes"});
  } else if (check == "accept") {
    argv.insert(argv.end(), {"-o", "StrictHostKeyChecking=accept-new"});
  } else if (check == "no") {
    argv.insert(argv.end(), {"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                             "-o", "LogLevel=ERROR"});
  } else {
    return absl::InvalidArgumentError("ssh: check_host_keys must be yes, no or accept");
  }
  if (hop.Has("compression")) {
    const std::string& c = hop.Get("compression");
    if (c != "yes" && c != "no") {
      return absl::InvalidArgumentError("ssh: compression must be yes or no");
    }
    argv.insert(argv.end(), {"-o", absl::StrCat("Compression=", c)});
  }
  argv.push_back(host);
  argv.push_back(absl::StrCat("exec sh -c ", ShellQuote(ScriptFor(hop, req))));
  GlobalBootstrapCounters().bytes_sent += static_cast<int64_t>(argv.back().size());

  const std::string what = absl::StrCat("ssh ", hop.target);
  const bool has_password = !password->empty();
  StderrJudge judge = [what, has_password](const std::string& err, size_t) -> StderrVerdict {
    auto has = [&err](absl::string_view s) { return absl::StrContains(err, s); };
    // ssh ends its lines with "\r\n" on some paths: one line ending, none at the end.
    const std::string text = absl::StrReplaceAll(
        absl::StripTrailingAsciiWhitespace(err), {{"\r\n", "\n"}, {"\r", ""}});
    StderrVerdict v;
    if (has("Could not resolve hostname") || has("No route to host") ||
        has("Connection refused") || has("Network is unreachable")) {
      v.error = absl::UnavailableError(absl::StrCat(what, ": host unreachable: ", text));
    } else if (has("REMOTE HOST IDENTIFICATION HAS CHANGED")) {
      v.error = absl::FailedPreconditionError(absl::StrCat(what, ": host key changed: ", text));
    } else if (has("Host key verification failed") || (has("No ") && has("host key is known"))) {
      v.error = absl::FailedPreconditionError(absl::StrCat(what, ": host key unknown: ", text));
    } else if (has("Permission denied")) {
      v.error = has_password
                    ? absl::PermissionDeniedError(absl::StrCat(what, ": password wrong: ", text))
                    : absl::PermissionDeniedError(
                          absl::StrCat(what, ": authentication refused: ", text));
    } else if (has("Connection timed out") || has("timed out during banner")) {
      v.error = absl::DeadlineExceededError(absl::StrCat(what, ": connect timed out: ", text));
    } else if (has("sh: not found") || has("sh: No such file")) {
      v.error = absl::FailedPreconditionError(absl::StrCat(what, ": remote shell missing: ", text));
    }
    return v;
  };
  return LaunchThrough(argv, env, "", judge, what, req);
}

absl::StatusOr<LaunchedChild> SudoLauncher::Launch(const Hop& hop, const LaunchRequest& request) {
  if (absl::Status s = CheckOptions(hop, {"name", "cache_dir", "password", "password_env"});
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> password = PasswordOf(hop);
  if (!password.ok()) return password.status();
  const std::string user = hop.target.empty() ? "root" : hop.target;
  if (absl::Status s = CheckUserName(hop, user); !s.ok()) return s;
  // A prompt nothing else prints, so the password is written exactly when sudo asks for it.
  const std::string prompt =
      absl::StrFormat("grove-sudo-%016x-password:", absl::Uniform<uint64_t>(absl::BitGen()));
  std::vector<std::string> argv = {"sudo", "-S", "-p", prompt, "-u", user, "-H", "--",
                                   "sh", "-c", ScriptFor(hop, request)};
  const std::string what = absl::StrCat("sudo to ", user);
  auto prompts = std::make_shared<int>(0);
  std::string secret = *password;
  StderrJudge judge = [what, prompt, prompts, secret](const std::string& err,
                                                      size_t from) -> StderrVerdict {
    auto has = [&err](absl::string_view s) { return absl::StrContains(err, s); };
    StderrVerdict v;
    if (has("unknown user") || has("unknown login")) {
      v.error = absl::NotFoundError(absl::StrCat(what, ": user unknown"));
    } else if (has("is not in the sudoers file") || has("is not allowed to") ||
               has("not allowed to execute")) {
      v.error = absl::PermissionDeniedError(absl::StrCat(what, ": not allowed"));
    } else if (has("incorrect password attempt") || has("Sorry, try again")) {
      v.error = absl::PermissionDeniedError(absl::StrCat(what, ": password incorrect"));
    } else if (err.find(prompt, from >= prompt.size() ? from - prompt.size() : 0) !=
               std::string::npos) {
      if (secret.empty()) {
        v.error = absl::UnauthenticatedError(absl::StrCat(what, ": password required"));
      } else if (++*prompts > 1) {
        v.error = absl::PermissionDeniedError(absl::StrCat(what, ": password incorrect"));
      } else {
        v.reply = secret + "\n";
      }
    } else if (has("a password is required")) {
      v.error = absl::UnauthenticatedError(absl::StrCat(what, ": password required"));
    }
    return v;
  };
  return LaunchThrough(argv, {}, "", judge, what, request);
}

absl::StatusOr<LaunchedChild> SuLauncher::Launch(const Hop& hop, const LaunchRequest& request) {
  if (absl::Status s = CheckOptions(hop, {"name", "cache_dir", "password", "password_env"});
      !s.ok()) {
    return s;
  }
  absl::StatusOr<std::string> password = PasswordOf(hop);
  if (!password.ok()) return password.status();
  const std::string user = hop.target.empty() ? "root" : hop.target;
  if (absl::Status s = CheckUserName(hop, user); !s.ok()) return s;
  // su reads the password from its terminal, so it runs on a PTY (stdin and stderr); its
  // stdout is the link, and the command moves stdin there too before the first stage runs.
  // -s /bin/sh: accounts such as nobody have no login shell (su honours -s only for root
  // or for users whose shell is a standard one).
  std::vector<std::string> argv = {"su", "-s", "/bin/sh", "-c",
                                   "exec 0<&1;" + ScriptFor(hop, request), user};
  const std::string what = absl::StrCat("su to ", user);
  auto prompts = std::make_shared<int>(0);
  std::string secret = *password;
  StderrJudge judge = [what, prompts, secret](const std::string& err,
                                              size_t from) -> StderrVerdict {
    auto has = [&err](absl::string_view s) { return absl::StrContains(err, s); };
    StderrVerdict v;
    const std::string fresh = absl::AsciiStrToLower(absl::string_view(err).substr(from));
    if (has("does not exist") || has("nknown user") || has("nknown login")) {
      v.error = absl::NotFoundError(absl::StrCat(what, ": user unknown"));
    } else if (has("Authentication failure") || has("ncorrect password") ||
               has("Sorry")) {
      v.error = absl::PermissionDeniedError(absl::StrCat(what, ": password incorrect"));
    } else if (has("Permission denied") || has("not allowed") || has("must be run from")) {
      v.error = absl::PermissionDeniedError(absl::StrCat(what, ": not allowed: ", err));
    } else if (absl::StrContains(fresh, "password") && absl::StrContains(fresh, ":")) {
      // PAM's prompt ("Password: ", localised) on the terminal.
      if (secret.empty()) {
        v.error = absl::UnauthenticatedError(absl::StrCat(what, ": password required"));
      } else if (++*prompts > 1) {
        v.error = absl::PermissionDeniedError(absl::StrCat(what, ": password incorrect"));
      } else {
        v.reply = secret + "\n";
      }
    }
    return v;
  };
  return LaunchThrough(argv, {}, "", judge, what, request, /*with_terminal=*/true);
}

}  // namespace grove
