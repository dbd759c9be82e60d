// The functions every context's router offers: ping, info, run, spawn, stop, sleep, and (in
// the master) id blocks. Files and the mesh add theirs as components (files/service.cc,
// mesh/mesh.cc).
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/fd.h"
#include "common/process.h"
#include "common/status_util.h"
#include "proto/builtins.pb.h"
#include "router/router.h"

extern char** environ;

namespace grove {
namespace {

template <typename In, typename Out, typename F>
Function MakeBuiltin(const std::string& name, FunctionOptions options, F fn) {
  return Functions::MakeFunction<In, Out>(name, std::move(fn), options);
}

// The environment for a command: ours (unless cleared) with `request.env` applied.
std::vector<std::string> CommandEnvironment(const v1::RunRequest& request) {
  std::vector<std::string> env;
  if (!request.clear_env()) {
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
  }
  for (const std::string& kv : request.env()) {
    std::string key = kv.substr(0, kv.find('='));
    env.erase(std::remove_if(env.begin(), env.end(),
                             [&](const std::string& e) {
                               return e.size() > key.size() && e[key.size()] == '=' &&
                                      e.compare(0, key.size(), key) == 0;
                             }),
              env.end());
    env.push_back(kv);
  }
  return env;
}

// Runs a command to completion: feeds stdin, collects or streams its output, kills it when
// the call is cancelled (or its deadline passes).
absl::StatusOr<v1::RunReply> RunCommand(const v1::RunRequest& request, CallContext& call) {
  if (request.argv().empty()) return absl::InvalidArgumentError("run: empty argv");
  const bool inherit = request.output() == v1::RunRequest::INHERIT;
  auto in = Pipe();
  auto out = Pipe();
  auto err = Pipe();
  if (!in.ok()) return in.status();
  if (!out.ok()) return out.status();
  if (!err.ok()) return err.status();
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return ErrnoStatus(errno, "eventfd");

  SpawnOptions options;
  options.argv.assign(request.argv().begin(), request.argv().end());
  options.env = CommandEnvironment(request);
  options.cwd = request.cwd();
  options.fds.emplace_back(0, in->first.get());
  if (!inherit) {
    options.fds.emplace_back(1, out->second.get());
    options.fds.emplace_back(2, err->second.get());
  }
  absl::StatusOr<Process> process = Process::Spawn(options);
  if (!process.ok()) {
    return Annotate(process.status(), absl::StrCat("run in ", call.router().name()));
  }
  in->first.Reset();
  out->second.Reset();
  err->second.Reset();
  if (inherit) {
    out->first.Reset();
    err->first.Reset();
  }
  uint64_t cancel_id = call.cancel_source().AddCallback([fd = wake.get()] {
    uint64_t one = 1;
    (void)!::write(fd, &one, sizeof(one));
  });

  SetNonBlocking(in->second.get(), true).IgnoreError();
  v1::RunReply reply;
  size_t stdin_offset = 0;
  if (request.stdin().empty()) in->second.Reset();
  bool killed = false;
  char buffer[65536];
  for (;;) {
    struct pollfd fds[4];
    int n = 0;
    int in_i = -1, out_i = -1, err_i = -1;
    if (in->second.valid()) {
      in_i = n;
      fds[n++] = {in->second.get(), POLLOUT, 0};
    }
    if (out->first.valid()) {
      out_i = n;
      fds[n++] = {out->first.get(), POLLIN, 0};
    }
    if (err->first.valid()) {
      err_i = n;
      fds[n++] = {err->first.get(), POLLIN, 0};
    }
    int wake_i = n;
    fds[n++] = {killed ? process->pidfd() : wake.get(), POLLIN, 0};
    if (n == 1 && !killed) {
      // No pipes left: wait for the exit (or a cancel).
      fds[n++] = {process->pidfd(), POLLIN, 0};
    }
    if (::poll(fds, n, -1) < 0 && errno != EINTR) return ErrnoStatus(errno, "poll");
    if (!killed && (fds[wake_i].revents & POLLIN)) {
      process->Signal(SIGKILL);
      killed = true;
      in->second.Reset();
    }
    if (in_i >= 0 && fds[in_i].revents) {
      const std::string& data = request.stdin();
      ssize_t w = ::write(in->second.get(), data.data() + stdin_offset,
                          data.size() - stdin_offset);
      if (w > 0) stdin_offset += static_cast<size_t>(w);
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || stdin_offset == data.size()) {
        in->second.Reset();
      }
    }
    for (int i : {out_i, err_i}) {
      if (i < 0 || !fds[i].revents) continue;
      UniqueFd& fd = i == out_i ? out->first : err->first;
      ssize_t r = ::read(fd.get(), buffer, sizeof(buffer));
      if (r > 0) {
        std::string chunk(buffer, static_cast<size_t>(r));
        int stream = i == out_i ? 1 : 2;
        if (request.output() == v1::RunRequest::STREAM) {
          call.Output(stream, std::move(chunk));
        } else {
          (stream == 1 ? reply.mutable_stdout() : reply.mutable_stderr())->append(chunk);
        }
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        fd.Reset();
      }
    }
    if (!out->first.valid() && !err->first.valid() && process->TryWait()) break;
    if (killed && process->TryWait()) break;
  }
  call.cancel_source().RemoveCallback(cancel_id);
  int status = *process->status();
  if (killed) {
    return absl::CancelledError(absl::StrCat("run: '", request.argv(0), "' in ",
                                             call.router().name(), " killed: call cancelled"));
  }
  reply.set_exit_status(ExitCodeOf(status));
  if (WIFSIGNALED(status)) reply.set_signal(WTERMSIG(status));
  return reply;
}

}  // namespace

