// Resident masters, as users run them: the grove CLI's up, down, status, stop and reload,
// run/tree/call attached to the resident tree, supervision, idle timeout, a SIGKILLed
// master, and a connection from another uid. Real processes; a real sshd on loopback for the
// ssh context that is started once and reused.
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/control.grpc.pb.h"
#include "common/process.h"
#include "resident/control_socket.h"
#include "tests/leak_check.h"
#include "tests/private_system.h"
#include "tests/resident_fixture.h"
#include "tests/sshd.h"
#include "tests/support.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST_F(ResidentTest, UpStatusDownLeaveNothingBehind) {
  Up();
  Ran status = RunGrove({"status"});
  EXPECT_EQ(status.status, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("resident master pid"));
  EXPECT_THAT(status.out, HasSubstr(run_dir_ + "/control.sock"));

  Ran again = RunGrove({"up"});
  EXPECT_EQ(again.status, 1);
  EXPECT_THAT(again.err, HasSubstr("already running"));

  Ran ran = RunGrove({"run", "local/local", "--", "echo", "in the resident tree"});
  EXPECT_EQ(ran.status, 0) << ran.err;
  EXPECT_EQ(ran.out, "in the resident tree\n");
  EXPECT_EQ(Status().contexts_size(), 3);  // The master, local, local/local.

  Ran down = RunGrove({"down"});
  EXPECT_EQ(down.status, 0) << down.err;
  EXPECT_THAT(down.out, HasSubstr("stopped"));
  EXPECT_TRUE(ProcessesWith(run_dir_).empty());
  EXPECT_FALSE(std::filesystem::exists(run_dir_ + "/control.sock"));
  Ran after = RunGrove({"status"});
  EXPECT_EQ(after.status, 3);
  EXPECT_THAT(after.out, HasSubstr("no resident master"));
}

TEST_F(ResidentTest, ContextsAreKeptByPathAndSharedByConcurrentClients) {
  Up();
  // Two CLIs at once, on the same path: one context, started once.
  Ran first, second;
  std::thread a([&] { first = RunGrove({"run", "local/local,name=deep", "--", "sh", "-c", "echo $PPID"}); });
  std::thread b([&] { second = RunGrove({"run", "local/local,name=deep", "--", "sh", "-c", "echo $PPID"}); });
  a.join();
  b.join();
  ASSERT_EQ(first.status, 0) << first.err;
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_EQ(first.out, second.out);
  EXPECT_EQ(first.out, absl::StrCat(Find("deep").pid(), "\n"));

  // Found again later; the resident program's own functions are called there.
  Ran where = RunGrove({"call", "local/local,name=deep", "demo.where", "{\"value\": \"hi\"}"});
  EXPECT_EQ(where.status, 0) << where.err;
  EXPECT_THAT(where.out, HasSubstr(absl::StrCat("hi from deep (pid ", Find("deep").pid())));
  Ran tree = RunGrove({"tree", "--json"});
  EXPECT_EQ(tree.status, 0) << tree.err;
  EXPECT_THAT(tree.out, HasSubstr("\"name\":\"deep\""));

  // --fresh: a private tree, which leaves the resident one as it was.
  Ran fresh = RunGrove({"run", "--fresh", "local/local,name=deep", "--", "sh", "-c", "echo $PPID"});
  EXPECT_EQ(fresh.status, 0) << fresh.err;
  EXPECT_NE(fresh.out, first.out);
  EXPECT_EQ(Status().contexts_size(), 3);

  // grove stop PATH: the context and its subtree go; the next run starts them again.
  Ran stop = RunGrove({"stop", "local"});
  EXPECT_EQ(stop.status, 0) << stop.err;
  EXPECT_EQ(Status().contexts_size(), 1);
  Ran unknown = RunGrove({"stop", "local"});
  EXPECT_EQ(unknown.status, 1);
  EXPECT_THAT(unknown.err, HasSubstr("no context is kept at path"));
}

