#include "ingress/ingress.h"


#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/message_differencer.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/server_credentials.h"
#include "mesh/mesh.h"
#include "router/context.h"

namespace grove {
namespace {

// The longest a health check may take (less when the interval is shorter).
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

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

bool ValidServiceName(const std::string& name) {
  if (name.empty() || name.front() == '.' || name.back() == '.') return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '.') return false;
  }
  return true;
}

// The credentials the spec asks for, and words for the log saying what they are.
std::shared_ptr<grpc::ServerCredentials> CredentialsFor(const v1::Ingress& spec,
                                                        std::string* how) {
  std::string host;
  int port = 0;
  SplitListen(spec.listen(), &host, &port);
  *how = IsLoopback(host) ? "plaintext, on loopback only"
                          : "PLAINTEXT on a non-loopback address (insecure: true): anyone "
                            "who reaches it can call the services";
  return grpc::InsecureServerCredentials();
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

// Asks context `probe.id` for the health of `service` through the tree: SERVING,
// NOT_SERVING, or what went wrong.
std::string CheckHealth(Router* root, const Balancer::Probe& probe, const std::string& service,
                        absl::Duration timeout, grpc::StatusCode* code) {
  std::shared_ptr<grpc::Channel> channel = ChannelTo(Context(root, probe.id, probe.name));
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::Slice slice(HealthRequest(service));
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::Status status;
  absl::Notification done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                 &response, [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  *code = status.error_code();
  if (!status.ok()) {
    return absl::StrCat("health check failed: ", absl::StatusCodeToString(
                                                     static_cast<absl::StatusCode>(status.error_code())),
                        ": ", status.error_message());
  }
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (response.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  // HealthCheckResponse: field 1, an enum (1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN).
  if (bytes.size() == 2 && bytes[0] == '\x08') {
    switch (bytes[1]) {
      case 1: return "SERVING";
      case 2: return "NOT_SERVING";
      case 3: return "SERVICE_UNKNOWN";
    }
  }
  if (bytes.empty()) return "UNKNOWN";  // Status 0 (the default) is not sent.
  return "health check answered something that is not a HealthCheckResponse";
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
    if (s.max_calls_per_replica() < 0 || s.health_interval_ms() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, " (", s.name(0), "): limits must not be negative"));
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
  if (in.max_streams_per_connection() < 0 || in.max_message_bytes() < 0) {
    return absl::InvalidArgumentError("spec ingress: limits must not be negative");
  }
  return absl::OkStatus();
}

Ingress::Ingress(IngressOptions options) : options_(std::move(options)) {
  subscription_ = options_.root->registry().Subscribe([this](const RegistryEvent& event) {
    if (event.kind == RegistryEvent::kRemoved) {
      balancer_.Lost(event.record.id, event.record.reason.empty() ? "lost" : event.record.reason);
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
  StopListening();
}

absl::Status Ingress::Apply(const v1::Spec& spec) {
  balancer_.SetServices(spec.service());
  {
    absl::MutexLock lock(&mu_);
    if (forwarder_ != nullptr &&
        google::protobuf::util::MessageDifferencer::Equals(current_, spec.ingress())) {
      wake_ = true;
      return absl::OkStatus();
    }
  }
  StopListening();
  if (spec.ingress().listen().empty()) return absl::OkStatus();
  std::string how;
  ForwarderOptions forward;
  forward.listen = spec.ingress().listen();
  forward.credentials = CredentialsFor(spec.ingress(), &how);
  forward.picker = &balancer_;
  if (spec.ingress().has_max_streams_per_connection()) {
    forward.max_streams_per_connection = spec.ingress().max_streams_per_connection();
  }
  forward.max_message_bytes = spec.ingress().max_message_bytes();
  absl::StatusOr<std::unique_ptr<Forwarder>> forwarder = Forwarder::Start(options_.root, forward);
  if (!forwarder.ok()) return forwarder.status();
  std::string host;
  int port = 0;
  SplitListen(spec.ingress().listen(), &host, &port);
  const std::string address =
      absl::StrCat(absl::StrContains(host, ':') ? absl::StrCat("[", host, "]") : host, ":",
                   (*forwarder)->port());
  options_.note(absl::StrCat("ingress listening on ", address, " (", how, ")"));
  absl::MutexLock lock(&mu_);
  current_ = spec.ingress();
  forwarder_ = *std::move(forwarder);
  address_ = address;
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
  absl::MutexLock round(&round_mu_);
  balancer_.Locate(options_.locate());
  const absl::Duration timeout =
      std::min(kHealthTimeout, absl::Milliseconds(balancer_.HealthIntervalMs()));
  for (const Balancer::Probe& probe : balancer_.Probes()) {
    grpc::StatusCode code = grpc::StatusCode::OK;
    std::string health = CheckHealth(options_.root, probe, probe.service, timeout, &code);
    // A program that does not report per service answers for the whole server ("").
    if (code == grpc::StatusCode::NOT_FOUND && !probe.service.empty()) {
      health = CheckHealth(options_.root, probe, "", timeout, &code);
    }
    balancer_.SetHealth(probe.path, probe.id, health);
  }
  std::shared_ptr<Forwarder> forwarder;
  {
    absl::MutexLock lock(&mu_);
    forwarder = forwarder_;
  }
  // A forwarder being replaced meanwhile is shut down: what it is told is ignored.
  if (forwarder == nullptr) return;
  for (const auto& [name, serving] : balancer_.Serving()) {
    forwarder->health()->SetServingStatus(name, serving);
  }
}

void Ingress::Loop() {
  for (;;) {
    const absl::Duration interval = absl::Milliseconds(balancer_.HealthIntervalMs());
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || wake_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), interval);
      if (stopping_) return;
      wake_ = false;
    }
    CheckNow();
  }
}

}  // namespace grove
