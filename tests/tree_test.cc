// The foundation, tested with real processes: links, calls, nesting, the registry,
// disconnects, shutdown, stdio and logs, policy and bad input.
#include <elf.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/syscall.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <future>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/fd.h"
#include "common/process.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "child/agent.h"
#include "common/status_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/payload.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/log_collector.h"
#include "tests/test.pb.h"
#include "tests/test_functions.h"
#include "transport/grpc_link.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

test::Echo MakeEcho(const std::string& text) {
  test::Echo e;
  e.set_text(text);
  return e;
}

CallOptions Timeout(absl::Duration d) {
  CallOptions o;
  o.timeout = d;
  return o;
}

class TreeTest : public GroveTest {
 protected:
  MasterOptions Options() {
    MasterOptions options;
    options.log_sink = logs_.Sink();
    return options;
  }
  // Stops (SIGSTOP) the process of `context`: it neither reads its link nor exits on
  // SIGTERM. Call with ASSERT_NO_FATAL_FAILURE.
  static void Freeze(const Context& context) {
    absl::StatusOr<v1::InfoReply> info = context.Info();
    ASSERT_TRUE(info.ok()) << info.status();
    ASSERT_EQ(::kill(static_cast<pid_t>(info->pid()), SIGSTOP), 0);
  }
  LogCollector logs_;
};

// ---- 1. Links ----

TEST_F(TreeTest, ChildIsThisBinaryAndHoldsOnlyItsLinkAndStdio) {
  // An fd opened without close-on-exec by the program must not reach the child.
  int leaky = ::open("/proc/self/exe", O_RDONLY);
  ASSERT_GE(leaky, 0);
  {
    Master master(TestFunctions(), Options());
    absl::StatusOr<Context> child = master.Spawn("local");
    ASSERT_TRUE(child.ok()) << child.status();
    absl::StatusOr<v1::InfoReply> info = child->Info();
    ASSERT_TRUE(info.ok()) << info.status();
    const std::string proc = absl::StrCat("/proc/", info->pid());
    EXPECT_EQ(Readlink(proc + "/exe"), Readlink("/proc/self/exe"));
    EXPECT_EQ(Readlink(proc + "/fd/0"), "/dev/null");
    EXPECT_EQ(Readlink(proc + "/fd/" + std::to_string(leaky)).find("/proc"), std::string::npos);
    // No TCP socket anywhere in the child: it listens on no port.
    std::ifstream tcp("/proc/net/tcp");
    std::stringstream tcp_text;
    tcp_text << tcp.rdbuf();
    for (int fd = 0; fd < 256; ++fd) {
      std::string target = Readlink(absl::StrCat(proc, "/fd/", fd));
      if (!absl::StartsWith(target, "socket:[")) continue;
      std::string inode = target.substr(8, target.size() - 9);
      EXPECT_THAT(tcp_text.str(), ::testing::Not(HasSubstr(" " + inode + " ")));
    }
  }
  ::close(leaky);
}

// $GROVE_AGENT_WRAPPER (strace, valgrind: docs/architecture.md, "Launchers" and "Hot text")
// starts local children through a command given the agent's program and arguments.
TEST_F(TreeTest, LocalChildrenStartThroughTheAgentWrapper) {
  const std::string dir = ::testing::TempDir();
  const std::string script = dir + "/agent_wrapper.sh";
  const std::string seen = dir + "/agent_wrapper.argv";
  {
    std::ofstream out(script);
    out << "#!/bin/sh\nprintf '%s\\n' \"$@\" > " << seen << "\nshift\nexec \"$@\"\n";
  }
  ASSERT_EQ(::chmod(script.c_str(), 0700), 0);
  ::unlink(seen.c_str());
  ASSERT_EQ(::setenv("GROVE_AGENT_WRAPPER", (script + "  first-word").c_str(), 1), 0);
  {
    Master master(TestFunctions(), Options());
    absl::StatusOr<Context> child = master.Spawn("local");
    ::unsetenv("GROVE_AGENT_WRAPPER");
    ASSERT_TRUE(child.ok()) << child.status();
    absl::StatusOr<v1::InfoReply> info = child->Info();
    ASSERT_TRUE(info.ok()) << info.status();
    // The wrapper ran the program itself (not /proc/self/exe, which was the shell), which is
    // the child now.
    EXPECT_EQ(Readlink(absl::StrCat("/proc/", info->pid(), "/exe")), Readlink("/proc/self/exe"));
    std::ifstream argv_file(seen);
    std::stringstream argv;
    argv << argv_file.rdbuf();
    EXPECT_THAT(argv.str(), ::testing::StartsWith("first-word\n" + Readlink("/proc/self/exe") +
                                                  "\n--grove-agent\n"));
  }
  ASSERT_EQ(::setenv("GROVE_AGENT_WRAPPER", (dir + "/no-such-wrapper").c_str(), 1), 0);
  {
    Master master(TestFunctions(), Options());
    absl::StatusOr<Context> child = master.Spawn("local");
    ::unsetenv("GROVE_AGENT_WRAPPER");
    ASSERT_FALSE(child.ok());
    EXPECT_EQ(child.status().code(), absl::StatusCode::kNotFound) << child.status();
    EXPECT_THAT(child.status().message(), HasSubstr("no-such-wrapper"));
    EXPECT_THAT(child.status().message(), HasSubstr("GROVE_AGENT_WRAPPER"));
  }
}

