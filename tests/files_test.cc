// File transfer, with real processes and real filesystems: trees with modes, times and
// symlinks; fan-out through a relay, counted per link; kernel copies on this host, and the
// origins they refuse; missing source, no permission, a full disk (a small tmpfs), contexts
// lost mid-transfer; the CLI's push, pull and call.
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/fd.h"
#include "common/process.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "proto/files.pb.h"
#include "files/files.h"
#include "router/functions.h"
#include "tests/leak_check.h"
#include "tests/support.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

void WriteFile(const std::string& path, const std::string& data, mode_t mode) {
  std::ofstream(path, std::ios::binary) << data;
  ::chmod(path.c_str(), mode);
}


std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(gen());
  return s;
}

struct stat Lstat(const std::string& path) {
  struct stat st = {};
  ::lstat(path.c_str(), &st);
  return st;
}

// Makes `path` a file of `size` bytes with no blocks (reads as zeros); false when it cannot.
bool MakeSparseFile(const std::string& path, int64_t size) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  return fd.valid() && ::ftruncate(fd.get(), size) == 0;
}

// What grove.file_stats says in `c`.
v1::FileStatsReply FileStats(const Context& c) {
  absl::StatusOr<v1::FileStatsReply> s = c.Call<v1::FileStatsReply>("grove.file_stats", v1::Empty());
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : v1::FileStatsReply();
}

// Files left in `dir` whose names look like our temporary files.
std::vector<std::string> Temporaries(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (absl::StrContains(e.path().filename().string(), ".grove-")) found.push_back(e.path());
  }
  return found;
}

// Waits, on inotify, until `dir` holds none of our temporary files; false at `deadline`.
bool WaitForNoTemporaries(const std::string& dir, absl::Time deadline) {
  UniqueFd watch(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!watch.valid() || ::inotify_add_watch(watch.get(), dir.c_str(), IN_DELETE | IN_MOVED_FROM) < 0) {
    return false;
  }
  while (!Temporaries(dir).empty()) {
    const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
    if (ms <= 0) return false;
    struct pollfd p = {watch.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(ms)) <= 0) continue;
    char events[4096];
    while (::read(watch.get(), events, sizeof(events)) > 0) {
    }
  }
  return true;
}

class FilesTest : public GroveTest {
 protected:
  void SetUp() override {
    GroveTest::SetUp();
    char tmpl[] = "/tmp/grove-files.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    if (!mount_.empty()) ::umount2(mount_.c_str(), MNT_DETACH);
    std::error_code ec;
    fs::remove_all(dir_, ec);
    GroveTest::TearDown();
  }
  // A source tree: a file with mode 0640 and an old time, an empty file, a 3 MB file two
  // levels down, a symlink, a directory with mode 0750.
  std::string MakeTree() {
    const std::string src = dir_ + "/src";
    fs::create_directories(src + "/sub/deeper");
    WriteFile(src + "/a.txt", "hello\n", 0640);
    struct timespec times[2] = {{1000000000, 123456789}, {1000000000, 123456789}};
    ::utimensat(AT_FDCWD, (src + "/a.txt").c_str(), times, 0);
    WriteFile(src + "/empty", "", 0600);
    WriteFile(src + "/sub/deeper/big.bin", RandomBytes(3 << 20, 7), 0644);
    EXPECT_EQ(::symlink("a.txt", (src + "/link").c_str()), 0);
    ::chmod((src + "/sub").c_str(), 0750);
    return src;
  }
  void ExpectSameTree(const std::string& a, const std::string& b) {
    for (const char* rel : {"", "/a.txt", "/empty", "/sub", "/sub/deeper", "/sub/deeper/big.bin",
                            "/link"}) {
      struct stat sa = Lstat(a + rel), sb = Lstat(b + rel);
      EXPECT_EQ(sa.st_mode, sb.st_mode) << rel;
      if (S_ISREG(sa.st_mode)) {
        EXPECT_EQ(ReadFile(a + rel), ReadFile(b + rel)) << rel;
        EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec) << rel;
        EXPECT_EQ(sa.st_mtim.tv_nsec, sb.st_mtim.tv_nsec) << rel;
      }
      if (S_ISDIR(sa.st_mode)) {
        EXPECT_EQ(sa.st_mtim.tv_sec, sb.st_mtim.tv_sec) << rel;
      }
    }
    EXPECT_EQ(fs::read_symlink(b + "/link"), "a.txt");
    EXPECT_THAT(Temporaries(b), ::testing::IsEmpty());
  }
  // A tmpfs of `kib` KiB, unmounted at teardown; "" when mounting is not possible here.
  std::string SmallDisk(int kib) {
    const std::string path = dir_ + "/small";
    fs::create_directories(path);
    if (::mount("tmpfs", path.c_str(), "tmpfs", 0, absl::StrCat("size=", kib, "k").c_str()) != 0) {
      return "";
    }
    mount_ = path;
    return path;
  }

  std::string dir_, mount_;
};

