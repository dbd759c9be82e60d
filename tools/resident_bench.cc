// grove bench's resident-master rows: a resident master of its own (in a private runtime
// directory), measured from outside as users reach it.
//   attached_run_ms        `grove run PATH -- true` against it, the whole CLI process, median
//                          of 20 (PATH: local, or the --ssh hop, kept warm)
//   ssh_controlmaster_true_ms
//                          with --ssh: `ssh host true` through a warm OpenSSH ControlMaster
//   attached_call_rtt_us   a function of the resident program called through the control
//                          socket by this process (C++ client), median of 2000
//   supervised_restart_ms  SIGKILL of a supervised local context (backoff 0) until the
//                          registry has it again (the ADDED event of the watch), median of 10
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/fd.h"
#include "common/process.h"
#include "google/protobuf/wrappers.pb.h"
#include "link/hop.h"
#include "proto/control.grpc.pb.h"
#include "resident/attach.h"
#include "tools/cli.h"
#include "tools/floors.h"

extern char** environ;

namespace grove::cli {
namespace {

double MsSince(absl::Time t) { return absl::ToDoubleMilliseconds(absl::Now() - t); }

// `ssh ... true` through the hop's host with OpenSSH's connection sharing, median of 20 with
// the master connection warm; -1 when ssh fails.
double SshControlMasterMs(const Hop& hop, const std::string& dir) {
  const std::vector<std::string> base =
      SshArgv(hop, {"-o", "ControlMaster=auto", "-o", "ControlPath=" + dir + "/cm", "-o",
                    "ControlPersist=60"});
  auto run = [&](std::vector<std::string> tail) {
    SpawnOptions spawn;
    spawn.argv = base;
    spawn.argv.insert(spawn.argv.end(), tail.begin(), tail.end());
    absl::StatusOr<Process> p = Process::Spawn(spawn);
    if (!p.ok()) return false;
    absl::StatusOr<int> status = p->Wait(absl::Now() + absl::Seconds(30));
    return status.ok() && ExitCodeOf(*status) == 0;
  };
  if (!run({"true"})) return -1;  // Starts the master connection.
  std::vector<double> ms;
  for (int i = 0; i < 20; ++i) {
    absl::Time t = absl::Now();
    if (!run({"true"})) return -1;
    ms.push_back(MsSince(t));
  }
  // Stops the master connection (-q: no "Exit request sent.").
  SpawnOptions stop;
  stop.argv = SshArgv(hop, {"-q", "-o", "ControlPath=" + dir + "/cm", "-O", "exit"});
  if (absl::StatusOr<Process> p = Process::Spawn(stop); p.ok()) {
    p->Wait(absl::Now() + absl::Seconds(30)).IgnoreError();
  }
  return Percentile(ms, 0.5);
}

}  // namespace

int RunSelfIn(const std::string& dir, std::vector<std::string> args, int out_fd) {
  SpawnOptions spawn;
  spawn.argv = {"/proc/self/exe"};
  spawn.argv.insert(spawn.argv.end(), args.begin(), args.end());
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (strncmp(*e, "GROVE_RUNTIME_DIR=", 18) != 0 && strncmp(*e, "GROVE_SOCKET=", 13) != 0) {
      env.push_back(*e);
    }
  }
  env.push_back("GROVE_RUNTIME_DIR=" + dir);
  spawn.env = env;
  if (out_fd >= 0) spawn.fds = {{1, out_fd}};
  absl::StatusOr<Process> p = Process::Spawn(spawn);
  if (!p.ok()) return -1;
  absl::StatusOr<int> status = p->Wait(absl::Now() + absl::Seconds(120));
  return status.ok() ? ExitCodeOf(*status) : -1;
}

