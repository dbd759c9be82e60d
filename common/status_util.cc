#include "common/status_util.h"

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"

namespace grove {

absl::Status FromGrpcStatus(const grpc::Status& status) {
  return absl::Status(StatusCodeFromWire(static_cast<int>(status.error_code())),
                      status.error_message());
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()),
                      std::string(status.message()));
}

absl::StatusCode StatusCodeFromWire(int code) {
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::StatusCode::kUnknown;
  }
  return static_cast<absl::StatusCode>(code);
}

absl::Status RemoteError(absl::StatusCode code, const std::string& message,
                         const std::string& origin) {
  if (code == absl::StatusCode::kOk) code = absl::StatusCode::kUnknown;
  if (origin.empty()) return absl::Status(code, message);
  absl::Status status(code, absl::StrCat(message, " [in context ", origin, "]"));
  status.SetPayload(kOriginPayload, absl::Cord(origin));
  return status;
}

std::string OriginOf(const absl::Status& status) {
  auto payload = status.GetPayload(kOriginPayload);
  return payload ? std::string(*payload) : std::string();
}

absl::Status Annotate(const absl::Status& status, const std::string& prefix) {
  if (status.ok()) return status;
  absl::Status out(status.code(), absl::StrCat(prefix, ": ", status.message()));
  status.ForEachPayload(
      [&out](absl::string_view key, const absl::Cord& value) { out.SetPayload(key, value); });
  return out;
}

}  // namespace grove