TEST_F(FilesTest, PushAndPullATreeKeepingModesTimesAndSymlinks) {
  const std::string src = MakeTree();
  Master master(TestFunctions());
  absl::StatusOr<Context> deep = master.SpawnPath("local/local");
  ASSERT_TRUE(deep.ok()) << deep.status();
  fs::create_directories(dir_ + "/into");
  TransferOptions options;
  options.recursive = true;
  int64_t last_done = -1, last_total = -1;
  options.progress = [&](int64_t done, int64_t total) {
    EXPECT_GE(done, last_done);
    last_done = done;
    last_total = total;
  };
  // Into an existing directory: the copy goes inside it, under the source's name.
  absl::StatusOr<TransferSummary> pushed =
      PushFiles(master.router(), {deep->id()}, src, dir_ + "/into", options);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_TRUE(pushed->ok()) << pushed->results[0].status;
  EXPECT_EQ(pushed->entries, 7);
  EXPECT_EQ(pushed->bytes, (3 << 20) + 6);
  EXPECT_EQ(last_done, last_total);
  ExpectSameTree(src, dir_ + "/into/src");

  // Back again, to a path that does not exist yet: that path becomes the copy.
  last_done = -1;
  absl::StatusOr<TransferSummary> pulled =
      PullFiles(master.router(), deep->id(), dir_ + "/into/src", dir_ + "/back", options);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  ASSERT_TRUE(pulled->ok()) << pulled->results[0].status;
  ExpectSameTree(src, dir_ + "/back");
  EXPECT_EQ(pulled->bytes, (3 << 20) + 6);
  EXPECT_EQ(FileStats(*deep).served_bytes(), 0);  // Copied in the kernel, here.

  // One file onto a new name; a directory without recursive is refused.
  absl::StatusOr<TransferSummary> one =
      PushFiles(master.router(), {deep->id()}, src + "/a.txt", dir_ + "/one.txt");
  ASSERT_TRUE(one.ok() && one->ok());
  EXPECT_EQ(ReadFile(dir_ + "/one.txt"), "hello\n");
  absl::StatusOr<TransferSummary> no_r = PushFiles(master.router(), {deep->id()}, src, dir_ + "/x");
  EXPECT_EQ(no_r.status().code(), absl::StatusCode::kInvalidArgument) << no_r.status();
}

TEST_F(FilesTest, FanOutSendsEachByteOncePerLink) {
  Master master(TestFunctions());
  absl::StatusOr<Context> relay = master.Spawn("local,name=relay");
  ASSERT_TRUE(relay.ok());
  std::vector<ContextId> targets;
  for (const char* name : {"local,name=t1", "local,name=t2", "local,name=t3"}) {
    absl::StatusOr<Context> t = relay->Spawn(name);
    ASSERT_TRUE(t.ok()) << t.status();
    targets.push_back(t->id());
  }
  absl::StatusOr<Context> direct = master.Spawn("local,name=direct");
  ASSERT_TRUE(direct.ok());
  targets.push_back(direct->id());
  const std::string data = RandomBytes(4 << 20, 11);
  WriteFile(dir_ + "/payload", data, 0644);
  // Each target writes to a directory of its own (they share this host's filesystem). The
  // bytes travel, as they would to other hosts.
  TransferOptions streamed;
  streamed.kernel_copy = false;
  absl::StatusOr<TransferSummary> pushed =
      PushFiles(master.router(), targets, dir_ + "/payload", dir_ + "/copy", streamed);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_EQ(pushed->results.size(), 4u);
  for (const TargetResult& r : pushed->results) EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(ReadFile(dir_ + "/copy"), data);

  // The relay received the bytes once and sent them once to each of its three children.
  v1::FileStatsReply at_relay = FileStats(*relay);
  EXPECT_EQ(at_relay.received_bytes(), static_cast<int64_t>(data.size()));
  EXPECT_EQ(at_relay.relayed_bytes(), 3 * static_cast<int64_t>(data.size()));
  for (ContextId t : targets) {
    absl::StatusOr<Context> c = master.Find(t);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(FileStats(*c).received_bytes(), static_cast<int64_t>(data.size()));
  }
  EXPECT_EQ(pushed->bytes, static_cast<int64_t>(data.size()));
}

TEST_F(FilesTest, SmallCallsInterleaveWithALargeTransferOnTheSameLink) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=busy");
  ASSERT_TRUE(child.ok());
  const int64_t size = int64_t{64} << 20;
  WriteFile(dir_ + "/large", RandomBytes(size, 17), 0644);
  // Pings go out once an eighth of the file is through and must all come back before the
  // last chunk does: they do not queue behind the rest of the file.
  absl::Mutex mu;
  int64_t done_bytes = 0;
  int pings_during = 0;
  bool pings_finished = false;
  std::thread pinger([&] {
    {
      absl::MutexLock lock(&mu);
      auto started = [&] { return done_bytes >= size / 8; };
      mu.Await(absl::Condition(&started));
    }
    for (int i = 0; i < 10; ++i) {
      absl::Status ping = child->Ping();
      EXPECT_TRUE(ping.ok()) << ping;
      absl::MutexLock lock(&mu);
      if (done_bytes < size) ++pings_during;
    }
    absl::MutexLock lock(&mu);
    pings_finished = true;
  });
  TransferOptions options;
  options.kernel_copy = false;  // The bytes cross the link.
  options.progress = [&](int64_t done, int64_t) {
    absl::MutexLock lock(&mu);
    done_bytes = done;
    // The last chunk waits for the pings (or for them to have failed): a ping stuck
    // behind the file would hold the transfer here and the test would time out.
    if (done >= size) {
      auto finished = [&] { return pings_finished; };
      mu.AwaitWithTimeout(absl::Condition(&finished), absl::Seconds(30));
    }
  };
  absl::StatusOr<TransferSummary> pushed =
      PushFiles(master.router(), {child->id()}, dir_ + "/large", dir_ + "/large-copy", options);
  pinger.join();
  ASSERT_TRUE(pushed.ok() && pushed->ok()) << pushed.status();
  EXPECT_EQ(pings_during, 10);
}

