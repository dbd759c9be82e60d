// Remote contexts, for real: commands that change identity or namespace, a real sshd on
// loopback, real sudo with users and sudoers rules created for the test.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/payload.h"
#include "launch/remote_launcher.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/sshd.h"
#include "tests/test.pb.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kUser[] = "grove-test";        // In sudoers, with a password.
constexpr char kOther[] = "grove-other";      // Not in sudoers.
constexpr char kPassword[] = "grove-pass-1";

class RemoteTest : public GroveTest {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0) return;
    // Users and a sudo rule that requires a password, created for these tests.
    Shell(absl::StrCat(
        "for u in ", kUser, " ", kOther, "; do id $u >/dev/null 2>&1 || useradd -m -s /bin/sh $u;",
        " echo $u:", kPassword, " | chpasswd; done;",
        "echo '", kUser, " ALL=(ALL) ALL' > /etc/sudoers.d/grove-test;",
        "chmod 440 /etc/sudoers.d/grove-test"));
    absl::StatusOr<std::unique_ptr<Sshd>> sshd = Sshd::Start();
    if (sshd.ok()) {
      sshd_ = sshd->release();
      Shell(absl::StrCat("cd ", sshd_->dir(), "/keys && cp root ", kUser, " && cp root ", kOther));
    } else {
      LOG(WARNING) << "no sshd: " << sshd.status();
    }
  }
  static void TearDownTestSuite() {
    delete sshd_;
    sshd_ = nullptr;
  }
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root (users, sudo, sshd)";
    GroveTest::SetUp();
    char tmpl[] = "/tmp/grove-cache.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    cache_ = tmpl;
  }
  void TearDown() override {
    if (::geteuid() != 0) return;
    GroveTest::TearDown();
    Shell("rm -rf " + cache_);
  }
  Sshd& sshd() { return *sshd_; }

  static Sshd* sshd_;
  std::string cache_;
};

Sshd* RemoteTest::sshd_ = nullptr;

TEST_F(RemoteTest, FirstContactUploadsOnceThenTheAgentRunsFromTheCache) {
  Master master(TestFunctions());
  const std::string hop = "command:sh,cache_dir=" + cache_;
  int64_t uploads = GlobalBootstrapCounters().uploads;
  absl::StatusOr<Context> first = master.Spawn(hop);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(GlobalBootstrapCounters().uploads, uploads + 1);
  absl::StatusOr<const Payload*> payload = ThisProgram();
  ASSERT_TRUE(payload.ok());
  absl::StatusOr<v1::InfoReply> info = first->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  // The remote agent is the cached file, not the build tree's binary.
  EXPECT_EQ(Readlink(absl::StrCat("/proc/", info->pid(), "/exe")),
            cache_ + "/" + (*payload)->sha256);
  int64_t sent = GlobalBootstrapCounters().bytes_sent;
  absl::StatusOr<Context> second = master.Spawn(hop);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(GlobalBootstrapCounters().uploads, uploads + 1);  // Nothing uploaded again.
  EXPECT_LT(GlobalBootstrapCounters().bytes_sent - sent, 4096);
  absl::StatusOr<test::Echo> echo = second->Call<test::Echo>("echo", test::Echo());
  ASSERT_TRUE(echo.ok()) << echo.status();
  // The registry names show the chain.
  EXPECT_EQ(master.registry().Find(second->id())->name, "command.sh");
}

TEST_F(RemoteTest, CommandThatChangesIdentity) {
  Master master(TestFunctions());
  absl::StatusOr<Context> nobody = master.Spawn(
      "command:setpriv --reuid=nobody --regid=nogroup --clear-groups sh,cache_dir=" + cache_ +
      "/nobody");
  // The cache under another user's name is refused by that user: expect the fallback.
  if (!nobody.ok()) {
    nobody = master.Spawn("command:setpriv --reuid=nobody --regid=nogroup --clear-groups sh");
  }
  ASSERT_TRUE(nobody.ok()) << nobody.status();
  absl::StatusOr<v1::InfoReply> info = nobody->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->user(), "nobody");
}

TEST_F(RemoteTest, CommandThatEntersANetworkNamespace) {
  Master master(TestFunctions());
  absl::StatusOr<Context> netns = master.Spawn("command:unshare --net sh,cache_dir=" + cache_);
  ASSERT_TRUE(netns.ok()) << netns.status();
  v1::RunRequest run;
  run.add_argv("readlink");
  run.add_argv("/proc/self/ns/net");
  absl::StatusOr<v1::RunReply> ran = netns->Run(run);
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_NE(ran->stdout(), Readlink("/proc/self/ns/net") + "\n");
}

TEST_F(RemoteTest, SshThenSudoToAnUnprivilegedUser) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  Master master(TestFunctions());
  absl::StatusOr<Context> remote =
      master.SpawnPath(sshd().Hop("root") + ",cache_dir=" + cache_ + "/sudo:nobody");
  ASSERT_TRUE(remote.ok()) << remote.status();
  absl::StatusOr<v1::InfoReply> info = remote->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->user(), "nobody");
  std::optional<ContextRecord> record = master.registry().Find(remote->id());
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->method, "sudo");
  EXPECT_THAT(record->name, HasSubstr("ssh.root@127.0.0.1"));
  EXPECT_THAT(record->name, HasSubstr(".sudo.nobody"));
  // And back: the ssh context (root) still answers.
  absl::StatusOr<Context> ssh = master.Find(record->parent);
  ASSERT_TRUE(ssh.ok());
  EXPECT_EQ(ssh->Info()->user(), "root");
}

