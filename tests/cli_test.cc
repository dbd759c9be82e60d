// The grove CLI, run as a real process: groups from an inventory, -j, per-context timeouts,
// the summary, --json, exit statuses and per-verb help.
#include <elf.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_join.h"
#include "common/fd.h"
#include "common/process.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/leak_check.h"
#include "tests/support.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class CliTest : public GroveTest {
 protected:
  void SetUp() override {
    GroveTest::SetUp();
    char tmpl[] = "/tmp/grove-cli.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    inventory_ = dir_ + "/inventory";
    std::ofstream(inventory_) << "# two local contexts and one that cannot be reached\n"
                                 "[web]\nlocal,name=web1\nlocal,name=web2\n\n"
                                 "[broken]\nssh:root@127.0.0.1:1,connect_timeout=5\n";
  }
  void TearDown() override {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    GroveTest::TearDown();
  }

  Ran Grove(std::vector<std::string> args) { return RunGrove(std::move(args)); }

  std::string dir_, inventory_;
};

TEST_F(CliTest, RunOnAGroupPrefixesAlignsAndSummarises) {
  Ran r = Grove({"run", "--inventory", inventory_, "-j", "1", "@web", "local,name=a-longer-name",
                 "--", "sh", "-c", "echo out-line; echo err-line >&2"});
  EXPECT_EQ(r.status, 0) << r.err;
  // Names are padded to the longest one, so the output lines up.
  EXPECT_THAT(r.out, HasSubstr("[web1]          out-line\n"));
  EXPECT_THAT(r.out, HasSubstr("[a-longer-name] out-line\n"));
  EXPECT_THAT(r.err, HasSubstr("[web2]          err-line\n"));
  // Not a terminal: no colour.
  EXPECT_THAT(r.out, Not(HasSubstr("\033[")));
  EXPECT_THAT(r.err, HasSubstr("3 ok, 0 failed, 0 unreachable"));
}