// The agent's start and call path is laid out in one place (child/hot_text.ld;
// docs/architecture.md, "Hot text"): every program that links //child, this test included,
// is linked with it.
TEST_F(TreeTest, TheAgentsHotCodeIsLaidOutTogether) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer builds link without child/hot_text.ld";
#else
  std::ifstream file("/proc/self/exe", std::ios::binary);
  std::string elf((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  ASSERT_GE(elf.size(), sizeof(Elf64_Ehdr));
  const auto* header = reinterpret_cast<const Elf64_Ehdr*>(elf.data());
  ASSERT_LE(header->e_shoff + uint64_t{header->e_shnum} * sizeof(Elf64_Shdr), elf.size());
  const auto* sections = reinterpret_cast<const Elf64_Shdr*>(elf.data() + header->e_shoff);
  const char* names = elf.data() + sections[header->e_shstrndx].sh_offset;
  const Elf64_Shdr* hot = nullptr;
  const Elf64_Shdr* text = nullptr;
  for (int i = 0; i < header->e_shnum; ++i) {
    const std::string name = names + sections[i].sh_name;
    if (name == ".text.grove_hot") hot = &sections[i];
    if (name == ".text") text = &sections[i];
  }
  ASSERT_NE(hot, nullptr) << "no .text.grove_hot section in " << Readlink("/proc/self/exe");
  ASSERT_NE(text, nullptr);
  auto in_hot = [hot](const void* f) {
    const uint64_t address = reinterpret_cast<uint64_t>(f);
    return address >= hot->sh_addr && address < hot->sh_addr + hot->sh_size;
  };
  // What every agent runs...
  EXPECT_TRUE(in_hot(reinterpret_cast<const void*>(&IsAgentInvocation)));
  EXPECT_TRUE(in_hot(reinterpret_cast<const void*>(&RunAgent)));
  // ...and not what only a context that starts remote children runs.
  EXPECT_FALSE(in_hot(reinterpret_cast<const void*>(&FirstStage)));
  EXPECT_LT(hot->sh_size, text->sh_size);
#endif
}

TEST_F(TreeTest, ManyCallsInFlightOnOneLink) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  std::vector<std::future<absl::StatusOr<test::Echo>>> calls;
  for (int i = 0; i < 2000; ++i) {
    calls.push_back(child->CallAsync<test::Echo>("echo", MakeEcho(std::to_string(i))));
  }
  for (int i = 0; i < 2000; ++i) {
    absl::StatusOr<test::Echo> reply = calls[i].get();
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->text(), child->name() + ": " + std::to_string(i));
  }
}

// ---- 2. Functions and calls ----

