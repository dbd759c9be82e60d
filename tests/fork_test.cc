// The `fork` method, with real processes: fork children forked from their context's zygote
// answer calls like any child, hold nothing of their parent's, differ where they must, nest,
// die visibly, and leave no zygote behind.
#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/fd.h"
#include "common/process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/support.h"
#include "tests/log_collector.h"
#include "tests/test.pb.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;

test::Echo MakeEcho(const std::string& text) {
  test::Echo e;
  e.set_text(text);
  return e;
}

// The processes whose parent is `pid`.
std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  DIR* dir = ::opendir("/proc");
  while (struct dirent* e = dir ? ::readdir(dir) : nullptr) {
    int p;
    if (absl::SimpleAtoi(e->d_name, &p) && ParentOf(p) == pid) out.push_back(p);
  }
  if (dir) ::closedir(dir);
  return out;
}

// fd number -> target of every fd of `pid`.
std::map<int, std::string> FdsOf(pid_t pid) {
  std::map<int, std::string> out;
  const std::string dir_path = absl::StrCat("/proc/", pid, "/fd");
  DIR* dir = ::opendir(dir_path.c_str());
  while (struct dirent* e = dir ? ::readdir(dir) : nullptr) {
    int fd;
    if (absl::SimpleAtoi(e->d_name, &fd)) out[fd] = Readlink(absl::StrCat(dir_path, "/", fd));
  }
  if (dir) ::closedir(dir);
  return out;
}

// The pipes and sockets (by inode: "pipe:[123]") `pid` holds.
std::set<std::string> PipesAndSocketsOf(pid_t pid) {
  std::set<std::string> out;
  for (const auto& [fd, target] : FdsOf(pid)) {
    if (absl::StartsWith(target, "pipe:") || absl::StartsWith(target, "socket:")) {
      out.insert(target);
    }
  }
  return out;
}

// True once `pid` is no longer a live process (gone or a zombie).
bool Ended(pid_t pid) {
  std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  size_t close = stat.rfind(')');
  return close == std::string::npos || stat.substr(close + 2, 1) == "Z";
}

class ForkTest : public GroveTest {
 protected:
  MasterOptions Options() {
    MasterOptions options;
    // Collected, and what the contexts write to stderr is also shown (sanitizer reports from
    // a fork child reach the test log only this way).
    options.log_sink = [sink = logs_.Sink()](const ContextRecord& from,
                                             const v1::LogRecord& record) {
      sink(from, record);
      if (record.kind() == v1::LogRecord::STDERR) LogToStderr(from, record);
    };
    options.zygote = TestZygote();
    return options;
  }
  LogCollector logs_;
};

TEST_F(ForkTest, ForkChildAnswersCallsWithItsOwnPidAndAFreshId) {
  ASSERT_NE(TestZygote(), nullptr);
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> first = master.Spawn("fork");
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<Context> second = master.Spawn("fork,name=forked");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_TRUE(first->Ping().ok());
  absl::StatusOr<test::Echo> echo = second->Call<test::Echo>("echo", MakeEcho("hi"));
  ASSERT_TRUE(echo.ok()) << echo.status();
  EXPECT_EQ(echo->text(), "forked: hi");

  absl::StatusOr<v1::InfoReply> a = first->Info();
  absl::StatusOr<v1::InfoReply> b = second->Info();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->pid(), ::getpid());
  EXPECT_NE(a->pid(), b->pid());
  EXPECT_NE(a->id(), 0u);
  EXPECT_NE(a->id(), b->id());
  EXPECT_EQ(a->id(), first->id().value());
  EXPECT_EQ(a->parent(), 0u);
  // Forked from the zygote (not exec'ed by the master): the same program, no exec.
  EXPECT_EQ(ParentOf(static_cast<pid_t>(a->pid())), TestZygote()->pid());
  EXPECT_EQ(ParentOf(TestZygote()->pid()), ::getpid());
  EXPECT_EQ(Readlink(absl::StrCat("/proc/", a->pid(), "/exe")), Readlink("/proc/self/exe"));

  std::optional<ContextRecord> record = master.registry().Find(first->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->method, "fork");
  EXPECT_EQ(record->name, absl::StrCat("fork.", a->pid()));
  EXPECT_EQ(record->pid, a->pid());
  EXPECT_EQ(record->state, ContextState::kConnected);
  EXPECT_EQ(master.registry().FindByName("forked")->method, "fork");
}