TEST_F(FilesTest, ErrorsNameThePathAndTheContext) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=files-child");
  ASSERT_TRUE(child.ok());
  absl::StatusOr<TransferSummary> missing =
      PushFiles(master.router(), {child->id()}, dir_ + "/no-such-file", dir_ + "/x");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  EXPECT_THAT(missing.status().message(), HasSubstr(dir_ + "/no-such-file"));
  EXPECT_THAT(missing.status().message(), HasSubstr("context master"));

  absl::StatusOr<TransferSummary> pull_missing =
      PullFiles(master.router(), child->id(), dir_ + "/no-such-file", dir_ + "/x");
  EXPECT_EQ(pull_missing.status().code(), absl::StatusCode::kNotFound) << pull_missing.status();
  EXPECT_THAT(pull_missing.status().message(), HasSubstr("context files-child"));

  WriteFile(dir_ + "/f", "data", 0644);
  absl::StatusOr<TransferSummary> relative =
      PushFiles(master.router(), {child->id()}, dir_ + "/f", "relative/path");
  EXPECT_EQ(relative.status().code(), absl::StatusCode::kInvalidArgument);

  if (::geteuid() == 0) {
    // A context running as nobody cannot write into a directory of root's.
    absl::StatusOr<Context> nobody = master.Spawn(
        "command:setpriv --reuid=nobody --regid=nogroup --clear-groups sh,name=as-nobody");
    ASSERT_TRUE(nobody.ok()) << nobody.status();
    ::chmod(dir_.c_str(), 0755);
    absl::StatusOr<TransferSummary> denied =
        PushFiles(master.router(), {nobody->id()}, dir_ + "/f", dir_ + "/by-nobody");
    ASSERT_TRUE(denied.ok()) << denied.status();
    ASSERT_EQ(denied->results.size(), 1u);
    EXPECT_EQ(denied->results[0].status.code(), absl::StatusCode::kPermissionDenied)
        << denied->results[0].status;
    EXPECT_THAT(denied->results[0].status.message(), HasSubstr(dir_ + "/by-nobody"));
    EXPECT_THAT(denied->results[0].status.message(), HasSubstr("context as-nobody"));
    EXPECT_FALSE(fs::exists(dir_ + "/by-nobody"));
  }
}

// The receiving side driven by hand, as a sender that misbehaves would: the entry goes
// without a digest and the last chunk (by offset) brings it; chunks arrive in any order.
TEST_F(FilesTest, TheReceiverVerifiesWhatArrivedInAnyOrder) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=receiver");
  ASSERT_TRUE(child.ok()) << child.status();
  const std::string data = RandomBytes(5 * 100000 + 123, 11);
  WriteFile(dir_ + "/source", data, 0644);
  const std::string digest = Sha256::Hex(data);
  struct Case {
    std::string name;
    std::vector<int> order;  // Of the six chunks.
    std::string sha256;      // Sent with the last chunk.
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {"in-order", {0, 1, 2, 3, 4, 5}, digest, absl::StatusCode::kOk},
      {"reversed", {5, 4, 3, 2, 1, 0}, digest, absl::StatusCode::kOk},
      {"shuffled", {2, 0, 5, 1, 4, 3}, digest, absl::StatusCode::kOk},
      {"wrong-digest", {0, 1, 2, 3, 4, 5}, std::string(64, '0'), absl::StatusCode::kDataLoss},
      {"no-digest", {0, 1, 2, 3, 4, 5}, "", absl::StatusCode::kDataLoss},
  };
  uint64_t transfer = 1000;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string dest = dir_ + "/" + c.name;
    v1::ReceiveRequest receive;
    receive.set_transfer(++transfer);
    receive.set_dest(dest);
    receive.mutable_entry()->set_kind(v1::FileEntry::FILE);
    receive.mutable_entry()->set_size(static_cast<int64_t>(data.size()));
    receive.mutable_entry()->set_mode(0644);
    receive.add_targets(child->id().value());
    auto received = child->CallAsync<v1::ReceiveReply>("grove.file_receive", receive);
    for (int i : c.order) {
      v1::ChunkRequest chunk;
      chunk.set_transfer(transfer);
      chunk.set_offset(i * 100000);
      chunk.set_data(data.substr(i * 100000, 100000));
      if (i == 5) chunk.set_sha256(c.sha256);
      ASSERT_TRUE(child->Call<v1::Empty>("grove.file_chunk", chunk).ok());
    }
    absl::StatusOr<v1::ReceiveReply> reply = received.get();
    ASSERT_TRUE(reply.ok()) << reply.status();
    ASSERT_EQ(reply->results_size(), 1);
    EXPECT_EQ(reply->results(0).code(), static_cast<int>(c.code)) << reply->results(0).message();
    if (c.code == absl::StatusCode::kOk) {
      EXPECT_EQ(ReadFile(dest), data);
    } else {
      EXPECT_THAT(reply->results(0).message(), HasSubstr(dest + " in context receiver did not "
                                                         "verify"));
      EXPECT_FALSE(fs::exists(dest));
    }
  }
  EXPECT_THAT(Temporaries(dir_), ::testing::IsEmpty());
}

