#include "router/run_command.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/fd.h"
#include "common/process.h"
#include "common/status_util.h"
#include "router/router.h"

extern char** environ;

namespace grove {

RunningCommands& RunningCommands::Get() {
  static RunningCommands* commands = new RunningCommands();
  return *commands;
}

void RunningCommands::Add(pid_t pgid) {
  absl::MutexLock lock(&mu_);
  groups_.insert(pgid);
}

void RunningCommands::Remove(pid_t pgid) {
  absl::MutexLock lock(&mu_);
  groups_.erase(pgid);
}

size_t RunningCommands::size() const {
  absl::MutexLock lock(&mu_);
  return groups_.size();
}

void RunningCommands::KillAll(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  for (pid_t pgid : groups_) ::kill(-pgid, SIGKILL);
  auto none = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return groups_.empty(); };
  mu_.AwaitWithTimeout(absl::Condition(&none), timeout);
}

void KillRunningCommands(absl::Duration timeout) { RunningCommands::Get().KillAll(timeout); }

namespace {

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

}  // namespace

// Runs a command to completion: feeds stdin, collects or streams its output, kills its group
// when the call is cancelled (or its deadline passes).
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
  // Its own process group, killed as a whole; and dead with this context however it ends.
  options.new_process_group = true;
  options.kill_with_parent = true;
  options.fds.emplace_back(0, in->first.get());
  if (!inherit) {
    options.fds.emplace_back(1, out->second.get());
    options.fds.emplace_back(2, err->second.get());
  }
  absl::StatusOr<Process> process = Process::Spawn(options);
  if (!process.ok()) {
    return Annotate(process.status(), absl::StrCat("run in ", call.router().name()));
  }
  RunningCommands::Get().Add(process->pid());
  // No longer counted once its group is gone (`command` below is destroyed first).
  struct Forget {
    pid_t pgid;
    ~Forget() { RunningCommands::Get().Remove(pgid); }
  } forget{process->pid()};
  // Destroyed before `forget`: the group is killed first (Process's destructor).
  Process command = *std::move(process);
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
    fds[n++] = {killed ? command.pidfd() : wake.get(), POLLIN, 0};
    if (n == 1 && !killed) {
      // No pipes left: wait for the exit (or a cancel).
      fds[n++] = {command.pidfd(), POLLIN, 0};
    }
    if (::poll(fds, n, -1) < 0 && errno != EINTR) return ErrnoStatus(errno, "poll");
    if (!killed && (fds[wake_i].revents & POLLIN)) {
      command.SignalGroup(SIGKILL);
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
    if (!out->first.valid() && !err->first.valid() && command.TryWait()) break;
    if (killed && command.TryWait()) break;
  }
  call.cancel_source().RemoveCallback(cancel_id);
  int status = *command.status();
  if (killed) {
    return absl::CancelledError(absl::StrCat("run: '", request.argv(0), "' in ",
                                             call.router().name(), " killed: call cancelled"));
  }
  reply.set_exit_status(ExitCodeOf(status));
  if (WIFSIGNALED(status)) reply.set_signal(WTERMSIG(status));
  return reply;
}


}  // namespace grove
