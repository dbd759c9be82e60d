#include "link/hop.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/printable.h"

namespace grove {
namespace {

constexpr absl::string_view kMethods[] = {"local", "fork", "ssh", "sudo", "su", "command"};

// True when `segment` begins a hop: a known method followed by ':', ',' or the end.
bool StartsHop(absl::string_view segment) {
  for (absl::string_view m : kMethods) {
    if (absl::StartsWith(segment, m) &&
        (segment.size() == m.size() || segment[m.size()] == ':' || segment[m.size()] == ',')) {
      return true;
    }
  }
  return false;
}

// `text` split where ParsePath splits it: at each '/' that a known method follows, unless
// that method stands alone and more of the path follows it before the next hop: a hop cannot
// be "local/etc" (a method is followed by ':', ',' or the end of its hop), so "/usr/local/etc"
// inside a value stays in it.
std::vector<std::string> PathSegments(absl::string_view text) {
  std::vector<absl::string_view> parts = absl::StrSplit(text, '/');
  std::vector<std::string> segments;
  for (size_t i = 0; i < parts.size(); ++i) {
    const bool bare_method = IsKnownMethod(parts[i]);
    const bool continued = i + 1 < parts.size() && !StartsHop(parts[i + 1]);
    if (segments.empty() || (StartsHop(parts[i]) && !(bare_method && continued))) {
      segments.emplace_back(parts[i]);
    } else {
      absl::StrAppend(&segments.back(), "/", parts[i]);
    }
  }
  return segments;
}

// The escapes an option value may hold: "%2F" for '/', "%2C" for ',', "%25" for '%' (either
// case). Anything else is kept as written.
std::string UnescapeValue(absl::string_view value) {
  std::string out;
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] == '%' && i + 2 < value.size()) {
      const std::string code = absl::AsciiStrToUpper(value.substr(i + 1, 2));
      const char c = code == "2F" ? '/' : code == "2C" ? ',' : code == "25" ? '%' : 0;
      if (c != 0) {
        out.push_back(c);
        i += 2;
        continue;
      }
    }
    out.push_back(value[i]);
  }
  return out;
}

// Whether PathSegments would start a hop at `rest`, the text after a '/' in a value (which
// the path goes on after, with a hop).
bool SplitsBefore(absl::string_view rest) {
  const size_t slash = rest.find('/');
  const absl::string_view next = rest.substr(0, slash);
  if (!StartsHop(next)) return false;
  if (!IsKnownMethod(next) || slash == absl::string_view::npos) return true;
  // A method alone, with more of the value after it: kept in the value unless a hop follows.
  const absl::string_view after = rest.substr(slash + 1);
  return StartsHop(after.substr(0, after.find('/')));
}