// A target on this host, as the same user, copies in the kernel: no byte crosses the two links
// on the way, and the copy keeps mode and time. With kernel_copy off the same push streams; a
// target running as another user cannot open the source and is streamed to.
TEST_F(FilesTest, ATargetOnThisHostCopiesInTheKernel) {
  Master master(TestFunctions());
  absl::StatusOr<Context> middle = master.Spawn("local,name=middle");
  ASSERT_TRUE(middle.ok()) << middle.status();
  absl::StatusOr<Context> leaf = middle->Spawn("local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  const std::string data = RandomBytes((5 << 20) + 7, 23);
  const int64_t size = static_cast<int64_t>(data.size());
  WriteFile(dir_ + "/src", data, 0640);
  struct timespec times[2] = {{1000000000, 5}, {1000000000, 5}};
  ::utimensat(AT_FDCWD, (dir_ + "/src").c_str(), times, 0);
  TransferOptions options;
  int64_t last_done = -1;
  options.progress = [&](int64_t done, int64_t) { last_done = done; };
  absl::StatusOr<TransferSummary> pushed =
      PushFiles(master.router(), {leaf->id()}, dir_ + "/src", dir_ + "/copied", options);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_TRUE(pushed->ok()) << pushed->results[0].status;
  EXPECT_EQ(pushed->bytes, size);
  EXPECT_EQ(last_done, size);
  EXPECT_EQ(ReadFile(dir_ + "/copied"), data);
  struct stat copied = Lstat(dir_ + "/copied");
  EXPECT_EQ(copied.st_mode & 07777, 0640u);
  EXPECT_EQ(copied.st_mtim.tv_sec, 1000000000);
  EXPECT_EQ(copied.st_mtim.tv_nsec, 5);
  EXPECT_EQ(FileStats(*leaf).copied_bytes(), size);
  EXPECT_EQ(FileStats(*leaf).received_bytes(), 0);
  EXPECT_EQ(FileStats(*middle).received_bytes(), 0);
  EXPECT_EQ(FileStats(*middle).copied_bytes(), 0);

  options.kernel_copy = false;
  pushed = PushFiles(master.router(), {leaf->id()}, dir_ + "/src", dir_ + "/streamed", options);
  ASSERT_TRUE(pushed.ok() && pushed->ok());
  EXPECT_EQ(ReadFile(dir_ + "/streamed"), data);
  EXPECT_EQ(FileStats(*leaf).copied_bytes(), size);
  EXPECT_EQ(FileStats(*leaf).received_bytes(), size);
  EXPECT_EQ(FileStats(*middle).relayed_bytes(), size);

  if (::geteuid() == 0) {
    absl::StatusOr<Context> nobody = master.Spawn(
        "command:setpriv --reuid=nobody --regid=nogroup --clear-groups sh,name=as-nobody");
    ASSERT_TRUE(nobody.ok()) << nobody.status();
    ::chmod(dir_.c_str(), 0777);
    options.kernel_copy = true;
    for (const char* name : {"/by-nobody-1", "/by-nobody-2"}) {
      pushed = PushFiles(master.router(), {nobody->id(), leaf->id()}, dir_ + "/src", dir_ + name,
                         options);
      ASSERT_TRUE(pushed.ok()) << pushed.status();
      for (const TargetResult& r : pushed->results) EXPECT_TRUE(r.status.ok()) << r.status;
    }
    // Each target writes to the same path here: the later rename wins; both are whole copies.
    EXPECT_EQ(ReadFile(dir_ + "/by-nobody-2"), data);
    EXPECT_EQ(FileStats(*nobody).received_bytes(), 2 * size);
    EXPECT_EQ(FileStats(*nobody).copied_bytes(), 0);
    EXPECT_EQ(FileStats(*leaf).copied_bytes(), 3 * size);
  }
  EXPECT_THAT(Temporaries(dir_), ::testing::IsEmpty());
}

// A pull from a context whose files this one cannot open (another pid namespace: its pid
// means another process here) streams them, with digests; so does one with kernel_copy off.
TEST_F(FilesTest, APullThatCannotCopyInTheKernelStreams) {
  const std::string src = MakeTree();
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=near");
  ASSERT_TRUE(child.ok()) << child.status();
  TransferOptions options;
  options.recursive = true;
  options.kernel_copy = false;
  absl::StatusOr<TransferSummary> pulled =
      PullFiles(master.router(), child->id(), src, dir_ + "/streamed", options);
  ASSERT_TRUE(pulled.ok() && pulled->ok());
  ExpectSameTree(src, dir_ + "/streamed");
  EXPECT_EQ(FileStats(*child).served_bytes(), (3 << 20) + 6);

  if (::geteuid() != 0) GTEST_SKIP() << "a pid namespace needs root";
  absl::StatusOr<Context> apart = master.Spawn("command:unshare --pid --fork sh,name=apart");
  ASSERT_TRUE(apart.ok()) << apart.status();
  options.kernel_copy = true;
  pulled = PullFiles(master.router(), apart->id(), src, dir_ + "/from-apart", options);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  ASSERT_TRUE(pulled->ok()) << pulled->results[0].status;
  ExpectSameTree(src, dir_ + "/from-apart");
  EXPECT_EQ(FileStats(*apart).served_bytes(), (3 << 20) + 6);
}

// grove.file_copy driven by hand, as a sender that misbehaves would: the receiver copies only
// the file the origin describes, unchanged, on its own kernel; anything else is not copied
// (the sender would stream) and leaves nothing behind.
TEST_F(FilesTest, AKernelCopyOpensOnlyTheFileItWasPromised) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=copier");
  ASSERT_TRUE(child.ok()) << child.status();
  const std::string data = RandomBytes(100000, 29);
  WriteFile(dir_ + "/source", data, 0644);
  UniqueFd file(::open((dir_ + "/source").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(file.valid());
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  UniqueFd pipe_read(pipe_fds[0]), pipe_write(pipe_fds[1]);
  auto origin_of = [](int fd) {
    struct stat st = {};
    ::fstat(fd, &st);
    std::string boot_id;
    std::getline(std::ifstream("/proc/sys/kernel/random/boot_id"), boot_id);
    v1::Origin origin;
    origin.set_boot_id(boot_id);
    origin.set_pid(::getpid());
    origin.set_fd(fd);
    origin.set_dev(st.st_dev);
    origin.set_ino(st.st_ino);
    origin.set_size(st.st_size);
    origin.set_ctime_ns(int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec);
    return origin;
  };
  const v1::Origin good = origin_of(file.get());
  struct Case {
    std::string name;
    v1::Origin origin;
  };
  std::vector<Case> cases(6, Case{"", good});
  cases[0].name = "another-kernel";
  cases[0].origin.set_boot_id("00000000-0000-0000-0000-000000000000");
  cases[1].name = "another-file";
  cases[1].origin.set_ino(good.ino() + 1);
  cases[2].name = "changed-since";
  cases[2].origin.set_ctime_ns(good.ctime_ns() - 1);
  cases[3].name = "another-size";
  cases[3].origin.set_size(good.size() + 1);
  cases[4].name = "no-such-fd";
  cases[4].origin.set_fd(1 << 30);
  cases[5].name = "a-pipe";
  cases[5].origin = origin_of(pipe_read.get());
  cases.push_back({"the-file", good});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::CopyRequest copy;
    copy.set_dest(dir_ + "/" + c.name);
    copy.mutable_entry()->set_kind(v1::FileEntry::FILE);
    copy.mutable_entry()->set_size(c.origin.size());
    copy.mutable_entry()->set_mode(0644);
    *copy.mutable_origin() = c.origin;
    absl::StatusOr<v1::CopyReply> reply = child->Call<v1::CopyReply>("grove.file_copy", copy);
    ASSERT_TRUE(reply.ok()) << reply.status();
    const bool genuine = c.name == "the-file";
    EXPECT_EQ(reply->copied(), genuine);
    EXPECT_EQ(fs::exists(copy.dest()), genuine);
    if (genuine) {
      EXPECT_EQ(ReadFile(copy.dest()), data);
    }
  }
  v1::CopyRequest relative;
  relative.set_dest("relative/path");
  *relative.mutable_origin() = good;
  absl::StatusOr<v1::CopyReply> refused = child->Call<v1::CopyReply>("grove.file_copy", relative);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(Temporaries(dir_), ::testing::IsEmpty());
}

// A kernel copy cut off by its deadline: the caller gets DEADLINE_EXCEEDED, the target drops
// its temporary file and stays usable.
TEST_F(FilesTest, AKernelCopyPastItsDeadlineLeavesNothing) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const std::string disk = SmallDisk(4 << 20);  // 4 GiB of memory, used as far as the copy gets.
  if (disk.empty()) GTEST_SKIP() << "cannot mount a tmpfs here";
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=slow-copy");
  ASSERT_TRUE(child.ok()) << child.status();
  // 64 GiB without blocks: many seconds of copying, far past the deadline.
  ASSERT_TRUE(MakeSparseFile(dir_ + "/huge", int64_t{64} << 30));
  TransferOptions options;
  options.call.timeout = absl::Milliseconds(300);
  absl::StatusOr<TransferSummary> pushed =
      PushFiles(master.router(), {child->id()}, dir_ + "/huge", disk + "/huge", options);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_EQ(pushed->results.size(), 1u);
  EXPECT_EQ(pushed->results[0].status.code(), absl::StatusCode::kDeadlineExceeded)
      << pushed->results[0].status;
  EXPECT_TRUE(WaitForNoTemporaries(disk, absl::Now() + absl::Seconds(10)));
  EXPECT_FALSE(fs::exists(disk + "/huge"));
  EXPECT_EQ(FileStats(*child).copied_bytes(), 0);
  EXPECT_TRUE(child->Ping().ok());
}

