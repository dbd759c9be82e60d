// Remote contexts, for real: commands that change identity or namespace, a real sshd on
// loopback, real sudo with users and sudoers rules created for the test, in this test's
// private view of the system only (tests/private_system.h): nobody else ever sees them.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "glog/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "launch/payload.h"
#include "launch/remote_launcher.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/log_collector.h"
#include "tests/private_system.h"
#include "tests/sshd.h"
#include "tests/test.pb.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kUser[] = "grove-test";        // In sudoers, with a password.
constexpr char kOther[] = "grove-other";      // Not in sudoers.
constexpr char kNoShell[] = "grove-noshell";  // Logs in chrooted where there is no sh.
constexpr char kChroot[] = "/srv/grove-test-chroot";  // /srv is private (tmpfs, root, 0755).

// The test users' password: made up for this run, never written down.
const std::string& Password() {
  static const std::string* password = [] {
    std::ifstream random("/dev/urandom", std::ios::binary);
    unsigned char bytes[12] = {};
    random.read(reinterpret_cast<char*>(bytes), sizeof(bytes));
    std::string hex;
    for (unsigned char b : bytes) absl::StrAppend(&hex, absl::Hex(b, absl::kZeroPad2));
    return new std::string(hex);
  }();
  return *password;
}

class RemoteTest : public GroveTest {
 protected:
  static void SetUpTestSuite() {
    if (::geteuid() != 0 || !PrivateSystem()) return;
    // Users and a sudo rule that requires a password, created for these tests in the
    // private view of the system.
    Shell(absl::StrCat(
        "for u in ", kUser, " ", kOther, "; do id $u >/dev/null 2>&1 || useradd -m -s /bin/sh $u;",
        " echo $u:", Password(), " | chpasswd; done;",
        "echo '", kUser, " ALL=(ALL) ALL' > /etc/sudoers.d/grove-test;",
        "chmod 440 /etc/sudoers.d/grove-test;",
        "id ", kNoShell, " >/dev/null 2>&1 || useradd -m -s /bin/sh ", kNoShell, ";",
        // sshd wants every part of a chroot path owned by root and not writable by others.
        "mkdir -p ", kChroot, "; chmod 755 ", kChroot));
    SshdOptions options;
    options.extra_config = absl::StrCat("Match User ", kNoShell, "\n  ChrootDirectory ", kChroot);
    absl::StatusOr<std::unique_ptr<Sshd>> sshd = Sshd::Start(options);
    if (sshd.ok()) {
      sshd_ = sshd->release();
      Shell(absl::StrCat("cd ", sshd_->dir(), "/keys && cp root ", kUser, " && cp root ", kOther,
                         " && cp root ", kNoShell));
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
    if (!PrivateSystem()) GTEST_SKIP() << "needs a private view of the system for its users";
    GroveTest::SetUp();
    char tmpl[] = "/tmp/grove-cache.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    cache_ = tmpl;
  }
  void TearDown() override {
    if (::geteuid() != 0 || !PrivateSystem()) return;
    GroveTest::TearDown();
    Shell("rm -rf " + cache_);
  }
  Sshd& sshd() { return *sshd_; }

  // What the first stage runs on a target without zstd.
  static constexpr char kFirstStageTools[] = "sh uname mkdir id chmod mktemp head gzip mv rm ls";

  // A command: hop to sh on a PATH of `tools` only, each a link to `program` (a shell word;
  // $t is the tool's name), with its cache in cache_/c.
  std::string TargetWithOnly(const std::string& tools, const std::string& program) {
    const std::string bin = cache_ + "/bin";
    EXPECT_EQ(Shell(absl::StrCat("mkdir -p ", bin, " && for t in ", tools, "; do ln -s ", program,
                                 " ", bin, "/$t || exit 1; done")),
              0);
    return absl::StrCat("command:env PATH=", bin, " sh,cache_dir=", cache_, "/c");
  }

  // Spawns `hop`, expecting it to take one upload, gzip.
  absl::StatusOr<Context> SpawnWithAGzipUpload(Master& master, const std::string& hop) {
    const int64_t uploads = GlobalBootstrapCounters().uploads;
    const int64_t zstd_uploads = GlobalBootstrapCounters().zstd_uploads;
    absl::StatusOr<Context> child = master.Spawn(hop);
    if (child.ok()) {
      EXPECT_EQ(GlobalBootstrapCounters().uploads, uploads + 1);
      EXPECT_EQ(GlobalBootstrapCounters().zstd_uploads, zstd_uploads);
    }
    return child;
  }

  static Sshd* sshd_;
  std::string cache_;
};

Sshd* RemoteTest::sshd_ = nullptr;

// The pid of this process's child whose command is `comm`, or 0.
int ChildNamed(const std::string& comm) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    if (!absl::ascii_isdigit(entry.path().filename().string()[0])) continue;
    std::ifstream in(entry.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t open = stat.find('('), close = stat.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    int ppid = 0;
    char state;
    if (std::sscanf(stat.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
    if (ppid == ::getpid() && stat.substr(open + 1, close - open - 1) == comm) {
      return std::atoi(stat.c_str());
    }
  }
  return 0;
}

TEST_F(RemoteTest, FirstContactUploadsOnceThenTheAgentRunsFromTheCache) {
  Master master(TestFunctions());
  const std::string hop = "command:sh,cache_dir=" + cache_;
  int64_t uploads = GlobalBootstrapCounters().uploads;
  int64_t zstd_uploads = GlobalBootstrapCounters().zstd_uploads;
  absl::StatusOr<Context> first = master.Spawn(hop);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(GlobalBootstrapCounters().uploads, uploads + 1);
  // tools/setup installs zstd here: the target has it, so the upload is zstd.
  EXPECT_EQ(GlobalBootstrapCounters().zstd_uploads, zstd_uploads + 1);
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

TEST_F(RemoteTest, AStaleCachedAgentIsReplacedByAFreshUpload) {
  Master master(TestFunctions());
  const std::string hop = "command:sh,cache_dir=" + cache_;
  absl::StatusOr<Context> first = master.Spawn(hop);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(first->Shutdown().ok());
  absl::StatusOr<const Payload*> payload = ThisProgram();
  ASSERT_TRUE(payload.ok());
  // Still a program that runs (trailing bytes), but no longer the one with this digest.
  const std::string cached = cache_ + "/" + (*payload)->sha256;
  ASSERT_EQ(Shell("printf x >> " + cached), 0);
  ASSERT_NE(Shell(absl::StrCat(cached, " --grove-verify=", (*payload)->sha256)), 0);
  int64_t uploads = GlobalBootstrapCounters().uploads;
  absl::StatusOr<Context> second = master.Spawn(hop);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(GlobalBootstrapCounters().uploads, uploads + 1);
  EXPECT_TRUE(second->Ping().ok());
  EXPECT_EQ(Shell(absl::StrCat(cached, " --grove-verify=", (*payload)->sha256)), 0);
}

TEST_F(RemoteTest, AnUploadRemovesOlderBuildsButNothingElse) {
  // Five older builds (named like digests, a day apart) and a file that is not one.
  std::string make;
  for (int i = 0; i < 5; ++i) {
    absl::StrAppend(&make, "touch -d '", i + 1, " days ago' ", cache_, "/", std::string(63, 'a'),
                    i, ";");
  }
  ASSERT_EQ(Shell(make + "touch -d '9 days ago' " + cache_ + "/notes.txt"), 0);
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("command:sh,cache_dir=" + cache_);
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<const Payload*> payload = ThisProgram();
  ASSERT_TRUE(payload.ok());
  std::vector<std::string> left;
  for (const auto& entry : std::filesystem::directory_iterator(cache_)) {
    left.push_back(entry.path().filename().string());
  }
  // This build and the three newest others (kKeptBuilds = 4); the other file stays.
  EXPECT_THAT(left, ::testing::UnorderedElementsAre(
                        (*payload)->sha256, std::string(63, 'a') + "0",
                        std::string(63, 'a') + "1", std::string(63, 'a') + "2", "notes.txt"));
}

TEST_F(RemoteTest, ACacheDirectoryThatIsASymlinkIsRefused) {
  ASSERT_EQ(Shell("mkdir " + cache_ + "/real && ln -s real " + cache_ + "/link"), 0);
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("command:sh,cache_dir=" + cache_ + "/link");
  ASSERT_FALSE(child.ok());
  EXPECT_THAT(child.status().message(), HasSubstr("is a symlink"));
  EXPECT_EQ(Shell("ls -A " + cache_ + "/real | grep -q ."), 1);  // Nothing written there.
}

TEST_F(RemoteTest, WithoutZstdOnTheTargetTheUploadIsGzip) {
  // A PATH with what the first stage runs, but no zstd.
  Master master(TestFunctions());
  absl::StatusOr<Context> child =
      SpawnWithAGzipUpload(master, TargetWithOnly(kFirstStageTools, "\"$(command -v $t)\""));
  ASSERT_TRUE(child.ok()) << child.status();
  EXPECT_TRUE(child->Ping().ok());
}

TEST_F(RemoteTest, ABusyboxTargetGetsTheAgentInPieces) {
  // Busybox's sh, head and gzip only: the upload is gzip, in kUploadChunk pieces each read by
  // its own busybox head.
  absl::StatusOr<const std::string*> gzip = CompressedProgram(Codec::kGzip);
  ASSERT_TRUE(gzip.ok()) << gzip.status();
  ASSERT_GT((*gzip)->size(), 2 * kUploadChunk);  // Three pieces at least.
  Master master(TestFunctions());
  absl::StatusOr<Context> child =
      SpawnWithAGzipUpload(master, TargetWithOnly(kFirstStageTools, "\"$(command -v busybox)\""));
  ASSERT_TRUE(child.ok()) << child.status();
  absl::StatusOr<v1::InfoReply> info = child->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  absl::StatusOr<const Payload*> payload = ThisProgram();
  ASSERT_TRUE(payload.ok());
  EXPECT_EQ(Readlink(absl::StrCat("/proc/", info->pid(), "/exe")),
            cache_ + "/c/" + (*payload)->sha256);
}

TEST_F(RemoteTest, ATargetThatAsksForTooMuchIsRefused) {
  // Instead of the first stage, a shell that reads it and then misbehaves.
  const std::string more = absl::StrCat(
      "read stage;printf GRV1ZSTD;read n;i=$n;while [ $i -gt ", kUploadChunk, " ];do head -c ",
      kUploadChunk, " >/dev/null;printf GRV1MORE;i=$((i-", kUploadChunk, "));done;",
      "head -c $i >/dev/null;printf GRV1MORE;read rest");
  const std::string twice = absl::StrCat("read stage;printf GRV1ZSTD;read n;head -c ",
                                         kUploadChunk, " >/dev/null;printf GRV1ZSTD;read rest");
  for (const auto& [script, error] : {std::pair{more, "asked for more of the agent than there is"},
                                      std::pair{twice, "asked for the agent twice"}}) {
    const std::string file = cache_ + "/target.sh";
    {
      std::ofstream out(file);
      out << script << "\n";
      ASSERT_TRUE(out.good());
    }
    Master master(TestFunctions());
    absl::StatusOr<Context> child = master.Spawn("command:sh " + file + ",cache_dir=" + cache_);
    EXPECT_EQ(child.status().code(), absl::StatusCode::kUnavailable) << child.status();
    EXPECT_THAT(child.status().message(), HasSubstr(error));
  }
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

TEST_F(RemoteTest, ForkChildrenOfSshAndSudoContexts) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  Master master(TestFunctions());
  const std::string ssh = sshd().Hop("root") + ",cache_dir=" + cache_;
  // Each context's zygote is its own program run again (the cached agent), as its user.
  for (const std::string& path : {ssh + "/fork,name=rf", ssh + "/sudo:nobody/fork,name=sf"}) {
    absl::StatusOr<Context> forked = master.SpawnPath(path);
    ASSERT_TRUE(forked.ok()) << path << ": " << forked.status();
    test::Echo hi;
    hi.set_text("hi");
    absl::StatusOr<test::Echo> echo = forked->Call<test::Echo>("echo", hi);
    ASSERT_TRUE(echo.ok()) << echo.status();
    std::optional<ContextRecord> record = master.registry().Find(forked->id());
    ASSERT_TRUE(record.has_value());
    EXPECT_EQ(echo->text(), record->name + ": hi");
    std::optional<ContextRecord> parent = master.registry().Find(record->parent);
    ASSERT_TRUE(parent.has_value());
    absl::StatusOr<v1::InfoReply> info = forked->Info();
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->user(), path.find("nobody") != std::string::npos ? "nobody" : "root");
    const pid_t zygote = ParentOf(static_cast<pid_t>(info->pid()));
    EXPECT_EQ(ParentOf(zygote), parent->pid);
    EXPECT_EQ(Readlink(absl::StrCat("/proc/", zygote, "/exe")),
              Readlink(absl::StrCat("/proc/", parent->pid, "/exe")));
    ASSERT_TRUE(forked->Shutdown().ok());
  }
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

  absl::StatusOr<Context> right = master.Spawn(absl::StrCat(as_user, ",password=", Password()));
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
  absl::StatusOr<Context> root = user->Spawn(absl::StrCat("sudo:root,password=", Password()));
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_EQ(root->Info()->user(), "root");

  absl::StatusOr<Context> unknown = master.Spawn("sudo:no-such-user-here");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound) << unknown.status();
  EXPECT_THAT(unknown.status().message(), HasSubstr("user unknown"));

  absl::StatusOr<Context> other = ssh_as(kOther);
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<Context> denied = other->Spawn(absl::StrCat("sudo:root,password=", Password()));
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

TEST_F(RemoteTest, SuFromRootAndWithAPasswordOnATerminal) {
  Master master(TestFunctions());
  // From root: no password asked.
  absl::StatusOr<Context> nobody = master.Spawn("su:nobody");
  ASSERT_TRUE(nobody.ok()) << nobody.status();
  EXPECT_EQ(nobody->Info()->user(), "nobody");
  EXPECT_EQ(master.registry().Find(nobody->id())->method, "su");

  // From an unprivileged user: the password goes in at su's prompt, on a PTY.
  absl::StatusOr<Context> user = master.Spawn(absl::StrCat(
      "command:setpriv --reuid=", kUser, " --regid=", kUser, " --clear-groups sh"));
  ASSERT_TRUE(user.ok()) << user.status();
  EXPECT_EQ(user->Info()->user(), kUser);
  absl::StatusOr<Context> other = user->Spawn(absl::StrCat("su:", kOther, ",password=", Password()));
  ASSERT_TRUE(other.ok()) << other.status();
  absl::StatusOr<v1::InfoReply> info = other->Info();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->user(), kOther);
  // The agent's link is a socket, not the terminal: its stdin is /dev/null and the PTY is
  // only su's.
  v1::RunRequest run;
  run.add_argv("sh");
  run.add_argv("-c");
  run.add_argv(absl::StrCat("readlink /proc/", info->pid(), "/fd/0"));
  absl::StatusOr<v1::RunReply> fd0 = other->Run(run);
  ASSERT_TRUE(fd0.ok()) << fd0.status();
  EXPECT_EQ(fd0->stdout(), "/dev/null\n");
  ASSERT_TRUE(other->Call<test::Echo>("echo", test::Echo()).ok());

  absl::StatusOr<Context> no_password = user->Spawn(absl::StrCat("su:", kOther));
  EXPECT_EQ(no_password.status().code(), absl::StatusCode::kUnauthenticated)
      << no_password.status();
  EXPECT_THAT(no_password.status().message(), HasSubstr("password required"));
  absl::StatusOr<Context> wrong = user->Spawn(absl::StrCat("su:", kOther, ",password=wrong-one"));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  EXPECT_THAT(wrong.status().message(), HasSubstr("password incorrect"));
  EXPECT_THAT(wrong.status().message(), ::testing::Not(HasSubstr("wrong-one")));
  absl::StatusOr<Context> unknown = user->Spawn("su:no-such-user-here,password=x");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound) << unknown.status();
  EXPECT_THAT(unknown.status().message(), HasSubstr("user unknown"));
  absl::StatusOr<Context> bad_name = user->Spawn("su:-c");
  EXPECT_EQ(bad_name.status().code(), absl::StatusCode::kInvalidArgument) << bad_name.status();
}