TEST_F(TreeTest, RemoteErrorKeepsCodeAndMessageAndNamesItsContext) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local,name=middle");
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<Context> leaf = child->Spawn("local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  test::FailRequest fail;
  fail.set_code(static_cast<int>(absl::StatusCode::kFailedPrecondition));
  fail.set_message("the disk is not mounted");
  absl::StatusOr<test::Echo> direct = leaf->Call<test::Echo>("fail", fail);
  EXPECT_EQ(direct.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(direct.status().message(), HasSubstr("the disk is not mounted"));
  EXPECT_EQ(OriginOf(direct.status()), "leaf");

  // Through a function in the middle that calls the leaf: the origin stays the leaf.
  test::Forward forward;
  forward.set_target(leaf->id().value());
  forward.set_function("fail");
  absl::StatusOr<test::Echo> nested = child->Call<test::Echo>(
      "forward", forward);  // forward's argument is Echo, not FailRequest:
  EXPECT_EQ(nested.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OriginOf(nested.status()), "leaf");
  EXPECT_THAT(nested.status().message(), HasSubstr("takes grove.test.FailRequest"));
}

TEST_F(TreeTest, DeadlineCrossesHopsAndCancelsTheCallee) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local/local");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  absl::StatusOr<v1::Empty> slept =
      leaf->Call<v1::Empty>("grove.sleep", sleep, Timeout(absl::Milliseconds(200)));
  EXPECT_EQ(slept.status().code(), absl::StatusCode::kDeadlineExceeded) << slept.status();
  EXPECT_EQ(master.router().pending_calls(), 0u);
  // The link is fine afterwards.
  EXPECT_TRUE(leaf->Ping(Timeout(absl::Seconds(10))).ok());
}

TEST_F(TreeTest, CancellationCrossesHops) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  CancelSource cancel;
  CallOptions options;
  options.cancel = &cancel;
  auto call = leaf->CallAsync<v1::Empty>("grove.sleep", sleep, options);
  ASSERT_TRUE(leaf->Ping(Timeout(absl::Seconds(10))).ok());  // The sleep is running.
  cancel.Cancel();
  EXPECT_EQ(call.get().status().code(), absl::StatusCode::kCancelled);
}

TEST_F(TreeTest, BuiltinsPingInfoRun) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local,name=worker1");
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_TRUE(child->Ping().ok());
  absl::StatusOr<v1::InfoReply> info = child->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->id(), child->id().value());
  EXPECT_EQ(info->name(), "worker1");
  EXPECT_EQ(info->parent(), 0u);
  EXPECT_NE(info->pid(), ::getpid());
  EXPECT_FALSE(info->host().empty());
  EXPECT_FALSE(info->user().empty());

  v1::RunRequest run;
  run.add_argv("sh");
  run.add_argv("-c");
  run.add_argv("cat; echo \"$GREETING\" \"$(pwd)\"; echo oops >&2; exit 3");
  run.add_env("GREETING=hi");
  run.set_cwd("/tmp");
  run.set_stdin("from stdin\n");
  absl::StatusOr<v1::RunReply> ran = child->Run(run);
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(ran->exit_status(), 3);
  EXPECT_EQ(ran->stdout(), "from stdin\nhi /tmp\n");
  EXPECT_EQ(ran->stderr(), "oops\n");

  v1::RunRequest missing;
  missing.add_argv("/nonexistent/program");
  absl::StatusOr<v1::RunReply> not_run = child->Run(missing);
  EXPECT_EQ(not_run.status().code(), absl::StatusCode::kNotFound) << not_run.status();
  EXPECT_EQ(OriginOf(not_run.status()), "worker1");
}

// ---- 3. Nesting ----

TEST_F(TreeTest, DepthTenChainAnswersByIdAndName) {
  Master master(TestFunctions(), Options());
  std::string path = "local";
  for (int i = 2; i <= 10; ++i) path += (i == 10 ? "/local,name=deepest" : "/local");
  absl::StatusOr<Context> deepest = master.SpawnPath(path);
  ASSERT_TRUE(deepest.ok()) << deepest.status();
  absl::StatusOr<Context> by_name = master.Find("deepest");
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(by_name->id(), deepest->id());
  absl::StatusOr<test::Echo> reply = by_name->Call<test::Echo>("echo", MakeEcho("down there"));
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->text(), "deepest: down there");
  absl::StatusOr<Context> by_id = master.Find(deepest->id());
  ASSERT_TRUE(by_id.ok());
  EXPECT_TRUE(by_id->Ping().ok());
  // Depth: walk parents from the deepest to the master.
  int depth = 0;
  for (ContextId id = deepest->id(); id != kMasterId; ++depth) {
    id = master.registry().Find(id)->parent;
  }
  EXPECT_EQ(depth, 10);
}

// ---- 4. Registry ----

