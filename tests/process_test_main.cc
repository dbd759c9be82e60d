// main() of every multi-process test binary: in a context started by grove it runs the agent
// (the binary replicates itself); otherwise it runs the tests.
#include "child/agent.h"
#include "grpc/grpc.h"
#include "glog/logging.h"
#include "gtest/gtest.h"
#include "tests/test_functions.h"
#include "transport/grpc_link.h"

int main(int argc, char** argv) {
  if (grove::IsAgentInvocation(argc, argv)) {
    grove::RunAgent(argc, argv, grove::testing::TestFunctions());
  }
  // gRPC's process-wide state (its poller fds) lives from here to the end, so that the leak
  // check's baseline includes it.
  grpc_init();
  grove::HoldCallbackQueue();
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