TEST_F(ForkTest, ForkChildHoldsOnlyItsLinkAndStdio) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> parent = master.Spawn("local,name=parent");
  ASSERT_TRUE(parent.ok()) << parent.status();
  for (Context context : {master.self(), *parent}) {
    absl::StatusOr<Context> child = context.Spawn("fork");
    ASSERT_TRUE(child.ok()) << child.status();
    absl::StatusOr<v1::InfoReply> info = child->Info();
    absl::StatusOr<v1::InfoReply> parent_info = context.Info();
    ASSERT_TRUE(info.ok() && parent_info.ok());
    const pid_t pid = static_cast<pid_t>(info->pid());
    const pid_t zygote = ParentOf(pid);
    EXPECT_EQ(ParentOf(zygote), parent_info->pid());

    std::map<int, std::string> fds = FdsOf(pid);
    EXPECT_EQ(fds[0], "/dev/null");
    EXPECT_THAT(fds[1], HasSubstr("pipe:"));  // Its own stdio capture.
    EXPECT_THAT(fds[2], HasSubstr("pipe:"));
    EXPECT_THAT(fds[3], HasSubstr("socket:"));  // The link.
    // Nothing it holds is held by its parent context or the zygote it came from: their
    // pipes and sockets (the other end of a pair is another inode) and no file of theirs.
    std::set<std::string> theirs = PipesAndSocketsOf(static_cast<pid_t>(parent_info->pid()));
    for (const std::string& t : PipesAndSocketsOf(zygote)) theirs.insert(t);
    for (const auto& [fd, target] : fds) {
      if (SanitizerRuntimeFd(pid, target)) continue;
      EXPECT_EQ(theirs.count(target), 0u) << "fd " << fd << " -> " << target
                                          << " is its parent's or its zygote's";
      EXPECT_FALSE(absl::StartsWith(target, "/") && target != "/dev/null")
          << "fd " << fd << " -> " << target;
    }
    // Besides the link (and the copy of it that watches for the parent's end), it holds one
    // socket: its own to the zygote, for fork children of its own.
    std::set<std::string> child_sockets;
    for (const auto& [fd, target] : fds) {
      if (absl::StartsWith(target, "socket:")) child_sockets.insert(target);
    }
    EXPECT_EQ(child_sockets.size(), 2u);
    // The zygote itself holds its context's socket, one per fork child it forked that is
    // still there (dropped when the child's end closes), one to its spare (it has one once
    // it has forked), and the spare's pidfd and its link's other end (for whoever gets the
    // spare), and its signalfd besides /dev/null stdio.
    auto zygote_sockets = [&] {
      int sockets = 0, pidfds = 0;
      for (const auto& [fd, target] : FdsOf(zygote)) {
        if (SanitizerRuntimeFd(zygote, target)) continue;
        // Closed between the listing and its reading: the zygote is at work (forking its
        // next spare, which it does once the child it handed out is up); counted again below.
        if (target.empty()) continue;
        if (fd <= 2) {
          EXPECT_EQ(target, "/dev/null");
        } else if (absl::StartsWith(target, "socket:")) {
          ++sockets;
        } else if (target == "anon_inode:[pidfd]") {
          ++pidfds;
        } else {
          EXPECT_EQ(target, "anon_inode:[signalfd]") << "zygote fd " << fd;
        }
      }
      EXPECT_LE(pidfds, 1) << "pidfds of fork children handed out are the zygote's no more";
      return sockets;
    };
    EXPECT_TRUE(WaitUntil([&] { return zygote_sockets() == 4; }))
        << "the zygote holds " << zygote_sockets() << " sockets, not 4";
    // A command it runs inherits no link: only stdio (and the listing's own directory).
    for (const Context& c : {*child, context}) {
      if (c.id() == kMasterId) continue;  // The test process holds what its runner gave it.
      v1::RunRequest run;
      run.add_argv("ls");
      run.add_argv("/proc/self/fd");
      absl::StatusOr<v1::RunReply> ran = c.Run(run);
      ASSERT_TRUE(ran.ok()) << ran.status();
      EXPECT_EQ(ran->stdout(), "0\n1\n2\n3\n") << "in " << c.name();
    }
    ASSERT_TRUE(child->Shutdown().ok());
    // The child's socket is dropped with it.
    EXPECT_TRUE(WaitUntil([&] { return zygote_sockets() == 3; }))
        << "the zygote holds " << zygote_sockets() << " sockets, not 3";
  }
}

