// The mesh (mesh/mesh.h), tested with real processes: a gRPC service that every context of
// the test tree hosts, called with its generated stub through grove::ChannelTo across hops.
//
// This binary has a main() of its own (at the end): its contexts register the test service,
// which the other test binaries' functions do not.
#include "mesh/mesh.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "child/agent.h"
#include "common/fd.h"
#include "common/process.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/text_format.h"
#include "grpc/grpc.h"
#include "grpcpp/client_context.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/sync_stream.h"
#include "gtest/gtest.h"
#include "master/master.h"
#include "tests/leak_check.h"
#include "tests/log_collector.h"
#include "tests/mesh_test.grpc.pb.h"
#include "tests/mesh_test.pb.h"
#include "transport/grpc_link.h"

namespace grove::testing {
namespace {

using test::mesh::Mesh;
using test::mesh::Reply;
using test::mesh::Request;
using ::testing::HasSubstr;

// The service every context hosts. Thread-safe (gRPC runs it on its sync server threads).
class MeshService final : public Mesh::Service {
 public:
  grpc::Status Unary(grpc::ServerContext* context, const Request* request, Reply* reply) override {
    ++calls_;
    EchoMetadata(context);
    if (request->sleep_ms() > 0 && !Sleep(context, request->sleep_ms())) {
      return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while sleeping");
    }
    if (request->code() != 0) {
      return grpc::Status(static_cast<grpc::StatusCode>(request->code()), request->text());
    }
    reply->set_text(request->text());
    reply->set_pid(::getpid());
    return grpc::Status::OK;
  }

  grpc::Status ServerStream(grpc::ServerContext* context, const Request* request,
                            grpc::ServerWriter<Reply>* writer) override {
    ++calls_;
    EchoMetadata(context);
    context->AddInitialMetadata("x-stream", "yes");
    writer->SendInitialMetadata();
    const std::string pad(static_cast<size_t>(std::max(0, request->pad())), 'p');
    for (int i = 0; i < request->count(); ++i) {
      if (request->sleep_ms() > 0 && !Sleep(context, request->sleep_ms())) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled while streaming");
      }
      Reply reply;
      reply.set_text(request->text());
      reply.set_index(i);
      reply.set_pid(::getpid());
      reply.set_pad(pad);
      if (!writer->Write(reply)) {
        ++cancelled_;
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
      ++written_;
    }
    if (request->code() != 0) {
      return grpc::Status(static_cast<grpc::StatusCode>(request->code()), request->text());
    }
    return grpc::Status::OK;
  }

  grpc::Status ClientStream(grpc::ServerContext* context, grpc::ServerReader<Request>* reader,
                            Reply* reply) override {
    ++calls_;
    EchoMetadata(context);
    Request request;
    std::string joined;
    int n = 0;
    while (reader->Read(&request)) {
      joined += request.text();
      ++n;
    }
    reply->set_text(joined);
    reply->set_index(n);
    reply->set_pid(::getpid());
    return grpc::Status::OK;
  }

