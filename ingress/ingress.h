// Ingress: the resident master's front door for ordinary gRPC clients (docs/deploying.md).
//
// The spec's services (proto/spec.proto: Service) run as replicas in contexts of the tree; the
// ingress listens where the spec says (Ingress.listen) and forwards each call, as bytes, to a
// replica of the called service (a Forwarder, mesh/forwarder.h, whose CallPicker is the
// Balancer). It asks every replica for its health (grpc.health.v1.Health/Check, through the
// tree) every health_interval_ms; a replica whose context is lost leaves the rotation at once
// (from the registry). Its own health service answers SERVING for a service with a replica in
// the rotation; server reflection is forwarded to a replica.
//
//   client ──gRPC──> ingress (master) ── grove.grpc_open ──> replica context (its services)
//
// Security: the ingress serves plaintext, on a loopback address unless the spec says
// `insecure` (TLS is not in this build: grove links gRPC without it, and a spec asking for it
// is refused). The ingress says in the master's log which it does.
#ifndef GROVE_INGRESS_INGRESS_H_
#define GROVE_INGRESS_INGRESS_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "ingress/balancer.h"
#include "mesh/forwarder.h"
#include "proto/spec.pb.h"
#include "router/router.h"

namespace grove {

// Checks the services of a spec (names "package.Service", none twice, at least one replica)
// and its ingress (listen is host:port; a non-loopback address needs `insecure`; no `tls`,
// UNIMPLEMENTED). INVALID_ARGUMENT naming the entry.
absl::Status ValidateServices(const v1::Spec& spec);

struct IngressOptions {
  // The master's router; must outlive the ingress.
  Router* root = nullptr;
  // Where the replicas' contexts are now (the supervisor's view of their paths).
  std::function<std::vector<ReplicaLocation>()> locate;
  // A line for the master's log.
  std::function<void(const std::string&)> note;
};

// Owns the balancer, the forwarder (while it listens), the health thread and a registry
// subscription; all end in the destructor, which must run before the router's shutdown.
// Thread-safe.
class Ingress {
 public:
  explicit Ingress(IngressOptions options);
  ~Ingress();
  Ingress(const Ingress&) = delete;
  Ingress& operator=(const Ingress&) = delete;

  // Makes `spec` (valid) current: its services, and its listener (started, restarted when the
  // address or limits changed, or stopped). UNAVAILABLE when the address cannot be bound;
  // the services apply even then.
  absl::Status Apply(const v1::Spec& spec);

  // "host:port" where it listens (the port it got for port 0); empty when it does not.
  std::string address() const;
  std::vector<v1::ServiceStatus> Describe() const { return balancer_.Describe(); }

  // Asks every replica for its health now (the health thread does so every interval).
  void CheckNow();

 private:
  void Loop();
  // Stops the listener (its calls are cancelled).
  void StopListening() ABSL_LOCKS_EXCLUDED(mu_);

  const IngressOptions options_;
  Balancer balancer_;
  int subscription_ = 0;

  mutable absl::Mutex mu_;
  v1::Ingress current_ ABSL_GUARDED_BY(mu_);
  // Shared with a health round that is telling it the services' health.
  std::shared_ptr<Forwarder> forwarder_ ABSL_GUARDED_BY(mu_);
  std::string address_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  // Serialises health rounds (the thread's and CheckNow's).
  absl::Mutex round_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::thread thread_;
};

}  // namespace grove

#endif  // GROVE_INGRESS_INGRESS_H_