// Two contexts of one name (under different parents) do not print under one prefix.
TEST_F(CliTest, ContextsOfOneNameGetDistinctPrefixes) {
  Ran r = Grove({"run", "local,name=p1/local,name=w", "local,name=p2/local,name=w", "--", "echo",
                 "hi"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, ::testing::ContainsRegex("\\[w#[0-9]+\\] hi\n"));
  std::set<std::string> prefixes;
  for (absl::string_view line : absl::StrSplit(r.out, '\n', absl::SkipEmpty())) {
    prefixes.insert(std::string(line.substr(0, line.find(']') + 1)));
  }
  EXPECT_EQ(prefixes.size(), 2u) << r.out;
}

TEST_F(CliTest, FailuresUnreachablesAndTimeoutsAreCountedAndSetTheExitStatus) {
  Ran failed = Grove({"run", "--inventory", inventory_, "@web", "--", "sh", "-c", "exit 3"});
  EXPECT_EQ(failed.status, 3);
  EXPECT_THAT(failed.err, HasSubstr("web1: failed: exit status 3"));
  EXPECT_THAT(failed.err, HasSubstr("0 ok, 2 failed, 0 unreachable"));

  Ran unreachable = Grove({"run", "--inventory", inventory_, "@web", "@broken", "--", "true"});
  EXPECT_EQ(unreachable.status, 255);
  EXPECT_THAT(unreachable.err, HasSubstr("host unreachable"));
  EXPECT_THAT(unreachable.err, HasSubstr("2 ok, 0 failed, 1 unreachable"));

  Ran timed_out = Grove({"run", "--timeout", "0.5", "local", "--", "sleep", "30"});
  EXPECT_EQ(timed_out.status, 124);
  EXPECT_THAT(timed_out.err, HasSubstr("timed out"));

  Ran call_late = Grove({"call", "--timeout", "0.5", "local", "grove.sleep", "{\"ms\": 30000}"});
  EXPECT_EQ(call_late.status, 124) << call_late.err;
  EXPECT_THAT(call_late.err, HasSubstr("DEADLINE_EXCEEDED"));
  EXPECT_EQ(Grove({"call", "--timeout", "0", "local", "grove.ping", "{}"}).status, 2);

  Ran a_directory = Grove({"run", "--inventory", dir_, "@web", "--", "true"});
  EXPECT_EQ(a_directory.status, 2);
  EXPECT_THAT(a_directory.err, HasSubstr("is a directory, not a file"));

  Ran proc = Grove({"push", "local", "--", "/proc/cpuinfo", dir_ + "/cpuinfo"});
  EXPECT_EQ(proc.status, 1);
  EXPECT_THAT(proc.err, HasSubstr("reports a size of 0 but has contents"));

  Ran no_group = Grove({"run", "--inventory", inventory_, "@nope", "--", "true"});
  EXPECT_EQ(no_group.status, 2);
  EXPECT_THAT(no_group.err, HasSubstr("no group 'nope'"));
}

// `grove run local -- yes | head -1`: once stdout is closed, the run is cancelled, the command
// killed, and grove exits 141 (128 + SIGPIPE), as a shell pipeline's writer would.
TEST_F(CliTest, AClosedStdoutEndsTheRun) {
  auto out = Pipe();
  ASSERT_TRUE(out.ok());
  SpawnOptions spawn;
  spawn.argv = {GroveBinary(), "run", "local", "--", "sh", "-c", "exec yes grove-epipe-test"};
  spawn.fds = {{1, out->second.get()}};
  absl::StatusOr<Process> cli = Process::Spawn(spawn);
  ASSERT_TRUE(cli.ok()) << cli.status();
  out->second.Reset();
  char line[64];
  ASSERT_GT(::read(out->first.get(), line, sizeof(line)), 0);
  out->first.Reset();  // `head -1` has its line.
  absl::StatusOr<int> status = cli->Wait(absl::Now() + absl::Seconds(20));
  ASSERT_TRUE(status.ok()) << "grove run went on writing to a closed pipe";
  EXPECT_EQ(ExitCodeOf(*status), 141);
  EXPECT_TRUE(WaitUntil([] { return ProcessesWith("yes grove-epipe-test").empty(); }));
}

// What other contexts say reaches the terminal as text, through every verb's errors: a
// terminal control in a context's name or message is printed escaped.
// A pull that cannot write where it was told names its source as the source and this side as
// the side that failed.
TEST_F(CliTest, APullErrorSaysWhichSideFailed) {
  const std::string file = dir_ + "/a-file";
  { std::ofstream create(file); }
  Ran pull = RunGrove({"pull", "local,name=src", "--", "/etc/hostname", file + "/below"});
  EXPECT_NE(pull.status, 0);
  EXPECT_THAT(pull.err, HasSubstr("grove pull: from src: cannot "));
  EXPECT_THAT(pull.err, HasSubstr("in context master"));
  ::unlink(file.c_str());
}

TEST_F(CliTest, ErrorsFromOtherContextsCannotReachTheTerminal) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"call", "local", "grove.run",
                                 "{\"argv\": [\"sh\", \"-c\", \"exit 3\"], \"cwd\": \"/no\u001b[2Jwhere\"}"},
        std::vector<std::string>{"push", "local", "--", "/etc/hostname", "/no\x1b[2Jwhere/x"},
        std::vector<std::string>{"pull", "local", "--", "/no\x1b[2Jwhere", dir_ + "/x"},
        std::vector<std::string>{"push", "command:/no\x1b[2Jwhere", "--", "/etc/hostname",
                                 dir_ + "/x"},
        std::vector<std::string>{"tree", "command:/no\x1b[2Jwhere"},
        std::vector<std::string>{"call", "command:/no\x1b[2Jwhere", "grove.info", "{}"}}) {
    Ran r = Grove(args);
    EXPECT_NE(r.status, 0) << args[0];
    EXPECT_THAT(r.err, Not(HasSubstr("\x1b"))) << args[0] << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr("\\x1b[2J")) << args[0] << ": " << r.err;
  }
}

// Passwords from paths never appear, whether the context is reached or not, in text or JSON.
TEST_F(CliTest, PasswordsInPathsAreNeverPrinted) {
  const std::string secret = "Sekr1t-in-the-path";
  const std::string path = "ssh:root@127.0.0.1:1,connect_timeout=5,password=" + secret;
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"run", path, "--", "true"},
        std::vector<std::string>{"run", "--json", path, "--", "true"},
        std::vector<std::string>{"push", "--json", path, "--", "/etc/hostname", dir_ + "/x"},
        std::vector<std::string>{"pull", path, "--", "/etc/hostname", dir_ + "/x"}}) {
    Ran r = Grove(args);
    EXPECT_EQ(r.status, 255) << args[0] << ": " << r.err;
    EXPECT_THAT(r.out + r.err, Not(HasSubstr(secret))) << args[0];
    EXPECT_THAT(r.out + r.err, HasSubstr("password=***")) << args[0];
  }
}

