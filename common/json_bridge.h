// JSON for `grove call`: protobuf's JSON mapping, with what people expect of a command line
// where it differs. A `bytes` field is given and printed as text (protobuf's mapping uses
// base64): the argv of grove.run, file paths, a command's output. Bytes that are not UTF-8 are
// printed as base64 in an object {"base64": "..."}, and accepted so too. 64-bit integers are
// printed as JSON numbers while a double holds them exactly (protobuf prints them as strings).
#ifndef GROVE_COMMON_JSON_BRIDGE_H_
#define GROVE_COMMON_JSON_BRIDGE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message.h"

namespace grove {

// Parses `json` into `out` (of any message type). INVALID_ARGUMENT naming what is wrong.
absl::Status JsonToMessage(const std::string& json, google::protobuf::Message* out);

// `message` as one line of JSON, every field printed (defaults included), proto field names.
absl::StatusOr<std::string> MessageToJson(const google::protobuf::Message& message);

}  // namespace grove

#endif  // GROVE_COMMON_JSON_BRIDGE_H_
