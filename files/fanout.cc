#include "files/fanout.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/fd.h"
#include "common/printable.h"
#include "common/sha256.h"
#include "common/status_util.h"
#include "proto/builtins.pb.h"
#include "proto/files.pb.h"
#include "router/context.h"

namespace grove::files_internal {

// A ChunkRequest's wire bytes, with `data` copied once: its other fields, then field 3 (data)
// by hand (what SerializeAsString would do after copying `data` into the message first, and
// zero-filling its output).
std::string SerializedChunk(uint64_t transfer, int64_t offset, const std::string& data,
                            const std::string& sha256) {
  v1::ChunkRequest head;
  head.set_transfer(transfer);
  head.set_offset(offset);
  head.set_sha256(sha256);
  std::string wire;
  wire.reserve(head.ByteSizeLong() + 1 + 10 + data.size());
  head.AppendToString(&wire);
  constexpr char kDataTag = (3 << 3) | 2;  // Field 3, length-delimited.
  wire.push_back(kDataTag);
  for (uint64_t n = data.size(); ; n >>= 7) {
    if (n < 0x80) {
      wire.push_back(static_cast<char>(n));
      break;
    }
    wire.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  wire.append(data);
  return wire;
}

uint64_t NextTransferId() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1);
}


}  // namespace grove::files_internal