TEST_F(ResidentTest, ErrorsNameThePathAndTheHop) {
  Up();
  Ran bad = RunGrove({"run", "nosuch:x", "--", "true"});
  EXPECT_NE(bad.status, 0);
  EXPECT_THAT(bad.err, HasSubstr("nosuch"));
  Ran unreachable = RunGrove(
      {"run", "local,name=hop1/ssh:root@127.0.0.1:1,connect_timeout=5", "--", "true"});
  EXPECT_EQ(unreachable.status, 255);
  EXPECT_THAT(unreachable.err, HasSubstr("path local,name=hop1/ssh:root@127.0.0.1:1"));
  EXPECT_THAT(unreachable.err, HasSubstr("cannot start 'ssh:root@127.0.0.1:1"));
  EXPECT_THAT(unreachable.err, HasSubstr("from hop1"));
  // The hop that did start is kept.
  EXPECT_EQ(Find("hop1").name(), "hop1");
  Ran no_function = RunGrove({"call", "local", "no.such", "{}"});
  EXPECT_EQ(no_function.status, 1);
  EXPECT_THAT(no_function.err, HasSubstr("no function 'no.such'"));
}

TEST_F(ResidentTest, PushAndPullWorkInTheResidentTree) {
  Up();
  std::filesystem::create_directories(dir_ + "/src/sub");
  std::ofstream(dir_ + "/src/sub/f") << "hello\n";
  Ran push = RunGrove({"push", "-r", "local,name=a", "local,name=b", "--", dir_ + "/src",
                       dir_ + "/dst"});
  ASSERT_EQ(push.status, 0) << push.err;
  EXPECT_EQ(ReadFile(dir_ + "/dst/sub/f"), "hello\n");
  Ran pull = RunGrove({"pull", "--json", "a", "--", dir_ + "/dst/sub/f", dir_ + "/back"});
  // "a" is not a path: pull names what it could not start.
  EXPECT_EQ(pull.status, 255);
  pull = RunGrove({"pull", "--json", "local,name=a", "--", dir_ + "/dst/sub/f", dir_ + "/back"});
  EXPECT_EQ(pull.status, 0) << pull.err;
  EXPECT_THAT(pull.out, HasSubstr("\"context\":\"a\",\"state\":\"ok\""));
  EXPECT_EQ(ReadFile(dir_ + "/back"), "hello\n");
  // The same contexts served both (kept by path), and an unreachable path is reported.
  EXPECT_EQ(Status().contexts_size(), 3);
  Ran partly = RunGrove({"push", "local,name=a", "ssh:root@127.0.0.1:1,connect_timeout=5", "--",
                         dir_ + "/src/sub/f", dir_ + "/again"});
  EXPECT_EQ(partly.status, 255);
  EXPECT_THAT(partly.err, HasSubstr("unreachable"));
  EXPECT_EQ(ReadFile(dir_ + "/again"), "hello\n");
}

TEST_F(ResidentTest, IdleContextsAreStopped) {
  Up({"--idle-timeout", "0.5"});
  Ran ran = RunGrove({"run", "local,name=idle", "--", "true"});
  ASSERT_EQ(ran.status, 0) << ran.err;
  const int64_t pid = Find("idle").pid();
  ASSERT_GT(pid, 0);
  EXPECT_TRUE(WaitUntil([&] { return Find("idle").pid() == 0; }));
  Ran logs = RunGrove({"logs"});
  EXPECT_THAT(logs.out, HasSubstr("stopped local,name=idle: unused for 500ms"));
}

