// Ingress: the resident master's front door for ordinary gRPC clients (docs/deploying.md).
//
// The spec's services (proto/spec.proto: Service) run as replicas in contexts of the tree; the
// ingress listens where the spec says (Ingress.listen) and forwards each call, as bytes, to a
// replica of the called service (a Forwarder, mesh/forwarder.h, whose CallPicker is the
// Balancer). It asks every replica for its health (grpc.health.v1.Health/Check, through the
// tree, all replicas at once) every health_interval_ms (the smallest of the services'); a
// replica whose context is lost leaves the rotation at once (from the registry). Its own
// health service answers SERVING for a service with a replica in the rotation at the last
// round; server reflection is forwarded to a replica.
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

  // Makes `spec` (valid) current: its listener (started, moved, restarted with new limits, or
  // stopped), then its services. UNAVAILABLE when the address cannot be bound: then nothing
  // changes (a listener on another address keeps serving; one restarted on the same address
  // serves its old settings again).
  absl::Status Apply(const v1::Spec& spec);

  // "host:port" where it listens (the port it got for port 0); empty when it does not.
  std::string address() const;
  std::vector<v1::ServiceStatus> Describe() const { return balancer_->Describe(); }

  // Waits for a health round that starts after this call (the health thread runs one every
  // interval, and at once when asked).
  void CheckNow();

 private:
  void Loop();
  // Locates the replicas, asks each for its health (all at once), tells the listener's health
  // service. On the health thread only.
  void Round();
  // A listener for `spec` (not yet this ingress's: the caller installs it).
  absl::StatusOr<std::shared_ptr<Forwarder>> Listen(const v1::Ingress& spec)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(apply_mu_);
  // Stops the listener (its calls are cancelled).
  void StopListening() ABSL_EXCLUSIVE_LOCKS_REQUIRED(apply_mu_) ABSL_LOCKS_EXCLUDED(mu_);

  const IngressOptions options_;
  // Shared with the registry subscription.
  const std::shared_ptr<Balancer> balancer_;
  int subscription_ = 0;

  // Serialises Apply (and the destructor's stop): one change of listener at a time.
  absl::Mutex apply_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  v1::Ingress current_ ABSL_GUARDED_BY(mu_);
  // Shared with a health round that is telling it the services' health.
  std::shared_ptr<Forwarder> forwarder_ ABSL_GUARDED_BY(mu_);
  std::string address_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  bool round_running_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t rounds_done_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace grove

#endif  // GROVE_INGRESS_INGRESS_H_