TEST_F(TreeTest, RegistryHoldsContextsChildrenStartedOnTheirOwn) {
  // Declared before the master: its shutdown still sends events.
  std::vector<RegistryEvent> events;
  absl::Mutex mu;
  Master master(TestFunctions(), Options());
  master.registry().Subscribe([&](const RegistryEvent& e) {
    absl::MutexLock lock(&mu);
    events.push_back(e);
  });
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  // The child's router starts a child of its own (grove.spawn runs there): the master learns
  // of it only from the ContextAdded event.
  absl::StatusOr<Context> grandchild = child->Spawn("local,name=started-by-child");
  ASSERT_TRUE(grandchild.ok()) << grandchild.status();

  std::optional<ContextRecord> record = master.registry().FindByName("started-by-child");
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->parent, child->id());
  EXPECT_EQ(record->method, "local");
  EXPECT_EQ(record->state, ContextState::kConnected);
  EXPECT_GT(record->pid, 0);
  // Default names are descriptive.
  std::optional<ContextRecord> first = master.registry().Find(child->id());
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->name, absl::StrCat("local.", first->pid));
  // Ids: unique, and the grandchild's comes from a block the child got from the master.
  absl::StatusOr<Context> second = master.Spawn("local");
  ASSERT_TRUE(second.ok());
  std::set<uint64_t> ids = {child->id().value(), grandchild->id().value(),
                            second->id().value()};
  EXPECT_EQ(ids.size(), 3u);
  {
    absl::MutexLock lock(&mu);
    ASSERT_EQ(events.size(), 3u);
    EXPECT_EQ(events[1].record.name, "started-by-child");
  }
}

TEST_F(TreeTest, IdsAreNeverReused) {
  Master master(TestFunctions(), Options());
  std::set<uint64_t> ids;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<Context> child = master.Spawn("local,name=again");
    ASSERT_TRUE(child.ok()) << child.status();
    EXPECT_TRUE(ids.insert(child->id().value()).second);
    ASSERT_TRUE(child->Shutdown().ok());
  }
}

TEST_F(TreeTest, DuplicateExplicitNameIsRefused) {
  Master master(TestFunctions(), Options());
  ASSERT_TRUE(master.Spawn("local,name=twin").ok());
  absl::StatusOr<Context> second = master.Spawn("local,name=twin");
  EXPECT_EQ(second.status().code(), absl::StatusCode::kAlreadyExists) << second.status();
}

// ---- 5. Disconnects ----

