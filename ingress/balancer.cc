#include "ingress/balancer.h"

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "link/hop.h"

namespace grove {
namespace {

// The service of "/package.Service/Method"; empty when `method` is not one.
std::string ServiceOf(const std::string& method) {
  if (method.size() < 4 || method[0] != '/') return "";
  size_t slash = method.find('/', 1);
  if (slash == std::string::npos || slash == 1 || slash + 1 == method.size()) return "";
  return method.substr(1, slash - 1);
}

bool IsReflection(const std::string& service) {
  return service == "grpc.reflection.v1alpha.ServerReflection" ||
         service == "grpc.reflection.v1.ServerReflection";
}

}  // namespace

std::string Balancer::Replica::Describe() const {
  std::string what = id.has_value() && !name.empty() ? name : display;
  if (id.has_value()) absl::StrAppend(&what, " (context ", id->value(), ")");
  if (!id.has_value() || state != "running") {
    absl::StrAppend(&what, ": ", state, reason.empty() ? "" : absl::StrCat(", ", reason));
  } else {
    absl::StrAppend(&what, ": ", health);
  }
  return what;
}

void Balancer::SetServices(const google::protobuf::RepeatedPtrField<v1::Service>& services) {
  absl::MutexLock lock(&mu_);
  // Replicas that stay (or come back while calls are still on them) keep their object.
  absl::flat_hash_map<std::string, std::shared_ptr<Replica>> old;
  for (const auto& [id, flight] : by_id_) old[flight.replica->path] = flight.replica;
  for (const Service& s : services_) {
    for (const std::shared_ptr<Replica>& r : s.replicas) old[r->path] = r;
  }
  services_.clear();
  by_name_.clear();
  all_ = Service();
  all_.max_calls = 0;
  for (const v1::Service& spec : services) {
    Service service;
    service.names.assign(spec.name().begin(), spec.name().end());
    if (spec.has_max_calls_per_replica()) service.max_calls = spec.max_calls_per_replica();
    if (spec.has_health_interval_ms()) service.health_interval_ms = spec.health_interval_ms();
    for (const v1::SupervisedContext& c : spec.replica()) {
      absl::StatusOr<std::string> path = CanonicalPath(c.path());
      if (!path.ok()) continue;  // ValidateSpec refused it.
      std::shared_ptr<Replica>& replica = old[*path];
      if (replica == nullptr) {
        replica = std::make_shared<Replica>();
        replica->path = *path;
        replica->display = DisplayPath(c.path()).value_or(*path);
      }
      service.replicas.push_back(replica);
      all_.replicas.push_back(replica);
    }
    // Server reflection goes to any replica, bounded by the largest of the services' bounds.
    all_.max_calls = std::max(all_.max_calls, service.max_calls);
    for (const std::string& name : service.names) by_name_[name] = services_.size();
    services_.push_back(std::move(service));
  }
  Sweep();
}

void Balancer::Sweep() {
  absl::flat_hash_set<const Replica*> served;
  for (const std::shared_ptr<Replica>& r : all_.replicas) served.insert(r.get());
  absl::erase_if(by_id_, [&served](const auto& e) {
    const Flight& f = e.second;
    const bool current = served.contains(f.replica.get()) && f.replica->id.has_value() &&
                         f.replica->id->value() == e.first;
    return f.calls == 0 && !current;
  });
}

void Balancer::Locate(const std::vector<ReplicaLocation>& locations) {
  absl::MutexLock lock(&mu_);
  absl::flat_hash_map<std::string, const ReplicaLocation*> by_path;
  for (const ReplicaLocation& l : locations) by_path[l.path] = &l;
  for (const std::shared_ptr<Replica>& r : all_.replicas) {
    auto it = by_path.find(r->path);
    if (it == by_path.end()) continue;
    const ReplicaLocation& l = *it->second;
    if (l.id != r->id) {
      // A new context (or none): its health is asked anew before it takes calls.
      r->health = "UNKNOWN";
      if (l.id.has_value()) by_id_[l.id->value()].replica = r;
    } else if (r->state == "lost" && l.state == "running") {
      continue;  // The supervisor has not seen the loss yet: still out of the rotation.
    }
    r->id = l.id;
    r->name = l.name;
    r->state = l.state;
    r->reason = l.reason;
  }
  Sweep();
}

std::vector<Balancer::Probe> Balancer::Probes() const {
  absl::MutexLock lock(&mu_);
  std::vector<Probe> probes;
  for (const Service& s : services_) {
    for (const std::shared_ptr<Replica>& r : s.replicas) {
      if (!r->id.has_value() || r->state != "running") continue;
      probes.push_back({r->path, *r->id, r->name, s.names.empty() ? "" : s.names[0]});
    }
  }
  return probes;
}

void Balancer::SetHealth(const std::string& path, ContextId id, const std::string& health) {
  absl::MutexLock lock(&mu_);
  for (const std::shared_ptr<Replica>& r : all_.replicas) {
    if (r->path == path && r->id == id && r->state == "running") r->health = health;
  }
}

void Balancer::Lost(ContextId id, const std::string& why) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(id.value());
  if (it == by_id_.end()) return;
  Replica& r = *it->second.replica;
  if (r.id != id) return;
  r.state = "lost";
  r.reason = why;
  r.health = "UNKNOWN";
}

