// grove's version, as `grove --version` and the control API's Version answer it.
#ifndef GROVE_COMMON_VERSION_H_
#define GROVE_COMMON_VERSION_H_

namespace grove {

inline constexpr char kGroveVersion[] = "0.2.0";

}  // namespace grove

#endif  // GROVE_COMMON_VERSION_H_
