// Text from another context, made safe to show on a terminal.
//
// Names, log lines and reasons come from other processes, some of which may be hostile: a
// context's own name, what its programs print, what its children report about themselves.
// Written to a terminal as they come, their control sequences would act on it (clear the
// screen, move the cursor over earlier lines, set the window title, write the clipboard).
#ifndef GROVE_COMMON_PRINTABLE_H_
#define GROVE_COMMON_PRINTABLE_H_

#include <string>

#include "absl/strings/string_view.h"

namespace grove {

// `text` with every byte a terminal would act on written out as an escape: C0 controls but
// tab (`\n`, `\r`, `\e` as `\x1b`, ...), DEL, the C1 controls (U+0080 to U+009F) and bytes
// that are not UTF-8, as `\xNN`. Printable ASCII and the rest of UTF-8 are kept as they are.
std::string Printable(absl::string_view text);

// The length of the well-formed UTF-8 sequence of two to four bytes at the start of `s`, or 0
// (an ASCII byte, or bytes that are not UTF-8: overlong, a surrogate, past U+10FFFF, cut short).
size_t Utf8SequenceLength(absl::string_view s);

// Whether `text` is entirely well-formed UTF-8.
bool IsUtf8(absl::string_view text);

// Whether `text` is UTF-8 with no control at all (not even tab or newline): what Printable
// leaves as it is, one line. Names must be: `ParseHop` and a parent's router refuse others.
bool IsPlainText(absl::string_view text);

}  // namespace grove

#endif  // GROVE_COMMON_PRINTABLE_H_
