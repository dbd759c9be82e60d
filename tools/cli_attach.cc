#include "tools/cli_attach.h"

#include "common/printable.h"
#include "tools/cli_signals.h"

namespace grove::cli {

CliCall::CliCall(absl::Duration timeout) {
  if (timeout != absl::InfiniteDuration()) {
    context_.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  callback_ = CliCancel().AddCallback([this] { context_.TryCancel(); });
}

CliCall::~CliCall() { CliCancel().RemoveCallback(callback_); }

std::string Message(const grpc::Status& status) {
  return Printable(status.error_message());
}

int ExitFor(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return kExitTimeout;
    case grpc::StatusCode::UNAVAILABLE:
      return kExitUnreachable;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return kExitUsage;
    default:
      return kExitFailed;
  }
}

// The resident master at `socket`, its control API version checked (grove::Attach).
absl::StatusOr<std::unique_ptr<AttachedTree>> Open(const std::string& socket,
                                                   v1::VersionReply* version) {
  absl::StatusOr<std::unique_ptr<AttachedTree>> tree = Attach(socket);
  if (tree.ok()) *version = (*tree)->version();
  return tree;
}

}  // namespace grove::cli
