#include "common/printable.h"

#include <cstdint>

#include "absl/strings/str_format.h"

namespace grove {
namespace {

// The length of the well-formed UTF-8 sequence at the start of `s` (1 to 4), or 0.
size_t Utf8Length(absl::string_view s, uint32_t* code_point) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t lead = byte(0);
  size_t n;
  uint32_t cp, min;
  if (lead >= 0xc2 && lead <= 0xdf) {
    n = 2, cp = lead & 0x1f, min = 0x80;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    n = 3, cp = lead & 0x0f, min = 0x800;
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    n = 4, cp = lead & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (s.size() < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((byte(i) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i) & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  *code_point = cp;
  return n;
}

// The length of the character at the start of `s` when a terminal shows it as it is (printable
// ASCII, or UTF-8 from U+00A0 on), or 0 for a control or a byte that is not UTF-8. `*bytes`
// is set to how many bytes that control takes (a C1 control's whole sequence, else one).
size_t PlainLength(absl::string_view s, size_t* bytes) {
  const uint8_t c = static_cast<uint8_t>(s[0]);
  *bytes = 1;
  if (c >= 0x20 && c < 0x7f) return 1;
  uint32_t code_point = 0;
  const size_t n = c >= 0x80 ? Utf8Length(s, &code_point) : 0;
  if (n > 0 && code_point >= 0xa0) return n;
  if (n > 0) *bytes = n;
  return 0;
}

}  // namespace

size_t Utf8SequenceLength(absl::string_view s) {
  uint32_t code_point;
  return s.empty() ? 0 : Utf8Length(s, &code_point);
}

bool IsUtf8(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    if (static_cast<uint8_t>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = Utf8SequenceLength(text.substr(i));
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string Printable(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t bytes;
    if (const size_t n = PlainLength(text.substr(i), &bytes); n > 0) {
      out.append(text.data() + i, n);
      i += n;
      continue;
    }
    switch (text[i]) {
      case '\t': out += '\t'; ++i; continue;
      case '\n': out += "\\n"; ++i; continue;
      case '\r': out += "\\r"; ++i; continue;
      default: break;
    }
    for (size_t k = 0; k < bytes; ++k) {
      absl::StrAppendFormat(&out, "\\x%02x", static_cast<uint8_t>(text[i + k]));
    }
    i += bytes;
  }
  return out;
}

bool IsPlainText(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    size_t bytes;
    const size_t n = PlainLength(text.substr(i), &bytes);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

}  // namespace grove
