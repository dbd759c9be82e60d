// grove.bench.Echo (bench_service.proto), as the grove CLI's contexts host it and as grove
// bench serves it directly for comparison.
#ifndef GROVE_TOOLS_BENCH_SERVICE_H_
#define GROVE_TOOLS_BENCH_SERVICE_H_

#include "tools/bench_service.grpc.pb.h"

namespace grove::cli {

// A callback service: echoes unary calls; streams what Stream asks for. Stateless and
// thread-safe.
class BenchEcho final : public bench::Echo::CallbackService {
 public:
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context,
                                  const bench::Payload* request, bench::Payload* reply) override;
  grpc::ServerWriteReactor<bench::Payload>* Stream(grpc::CallbackServerContext* context,
                                                   const bench::StreamRequest* request) override;
};

// The one instance the CLI's contexts host (Functions::AddService).
BenchEcho& TheBenchEcho();

}  // namespace grove::cli

#endif  // GROVE_TOOLS_BENCH_SERVICE_H_
