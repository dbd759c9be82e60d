// grove bench: the figures in the README, measured on local contexts.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "google/protobuf/wrappers.pb.h"
#include "common/process.h"
#include "launch/remote_launcher.h"
#include "files/files.h"
#include "tools/cli.h"
#include "tools/floors.h"

namespace grove::cli {
// What a metric is held against, for the plain output: grove's target, the Python peers'
// figures on this machine (mitogen, execnet: measured with their own benchmarks, see
// docs/benchmarks.md), or what kind of floor it is.
const char* BenchReference(const std::string& metric) {
  static const auto* references = new std::map<std::string, const char*>{
      {"rtt_us", "target <= 60; mitogen 173, execnet 135"},
      {"calls_per_s_concurrent", "target >= 300000; mitogen 36700, execnet 57800"},
      {"spawn_local_ms", "target <= 5; mitogen 99, execnet 30"},
      {"spawn_fork_ms", "target <= 2"},
      {"fanout_32_ms", "target <= 100; mitogen 3100, execnet 1100"},
      {"nested_depth4_rtt_us", "target <= 250; mitogen 436, execnet 389"},
      {"transfer_100MiB_MBps", "target >= 1500; mitogen 123, execnet 466"},
      {"child_killed_detect_ms", "target <= 1.5"},
      {"rss_per_child_kib", "target <= 8000; mitogen 19600, execnet 13800"},
      {"ssh_first_contact_ms", "target <= ssh_true_ms + 300"},
      {"ssh_bootstrap_ms", "target <= ssh_true_ms + 30"},
      {"socketpair_rtt_us", "floor: the kernel's round trip"},
      {"grpc_stream_rtt_us", "floor: raw gRPC, a blocking stream"},
      {"grpc_callback_rtt_us", "floor: raw gRPC, callbacks only"},
      {"attached_run_ms", "target <= 5 and <= ssh_controlmaster_true_ms / 2"},
      {"ssh_controlmaster_true_ms", "OpenSSH connection sharing, warm"},
      {"attached_call_rtt_us", "target <= 100"},
      {"supervised_restart_ms", "target <= 20"},
      {"mesh_unary_us", "a generated stub on ChannelTo, one hop"},
      {"mesh_unary_3hops_us", "the same, three hops"},
      {"mesh_stream_3hops_MBps", "64 KiB messages, three hops"},
      {"direct_unary_p50_us", "a plain gRPC server on loopback TCP, this run"},
      {"ingress_unary_p50_us", "target <= 1.3 x direct_unary_p50_us"},
      {"ingress_calls_per_s", "target >= 30000 (64 in flight)"},
      {"ingress_stream_MBps", "target >= 500"},
  };
  auto it = references->find(metric);
  return it == references->end() ? "" : it->second;
}

namespace {

// Every metric grove bench measures (without --scale), in the order it measures them: what
// --only may name and --list prints.
constexpr const char* kMetrics[] = {
    "rss_per_child_kib", "rss_per_child_file_kib", "rtt_us", "rtt_p99_us",
    "calls_per_s_concurrent", "socketpair_rtt_us", "grpc_stream_rtt_us", "grpc_callback_rtt_us",
    "spawn_local_ms", "spawn_fork_ms", "fanout_32_ms", "nested_depth4_rtt_us",
    "transfer_100MiB_MBps", "transfer_fanout_8x100MiB_s", "transfer_streamed_100MiB_MBps",
    "transfer_streamed_fanout_8x100MiB_s", "pull_100MiB_MBps", "ping_during_transfer_p99_ms",
    "transfer_calls_100MiB_MBps", "ssh_true_ms", "ssh_first_contact_ms",
    "ssh_first_contact_bytes", "ssh_bootstrap_ms", "ssh_cached_contact_bytes",
    "child_killed_detect_ms", "mesh_unary_us", "mesh_unary_3hops_us", "mesh_stream_3hops_MBps",
    "attached_run_ms", "ssh_controlmaster_true_ms", "attached_call_rtt_us",
    "supervised_restart_ms", "direct_unary_p50_us",
    "ingress_unary_p50_us", "ingress_calls_per_s", "ingress_stream_MBps",
};

bool KnownMetric(absl::string_view name) {
  for (const char* m : kMetrics) {
    if (name == m) return true;
  }
  return false;
}

struct Emitter {
  bool json = false;
  std::set<std::string> only;
  bool Wants(const std::string& metric) const { return only.empty() || only.count(metric); }
  void Emit(const std::string& metric, double value, const std::string& unit) const {
    PrintFigure(json, "grove", metric, value, unit, BenchReference(metric));
  }
};

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// The number after `key` on the line of `file` that starts with it ("/proc/PID/status",
// "VmRSS:"), or -1.
int64_t ProcField(const std::string& file, const char* key) {
  std::ifstream in(file);
  std::string line;
  const size_t n = strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, n, key) == 0) return std::atoll(line.c_str() + n);
  }
  return -1;
}

