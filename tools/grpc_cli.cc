// grove grpc: the gRPC services a context hosts (mesh/mesh.h), from the command line.
//
//   grove grpc PATH list                       the services, from server reflection
//   grove grpc PATH SERVICE/METHOD 'JSON'      call a method with a JSON request (protobuf
//                                              JSON mapping), print each response as JSON
//
// The method's types come from the context's server reflection (file_containing_symbol),
// built into a descriptor pool of their own here, so this program need not know them; the
// standard health service, which has no descriptors in a grove program, is known here.
// Unary and server-streaming methods only.
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "common/printable.h"
#include "common/status_util.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "google/protobuf/descriptor_database.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/util/json_util.h"
#include "grove.h"
#include "grpcpp/client_context.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/sync_stream.h"
#include "tools/cli.h"
#include "tools/cli_paths.h"

namespace grove::cli {
namespace {

namespace pb = google::protobuf;

constexpr char kReflectionMethod[] =
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";
constexpr absl::Duration kTimeout = absl::Seconds(30);

// grpc/health/v1/health.proto, which a grove program serves (gRPC's default health service)
// without its descriptors: reflection cannot describe it.
constexpr char kHealthProto[] = R"pb(
  name: "grpc/health/v1/health.proto"
  package: "grpc.health.v1"
  message_type {
    name: "HealthCheckRequest"
    field { name: "service" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING json_name: "service" }
  }
  message_type {
    name: "HealthCheckResponse"
    field {
      name: "status"
      number: 1
      label: LABEL_OPTIONAL
      type: TYPE_ENUM
      type_name: ".grpc.health.v1.HealthCheckResponse.ServingStatus"
      json_name: "status"
    }
    enum_type {
      name: "ServingStatus"
      value { name: "UNKNOWN" number: 0 }
      value { name: "SERVING" number: 1 }
      value { name: "NOT_SERVING" number: 2 }
      value { name: "SERVICE_UNKNOWN" number: 3 }
    }
  }
  service {
    name: "Health"
    method {
      name: "Check"
      input_type: ".grpc.health.v1.HealthCheckRequest"
      output_type: ".grpc.health.v1.HealthCheckResponse"
    }
    method {
      name: "Watch"
      input_type: ".grpc.health.v1.HealthCheckRequest"
      output_type: ".grpc.health.v1.HealthCheckResponse"
      server_streaming: true
    }
  }
  syntax: "proto3"
)pb";

std::chrono::system_clock::time_point Deadline() {
  return absl::ToChronoTime(absl::Now() + kTimeout);
}

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string Bytes(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  for (const grpc::Slice& s : slices)
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// A message of this program's own descriptors (server reflection's, linked in with the mesh).
std::unique_ptr<pb::Message> NewGenerated(const std::string& type) {
  const pb::Descriptor* d = pb::DescriptorPool::generated_pool()->FindMessageTypeByName(type);
  if (d == nullptr) return nullptr;
  return std::unique_ptr<pb::Message>(
      pb::MessageFactory::generated_factory()->GetPrototype(d)->New());
}

// One exchange with the context's server reflection: `request` (a text-format
// ServerReflectionRequest) in, the response out.
absl::StatusOr<std::unique_ptr<pb::Message>> Reflect(const std::shared_ptr<grpc::Channel>& channel,
                                                     const std::string& request_text) {
  std::unique_ptr<pb::Message> request =
      NewGenerated("grpc.reflection.v1alpha.ServerReflectionRequest");
  std::unique_ptr<pb::Message> response =
      NewGenerated("grpc.reflection.v1alpha.ServerReflectionResponse");
  if (request == nullptr || response == nullptr) {
    return absl::InternalError("this program has no server reflection descriptors");
  }
  if (!pb::TextFormat::ParseFromString(request_text, request.get())) {
    return absl::InternalError("bad reflection request");
  }
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  grpc::internal::RpcMethod method(kReflectionMethod, grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &context));
  stream->Write(Buffer(request->SerializeAsString()));
  stream->WritesDone();
  grpc::ByteBuffer in;
  bool got = stream->Read(&in);
  grpc::Status status = stream->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  if (!got || !response->ParseFromString(Bytes(in))) {
    return absl::UnavailableError("server reflection gave no answer");
  }
  const pb::Reflection* r = response->GetReflection();
  const pb::FieldDescriptor* error = response->GetDescriptor()->FindFieldByName("error_response");
  if (error != nullptr && r->HasField(*response, error)) {
    const pb::Message& e = r->GetMessage(*response, error);
    const pb::FieldDescriptor* code = e.GetDescriptor()->FindFieldByName("error_code");
    const pb::FieldDescriptor* message = e.GetDescriptor()->FindFieldByName("error_message");
    return absl::Status(static_cast<absl::StatusCode>(e.GetReflection()->GetInt32(e, code)),
                        e.GetReflection()->GetString(e, message));
  }
  return response;
}

// The service names the context offers.
absl::StatusOr<std::vector<std::string>> ListServices(
    const std::shared_ptr<grpc::Channel>& channel) {
  absl::StatusOr<std::unique_ptr<pb::Message>> response = Reflect(channel, "list_services: ''");
  if (!response.ok()) return response.status();
  const pb::Message& m = **response;
  const pb::FieldDescriptor* list = m.GetDescriptor()->FindFieldByName("list_services_response");
  const pb::Message& services = m.GetReflection()->GetMessage(m, list);
  const pb::FieldDescriptor* service = services.GetDescriptor()->FindFieldByName("service");
  std::vector<std::string> names;
  for (int i = 0; i < services.GetReflection()->FieldSize(services, service); ++i) {
    const pb::Message& s = services.GetReflection()->GetRepeatedMessage(services, service, i);
    names.push_back(s.GetReflection()->GetString(s, s.GetDescriptor()->FindFieldByName("name")));
  }
  return names;
}

// Adds to `db` the files that describe `symbol` in the context (with their dependencies).
absl::Status AddFilesOf(const std::shared_ptr<grpc::Channel>& channel, const std::string& symbol,
                        pb::SimpleDescriptorDatabase* db) {
  absl::StatusOr<std::unique_ptr<pb::Message>> response =
      Reflect(channel, absl::StrCat("file_containing_symbol: '", symbol, "'"));
  if (!response.ok()) {
    if (symbol == "grpc.health.v1.Health") {
      pb::FileDescriptorProto health;
      if (!pb::TextFormat::ParseFromString(kHealthProto, &health)) {
        return absl::InternalError("bad built-in health.proto");
      }
      db->AddAndOwn(new pb::FileDescriptorProto(health));
      return absl::OkStatus();
    }
    return response.status();
  }
  const pb::Message& m = **response;
  const pb::FieldDescriptor* files = m.GetDescriptor()->FindFieldByName("file_descriptor_response");
  const pb::Message& f = m.GetReflection()->GetMessage(m, files);
  const pb::FieldDescriptor* protos = f.GetDescriptor()->FindFieldByName("file_descriptor_proto");
  for (int i = 0; i < f.GetReflection()->FieldSize(f, protos); ++i) {
    auto file = std::make_unique<pb::FileDescriptorProto>();
    if (!file->ParseFromString(f.GetReflection()->GetRepeatedString(f, protos, i))) {
      return absl::DataLossError("server reflection sent a file descriptor that does not decode");
    }
    pb::FileDescriptorProto existing;
    if (db->FindFileByName(file->name(), &existing)) continue;
    db->AddAndOwn(file.release());
  }
  return absl::OkStatus();
}

void PrintJson(const pb::Message& message) {
  std::string json;
  pb::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  (void)pb::util::MessageToJsonString(message, &json, print);
  printf("%s\n", json.c_str());
  fflush(stdout);
}

int CallMethod(const std::shared_ptr<grpc::Channel>& channel, const std::string& name,
               const std::string& json) {
  // SERVICE/METHOD (or /SERVICE/METHOD, or SERVICE.METHOD).
  std::string path(absl::StripPrefix(name, "/"));
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) slash = path.rfind('.');
  if (slash == std::string::npos || slash == 0 || slash + 1 == path.size()) {
    fprintf(stderr, "grove grpc: '%s' is not SERVICE/METHOD\n", name.c_str());
    return 2;
  }
  const std::string service = path.substr(0, slash);
  const std::string method_name = path.substr(slash + 1);
  pb::SimpleDescriptorDatabase db;
  if (absl::Status s = AddFilesOf(channel, service, &db); !s.ok()) {
    fprintf(stderr, "grove grpc: cannot describe %s: %s\n", Printable(service).c_str(),
            Printable(s.ToString()).c_str());
    return 1;
  }
  pb::DescriptorPool pool(&db);
  const pb::ServiceDescriptor* sd = pool.FindServiceByName(service);
  const pb::MethodDescriptor* md = sd == nullptr ? nullptr : sd->FindMethodByName(method_name);
  if (md == nullptr) {
    fprintf(stderr, "grove grpc: no method %s in service %s\n", method_name.c_str(),
            service.c_str());
    return 2;
  }
  if (md->client_streaming()) {
    fprintf(stderr,
            "grove grpc: %s takes a stream of requests; only unary and server-streaming "
            "methods can be called from here\n",
            md->full_name().c_str());
    return 2;
  }
  pb::DynamicMessageFactory factory(&pool);
  std::unique_ptr<pb::Message> request(factory.GetPrototype(md->input_type())->New());
  if (auto parsed = pb::util::JsonStringToMessage(json, request.get()); !parsed.ok()) {
    fprintf(stderr, "grove grpc: the request is not a %s in JSON: %s\n",
            md->input_type()->full_name().c_str(), parsed.ToString().c_str());
    return 2;
  }
  const std::string full = absl::StrCat("/", service, "/", method_name);
  grpc::ClientContext context;
  context.set_deadline(Deadline());
  std::unique_ptr<pb::Message> response(factory.GetPrototype(md->output_type())->New());
  grpc::Status status;
  if (!md->server_streaming()) {
    grpc::ByteBuffer out;
    status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
        channel.get(),
        grpc::internal::RpcMethod(full.c_str(), grpc::internal::RpcMethod::NORMAL_RPC), &context,
        Buffer(request->SerializeAsString()), &out);
    if (status.ok()) {
      if (!response->ParseFromString(Bytes(out))) {
        fprintf(stderr, "grove grpc: the response is not a %s\n",
                md->output_type()->full_name().c_str());
        return 1;
      }
      PrintJson(*response);
    }
  } else {
    grpc::internal::RpcMethod method(full.c_str(), grpc::internal::RpcMethod::SERVER_STREAMING);
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
            channel.get(), method, &context, Buffer(request->SerializeAsString())));
    grpc::ByteBuffer out;
    while (reader->Read(&out)) {
      response->Clear();
      if (response->ParseFromString(Bytes(out))) PrintJson(*response);
    }
    status = reader->Finish();
  }
  if (!status.ok()) {
    fprintf(stderr, "grove grpc: %s: %s\n",
            absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code())).c_str(),
            Printable(status.error_message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace

int Grpc(Master& master, const std::vector<std::string>& args) {
  if (args.size() < 2 || (args[1] == "list" ? args.size() != 2 : args.size() != 3)) {
    fprintf(stderr,
            "usage: grove grpc PATH list\n"
            "       grove grpc PATH SERVICE/METHOD 'JSON'\n");
    return 2;
  }
  absl::StatusOr<std::vector<Context>> contexts = StartPaths(master, {args[0]}, kTimeout);
  if (!contexts.ok()) {
    fprintf(stderr, "grove grpc: %s\n",
            Printable(Redacted(std::string(contexts.status().message()), {args[0]})).c_str());
    return 255;
  }
  std::shared_ptr<grpc::Channel> channel = ChannelTo(contexts->front());
  if (args[1] == "list") {
    absl::StatusOr<std::vector<std::string>> services = ListServices(channel);
    if (!services.ok()) {
      fprintf(stderr, "grove grpc: %s\n", Printable(services.status().ToString()).c_str());
      return 1;
    }
    for (const std::string& s : *services) printf("%s\n", s.c_str());
    return 0;
  }
  return CallMethod(channel, args[1], args[2]);
}

}  // namespace grove::cli
