#include "ingress/ingress.h"

#include <arpa/inet.h>
#include <netinet/in.h>


#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "common/status_util.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/server_credentials.h"
#include "mesh/mesh.h"
#include "router/context.h"

namespace grove {
namespace {

// The longest a health check may take.
constexpr absl::Duration kHealthTimeout = absl::Seconds(1);

// Splits "host:port" ("[v6]:port" too). False when it is not one.
bool SplitListen(const std::string& listen, std::string* host, int* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  *host = listen.substr(0, colon);
  if (host->front() == '[') {
    if (host->back() != ']') return false;
    *host = host->substr(1, host->size() - 2);
  }
  return absl::SimpleAtoi(listen.substr(colon + 1), port) && *port >= 0 && *port <= 65535 &&
         !host->empty();
}

// 127.0.0.0/8, ::1, or the name localhost.
bool IsLoopback(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

bool ValidServiceName(const std::string& name) {
  if (name.empty() || name.front() == '.' || name.back() == '.') return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.') return false;
  }
  return true;
}

// A grpc.health.v1.HealthCheckRequest for `service` (field 1, a string).
std::string HealthRequest(const std::string& service) {
  if (service.empty()) return "";
  std::string out(1, '\x0a');
  for (size_t n = service.size(); ; n >>= 7) {
    if (n < 0x80) {
      out.push_back(static_cast<char>(n));
      break;
    }
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  return out + service;
}

// The health a grpc.health.v1.HealthCheckResponse says: field 1, an enum (1 SERVING,
// 2 NOT_SERVING, 3 SERVICE_UNKNOWN; 0, UNKNOWN, is not sent).
std::string HealthOf(const grpc::ByteBuffer& response) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) {
      bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
  }
  if (bytes.empty()) return "UNKNOWN";
  if (bytes.size() == 2 && bytes[0] == '\x08' && bytes[1] >= 1 && bytes[1] <= 3) {
    static const char* const kNames[] = {"", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
    return kNames[static_cast<int>(bytes[1])];
  }
  return "health check answered something that is not a HealthCheckResponse";
}

// One health check of a replica's context through the tree, in flight.
struct HealthCheck {
  Balancer::Probe probe;
  std::string service;
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
  grpc::Status status;
};

// Asks each of `checks` (probe and service set) for its health, all at once, each for at
// most `timeout`; returns once every answer is in.
void Ask(Router* root, const std::vector<HealthCheck*>& checks, absl::Duration timeout) {
  absl::BlockingCounter answered(static_cast<int>(checks.size()));
  for (HealthCheck* check : checks) {
    grpc::GenericStub stub(ChannelTo(Context(root, check->probe.id, check->probe.name)));
    check->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    grpc::Slice slice(HealthRequest(check->service));
    check->request = grpc::ByteBuffer(&slice, 1);
    stub.UnaryCall(&check->context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                   &check->request, &check->response, [&answered, check](grpc::Status s) {
                     check->status = std::move(s);
                     answered.DecrementCount();
                   });
  }
  answered.Wait();
}

// The health of every probe's replica: its service's, or (a program that does not report per
// service answers NOT_FOUND) its whole server's ("").
std::vector<std::pair<Balancer::Probe, std::string>> CheckHealth(
    Router* root, const std::vector<Balancer::Probe>& probes, absl::Duration timeout) {
  std::vector<std::unique_ptr<HealthCheck>> checks;
  std::vector<HealthCheck*> first;
  for (const Balancer::Probe& probe : probes) {
    checks.push_back(std::make_unique<HealthCheck>());
    checks.back()->probe = probe;
    checks.back()->service = probe.service;
    first.push_back(checks.back().get());
  }
  Ask(root, first, timeout);
  std::vector<HealthCheck*> again;
  for (std::unique_ptr<HealthCheck>& check : checks) {
    if (check->status.error_code() == grpc::StatusCode::NOT_FOUND && !check->service.empty()) {
      auto whole = std::make_unique<HealthCheck>();
      whole->probe = check->probe;
      check = std::move(whole);
      again.push_back(check.get());
    }
  }
  Ask(root, again, timeout);
  std::vector<std::pair<Balancer::Probe, std::string>> results;
  for (const std::unique_ptr<HealthCheck>& check : checks) {
    results.emplace_back(check->probe,
                         check->status.ok()
                             ? HealthOf(check->response)
                             : absl::StrCat("health check failed: ",
                                            FromGrpcStatus(check->status).ToString()));
  }
  return results;
}

}  // namespace

absl::Status ValidateServices(const v1::Spec& spec) {
  absl::flat_hash_set<std::string> names;
  for (int i = 0; i < spec.service_size(); ++i) {
    const v1::Service& s = spec.service(i);
    const std::string where = absl::StrCat("spec service #", i + 1);
    if (s.name().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": no name (the gRPC service's full name)"));
    }
    for (const std::string& name : s.name()) {
      if (!ValidServiceName(name)) {
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": '", name, "' is not a gRPC service's full name (package.Service)"));
      }
      if (!names.insert(name).second) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": service ", name, " is declared twice"));
      }
    }
    if (s.replica().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " (", s.name(0), "): no replica"));
    }
    if (s.has_max_calls_per_replica() && s.max_calls_per_replica() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, " (", s.name(0),
                                                     "): max_calls_per_replica must be above 0, not ",
                                                     s.max_calls_per_replica()));
    }
    if (s.has_health_interval_ms() && s.health_interval_ms() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          where, " (", s.name(0), "): health_interval_ms must be above 0, not ",
          s.health_interval_ms()));
    }
  }
  const v1::Ingress& in = spec.ingress();
  if (in.listen().empty()) {
    if (in.has_tls() || in.insecure()) {
      return absl::InvalidArgumentError("spec ingress: tls or insecure without listen");
    }
    return absl::OkStatus();
  }
  std::string host;
  int port = 0;
  if (!SplitListen(in.listen(), &host, &port)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec ingress: listen '", in.listen(), "' is not host:port (\"127.0.0.1:8443\")"));
  }
  if (in.has_tls()) {
    // grove links gRPC without TLS (the static agent every context runs carries no OpenSSL).
    return absl::UnimplementedError(
        "spec ingress: tls is not supported by this build of grove; serve on a loopback "
        "address and put a TLS-terminating proxy in front, or say insecure: true");
  }
  if (!IsLoopback(host) && !in.insecure()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec ingress: '", host, "' is not a loopback address; the ingress serves plaintext "
        "only there unless the spec says insecure: true (anyone who reaches it can call)"));
  }
  if (in.has_max_streams_per_connection() && in.max_streams_per_connection() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec ingress: max_streams_per_connection must be above 0, not ",
        in.max_streams_per_connection()));
  }
  if (in.has_max_message_bytes() && in.max_message_bytes() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec ingress: max_message_bytes must be above 0, not ", in.max_message_bytes()));
  }
  return absl::OkStatus();
}