TEST_F(ForkTest, SiblingForkChildrenDrawDifferentRandomNumbers) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> a = master.Spawn("fork");
  absl::StatusOr<Context> b = master.Spawn("fork");
  ASSERT_TRUE(a.ok() && b.ok());
  auto draw = [](const Context& c, const std::string& function) {
    absl::StatusOr<test::Count> n = c.Call<test::Count>(function, MakeEcho(""));
    EXPECT_TRUE(n.ok()) << n.status();
    return n.ok() ? n->value() : -1;
  };
  // Re-seeded by the program's fork hook (Functions::OnFork).
  EXPECT_NE(draw(*a, "random"), draw(*b, "random"));
  // libc's generator, re-seeded by grove in every fork child.
  EXPECT_NE(draw(*a, "random_libc"), draw(*b, "random_libc"));
  // What nothing re-seeds is inherited as it was when the zygote started: the same in both
  // (which is why the hook exists).
  EXPECT_EQ(draw(*a, "random_unseeded"), draw(*b, "random_unseeded"));
}

TEST_F(ForkTest, ForkChildLogsAndStartsChildrenOfItsOwn) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> forked = master.Spawn("fork,name=forked");
  ASSERT_TRUE(forked.ok()) << forked.status();
  test::PrintRequest print;
  print.set_line("fork stdout");
  ASSERT_TRUE(forked->Call<test::Count>("print", print).ok());
  print.set_line("fork stderr");
  print.set_to_stderr(true);
  ASSERT_TRUE(forked->Call<test::Count>("print", print).ok());
  print.set_line("fork glog");
  print.set_glog(true);
  ASSERT_TRUE(forked->Call<test::Count>("print", print).ok());
  auto has = [&](v1::LogRecord::Kind kind, const std::string& text) {
    return logs_.WaitFor(
        [&](const CollectedLog& l) {
          return l.context == "forked" && l.record.kind() == kind && l.record.text() == text;
        },
        absl::Seconds(10));
  };
  EXPECT_TRUE(has(v1::LogRecord::STDOUT, "fork stdout"));
  EXPECT_TRUE(has(v1::LogRecord::STDERR, "fork stderr"));
  EXPECT_TRUE(has(v1::LogRecord::GLOG, "fork glog"));

  // Allocates, spawns: no lock was inherited held.
  test::Echo big;
  big.set_payload(std::string(8 << 20, 'f'));
  absl::StatusOr<test::Echo> echoed = forked->Call<test::Echo>("echo", big);
  ASSERT_TRUE(echoed.ok()) << echoed.status();
  EXPECT_EQ(echoed->payload().size(), big.payload().size());
  absl::StatusOr<Context> local = forked->Spawn("local,name=forked-local");
  ASSERT_TRUE(local.ok()) << local.status();
  absl::StatusOr<Context> fork = forked->Spawn("fork,name=forked-fork");
  ASSERT_TRUE(fork.ok()) << fork.status();
  EXPECT_EQ(local->Call<test::Echo>("echo", MakeEcho("x"))->text(), "forked-local: x");
  EXPECT_EQ(fork->Call<test::Echo>("echo", MakeEcho("y"))->text(), "forked-fork: y");
  EXPECT_EQ(master.registry().FindByName("forked-fork")->parent, forked->id());
}

TEST_F(ForkTest, ForkOfAForkChild) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("fork/fork,name=ff");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  absl::StatusOr<test::Echo> echo = leaf->Call<test::Echo>("echo", MakeEcho("deep"));
  ASSERT_TRUE(echo.ok()) << echo.status();
  EXPECT_EQ(echo->text(), "ff: deep");
  std::optional<ContextRecord> ff = master.registry().Find(leaf->id());
  ASSERT_TRUE(ff.has_value());
  EXPECT_EQ(ff->method, "fork");
  std::optional<ContextRecord> middle = master.registry().Find(ff->parent);
  ASSERT_TRUE(middle.has_value());
  EXPECT_EQ(middle->method, "fork");
  EXPECT_EQ(middle->parent, kMasterId);
  // Forked by the zygote the middle one came from (the master's): a fork child starts no
  // zygote of its own.
  EXPECT_EQ(ParentOf(static_cast<pid_t>(ff->pid)), TestZygote()->pid());
  EXPECT_EQ(ParentOf(static_cast<pid_t>(middle->pid)), TestZygote()->pid());
  EXPECT_TRUE(ChildrenOf(static_cast<pid_t>(middle->pid)).empty());
  absl::StatusOr<v1::InfoReply> info = leaf->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->pid(), ff->pid);
}