// A command that echoes what it is sent (not a shell) is said to be so at once, not taken for
// a target of another architecture (the first stage's markers are never whole in its text).
TEST_F(RemoteTest, ACommandThatEchoesItsInputIsNotAShell) {
  Master master(TestFunctions());
  absl::StatusOr<Context> cat = master.Spawn("command:cat,cache_dir=" + cache_);
  EXPECT_EQ(cat.status().code(), absl::StatusCode::kFailedPrecondition) << cat.status();
  EXPECT_THAT(cat.status().message(), HasSubstr("echoed the first stage back"));
  EXPECT_THAT(cat.status().message(), ::testing::Not(HasSubstr("architecture")));
}

// cache_dir=~/DIR is the target user's home, as in a shell, not a directory named "~".
TEST_F(RemoteTest, ACacheDirUnderTildeIsInTheHome) {
  Master master(TestFunctions());
  const std::string home = cache_ + "/home";
  ASSERT_EQ(Shell("mkdir -p " + home), 0);
  absl::StatusOr<Context> c = master.Spawn(
      absl::StrCat("command:env HOME=", home, " sh,cache_dir=~/agents"));
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<const Payload*> self = ThisProgram();
  ASSERT_TRUE(self.ok());
  EXPECT_TRUE(std::filesystem::exists(home + "/agents/" + (*self)->sha256));
  EXPECT_FALSE(std::filesystem::exists("~"));
}

