// A gRPC service hosted in every context of the tree, called with its ordinary generated stub
// through grove::ChannelTo: here in a context two hops away.
//
//   bazel run //examples/service
#include <iostream>

#include "examples/service/greeter.grpc.pb.h"
#include "grove.h"
#include "grpcpp/client_context.h"

// The service, as any gRPC service is written.
class GreeterImpl final : public example::Greeter::Service {
 public:
  grpc::Status SayHello(grpc::ServerContext*, const example::HelloRequest* request,
                        example::HelloReply* reply) override {
    reply->set_message("hello, " + request->name() + ", from pid " + std::to_string(getpid()));
    return grpc::Status::OK;
  }
  grpc::Status SayHellos(grpc::ServerContext*, const example::HelloRequest* request,
                         grpc::ServerWriter<example::HelloReply>* writer) override {
    for (int i = 1; i <= 3; ++i) {
      example::HelloReply reply;
      reply.set_message("hello " + std::to_string(i) + ", " + request->name());
      writer->Write(reply);
    }
    return grpc::Status::OK;
  }
};

int main(int argc, char** argv) {
  static GreeterImpl service;  // Outlives every context of this process.
  grove::Functions functions;
  functions.AddService(&service);
  return grove::Main(argc, argv, functions, [](grove::Master& master) {
    absl::StatusOr<grove::Context> leaf = master.SpawnPath("local/local,name=leaf");
    if (!leaf.ok()) {
      std::cerr << leaf.status() << "\n";
      return 1;
    }
    auto stub = example::Greeter::NewStub(grove::ChannelTo(*leaf));
    example::HelloRequest request;
    request.set_name("grove");
    example::HelloReply reply;
    grpc::ClientContext unary;
    grpc::Status status = stub->SayHello(&unary, request, &reply);
    if (!status.ok()) {
      std::cerr << status.error_message() << "\n";
      return 1;
    }
    std::cout << reply.message() << "\n";
    grpc::ClientContext streaming;
    auto reader = stub->SayHellos(&streaming, request);
    while (reader->Read(&reply)) std::cout << reply.message() << "\n";
    if (!reader->Finish().ok()) return 1;
    return 0;
  });
}
