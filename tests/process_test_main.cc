// main() of every multi-process test binary: in a context started by grove it runs the agent
// (the binary replicates itself); otherwise it runs the tests.
#include <unistd.h>

#include <cstdio>
#include <string>

#include "absl/synchronization/mutex.h"
#include "child/agent.h"
#include "master/master.h"
#include "grpc/grpc.h"
#include "glog/logging.h"
#include "gtest/gtest.h"
#include "tests/private_system.h"
#include "tests/test_functions.h"
#include "transport/grpc_link.h"

namespace {

// `--tree-master`: act as a master for a test that kills it. Starts a small tree, prints the
// pid of every context (one per line), then "ready", and waits to be killed.
int TreeMaster() {
  grove::MasterOptions options;
  grove::Master master(grove::testing::TestFunctions(), options);
  for (const char* path : {"local/local/local", "local,name=second/local"}) {
    absl::StatusOr<grove::Context> c = master.SpawnPath(path);
    if (!c.ok()) {
      fprintf(stderr, "tree master: %s\n", c.status().ToString().c_str());
      return 1;
    }
  }
  for (const grove::ContextRecord& r : master.registry().List(false)) {
    printf("%lld\n", static_cast<long long>(r.pid));
  }
  printf("ready\n");
  fflush(stdout);
  pause();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Abseil's lock-order checking, which programs on grove turn off (child/agent.cc): on in
  // the tests, their agents included, as in Debian's (debug) build of Abseil.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kAbort);
  if (grove::IsAgentInvocation(argc, argv)) {
    grove::RunAgent(argc, argv, grove::testing::TestFunctions());
  }
  if (argc == 2 && std::string(argv[1]) == "--tree-master") {
    google::InitGoogleLogging(argv[0]);
    return TreeMaster();
  }
  // As root, the tests change users, sudoers rules and more only in a private view of the
  // system (tests/private_system.h), entered here while this process has one thread.
  if (::geteuid() == 0) {
    if (absl::Status s = grove::testing::EnterPrivateSystem(); !s.ok()) {
      fprintf(stderr, "tests that add users will skip: %s\n", s.ToString().c_str());
    }
  }
  // The zygote for the masters' `fork` method, while this process has one thread (before
  // gRPC's). The functions (and the random state they hold) exist before it does.
  absl::StatusOr<std::shared_ptr<grove::Zygote>> zygote =
      grove::StartZygote(grove::testing::TestFunctions());
  if (!zygote.ok()) {
    fprintf(stderr, "cannot start the zygote: %s\n", zygote.status().ToString().c_str());
    return 1;
  }
  grove::testing::SetTestZygote(*std::move(zygote));
  // gRPC's process-wide state (its poller fds) lives from here to the end, so that the leak
  // check's baseline includes it.
  grpc_init();
  grove::HoldCallbackQueue();
  grove::LinkQueue::Get();  // Its thread ("grove-link") lives to the end too.
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  testing::InitGoogleTest(&argc, argv);
  int result = RUN_ALL_TESTS();
  grove::testing::SetTestZygote(nullptr);  // The zygote exits; reaped here.
  return result;
}