TEST_F(RemoteTest, SshConnectTimeoutKillsAndReapsSsh) {
  // A port that completes TCP handshakes (the backlog) but never speaks: ssh waits for a
  // banner that never comes.
  UniqueFd silent(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  struct sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  ASSERT_EQ(::bind(silent.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(silent.get(), 8), 0);
  ASSERT_EQ(::getsockname(silent.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  Master master(TestFunctions());
  absl::Time start = absl::Now();
  absl::StatusOr<Context> c = master.Spawn(absl::StrCat(
      "ssh:root@127.0.0.1:", ntohs(a.sin_port), ",connect_timeout=1,check_host_keys=no"));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kDeadlineExceeded) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("ssh root@127.0.0.1"));
  // Not the 30 s default (the fixture checks that ssh was reaped).
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  absl::StatusOr<Context> bad = master.Spawn("ssh:root@127.0.0.1,connect_timeout=soon");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

TEST_F(RemoteTest, SshRemoteShellMissing) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  Master master(TestFunctions());
  absl::StatusOr<Context> c = master.Spawn(absl::StrCat(
      "ssh:", kNoShell, "@127.0.0.1:", sshd().port(), ",identity=", sshd().identity(),
      ",ssh_option=UserKnownHostsFile=", sshd().known_hosts()));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("remote shell missing"));
}

TEST_F(RemoteTest, SshAcceptsNewHostKeysAndCompresses) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  Master master(TestFunctions());
  const std::string known = cache_ + "/known_hosts";
  const std::string base = absl::StrCat("ssh:root@127.0.0.1:", sshd().port(), ",identity=",
                                        sshd().identity(), ",cache_dir=", cache_,
                                        ",ssh_option=UserKnownHostsFile=", known);
  absl::StatusOr<Context> strict = master.Spawn(base);
  EXPECT_EQ(strict.status().code(), absl::StatusCode::kFailedPrecondition) << strict.status();
  absl::StatusOr<Context> accepted = master.Spawn(base + ",check_host_keys=accept,compression=yes");
  ASSERT_TRUE(accepted.ok()) << accepted.status();
  ASSERT_TRUE(accepted->Ping().ok());
  // The key was recorded, so strict checking now passes.
  absl::StatusOr<Context> again = master.Spawn(base + ",compression=no");
  ASSERT_TRUE(again.ok()) << again.status();
  absl::StatusOr<Context> bad = master.Spawn(base + ",compression=maybe");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

TEST_F(RemoteTest, ChainAcrossTwoHostsAndANetworkCutMidCall) {
  absl::StatusOr<std::unique_ptr<TwoHosts>> hosts = TwoHosts::Start();
  if (!hosts.ok()) GTEST_SKIP() << hosts.status();
  Master master(TestFunctions());
  // ssh:A/ssh:B: the second ssh runs in A's context, inside namespace A. Keepalives every
  // second (the user's ssh_option overrides grove's 15 s default).
  absl::StatusOr<Context> b = master.SpawnPath(absl::StrCat(
      (*hosts)->a().Hop("root"), ",cache_dir=", cache_, "/", (*hosts)->b().Hop("root"),
      ",cache_dir=", cache_, ",ssh_option=ServerAliveInterval=1,ssh_option=ServerAliveCountMax=2"));
  ASSERT_TRUE(b.ok()) << b.status();
  std::optional<ContextRecord> record_b = master.registry().Find(b->id());
  ASSERT_TRUE(record_b.has_value());
  EXPECT_THAT(record_b->name, HasSubstr("ssh.root@10.77.1.2"));
  EXPECT_THAT(record_b->name, HasSubstr("ssh.root@10.77.2.2"));
  absl::StatusOr<Context> a = master.Find(record_b->parent);
  ASSERT_TRUE(a.ok());
  // Each context really is in its own host's network namespace.
  v1::RunRequest netns;
  netns.add_argv("readlink");
  netns.add_argv("/proc/self/ns/net");
  absl::StatusOr<v1::RunReply> ns_a = a->Run(netns), ns_b = b->Run(netns);
  ASSERT_TRUE(ns_a.ok() && ns_b.ok());
  EXPECT_NE(ns_a->stdout(), ns_b->stdout());
  EXPECT_NE(ns_a->stdout(), Readlink("/proc/self/ns/net") + "\n");

  v1::SleepRequest sleep;
  sleep.set_ms(20000);  // Longer than the keepalive needs, shorter than ssh's default 45 s.
  auto pending = b->CallAsync<v1::Empty>("grove.sleep", sleep);
  ASSERT_TRUE(b->Ping().ok());
  ASSERT_TRUE((*hosts)->CutAToB().ok());
  absl::StatusOr<v1::Empty> r = pending.get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(record_b->name));
  EXPECT_EQ(master.registry().Find(b->id())->state, ContextState::kGone);
  // A, on the other side of the cut, is untouched.
  EXPECT_TRUE(a->Ping().ok());
  EXPECT_EQ(master.registry().Find(a->id())->state, ContextState::kConnected);
}