// VmRSS, or one of its parts (RssAnon: heap, stacks, written data; RssFile: the program's
// pages mapped from its file).
int64_t RssKib(int64_t pid, const char* field = "VmRSS:") {
  return ProcField(absl::StrCat("/proc/", pid, "/status"), field);
}

// Round trips of `calls` pings after a warm-up.
std::vector<double> PingTimes(const Context& c, int calls) {
  return RoundTripTimesUs(calls, [&c] { return c.Ping().ok(); });
}

// Keeps `in_flight` pings outstanding for `duration`; returns completions per second.
double Throughput(const Context& c, int in_flight, absl::Duration duration) {
  std::atomic<int64_t> completed{0};
  std::atomic<bool> stop{false};
  std::atomic<int> outstanding{0};
  absl::Notification drained;
  std::function<void()> issue;
  const std::string type = v1::Empty::descriptor()->full_name();
  issue = [&] {
    outstanding.fetch_add(1);
    c.CallRaw("grove.ping", type, "", {}, [&](absl::StatusOr<std::string> r) {
      if (r.ok()) completed.fetch_add(1, std::memory_order_relaxed);
      if (!stop.load() && r.ok()) issue();
      if (outstanding.fetch_sub(1) == 1 && stop.load()) drained.Notify();
    });
  };
  for (int i = 0; i < 2000; ++i) c.Ping().IgnoreError();  // Warm-up.
  absl::Time start = absl::Now();
  int64_t base = completed.load();
  for (int i = 0; i < in_flight; ++i) issue();
  absl::SleepFor(duration);  // The measurement window itself.
  int64_t done = completed.load() - base;
  absl::Duration elapsed = absl::Now() - start;
  stop.store(true);
  if (outstanding.load() > 0) drained.WaitForNotificationWithTimeout(absl::Seconds(10));
  return static_cast<double>(done) / absl::ToDoubleSeconds(elapsed);
}