  grpc::Status Bidi(grpc::ServerContext* context,
                    grpc::ServerReaderWriter<Reply, Request>* stream) override {
    ++calls_;
    EchoMetadata(context);
    Request request;
    int i = 0;
    while (stream->Read(&request)) {
      Reply reply;
      reply.set_text(absl::StrCat("re: ", request.text()));
      reply.set_index(i++);
      reply.set_pid(::getpid());
      if (!stream->Write(reply)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status Stats(grpc::ServerContext*, const test::mesh::StatsRequest*,
                     test::mesh::StatsReply* reply) override {
    reply->set_cancelled(cancelled_.load());
    reply->set_calls(calls_.load());
    reply->set_written(written_.load());
    return grpc::Status::OK;
  }

 private:
  // "x-in" comes back as initial metadata and trailer, "x-in-bin" as a binary trailer.
  static void EchoMetadata(grpc::ServerContext* context) {
    const auto& in = context->client_metadata();
    if (auto it = in.find("x-in"); it != in.end()) {
      std::string value(it->second.data(), it->second.size());
      context->AddInitialMetadata("x-initial", value);
      context->AddTrailingMetadata("x-trailer", value);
    }
    if (auto it = in.find("x-in-bin"); it != in.end()) {
      context->AddTrailingMetadata("x-trailer-bin",
                                   std::string(it->second.data(), it->second.size()));
    }
  }

  // False when the call was cancelled (or its deadline passed) first.
  bool Sleep(grpc::ServerContext* context, int ms) {
    absl::Time end = absl::Now() + absl::Milliseconds(ms);
    while (absl::Now() < end) {
      if (context->IsCancelled()) {
        ++cancelled_;
        return false;
      }
      absl::SleepFor(std::min(absl::Milliseconds(2), end - absl::Now()));
    }
    return true;
  }

  std::atomic<int64_t> calls_{0};
  std::atomic<int64_t> cancelled_{0};
  std::atomic<int64_t> written_{0};
};

// mesh_call(Request) -> Reply: calls Mesh.Unary in context `count` from the context it runs
// in, through ChannelTo there; returns the gRPC code in `index` and the reply's text (or the
// error message) in `text`.
absl::StatusOr<Reply> MeshCall(const Request& in, CallContext& call) {
  Context target(&call.router(), ContextId(static_cast<uint64_t>(in.count())), "");
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(target));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  Request request;
  request.set_text(in.text());
  Reply reply;
  grpc::Status status = stub->Unary(&context, request, &reply);
  Reply out;
  out.set_index(static_cast<int>(status.error_code()));
  out.set_text(status.ok() ? reply.text() : status.error_message());
  out.set_pid(reply.pid());
  return out;
}

// A server plugin that counts how often it is made, registered for every server as the
// program starts, the way gRPC's reflection library registers its own.
std::atomic<int> plugins_made{0};

class CountingPlugin : public grpc::ServerBuilderPlugin {
 public:
  CountingPlugin() { ++plugins_made; }
  std::string name() override { return "grove_test_counting"; }
  void InitServer(grpc::ServerInitializer*) override {}
  void Finish(grpc::ServerInitializer*) override {}
  void ChangeArguments(const std::string&, void*) override {}
  bool has_async_methods() const override { return false; }
  bool has_sync_methods() const override { return false; }
};

const bool counting_plugin_registered = [] {
  grpc::ServerBuilder::InternalAddPluginFactory(
      [] { return std::unique_ptr<grpc::ServerBuilderPlugin>(new CountingPlugin()); });
  return true;
}();

const Functions& MeshFunctions() {
  static Functions* functions = [] {
    auto* f = new Functions();
    static MeshService* service = new MeshService();
    f->AddService(service);
    f->Register<Request, Reply>("mesh_call", MeshCall);
    f->Register<Request, Reply>("plugins_made", [](const Request&, CallContext&) {
      Reply reply;
      reply.set_index(plugins_made.load());
      return absl::StatusOr<Reply>(reply);
    });
    return f;
  }();
  return *functions;
}

std::chrono::system_clock::time_point In(absl::Duration d) {
  return absl::ToChronoTime(absl::Now() + d);
}

class MeshTest : public GroveTest {
 protected:
  MasterOptions Options() {
    MasterOptions options;
    options.log_sink = logs_.Sink();
    return options;
  }

  int64_t PidOf(const Context& context) {
    absl::StatusOr<v1::InfoReply> info = context.Info();
    EXPECT_TRUE(info.ok()) << info.status();
    return info.ok() ? info->pid() : -1;
  }

  LogCollector logs_;
};

TEST_F(MeshTest, UnaryTwoHopsAway) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  for (int i = 0; i < 3; ++i) {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    Request request;
    request.set_text(absl::StrCat("hello ", i));
    Reply reply;
    grpc::Status status = stub->Unary(&context, request, &reply);
    ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
    EXPECT_EQ(reply.text(), absl::StrCat("hello ", i));
    EXPECT_EQ(reply.pid(), PidOf(*leaf));
  }
  // The same channel again.
  EXPECT_EQ(ChannelTo(*leaf), ChannelTo(*leaf));
}

TEST_F(MeshTest, ServerStreamOfAThousandMessages) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  Request request;
  request.set_text("tick");
  request.set_count(1000);
  std::unique_ptr<grpc::ClientReader<Reply>> reader = stub->ServerStream(&context, request);
  reader->WaitForInitialMetadata();
  const auto& headers = context.GetServerInitialMetadata();
  ASSERT_EQ(headers.count("x-stream"), 1u);
  Reply reply;
  int n = 0;
  while (reader->Read(&reply)) {
    EXPECT_EQ(reply.index(), n);
    EXPECT_EQ(reply.text(), "tick");
    ++n;
  }
  grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(n, 1000);
}

TEST_F(MeshTest, ASlowReaderHoldsTheServerBack) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(60)));
  Request request;
  request.set_count(40000);
  std::unique_ptr<grpc::ClientReader<Reply>> reader = stub->ServerStream(&context, request);
  Reply reply;
  ASSERT_TRUE(reader->Read(&reply));
  absl::SleepFor(absl::Milliseconds(500));
  grpc::ClientContext stats_context;
  test::mesh::StatsReply stats;
  ASSERT_TRUE(stub->Stats(&stats_context, test::mesh::StatsRequest(), &stats).ok());
  // About a window (4096 replies) ahead of the reader, plus what gRPC buffers: not all.
  EXPECT_LT(stats.written(), 10000);
  LOG(INFO) << "the service wrote " << stats.written() << " replies ahead of a stopped reader";
  int n = 1;
  while (reader->Read(&reply)) {
    EXPECT_EQ(reply.index(), n);
    ++n;
  }
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(n, 40000);
}