TEST_F(ForkTest, ForkFromALocalChild) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local,name=host/fork,name=lf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  EXPECT_EQ(leaf->Call<test::Echo>("echo", MakeEcho("z"))->text(), "lf: z");
  std::optional<ContextRecord> record = master.registry().FindByName("lf");
  std::optional<ContextRecord> host = master.registry().FindByName("host");
  ASSERT_TRUE(record.has_value() && host.has_value());
  EXPECT_EQ(record->method, "fork");
  EXPECT_EQ(record->parent, host->id);
  EXPECT_EQ(ParentOf(ParentOf(static_cast<pid_t>(record->pid))), host->pid);
}

TEST_F(ForkTest, KilledForkChildFailsPendingCallsAndIsMarkedGone) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> doomed = master.Spawn("fork,name=doomed-fork");
  ASSERT_TRUE(doomed.ok()) << doomed.status();
  absl::StatusOr<Context> other = master.Spawn("fork,name=other-fork");
  ASSERT_TRUE(other.ok()) << other.status();
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  auto pending = doomed->CallAsync<v1::Empty>("grove.sleep", sleep);
  absl::StatusOr<v1::InfoReply> info = doomed->Info();
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(::kill(static_cast<pid_t>(info->pid()), SIGKILL), 0);
  absl::StatusOr<v1::Empty> result = pending.get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(result.status().message(), HasSubstr("doomed-fork"));
  EXPECT_THAT(result.status().message(), HasSubstr("killed by signal 9 (Killed)"));
  std::optional<ContextRecord> record = master.registry().Find(doomed->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->state, ContextState::kGone);
  EXPECT_THAT(record->reason, HasSubstr("killed by signal 9"));
  EXPECT_EQ(doomed->Ping().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(other->Ping().ok());
  // The zygote reaped it.
  EXPECT_TRUE(Ended(static_cast<pid_t>(info->pid())));
}

TEST_F(ForkTest, AForkChildHearsHowItsOwnForkChildrenEnded) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> middle = master.Spawn("fork,name=middle");
  ASSERT_TRUE(middle.ok()) << middle.status();
  absl::StatusOr<Context> leaf = middle->Spawn("fork,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  absl::StatusOr<Context> sibling = middle->Spawn("fork,name=sibling");
  ASSERT_TRUE(sibling.ok()) << sibling.status();
  absl::StatusOr<v1::InfoReply> info = leaf->Info();
  ASSERT_TRUE(info.ok());
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  auto pending = leaf->CallAsync<v1::Empty>("grove.sleep", sleep);
  ASSERT_EQ(::kill(static_cast<pid_t>(info->pid()), SIGKILL), 0);
  // The report came from the zygote to the middle one, over the middle one's socket.
  absl::StatusOr<v1::Empty> result = pending.get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(result.status().message(), HasSubstr("killed by signal 9 (Killed)"));
  std::optional<ContextRecord> record = master.registry().Find(leaf->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_THAT(record->reason, HasSubstr("killed by signal 9"));
  EXPECT_TRUE(Ended(static_cast<pid_t>(info->pid())));
  // The middle one still forks; a killed middle takes its subtree with it.
  absl::StatusOr<Context> again = middle->Spawn("fork,name=again");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->Call<test::Echo>("echo", MakeEcho("a"))->text(), "again: a");
  absl::StatusOr<v1::InfoReply> middle_info = middle->Info();
  absl::StatusOr<v1::InfoReply> again_info = again->Info();
  absl::StatusOr<v1::InfoReply> sibling_info = sibling->Info();
  ASSERT_TRUE(middle_info.ok() && again_info.ok() && sibling_info.ok());
  ASSERT_EQ(::kill(static_cast<pid_t>(middle_info->pid()), SIGKILL), 0);
  for (const v1::InfoReply* i : {&*middle_info, &*again_info, &*sibling_info}) {
    EXPECT_TRUE(WaitUntil([&] { return Ended(static_cast<pid_t>(i->pid())); }))
        << "pid " << i->pid() << " outlived its killed parent";
  }
  EXPECT_EQ(again->Ping().code(), absl::StatusCode::kUnavailable);
  // The zygote still serves the master.
  absl::StatusOr<Context> after = master.Spawn("fork");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(after->Ping().ok());
}

