// Pulls from a child that lies: the child runs as a Router in this process on an in-memory
// link, and the test writes what it likes on the child's end of that link, as a compromised
// child could (it owns its end of the socket).
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "files/files.h"
#include "glog/logging.h"
#include "gtest/gtest.h"
#include "link/testing/in_memory_link.h"
#include "proto/files.pb.h"
#include "proto/grove.pb.h"
#include "router/context.h"
#include "router/router.h"
#include "router/testing/in_process_launcher.h"

namespace grove {
namespace {

class PullFromAHostileChildTest : public ::testing::Test {
 protected:
  PullFromAHostileChildTest() {
    launcher_ = std::make_unique<InProcessLauncher>(&network_, nullptr,
                                                    std::vector<Component>{FilesComponent()});
    Router::Options options;
    options.self.set_id(0);
    options.self.set_name("master");
    options.self.set_method("master");
    options.self.set_host("in-memory");
    options.stop_grace = absl::Milliseconds(100);
    options.components = {FilesComponent()};
    master_ = std::make_unique<Router>(options);
    master_->AddLauncher("local", launcher_.get());
  }
  void TearDown() override {
    launcher_->ShutdownAll();
    master_->Shutdown(absl::CancelledError("the test is over"));
    EXPECT_TRUE(network_.WaitUntilAllDown(absl::Seconds(20)));
    master_.reset();
    launcher_.reset();
  }
  Context Spawn(const std::string& name) {
    absl::StatusOr<Context> c =
        Context(master_.get(), kMasterId, "master").Spawn(absl::StrCat("local,name=", name));
    CHECK(c.ok()) << c.status();
    return *c;
  }

  // Declared in destruction order: the network (joining link threads) goes last.
  InMemoryNetwork network_;
  std::unique_ptr<InProcessLauncher> launcher_;
  std::unique_ptr<Router> master_;
};

// A pull from a child that lies in its grove.file_list reply: it names entries outside the
// destination (".." components, an absolute path, a path under a symlink it listed). The pull
// is refused before anything is written, and nothing appears outside (or inside) DEST.
TEST_F(PullFromAHostileChildTest, APullWritesNothingOutsideItsDestinationWhateverTheSourceLists) {
  char tmpl[] = "/tmp/grove-hostile-pull.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::filesystem::path base = tmpl;
  const std::filesystem::path outside = base / "outside";
  const std::filesystem::path dest = base / "d1" / "d2" / "dest";
  std::filesystem::create_directories(outside);
  std::filesystem::create_directories(dest);
  std::filesystem::create_directories(base / "src");
  Context c1 = Spawn("c1");

  auto file = [](const std::string& path) {
    v1::FileEntry e;
    e.set_path(path);
    e.set_kind(v1::FileEntry::FILE);
    e.set_mode(0644);
    e.set_sha256("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");  // Empty.
    return e;
  };
  auto directory = [](const std::string& path) {
    v1::FileEntry e;
    e.set_path(path);
    e.set_kind(v1::FileEntry::DIRECTORY);
    e.set_mode(0755);
    return e;
  };
  v1::FileEntry link;
  link.set_path("link");
  link.set_kind(v1::FileEntry::SYMLINK);
  link.set_mode(0777);
  link.set_symlink_target(outside.string());
  // dest/src/../../../ is base/d1.
  const std::vector<std::vector<v1::FileEntry>> lies = {
      {directory(""), file("../../../escaped")},
      {directory(""), directory("a"), file("a/../../../../escaped")},
      {directory(""), file((outside / "escaped").string())},
      {directory(""), link, file("link/escaped")},
      {directory(""), link, directory("link/sub")},
      {directory(""), file("x"), file("x/escaped")},
      {file(""), file("escaped")},
  };
  for (const std::vector<v1::FileEntry>& lie : lies) {
    v1::ListReply listing;
    for (const v1::FileEntry& e : lie) *listing.add_entries() = e;
    // The child's side of its link answers grove.file_list before its router does; the
    // router's true reply comes second and is dropped.
    InMemoryLink* end = launcher_->child_end(c1.id()).get();
    end->SetObserver([end, listing](const v1::Envelope& e) {
      if (!e.has_call() || e.call().function() != "grove.file_list") return;
      v1::Envelope reply;
      reply.set_src(e.dst());
      reply.set_dst(e.src());
      reply.mutable_reply()->set_id(e.call().id());
      reply.mutable_reply()->set_result(listing.SerializeAsString());
      end->Send(std::move(reply));
    });
    TransferOptions options;
    options.recursive = true;
    absl::StatusOr<TransferSummary> pulled =
        PullFiles(*master_, c1.id(), (base / "src").string(), dest.string(), options);
    const std::string listed = lie.back().path();
    ASSERT_FALSE(pulled.ok()) << listed;
    EXPECT_EQ(pulled.status().code(), absl::StatusCode::kPermissionDenied) << pulled.status();
    EXPECT_TRUE(absl::StrContains(pulled.status().message(), "c1")) << pulled.status();
    // Nothing anywhere: not outside, not above DEST, not in it.
    for (const auto& entry : std::filesystem::recursive_directory_iterator(base)) {
      EXPECT_NE(entry.path().filename(), "escaped") << listed << ": " << entry.path();
    }
    EXPECT_TRUE(std::filesystem::is_empty(dest)) << listed;
    EXPECT_TRUE(std::filesystem::is_empty(outside)) << listed;
  }
  launcher_->child_end(c1.id())->SetObserver(nullptr);
  std::filesystem::remove_all(base);
}

// Without a lie, the same child's pull works: the checks refuse nothing that Scan lists.
TEST_F(PullFromAHostileChildTest, AnHonestPullOfATreeWithSymlinksStillWorks) {
  char tmpl[] = "/tmp/grove-honest-pull.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::filesystem::path base = tmpl;
  std::filesystem::create_directories(base / "src" / "a" / "b");
  std::filesystem::create_directories(base / "dest");
  { std::ofstream(base / "src" / "a" / "b" / "f") << "data"; }
  std::filesystem::create_symlink("a/b", base / "src" / "link");
  std::filesystem::create_symlink("/nowhere/at/all", base / "src" / "a" / "dangling");
  Context c1 = Spawn("c1");
  for (bool kernel_copy : {true, false}) {
    std::filesystem::remove_all(base / "dest" / "src");
    TransferOptions options;
    options.recursive = true;
    options.kernel_copy = kernel_copy;
    absl::StatusOr<TransferSummary> pulled =
        PullFiles(*master_, c1.id(), (base / "src").string(), (base / "dest").string(), options);
    ASSERT_TRUE(pulled.ok()) << pulled.status();
    ASSERT_TRUE(pulled->ok()) << pulled->results[0].status;
    std::ifstream in(base / "dest" / "src" / "a" / "b" / "f");
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(data, "data");
    EXPECT_EQ(std::filesystem::read_symlink(base / "dest" / "src" / "link"), "a/b");
    EXPECT_EQ(std::filesystem::read_symlink(base / "dest" / "src" / "a" / "dangling"),
              "/nowhere/at/all");
  }
  std::filesystem::remove_all(base);
}

}  // namespace
}  // namespace grove