// One unreachable target does not cancel a push: the others get the file, the unreachable one
// is reported (exit 255), in JSON too.
TEST_F(CliTest, APushServesTheReachableTargetsAndReportsTheOthers) {
  const std::string src = dir_ + "/src";
  std::ofstream(src) << "payload\n";
  Ran r = Grove({"push", "--json", "--inventory", inventory_, "local,name=t1", "@broken",
                 "local,name=t2", "--", src, dir_ + "/dest"});
  EXPECT_EQ(r.status, 255) << r.err;
  EXPECT_EQ(ReadFile(dir_ + "/dest"), "payload\n");
  EXPECT_THAT(r.out, HasSubstr("{\"context\":\"t1\",\"state\":\"ok\"}"));
  EXPECT_THAT(r.out, HasSubstr("{\"context\":\"t2\",\"state\":\"ok\"}"));
  EXPECT_THAT(r.out, HasSubstr("\"state\":\"unreachable\""));
  ::unlink(src.c_str());
  ::unlink((dir_ + "/dest").c_str());
}

// Ctrl-C in the middle of a streamed push or pull: the transfer is cancelled, no temporary
// file stays behind (in the target or here), and grove exits 130 (128 + SIGINT).
TEST_F(CliTest, AnInterruptedTransferLeavesNoTemporaryFile) {
  const std::string big = dir_ + "/big";
  { std::ofstream create(big); }
  ASSERT_EQ(::truncate(big.c_str(), int64_t{2} << 30), 0);  // Sparse: 2 GiB of zeros to read.
  const std::string dest = dir_ + "/dest";
  ASSERT_EQ(::mkdir(dest.c_str(), 0755), 0);
  auto temporary = [&dest] {
    for (const std::string& name : ListDir(dest)) {
      if (name.find(".grove-") != std::string::npos) return true;
    }
    return false;
  };
  for (const char* verb : {"push", "pull"}) {
    SpawnOptions spawn;
    spawn.argv = {GroveBinary(), verb, "--no-kernel-copy", "local", "--", big, dest + "/"};
    absl::StatusOr<Process> cli = Process::Spawn(spawn);
    ASSERT_TRUE(cli.ok()) << cli.status();
    ASSERT_TRUE(WaitUntil(temporary, absl::Seconds(20))) << verb << ": never started writing";
    cli->Signal(SIGINT);
    absl::StatusOr<int> status = cli->Wait(absl::Now() + absl::Seconds(20));
    ASSERT_TRUE(status.ok()) << verb << " did not end on SIGINT";
    EXPECT_EQ(ExitCodeOf(*status), 130) << verb;
    EXPECT_TRUE(ListDir(dest).empty()) << verb << " left " << absl::StrJoin(ListDir(dest), " ");
    for (const std::string& name : ListDir(dest)) ::unlink((dest + "/" + name).c_str());
  }
  ::rmdir(dest.c_str());
  ::unlink(big.c_str());
}

TEST_F(CliTest, TransferTimeoutsMustBeAboveZero) {
  for (const char* bad : {"0", "nan", "-1", "inf", "x"}) {
    Ran r = Grove({"push", "--timeout", bad, "local", "--", "/etc/hostname", dir_ + "/x"});
    EXPECT_EQ(r.status, 2) << bad;
    EXPECT_THAT(r.err, HasSubstr("--timeout needs a number of seconds above 0")) << bad;
  }
}

// A name with a terminal control in it is printed as text; JSON keeps it as JSON.
TEST_F(CliTest, ANameWithControlsIsRefusedAndQuotedAsText) {
  Ran r = Grove({"tree", "local,name=a\x1b[2Jb"});
  EXPECT_EQ(r.status, 255);
  EXPECT_THAT(r.err, HasSubstr("hop 'local,name=a\\x1b[2Jb': a name must be"));
  EXPECT_THAT(r.out + r.err, Not(HasSubstr("\x1b")));
}

