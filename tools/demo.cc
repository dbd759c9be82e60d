// grove demo: the main job, on local contexts. Builds a small tree (one context started by a
// child on its own), prints the registry, runs a function across the tree, kills a subtree
// and shows calls failing cleanly, then shuts down and shows that nothing is left.
#include <dirent.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <future>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "google/protobuf/wrappers.pb.h"
#include "tools/cli.h"

namespace grove::cli {
namespace {

// The command line of process `pid` ("" when it is gone).
std::string CmdlineOf(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/cmdline"));
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Processes of this program other than this one and its zygote (a child that lives as long
// as this process does, a fork of it and so with its command line: see
// MasterOptions::zygote).
std::vector<int> OurProcesses() {
  char self_exe[512] = {0};
  if (::readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1) < 0) self_exe[0] = '\0';
  const std::string self_cmdline = CmdlineOf(::getpid());
  std::vector<int> pids;
  DIR* dir = ::opendir("/proc");
  while (struct dirent* e = dir ? ::readdir(dir) : nullptr) {
    int pid;
    if (!absl::SimpleAtoi(e->d_name, &pid) || pid == ::getpid()) continue;
    char exe[512] = {0};
    if (::readlink(absl::StrCat("/proc/", pid, "/exe").c_str(), exe, sizeof(exe) - 1) <= 0 ||
        std::string(exe) != self_exe) {
      continue;
    }
    if (ParentOf(pid) == ::getpid() && CmdlineOf(pid) == self_cmdline) continue;  // Zygote.
    pids.push_back(pid);
  }
  if (dir) ::closedir(dir);
  return pids;
}

void Step(const char* text) { printf("\n== %s\n", text); }

}  // namespace

int Demo(Master& master, const std::vector<std::string>&) {
  CallOptions timeout;
  timeout.timeout = absl::Seconds(30);
  Step("Start a tree of local contexts");
  absl::StatusOr<Context> web1 = master.Spawn("local,name=web1", timeout);
  absl::StatusOr<Context> db1 = master.Spawn("local,name=db1", timeout);
  if (!web1.ok() || !db1.ok()) {
    fprintf(stderr, "demo: %s\n", (web1.ok() ? db1 : web1).status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<Context> cache = db1->Spawn("local,name=db1-cache", timeout);
  if (!cache.ok()) return (fprintf(stderr, "demo: %s\n", cache.status().ToString().c_str()), 1);
  // web1's own code starts a child: the master learns of it from the ContextAdded event.
  google::protobuf::StringValue hop;
  hop.set_value("local,name=web1-worker");
  absl::StatusOr<google::protobuf::UInt64Value> worker_id =
      web1->Call<google::protobuf::UInt64Value>("demo.spawn_here", hop, timeout);
  if (!worker_id.ok()) {
    return (fprintf(stderr, "demo: %s\n", worker_id.status().ToString().c_str()), 1);
  }
  absl::StatusOr<Context> worker = master.Find("web1-worker");
  printf("web1 started web1-worker (id %llu) on its own; the master found it by name: %s\n",
         static_cast<unsigned long long>(worker_id->value()), worker.ok() ? "yes" : "no");
  PrintTree(master, false, false);

  Step("Run a function in every context, in parallel");
  std::vector<std::pair<std::string, std::future<absl::StatusOr<google::protobuf::StringValue>>>>
      calls;
  google::protobuf::StringValue hello;
  hello.set_value("hello");
  calls.emplace_back(master.router().name(),
                     master.self().CallAsync<google::protobuf::StringValue>("demo.where", hello));
  for (const ContextRecord& r : master.registry().List(false)) {
    Context c(&master.router(), r.id, r.name);
    calls.emplace_back(r.name, c.CallAsync<google::protobuf::StringValue>("demo.where", hello,
                                                                           timeout));
  }
  for (auto& [name, call] : calls) {
    absl::StatusOr<google::protobuf::StringValue> r = call.get();
    printf("  %-12s %s\n", name.c_str(),
           r.ok() ? r->value().c_str() : r.status().ToString().c_str());
  }

  Step("Kill web1 (SIGKILL) while a call to its child web1-worker is pending");
  v1::SleepRequest sleep;
  sleep.set_ms(10000);
  auto pending = worker->CallAsync<v1::Empty>("grove.sleep", sleep);
  absl::StatusOr<v1::InfoReply> info = web1->Info();
  if (!info.ok()) return 1;
  absl::Time killed = absl::Now();
  ::kill(static_cast<pid_t>(info->pid()), SIGKILL);
  absl::StatusOr<v1::Empty> failed = pending.get();
  printf("the pending call failed after %.2f ms: %s\n",
         absl::ToDoubleMilliseconds(absl::Now() - killed), failed.status().ToString().c_str());
  absl::Status again = worker->Ping();
  printf("a new call to web1-worker fails at once: %s\n", again.ToString().c_str());
  absl::Status other = cache->Ping();
  printf("db1-cache, in another subtree, still answers: %s\n", other.ToString().c_str());
  printf("the registry now:\n");
  PrintTree(master, false, true);

  Step("Shut everything down");
  master.Shutdown();
  std::vector<int> left = OurProcesses();
  for (int i = 0; i < 100 && !left.empty(); ++i) {
    absl::SleepFor(absl::Milliseconds(10));  // Orphans of web1 exit on their own.
    left = OurProcesses();
  }
  printf("grove processes left: %zu\n", left.size());
  return left.empty() && !failed.ok() && !again.ok() && other.ok() ? 0 : 1;
}

}  // namespace grove::cli
