// Forwarder: a listening gRPC server that forwards every call it receives to a context of the
// tree, as bytes, the way ChannelTo channels do (mesh.h): unary and every streaming kind,
// metadata both ways, deadlines, cancellation, flow control end to end, status and message
// unchanged. A CallPicker chooses the context of each call; the ingress (ingress/) is one.
//
//   client ──gRPC (TCP)──> Forwarder ── grove.grpc_open/grpc_send ──> picked context
//
// A call whose open failed UNAVAILABLE before the picked context said it started the call on
// its service (its context lost or unreachable) is offered to the picker once more (Retry),
// so a client does not see the loss of a replica its call never reached. This is at least
// once, not exactly once: a context lost after it started the call but before its word
// reached the forwarder has the call run again elsewhere.
//
// The server also serves the standard health service (grpc.health.v1.Health) itself, whose
// statuses the owner sets (health()); every other method is forwarded.
#ifndef GROVE_MESH_FORWARDER_H_
#define GROVE_MESH_FORWARDER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "common/context_id.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/support/status.h"
#include "grpcpp/support/string_ref.h"
#include "router/router.h"

namespace grove {

// Where each call a Forwarder receives goes. Implementations are thread-safe: calls come on
// gRPC's threads and the routers', concurrently; none may block.
class CallPicker {
 public:
  virtual ~CallPicker() = default;
  struct Picked {
    ContextId target;
    // Whether the call may go elsewhere when `target` is lost before it accepted the call
    // (not, say, when the client chose the target).
    bool retriable = true;
  };
  // The context call `method` ("/package.Service/Method") with client `metadata` goes to; an
  // error ends the call with it (its code and message reach the client).
  virtual absl::StatusOr<Picked> Pick(
      const std::string& method,
      const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) = 0;
  // Another context for a call whose open failed UNAVAILABLE (its context gone or
  // unreachable) before `lost` accepted it; nullopt when there is none (the call then fails
  // with `why`). Done(lost, ...) has been called for the lost one.
  virtual std::optional<ContextId> Retry(const std::string& method, ContextId lost,
                                         const absl::Status& why) = 0;
  // The call picked for `target` is over, with `status` as the client saw it (or would
  // have, had it not been retried elsewhere).
  virtual void Done(ContextId target, const grpc::Status& status) = 0;
};

struct ForwarderOptions {
  // host:port ("127.0.0.1:0" picks a free port: see Forwarder::port()).
  std::string listen;
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Not owned; must outlive the forwarder.
  CallPicker* picker = nullptr;
  // Streams one client connection may have open at once (HTTP/2's
  // MAX_CONCURRENT_STREAMS); further ones wait in the client.
  int max_streams_per_connection = 100;
  // Largest request or response message; larger ones fail RESOURCE_EXHAUSTED. 0: the
  // router's max_message_bytes.
  int64_t max_message_bytes = 0;
};

// Owns its gRPC server. Thread-safe. Must be shut down (or destroyed) before its router.
class Forwarder {
 public:
  // Starts listening. INVALID_ARGUMENT for a missing picker; UNAVAILABLE naming the address
  // when it cannot be bound.
  static absl::StatusOr<std::unique_ptr<Forwarder>> Start(Router* router,
                                                          ForwarderOptions options);
  ~Forwarder();
  Forwarder(const Forwarder&) = delete;
  Forwarder& operator=(const Forwarder&) = delete;

  // The port it listens on.
  int port() const { return port_; }
  // Its health service: the owner says which services are SERVING.
  grpc::HealthCheckServiceInterface* health();
  // Stops taking calls, cancels those in flight and waits for them; later calls into the
  // picker stop. Idempotent.
  void Shutdown();

 private:
  struct Impl;
  explicit Forwarder(std::unique_ptr<Impl> impl, int port);

  std::unique_ptr<Impl> impl_;
  const int port_;
};

}  // namespace grove

#endif  // GROVE_MESH_FORWARDER_H_
