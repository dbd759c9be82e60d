#include "mesh/forwarder.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "mesh/mesh.h"
#include "mesh/proxy.h"

namespace grove {

struct Forwarder::Impl {
  std::shared_ptr<mesh_internal::ProxyServer> proxy;
  absl::Mutex mu;
  bool shut_down ABSL_GUARDED_BY(mu) = false;
};

absl::StatusOr<std::unique_ptr<Forwarder>> Forwarder::Start(Router* router,
                                                            ForwarderOptions options) {
  if (options.picker == nullptr) {
    return absl::InvalidArgumentError("a forwarder needs a CallPicker");
  }
  if (options.credentials == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("no credentials for the forwarder at ", options.listen));
  }
  int port = 0;
  auto impl = std::make_unique<Impl>();
  impl->proxy = std::make_shared<mesh_internal::ProxyServer>(router, options, &port);
  if (impl->proxy->server() == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen at '", options.listen,
        "' (the address is taken, or not one of this host's, or not host:port)"));
  }
  return std::unique_ptr<Forwarder>(new Forwarder(std::move(impl), port));
}

Forwarder::Forwarder(std::unique_ptr<Impl> impl, int port) : impl_(std::move(impl)), port_(port) {}

Forwarder::~Forwarder() { Shutdown(); }

grpc::HealthCheckServiceInterface* Forwarder::health() {
  return impl_->proxy->server()->GetHealthCheckService();
}

void Forwarder::Shutdown() {
  {
    absl::MutexLock lock(&impl_->mu);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  // Calls in flight are cancelled at once; their grove calls end with them.
  impl_->proxy->Shutdown(absl::Now());
  impl_->proxy->Detach();
}

}  // namespace grove
