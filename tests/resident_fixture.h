// The fixture of the tests that run a resident master through the grove CLI (resident_test,
// ingress_test).
#ifndef GROVE_TESTS_RESIDENT_FIXTURE_H_
#define GROVE_TESTS_RESIDENT_FIXTURE_H_

#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "proto/control.grpc.pb.h"
#include "resident/control_socket.h"
#include "tests/leak_check.h"
#include "tests/support.h"

namespace grove::testing {

// A private resident master for each test: GROVE_RUNTIME_DIR in a temporary directory, this
// process the subreaper of what `grove up` detaches (reaped in TearDown, after `grove down`).
class ResidentTest : public GroveTest {
 protected:
  void SetUp() override {
    GroveTest::SetUp();
    // The resident master is started detached (its parent exits at once): as our
    // subreaper, it and what it leaves are reparented to this process, which reaps them.
    ASSERT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    char tmpl[] = "/tmp/grove-resident.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    run_dir_ = dir_ + "/run";
    setenv("GROVE_RUNTIME_DIR", run_dir_.c_str(), 1);
    unsetenv("GROVE_SOCKET");
  }

  void TearDown() override {
    if (std::filesystem::exists(run_dir_ + "/control.sock")) RunGrove({"down"});
    // Every process of the resident tree has exited: reap those reparented here.
    ReapOrphans();
    unsetenv("GROVE_RUNTIME_DIR");
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    GroveTest::TearDown();
  }

  // Reaps the children this process adopted as subreaper (its own CLI runs are reaped by
  // RunGrove): once no process of the resident tree is alive, those left are zombies.
  void ReapOrphans() {
    EXPECT_TRUE(WaitUntil([&] { return ProcessesWith(run_dir_).empty(); }));
    while (waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }

  // The resident master's status, through the control API (a C++ client of it).
  v1::StatusReply Status() {
    v1::StatusReply reply;
    absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
        ConnectControl(run_dir_ + "/control.sock");
    if (!channel.ok()) return reply;
    grpc::ClientContext context;
    v1::Control::NewStub(*channel)->Status(&context, v1::StatusRequest(), &reply);
    return reply;
  }

  // The live context kept at (or named) `which`, or an empty status.
  v1::ContextStatus Find(const std::string& which) {
    const v1::StatusReply status = Status();
    for (const v1::ContextStatus& c : status.contexts()) {
      if (c.path() == which || c.name() == which) return c;
    }
    return {};
  }

  void Up(std::vector<std::string> args = {}) {
    args.insert(args.begin(), "up");
    Ran up = RunGrove(args);
    ASSERT_EQ(up.status, 0) << up.err;
  }

  std::string dir_, run_dir_;
};

}  // namespace grove::testing

#endif  // GROVE_TESTS_RESIDENT_FIXTURE_H_
