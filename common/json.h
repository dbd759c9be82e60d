// JSON text for the CLI's --json output and the benchmarks' figures.
#ifndef GROVE_COMMON_JSON_H_
#define GROVE_COMMON_JSON_H_

#include <string>

#include "absl/strings/string_view.h"

namespace grove {

// `text` as a JSON string, quotes included. Valid UTF-8 is kept; '"', '\' and controls are
// escaped; a byte that is not part of valid UTF-8 (bytes are not text on Linux: file names,
// a command's output) becomes the four characters \xNN, so the result is always valid JSON.
std::string JsonQuote(absl::string_view text);

}  // namespace grove

#endif  // GROVE_COMMON_JSON_H_