// `value` written so that ParseHop and ParsePath give it back: ',' always escaped; '%' where
// it would read as an escape; '/' where a hop would start after it.
std::string EscapeValue(absl::string_view value) {
  std::string out;
  for (size_t i = 0; i < value.size(); ++i) {
    const char c = value[i];
    const absl::string_view rest = value.substr(i + 1);
    if (c == ',') {
      out += "%2C";
    } else if (c == '%' && value.size() - i >= 3 && UnescapeValue(value.substr(i, 3)).size() == 1) {
      out += "%25";
    } else if (c == '/' && SplitsBefore(rest)) {
      out += "%2F";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// Whether `option` ("key=value") has a secret value.
bool HasSecret(absl::string_view option) {
  size_t eq = option.find('=');
  return eq != absl::string_view::npos && IsSecretOption(option.substr(0, eq));
}

// `option` with a secret value replaced by "***", for messages (as Printable text).
std::string RedactOption(absl::string_view option) {
  if (!HasSecret(option)) return Printable(option);
  return absl::StrCat(option.substr(0, option.find('=')), "=***");
}

// The text of one hop with every secret value replaced by "***", for messages (as Printable
// text).
std::string RedactHop(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, ',');
  for (size_t i = 1; i < parts.size(); ++i) parts[i] = RedactOption(parts[i]);
  return Printable(absl::StrJoin(parts, ","));
}

// The same for a path.
std::string RedactPath(absl::string_view text) {
  std::vector<std::string> segments = PathSegments(text);
  for (std::string& segment : segments) segment = RedactHop(segment);
  return absl::StrJoin(segments, "/");
}

bool ValidKey(absl::string_view key) {
  if (key.empty()) return false;
  for (char c : key) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace

bool IsSecretOption(absl::string_view key) {
  return key != "password_env" && absl::StrContains(absl::AsciiStrToLower(key), "password");
}

bool IsKnownMethod(absl::string_view method) {
  for (absl::string_view m : kMethods) {
    if (m == method) return true;
  }
  return false;
}

std::string Hop::Get(absl::string_view key) const {
  for (auto it = options.rbegin(); it != options.rend(); ++it) {
    if (it->first == key) return it->second;
  }
  return "";
}

bool Hop::Has(absl::string_view key) const {
  for (const auto& kv : options) {
    if (kv.first == key) return true;
  }
  return false;
}

std::string Hop::ToString() const {
  std::string out = method;
  if (!target.empty()) absl::StrAppend(&out, ":", target);
  for (const auto& [k, v] : options) absl::StrAppend(&out, ",", k, "=", EscapeValue(v));
  return out;
}

std::string Hop::DebugString() const {
  std::string out = method;
  if (!target.empty()) absl::StrAppend(&out, ":", target);
  for (const auto& [k, v] : options) {
    absl::StrAppend(&out, ",", k, "=", IsSecretOption(k) ? "***" : EscapeValue(v));
  }
  return out;
}

absl::StatusOr<Hop> ParseHop(absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("empty hop in path");
  std::vector<absl::string_view> parts = absl::StrSplit(text, ',');
  Hop hop;
  absl::string_view head = parts[0];
  size_t colon = head.find(':');
  hop.method = std::string(head.substr(0, colon));
  if (colon != absl::string_view::npos) {
    hop.target = std::string(head.substr(colon + 1));
    if (hop.target.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("hop '", RedactHop(text),
                                                     "': empty target after '",
                                                     Printable(hop.method), ":'"));
    }
  }
  if (!IsKnownMethod(hop.method)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hop '", RedactHop(text), "': unknown method '", Printable(hop.method),
        "' (known: local, fork, ssh, sudo, su, command)"));
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    size_t eq = parts[i].find('=');
    absl::string_view key = parts[i].substr(0, eq);
    if (eq == absl::string_view::npos || !ValidKey(key)) {
      // Right after a secret, this may be the rest of a password that holds a ','.
      bool after_secret = i > 1 && HasSecret(parts[i - 1]);
      return absl::InvalidArgumentError(absl::StrCat(
          "hop '", RedactHop(text), "': ",
          after_secret ? "the option after a password is not key=value (write a ',' in a "
                         "value as %2C, or give the password with password_env)"
                       : absl::StrCat("option '", RedactOption(parts[i]), "' is not key=value")));
    }
    hop.options.emplace_back(std::string(key), UnescapeValue(parts[i].substr(eq + 1)));
  }
  std::string name = hop.Get("name");
  if (hop.Has("name") &&
      (name.empty() || absl::StrContains(name, '/') || !IsPlainText(name))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hop '", RedactHop(text),
        "': a name must be non-empty UTF-8 with no '/' and no control characters"));
  }
  return hop;
}

absl::StatusOr<std::vector<Hop>> ParsePath(absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("empty path");
  std::vector<Hop> hops;
  for (const std::string& segment : PathSegments(text)) {
    absl::StatusOr<Hop> hop = ParseHop(segment);
    if (!hop.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("path '", RedactPath(text), "': ", hop.status().message()));
    }
    hops.push_back(*std::move(hop));
  }
  return hops;
}

std::string JoinPath(const std::vector<Hop>& hops, size_t count, bool hide_secrets) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < count && i < hops.size(); ++i) {
    parts.push_back(hide_secrets ? hops[i].DebugString() : hops[i].ToString());
  }
  return absl::StrJoin(parts, "/");
}

absl::StatusOr<std::string> CanonicalPath(absl::string_view text) {
  absl::StatusOr<std::vector<Hop>> hops = ParsePath(text);
  if (!hops.ok()) return hops.status();
  return JoinPath(*hops, hops->size());
}

absl::StatusOr<std::string> DisplayPath(absl::string_view text) {
  absl::StatusOr<std::vector<Hop>> hops = ParsePath(text);
  if (!hops.ok()) return hops.status();
  return JoinPath(*hops, hops->size(), /*hide_secrets=*/true);
}

}  // namespace grove
