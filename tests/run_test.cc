// grove.run's commands leave nothing behind: each runs in a process group of its own, killed
// whole when the call is cancelled or times out and when the command ends, and dies with its
// context however the context ends. Every command here is found again in /proc by a marker
// in its argv (a sleep of a length no other test uses).
#include <signal.h>
#include <unistd.h>

#include <future>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/process.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/support.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

// A shell that starts two sleeps in its group, one in the background, and waits: `tag`
// tells this test's sleeps from any other's.
v1::RunRequest TwoSleeps(const std::string& tag) {
  v1::RunRequest run;
  run.add_argv("sh");
  run.add_argv("-c");
  run.add_argv(absl::StrCat("sleep 300.", tag, "1 & sleep 300.", tag, "2; wait"));
  return run;
}

// Both sleeps of TwoSleeps(tag) are running.
bool BothRun(const std::string& tag) {
  return !ProcessesWith(absl::StrCat("sleep 300.", tag, "1")).empty() &&
         !ProcessesWith(absl::StrCat("sleep 300.", tag, "2")).empty();
}
bool NoneRuns(const std::string& tag) { return ProcessesWith("sleep 300." + tag).empty(); }

class RunTest : public GroveTest {};

TEST_F(RunTest, ACancelledRunKillsItsWholeProcessGroup) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  CancelSource cancel;
  CallOptions options;
  options.cancel = &cancel;
  auto run = child->CallAsync<v1::RunReply>("grove.run", TwoSleeps("71"), options);
  ASSERT_TRUE(WaitUntil([] { return BothRun("71"); }));
  cancel.Cancel();
  EXPECT_THAT(run.get(), StatusIs(absl::StatusCode::kCancelled));
  EXPECT_TRUE(WaitUntil([] { return NoneRuns("71"); })) << "a sleep outlived its run";
}

TEST_F(RunTest, ARunPastItsDeadlineKillsItsWholeProcessGroup) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  CallOptions options;
  options.timeout = absl::Seconds(1);
  auto run = child->CallAsync<v1::RunReply>("grove.run", TwoSleeps("72"), options);
  EXPECT_THAT(run.get(), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(WaitUntil([] { return NoneRuns("72"); })) << "a sleep outlived its run";
}

TEST_F(RunTest, WhatACommandLeftInItsGroupEndsWithIt) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  v1::RunRequest run;
  run.add_argv("sh");
  run.add_argv("-c");
  run.add_argv("sleep 300.731 >/dev/null 2>&1 </dev/null & echo started");
  absl::StatusOr<v1::RunReply> reply = child->Run(run);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->stdout(), "started\n");
  EXPECT_TRUE(WaitUntil([] { return NoneRuns("73"); })) << "a background sleep outlived its run";
}

// The context running the command is SIGKILLed (no end path runs there): its commands die
// with it (a parent-death signal).
TEST_F(RunTest, ACommandDiesWithItsContextKilled) {
  Master master(TestFunctions());
  absl::StatusOr<Context> child = master.Spawn("local");
  ASSERT_TRUE(child.ok()) << child.status();
  v1::RunRequest sleep;
  sleep.add_argv("sleep");
  sleep.add_argv("300.741");
  auto run = child->CallAsync<v1::RunReply>("grove.run", sleep);
  ASSERT_TRUE(WaitUntil([] { return !ProcessesWith("sleep 300.741").empty(); }));
  ASSERT_EQ(::kill(static_cast<pid_t>(child->Info()->pid()), SIGKILL), 0);
  EXPECT_THAT(run.get(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(WaitUntil([] { return ProcessesWith("sleep 300.741").empty(); }))
      << "the command outlived its context";
}

// The parent of the context running the command is SIGKILLed: the context ends on its own,
// and kills its commands' groups, whole, before it exits.
TEST_F(RunTest, ACommandsGroupEndsWithItsContextsParentKilled) {
  Master master(TestFunctions());
  absl::StatusOr<Context> middle = master.Spawn("local,name=middle");
  ASSERT_TRUE(middle.ok()) << middle.status();
  absl::StatusOr<Context> leaf = middle->Spawn("local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  auto run = leaf->CallAsync<v1::RunReply>("grove.run", TwoSleeps("75"));
  ASSERT_TRUE(WaitUntil([] { return BothRun("75"); }));
  ASSERT_EQ(::kill(static_cast<pid_t>(middle->Info()->pid()), SIGKILL), 0);
  EXPECT_THAT(run.get(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(WaitUntil([] { return NoneRuns("75"); })) << "a sleep outlived its context";
}

// Ctrl-C on `grove run`: the CLI's tree ends, and with it the command.
TEST_F(RunTest, InterruptingTheCliEndsTheCommand) {
  SpawnOptions cli;
  cli.argv = {GroveBinary(), "run", "local", "--", "sh", "-c",
              "sleep 300.761 & sleep 300.762; wait"};
  absl::StatusOr<Process> grove = Process::Spawn(cli);
  ASSERT_TRUE(grove.ok()) << grove.status();
  ASSERT_TRUE(WaitUntil([] { return BothRun("76"); }));
  grove->Signal(SIGINT);
  ASSERT_TRUE(grove->Wait(absl::Now() + absl::Seconds(10)).ok());
  EXPECT_TRUE(WaitUntil([] { return NoneRuns("76"); })) << "a sleep outlived grove run";
}

}  // namespace
}  // namespace grove::testing
