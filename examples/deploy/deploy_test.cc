// The ingress, as users run it: `grove up SPEC --program echo_server` (examples/deploy), whose
// contexts serve grove.examples.Echo as replicas, called through the ingress by clients that
// know nothing of grove: a C++ client with the unmodified generated stub (each kind of call),
// and the example's Python client (Debian's python3-grpcio) with the replicas on two
// network-namespace hosts over ssh. A replica SIGKILLed under load, limits, bad specs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <atomic>
#include <set>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "examples/deploy/echo.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/private_system.h"
#include "tests/resident_fixture.h"
#include "tests/sshd.h"
#include "tests/support.h"

namespace grove::testing {
namespace {

using ::grove::examples::Echo;
using ::grove::examples::EchoReply;
using ::grove::examples::EchoRequest;
using ::testing::HasSubstr;

class IngressTest : public ResidentTest {
 protected:
  // Starts a resident master running echo_server with `spec` (its text), the ingress on a
  // free loopback port; returns the ingress's address.
  std::string UpWith(const std::string& spec) {
    const std::string file = dir_ + "/spec.txt";
    std::ofstream(file) << spec;
    Ran up = RunGrove({"up", file, "--program", Runfile("examples/deploy/echo_server")});
    EXPECT_EQ(up.status, 0) << up.err;
    return Status().ingress();
  }

  static std::string LocalSpec(const std::string& extra = "") {
    return absl::StrCat(
        "service {\n  name: \"grove.examples.Echo\"\n",
        "  replica { path: \"local,name=echo-1\" restart: ALWAYS backoff { initial_ms: 50 } }\n",
        "  replica { path: \"local,name=echo-2\" restart: ALWAYS backoff { initial_ms: 50 } }\n",
        "  health_interval_ms: 50\n", extra, "}\n", "ingress { listen: \"127.0.0.1:0\" }\n");
  }

  // The replica at `path`, from the master's status (empty when there is none).
  v1::ServiceStatus::Replica Replica(const std::string& path) {
    const v1::StatusReply status = Status();
    for (const v1::ServiceStatus& s : status.services()) {
      for (const v1::ServiceStatus::Replica& r : s.replicas()) {
        if (r.path() == path) return r;
      }
    }
    return {};
  }

  // Waits until every replica of the spec is SERVING.
  bool AllServing(int replicas) {
    return WaitUntil([&] {
      int serving = 0;
      const v1::StatusReply status = Status();
      for (const v1::ServiceStatus& s : status.services()) {
        for (const v1::ServiceStatus::Replica& r : s.replicas()) serving += r.health() == "SERVING";
      }
      return serving == replicas;
    }, absl::Seconds(30));
  }

  static std::unique_ptr<Echo::Stub> Stub(const std::string& address) {
    return Echo::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }

  static grpc::Status Say(Echo::Stub& stub, const std::string& text, EchoReply* reply,
                          absl::Duration timeout = absl::Seconds(10)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    EchoRequest request;
    request.set_text(text);
    return stub.Say(&context, request, reply);
  }
};

TEST_F(IngressTest, EveryKindOfCallReachesAReplicaThroughTheIngress) {
  const std::string address = UpWith(LocalSpec());
  ASSERT_THAT(address, HasSubstr("127.0.0.1:"));
  ASSERT_TRUE(AllServing(2));
  std::unique_ptr<Echo::Stub> stub = Stub(address);

  // Unary, with metadata both ways and the deadline carried.
  EchoReply reply;
  ASSERT_TRUE(Say(*stub, "hello", &reply).ok());
  EXPECT_EQ(reply.text(), "hello");
  EXPECT_GT(reply.pid(), 0);

  // Server streaming.
  {
    grpc::ClientContext context;
    EchoRequest request;
    request.set_text("sheep");
    request.set_count(5);
    std::unique_ptr<grpc::ClientReader<EchoReply>> reader = stub->Count(&context, request);
    std::vector<std::string> got;
    while (reader->Read(&reply)) got.push_back(reply.text());
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_THAT(got, ::testing::ElementsAre("1 sheep", "2 sheep", "3 sheep", "4 sheep", "5 sheep"));
  }

  // Bidirectional: each message answered before the next is written.
  {
    grpc::ClientContext context;
    auto stream = stub->Chat(&context);
    for (const char* text : {"one", "two", "three"}) {
      EchoRequest request;
      request.set_text(text);
      ASSERT_TRUE(stream->Write(request));
      ASSERT_TRUE(stream->Read(&reply));
      EXPECT_EQ(reply.text(), text);
    }
    stream->WritesDone();
    EXPECT_TRUE(stream->Finish().ok());
  }

  // Both replicas take calls (fewest in flight first, ties in turn).
  std::set<int64_t> pids;
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(Say(*stub, "x", &reply).ok());
    pids.insert(reply.pid());
  }
  EXPECT_EQ(pids.size(), 2u);