std::vector<std::pair<std::string, bool>> Balancer::Serving() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::pair<std::string, bool>> serving;
  for (const Service& s : services_) {
    bool any = std::any_of(s.replicas.begin(), s.replicas.end(),
                           [](const std::shared_ptr<Replica>& r) { return r->InRotation(); });
    for (const std::string& name : s.names) serving.emplace_back(name, any);
  }
  return serving;
}

std::vector<v1::ServiceStatus> Balancer::Describe() const {
  absl::MutexLock lock(&mu_);
  std::vector<v1::ServiceStatus> out;
  for (const Service& s : services_) {
    v1::ServiceStatus& status = out.emplace_back();
    for (const std::string& name : s.names) status.add_names(name);
    for (const std::shared_ptr<Replica>& r : s.replicas) {
      v1::ServiceStatus::Replica* replica = status.add_replicas();
      replica->set_path(r->display);
      if (r->id.has_value() && r->state != "lost") replica->set_id(r->id->value());
      replica->set_health(r->id.has_value() && r->state == "running"
                              ? r->health
                              : absl::StrCat(r->state, r->reason.empty() ? "" : ": ", r->reason));
      replica->set_in_flight(r->in_flight);
      replica->set_calls(r->calls);
      replica->set_failed(r->failed);
    }
  }
  return out;
}

int64_t Balancer::HealthIntervalMs() const {
  absl::MutexLock lock(&mu_);
  int64_t ms = 0;
  for (const Service& s : services_) {
    if (ms == 0 || s.health_interval_ms < ms) ms = s.health_interval_ms;
  }
  return ms > 0 ? ms : 500;
}

absl::StatusOr<Balancer::Service*> Balancer::ServiceFor(const std::string& method) {
  const std::string name = ServiceOf(method);
  if (IsReflection(name) && !all_.replicas.empty()) return &all_;
  auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    std::vector<std::string> names;
    for (const auto& [n, index] : by_name_) names.push_back(n);
    std::sort(names.begin(), names.end());
    return absl::UnimplementedError(absl::StrCat(
        "no service '", name.empty() ? method : name, "' behind this ingress (it serves ",
        names.empty() ? "none" : absl::StrJoin(names, ", "), ")"));
  }
  return &services_[it->second];
}

ContextId Balancer::Take(const std::shared_ptr<Replica>& replica) {
  ++replica->in_flight;
  ++replica->calls;
  Flight& flight = by_id_[replica->id->value()];
  flight.replica = replica;
  ++flight.calls;
  return *replica->id;
}