TEST_F(CliTest, RunJsonGivesOneObjectPerContext) {
  Ran r = Grove({"run", "--json", "--inventory", inventory_, "@web", "@broken", "--", "sh", "-c",
                 "echo hi"});
  EXPECT_EQ(r.status, 255);
  EXPECT_THAT(r.out, HasSubstr("{\"context\":\"web1\",\"path\":\"local,name=web1\",\"state\":"
                               "\"ok\",\"exit_status\":0,\"stdout\":\"hi\\n\",\"stderr\":\"\"}"));
  EXPECT_THAT(r.out, HasSubstr("\"state\":\"unreachable\""));
}

// The floors come from processes of their own (the program run again, measuring against a
// peer): each answers, and each is gone when the bench ends (the fixture checks the test's
// own children; the scan below, the bench's descendants).
TEST_F(CliTest, BenchMeasuresARoundTripBesideItsFloors) {
  Ran r = Grove({"bench", "--json", "--only",
                 "rtt_us,socketpair_rtt_us,grpc_stream_rtt_us,grpc_callback_rtt_us"});
  ASSERT_EQ(r.status, 0) << r.err;
  for (const char* metric :
       {"rtt_us", "socketpair_rtt_us", "grpc_stream_rtt_us", "grpc_callback_rtt_us"}) {
    const std::string key = absl::StrCat("\"metric\":\"", metric, "\",\"value\":");
    size_t at = r.out.find(key);
    ASSERT_NE(at, std::string::npos) << metric << " in " << r.out;
    double value = std::atof(r.out.c_str() + at + key.size());
    EXPECT_GT(value, 0) << metric;
    EXPECT_LT(value, 1e6) << metric;  // A second per round trip would mean a stall.
  }
  // Without --json, each figure comes with what it is held against.
  Ran plain = Grove({"bench", "--only", "rtt_us,socketpair_rtt_us"});
  ASSERT_EQ(plain.status, 0) << plain.err;
  EXPECT_THAT(plain.out, HasSubstr(" us       target <= 60; mitogen 173, execnet 135\n"));
  EXPECT_THAT(plain.out, HasSubstr(" us       floor: the kernel's round trip\n"));
  // The bench reaped its peers before it exited (they are not this test's children).
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    std::ifstream cmdline(entry.path() / "cmdline");
    std::string argv((std::istreambuf_iterator<char>(cmdline)), std::istreambuf_iterator<char>());
    EXPECT_FALSE(absl::StrContains(argv, "--grove-bench-")) << entry.path() << ": " << argv;
  }
  EXPECT_EQ(Grove({"--grove-bench-peer", "nonsense"}).status, 2);
  EXPECT_EQ(Grove({"--grove-bench-floor", "nonsense", "10"}).status, 1);
}

TEST_F(CliTest, EveryVerbExplainsItself) {
  for (const char* verb : {"run", "tree", "call", "push", "pull", "bench", "grpc", "demo"}) {
    Ran r = Grove({verb, "--help"});
    EXPECT_EQ(r.status, 0) << verb;
    EXPECT_THAT(r.out, HasSubstr("usage: grove ")) << verb;
    EXPECT_THAT(r.out, HasSubstr(absl::StrCat("grove ", verb))) << verb;
    if (std::string(verb) != "bench" && std::string(verb) != "demo") {
      EXPECT_THAT(r.out, HasSubstr("ssh:[USER@]HOST[:PORT]")) << verb;
      EXPECT_THAT(r.out, HasSubstr("Examples:")) << verb;
    }
  }
  Ran top = Grove({"--help"});
  EXPECT_EQ(top.status, 0);
  for (const char* verb : {"run", "tree", "call", "push", "pull", "bench", "demo"}) {
    EXPECT_THAT(top.out, HasSubstr(absl::StrCat("grove ", verb))) << verb;
  }
  EXPECT_EQ(Grove({"frobnicate"}).status, 2);
  EXPECT_EQ(Grove({}).status, 2);
  Ran no_dashes = Grove({"run", "local", "uname", "-a"});
  EXPECT_EQ(no_dashes.status, 2);
  EXPECT_THAT(no_dashes.err, HasSubstr("is '--' missing before the command?"));
  for (const char* bad : {"0", "nan", "-3", "inf"}) {
    EXPECT_EQ(Grove({"run", "--timeout", bad, "local", "--", "true"}).status, 2) << bad;
    EXPECT_EQ(Grove({"run", "-j", bad, "local", "--", "true"}).status, 2) << bad;
  }
  Ran no_metric = Grove({"bench", "--only", "rtt_us,no_such_metric"});
  EXPECT_EQ(no_metric.status, 2);
  EXPECT_THAT(no_metric.err, HasSubstr("no metric 'no_such_metric'"));
  Ran metrics = Grove({"bench", "--list"});
  EXPECT_EQ(metrics.status, 0);
  EXPECT_THAT(metrics.out, HasSubstr("attached_run_ms"));
  EXPECT_THAT(metrics.out, HasSubstr("rtt_us"));
  Ran version = Grove({"--version"});
  EXPECT_EQ(version.status, 0);
  EXPECT_THAT(version.out, ::testing::MatchesRegex("grove [0-9.]+\nbuild [0-9a-f]{64}\n"));
}

