// A program built with grove whose contexts serve grove.examples.Echo: run it as a resident
// master with a spec that declares the service and its replicas, and ordinary gRPC clients
// reach the replicas through the ingress (docs/deploying.md).
//
//   grove up examples/deploy/deploy.spec --program bazel-bin/examples/deploy/echo_server
//   examples/deploy/run 127.0.0.1:50551
//   grove down
#include <unistd.h>

#include <iostream>
#include <string>

#include "examples/deploy/echo.grpc.pb.h"
#include "grove.h"

class EchoImpl final : public grove::examples::Echo::Service {
 public:
  grpc::Status Say(grpc::ServerContext*, const grove::examples::EchoRequest* request,
                   grove::examples::EchoReply* reply) override {
    Fill(request->text(), reply);
    return grpc::Status::OK;
  }
  grpc::Status Count(grpc::ServerContext* context, const grove::examples::EchoRequest* request,
                     grpc::ServerWriter<grove::examples::EchoReply>* writer) override {
    for (int i = 1; i <= request->count() && !context->IsCancelled(); ++i) {
      grove::examples::EchoReply reply;
      Fill(std::to_string(i) + " " + request->text(), &reply);
      if (!writer->Write(reply)) break;
    }
    return grpc::Status::OK;
  }
  grpc::Status Chat(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<grove::examples::EchoReply, grove::examples::EchoRequest>* stream)
      override {
    grove::examples::EchoRequest request;
    while (stream->Read(&request)) {
      grove::examples::EchoReply reply;
      Fill(request.text(), &reply);
      if (!stream->Write(reply)) break;
    }
    return grpc::Status::OK;
  }

 private:
  static void Fill(const std::string& text, grove::examples::EchoReply* reply) {
    reply->set_text(text);
    reply->set_pid(getpid());
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    reply->set_host(host);
  }
};

int main(int argc, char** argv) {
  static EchoImpl service;  // Outlives every context of this process.
  grove::Functions functions;
  functions.AddService(&service);
  return grove::Main(argc, argv, functions, [argv](grove::Master&) {
    std::cerr << "echo_server serves its replicas as a resident master:\n"
                 "  grove up examples/deploy/deploy.spec --program "
              << argv[0] << "\n";
    return 2;
  });
}