  // Pinned to one replica by name.
  for (int i = 0; i < 5; ++i) {
    grpc::ClientContext context;
    context.AddMetadata("grove-replica", "echo-2");
    EchoRequest request;
    ASSERT_TRUE(stub->Say(&context, request, &reply).ok());
    EXPECT_EQ(reply.pid(), Find("echo-2").pid());
  }

  // A service nobody serves: UNIMPLEMENTED naming it.
  {
    grpc::GenericStub generic(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer response;
    grpc::Status status;
    absl::Notification done;
    generic.UnaryCall(&context, "/nobody.Serves/This", grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) {
                        status = s;
                        done.Notify();
                      });
    done.WaitForNotification();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED);
    EXPECT_THAT(status.error_message(), HasSubstr("nobody.Serves"));
    EXPECT_THAT(status.error_message(), HasSubstr("grove.examples.Echo"));
  }

  // grove status shows the service with its replicas.
  Ran status = RunGrove({"status"});
  EXPECT_THAT(status.out, HasSubstr("grove.examples.Echo"));
  EXPECT_THAT(status.out, HasSubstr("SERVING"));
  EXPECT_THAT(status.out, HasSubstr(absl::StrCat("ingress ", address)));

  // The example's Python client (docs/deploying.md), as a user runs it.
  Ran python = RunCommand({Runfile("examples/deploy/run"), address, "20"}, absl::Seconds(120));
  ASSERT_EQ(python.status, 0) << python.out << python.err;
  EXPECT_THAT(python.out, HasSubstr("Count: 3 sheep"));
  EXPECT_THAT(python.out, HasSubstr("health of grove.examples.Echo: SERVING"));
  EXPECT_THAT(python.out, HasSubstr("20 calls answered by 2 replicas"));
}

TEST_F(IngressTest, AKilledReplicaFailsOnlyTheCallsItHadAndComesBack) {
  const std::string address = UpWith(LocalSpec());
  ASSERT_TRUE(AllServing(2));
  const int64_t victim = Find("echo-1").pid();
  ASSERT_GT(victim, 0);
  std::unique_ptr<Echo::Stub> stub = Stub(address);

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  absl::Mutex mu;
  std::vector<grpc::Status> failed;  // Guarded by mu.
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        EchoReply reply;
        grpc::Status s = Say(*stub, "load", &reply);
        if (s.ok()) {
          ok.fetch_add(1);
        } else {
          absl::MutexLock lock(&mu);
          failed.push_back(s);
        }
      }
    });
  }
  ASSERT_TRUE(WaitUntil([&] { return ok.load() > 500; }));
  ASSERT_EQ(kill(static_cast<pid_t>(victim), SIGKILL), 0);
  const int before = ok.load();
  // The calls keep succeeding on the other replica, and the killed one comes back (restarted
  // by its policy) and takes calls again.
  int64_t restarted = 0;
  EXPECT_TRUE(WaitUntil([&] {
    const v1::ServiceStatus::Replica r = Replica("local,name=echo-1");
    restarted = Find("echo-1").pid();
    return r.health() == "SERVING" && restarted > 0 && restarted != victim;
  }, absl::Seconds(30)));
  EXPECT_TRUE(WaitUntil([&] {
    grpc::ClientContext context;
    context.AddMetadata("grove-replica", "echo-1");
    EchoRequest request;
    EchoReply reply;
    return stub->Say(&context, request, &reply).ok() && reply.pid() == restarted;
  }));
  stop.store(true);
  for (std::thread& t : clients) t.join();
  EXPECT_GT(ok.load(), before);
  // Only calls the killed replica had accepted may fail (at most one per client thread), at
  // once and naming it.
  absl::MutexLock lock(&mu);
  EXPECT_LE(failed.size(), 8u);
  for (const grpc::Status& s : failed) {
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_THAT(s.error_message(), HasSubstr("echo-1"));
  }
}