// grove push of a 100 MiB file to one local child (MB/s), and to eight (seconds): as users
// get it (the children are on this host: kernel copies), and streamed as it would be to
// another host (chunked calls over the links, SHA-256 at both ends, temp + rename); and a
// pull of it from a local child.
int FileTransfers(Master& master, const Emitter& out) {
  char tmpl[] = "/tmp/grove-bench-files.XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) return (perror("grove bench: mkdtemp"), 1);
  const std::string dir = tmpl;
  const std::string src = dir + "/src";
  {
    std::string block(1 << 20, '\0');
    for (size_t i = 0; i < block.size(); ++i) block[i] = static_cast<char>((i * 2654435761u) >> 13);
    std::ofstream f(src, std::ios::binary);
    for (int i = 0; i < 100; ++i) f.write(block.data(), static_cast<std::streamsize>(block.size()));
    if (!f.good()) return (fprintf(stderr, "grove bench: cannot write %s\n", src.c_str()), 1);
  }
  // Pings the first child during the push when `ping_ms` is set: how long a small call
  // waits behind the file's chunks on the same link.
  auto push = [&](int children, bool kernel_copy, double* seconds,
                  std::vector<double>* ping_ms) -> int {
    std::vector<Context> targets;
    std::vector<ContextId> ids;
    for (int i = 0; i < children; ++i) {
      absl::StatusOr<Context> child = master.Spawn("local");
      if (!child.ok()) return (fprintf(stderr, "%s\n", child.status().ToString().c_str()), 1);
      targets.push_back(*child);
      ids.push_back(child->id());
    }
    std::atomic<bool> done{false};
    std::thread pinger;
    if (ping_ms != nullptr) {
      pinger = std::thread([&] {
        while (!done.load()) {
          absl::Time t = absl::Now();
          if (!targets[0].Ping().ok()) break;
          ping_ms->push_back(Ms(absl::Now() - t));
        }
      });
    }
    TransferOptions options;
    options.kernel_copy = kernel_copy;
    absl::Time t = absl::Now();
    absl::StatusOr<TransferSummary> pushed =
        PushFiles(master.router(), ids, src, absl::StrCat(dir, "/dest", children), options);
    *seconds = absl::ToDoubleSeconds(absl::Now() - t);
    done.store(true);
    if (pinger.joinable()) pinger.join();
    master.router().StopAllChildren();
    if (!pushed.ok() || !pushed->ok()) {
      fprintf(stderr, "grove bench: push failed: %s\n",
              pushed.ok() ? "a target failed" : pushed.status().ToString().c_str());
      return 1;
    }
    return 0;
  };
  int status = 0;
  double seconds = 0;
  for (bool kernel_copy : {true, false}) {
    const std::string one = kernel_copy ? "transfer_100MiB_MBps" : "transfer_streamed_100MiB_MBps";
    const std::string eight =
        kernel_copy ? "transfer_fanout_8x100MiB_s" : "transfer_streamed_fanout_8x100MiB_s";
    if (status == 0 && out.Wants(one)) {
      status = push(1, kernel_copy, &seconds, nullptr);
      if (status == 0) out.Emit(one, 104.8576 / seconds, "MB/s");
    }
    if (status == 0 && out.Wants(eight)) {
      status = push(8, kernel_copy, &seconds, nullptr);
      if (status == 0) out.Emit(eight, seconds, "s");
    }
  }
  if (status == 0 && out.Wants("pull_100MiB_MBps")) {
    // The same file back from a local child (a kernel copy here).
    absl::StatusOr<Context> child = master.Spawn("local");
    absl::StatusOr<TransferSummary> pulled = absl::UnknownError("no child to pull from");
    if (!child.ok()) {
      pulled = child.status();
    } else {
      absl::Time t = absl::Now();
      pulled = PullFiles(master.router(), child->id(), src, dir + "/pulled");
      seconds = absl::ToDoubleSeconds(absl::Now() - t);
      master.router().StopAllChildren();
    }
    if (pulled.ok() && pulled->ok()) {
      out.Emit("pull_100MiB_MBps", 104.8576 / seconds, "MB/s");
    } else {
      fprintf(stderr, "grove bench: pull failed: %s\n",
              pulled.ok() ? pulled->results[0].status.ToString().c_str()
                          : pulled.status().ToString().c_str());
      status = 1;  // The files go below all the same.
    }
  }
  if (status == 0 && out.Wants("ping_during_transfer_p99_ms")) {
    std::vector<double> ping_ms;
    status = push(1, /*kernel_copy=*/false, &seconds, &ping_ms);  // Pings share the link.
    if (status == 0) out.Emit("ping_during_transfer_p99_ms", Percentile(ping_ms, 0.99), "ms");
  }
  SpawnOptions rm;
  rm.argv = {"rm", "-rf", dir};
  if (auto p = Process::Spawn(rm); p.ok()) p->Wait(absl::InfiniteFuture()).IgnoreError();
  return status;
}

