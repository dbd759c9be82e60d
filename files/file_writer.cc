#include "files/file_writer.h"

#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/printable.h"

namespace grove::files_internal {

// Checks the listing that context `source` sent for a pull before anything is written: the
// root first (path ""), then entries whose paths are relative, with no empty, "." or ".."
// component, each inside a directory listed before it (never under a symlink or a file). A
// context that lies cannot make the pull write outside its destination.
absl::Status CheckListing(const std::vector<v1::FileEntry>& entries, const std::string& source) {
  auto refuse = [&source](const std::string& path, absl::string_view why) {
    return absl::PermissionDeniedError(absl::StrCat("pull: context ", source, " listed '",
                                                    Printable(path), "', ", why,
                                                    "; nothing was written for it"));
  };
  if (entries.empty() || !entries[0].path().empty()) {
    return absl::DataLossError(
        absl::StrCat("pull: context ", source, " listed no root entry first"));
  }
  absl::flat_hash_set<std::string> directories;
  if (entries[0].kind() == v1::FileEntry::DIRECTORY) directories.insert("");
  for (size_t i = 1; i < entries.size(); ++i) {
    const std::string& path = entries[i].path();
    if (path.empty() || path[0] == '/') return refuse(path, "which is not a relative path");
    for (absl::string_view part : absl::StrSplit(path, '/')) {
      if (part.empty() || part == "." || part == "..") {
        return refuse(path, "which has an empty, '.' or '..' component");
      }
    }
    if (path.find('\0') != std::string::npos) return refuse(path, "which holds a NUL byte");
    const size_t slash = path.rfind('/');
    const std::string parent = slash == std::string::npos ? "" : path.substr(0, slash);
    if (!directories.contains(parent)) {
      return refuse(path, "which is not inside a directory listed before it");
    }
    if (entries[i].kind() == v1::FileEntry::DIRECTORY) directories.insert(path);
  }
  return absl::OkStatus();
}


}  // namespace grove::files_internal
