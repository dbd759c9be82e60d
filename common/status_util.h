// The one place where absl::Status meets gRPC and the wire.
#ifndef GROVE_COMMON_STATUS_UTIL_H_
#define GROVE_COMMON_STATUS_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace grove {

absl::Status FromGrpcStatus(const grpc::Status& status);
grpc::Status ToGrpcStatus(const absl::Status& status);

// Maps a code read off the wire; unknown values become kUnknown.
absl::StatusCode StatusCodeFromWire(int code);

// The payload key under which a remote error records the name of the context it came from.
inline constexpr char kOriginPayload[] = "grove.dev/origin";

// A remote error as the caller sees it: code and message kept, and the context it came from
// named (in the message and in the kOriginPayload payload).
absl::Status RemoteError(absl::StatusCode code, const std::string& message,
                         const std::string& origin);

// The context a status came from, or "" when it carries none.
std::string OriginOf(const absl::Status& status);

// Returns `status` with `prefix` before its message; OK stays OK.
absl::Status Annotate(const absl::Status& status, const std::string& prefix);

}  // namespace grove

#endif  // GROVE_COMMON_STATUS_UTIL_H_
