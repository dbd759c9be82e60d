// The tree scan: what a transfer sends, or a listing (grove.file_list) shows.
#ifndef GROVE_FILES_SCAN_H_
#define GROVE_FILES_SCAN_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "proto/files.pb.h"

namespace grove::files_internal {

// The entries under `root` (itself first, then pre-order), files with their SHA-256 when
// `hash` (otherwise empty files only: a push hashes the others while it sends them).
absl::Status Scan(const std::string& root, const std::string& rel, bool recursive, bool hash,
                  int depth, const std::string& where, std::vector<v1::FileEntry>* out);

}  // namespace grove::files_internal

#endif  // GROVE_FILES_SCAN_H_