// The same cut without ssh's keepalive in play (its default is 15 s x 3): the links' own
// liveness check (router/link_watch.h), 2 s here, notices that B went silent.
TEST_F(RemoteTest, ALinkThatGoesSilentIsNoticedWithinItsLimit) {
  absl::StatusOr<std::unique_ptr<TwoHosts>> hosts = TwoHosts::Start();
  if (!hosts.ok()) GTEST_SKIP() << hosts.status();
  MasterOptions options;
  options.link_silence_limit = absl::Seconds(2);
  Master master(TestFunctions(), options);
  absl::StatusOr<Context> b = master.SpawnPath(absl::StrCat(
      (*hosts)->a().Hop("root"), ",cache_dir=", cache_, "/", (*hosts)->b().Hop("root"),
      ",cache_dir=", cache_));
  ASSERT_TRUE(b.ok()) << b.status();
  v1::SleepRequest sleep;
  sleep.set_ms(40000);  // Shorter than ssh's keepalive would take (45 s).
  auto pending = b->CallAsync<v1::Empty>("grove.sleep", sleep);
  ASSERT_TRUE(b->Ping().ok());
  ASSERT_TRUE((*hosts)->CutAToB().ok());
  // Before ssh's keepalive (45 s) or the sleep: the liveness check's own words.
  absl::StatusOr<v1::Empty> r = pending.get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("went silent for 2s"));
}