TEST_F(ForkTest, AChildContextStartsItsZygoteOnItsFirstFork) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> host = master.Spawn("local,name=host");
  ASSERT_TRUE(host.ok()) << host.status();
  absl::StatusOr<v1::InfoReply> info = host->Info();
  ASSERT_TRUE(info.ok());
  const pid_t host_pid = static_cast<pid_t>(info->pid());
  EXPECT_TRUE(ChildrenOf(host_pid).empty()) << "a zygote before any fork";
  absl::StatusOr<Context> first = host->Spawn("fork,name=first");
  ASSERT_TRUE(first.ok()) << first.status();
  std::vector<pid_t> zygotes = ChildrenOf(host_pid);
  ASSERT_EQ(zygotes.size(), 1u);
  // The same program, run again (not a copy of the running context).
  EXPECT_EQ(Readlink(absl::StrCat("/proc/", zygotes[0], "/exe")), Readlink("/proc/self/exe"));
  EXPECT_THAT(ReadFile(absl::StrCat("/proc/", zygotes[0], "/cmdline")),
              HasSubstr("--grove-zygote"));
  EXPECT_EQ(ParentOf(static_cast<pid_t>(first->Info()->pid())), zygotes[0]);
  // Later forks, and forks of its fork children, come from the same one.
  absl::StatusOr<Context> second = host->Spawn("fork,name=second");
  ASSERT_TRUE(second.ok()) << second.status();
  absl::StatusOr<Context> nested = first->Spawn("fork,name=nested");
  ASSERT_TRUE(nested.ok()) << nested.status();
  EXPECT_EQ(ParentOf(static_cast<pid_t>(second->Info()->pid())), zygotes[0]);
  EXPECT_EQ(ParentOf(static_cast<pid_t>(nested->Info()->pid())), zygotes[0]);
  EXPECT_EQ(nested->Call<test::Echo>("echo", MakeEcho("n"))->text(), "nested: n");
  EXPECT_EQ(ChildrenOf(host_pid), zygotes);
}

// The processes whose parent is `pid` and whose name (comm) is "grove-spare".
std::vector<pid_t> SparesOf(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t child : ChildrenOf(pid)) {
    if (ReadFile(absl::StrCat("/proc/", child, "/comm")) == "grove-spare\n") out.push_back(child);
  }
  return out;
}

TEST_F(ForkTest, TheNextForkChildIsTheZygotesSpare) {
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> host = master.Spawn("local,name=host");
  ASSERT_TRUE(host.ok()) << host.status();
  absl::StatusOr<Context> first = host->Spawn("fork,name=first");
  ASSERT_TRUE(first.ok()) << first.status();
  const pid_t zygote = ParentOf(static_cast<pid_t>(first->Info()->pid()));
  // Forked once, the zygote keeps one spare (forked on no request: the first fork child
  // was forked on its request).
  std::vector<pid_t> spares;
  ASSERT_TRUE(WaitUntil([&] { return (spares = SparesOf(zygote)).size() == 1; }))
      << SparesOf(zygote).size() << " spares";
  const pid_t spare = spares[0];
  // The next fork child is that spare, named and numbered like any other child; the zygote
  // forks a new spare.
  absl::StatusOr<Context> second = host->Spawn("fork,name=second");
  ASSERT_TRUE(second.ok()) << second.status();
  absl::StatusOr<v1::InfoReply> info = second->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pid(), spare);
  EXPECT_EQ(info->name(), "second");
  EXPECT_NE(info->id(), first->id().value());
  EXPECT_EQ(ReadFile(absl::StrCat("/proc/", spare, "/comm")),
            ReadFile(absl::StrCat("/proc/", first->Info()->pid(), "/comm")));
  EXPECT_EQ(second->Call<test::Echo>("echo", MakeEcho("s"))->text(), "second: s");
  ASSERT_TRUE(WaitUntil([&] { return (spares = SparesOf(zygote)).size() == 1; }));
  EXPECT_NE(spares[0], spare);
  // It starts fork children of its own (the zygote's next spare).
  absl::StatusOr<Context> nested = second->Spawn("fork,name=nested");
  ASSERT_TRUE(nested.ok()) << nested.status();
  EXPECT_EQ(nested->Call<test::Echo>("echo", MakeEcho("n"))->text(), "nested: n");
  // A spare killed before it is handed out costs only its speed: the next child is forked
  // on request, and a new spare follows.
  ASSERT_TRUE(WaitUntil([&] { return (spares = SparesOf(zygote)).size() == 1; }));
  UniqueFd killed(static_cast<int>(::syscall(SYS_pidfd_open, spares[0], 0)));
  ASSERT_TRUE(killed.valid());
  ASSERT_EQ(::kill(spares[0], SIGKILL), 0);
  struct pollfd p = {killed.get(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);  // Dead (its zygote hears of it first).
  absl::StatusOr<Context> third = host->Spawn("fork,name=third");
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_NE(third->Info()->pid(), spares[0]);
  EXPECT_TRUE(third->Ping().ok());
  EXPECT_TRUE(WaitUntil([&] { return SparesOf(zygote).size() == 1; }));
}