int OpenFds() {
  int n = 0;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

// A tree of `total` contexts (10, 100 or 1000): 10 local children of the master, 9 fork
// children under each, 10 fork children under each of those. Spawned in parallel (one
// thread per local child's subtree), called all at once, listed, shut down.
int Scale(Master& master, const Emitter& out, int total) {
  const int kLocal = 10;
  const int forks = total >= 100 ? 9 : 0;
  const int leaves = total >= 1000 ? 10 : 0;
  const int expected = kLocal + kLocal * forks + kLocal * forks * leaves;
  const int fds_before = OpenFds();
  absl::Time t = absl::Now();
  std::vector<std::thread> threads;
  absl::Mutex mu;
  std::vector<Context> contexts;
  absl::Status failed;
  int local_fds = 0;
  for (int i = 0; i < kLocal; ++i) {
    threads.emplace_back([&, i] {
      std::vector<Context> mine;
      auto note = [&](const absl::StatusOr<Context>& c) {
        if (c.ok()) {
          mine.push_back(*c);
          return true;
        }
        absl::MutexLock lock(&mu);
        if (failed.ok()) failed = c.status();
        return false;
      };
      absl::StatusOr<Context> local = master.Spawn(absl::StrCat("local,name=s", i));
      if (!note(local)) return;
      for (int j = 0; j < forks; ++j) {
        absl::StatusOr<Context> fork = local->Spawn(absl::StrCat("fork,name=s", i, ".", j));
        if (!note(fork)) return;
        for (int k = 0; k < leaves; ++k) {
          if (!note(fork->Spawn(absl::StrCat("fork,name=s", i, ".", j, ".", k)))) return;
        }
      }
      absl::MutexLock lock(&mu);
      contexts.insert(contexts.end(), mine.begin(), mine.end());
    });
  }
  for (std::thread& th : threads) th.join();
  const double spawn_ms = Ms(absl::Now() - t);
  local_fds = OpenFds() - fds_before;
  if (!failed.ok() || static_cast<int>(contexts.size()) != expected) {
    fprintf(stderr, "grove bench: scale %d: %s\n", total, failed.ToString().c_str());
    master.router().StopAllChildren();
    return 1;
  }
  // One call to every context at once.
  t = absl::Now();
  std::vector<std::future<absl::StatusOr<v1::InfoReply>>> calls;
  calls.reserve(contexts.size());
  for (const Context& c : contexts) calls.push_back(c.CallAsync<v1::InfoReply>("grove.info", v1::Empty()));
  std::vector<int64_t> pids;
  for (auto& call : calls) {
    absl::StatusOr<v1::InfoReply> info = call.get();
    if (!info.ok()) {
      fprintf(stderr, "grove bench: scale %d: %s\n", total, info.status().ToString().c_str());
      master.router().StopAllChildren();
      return 1;
    }
    pids.push_back(info->pid());
  }
  const double call_ms = Ms(absl::Now() - t);
  int64_t pss = 0, threads_total = 0;
  // Memory and threads of every process the tree holds: the contexts and their zygotes.
  const std::set<pid_t> processes = DescendantsOf({::getpid()});
  for (pid_t pid : processes) {
    // Proportional set size: shared pages split among their users.
    pss += ProcField(absl::StrCat("/proc/", pid, "/smaps_rollup"), "Pss:");
    threads_total += ProcField(absl::StrCat("/proc/", pid, "/status"), "Threads:");
  }
  int listed = 0;
  for (const ContextRecord& r : master.registry().List(false)) {
    if (r.id != master.router().id() && !r.name.empty()) ++listed;
  }
  t = absl::Now();
  master.router().StopAllChildren();
  const double stop_ms = Ms(absl::Now() - t);
  const std::string prefix = absl::StrCat("scale_", total, "_");
  out.Emit(prefix + "spawn_ms", spawn_ms, "ms");
  out.Emit(prefix + "call_all_ms", call_ms, "ms");
  out.Emit(prefix + "shutdown_ms", stop_ms, "ms");
  out.Emit(prefix + "listed", listed, "contexts");
  out.Emit(prefix + "processes_per_context",
           static_cast<double>(processes.size()) / pids.size(), "processes");
  out.Emit(prefix + "pss_per_context_kib", static_cast<double>(pss) / pids.size(), "KiB");
  out.Emit(prefix + "threads_per_context", static_cast<double>(threads_total) / pids.size(),
           "threads");
  out.Emit(prefix + "master_fds_per_child", static_cast<double>(local_fds) / kLocal, "fds");
  return listed == expected ? 0 : 1;
}

}  // namespace

