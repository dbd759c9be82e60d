// Paths and hops: how a user names where a context is started.
//
// A path is a chain of hops separated by '/'; a hop is METHOD[:TARGET][,key=value...], e.g.
// "local", "local,name=worker1", "ssh:web1/sudo:root". A '/' inside an option value (a file
// name) does not split the path: a new hop starts only where a known method follows.
#ifndef GROVE_LINK_HOP_H_
#define GROVE_LINK_HOP_H_

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grove {

// One hop. Value type.
struct Hop {
  std::string method;
  std::string target;
  std::vector<std::pair<std::string, std::string>> options;

  // The value of the last option `key`, or "".
  std::string Get(absl::string_view key) const;
  bool Has(absl::string_view key) const;
  // The hop as it would be written.
  std::string ToString() const;
  // The same with secret values (see IsSecretOption) replaced by "***": for messages and
  // logs.
  std::string DebugString() const;
};

// Methods a hop may name.
bool IsKnownMethod(absl::string_view method);

// Whether the value of option `key` is a secret, never shown: "password" (and any key that
// contains "password" in any case, so that a misspelt one is hidden too), but not
// "password_env", which names a variable.
bool IsSecretOption(absl::string_view key);

// INVALID_ARGUMENT naming the hop and what is wrong with it; the text is quoted with secret
// values replaced by "***".
absl::StatusOr<Hop> ParseHop(absl::string_view text);
absl::StatusOr<std::vector<Hop>> ParsePath(absl::string_view text);
// The first `count` of `hops` written as a path: each hop's ToString (or, `hide_secrets`, its
// DebugString), joined by "/".
std::string JoinPath(const std::vector<Hop>& hops, size_t count, bool hide_secrets = false);
// The canonical form of a path (JoinPath of its hops): two spellings of one path have one
// canonical form. INVALID_ARGUMENT as ParsePath.
absl::StatusOr<std::string> CanonicalPath(absl::string_view text);
// A path as it may be shown (each hop's DebugString: secret values "***"). INVALID_ARGUMENT
// as ParsePath.
absl::StatusOr<std::string> DisplayPath(absl::string_view text);

}  // namespace grove

#endif  // GROVE_LINK_HOP_H_