void Router::RegisterBuiltins() {
  const absl::Time started = absl::Now();
  FunctionOptions any_inline{CallableBy::kAny, /*run_inline=*/true};
  builtins_.Add(MakeBuiltin<v1::Empty, v1::Empty>(
      "grove.ping", any_inline,
      [](const v1::Empty&, CallContext&) -> absl::StatusOr<v1::Empty> { return v1::Empty(); }));
  builtins_.Add(MakeBuiltin<v1::Empty, v1::InfoReply>(
      "grove.info", {CallableBy::kAncestors, true},
      [this, started](const v1::Empty&, CallContext&) -> absl::StatusOr<v1::InfoReply> {
        v1::InfoReply reply;
        reply.set_id(self_.id());
        reply.set_name(self_.name());
        reply.set_parent(self_.parent());
        reply.set_method(self_.method());
        reply.set_host(self_.host());
        reply.set_pid(::getpid());
        reply.set_user(CurrentUserName());
        reply.set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - started));
        return reply;
      }));
  builtins_.Add(MakeBuiltin<v1::RunRequest, v1::RunReply>("grove.run", {}, RunCommand));
  builtins_.Add(MakeBuiltin<v1::SpawnRequest, v1::SpawnReply>(
      "grove.spawn", {},
      [this](const v1::SpawnRequest& request,
             CallContext& call) -> absl::StatusOr<v1::SpawnReply> {
        absl::StatusOr<Hop> hop = ParseHop(request.hop());
        if (!hop.ok()) return hop.status();
        absl::StatusOr<v1::ContextInfo> info = SpawnChild(*hop, call.deadline());
        if (!info.ok()) return info.status();
        v1::SpawnReply reply;
        *reply.mutable_info() = *info;
        return reply;
      }));
  builtins_.Add(MakeBuiltin<v1::StopRequest, v1::Empty>(
      "grove.stop", {},
      [this](const v1::StopRequest& request, CallContext&) -> absl::StatusOr<v1::Empty> {
        absl::Status status = StopChild(ContextId(request.id()));
        if (!status.ok()) return status;
        return v1::Empty();
      }));
  builtins_.Add(MakeBuiltin<v1::SleepRequest, v1::Empty>(
      "grove.sleep", {CallableBy::kAny, false},
      [](const v1::SleepRequest& request, CallContext& call) -> absl::StatusOr<v1::Empty> {
        absl::Notification cancelled;
        uint64_t id = call.cancel_source().AddCallback([&cancelled] { cancelled.Notify(); });
        bool was_cancelled =
            cancelled.WaitForNotificationWithTimeout(absl::Milliseconds(request.ms()));
        if (id) call.cancel_source().RemoveCallback(id);
        if (was_cancelled) return absl::CancelledError("sleep cancelled");
        return v1::Empty();
      }));
  builtins_.Add(MakeBuiltin<v1::IdBlockRequest, v1::IdBlockReply>(
      "grove.id_block", {CallableBy::kDescendants, true},
      [this](const v1::IdBlockRequest& request,
             CallContext& call) -> absl::StatusOr<v1::IdBlockReply> {
        if (!is_master()) {
          return absl::FailedPreconditionError("only the master hands out context ids");
        }
        uint32_t count = std::clamp<uint32_t>(request.count(), 1, 100000);
        return GrantIdBlock(call.caller().value(), count);
      }));
}

}  // namespace grove