std::vector<std::string> SshArgv(const Hop& hop, std::vector<std::string> options) {
  std::vector<std::string> argv = {"ssh", "-T", "-o", "BatchMode=yes"};
  argv.insert(argv.end(), options.begin(), options.end());
  std::string host = hop.target;
  if (size_t colon = host.rfind(':'); colon != std::string::npos) {
    argv.insert(argv.end(), {"-p", host.substr(colon + 1)});
    host = host.substr(0, colon);
  }
  if (hop.Has("identity")) argv.insert(argv.end(), {"-i", hop.Get("identity")});
  for (const auto& [k, v] : hop.options) {
    if (k == "ssh_option") argv.insert(argv.end(), {"-o", v});
  }
  argv.push_back(host);
  return argv;
}

// Milliseconds of `ssh ... true` through the same hop's host, user, port and options.
double SshTrueMs(const Hop& hop) {
  std::vector<std::string> argv = SshArgv(hop, {});
  argv.push_back("true");
  SpawnOptions spawn;
  spawn.argv = argv;
  absl::Time t = absl::Now();
  absl::StatusOr<Process> p = Process::Spawn(spawn);
  if (!p.ok() || !p->Wait(absl::Now() + absl::Seconds(30)).ok()) return -1;
  return Ms(absl::Now() - t);
}

