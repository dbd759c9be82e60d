#include "router/hop.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

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

bool ValidKey(absl::string_view key) {
  if (key.empty()) return false;
  for (char c : key) {
    if (!absl::ascii_isalnum(c) && c != '_' && c != '-') return false;
  }
  return true;
}

}  // namespace

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
  for (const auto& [k, v] : options) absl::StrAppend(&out, ",", k, "=", v);
  return out;
}

std::string Hop::DebugString() const {
  std::string out = method;
  if (!target.empty()) absl::StrAppend(&out, ":", target);
  for (const auto& [k, v] : options) {
    absl::StrAppend(&out, ",", k, "=", k == "password" ? "***" : v);
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
      return absl::InvalidArgumentError(
          absl::StrCat("hop '", text, "': empty target after '", hop.method, ":'"));
    }
  }
  if (!IsKnownMethod(hop.method)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "hop '", text, "': unknown method '", hop.method,
        "' (known: local, fork, ssh, sudo, su, command)"));
  }
  for (size_t i = 1; i < parts.size(); ++i) {
    size_t eq = parts[i].find('=');
    absl::string_view key = parts[i].substr(0, eq);
    if (eq == absl::string_view::npos || !ValidKey(key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("hop '", text, "': option '", parts[i], "' is not key=value"));
    }
    hop.options.emplace_back(std::string(key), std::string(parts[i].substr(eq + 1)));
  }
  std::string name = hop.Get("name");
  if (hop.Has("name") && (name.empty() || absl::StrContains(name, '/'))) {
    return absl::InvalidArgumentError(
        absl::StrCat("hop '", text, "': a name must be non-empty and contain no '/'"));
  }
  return hop;
}

absl::StatusOr<std::vector<Hop>> ParsePath(absl::string_view text) {
  if (text.empty()) return absl::InvalidArgumentError("empty path");
  std::vector<std::string> segments;
  for (absl::string_view segment : absl::StrSplit(text, '/')) {
    if (segments.empty() || StartsHop(segment)) {
      segments.emplace_back(segment);
    } else {
      absl::StrAppend(&segments.back(), "/", segment);
    }
  }
  std::vector<Hop> hops;
  for (const std::string& segment : segments) {
    absl::StatusOr<Hop> hop = ParseHop(segment);
    if (!hop.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("path '", text, "': ", hop.status().message()));
    }
    hops.push_back(*std::move(hop));
  }
  return hops;
}

}  // namespace grove