TEST_F(MeshTest, ClientStream) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  Reply reply;
  std::unique_ptr<grpc::ClientWriter<Request>> writer = stub->ClientStream(&context, &reply);
  std::string expected;
  // More than a flow-control window (4096 messages) of requests.
  for (int i = 0; i < 10000; ++i) {
    Request request;
    request.set_text(absl::StrCat(i, ","));
    expected += request.text();
    ASSERT_TRUE(writer->Write(request));
  }
  ASSERT_TRUE(writer->WritesDone());
  grpc::Status status = writer->Finish();
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(reply.text(), expected);
  EXPECT_EQ(reply.index(), 10000);
  EXPECT_EQ(reply.pid(), PidOf(*leaf));
}

TEST_F(MeshTest, BidiPingPong) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(30)));
  std::unique_ptr<grpc::ClientReaderWriter<Request, Reply>> stream = stub->Bidi(&context);
  for (int i = 0; i < 100; ++i) {
    Request request;
    request.set_text(absl::StrCat("ping ", i));
    ASSERT_TRUE(stream->Write(request));
    Reply reply;
    ASSERT_TRUE(stream->Read(&reply));
    EXPECT_EQ(reply.text(), absl::StrCat("re: ping ", i));
    EXPECT_EQ(reply.index(), i);
  }
  // Then many requests before reading any reply.
  for (int i = 0; i < 500; ++i) {
    Request request;
    request.set_text(absl::StrCat("bulk ", i));
    ASSERT_TRUE(stream->Write(request));
  }
  for (int i = 0; i < 500; ++i) {
    Reply reply;
    ASSERT_TRUE(stream->Read(&reply));
    EXPECT_EQ(reply.text(), absl::StrCat("re: bulk ", i));
  }
  ASSERT_TRUE(stream->WritesDone());
  Reply extra;
  EXPECT_FALSE(stream->Read(&extra));
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
}

