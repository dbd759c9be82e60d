// Server plugins: gRPC's process-wide plugin registrations held back from grove's own
// servers (NoServerPluginsScope, WithoutServerPlugins in mesh.h). The link routes
// ServerBuilder's constructors and InternalAddPluginFactory here (mesh/BUILD.bazel, --wrap).

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_util.h"
#include "glog/logging.h"
#include "google/protobuf/descriptor.h"
#include "grpcpp/ext/health_check_service_server_builder_option.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/impl/server_builder_option.h"
#include "grpcpp/impl/server_builder_plugin.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/channel_arguments.h"
#include "grpcpp/support/client_interceptor.h"
#include "grpcpp/support/interceptor.h"
#include "proto/builtins.pb.h"
#include "proto/mesh.pb.h"
#include "transport/grpc_link.h"

#include "mesh/mesh.h"

namespace grove {
namespace {

// Drops every plugin (server reflection, registered process-wide): a server with it serves
// only what it registers itself.
class NoPluginsOption : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->clear();
  }
};

}  // namespace

std::unique_ptr<grpc::ServerBuilderOption> WithoutServerPlugins() {
  return std::make_unique<NoPluginsOption>();
}

// ---- Plugins registered process-wide, passed on to gRPC by the first ServerBuilder made
// outside a NoServerPluginsScope (see mesh.h).

namespace {

using PluginFactory = std::unique_ptr<grpc::ServerBuilderPlugin> (*)();
ABSL_CONST_INIT absl::Mutex plugins_mu(absl::kConstInit);
// Registered, not passed on yet (null: none).
std::vector<PluginFactory>* waiting_plugins ABSL_GUARDED_BY(plugins_mu) = nullptr;
bool plugins_passed_on ABSL_GUARDED_BY(plugins_mu) = false;
thread_local int no_plugins_scopes = 0;

}  // namespace

NoServerPluginsScope::NoServerPluginsScope() { ++no_plugins_scopes; }
NoServerPluginsScope::~NoServerPluginsScope() { --no_plugins_scopes; }

}  // namespace grove

// What the link's --wrap routes to (the real ones are __real_*): gRPC 1.51's
// grpc::ServerBuilder::InternalAddPluginFactory and its constructors (complete, base).
extern "C" {
void __real__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
    grove::PluginFactory factory);
void __real__ZN4grpc13ServerBuilderC1Ev(grpc::ServerBuilder* self);
void __real__ZN4grpc13ServerBuilderC2Ev(grpc::ServerBuilder* self);

void __wrap__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
    grove::PluginFactory factory) {
  absl::MutexLock lock(&grove::plugins_mu);
  if (grove::plugins_passed_on) {
    __real__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
        factory);
    return;
  }
  if (grove::waiting_plugins == nullptr) {
    grove::waiting_plugins = new std::vector<grove::PluginFactory>();
  }
  grove::waiting_plugins->push_back(factory);
}
}  // extern "C"

namespace grove {
namespace {

// Before a ServerBuilder is made outside a NoServerPluginsScope: the waiting plugins reach
// gRPC, once.
void PassOnPluginsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(plugins_mu) {
  if (plugins_passed_on) return;
  plugins_passed_on = true;
  if (waiting_plugins == nullptr) return;
  for (PluginFactory factory : *waiting_plugins) {
    __real__ZN4grpc13ServerBuilder24InternalAddPluginFactoryEPFSt10unique_ptrINS_19ServerBuilderPluginESt14default_deleteIS2_EEvE(
        factory);
  }
  delete waiting_plugins;
  waiting_plugins = nullptr;
}

// Makes a ServerBuilder with `construct` (a real constructor). The constructor creates every
// plugin on gRPC's list. In a scope, before the plugins are passed on, that list is empty (no
// plugin factory runs): it is made under plugins_mu, so that no pass-on changes the list
// meanwhile. Otherwise the plugins are passed on first, and the list changes no more (gRPC
// wants registrations before any ServerBuilder), so the constructor, which runs the plugins'
// factories, runs without the lock.
void MakeServerBuilder(grpc::ServerBuilder* self, void (*construct)(grpc::ServerBuilder*)) {
  {
    absl::MutexLock lock(&plugins_mu);
    if (no_plugins_scopes > 0 && !plugins_passed_on) {
      construct(self);
      return;
    }
    PassOnPluginsLocked();
  }
  construct(self);
}

}  // namespace
}  // namespace grove

extern "C" {
void __wrap__ZN4grpc13ServerBuilderC1Ev(grpc::ServerBuilder* self) {
  grove::MakeServerBuilder(self, &__real__ZN4grpc13ServerBuilderC1Ev);
}
void __wrap__ZN4grpc13ServerBuilderC2Ev(grpc::ServerBuilder* self) {
  grove::MakeServerBuilder(self, &__real__ZN4grpc13ServerBuilderC2Ev);
}
}  // extern "C"