int Bench(Master& master, const std::vector<std::string>& args) {
  Emitter out;
  std::string ssh_hop;
  std::vector<int> scales;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--json") {
      out.json = true;
    } else if (args[i] == "--ssh" && i + 1 < args.size()) {
      ssh_hop = args[++i];
    } else if (args[i] == "--scale" && i + 1 < args.size()) {
      for (absl::string_view n : absl::StrSplit(args[++i], ',', absl::SkipEmpty())) {
        int total = 0;
        if (!absl::SimpleAtoi(n, &total) || (total != 10 && total != 100 && total != 1000)) {
          fprintf(stderr, "grove bench: --scale takes 10, 100 and/or 1000\n");
          return 2;
        }
        scales.push_back(total);
      }
    } else if (args[i] == "--list") {
      for (const char* m : kMetrics) {
        const char* reference = BenchReference(m);
        printf("%-38s %s\n", m, reference);
      }
      return 0;
    } else if (args[i] == "--only" && i + 1 < args.size()) {
      for (absl::string_view m : absl::StrSplit(args[++i], ',', absl::SkipEmpty())) {
        if (!KnownMetric(m)) {
          fprintf(stderr, "grove bench: no metric '%s' (grove bench --list names them)\n",
                  std::string(m).c_str());
          return 2;
        }
        out.only.insert(std::string(m));
      }
    } else {
      fprintf(stderr, "grove bench: unknown argument %s\n", args[i].c_str());
      return 2;
    }
  }
  if (!scales.empty()) {  // Only the scale runs: they are long.
    for (int total : scales) {
      if (int status = Scale(master, out, total); status != 0) return status;
    }
    return 0;
  }
  CallOptions timeout;
  timeout.timeout = absl::Seconds(60);

  if (out.Wants("rtt_us") || out.Wants("rtt_p99_us") || out.Wants("calls_per_s_concurrent") ||
      out.Wants("rss_per_child_kib") || out.Wants("rss_per_child_file_kib")) {
    absl::StatusOr<Context> child = master.Spawn("local,name=bench");
    if (!child.ok()) return (fprintf(stderr, "%s\n", child.status().ToString().c_str()), 1);
    if (out.Wants("rss_per_child_kib") || out.Wants("rss_per_child_file_kib")) {
      absl::StatusOr<v1::InfoReply> info = child->Info();
      // Idle: measured before any load.
      if (info.ok() && out.Wants("rss_per_child_kib")) {
        out.Emit("rss_per_child_kib", RssKib(info->pid()), "KiB");
      }
      if (info.ok() && out.Wants("rss_per_child_file_kib")) {
        out.Emit("rss_per_child_file_kib", RssKib(info->pid(), "RssFile:"), "KiB");
      }
    }
    if (out.Wants("rtt_us") || out.Wants("rtt_p99_us")) {
      std::vector<double> us = PingTimes(*child, 2000);
      if (out.Wants("rtt_us")) out.Emit("rtt_us", Percentile(us, 0.5), "us");
      if (out.Wants("rtt_p99_us")) out.Emit("rtt_p99_us", Percentile(us, 0.99), "us");
    }
    if (out.Wants("calls_per_s_concurrent")) {
      out.Emit("calls_per_s_concurrent", Throughput(*child, 256, absl::Seconds(2)), "calls/s");
    }
    child->Shutdown().IgnoreError();
  }
  for (const char* floor : kFloors) {
    if (!out.Wants(floor)) continue;
    absl::StatusOr<double> us = FloorUs(floor, 2000);
    if (!us.ok()) {
      fprintf(stderr, "grove bench: %s\n", us.status().ToString().c_str());
      return 1;
    }
    out.Emit(floor, *us, "us");
  }
  // Start + first call, median of 10: a local child (fork+exec) and a fork child (forked
  // from the zygote, no exec).
  for (const char* method : {"local", "fork"}) {
    const std::string metric = absl::StrCat("spawn_", method, "_ms");
    if (!out.Wants(metric)) continue;
    std::vector<double> ms;
    for (int i = 0; i < 11; ++i) {
      absl::Time t = absl::Now();
      absl::StatusOr<Context> child = master.Spawn(method);
      if (!child.ok()) return (fprintf(stderr, "%s\n", child.status().ToString().c_str()), 1);
      if (!child->Ping().ok()) return 1;
      if (i > 0) ms.push_back(Ms(absl::Now() - t));  // The first warms the page cache.
      child->Shutdown().IgnoreError();
    }
    out.Emit(metric, Percentile(ms, 0.5), "ms");
  }
  if (out.Wants("fanout_32_ms")) {
    absl::Time t = absl::Now();
    std::vector<std::thread> threads;
    std::vector<absl::StatusOr<Context>> children(32, absl::UnknownError(""));
    for (int i = 0; i < 32; ++i) {
      threads.emplace_back([&, i] {
        children[i] = master.Spawn("local");
        if (children[i].ok()) {
          if (absl::Status s = children[i]->Ping(); !s.ok()) children[i] = s;
        }
      });
    }
    for (auto& th : threads) th.join();
    double elapsed = Ms(absl::Now() - t);
    for (auto& c : children) {
      if (!c.ok()) return (fprintf(stderr, "%s\n", c.status().ToString().c_str()), 1);
    }
    out.Emit("fanout_32_ms", elapsed, "ms");
    master.router().StopAllChildren();
  }
  if (out.Wants("nested_depth4_rtt_us")) {
    absl::StatusOr<Context> leaf = master.SpawnPath("local/local/local/local");
    if (!leaf.ok()) return (fprintf(stderr, "%s\n", leaf.status().ToString().c_str()), 1);
    out.Emit("nested_depth4_rtt_us", Percentile(PingTimes(*leaf, 2000), 0.5), "us");
    master.router().StopAllChildren();
  }
  if (out.Wants("transfer_100MiB_MBps") || out.Wants("transfer_fanout_8x100MiB_s") ||
      out.Wants("transfer_streamed_100MiB_MBps") ||
      out.Wants("transfer_streamed_fanout_8x100MiB_s") || out.Wants("pull_100MiB_MBps") ||
      out.Wants("ping_during_transfer_p99_ms")) {
    int status = FileTransfers(master, out);
    if (status != 0) return status;
  }
  if (out.Wants("transfer_calls_100MiB_MBps")) {
    absl::StatusOr<Context> child = master.Spawn("local");
    if (!child.ok()) return 1;
    google::protobuf::BytesValue chunk;
    chunk.set_value(std::string(1 << 20, 'g'));
    const int kChunks = 100, kInFlight = 8;
    absl::Time t = absl::Now();
    std::vector<std::future<absl::StatusOr<google::protobuf::Int64Value>>> calls;
    int64_t received = 0;
    for (int i = 0; i < kChunks; ++i) {
      calls.push_back(child->CallAsync<google::protobuf::Int64Value>("bench.sink", chunk));
      if (calls.size() >= kInFlight) {
        auto r = calls.front().get();
        calls.erase(calls.begin());
        if (!r.ok()) return (fprintf(stderr, "%s\n", r.status().ToString().c_str()), 1);
        received += r->value();
      }
    }
    for (auto& f : calls) received += f.get().value_or(google::protobuf::Int64Value()).value();
    double seconds = absl::ToDoubleSeconds(absl::Now() - t);
    if (received != int64_t{kChunks} << 20) return 1;
    out.Emit("transfer_calls_100MiB_MBps", (kChunks * 1.048576) / seconds, "MB/s");
    child->Shutdown().IgnoreError();
  }
  if (!ssh_hop.empty() && (out.Wants("ssh_bootstrap_ms") || out.Wants("ssh_first_contact_ms"))) {
    absl::StatusOr<Hop> hop = ParseHop(ssh_hop);
    if (!hop.ok() || hop->method != "ssh") {
      fprintf(stderr, "grove bench: --ssh takes one ssh hop\n");
      return 2;
    }
    std::vector<double> ssh_true;
    for (int i = 0; i < 5; ++i) ssh_true.push_back(SshTrueMs(*hop));
    out.Emit("ssh_true_ms", Percentile(ssh_true, 0.5), "ms");
    char tmpl[] = "/tmp/grove-bench-cache.XXXXXX";
    std::string cache = ::mkdtemp(tmpl) ? tmpl : "/tmp/grove-bench-cache";
    auto contact = [&](const std::string& dir) -> double {
      absl::Time t = absl::Now();
      absl::StatusOr<Context> c = master.Spawn(absl::StrCat(ssh_hop, ",cache_dir=", dir));
      if (!c.ok() || !c->Ping().ok()) {
        fprintf(stderr, "%s\n", c.status().ToString().c_str());
        return -1;
      }
      double ms = Ms(absl::Now() - t);
      c->Shutdown().IgnoreError();
      return ms;
    };
    int64_t sent = GlobalBootstrapCounters().bytes_sent;
    double first = contact(cache);
    int64_t first_bytes = GlobalBootstrapCounters().bytes_sent - sent;
    out.Emit("ssh_first_contact_ms", first, "ms");
    out.Emit("ssh_first_contact_bytes", first_bytes, "bytes");
    std::vector<double> cached;
    sent = GlobalBootstrapCounters().bytes_sent;
    for (int i = 0; i < 5; ++i) cached.push_back(contact(cache));
    out.Emit("ssh_bootstrap_ms", Percentile(cached, 0.5), "ms");
    out.Emit("ssh_cached_contact_bytes", (GlobalBootstrapCounters().bytes_sent - sent) / 5.0,
             "bytes");
    SpawnOptions rm;
    rm.argv = {"rm", "-rf", cache};
    if (auto p = Process::Spawn(rm); p.ok()) p->Wait(absl::InfiniteFuture()).IgnoreError();
  }
  if (out.Wants("child_killed_detect_ms")) {
    std::vector<double> ms;
    for (int i = 0; i < 5; ++i) {
      absl::StatusOr<Context> child = master.Spawn("local");
      if (!child.ok()) return 1;
      absl::StatusOr<v1::InfoReply> info = child->Info();
      if (!info.ok()) return 1;
      v1::SleepRequest sleep;
      sleep.set_ms(10000);
      auto call = child->CallAsync<v1::Empty>("grove.sleep", sleep);
      child->Ping().IgnoreError();  // The sleep has started.
      absl::Time t = absl::Now();
      ::kill(static_cast<pid_t>(info->pid()), SIGKILL);
      absl::StatusOr<v1::Empty> r = call.get();
      ms.push_back(Ms(absl::Now() - t));
    }
    out.Emit("child_killed_detect_ms", Percentile(ms, 0.5), "ms");
  }
  auto wants = [&out](const std::string& m) { return out.Wants(m); };
  int failed = BenchMesh(master, out.json, wants);
  failed |= BenchResident(out.json, wants, ssh_hop);
  failed |= BenchIngress(out.json, wants);
  return failed;
}

}  // namespace grove::cli