TEST_F(ForkTest, ZygoteEndsWithItsContext) {
  Master master(TestFunctions(), Options());
  for (bool kill : {false, true}) {
    absl::StatusOr<Context> host = master.Spawn("local");
    ASSERT_TRUE(host.ok()) << host.status();
    absl::StatusOr<v1::InfoReply> info = host->Info();
    ASSERT_TRUE(info.ok());
    absl::StatusOr<Context> forked = host->Spawn("fork");
    ASSERT_TRUE(forked.ok()) << forked.status();
    const pid_t zygote = ParentOf(static_cast<pid_t>(forked->Info()->pid()));
    ASSERT_EQ(ParentOf(zygote), info->pid());
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, zygote, 0)));
    ASSERT_TRUE(pidfd.valid());
    std::vector<pid_t> spares;
    ASSERT_TRUE(WaitUntil([&] { return (spares = SparesOf(zygote)).size() == 1; }));
    UniqueFd spare(static_cast<int>(::syscall(SYS_pidfd_open, spares[0], 0)));
    ASSERT_TRUE(spare.valid());
    if (!kill) {
      // A clean exit: the context stops its zygote and reaps it before it exits.
      ASSERT_TRUE(host->Shutdown().ok());
      EXPECT_NE(::kill(zygote, 0), 0) << "the zygote was not reaped by its context";
    } else {
      // Its context killed: the zygote sees its socket close and exits.
      ASSERT_EQ(::kill(static_cast<pid_t>(info->pid()), SIGKILL), 0);
      struct pollfd p = {pidfd.get(), POLLIN, 0};
      EXPECT_EQ(::poll(&p, 1, 2000), 1) << "the zygote outlived its context by 2 s";
    }
    // Its spare goes with it.
    struct pollfd p = {spare.get(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 2000), 1) << "the spare outlived its zygote by 2 s";
  }
}

TEST_F(ForkTest, AContextWithoutAZygoteRefusesForkClearly) {
  {
    MasterOptions options = Options();
    options.zygote = nullptr;
    Master master(TestFunctions(), options);
    absl::StatusOr<Context> refused = master.Spawn("fork");
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(refused.status().message(), HasSubstr("no zygote"));
  }
  Master master(TestFunctions(), Options());
  absl::StatusOr<Context> host = master.Spawn("local,name=zygote-killed");
  ASSERT_TRUE(host.ok()) << host.status();
  absl::StatusOr<v1::InfoReply> info = host->Info();
  ASSERT_TRUE(info.ok());
  ASSERT_TRUE(host->Spawn("fork").ok());  // Starts its zygote.
  std::vector<pid_t> zygotes = ChildrenOf(static_cast<pid_t>(info->pid()));
  ASSERT_EQ(zygotes.size(), 1u);
  ASSERT_EQ(::kill(zygotes[0], SIGKILL), 0);
  absl::StatusOr<Context> refused = host->Spawn("fork");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("zygote"));
  EXPECT_THAT(refused.status().message(), HasSubstr("killed by signal 9"));
  EXPECT_THAT(refused.status().message(), HasSubstr("zygote-killed"));
  // The context itself is fine, and reaped its zygote.
  EXPECT_TRUE(host->Ping().ok());
  EXPECT_TRUE(ChildrenOf(static_cast<pid_t>(info->pid())).empty());
  EXPECT_TRUE(host->Spawn("local").ok());
  // Bad hops are refused before anything starts.
  EXPECT_EQ(master.Spawn("fork:target").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(master.Spawn("fork,colour=red").status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace grove::testing