// tools/install_files puts grove, its manual page and its bash completion under a prefix;
// the page and the completion come from the same texts as --help.
TEST_F(CliTest, InstallsWithAManualPageAndBashCompletion) {
  const char* srcdir = ::getenv("TEST_SRCDIR");
  const std::string script = srcdir ? std::string(srcdir) + "/grove/tools/install_files"
                                    : "tools/install_files";
  const std::string prefix = dir_ + "/prefix";
  ASSERT_EQ(std::system((script + " " + GroveBinary() + " " + prefix + " 2>/dev/null").c_str()),
            0);
  EXPECT_EQ(::access((prefix + "/bin/grove").c_str(), X_OK), 0);
  const std::string man = ReadFile(prefix + "/share/man/man1/grove.1");
  EXPECT_THAT(man, HasSubstr(".TH GROVE 1"));
  for (const char* verb : {"RUN", "TREE", "CALL", "PUSH", "GRPC", "BENCH", "DEMO"}) {
    EXPECT_THAT(man, HasSubstr(absl::StrCat(".SH \"GROVE ", verb, "\""))) << verb;
  }
  const std::string completion = ReadFile(prefix + "/share/bash-completion/completions/grove");
  EXPECT_THAT(completion, HasSubstr("complete -F _grove grove"));
  EXPECT_THAT(completion, HasSubstr("run tree call push pull grpc bench demo"));
  // bash accepts it.
  EXPECT_EQ(std::system(("bash -n " + prefix + "/share/bash-completion/completions/grove").c_str()),
            0);
  std::filesystem::remove_all(prefix);
}

// The grove binary is the travelling agent: linked fully static (no interpreter), so that it
// runs on any x86_64 Linux whatever its libc. Sanitizer builds are dynamic.
TEST_F(CliTest, TheBinaryIsFullyStatic) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizer builds link dynamically";
#else
  const std::string elf = ReadFile(GroveBinary());
  ASSERT_GT(elf.size(), sizeof(Elf64_Ehdr));
  Elf64_Ehdr header;
  std::memcpy(&header, elf.data(), sizeof(header));
  ASSERT_EQ(std::memcmp(header.e_ident, ELFMAG, SELFMAG), 0);
  for (int i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr program;
    const size_t at = header.e_phoff + static_cast<size_t>(i) * header.e_phentsize;
    ASSERT_LE(at + sizeof(program), elf.size());
    std::memcpy(&program, elf.data() + at, sizeof(program));
    EXPECT_NE(program.p_type, static_cast<Elf64_Word>(PT_INTERP))
        << "grove is linked dynamically: it would not run where the libc differs";
  }
#endif
}

// tree --json: every field its help lists, and the master's parent is null.
TEST_F(CliTest, TreeJsonHasTheFieldsItsHelpLists) {
  Ran r = Grove({"tree", "--json", "local,name=t"});
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("\"name\":\"master\",\"parent\":null"));
  EXPECT_THAT(r.out, HasSubstr("\"name\":\"t\",\"parent\":0,\"method\":\"local\""));
  EXPECT_THAT(r.out, HasSubstr(absl::StrCat("\"user\":\"", CurrentUserName(), "\"")));
}

}  // namespace
}  // namespace grove::testing
