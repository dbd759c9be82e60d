// Fuzzes paths and hops (link/hop.h), which come from the command line, from programs
// (Context::Spawn) and, in the grove.spawn built-in, from an ancestor over a link.
//
// Besides not crashing, it checks what callers rely on:
//  - every parsed hop has a known method and a valid name (non-empty, no '/') when it has one;
//  - ParseHop(hop.ToString()) gives the same hop back;
//  - DebugString() never shows a password, and differs from ToString() only there;
//  - no error message depends on a password: with every password value replaced, parsing
//    fails (or not) with the very same message;
//  - ParsePath of the hops joined by '/' gives the same path back, when no value holds a '/'
//    (a '/' inside a value may start a new hop; that is how paths are written, see hop.h).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "glog/logging.h"
#include "link/hop.h"

namespace grove {
namespace {

bool SameHop(const Hop& a, const Hop& b) {
  return a.method == b.method && a.target == b.target && a.options == b.options;
}

void CheckHop(const Hop& hop) {
  CHECK(IsKnownMethod(hop.method)) << "parsed an unknown method: " << hop.DebugString();
  if (hop.Has("name")) {
    std::string name = hop.Get("name");
    CHECK(!name.empty() && !absl::StrContains(name, '/'))
        << "parsed a bad name: " << hop.DebugString();
  }
  std::string text = hop.ToString();
  absl::StatusOr<Hop> again = ParseHop(text);
  CHECK(again.ok()) << "ParseHop(ToString()) failed for '" << hop.DebugString()
                    << "': " << again.status();
  CHECK(SameHop(*again, hop)) << "ParseHop(ToString()) changed '" << hop.DebugString()
                              << "' into '" << again->DebugString() << "'";

  // DebugString: ToString with every secret value replaced by "***".
  Hop masked = hop;
  for (auto& [key, value] : masked.options) {
    if (IsSecretOption(key)) value = "***";
  }
  CHECK_EQ(hop.DebugString(), masked.ToString());
}

void CheckPath(const std::vector<Hop>& hops) {
  CHECK(!hops.empty());
  std::vector<std::string> texts;
  bool slash_in_value = false;
  for (const Hop& hop : hops) {
    CheckHop(hop);
    slash_in_value |= absl::StrContains(hop.target, '/');
    for (const auto& [key, value] : hop.options) slash_in_value |= absl::StrContains(value, '/');
    texts.push_back(hop.ToString());
  }
  if (slash_in_value) return;
  std::string joined = absl::StrJoin(texts, "/");
  absl::StatusOr<std::vector<Hop>> again = ParsePath(joined);
  CHECK(again.ok()) << "ParsePath of its own hops failed: " << again.status();
  CHECK_EQ(again->size(), hops.size()) << "ParsePath split '" << joined << "' differently";
  for (size_t i = 0; i < hops.size(); ++i) CHECK(SameHop((*again)[i], hops[i]));
}

// `text` with the value of every secret option replaced by "x": each piece between ',' or
// '/' that follows a ',' and reads key=value with a secret key. (A value holding a '/' keeps
// what follows it; the parse must not depend on that part either.)
std::string WithOtherSecrets(absl::string_view text) {
  std::string out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find_first_of(",/", start);
    if (end == absl::string_view::npos) end = text.size();
    absl::string_view piece = text.substr(start, end - start);
    size_t eq = piece.find('=');
    if (start > 0 && text[start - 1] == ',' && eq != absl::string_view::npos &&
        IsSecretOption(piece.substr(0, eq))) {
      absl::StrAppend(&out, piece.substr(0, eq + 1), "x");
    } else {
      absl::StrAppend(&out, piece);
    }
    if (end == text.size()) break;
    out.push_back(text[end]);
    start = end + 1;
  }
  return out;
}

template <typename T>
void CheckSameOutcome(const absl::StatusOr<T>& a, const absl::StatusOr<T>& b,
                      absl::string_view what) {
  CHECK_EQ(a.ok(), b.ok()) << what << ": a password value decided whether it parses";
  CHECK_EQ(a.status().message(), b.status().message())
      << what << ": an error message depends on a password value";
}

}  // namespace
}  // namespace grove

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string other = grove::WithOtherSecrets(text);
  absl::StatusOr<grove::Hop> hop = grove::ParseHop(text);
  if (hop.ok()) grove::CheckHop(*hop);
  grove::CheckSameOutcome(hop, grove::ParseHop(other), "ParseHop");
  absl::StatusOr<std::vector<grove::Hop>> path = grove::ParsePath(text);
  if (path.ok()) grove::CheckPath(*path);
  grove::CheckSameOutcome(path, grove::ParsePath(other), "ParsePath");
  return 0;
}