TEST_F(RemoteTest, AnotherArchitectureFailsClearly) {
  // A target whose `uname -m` says aarch64.
  const std::string bin = cache_ + "/fake-bin";
  ASSERT_EQ(Shell(absl::StrCat("mkdir -p ", bin, " && printf '#!/bin/sh\necho aarch64\n' > ", bin,
                               "/uname && chmod +x ", bin, "/uname")),
            0);
  Master master(TestFunctions());
  absl::StatusOr<Context> c = master.Spawn(
      absl::StrCat("command:env PATH=", bin, ":/usr/bin:/bin sh,cache_dir=", cache_));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("is a aarch64 machine"));
  EXPECT_THAT(c.status().message(), HasSubstr("another architecture"));
}

TEST_F(RemoteTest, ConcurrentFirstContactsShareTheCacheSafely) {
  Master master(TestFunctions());
  const std::string hop = "command:sh,cache_dir=" + cache_ + "/shared";
  int64_t uploads = GlobalBootstrapCounters().uploads;
  auto first = std::async(std::launch::async, [&] { return master.Spawn(hop); });
  auto second = std::async(std::launch::async, [&] { return master.Spawn(hop); });
  absl::StatusOr<Context> a = first.get(), b = second.get();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_TRUE(a->Ping().ok());
  EXPECT_TRUE(b->Ping().ok());
  EXPECT_GE(GlobalBootstrapCounters().uploads, uploads + 1);
  // One verified file under the final name, no temporary left behind.
  absl::StatusOr<const Payload*> payload = ThisProgram();
  ASSERT_TRUE(payload.ok());
  v1::RunRequest ls;
  ls.add_argv("sh");
  ls.add_argv("-c");
  ls.add_argv("ls -A " + cache_ + "/shared");
  absl::StatusOr<v1::RunReply> listed = a->Run(ls);
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->stdout(), (*payload)->sha256 + "\n");
  EXPECT_EQ(Shell(absl::StrCat(cache_, "/shared/", (*payload)->sha256, " --grove-verify=",
                               (*payload)->sha256)),
            0);
}