TEST_F(TreeTest, KilledContextFailsPendingCallsAndMarksItsSubtreeGone) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> middle = master.Spawn("local,name=doomed");
  ASSERT_TRUE(middle.ok()) << middle.status();
  absl::StatusOr<Context> leaf = middle->Spawn("local,name=doomed-leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  absl::StatusOr<Context> other = master.Spawn("local,name=survivor");
  ASSERT_TRUE(other.ok()) << other.status();

  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  auto to_leaf = leaf->CallAsync<v1::Empty>("grove.sleep", sleep);
  auto to_middle = middle->CallAsync<v1::Empty>("grove.sleep", sleep);
  ASSERT_TRUE(leaf->Ping().ok());
  absl::StatusOr<v1::InfoReply> info = middle->Info();
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(::kill(info->pid(), SIGKILL), 0);

  absl::StatusOr<v1::Empty> leaf_result = to_leaf.get();
  EXPECT_EQ(leaf_result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(leaf_result.status().message(), HasSubstr("doomed"));
  absl::StatusOr<v1::Empty> middle_result = to_middle.get();
  EXPECT_EQ(middle_result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(middle_result.status().message(), HasSubstr("killed by signal 9"));

  EXPECT_EQ(master.registry().Find(middle->id())->state, ContextState::kGone);
  EXPECT_EQ(master.registry().Find(leaf->id())->state, ContextState::kGone);
  EXPECT_THAT(master.registry().Find(leaf->id())->reason, HasSubstr("doomed"));
  // Gone contexts fail at once; the other subtree works.
  EXPECT_EQ(leaf->Ping().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(other->Ping().ok());
}

TEST_F(TreeTest, CrashIsReportedWithItsSignal) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local,name=crasher");
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<test::Echo> r = child->Call<test::Echo>("crash", MakeEcho(""));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(r.status().message(), HasSubstr("crasher"));
  EXPECT_THAT(r.status().message(), HasSubstr("signal 6"));
}

// ---- 6. Shutdown and reaping ----

TEST_F(TreeTest, ShutdownTakesOneSubtreeDownAndLeavesTheRest) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> a = master.Spawn("local,name=a");
  absl::StatusOr<Context> b = master.Spawn("local,name=b");
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<Context> a1 = a->Spawn("local,name=a1");
  absl::StatusOr<Context> a2 = a1->Spawn("local,name=a2");
  ASSERT_TRUE(a1.ok() && a2.ok());
  std::vector<int64_t> pids;
  for (const Context& c : {*a, *a1, *a2}) pids.push_back(c.Info()->pid());

  ASSERT_TRUE(a1->Shutdown().ok());  // Its parent (a) stops it.
  EXPECT_EQ(master.registry().Find(a1->id())->state, ContextState::kGone);
  EXPECT_EQ(master.registry().Find(a2->id())->state, ContextState::kGone);
  EXPECT_NE(::kill(static_cast<pid_t>(pids[1]), 0), 0);  // Reaped, not a zombie.
  EXPECT_NE(::kill(static_cast<pid_t>(pids[2]), 0), 0);
  EXPECT_TRUE(a->Ping().ok());
  EXPECT_TRUE(b->Ping().ok());
  absl::StatusOr<test::Echo> after = a2->Call<test::Echo>("echo", MakeEcho(""));
  EXPECT_EQ(after.status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(TreeTest, AHungContextIsStillShutDownThroughSigkill) {
  MasterOptions options = Options();
  options.stop_grace = absl::Milliseconds(200);
  Master master(TestFunctions(), options);
  absl::StatusOr<Context> child = master.Spawn("local,name=hung");
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_NO_FATAL_FAILURE(Freeze(*child));
  // A call to a hung context runs into its deadline, not forever.
  EXPECT_EQ(child->Ping(Timeout(absl::Milliseconds(100))).code(),
            absl::StatusCode::kDeadlineExceeded);
  ASSERT_TRUE(child->Shutdown().ok());
  EXPECT_EQ(master.registry().Find(child->id())->state, ContextState::kGone);
  EXPECT_THAT(master.registry().Find(child->id())->reason, HasSubstr("signal 9"));
}

// A context that stops reading its link while calls keep coming: the parent queues what it
// cannot write up to GrpcClientLink::MaxQueuedBytes (1 GiB here), then drops the link, fails
// the calls and reaps the child, instead of queueing without end.
TEST_F(TreeTest, AContextThatDoesNotReadItsLinkIsDroppedPastTheQueueLimit) {
  MasterOptions options = Options();
  options.stop_grace = absl::Milliseconds(200);
  Master master(TestFunctions(), options);
  absl::StatusOr<Context> child = master.Spawn("local,name=deaf");
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_NO_FATAL_FAILURE(Freeze(*child));

  const int64_t piece = options.max_message_bytes - (1 << 20);
  const int calls = static_cast<int>(GrpcClientLink::MaxQueuedBytes(options.max_message_bytes) /
                                     piece) + 3;
  absl::Mutex mu;
  std::vector<absl::Status> outcomes;
  for (int i = 0; i < calls; ++i) {
    test::Echo echo;
    echo.mutable_text()->resize(static_cast<size_t>(piece), 'x');
    child->CallRaw("echo", test::Echo::descriptor()->full_name(), echo.SerializeAsString(), {},
                   [&](absl::StatusOr<std::string> r) {
                     absl::MutexLock lock(&mu);
                     outcomes.push_back(r.status());
                   });
  }
  {
    absl::MutexLock lock(&mu);
    auto all = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
      return static_cast<int>(outcomes.size()) == calls;
    };
    ASSERT_TRUE(mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60)))
        << outcomes.size() << " of " << calls << " calls done";
    for (const absl::Status& s : outcomes) {
      EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    }
    EXPECT_THAT(std::string(outcomes.front().message()), HasSubstr("does not read its link"));
  }
  std::optional<ContextRecord> record = master.registry().Find(child->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->state, ContextState::kGone);
  EXPECT_THAT(record->reason, HasSubstr("lost context deaf"));
  EXPECT_THAT(record->reason, HasSubstr("does not read its link"));
}