TEST_F(RemoteTest, CliRunsThroughSshAndSudo) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  const char* srcdir = ::getenv("TEST_SRCDIR");
  std::string grove = srcdir ? std::string(srcdir) + "/grove/tools/grove" : "bazel-bin/tools/grove";
  auto out = Pipe();
  ASSERT_TRUE(out.ok());
  SpawnOptions spawn;
  spawn.argv = {grove, "run", sshd().Hop("root") + "/sudo:nobody", "--", "id", "-un"};
  spawn.fds = {{1, out->second.get()}};
  absl::StatusOr<Process> cli = Process::Spawn(spawn);
  ASSERT_TRUE(cli.ok()) << cli.status();
  out->second.Reset();
  std::string text;
  char buffer[256];
  for (ssize_t n; (n = ::read(out->first.get(), buffer, sizeof(buffer))) > 0;) text.append(buffer, n);
  absl::StatusOr<int> status = cli->Wait(absl::Now() + absl::Seconds(60));
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(ExitCodeOf(*status), 0);
  EXPECT_EQ(text, "nobody\n");
}

TEST_F(RemoteTest, SshFailuresAreDistinct) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  Master master(TestFunctions());
  const std::string base = absl::StrCat("ssh:root@127.0.0.1:", sshd().port(), ",cache_dir=", cache_);
  absl::StatusOr<Context> unknown_key = master.Spawn(
      absl::StrCat(base, ",identity=", sshd().identity(), ",ssh_option=UserKnownHostsFile=/dev/null"));
  EXPECT_EQ(unknown_key.status().code(), absl::StatusCode::kFailedPrecondition) << unknown_key.status();
  EXPECT_THAT(unknown_key.status().message(), HasSubstr("host key unknown"));

  absl::StatusOr<Context> refused = master.Spawn(absl::StrCat(
      base, ",identity=", sshd().stranger_identity(),
      ",ssh_option=UserKnownHostsFile=", sshd().known_hosts()));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  EXPECT_THAT(refused.status().message(), HasSubstr("authentication refused"));

  int closed_port = sshd().port() == 1 ? 2 : 1;  // Nothing listens on ports below 1024 here.
  absl::StatusOr<Context> unreachable = master.Spawn(absl::StrCat(
      "ssh:root@127.0.0.1:", closed_port, ",identity=", sshd().identity()));
  EXPECT_EQ(unreachable.status().code(), absl::StatusCode::kUnavailable) << unreachable.status();
  EXPECT_THAT(unreachable.status().message(), HasSubstr("host unreachable"));

  const std::string as_user = absl::StrCat("ssh:", kUser, "@127.0.0.1:", sshd().port(),
                                           ",ssh_option=UserKnownHostsFile=", sshd().known_hosts(),
                                           ",cache_dir=/tmp/grove-cache-", kUser);
  absl::StatusOr<Context> wrong = master.Spawn(as_user + ",password=not-the-password");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  EXPECT_THAT(wrong.status().message(), HasSubstr("password wrong"));
  EXPECT_THAT(wrong.status().message(), ::testing::Not(HasSubstr("not-the-password")));

  absl::StatusOr<Context> right = master.Spawn(absl::StrCat(as_user, ",password=", kPassword));
  ASSERT_TRUE(right.ok()) << right.status();
  EXPECT_EQ(right->Info()->user(), kUser);
}

TEST_F(RemoteTest, SudoPromptPaths) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  Master master(TestFunctions());
  auto ssh_as = [&](const char* user) {
    return master.Spawn(absl::StrCat("ssh:", user, "@127.0.0.1:", sshd().port(), ",identity=",
                                     sshd().identity(), ",ssh_option=UserKnownHostsFile=",
                                     sshd().known_hosts(), ",cache_dir=/tmp/grove-cache-", user));
  };
  absl::StatusOr<Context> user = ssh_as(kUser);
  ASSERT_TRUE(user.ok()) << user.status();
  absl::StatusOr<Context> no_password = user->Spawn("sudo:root");
  EXPECT_EQ(no_password.status().code(), absl::StatusCode::kUnauthenticated)
      << no_password.status();
  EXPECT_THAT(no_password.status().message(), HasSubstr("password required"));
  absl::StatusOr<Context> wrong = user->Spawn("sudo:root,password=wrong-one");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  EXPECT_THAT(wrong.status().message(), HasSubstr("password incorrect"));
  absl::StatusOr<Context> root = user->Spawn(absl::StrCat("sudo:root,password=", kPassword));
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(root->Info()->user(), "root");

  absl::StatusOr<Context> unknown = master.Spawn("sudo:no-such-user-here");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound) << unknown.status();
  EXPECT_THAT(unknown.status().message(), HasSubstr("user unknown"));

  absl::StatusOr<Context> other = ssh_as(kOther);
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<Context> denied = other->Spawn(absl::StrCat("sudo:root,password=", kPassword));
  EXPECT_EQ(denied.status().code(), absl::StatusCode::kPermissionDenied) << denied.status();
  EXPECT_THAT(denied.status().message(), HasSubstr("not allowed"));
}

TEST_F(RemoteTest, AKilledRemoteAgentFailsCallsAndLeavesNothing) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  Master master(TestFunctions());
  absl::StatusOr<Context> remote = master.Spawn(sshd().Hop("root") + ",cache_dir=" + cache_);
  ASSERT_TRUE(remote.ok()) << remote.status();
  absl::StatusOr<v1::InfoReply> info = remote->Info();
  ASSERT_TRUE(info.ok());
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  auto pending = remote->CallAsync<v1::Empty>("grove.sleep", sleep);
  ASSERT_TRUE(remote->Ping().ok());
  ASSERT_EQ(::kill(static_cast<pid_t>(info->pid()), SIGKILL), 0);
  absl::StatusOr<v1::Empty> r = pending.get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(r.status().message(), HasSubstr("ssh.root@127.0.0.1"));
  EXPECT_EQ(remote->Ping().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace grove::testing