TEST_F(FilesTest, AKernelCopyReportsItsProgressAsItGoes) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=progress");
  ASSERT_TRUE(child.ok()) << child.status();
  constexpr int64_t kSize = int64_t{64} << 20;  // Four steps of a kernel copy (16 MiB).
  ASSERT_TRUE(MakeSparseFile(dir_ + "/sparse", kSize));
  for (bool push : {true, false}) {
    SCOPED_TRACE(push ? "push" : "pull");
    std::vector<int64_t> seen;
    TransferOptions options;
    options.progress = [&seen, kSize](int64_t done, int64_t total) {
      EXPECT_EQ(total, kSize);
      seen.push_back(done);
    };
    const std::string dest = dir_ + (push ? "/pushed" : "/pulled");
    absl::StatusOr<TransferSummary> moved =
        push ? PushFiles(master.router(), {child->id()}, dir_ + "/sparse", dest, options)
             : PullFiles(master.router(), child->id(), dir_ + "/sparse", dest, options);
    ASSERT_TRUE(moved.ok()) << moved.status();
    ASSERT_TRUE(moved->ok()) << moved->results[0].status;
    EXPECT_EQ(Lstat(dest).st_size, kSize);
    // From 0 to the whole file, never back, and part way on the way (not once, at the end).
    ASSERT_GE(seen.size(), 3u);
    EXPECT_EQ(seen.front(), 0);
    EXPECT_EQ(seen.back(), kSize);
    EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
    EXPECT_GT(seen[1], 0);
    EXPECT_LT(seen[1], kSize);
  }
  // Both were kernel copies: the child copied the push and served no byte of the pull.
  v1::FileStatsReply stats = FileStats(*child);
  EXPECT_EQ(stats.copied_bytes(), kSize);
  EXPECT_EQ(stats.served_bytes(), 0);
}

