// ControlService: grove.v1.Control (proto/control.proto), served by a resident master.
//
// Each RPC runs on a thread of gRPC's synchronous server. Streaming RPCs (Run, Logs,
// WatchContexts) write from that thread only: what the tree produces meanwhile is queued by
// the router's threads and drained here, so a slow client never holds up a link. A client that
// goes away cancels what it started (its command is killed with its process group).
#ifndef GROVE_RESIDENT_CONTROL_SERVICE_H_
#define GROVE_RESIDENT_CONTROL_SERVICE_H_

#include <functional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/time/time.h"
#include "proto/control.grpc.pb.h"
#include "resident/kept_paths.h"
#include "resident/log_book.h"
#include "resident/supervisor.h"
#include "router/router.h"

namespace grove {

// The control API's version (VersionReply.api_version).
inline constexpr int kControlApiVersion = 1;

// Thread-safe. Owns nothing; everything it is given must outlive it.
class ControlService final : public v1::Control::Service {
 public:
  struct Deps {
    Router* root;
    KeptPaths* kept;
    Supervisor* supervisor;
    // The spec's services and their ingress.
    Ingress* ingress;
    LogBook* log;
    // What Version answers (api_version included).
    v1::VersionReply version;
    absl::Duration idle_timeout;
    // Called once a Shutdown has been answered.
    std::function<void()> shutdown;
  };
  explicit ControlService(Deps deps) : deps_(std::move(deps)) {}

  grpc::Status Version(grpc::ServerContext*, const v1::VersionRequest*,
                       v1::VersionReply* reply) override;
  grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest*,
                      v1::StatusReply* reply) override;
  grpc::Status Spawn(grpc::ServerContext*, const v1::SpawnPathRequest* request,
                     v1::ContextStatus* reply) override;
  grpc::Status Stop(grpc::ServerContext*, const v1::StopPathRequest* request,
                    v1::StopPathReply* reply) override;
  grpc::Status ListContexts(grpc::ServerContext*, const v1::ListContextsRequest* request,
                            v1::ListContextsReply* reply) override;
  grpc::Status WatchContexts(grpc::ServerContext* context, const v1::WatchContextsRequest*,
                             grpc::ServerWriter<v1::ContextEvent>* writer) override;
  grpc::Status Call(grpc::ServerContext* context, const v1::ControlCallRequest* request,
                    v1::ControlCallReply* reply) override;
  grpc::Status Run(grpc::ServerContext* context, const v1::ControlRunRequest* request,
                   grpc::ServerWriter<v1::ControlRunEvent>* writer) override;
  grpc::Status Push(grpc::ServerContext* context, const v1::TransferRequest* request,
                    grpc::ServerWriter<v1::TransferEvent>* writer) override {
    return Transfer(false, context, request, writer);
  }
  grpc::Status Pull(grpc::ServerContext* context, const v1::TransferRequest* request,
                    grpc::ServerWriter<v1::TransferEvent>* writer) override {
    return Transfer(true, context, request, writer);
  }
  grpc::Status Forward(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<v1::ForwardResponse, v1::ForwardRequest>* stream) override;
  grpc::Status Logs(grpc::ServerContext* context, const v1::LogsRequest* request,
                    grpc::ServerWriter<v1::LogLine>* writer) override;
  grpc::Status Reload(grpc::ServerContext*, const v1::ReloadRequest* request,
                      v1::ReloadReply* reply) override;
  grpc::Status Shutdown(grpc::ServerContext*, const v1::ShutdownRequest*,
                        v1::ShutdownReply*) override;

 private:
  // Push and Pull: the files machinery (files/files.h) run by the master, with progress.
  grpc::Status Transfer(bool pull, grpc::ServerContext* context,
                        const v1::TransferRequest* request,
                        grpc::ServerWriter<v1::TransferEvent>* writer);
  // What the kept paths and the supervisor know, by context id: taken once per answer.
  struct Known {
    absl::flat_hash_map<uint64_t, KeptPaths::Entry> kept;
    absl::flat_hash_map<uint64_t, Supervisor::State> supervised;
  };
  Known Snapshot() const;
  // A context's status, with what `known` says of it.
  v1::ContextStatus Describe(const ContextRecord& record, const Known& known) const;

  const Deps deps_;
};

}  // namespace grove

#endif  // GROVE_RESIDENT_CONTROL_SERVICE_H_
