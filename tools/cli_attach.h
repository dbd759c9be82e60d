// The grove CLI as a client of a resident master (tools/resident_cli.cc, attached_cli.cc,
// files_cli.cc): opening its socket, calls cancelled by Ctrl-C, statuses as exit codes.
#ifndef GROVE_TOOLS_CLI_ATTACH_H_
#define GROVE_TOOLS_CLI_ATTACH_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "proto/control.grpc.pb.h"
#include "resident/attach.h"

namespace grove::cli {

using Stub = v1::Control::Stub;

// A client context for one call to the resident master, cancelled with the CLI (Ctrl-C,
// SIGTERM: CliCancel). Not copyable; one call.
class CliCall {
 public:
  explicit CliCall(absl::Duration timeout = absl::InfiniteDuration());
  ~CliCall();
  CliCall(const CliCall&) = delete;
  CliCall& operator=(const CliCall&) = delete;
  grpc::ClientContext* get() { return &context_; }

 private:
  grpc::ClientContext context_;
  uint64_t callback_;
};

// A status's message from the master, made Printable.
std::string Message(const grpc::Status& status);
// The CLI's exit status for a failed call (docs/cli.md, "Exit status").
int ExitFor(grpc::StatusCode code);
// The resident master at `socket`, its control API version checked (grove::Attach).
absl::StatusOr<std::unique_ptr<AttachedTree>> Open(const std::string& socket,
                                                   v1::VersionReply* version);

}  // namespace grove::cli

#endif  // GROVE_TOOLS_CLI_ATTACH_H_