TEST_F(RemoteTest, AnUnwritableCacheFallsBackToATempDir) {
  Master master(TestFunctions());
  absl::StatusOr<Context> c = master.Spawn(
      "command:setpriv --reuid=nobody --regid=nogroup --clear-groups sh,cache_dir=/proc/grove");
  ASSERT_TRUE(c.ok()) << c.status();
  absl::StatusOr<v1::InfoReply> info = c->Info();
  ASSERT_TRUE(info.ok());
  EXPECT_THAT(Readlink(absl::StrCat("/proc/", info->pid(), "/exe")),
              ::testing::StartsWith("/tmp/grove-65534/"));
}

TEST_F(RemoteTest, SshHostKeyChanged) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  // A known_hosts that records another key for this host.
  const std::string known = cache_ + "/changed_known_hosts";
  ASSERT_EQ(Shell(absl::StrCat("ssh-keygen -q -t ed25519 -N '' -f ", cache_, "/other && echo \"[127.0.0.1]:",
                               sshd().port(), " $(cat ", cache_, "/other.pub)\" > ", known)),
            0);
  Master master(TestFunctions());
  absl::StatusOr<Context> c = master.Spawn(absl::StrCat(
      "ssh:root@127.0.0.1:", sshd().port(), ",identity=", sshd().identity(),
      ",ssh_option=UserKnownHostsFile=", known, ",cache_dir=", cache_));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_THAT(c.status().message(), HasSubstr("host key changed"));
}