Ingress::Ingress(IngressOptions options)
    : options_(std::move(options)), balancer_(std::make_shared<Balancer>()) {
  // The subscription holds the balancer: a removal being reported as this ingress goes still
  // finds it.
  std::shared_ptr<Balancer> balancer = balancer_;
  subscription_ = options_.root->registry().Subscribe([balancer](const RegistryEvent& event) {
    if (event.kind == RegistryEvent::kRemoved) {
      balancer->Lost(event.record.id, event.record.reason.empty() ? "lost" : event.record.reason);
    }
  });
  thread_ = std::thread([this] { Loop(); });
}

Ingress::~Ingress() {
  options_.root->registry().Unsubscribe(subscription_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
  absl::MutexLock apply(&apply_mu_);
  StopListening();
}

absl::StatusOr<std::shared_ptr<Forwarder>> Ingress::Listen(const v1::Ingress& spec) {
  std::string host;
  int port = 0;
  SplitListen(spec.listen(), &host, &port);  // Valid: ValidateServices checked it.
  // Plaintext only (see ingress.h), which the log says.
  const char* how = IsLoopback(host)
                        ? "plaintext, on loopback only"
                        : "PLAINTEXT on a non-loopback address (insecure: true): anyone who "
                          "reaches it can call the services";
  ForwarderOptions forward;
  forward.listen = spec.listen();
  forward.credentials = grpc::InsecureServerCredentials();
  forward.picker = balancer_.get();
  if (spec.has_max_streams_per_connection()) {
    forward.max_streams_per_connection = spec.max_streams_per_connection();
  }
  forward.max_message_bytes = spec.max_message_bytes();
  absl::StatusOr<std::unique_ptr<Forwarder>> forwarder = Forwarder::Start(options_.root, forward);
  if (!forwarder.ok()) return forwarder.status();
  const std::string address =
      absl::StrCat(absl::StrContains(host, ':') ? absl::StrCat("[", host, "]") : host, ":",
                   (*forwarder)->port());
  options_.note(absl::StrCat("ingress listening on ", address, " (", how, ")"));
  absl::MutexLock lock(&mu_);
  current_ = spec;
  address_ = address;
  return std::shared_ptr<Forwarder>(*std::move(forwarder));
}

absl::Status Ingress::Apply(const v1::Spec& spec) {
  absl::MutexLock apply(&apply_mu_);
  v1::Ingress current;
  bool listening;
  {
    absl::MutexLock lock(&mu_);
    current = current_;
    listening = forwarder_ != nullptr;
  }
  const v1::Ingress& wanted = spec.ingress();
  if (!listening || !google::protobuf::util::MessageDifferencer::Equals(current, wanted)) {
    if (wanted.listen().empty()) {
      StopListening();
    } else if (!listening || current.listen() != wanted.listen()) {
      // Another address: the new listener first, so that a failure leaves the old serving.
      absl::StatusOr<std::shared_ptr<Forwarder>> started = Listen(wanted);
      if (!started.ok()) return started.status();
      std::shared_ptr<Forwarder> old;
      {
        absl::MutexLock lock(&mu_);
        old = std::exchange(forwarder_, *std::move(started));
      }
      if (old != nullptr) old->Shutdown();
    } else {
      // The same address with other limits: it must be let go first; on failure the old
      // settings are served again.
      StopListening();
      absl::StatusOr<std::shared_ptr<Forwarder>> started = Listen(wanted);
      if (!started.ok()) {
        absl::StatusOr<std::shared_ptr<Forwarder>> restored = Listen(current);
        absl::MutexLock lock(&mu_);
        if (restored.ok()) forwarder_ = *std::move(restored);
        return started.status();
      }
      absl::MutexLock lock(&mu_);
      forwarder_ = *std::move(started);
    }
  }
  balancer_->SetServices(spec.service());
  absl::MutexLock lock(&mu_);
  wake_ = true;
  return absl::OkStatus();
}

std::string Ingress::address() const {
  absl::MutexLock lock(&mu_);
  return address_;
}

void Ingress::StopListening() {
  std::shared_ptr<Forwarder> forwarder;
  {
    absl::MutexLock lock(&mu_);
    forwarder = std::move(forwarder_);
    address_.clear();
    current_.Clear();
  }
  if (forwarder != nullptr) {
    forwarder->Shutdown();
    options_.note("ingress stopped listening");
  }
}

void Ingress::CheckNow() {
  absl::MutexLock lock(&mu_);
  // A round that starts after this call: the next one, or the one after the running one.
  const uint64_t wanted = rounds_done_ + (round_running_ ? 2 : 1);
  wake_ = true;
  auto done = [this, wanted]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return rounds_done_ >= wanted || stopping_;
  };
  mu_.Await(absl::Condition(&done));
}

void Ingress::Round() {
  balancer_->Locate(options_.locate());
  for (const auto& [probe, health] :
       CheckHealth(options_.root, balancer_->Probes(), kHealthTimeout)) {
    balancer_->SetHealth(probe.path, probe.id, health);
  }
  std::shared_ptr<Forwarder> forwarder;
  {
    absl::MutexLock lock(&mu_);
    forwarder = forwarder_;
  }
  // A forwarder being replaced meanwhile is shut down: what it is told is ignored.
  if (forwarder == nullptr) return;
  for (const auto& [name, serving] : balancer_->Serving()) {
    forwarder->health()->SetServingStatus(name, serving);
  }
}

void Ingress::Loop() {
  for (;;) {
    const absl::Duration interval = absl::Milliseconds(balancer_->HealthIntervalMs());
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || wake_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), interval);
      if (stopping_) return;
      wake_ = false;
      round_running_ = true;
    }
    Round();
    absl::MutexLock lock(&mu_);
    round_running_ = false;
    ++rounds_done_;
  }
}

}  // namespace grove