TEST_F(MeshTest, DeadlineExpires) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Milliseconds(300)));
  Request request;
  request.set_sleep_ms(60000);
  Reply reply;
  absl::Time start = absl::Now();
  grpc::Status status = stub->Unary(&context, request, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // The service saw it (the deadline travelled with the call).
  int64_t cancelled = 0;
  for (int i = 0; i < 500 && cancelled == 0; ++i) {
    grpc::ClientContext stats_context;
    test::mesh::StatsReply stats;
    ASSERT_TRUE(stub->Stats(&stats_context, test::mesh::StatsRequest(), &stats).ok());
    cancelled = stats.cancelled();
    if (cancelled == 0) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(cancelled, 1);
  EXPECT_EQ(master.router().pending_calls(), 0u);
}

TEST_F(MeshTest, CancellationReachesTheService) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  Request request;
  request.set_sleep_ms(60000);
  Reply reply;
  std::promise<grpc::Status> done;
  stub->async()->Unary(&context, &request, &reply,
                       [&done](grpc::Status status) { done.set_value(status); });
  // Wait until the service is running the call.
  for (int i = 0; i < 500; ++i) {
    grpc::ClientContext stats_context;
    test::mesh::StatsReply stats;
    ASSERT_TRUE(stub->Stats(&stats_context, test::mesh::StatsRequest(), &stats).ok());
    if (stats.calls() >= 1) break;  // The sleeping Unary (Stats does not count).
    absl::SleepFor(absl::Milliseconds(10));
  }
  context.TryCancel();
  grpc::Status status = done.get_future().get();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED) << status.error_message();
  int64_t cancelled = 0;
  for (int i = 0; i < 500 && cancelled == 0; ++i) {
    grpc::ClientContext stats_context;
    test::mesh::StatsReply stats;
    ASSERT_TRUE(stub->Stats(&stats_context, test::mesh::StatsRequest(), &stats).ok());
    cancelled = stats.cancelled();
    if (cancelled == 0) absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_EQ(cancelled, 1);
  EXPECT_EQ(master.router().pending_calls(), 0u);
}

TEST_F(MeshTest, MetadataBothWays) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  const std::string binary("\x00\x01\xff\xfe bytes", 10);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  context.AddMetadata("x-in", "forty-two");
  context.AddMetadata("x-in-bin", binary);
  Request request;
  request.set_text("meta");
  Reply reply;
  grpc::Status status = stub->Unary(&context, request, &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  const auto& initial = context.GetServerInitialMetadata();
  const auto& trailers = context.GetServerTrailingMetadata();
  auto initial_it = initial.find("x-initial");
  ASSERT_NE(initial_it, initial.end());
  EXPECT_EQ(std::string(initial_it->second.data(), initial_it->second.size()), "forty-two");
  auto trailer_it = trailers.find("x-trailer");
  ASSERT_NE(trailer_it, trailers.end());
  EXPECT_EQ(std::string(trailer_it->second.data(), trailer_it->second.size()), "forty-two");
  auto bin_it = trailers.find("x-trailer-bin");
  ASSERT_NE(bin_it, trailers.end());
  EXPECT_EQ(std::string(bin_it->second.data(), bin_it->second.size()), binary);
}

TEST_F(MeshTest, StatusAndMessageArriveUnchanged) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  for (grpc::StatusCode code :
       {grpc::StatusCode::FAILED_PRECONDITION, grpc::StatusCode::NOT_FOUND,
        grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::PERMISSION_DENIED}) {
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    Request request;
    request.set_code(code);
    request.set_text(absl::StrCat("the disk is not mounted (", code, ")"));
    Reply reply;
    grpc::Status status = stub->Unary(&context, request, &reply);
    EXPECT_EQ(status.error_code(), code);
    EXPECT_EQ(status.error_message(), request.text());
  }
  // After the messages of a stream too.
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  Request request;
  request.set_count(3);
  request.set_code(grpc::StatusCode::DATA_LOSS);
  request.set_text("stream broke");
  std::unique_ptr<grpc::ClientReader<Reply>> reader = stub->ServerStream(&context, request);
  Reply reply;
  int n = 0;
  while (reader->Read(&reply)) ++n;
  grpc::Status status = reader->Finish();
  EXPECT_EQ(n, 3);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(status.error_message(), "stream broke");
}