TEST_F(ResidentTest, SupervisedContextsRestartAndACrashLoopGivesUp) {
  const std::string spec = dir_ + "/spec.txt";
  std::ofstream(spec) << "context { path: \"local,name=web\" restart: ALWAYS backoff { initial_ms: 0 } }\n"
                         "context { path: \"local,name=flaky\" restart: ON_FAILURE\n"
                         "          backoff { initial_ms: 0 } limit { restarts: 2 window_s: 600 } }\n";
  Up({spec});
  const v1::ContextStatus web = Find("web");
  ASSERT_GT(web.pid(), 0);
  EXPECT_TRUE(web.supervised());
  ASSERT_EQ(kill(static_cast<pid_t>(web.pid()), SIGKILL), 0);
  EXPECT_TRUE(WaitUntil([&] {
    v1::ContextStatus now = Find("web");
    return now.pid() != 0 && now.pid() != web.pid();
  }));
  EXPECT_EQ(Find("web").restarts(), 1);
  EXPECT_THAT(Find("web").reason(), HasSubstr("killed by signal 9"));

  // Killed three times: two restarts, then it stays down with the reason.
  for (int i = 0; i < 3; ++i) {
    v1::ContextStatus flaky;
    ASSERT_TRUE(WaitUntil([&] { return (flaky = Find("flaky")).pid() != 0; })) << i;
    ASSERT_EQ(kill(static_cast<pid_t>(flaky.pid()), SIGKILL), 0);
    EXPECT_TRUE(WaitUntil([&] { return Find("flaky").pid() != flaky.pid(); }));
  }
  EXPECT_TRUE(WaitUntil([&] {
    v1::StatusReply s = Status();
    return s.down_size() == 1 && s.down(0).state() == "down";
  }));
  Ran status = RunGrove({"status"});
  EXPECT_THAT(status.out, HasSubstr("gave up after 2 restarts"));

  // reload: flaky is gone from the spec, web is kept as it runs, a new one starts.
  std::ofstream(spec, std::ios::trunc)
      << "context { path: \"local,name=web\" }\ncontext { path: \"local,name=new\" }\n";
  Ran reload = RunGrove({"reload", spec});
  EXPECT_EQ(reload.status, 0) << reload.err;
  EXPECT_THAT(reload.out, HasSubstr("started local,name=new"));
  EXPECT_THAT(reload.out, HasSubstr("stopped local,name=flaky"));
  EXPECT_THAT(reload.out, HasSubstr("kept    local,name=web"));
  EXPECT_GT(Find("new").pid(), 0);
  EXPECT_EQ(Status().down_size(), 0);

  // A bad spec is refused before anything changes, naming the file and line.
  std::ofstream(dir_ + "/bad.txt") << "context { path: \"local\" }\ncontext { pth: \"x\" }\n";
  Ran bad = RunGrove({"reload", dir_ + "/bad.txt"});
  EXPECT_EQ(bad.status, 2);
  EXPECT_THAT(bad.err, HasSubstr("bad.txt:2:"));
}

// A supervised context on host B, reached through host A (network namespaces): the A-B link
// is cut, the context is lost, restarts fail while the link is down, and once it is up again
// the context comes back.
TEST_F(ResidentTest, ASupervisedContextBehindACutLinkComesBack) {
  if (geteuid() != 0 || !PrivateSystem()) GTEST_SKIP() << "needs root and a private system";
  absl::StatusOr<std::unique_ptr<TwoHosts>> hosts = TwoHosts::Start();
  if (!hosts.ok()) GTEST_SKIP() << hosts.status();
  const std::string path = absl::StrCat(
      (*hosts)->a().Hop("root"), ",cache_dir=", dir_, "/cache/", (*hosts)->b().Hop("root"),
      ",cache_dir=", dir_, "/cache,name=far,connect_timeout=2",
      ",ssh_option=ServerAliveInterval=1,ssh_option=ServerAliveCountMax=2");
  const std::string spec = dir_ + "/spec.txt";
  std::ofstream(spec) << "context { path: \"" << path << "\" restart: ALWAYS\n"
                      << "  backoff { initial_ms: 200 max_ms: 1000 } limit { restarts: 0 } }\n";
  Up({spec});
  const v1::ContextStatus far = Find("far");
  ASSERT_GT(far.pid(), 0);
  ASSERT_TRUE((*hosts)->CutAToB().ok());
  // Lost (ssh's keepalive: about 3 s), then restarting while the link is down.
  EXPECT_TRUE(WaitUntil([&] { return Find("far").pid() == 0; }, absl::Seconds(30)));
  EXPECT_TRUE(WaitUntil([&] {
    v1::StatusReply s = Status();
    return s.down_size() == 1 && s.down(0).state() == "restarting" &&
           absl::StrContains(s.down(0).reason(), "ssh");
  }, absl::Seconds(30)));
  ASSERT_TRUE((*hosts)->RestoreAToB().ok());
  // Back, and counted as a restart (the supervisor records it just after the registry).
  EXPECT_TRUE(WaitUntil([&] {
    const v1::ContextStatus back = Find("far");
    return back.pid() != 0 && back.restarts() >= 1;
  }, absl::Seconds(30)));
  EXPECT_EQ(RunGrove({"down"}).status, 0);
}