TEST_F(TreeTest, KillingTheMasterTakesTheWholeTreeDownWithinOneSecond) {
  auto out = Pipe();
  ASSERT_TRUE(out.ok());
  SpawnOptions spawn;
  spawn.argv = {Readlink("/proc/self/exe"), "--tree-master"};
  spawn.fds = {{1, out->second.get()}};
  absl::StatusOr<Process> master = Process::Spawn(spawn);
  ASSERT_TRUE(master.ok()) << master.status();
  out->second.Reset();
  std::string text;
  char buffer[256];
  while (text.find("ready\n") == std::string::npos) {
    ssize_t n = ::read(out->first.get(), buffer, sizeof(buffer));
    ASSERT_GT(n, 0) << "the tree master exited early";
    text.append(buffer, n);
  }
  std::vector<UniqueFd> contexts;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    int pid;
    if (!absl::SimpleAtoi(line, &pid)) continue;
    contexts.emplace_back(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    ASSERT_TRUE(contexts.back().valid());
  }
  ASSERT_EQ(contexts.size(), 5u);
  master->Signal(SIGKILL);
  // One second; more under a sanitizer, where each exit of a three-level tree is slower.
  absl::Time deadline = absl::Now() + absl::Seconds(1) * kSlowdown;
  for (UniqueFd& pidfd : contexts) {
    struct pollfd p = {pidfd.get(), POLLIN, 0};
    int ms = std::max<int64_t>(0, absl::ToInt64Milliseconds(deadline - absl::Now()));
    EXPECT_EQ(::poll(&p, 1, ms), 1) << "a context outlived its master by more than "
                                    << kSlowdown << " s";
  }
  EXPECT_TRUE(master->Wait(absl::Now() + absl::Seconds(5)).ok());
}

// ---- 7. Stdio and logs ----

TEST_F(TreeTest, StdoutStderrAndGlogReachTheMasterTagged) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.SpawnPath("local/local,name=talker");
  ASSERT_TRUE(child.ok()) << child.status();
  test::PrintRequest print;
  print.set_line("to stdout");
  ASSERT_TRUE(child->Call<test::Count>("print", print).ok());
  print.set_line("to stderr");
  print.set_to_stderr(true);
  ASSERT_TRUE(child->Call<test::Count>("print", print).ok());
  print.set_line("through glog");
  print.set_glog(true);
  ASSERT_TRUE(child->Call<test::Count>("print", print).ok());
  v1::RunRequest run;
  run.add_argv("echo");
  run.add_argv("from a command");
  run.set_output(v1::RunRequest::INHERIT);
  ASSERT_TRUE(child->Run(run).ok());

  auto has = [&](v1::LogRecord::Kind kind, const std::string& text) {
    return logs_.WaitFor(
        [&](const CollectedLog& l) {
          return l.context == "talker" && l.record.kind() == kind && l.record.text() == text;
        },
        absl::Seconds(10));
  };
  EXPECT_TRUE(has(v1::LogRecord::STDOUT, "to stdout"));
  EXPECT_TRUE(has(v1::LogRecord::STDERR, "to stderr"));
  EXPECT_TRUE(has(v1::LogRecord::GLOG, "through glog"));
  EXPECT_TRUE(has(v1::LogRecord::STDOUT, "from a command"));
}

// What a context prints reaches a custom sink as it was printed; the default sink writes
// it to the master's terminal with the escapes made Printable and every line tagged.
TEST_F(TreeTest, PrintedEscapesReachTheTerminalAsText) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local,name=talker");
  ASSERT_TRUE(child.ok()) << child.status();
  const std::string hostile = "\x1b[2J\x1b]0;pwned\x07\rgone";
  test::PrintRequest print;
  print.set_line(hostile);
  print.set_to_stderr(true);
  ASSERT_TRUE(child->Call<test::Count>("print", print).ok());
  print.set_line("first\n[master] forged");
  print.set_glog(true);
  ASSERT_TRUE(child->Call<test::Count>("print", print).ok());

  auto record_of = [&](const std::string& text) -> std::optional<CollectedLog> {
    std::optional<CollectedLog> found;
    logs_.WaitFor(
        [&](const CollectedLog& l) {
          if (l.context != "talker" || l.record.text() != text) return false;
          found = l;
          return true;
        },
        absl::Seconds(10));
    return found;
  };
  std::optional<CollectedLog> escapes = record_of(hostile);
  ASSERT_TRUE(escapes.has_value());
  ContextRecord from;
  from.name = "talker";
  EXPECT_EQ(FormatOutputLines(from, escapes->record),
            "[talker] \\x1b[2J\\x1b]0;pwned\\x07\\rgone\n");
  std::optional<CollectedLog> two_lines = record_of("first\n[master] forged");
  ASSERT_TRUE(two_lines.has_value());
  EXPECT_EQ(two_lines->record.kind(), v1::LogRecord::GLOG);
  EXPECT_EQ(FormatOutputLines(from, two_lines->record), "[talker] first\n[talker] [master] forged\n");
  from.name = "evil\x1b[31m";
  EXPECT_THAT(FormatOutputLines(from, escapes->record), StartsWith("[evil\\x1b[31m] \\x1b[2J"));
}