// The raw bytes of a unary call through a generic stub.
grpc::Status RawUnary(const std::shared_ptr<grpc::Channel>& channel, const std::string& method,
                      const std::string& request, std::string* response) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1);
  grpc::ByteBuffer out;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &in, &out,
                 [&done](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();
  std::vector<grpc::Slice> slices;
  response->clear();
  if (status.ok() && out.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      response->append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  return status;
}

TEST_F(MeshTest, HealthServiceAndUnknownMethods) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::string response;
  // HealthCheckRequest{service: ""} is empty; HealthCheckResponse{status: SERVING} is 08 01.
  grpc::Status status = RawUnary(ChannelTo(*leaf), "/grpc.health.v1.Health/Check", "", &response);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(response, std::string("\x08\x01", 2));
  // The master hosts them too, reached directly.
  status = RawUnary(ChannelTo(master.self()), "/grpc.health.v1.Health/Check", "", &response);
  ASSERT_TRUE(status.ok()) << status.error_code() << " " << status.error_message();
  EXPECT_EQ(response, std::string("\x08\x01", 2));
  status = RawUnary(ChannelTo(*leaf), "/no.Such/Method", "", &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNIMPLEMENTED) << status.error_message();
}

// One exchange with server reflection (its messages are compiled into this program with the
// mesh): `request` in text format in, the response out.
std::unique_ptr<google::protobuf::Message> Reflect(const std::shared_ptr<grpc::Channel>& channel,
                                                   const std::string& request_text) {
  namespace pb = google::protobuf;
  const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
  auto make = [pool](const char* type) {
    const pb::Descriptor* d = pool->FindMessageTypeByName(type);
    EXPECT_NE(d, nullptr) << type;
    return std::unique_ptr<pb::Message>(
        d ? pb::MessageFactory::generated_factory()->GetPrototype(d)->New() : nullptr);
  };
  std::unique_ptr<pb::Message> request = make("grpc.reflection.v1alpha.ServerReflectionRequest");
  std::unique_ptr<pb::Message> response = make("grpc.reflection.v1alpha.ServerReflectionResponse");
  if (request == nullptr || response == nullptr) return nullptr;
  EXPECT_TRUE(pb::TextFormat::ParseFromString(request_text, request.get()));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  grpc::internal::RpcMethod method("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                   grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &context));
  grpc::Slice slice(request->SerializeAsString());
  EXPECT_TRUE(stream->Write(grpc::ByteBuffer(&slice, 1)));
  EXPECT_TRUE(stream->WritesDone());
  grpc::ByteBuffer in;
  EXPECT_TRUE(stream->Read(&in));
  grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (in.Valid() && in.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices)
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  EXPECT_TRUE(response->ParseFromString(bytes));
  return response;
}

TEST_F(MeshTest, ReflectionListsAndDescribesTheServices) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<google::protobuf::Message> listed =
      Reflect(ChannelTo(*leaf), "list_services: ''");
  ASSERT_NE(listed, nullptr);
  std::string text;
  google::protobuf::TextFormat::PrintToString(*listed, &text);
  EXPECT_THAT(text, HasSubstr("\"grove.test.mesh.Mesh\""));
  EXPECT_THAT(text, HasSubstr("\"grpc.health.v1.Health\""));
  EXPECT_THAT(text, HasSubstr("\"grpc.reflection.v1alpha.ServerReflection\""));

  std::unique_ptr<google::protobuf::Message> described =
      Reflect(ChannelTo(*leaf), "file_containing_symbol: 'grove.test.mesh.Mesh'");
  ASSERT_NE(described, nullptr);
  const google::protobuf::Reflection* r = described->GetReflection();
  const google::protobuf::Message& files = r->GetMessage(
      *described, described->GetDescriptor()->FindFieldByName("file_descriptor_response"));
  const google::protobuf::FieldDescriptor* protos =
      files.GetDescriptor()->FindFieldByName("file_descriptor_proto");
  ASSERT_GE(files.GetReflection()->FieldSize(files, protos), 1);
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(files.GetReflection()->GetRepeatedString(files, protos, 0)));
  EXPECT_EQ(file.package(), "grove.test.mesh");
  ASSERT_EQ(file.service_size(), 1);
  EXPECT_EQ(file.service(0).name(), "Mesh");
  EXPECT_EQ(file.service(0).method_size(), 5);
}