TEST_F(FilesTest, APullsKernelCopyEndsWithTheCallItIsPartOf) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const std::string disk = SmallDisk(4 << 20);  // 4 GiB of memory, used as far as the copy gets.
  if (disk.empty()) GTEST_SKIP() << "cannot mount a tmpfs here";
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=held");
  ASSERT_TRUE(child.ok()) << child.status();
  // 64 GiB without blocks: were the copy not stopped, it would fill the 4 GiB disk.
  ASSERT_TRUE(MakeSparseFile(dir_ + "/huge", int64_t{64} << 30));
  for (bool by_deadline : {false, true}) {
    SCOPED_TRACE(by_deadline ? "the call's deadline passes" : "the call is cancelled");
    // The call of a function that pulls (CallOptions::parent), made by hand here.
    CallContext call(&master.router(), master.router().id(), 1,
                     by_deadline ? absl::Now() + absl::Milliseconds(300) : absl::InfiniteFuture());
    TransferOptions options;
    options.call.parent = &call;
    if (!by_deadline) {
      options.progress = [&call](int64_t done, int64_t) {
        if (done > 0) call.cancel_source().Cancel();  // Once bytes were copied.
      };
    }
    absl::StatusOr<TransferSummary> pulled =
        PullFiles(master.router(), child->id(), dir_ + "/huge", disk + "/huge", options);
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    ASSERT_EQ(pulled->results.size(), 1u);
    EXPECT_EQ(pulled->results[0].status.code(),
              by_deadline ? absl::StatusCode::kDeadlineExceeded : absl::StatusCode::kCancelled)
        << pulled->results[0].status;
    EXPECT_FALSE(fs::exists(disk + "/huge"));
    EXPECT_THAT(Temporaries(disk), ::testing::IsEmpty());
  }
  EXPECT_EQ(FileStats(*child).served_bytes(), 0);
  EXPECT_TRUE(child->Ping().ok());
}

TEST_F(FilesTest, AFullDiskLeavesNothingUnderTheFinalName) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a tmpfs needs root";
  const std::string small = SmallDisk(1024);
  if (small.empty()) GTEST_SKIP() << "cannot mount a tmpfs here";
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local,name=disk-child");
  ASSERT_TRUE(child.ok());
  WriteFile(dir_ + "/big", RandomBytes(3 << 20, 5), 0644);
  for (bool kernel_copy : {true, false}) {
    SCOPED_TRACE(kernel_copy ? "kernel copy" : "streamed");
    TransferOptions options;
    options.kernel_copy = kernel_copy;
    absl::StatusOr<TransferSummary> pushed =
        PushFiles(master.router(), {child->id()}, dir_ + "/big", small + "/big", options);
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    ASSERT_EQ(pushed->results.size(), 1u);
    EXPECT_EQ(pushed->results[0].status.code(), absl::StatusCode::kResourceExhausted)
        << pushed->results[0].status;
    EXPECT_THAT(pushed->results[0].status.message(), HasSubstr(small + "/big"));
    EXPECT_THAT(pushed->results[0].status.message(), HasSubstr("disk-child"));
    EXPECT_FALSE(fs::exists(small + "/big"));
    EXPECT_THAT(Temporaries(small), ::testing::IsEmpty());
    // The link is fine afterwards.
    EXPECT_TRUE(child->Ping().ok());
  }
}