TEST_F(RemoteTest, AKilledSshClientFailsCallsAndTheRemoteAgentExits) {
  if (sshd_ == nullptr) GTEST_SKIP() << "no sshd";
  LogCollector logs;
  MasterOptions options;
  options.log_sink = logs.Sink();
  Master master(TestFunctions(), options);
  absl::StatusOr<Context> remote = master.Spawn(sshd().Hop("root") + ",cache_dir=" + cache_);
  ASSERT_TRUE(remote.ok()) << remote.status();
  const std::string name = master.registry().Find(remote->id())->name;
  // Its output and log records reach the master tagged with its name.
  test::PrintRequest print;
  print.set_line("remote stdout line");
  ASSERT_TRUE(remote->Call<test::Count>("print", print).ok());
  print.set_line("remote glog line");
  print.set_glog(true);
  ASSERT_TRUE(remote->Call<test::Count>("print", print).ok());
  for (const char* line : {"remote stdout line", "remote glog line"}) {
    EXPECT_TRUE(logs.WaitFor(
        [&](const CollectedLog& log) {
          return log.context == name && absl::StrContains(log.record.text(), line);
        },
        absl::Seconds(10)))
        << line;
  }
  // The ssh client is the master's child, and the remote agent its remote end.
  int ssh_pid = ChildNamed("ssh");
  ASSERT_GT(ssh_pid, 0);
  v1::SleepRequest sleep;
  sleep.set_ms(60000);
  auto pending = remote->CallAsync<v1::Empty>("grove.sleep", sleep);
  ASSERT_TRUE(remote->Ping().ok());
  ASSERT_EQ(::kill(ssh_pid, SIGKILL), 0);
  absl::StatusOr<v1::Empty> r = pending.get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr(name));
  // The remote agent notices its link is gone and exits: the fixture checks that no agent
  // process is left.
}

}  // namespace
}  // namespace grove::testing
