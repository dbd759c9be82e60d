// Kernel copies between contexts on one host: where a context can open a file of another
// (its /proc/<pid>/fd entry), and whether it is still the same, unchanged file.
#ifndef GROVE_FILES_ORIGIN_H_
#define GROVE_FILES_ORIGIN_H_

#include <string>

#include "absl/status/statusor.h"
#include "common/fd.h"
#include "proto/files.pb.h"

namespace grove::files_internal {

// This kernel's boot id ("" if unreadable: no kernel copies then).
const std::string& BootId();

// Where a context on this host can open the regular file `fd` of this process
// (grove.file_copy, grove.file_hold).
absl::StatusOr<v1::Origin> OriginOf(int fd, const std::string& path, const std::string& where);

// True if the open file `fd` is still the one `origin` describes, unchanged.
bool Matches(int fd, const v1::Origin& origin);

// The sender's file named by `origin`, opened through /proc; invalid when this context cannot
// open it (another host, user or pid namespace) or it is no longer that file, unchanged.
UniqueFd OpenOrigin(const v1::Origin& origin);

}  // namespace grove::files_internal

#endif  // GROVE_FILES_ORIGIN_H_
