// Balancer: the services a spec declares, their replicas, and which replica each call that
// reaches the ingress goes to.
//
// A replica is in the rotation when its context is live, its supervisor says it is running
// and its last health check said SERVING. Among those, a call goes to the one with the fewest
// calls in flight (ties in turn). A client may pin a replica with the metadata entry
// "grove-replica: NAME" (its context's name or id). A replica whose context is lost leaves
// the rotation at once (Lost, from the registry) and comes back once a health check of its
// new context says SERVING.
#ifndef GROVE_INGRESS_BALANCER_H_
#define GROVE_INGRESS_BALANCER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/context_id.h"
#include "mesh/forwarder.h"
#include "proto/control.pb.h"
#include "proto/spec.pb.h"

namespace grove {

// The metadata key that pins a call to a replica.
inline constexpr char kReplicaKey[] = "grove-replica";

// Where a replica's context is, as its supervisor knows it.
struct ReplicaLocation {
  std::string path;  // canonical
  std::optional<ContextId> id;
  std::string name;   // the context's name (for pinning)
  std::string state;  // starting, running, restarting, down
  std::string reason;
};

// Thread-safe; never calls out while holding its lock.
class Balancer : public CallPicker {
 public:
  // A replica to ask for its health: its context, and the service name to ask about.
  struct Probe {
    std::string path;
    ContextId id;
    std::string name;
    std::string service;
  };

  // Makes `services` (valid, see ValidateSpec) the set served. Replicas whose path stays keep
  // their location, health and counters.
  void SetServices(const google::protobuf::RepeatedPtrField<v1::Service>& services);

  // What the supervisors say of the replicas now (paths not among the replicas are ignored).
  void Locate(const std::vector<ReplicaLocation>& locations);
  // The replicas with a live context, to ask for their health.
  std::vector<Probe> Probes() const;
  // The outcome of asking replica `path`'s context `id` for its health: SERVING,
  // NOT_SERVING, or why the check failed.
  void SetHealth(const std::string& path, ContextId id, const std::string& health);
  // Context `id` is gone: its replica leaves the rotation now.
  void Lost(ContextId id, const std::string& why);

  // Each service name, and whether a replica of it is in the rotation.
  std::vector<std::pair<std::string, bool>> Serving() const;
  std::vector<v1::ServiceStatus> Describe() const;
  // The smallest health_interval_ms of the services (500 ms when none says).
  int64_t HealthIntervalMs() const;

  // CallPicker (a pinned call is not retriable):
  absl::StatusOr<Picked> Pick(
      const std::string& method,
      const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) override;
  std::optional<ContextId> Retry(const std::string& method, ContextId lost,
                                 const absl::Status& why) override;
  void Done(ContextId target, const grpc::Status& status) override;

 private:
  struct Replica {
    std::string path;     // canonical
    std::string display;  // secrets hidden (DisplayPath)
    std::optional<ContextId> id;
    std::string name;
    std::string state = "starting";
    std::string reason;
    std::string health = "UNKNOWN";
    int in_flight = 0;
    int64_t calls = 0;
    int64_t failed = 0;
    bool InRotation() const { return id.has_value() && state == "running" && health == "SERVING"; }
    // For a client of the ingress: its context's name and id (its path only while it has
    // none), and why it takes no calls.
    std::string Describe() const;
  };
  struct Service {
    std::vector<std::string> names;
    std::vector<std::shared_ptr<Replica>> replicas;
    int max_calls = 1000;
    int64_t health_interval_ms = 500;
    size_t next = 0;  // Where the next tie-break starts.
  };

  // The replicas a call of `method` may go to (all of every service, for server reflection);
  // UNIMPLEMENTED naming the service when nobody serves it.
  absl::StatusOr<Service*> ServiceFor(const std::string& method)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The least loaded replica of `service` in the rotation but `except`, counted as called.
  absl::StatusOr<ContextId> Choose(Service& service, const std::string& service_name,
                                   std::optional<ContextId> except)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  ContextId Take(const std::shared_ptr<Replica>& replica) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets contexts with no call in flight that are no longer a replica's current one.
  void Sweep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  std::vector<Service> services_ ABSL_GUARDED_BY(mu_);
  // Service name -> index in services_.
  absl::flat_hash_map<std::string, size_t> by_name_ ABSL_GUARDED_BY(mu_);
  // Every replica of every service, for server reflection (which any replica answers).
  Service all_ ABSL_GUARDED_BY(mu_);
  // Contexts that are a replica's now or have calls in flight, with those calls (a replica's
  // context changes when it is restarted; its calls still end under the old id).
  struct Flight {
    std::shared_ptr<Replica> replica;
    int calls = 0;
  };
  absl::flat_hash_map<uint64_t, Flight> by_id_ ABSL_GUARDED_BY(mu_);
};

}  // namespace grove

#endif  // GROVE_INGRESS_BALANCER_H_