// The CLI (tools/grpc_cli.cc): the services of a context two hops away, and a health check
// (the CLI knows the health service's descriptors, which reflection cannot give).
TEST_F(MeshTest, OnlyServersOfTheProgramsServicesMakeServerPlugins) {
  ASSERT_TRUE(counting_plugin_registered);
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.Spawn("local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  absl::StatusOr<Context> below = leaf->Spawn("local,name=below");
  ASSERT_TRUE(below.ok()) << below.status();
  auto made = [&] {
    absl::StatusOr<Reply> reply = leaf->Call<Reply>("plugins_made", Request());
    EXPECT_TRUE(reply.ok()) << reply.status();
    return reply.ok() ? reply->index() : -1;
  };
  // Its link server, and the proxy server a channel from it makes: none (NoServerPluginsScope).
  Request down;
  down.set_count(static_cast<int32_t>(below->id().value()));
  down.set_text("down");
  absl::StatusOr<Reply> called = leaf->Call<Reply>("mesh_call", down);
  ASSERT_TRUE(called.ok()) << called.status();
  EXPECT_EQ(called->index(), 0) << called->text();
  EXPECT_EQ(made(), 0);
  // The server of its services (made on the first call to them): every plugin registered,
  // server reflection included.
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  Request request;
  request.set_text("down");
  Reply reply;
  grpc::Status status = stub->Unary(&context, request, &reply);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(made(), 1);
}

TEST_F(MeshTest, CliListsServicesAndChecksHealth) {
  const char* srcdir = ::getenv("TEST_SRCDIR");
  const std::string grove =
      srcdir ? std::string(srcdir) + "/grove/tools/grove" : "bazel-bin/tools/grove";
  auto run = [&](std::vector<std::string> argv, std::string* out) {
    absl::StatusOr<std::pair<UniqueFd, UniqueFd>> pipe = Pipe();
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
#if defined(__SANITIZE_THREAD__)
  // The CLI binary is stripped, so ThreadSanitizer cannot match its suppressions (gRPC's
  // internals) there and may end it with its own exit code, 66.
  auto exits = [](int code) { return ::testing::AnyOf(code, 66); };
#else
  auto exits = [](int code) { return ::testing::Eq(code); };
#endif
  std::string out;
  EXPECT_THAT(run({"grpc", "local/local", "list"}, &out), exits(0));
  EXPECT_THAT(out, HasSubstr("grpc.health.v1.Health\n"));
  EXPECT_THAT(out, HasSubstr("grpc.reflection.v1alpha.ServerReflection\n"));
  out.clear();
  EXPECT_THAT(run({"grpc", "local/local", "grpc.health.v1.Health/Check", "{}"}, &out), exits(0));
  EXPECT_EQ(out, "{\"status\":\"SERVING\"}\n");
  out.clear();
  EXPECT_THAT(run({"grpc", "local", "grpc.health.v1.Health/Check", "{\"service\":\"nope\"}"}, &out),
              exits(1));
}

TEST_F(MeshTest, MiddleKilledMidStreamFailsWithUnavailableNamingIt) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> middle = master.Spawn("local,name=middle");
  ASSERT_TRUE(middle.ok()) << middle.status();
  absl::StatusOr<Context> leaf = middle->Spawn("local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  const int64_t middle_pid = PidOf(*middle);
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(60)));
  Request request;
  request.set_count(1000000);
  request.set_sleep_ms(1);
  std::unique_ptr<grpc::ClientReader<Reply>> reader = stub->ServerStream(&context, request);
  Reply reply;
  int n = 0;
  absl::Time killed_at;
  while (reader->Read(&reply)) {
    if (++n == 20) {
      ::kill(static_cast<pid_t>(middle_pid), SIGKILL);
      killed_at = absl::Now();
    }
  }
  grpc::Status status = reader->Finish();
  absl::Duration detect = absl::Now() - killed_at;
  EXPECT_GE(n, 20);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  EXPECT_THAT(status.error_message(), HasSubstr("middle"));
  EXPECT_LT(detect, absl::Seconds(5));
  LOG(INFO) << "stream failed " << absl::FormatDuration(detect)
            << " after the kill: " << status.error_message();
}

