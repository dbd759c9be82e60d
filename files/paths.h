// Paths and files as transfers see them: joining, errors that name the path and the context,
// digests, times.
#ifndef GROVE_FILES_PATHS_H_
#define GROVE_FILES_PATHS_H_

#include <sys/stat.h>

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grove::files_internal {

inline constexpr int kMaxDepth = 4096;
// The SHA-256 of no bytes.
inline constexpr char kEmptySha256[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
inline constexpr int64_t kMaxChunk = int64_t{4} << 20;
// A kernel copy is done in steps of this many bytes: between two, it checks for a
// cancellation and its deadline, and reports its progress.
inline constexpr int64_t kCopyStep = int64_t{16} << 20;

// "cannot create /x/y in context web1: Permission denied", with the errno's canonical code.
absl::Status PathError(int err, absl::string_view what, const std::string& path,
                       const std::string& where);

// SHA-256 of the bytes of the open file `fd` (`path` and `where` name it in errors).
absl::StatusOr<std::string> Sha256Of(int fd, const std::string& path, const std::string& where);

std::string Join(const std::string& dir, const std::string& rel);

std::string BaseName(std::string path);

std::string DirName(const std::string& path);

int64_t MtimeNs(const struct stat& st);

int64_t CtimeNs(const struct stat& st);

struct timespec ToTimespec(int64_t ns);

}  // namespace grove::files_internal

#endif  // GROVE_FILES_PATHS_H_
