// The control API (grove.v1.Control) of a resident master served in this process
// (ServeResident on a thread), called by a C++ client over its Unix socket: run with output
// streamed and cancellation, calls in JSON and binary, the registry's watch, logs, one start
// for concurrent spawns of a path, a lease that keeps a busy context from its idle timeout.
// In-process, so that ThreadSanitizer sees the resident code's threads.
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "proto/control.grpc.pb.h"
#include "resident/attach.h"
#include "resident/control_socket.h"
#include "resident/resident.h"
#include "tests/leak_check.h"
#include "tests/support.h"
#include "tests/test.pb.h"
#include "tests/test_functions.h"

namespace grove::testing {
namespace {

using ::testing::HasSubstr;

class ControlTest : public GroveTest {
 protected:
  void SetUp() override {
    GroveTest::SetUp();
    char tmpl[] = "/tmp/grove-control.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }

  // Serves a resident master in this process until TearDown.
  void Serve(absl::Duration idle_timeout = absl::Minutes(10)) {
    master_ = std::make_unique<Master>(TestFunctions());
    ResidentOptions options;
    options.dir = dir_ + "/run";
    options.idle_timeout = idle_timeout;
    serving_ = std::thread([this, options] { served_ = ServeResident(master_->router(), options); });
    ASSERT_TRUE(WaitUntil([&] {
      absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
          ConnectControl(dir_ + "/run/control.sock");
      if (!channel.ok()) return false;
      stub_ = v1::Control::NewStub(*channel);
      grpc::ClientContext context;
      v1::VersionReply version;
      return stub_->Version(&context, v1::VersionRequest(), &version).ok();
    }));
  }

  void TearDown() override {
    if (serving_.joinable()) {
      grpc::ClientContext context;
      v1::ShutdownReply reply;
      EXPECT_TRUE(stub_->Shutdown(&context, v1::ShutdownRequest(), &reply).ok());
      serving_.join();
      EXPECT_EQ(served_, 0);
    }
    stub_.reset();
    master_.reset();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
    GroveTest::TearDown();
  }

  v1::ContextStatus Spawn(const std::string& path) {
    grpc::ClientContext context;
    v1::SpawnPathRequest request;
    request.set_path(path);
    v1::ContextStatus reply;
    grpc::Status status = stub_->Spawn(&context, request, &reply);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return reply;
  }

  std::string dir_;
  std::unique_ptr<Master> master_;
  std::thread serving_;
  int served_ = -1;
  std::unique_ptr<v1::Control::Stub> stub_;
};

TEST_F(ControlTest, RunStreamsOutputThenTheExitStatus) {
  Serve();
  grpc::ClientContext context;
  v1::ControlRunRequest request;
  request.set_path("local,name=runner");
  for (const char* a : {"sh", "-c", "echo out; echo err >&2; exit 3"}) {
    request.mutable_command()->add_argv(a);
  }
  auto reader = stub_->Run(&context, request);
  v1::ControlRunEvent event;
  std::string out, err, started;
  int exit_status = -1;
  while (reader->Read(&event)) {
    if (event.has_started()) started = event.started().name();
    out += event.stdout();
    err += event.stderr();
    if (event.has_exit()) exit_status = event.exit().exit_status();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(started, "runner");
  EXPECT_EQ(out, "out\n");
  EXPECT_EQ(err, "err\n");
  EXPECT_EQ(exit_status, 3);
}

TEST_F(ControlTest, AClientThatGoesAwayKillsItsCommand) {
  Serve();
  {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Milliseconds(500)));
    v1::ControlRunRequest request;
    request.set_path("local");
    for (const char* a : {"sleep", "31.4159"}) request.mutable_command()->add_argv(a);
    auto reader = stub_->Run(&context, request);
    v1::ControlRunEvent event;
    while (reader->Read(&event)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  EXPECT_TRUE(WaitUntil([] { return ProcessesWith("sleep 31.4159").empty(); }));
}

TEST_F(ControlTest, CallsTakeJsonOrBinaryAndNameThePathOnError) {
  Serve();
  {
    grpc::ClientContext context;
    v1::ControlCallRequest request;
    request.set_path("local,name=callee");
    request.set_function("echo");
    request.set_json("{\"text\": \"hi\"}");
    v1::ControlCallReply reply;
    ASSERT_TRUE(stub_->Call(&context, request, &reply).ok());
    EXPECT_EQ(reply.context(), "callee");
    EXPECT_EQ(reply.result_type(), "grove.test.Echo");
    EXPECT_THAT(reply.json(), HasSubstr("\"text\":\"callee: hi\""));
  }
  {
    grpc::ClientContext context;
    v1::ControlCallRequest request;
    request.set_path("local,name=callee");
    request.set_function("echo");
    test::Echo echo;
    echo.set_text("bytes");
    request.set_binary(echo.SerializeAsString());
    v1::ControlCallReply reply;
    ASSERT_TRUE(stub_->Call(&context, request, &reply).ok());
    test::Echo back;
    ASSERT_TRUE(back.ParseFromString(reply.binary()));
    EXPECT_EQ(back.text(), "callee: bytes");
  }
  {
    grpc::ClientContext context;
    v1::ControlCallRequest request;
    request.set_path("local,name=callee");
    request.set_function("echo");
    request.set_json("{\"no_such_field\": 1}");
    v1::ControlCallReply reply;
    grpc::Status status = stub_->Call(&context, request, &reply);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("grove.test.Echo"));
  }
  {
    grpc::ClientContext context;
    v1::ControlCallRequest request;
    request.set_path("local,name=callee");
    request.set_function("fail");
    test::FailRequest fail;
    fail.set_code(static_cast<int>(absl::StatusCode::kAlreadyExists));
    fail.set_message("made to fail");
    request.set_binary(fail.SerializeAsString());
    v1::ControlCallReply reply;
    grpc::Status status = stub_->Call(&context, request, &reply);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::ALREADY_EXISTS);
    EXPECT_THAT(status.error_message(), HasSubstr("path local,name=callee"));
    EXPECT_THAT(status.error_message(), HasSubstr("made to fail"));
  }
}

TEST_F(ControlTest, TheWatchSeesContextsComeAndGo) {
  Serve();
  Spawn("local,name=before");
  grpc::ClientContext watch_context;
  auto watch = stub_->WatchContexts(&watch_context, v1::WatchContextsRequest());
  v1::ContextEvent event;
  ASSERT_TRUE(watch->Read(&event));  // The snapshot.
  EXPECT_EQ(event.kind(), v1::ContextEvent::ADDED);
  EXPECT_EQ(event.context().name(), "before");
  Spawn("local,name=during");
  ASSERT_TRUE(watch->Read(&event));
  EXPECT_EQ(event.kind(), v1::ContextEvent::ADDED);
  EXPECT_EQ(event.context().name(), "during");
  EXPECT_EQ(event.context().path(), "local,name=during");
  {
    grpc::ClientContext context;
    v1::StopPathRequest request;
    request.set_path("during");
    v1::StopPathReply reply;
    ASSERT_TRUE(stub_->Stop(&context, request, &reply).ok());
    EXPECT_EQ(reply.stopped(), 1);
  }
  ASSERT_TRUE(watch->Read(&event));
  EXPECT_EQ(event.kind(), v1::ContextEvent::REMOVED);
  EXPECT_EQ(event.context().name(), "during");
  watch_context.TryCancel();
  while (watch->Read(&event)) {
  }
  watch->Finish();
}

TEST_F(ControlTest, ConcurrentSpawnsOfOnePathStartItOnce) {
  Serve();
  std::vector<std::thread> threads;
  std::vector<uint64_t> ids(8);
  for (size_t i = 0; i < ids.size(); ++i) {
    threads.emplace_back([&, i] { ids[i] = Spawn("local/local,name=shared").id(); });
  }
  for (std::thread& t : threads) t.join();
  for (uint64_t id : ids) EXPECT_EQ(id, ids[0]);
  EXPECT_EQ(master_->registry().live_count(), 2u);
}

// grove::Attach: the same from a C++ program, without the raw stub.
TEST_F(ControlTest, AttachGivesTypedCallsRunsAndTheRegistry) {
  Serve();
  absl::StatusOr<std::unique_ptr<AttachedTree>> tree = Attach(dir_ + "/run/control.sock");
  ASSERT_TRUE(tree.ok()) << tree.status();
  EXPECT_EQ((*tree)->version().api_version(), 1);
  test::Echo echo;
  echo.set_text("typed");
  absl::StatusOr<test::Echo> back = (*tree)->Call<test::Echo>("local,name=typed", "echo", echo);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->text(), "typed: typed");
  v1::RunRequest run;
  for (const char* a : {"sh", "-c", "echo streamed"}) run.add_argv(a);
  std::string out;
  CallOptions options;
  options.on_output = [&out](int stream, const std::string& data) {
    if (stream == 1) out += data;
  };
  v1::ContextStatus started;
  absl::StatusOr<v1::RunReply> ran = (*tree)->Run("local,name=typed", run, options, &started);
  EXPECT_EQ(started.name(), "typed");
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(out, "streamed\n");
  absl::StatusOr<std::vector<v1::ContextStatus>> list = (*tree)->List();
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);
  EXPECT_EQ((*list)[1].path(), "local,name=typed");
  EXPECT_TRUE((*tree)->Stop("typed").ok());
  EXPECT_THAT((*tree)->Stop("typed"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(Attach(dir_ + "/nothing.sock"), StatusIs(absl::StatusCode::kUnavailable));
}

// Forward: a hosted gRPC service through the tree, as bytes: health's unary Check, and
// server reflection's bidirectional stream.
TEST_F(ControlTest, ForwardReachesAServiceHostedInAContext) {
  Serve();
  auto forward = [&](const std::string& method, const std::string& message,
                     std::vector<std::string>* responses) {
    grpc::ClientContext context;
    auto stream = stub_->Forward(&context);
    v1::ForwardRequest start;
    start.mutable_start()->set_path("local,name=server");
    start.mutable_start()->set_method(method);
    v1::ForwardRequest request;
    request.set_message(message);
    EXPECT_TRUE(stream->Write(start));
    EXPECT_TRUE(stream->Write(request));
    stream->WritesDone();
    v1::ForwardResponse response;
    while (stream->Read(&response)) responses->push_back(response.message());
    return stream->Finish();
  };
  // grpc.health.v1.HealthCheckRequest{} is empty; the response is {status: SERVING (1)}.
  std::vector<std::string> health;
  grpc::Status status = forward("/grpc.health.v1.Health/Check", "", &health);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(health, ::testing::ElementsAre(std::string("\x08\x01", 2)));
  // ServerReflectionRequest{list_services: ""} (field 7).
  std::vector<std::string> reflection;
  status = forward("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                   std::string("\x3a\x00", 2), &reflection);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(reflection.size(), 1u);
  EXPECT_THAT(reflection[0], HasSubstr("grpc.health.v1.Health"));
  // A method nobody serves: the service's own status, naming the path.
  std::vector<std::string> none;
  status = forward("/no.Such/Method", "", &none);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
  EXPECT_THAT(status.error_message(), HasSubstr("path local,name=server"));
}

TEST_F(ControlTest, LogsCarryTheTreesOutputTaggedByContext) {
  Serve();
  grpc::ClientContext context;
  v1::ControlCallRequest request;
  request.set_path("local,name=talker");
  request.set_function("grove.run");
  request.set_json("{\"argv\": [\"echo\", \"into the log\"], \"output\": \"INHERIT\"}");
  v1::ControlCallReply reply;
  ASSERT_TRUE(stub_->Call(&context, request, &reply).ok());
  EXPECT_TRUE(WaitUntil([&] {
    grpc::ClientContext logs_context;
    v1::LogsRequest logs;
    logs.set_path("talker");
    auto reader = stub_->Logs(&logs_context, logs);
    v1::LogLine line;
    bool found = false;
    while (reader->Read(&line)) {
      found |= line.context() == "talker" && line.kind() == "stdout" && line.text() == "into the log";
    }
    return reader->Finish().ok() && found;
  }));
}

TEST_F(ControlTest, ABusyContextOutlivesTheIdleTimeoutAndAnIdleOneDoesNot) {
  Serve(absl::Milliseconds(200));
  grpc::ClientContext context;
  v1::ControlRunRequest request;
  request.set_path("local,name=busy");
  for (const char* a : {"sleep", "0.8"}) request.mutable_command()->add_argv(a);
  auto reader = stub_->Run(&context, request);
  v1::ControlRunEvent event;
  int exit_status = -1;
  while (reader->Read(&event)) {
    if (event.has_exit()) exit_status = event.exit().exit_status();
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(exit_status, 0);
  EXPECT_TRUE(WaitUntil([&] { return master_->registry().live_count() == 0; }));
}

}  // namespace
}  // namespace grove::testing