TEST_F(FilesTest, AContextLostMidTransferLeavesNoTemporaryFile) {
  Master master(TestFunctions());
  absl::StatusOr<Context> middle = master.Spawn("local,name=middle");
  ASSERT_TRUE(middle.ok());
  absl::StatusOr<Context> leaf = middle->Spawn("local,name=leaf");
  ASSERT_TRUE(leaf.ok());
  absl::StatusOr<v1::InfoReply> middle_info = middle->Info();
  absl::StatusOr<v1::InfoReply> leaf_info = leaf->Info();
  ASSERT_TRUE(middle_info.ok() && leaf_info.ok());
  WriteFile(dir_ + "/big", RandomBytes(32 << 20, 3), 0644);
  fs::create_directories(dir_ + "/out");
  // Push to the leaf through the middle; the middle is killed once bytes flow.
  TransferOptions options;
  options.kernel_copy = false;  // Bytes flow through the middle.
  options.progress = [&](int64_t done, int64_t) {
    if (done >= (4 << 20) && done < (4 << 20) + options.chunk_bytes) {
      ::kill(static_cast<pid_t>(middle_info->pid()), SIGKILL);
    }
  };
  absl::StatusOr<TransferSummary> pushed =
      PushFiles(master.router(), {leaf->id()}, dir_ + "/big", dir_ + "/out/big", options);
  ASSERT_TRUE(pushed.ok()) << pushed.status();
  ASSERT_EQ(pushed->results.size(), 1u);
  EXPECT_EQ(pushed->results[0].status.code(), absl::StatusCode::kUnavailable)
      << pushed->results[0].status;
  EXPECT_THAT(pushed->results[0].status.message(), HasSubstr("middle"));
  // The leaf loses its parent and exits; its partial file goes with its transfer.
  UniqueFd leaf_pidfd(static_cast<int>(::syscall(SYS_pidfd_open, leaf_info->pid(), 0)));
  if (leaf_pidfd.valid()) {
    struct pollfd p = {leaf_pidfd.get(), POLLIN, 0};
    ASSERT_EQ(::poll(&p, 1, 10000), 1) << "the leaf did not exit";
  }
  EXPECT_FALSE(fs::exists(dir_ + "/out/big"));
  EXPECT_THAT(Temporaries(dir_ + "/out"), ::testing::IsEmpty());

  // A pull from a context killed mid-transfer: UNAVAILABLE, nothing left here.
  absl::StatusOr<Context> source = master.Spawn("local,name=source");
  ASSERT_TRUE(source.ok());
  absl::StatusOr<v1::InfoReply> source_info = source->Info();
  ASSERT_TRUE(source_info.ok());
  TransferOptions pull_options;
  pull_options.kernel_copy = false;  // Bytes flow from the source.
  pull_options.progress = [&](int64_t done, int64_t) {
    if (done >= (4 << 20) && done < (4 << 20) + pull_options.chunk_bytes) {
      ::kill(static_cast<pid_t>(source_info->pid()), SIGKILL);
    }
  };
  absl::StatusOr<TransferSummary> pulled =
      PullFiles(master.router(), source->id(), dir_ + "/big", dir_ + "/out/pulled", pull_options);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  ASSERT_EQ(pulled->results.size(), 1u);
  EXPECT_EQ(pulled->results[0].status.code(), absl::StatusCode::kUnavailable)
      << pulled->results[0].status;
  EXPECT_THAT(pulled->results[0].status.message(), HasSubstr("source"));
  EXPECT_FALSE(fs::exists(dir_ + "/out/pulled"));
  EXPECT_THAT(Temporaries(dir_ + "/out"), ::testing::IsEmpty());
}

// Names are bytes on Linux: a tree whose names are not UTF-8 goes and comes back whole,
// streamed and copied in the kernel; a command's argv may hold such bytes too.
TEST_F(FilesTest, NamesAndArgumentsThatAreNotUtf8) {
  const std::string src = dir_ + "/src\xff";
  fs::create_directories(src + "/d\xfe" "x");
  WriteFile(src + "/d\xfe" "x/f\xff", "bytes\n", 0644);
  ASSERT_EQ(::symlink("d\xfe" "x/f\xff", (src + "/l\xfd").c_str()), 0);
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  for (bool kernel_copy : {true, false}) {
    const std::string to = dir_ + (kernel_copy ? "/k" : "/s");
    TransferOptions options;
    options.recursive = true;
    options.kernel_copy = kernel_copy;
    absl::StatusOr<TransferSummary> pushed =
        PushFiles(master.router(), {child->id()}, src, to + "\xff", options);
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    ASSERT_TRUE(pushed->ok()) << pushed->results[0].status;
    absl::StatusOr<TransferSummary> pulled =
        PullFiles(master.router(), child->id(), to + "\xff", to + "-back", options);
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    ASSERT_TRUE(pulled->ok()) << pulled->results[0].status;
    EXPECT_EQ(ReadFile(to + "-back/d\xfe" "x/f\xff"), "bytes\n");
    EXPECT_EQ(fs::read_symlink(to + "-back/l\xfd").string(), "d\xfe" "x/f\xff");
  }
  v1::RunRequest run;
  run.add_argv("printf");
  run.add_argv("%s");
  run.add_argv("a\xff" "b");
  absl::StatusOr<v1::RunReply> ran = child->Run(run);
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(ran->stdout(), "a\xff" "b");
}