TEST_F(IngressTest, LimitsAreEnforcedWithClearErrors) {
  const std::string address = UpWith(absl::StrCat(
      "service {\n  name: \"grove.examples.Echo\"\n",
      "  replica { path: \"local,name=echo-1\" }\n  max_calls_per_replica: 1\n",
      "  health_interval_ms: 50\n}\n",
      "ingress { listen: \"127.0.0.1:0\" max_message_bytes: 4096 }\n"));
  ASSERT_TRUE(AllServing(1));
  std::unique_ptr<Echo::Stub> stub = Stub(address);

  // An oversized message: RESOURCE_EXHAUSTED.
  EchoReply reply;
  grpc::Status big = Say(*stub, std::string(10000, 'x'), &reply);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << big.error_message();

  // One stream holds the replica's only slot (once the refused call has left it): another
  // call is refused, saying why.
  ASSERT_TRUE(WaitUntil([&] { return Replica("local,name=echo-1").in_flight() == 0; }));
  grpc::ClientContext holding;
  holding.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(20)));
  auto stream = stub->Chat(&holding);
  EchoRequest request;
  request.set_text("held");
  ASSERT_TRUE(stream->Write(request)) << stream->Finish().error_message();
  ASSERT_TRUE(stream->Read(&reply)) << stream->Finish().error_message();
  grpc::Status refused = Say(*stub, "more", &reply);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.error_message(), HasSubstr("max_calls_per_replica"));
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
  EXPECT_TRUE(WaitUntil([&] { return Say(*stub, "again", &reply).ok(); }));

  // No healthy replica: UNAVAILABLE listing the replicas and their states.
  Ran stopped = RunGrove({"stop", "echo-1"});
  ASSERT_EQ(stopped.status, 0) << stopped.err;
  grpc::Status none = Say(*stub, "nobody", &reply);
  EXPECT_EQ(none.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(none.error_message(), HasSubstr("no healthy replica of grove.examples.Echo"));
  EXPECT_THAT(none.error_message(), HasSubstr("echo-1"));
}