TEST_F(TreeTest, OneMebibyteOfStdoutNeitherBlocksNorCorruptsTheLink) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  test::PrintRequest print;
  print.set_bytes(1 << 20);
  absl::StatusOr<test::Count> printed =
      child->Call<test::Count>("print", print, Timeout(absl::Seconds(30)));
  ASSERT_TRUE(printed.ok()) << printed.status();
  // Every byte but the newlines arrives as text.
  EXPECT_TRUE(logs_.WaitForBytes((1 << 20) - (1 << 20) / 4096, absl::Seconds(30)));
  absl::StatusOr<test::Echo> echo = child->Call<test::Echo>("echo", MakeEcho("still fine"));
  ASSERT_TRUE(echo.ok()) << echo.status();
}

// ---- 8. Policy ----

TEST_F(TreeTest, ChildrenMayCallUpOrSidewaysOnlyWhereAllowed) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local,name=kid");
  absl::StatusOr<Context> sibling = master.Spawn("local,name=sib");
  ASSERT_TRUE(child.ok() && sibling.ok());
  auto forward = [&](uint64_t target, const std::string& function) {
    test::Forward f;
    f.set_target(target);
    f.set_function(function);
    return child->Call<test::Echo>("forward", f, Timeout(absl::Seconds(10)));
  };
  absl::StatusOr<test::Echo> up = forward(0, "echo");
  EXPECT_EQ(up.status().code(), absl::StatusCode::kPermissionDenied) << up.status();
  EXPECT_THAT(up.status().message(), HasSubstr("may not call 'echo'"));
  EXPECT_TRUE(forward(0, "for_descendants").ok());
  EXPECT_EQ(forward(sibling->id().value(), "echo").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(forward(sibling->id().value(), "for_descendants").status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(forward(sibling->id().value(), "for_anyone").ok());
  // The run built-in is never callable from below.
  EXPECT_EQ(forward(0, "grove.run").status().code(), absl::StatusCode::kPermissionDenied);
}

// ---- 9. Bad input ----

TEST_F(TreeTest, UnknownFunctionContextOrUndecodableArgumentIsAClearError) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> child = master.Spawn("local,name=strict");
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<test::Echo> unknown = child->Call<test::Echo>("no_such_function", MakeEcho(""));
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(unknown.status().message(), HasSubstr("no function 'no_such_function'"));
  EXPECT_THAT(unknown.status().message(), HasSubstr("strict"));

  Context nobody(&master.router(), ContextId(987654), "nobody");
  EXPECT_EQ(nobody.Ping().code(), absl::StatusCode::kNotFound);

  std::promise<absl::StatusOr<std::string>> raw;
  child->CallRaw("echo", "grove.test.Echo", std::string("\xff\xff\xff\xff", 4), {},
                 [&](absl::StatusOr<std::string> r) { raw.set_value(std::move(r)); });
  absl::StatusOr<std::string> garbage = raw.get_future().get();
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(garbage.status().message(), HasSubstr("cannot decode"));
  EXPECT_TRUE(child->Ping().ok());
}

TEST_F(TreeTest, OversizedMessagesAreRefusedAndTheLimitIsInherited) {
  MasterOptions options = Options();
  options.max_message_bytes = 1 << 20;
  Master master(TestFunctions(), options);
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  test::Echo big;
  big.set_payload(std::string(2 << 20, 'x'));
  absl::StatusOr<test::Echo> refused = child->Call<test::Echo>("echo", big);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  // The child has the same limit: a result over it is refused there, and the link survives.
  v1::RunRequest run;
  run.add_argv("head");
  run.add_argv("-c");
  run.add_argv("2000000");
  run.add_argv("/dev/zero");
  absl::StatusOr<v1::RunReply> too_big = child->Run(run);
  EXPECT_EQ(too_big.status().code(), absl::StatusCode::kResourceExhausted) << too_big.status();
  EXPECT_TRUE(child->Ping().ok());
}

}  // namespace
}  // namespace grove::testing