int BenchResident(bool json, const std::function<bool(const std::string&)>& wants,
                  const std::string& ssh_hop) {
  const bool any = wants("attached_run_ms") || wants("attached_call_rtt_us") ||
                   wants("supervised_restart_ms") || wants("ssh_controlmaster_true_ms");
  if (!any) return 0;
  char tmpl[] = "/tmp/grove-bench-resident.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return 1;
  const std::string dir = tmpl;
  const std::string run_dir = dir + "/run";
  auto emit = [json](const std::string& metric, double value, const char* unit) {
    PrintFigure(json, "grove", metric, value, unit, BenchReference(metric));
  };
  const UniqueFd null(open("/dev/null", O_WRONLY | O_CLOEXEC));
  int status = RunSelfIn(run_dir, {"up"}, null.get());
  absl::StatusOr<std::unique_ptr<AttachedTree>> tree =
      status == 0 ? Attach(run_dir + "/control.sock")
                  : absl::StatusOr<std::unique_ptr<AttachedTree>>(absl::UnavailableError("up"));
  if (!tree.ok()) {
    fprintf(stderr, "grove bench: cannot start a resident master (grove up: %d)\n", status);
    std::filesystem::remove_all(dir);
    return 1;
  }
  v1::Control::Stub* stub = &(*tree)->stub();
  int failed = 0;

  if (wants("attached_run_ms")) {
    std::string path = "local,name=bench-run";
    if (!ssh_hop.empty()) path = absl::StrCat(ssh_hop, ",cache_dir=", dir, "/cache");
    if (RunSelfIn(run_dir, {"run", path, "--", "true"}, null.get()) != 0) ++failed;  // Starts it.
    std::vector<double> ms;
    for (int i = 0; i < 20 && failed == 0; ++i) {
      absl::Time t = absl::Now();
      if (RunSelfIn(run_dir, {"run", path, "--", "true"}, null.get()) != 0) ++failed;
      ms.push_back(MsSince(t));
    }
    if (failed == 0) {
      emit("attached_run_ms", Percentile(ms, 0.5), "ms");
    }
    if (!ssh_hop.empty() && wants("ssh_controlmaster_true_ms")) {
      absl::StatusOr<Hop> hop = ParseHop(ssh_hop);
      double cm = hop.ok() ? SshControlMasterMs(*hop, dir) : -1;
      if (cm > 0) emit("ssh_controlmaster_true_ms", cm, "ms");
    }
  }

  if (wants("attached_call_rtt_us")) {
    std::vector<double> us;
    for (int i = 0; i < 2100; ++i) {
      absl::Time t = absl::Now();
      if (!(*tree)->Call<google::protobuf::Int64Value>("local,name=bench-call", "bench.sink",
                                                       google::protobuf::BytesValue())
               .ok()) {
        ++failed;
        break;
      }
      if (i >= 100) us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t));  // Warm first.
    }
    if (!us.empty()) emit("attached_call_rtt_us", Percentile(us, 0.5), "us");
  }

  if (wants("supervised_restart_ms")) {
    v1::ReloadRequest reload;
    v1::SupervisedContext* c = reload.mutable_spec()->add_context();
    c->set_path("local,name=bench-sup");
    c->mutable_backoff()->set_initial_ms(0);
    c->mutable_limit()->set_restarts(0);
    grpc::ClientContext reload_context;
    v1::ReloadReply reloaded;
    if (!stub->Reload(&reload_context, reload, &reloaded).ok()) ++failed;
    grpc::ClientContext watch_context;
    auto watch = stub->WatchContexts(&watch_context, v1::WatchContextsRequest());
    v1::ContextEvent event;
    int64_t pid = 0;
    // The snapshot names it.
    while (failed == 0 && pid == 0 && watch->Read(&event)) {
      if (event.context().name() == "bench-sup") pid = event.context().pid();
    }
    std::vector<double> ms;
    for (int i = 0; i < 10 && pid > 0; ++i) {
      absl::Time t = absl::Now();
      kill(static_cast<pid_t>(pid), SIGKILL);
      pid = 0;
      while (watch->Read(&event)) {
        if (event.kind() == v1::ContextEvent::ADDED && event.context().name() == "bench-sup") {
          pid = event.context().pid();
          break;
        }
      }
      if (pid > 0) ms.push_back(MsSince(t));
    }
    watch_context.TryCancel();
    while (watch->Read(&event)) {
    }
    watch->Finish();
    if (ms.size() == 10) {
      emit("supervised_restart_ms", Percentile(ms, 0.5), "ms");
    } else {
      ++failed;
    }
  }

  tree->reset();
  if (RunSelfIn(run_dir, {"down"}, null.get()) != 0) ++failed;
  std::filesystem::remove_all(dir);
  if (failed != 0) fprintf(stderr, "grove bench: %d resident measurements failed\n", failed);
  return failed == 0 ? 0 : 1;
}

}  // namespace grove::cli
