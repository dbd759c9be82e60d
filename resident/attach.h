// grove::Attach: a resident master's tree from another process, as a C++ client of its
// control API (proto/control.proto). Contexts are named by path, started if missing and kept
// by the master; calls go to the resident program's registered functions.
//
//   absl::StatusOr<std::unique_ptr<grove::AttachedTree>> tree = grove::Attach();
//   absl::StatusOr<EchoReply> reply =
//       (*tree)->Call<EchoReply>("ssh:web1", "echo", request);
//   absl::StatusOr<grove::v1::RunReply> ran = (*tree)->Run("ssh:web1", run,
//       [](int stream, const std::string& data) { fwrite(data.data(), 1, data.size(), stdout); });
#ifndef GROVE_RESIDENT_ATTACH_H_
#define GROVE_RESIDENT_ATTACH_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "proto/builtins.pb.h"
#include "proto/control.grpc.pb.h"
#include "router/context.h"
#include "router/router.h"

namespace grove {

// Thread-safe: any number of calls at once, from any threads. Owns its channel to the master.
class AttachedTree {
 public:
  explicit AttachedTree(std::shared_ptr<grpc::Channel> channel, v1::VersionReply version);

  // Who answers (checked by Attach: the same api_version as this build's).
  const v1::VersionReply& version() const { return version_; }
  // The control API itself, for what this class does not wrap (Logs, Reload, Push, ...).
  v1::Control::Stub& stub() { return *stub_; }

  // Starts what is missing of `path`; its last context.
  absl::StatusOr<v1::ContextStatus> Spawn(const std::string& path,
                                          absl::Duration connect_timeout = absl::Seconds(30));
  // Stops the context kept at `path` (or named so) and its subtree.
  absl::Status Stop(const std::string& path);
  // The registry: the master first, then every context by id.
  absl::StatusOr<std::vector<v1::ContextStatus>> List(bool include_gone = false);

  // Calls `function` in the context at `path` with a serialized argument of its type; the
  // serialized result. Errors keep their code and name the path.
  absl::StatusOr<std::string> CallRaw(const std::string& path, const std::string& function,
                                      std::string argument,
                                      absl::Duration timeout = absl::InfiniteDuration());
  template <typename Out, typename In>
  absl::StatusOr<Out> Call(const std::string& path, const std::string& function, const In& in,
                           absl::Duration timeout = absl::InfiniteDuration()) {
    return Context::Decode<Out>(function,
                                CallRaw(path, function, in.SerializeAsString(), timeout));
  }

  // Runs a command in the context at `path`, as Context::Run does: its output goes to
  // `options.on_output` (1: stdout, 2: stderr) as it comes, or, without it, into the reply;
  // `options` also sets the deadline and a CancelSource. `started`, when set, receives the
  // context the command runs in before any output.
  absl::StatusOr<v1::RunReply> Run(const std::string& path, const v1::RunRequest& command,
                                   const CallOptions& options = {},
                                   v1::ContextStatus* started = nullptr,
                                   absl::Duration connect_timeout = absl::Seconds(30));

 private:
  const v1::VersionReply version_;
  const std::unique_ptr<v1::Control::Stub> stub_;
};

// Connects to the resident master at `socket` (default: DefaultControlSocket()) and checks its
// control API version. UNAVAILABLE when none answers there (saying whether the socket is
// missing or stale); FAILED_PRECONDITION naming both versions when it speaks another.
absl::StatusOr<std::unique_ptr<AttachedTree>> Attach(const std::string& socket = "");

}  // namespace grove

#endif  // GROVE_RESIDENT_ATTACH_H_
