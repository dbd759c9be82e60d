// ContextId: the identity of one context in a grove tree.
//
// The master is context 0. Ids are allocated by the master, unique for its lifetime and
// never reused; a context that spawns children obtains blocks of ids from the master.
#ifndef GROVE_COMMON_CONTEXT_ID_H_
#define GROVE_COMMON_CONTEXT_ID_H_

#include <cstdint>
#include <ostream>
#include <string>

#include "absl/strings/str_cat.h"

namespace grove {

// A strongly typed context id. Value type; thread-compatible.
class ContextId {
 public:
  constexpr ContextId() = default;
  constexpr explicit ContextId(uint64_t value) : value_(value) {}

  constexpr uint64_t value() const { return value_; }
  constexpr bool IsValid() const { return value_ != kInvalidValue; }
  constexpr bool IsMaster() const { return value_ == 0; }

  friend constexpr bool operator==(ContextId a, ContextId b) { return a.value_ == b.value_; }
  friend constexpr bool operator!=(ContextId a, ContextId b) { return a.value_ != b.value_; }
  friend constexpr bool operator<(ContextId a, ContextId b) { return a.value_ < b.value_; }

  template <typename H>
  friend H AbslHashValue(H h, ContextId id) {
    return H::combine(std::move(h), id.value_);
  }
  template <typename Sink>
  friend void AbslStringify(Sink& sink, ContextId id) {
    sink.Append(absl::StrCat(id.value_));
  }
  friend std::ostream& operator<<(std::ostream& os, ContextId id) { return os << id.value_; }

 private:
  static constexpr uint64_t kInvalidValue = ~uint64_t{0};
  uint64_t value_ = kInvalidValue;
};

inline constexpr ContextId kMasterId{0};
inline constexpr ContextId kInvalidContextId{};

}  // namespace grove

#endif  // GROVE_COMMON_CONTEXT_ID_H_