// A source that changes while a streamed push reads it fails the push with DATA_LOSS for
// every target, and nothing is left under the final name (nor a temporary file): rewritten
// in the middle, or grown.
TEST_F(FilesTest, ASourceChangedDuringAStreamedPushFailsIt) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  for (const char* change : {"rewritten", "grown"}) {
    const std::string src = dir_ + "/changing";
    WriteFile(src, RandomBytes(8 << 20, 11), 0644);
    const std::string dest = dir_ + "/dest-" + change;
    TransferOptions options;
    options.kernel_copy = false;
    options.chunk_bytes = 256 << 10;
    bool changed = false;
    // Called on the pushing thread as chunks go: the change happens mid-transfer, for sure.
    options.progress = [&](int64_t done, int64_t) {
      if (changed || done == 0) return;
      changed = true;
      std::fstream f(src, std::ios::in | std::ios::out | std::ios::binary);
      if (std::string(change) == "grown") f.seekp(0, std::ios::end);
      f << "changed";
    };
    absl::StatusOr<TransferSummary> pushed =
        PushFiles(master.router(), {child->id()}, src, dest, options);
    ASSERT_TRUE(changed) << change;
    ASSERT_TRUE(pushed.ok()) << pushed.status();
    ASSERT_EQ(pushed->results.size(), 1u);
    EXPECT_EQ(pushed->results[0].status.code(), absl::StatusCode::kDataLoss)
        << change << ": " << pushed->results[0].status;
    EXPECT_FALSE(fs::exists(dest)) << change;
    // The receiver drops its temporary file when the cancellation reaches it.
    EXPECT_TRUE(WaitForNoTemporaries(dir_, absl::Now() + absl::Seconds(10))) << change;
  }
}

TEST_F(FilesTest, CliPushPullAndCall) {
  const char* srcdir = ::getenv("TEST_SRCDIR");
  const std::string grove =
      srcdir ? std::string(srcdir) + "/grove/tools/grove" : "bazel-bin/tools/grove";
  const std::string src = MakeTree();
  auto run = [&](std::vector<std::string> argv, std::string* out) {
    auto pipe = Pipe();
    EXPECT_TRUE(pipe.ok());
    SpawnOptions spawn;
    spawn.argv = std::move(argv);
    spawn.argv.insert(spawn.argv.begin(), grove);
    spawn.fds = {{1, pipe->second.get()}};
    absl::StatusOr<Process> cli = Process::Spawn(spawn);
    EXPECT_TRUE(cli.ok()) << cli.status();
    pipe->second.Reset();
    char buffer[4096];
    for (ssize_t n; (n = ::read(pipe->first.get(), buffer, sizeof(buffer))) > 0;) {
      out->append(buffer, n);
    }
    absl::StatusOr<int> status = cli->Wait(absl::Now() + absl::Seconds(60));
    return status.ok() ? ExitCodeOf(*status) : -1;
  };
  std::string out;
  EXPECT_EQ(run({"push", "-r", "--json", "local,name=p1", "local/local,name=p2", "--", src,
                 dir_ + "/pushed"},
                &out),
            0);
  EXPECT_THAT(out, HasSubstr("\"context\":\"p1\",\"state\":\"ok\""));
  EXPECT_THAT(out, HasSubstr("\"context\":\"p2\",\"state\":\"ok\""));
  ExpectSameTree(src, dir_ + "/pushed");
  out.clear();
  EXPECT_EQ(run({"pull", "-r", "local", "--", src, dir_ + "/pulled"}, &out), 0);
  ExpectSameTree(src, dir_ + "/pulled");
  out.clear();
  EXPECT_EQ(run({"push", "local", "--", dir_ + "/nothing-here", dir_ + "/x"}, &out), 1);
  out.clear();
  EXPECT_EQ(run({"call", "local,name=called", "grove.info", "{}"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("\"name\":\"called\""));
  out.clear();
  EXPECT_EQ(run({"call", "local", "grove.run", "{\"argv\":[\"echo\",\"hi\"]}"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("\"stdout\":\"hi\\n\""));  // Bytes that are text, as text.
  EXPECT_THAT(out, HasSubstr("\"exit_status\":0"));
  out.clear();
  EXPECT_EQ(run({"call", "local", "grove.run", "{not json"}, &out), 2);
  EXPECT_EQ(run({"call", "local", "no.such.function", "{}"}, &out), 2);
}

}  // namespace
}  // namespace grove::testing