TEST_F(MeshTest, AncestorsMayCallDescendantsNotTheOtherWay) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> middle = master.Spawn("local,name=middle");
  ASSERT_TRUE(middle.ok()) << middle.status();
  absl::StatusOr<Context> leaf = middle->Spawn("local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  // From the middle (a function running there) down to the leaf: allowed.
  Request down;
  down.set_count(static_cast<int>(leaf->id().value()));
  down.set_text("down");
  absl::StatusOr<Reply> reply = middle->Call<Reply>("mesh_call", down);
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(reply->index(), 0) << reply->text();
  EXPECT_EQ(reply->text(), "down");
  EXPECT_EQ(reply->pid(), PidOf(*leaf));
  // From the leaf up to its parent and to the master: refused.
  for (ContextId up : {middle->id(), kMasterId}) {
    Request request;
    request.set_count(static_cast<int>(up.value()));
    request.set_text("up");
    reply = leaf->Call<Reply>("mesh_call", request);
    ASSERT_TRUE(reply.ok()) << reply.status();
    EXPECT_EQ(reply->index(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED))
        << reply->text();
    EXPECT_THAT(reply->text(), HasSubstr("grove.grpc_open"));
  }
}

TEST_F(MeshTest, ManyCallsAtOnce) {
  Master master(MeshFunctions(), Options());
  absl::StatusOr<Context> leaf = master.SpawnPath("local/local,name=leaf");
  ASSERT_TRUE(leaf.ok()) << leaf.status();
  std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(ChannelTo(*leaf));
  constexpr int kCalls = 500;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<Request> requests(kCalls);
  std::vector<Reply> replies(kCalls);
  std::vector<std::promise<grpc::Status>> done(kCalls);
  for (int i = 0; i < kCalls; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(In(absl::Seconds(60)));
    requests[i].set_text(absl::StrCat(i));
    stub->async()->Unary(contexts[i].get(), &requests[i], &replies[i],
                         [&done, i](grpc::Status status) { done[i].set_value(status); });
  }
  for (int i = 0; i < kCalls; ++i) {
    grpc::Status status = done[i].get_future().get();
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
    EXPECT_EQ(replies[i].text(), absl::StrCat(i));
  }
}

TEST_F(MeshTest, ChannelToItselfAndAfterShutdown) {
  std::shared_ptr<grpc::Channel> channel;
  {
    Master master(MeshFunctions(), Options());
    channel = ChannelTo(master.self());
    std::unique_ptr<Mesh::Stub> stub = Mesh::NewStub(channel);
    grpc::ClientContext context;
    context.set_deadline(In(absl::Seconds(10)));
    Request request;
    request.set_text("self");
    Reply reply;
    grpc::Status status = stub->Unary(&context, request, &reply);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(reply.pid(), ::getpid());

    absl::StatusOr<Context> child = master.Spawn("local");
    ASSERT_TRUE(child.ok()) << child.status();
    std::shared_ptr<grpc::Channel> to_child = ChannelTo(*child);
    master.Shutdown();
    grpc::ClientContext after;
    after.set_deadline(In(absl::Seconds(10)));
    status = Mesh::NewStub(to_child)->Unary(&after, request, &reply);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  }
  // The master is gone: its channels fail, they do not hang.
  grpc::ClientContext context;
  context.set_deadline(In(absl::Seconds(10)));
  Request request;
  Reply reply;
  grpc::Status status = Mesh::NewStub(channel)->Unary(&context, request, &reply);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE) << status.error_message();
  channel.reset();
}

}  // namespace
}  // namespace grove::testing

int main(int argc, char** argv) {
  if (grove::IsAgentInvocation(argc, argv)) {
    grove::RunAgent(argc, argv, grove::testing::MeshFunctions());
  }
  // gRPC's process-wide state lives from here to the end, so that the leak check's baseline
  // includes it.
  grpc_init();
  grove::HoldCallbackQueue();
  grove::LinkQueue::Get();
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
