#include "tools/bench_service.h"

#include <algorithm>

namespace grove::cli {
namespace {

// Writes `count` messages of `size` bytes, one at a time. Deletes itself when done.
class StreamWriter final : public grpc::ServerWriteReactor<bench::Payload> {
 public:
  StreamWriter(int count, int size) : left_(count) {
    message_.mutable_data()->assign(static_cast<size_t>(std::max(0, size)), 'g');
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went"));
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (left_-- <= 0) return Finish(grpc::Status::OK);
    StartWrite(&message_);
  }
  int left_;
  bench::Payload message_;
};

}  // namespace

grpc::ServerUnaryReactor* BenchEcho::Unary(grpc::CallbackServerContext* context,
                                           const bench::Payload* request, bench::Payload* reply) {
  *reply = *request;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<bench::Payload>* BenchEcho::Stream(grpc::CallbackServerContext*,
                                                            const bench::StreamRequest* request) {
  return new StreamWriter(request->count(), request->size());
}

BenchEcho& TheBenchEcho() {
  static BenchEcho* service = new BenchEcho();
  return *service;
}

}  // namespace grove::cli