TEST_F(ResidentTest, AKilledResidentMasterTakesItsTreeDownAndIsReplaced) {
  Up();
  ASSERT_EQ(RunGrove({"run", "local/local", "--", "true"}).status, 0);
  const int64_t master = Status().master().pid();
  const int64_t child = Find("local").pid();
  ASSERT_GT(master, 0);
  ASSERT_GT(child, 0);
  ASSERT_EQ(kill(static_cast<pid_t>(master), SIGKILL), 0);
  // No orphans: the contexts notice their parent link go and exit.
  // The contexts exit as they see their parent link go; they were reparented here.
  EXPECT_TRUE(WaitUntil([&] {
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    return ReadFile(absl::StrCat("/proc/", child, "/stat")).empty();
  }));
  ReapOrphans();
  Ran status = RunGrove({"status"});
  EXPECT_EQ(status.status, 3);
  EXPECT_THAT(status.out, HasSubstr("left by one that is gone"));
  // Attached verbs say so too, and do not start a private tree behind the user's back...
  Ran attached = RunGrove({"run", "--attach", run_dir_ + "/control.sock", "local", "--", "true"});
  EXPECT_EQ(attached.status, 255);
  EXPECT_THAT(attached.err, HasSubstr("left by one that is gone"));
  // ...and the next up replaces the stale socket.
  Up();
  EXPECT_EQ(RunGrove({"run", "local", "--", "true"}).status, 0);
}

TEST_F(ResidentTest, AConnectionFromAnotherUidIsRefused) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to connect as another uid";
  Up();
  // Open the directory and the socket to everyone: the uid check still refuses.
  ASSERT_EQ(chmod(dir_.c_str(), 0711), 0);
  ASSERT_EQ(chmod(run_dir_.c_str(), 0711), 0);
  ASSERT_EQ(chmod((run_dir_ + "/control.sock").c_str(), 0666), 0);
  // Sends gRPC's connection preface; exits 0 when the server closed (or reset) the connection
  // without a byte, 1 when it answered (its SETTINGS).
  const std::string probe =
      "import socket,sys\n"
      "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
      "try:\n"
      "  s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'+bytes([0,0,0,4,0,0,0,0,0]))\n"
      "  s.settimeout(10); sys.exit(0 if len(s.recv(100)) == 0 else 1)\n"
      "except (ConnectionResetError, BrokenPipeError):\n"
      "  sys.exit(0)\n";
  const std::string socket = run_dir_ + "/control.sock";
  auto probe_as = [&](std::vector<std::string> prefix) {
    SpawnOptions spawn;
    spawn.argv = std::move(prefix);
    for (const std::string& a : {std::string("/usr/bin/python3"), std::string("-c"), probe, socket}) {
      spawn.argv.push_back(a);
    }
    absl::StatusOr<Process> process = Process::Spawn(spawn);
    if (!process.ok()) return -1;
    absl::StatusOr<int> status = process->Wait(absl::Now() + absl::Seconds(20));
    return status.ok() ? ExitCodeOf(*status) : -1;
  };
  EXPECT_EQ(probe_as({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}), 0);
  EXPECT_TRUE(WaitUntil([&] {
    return absl::StrContains(ReadFile(run_dir_ + "/master.log"),
                             "refused a connection from uid 65534");
  }));
  // The same probe from this user is answered.
  EXPECT_EQ(probe_as({"env"}), 1);
  chmod(run_dir_.c_str(), 0700);
}

TEST_F(ResidentTest, AnSshContextIsStartedOnceAndReused) {
  if (geteuid() != 0 || !PrivateSystem()) GTEST_SKIP() << "needs root and a private system (sshd)";
  absl::StatusOr<std::unique_ptr<Sshd>> sshd = Sshd::Start();
  ASSERT_TRUE(sshd.ok()) << sshd.status();
  const std::string hop = (*sshd)->Hop("root") + ",cache_dir=" + dir_ + "/cache,name=web1";
  Up();
  Ran first = RunGrove({"run", hop, "--", "sh", "-c", "echo $PPID"});
  ASSERT_EQ(first.status, 0) << first.err;
  Ran second = RunGrove({"run", hop + "/sudo:nobody", "--", "id", "-un"});
  EXPECT_EQ(second.status, 0) << second.err;
  EXPECT_EQ(second.out, "nobody\n");
  Ran third = RunGrove({"run", hop, "--", "sh", "-c", "echo $PPID"});
  EXPECT_EQ(third.out, first.out);
  EXPECT_EQ(Find("web1").restarts(), 0);
  EXPECT_EQ(RunGrove({"down"}).status, 0);
}

}  // namespace
}  // namespace grove::testing