absl::StatusOr<ContextId> Balancer::Choose(Service& service, const std::string& service_name,
                                           std::optional<ContextId> except) {
  const std::shared_ptr<Replica>* best = nullptr;
  bool any_healthy = false;
  const size_t n = service.replicas.size();
  for (size_t k = 0; k < n; ++k) {
    const std::shared_ptr<Replica>& r = service.replicas[(service.next + k) % n];
    if (!r->InRotation() || r->id == except) continue;
    any_healthy = true;
    if (r->in_flight >= service.max_calls) continue;
    if (best == nullptr || r->in_flight < (*best)->in_flight) best = &r;
  }
  if (best != nullptr) {
    service.next = (service.next + 1) % std::max<size_t>(n, 1);
    return Take(*best);
  }
  if (any_healthy) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "every healthy replica of ", service_name, " has ", service.max_calls,
        " calls in flight (max_calls_per_replica)"));
  }
  std::vector<std::string> states;
  for (const std::shared_ptr<Replica>& r : service.replicas) states.push_back(r->Describe());
  return absl::UnavailableError(absl::StrCat("no healthy replica of ", service_name, ": ",
                                             states.empty() ? "none declared"
                                                            : absl::StrJoin(states, "; ")));
}

absl::StatusOr<CallPicker::Picked> Balancer::Pick(
    const std::string& method, const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Service*> service = ServiceFor(method);
  if (!service.ok()) return service.status();
  const std::string name = ServiceOf(method);
  auto pin = metadata.find(kReplicaKey);
  if (pin == metadata.end()) {
    absl::StatusOr<ContextId> chosen = Choose(**service, name, std::nullopt);
    if (!chosen.ok()) return chosen.status();
    return Picked{*chosen, true};
  }
  const std::string wanted(pin->second.data(), pin->second.size());
  uint64_t id = 0;
  const bool numeric = absl::SimpleAtoi(wanted, &id);
  for (const std::shared_ptr<Replica>& r : (*service)->replicas) {
    if (r->name != wanted && !(numeric && r->id.has_value() && r->id->value() == id)) continue;
    if (!r->InRotation()) {
      return absl::UnavailableError(
          absl::StrCat("replica ", r->Describe(), " (pinned by ", kReplicaKey, ") takes no calls"));
    }
    if (r->in_flight >= (*service)->max_calls) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "replica ", r->Describe(), " (pinned by ", kReplicaKey, ") has ", r->in_flight,
          " calls in flight (max_calls_per_replica)"));
    }
    // The client chose it: never moved elsewhere.
    return Picked{Take(r), false};
  }
  return absl::NotFoundError(
      absl::StrCat("no replica of ", name, " is named '", wanted, "' (", kReplicaKey, ")"));
}

std::optional<ContextId> Balancer::Retry(const std::string& method, ContextId lost,
                                         const absl::Status&) {
  // The registry says whether `lost` is gone for good (Lost); this call just goes elsewhere.
  absl::MutexLock lock(&mu_);
  absl::StatusOr<Service*> service = ServiceFor(method);
  if (!service.ok()) return std::nullopt;
  absl::StatusOr<ContextId> next = Choose(**service, ServiceOf(method), lost);
  if (!next.ok()) return std::nullopt;
  return *next;
}

void Balancer::Done(ContextId target, const grpc::Status& status) {
  absl::MutexLock lock(&mu_);
  auto it = by_id_.find(target.value());
  if (it == by_id_.end() || it->second.calls == 0) return;
  Flight& flight = it->second;
  --flight.calls;
  Replica& r = *flight.replica;
  if (r.in_flight > 0) --r.in_flight;
  if (!status.ok()) ++r.failed;
  if (flight.calls == 0 && r.id != target) by_id_.erase(it);
}

}  // namespace grove