TEST_F(IngressTest, BadSpecsAreRefusedNamingTheEntry) {
  struct Case {
    std::string spec, error;
  };
  const std::vector<Case> cases = {
      {"service { name: \"grove.examples.Echo\" }", "no replica"},
      {"service { name: \"not a name\" replica { path: \"local\" } }", "not a gRPC service"},
      {"service { name: \"a.B\" replica { path: \"local,name=x\" } }\n"
       "service { name: \"a.B\" replica { path: \"local,name=y\" } }",
       "declared twice"},
      {"context { path: \"local,name=x\" }\n"
       "service { name: \"a.B\" replica { path: \"local,name=x\" } }",
       "declared twice"},
      {"ingress { listen: \"0.0.0.0:8443\" }", "not a loopback address"},
      {"ingress { listen: \"127.0.0.1:8443\" tls { cert_file: \"c\" key_file: \"k\" } }",
       "tls is not supported"},
      {"ingress { listen: \"nonsense\" }", "is not host:port"},
  };
  for (const Case& c : cases) {
    const std::string file = dir_ + "/bad.spec";
    std::ofstream(file) << c.spec;
    Ran up = RunGrove({"up", file});
    EXPECT_NE(up.status, 0) << c.spec;
    EXPECT_THAT(up.err, HasSubstr(c.error)) << c.spec;
  }
  // A reload that would move the ingress to a taken address is refused, and the ingress keeps
  // serving where it was.
  const std::string serving = UpWith(LocalSpec());
  ASSERT_TRUE(AllServing(2));
  int held = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in at{};
  at.sin_family = AF_INET;
  at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(at);
  ASSERT_EQ(bind(held, reinterpret_cast<sockaddr*>(&at), sizeof(at)), 0);
  ASSERT_EQ(listen(held, 1), 0);
  ASSERT_EQ(getsockname(held, reinterpret_cast<sockaddr*>(&at), &size), 0);
  const std::string occupied = absl::StrCat("127.0.0.1:", ntohs(at.sin_port));
  const std::string moved = dir_ + "/moved.spec";
  std::string moved_spec = LocalSpec();
  moved_spec.replace(moved_spec.find("127.0.0.1:0"), 11, occupied);
  std::ofstream(moved) << moved_spec;
  Ran reload = RunGrove({"reload", moved});
  close(held);
  EXPECT_NE(reload.status, 0);
  EXPECT_THAT(reload.err, HasSubstr(absl::StrCat("cannot listen at '", occupied, "'")));
  EXPECT_EQ(Status().ingress(), serving);
  EchoReply reply;
  EXPECT_TRUE(Say(*Stub(serving), "still here", &reply).ok());
  ASSERT_EQ(RunGrove({"down"}).status, 0);

  // A port that is taken (by the ingress of another master): grove up fails naming it.
  const std::string taken = UpWith(LocalSpec());
  ASSERT_FALSE(taken.empty());
  const std::string file = dir_ + "/taken.spec";
  std::ofstream(file) << "ingress { listen: \"" << taken << "\" }\n";
  setenv("GROVE_RUNTIME_DIR", (run_dir_ + "2").c_str(), 1);
  Ran second = RunGrove({"up", file});
  setenv("GROVE_RUNTIME_DIR", run_dir_.c_str(), 1);
  EXPECT_NE(second.status, 0);
  EXPECT_THAT(second.err, HasSubstr(absl::StrCat("cannot listen at '", taken, "'")));
}

TEST_F(IngressTest, APythonClientReachesReplicasOnTwoHostsOverSsh) {
  if (geteuid() != 0 || !PrivateSystem()) GTEST_SKIP() << "needs root and a private system";
  absl::StatusOr<std::unique_ptr<TwoHosts>> hosts = TwoHosts::Start();
  if (!hosts.ok()) GTEST_SKIP() << hosts.status();
  auto replica = [&](Sshd& host, const std::string& name) {
    return absl::StrCat("  replica { path: \"", host.Hop("root"), ",cache_dir=", dir_,
                        "/cache/local,name=", name, "\" }\n");
  };
  const std::string address = UpWith(absl::StrCat(
      "service {\n  name: \"grove.examples.Echo\"\n", replica((*hosts)->a(), "echo-a"),
      replica((*hosts)->b(), "echo-b"), "  health_interval_ms: 50\n}\n",
      "ingress { listen: \"127.0.0.1:0\" }\n"));
  ASSERT_TRUE(AllServing(2));
  Ran ran = RunCommand({Runfile("examples/deploy/run"), address, "40"}, absl::Seconds(120));
  ASSERT_EQ(ran.status, 0) << ran.out << ran.err;
  EXPECT_THAT(ran.out, HasSubstr("Say: hello"));
  EXPECT_THAT(ran.out, HasSubstr("Count: 3 sheep"));
  EXPECT_THAT(ran.out, HasSubstr("Chat: two"));
  EXPECT_THAT(ran.out, HasSubstr("health of grove.examples.Echo: SERVING"));
  EXPECT_THAT(ran.out, HasSubstr("40 calls answered by 2 replicas"));
  EXPECT_THAT(ran.out, HasSubstr("unknown service: UNIMPLEMENTED"));
  // The replicas are below the two ssh contexts, one on each host.
  int ssh = 0;
  const v1::StatusReply status = Status();
  for (const v1::ContextStatus& c : status.contexts()) ssh += c.method() == "ssh";
  EXPECT_EQ(ssh, 2);
  EXPECT_GT(Find("echo-a").pid(), 0);
  EXPECT_GT(Find("echo-b").pid(), 0);
  EXPECT_EQ(RunGrove({"down"}).status, 0);
}

}  // namespace
}  // namespace grove::testing
