// Kernel copies driven from the transferring context: a push's copies into targets on this
// host (grove.file_copy), a pull's copy of a file its source holds open (grove.file_hold).
#ifndef GROVE_FILES_KERNEL_COPY_H_
#define GROVE_FILES_KERNEL_COPY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "files/file_writer.h"
#include "proto/files.pb.h"
#include "router/router.h"

namespace grove::files_internal {

// A push's kernel copies of one file (`copy`) into each of `targets` at once
// (grove.file_copy); their replies, by target, once all came. Meanwhile `on_progress` is called
// on this thread with the bytes that every copy still running has copied.
std::vector<std::pair<uint64_t, absl::StatusOr<v1::CopyReply>>> KernelCopies(
    Router& router, const std::vector<uint64_t>& targets, const v1::CopyRequest& copy,
    const CallOptions& options, const std::function<void(int64_t least)>& on_progress);

// A pull's kernel copy of `path` in context `from` into `writer`: the file is held open there
// (grove.file_hold) while this context opens it through /proc and copies it. False, with
// nothing written, when this context cannot open it (another host, user or pid namespace); an
// error when the copy failed or the file could not be held (missing, unreadable). `on_step` is
// CopyFrom's. The copy stops, like the hold, when `options` cancel the pull (its own source,
// or the function call it is part of) or its deadline (or that call's) passes.
absl::StatusOr<bool> CopyHeldFile(Router& router, ContextId from, const std::string& path,
                                  int64_t size, FileWriter& writer, const CallOptions& options,
                                  const std::function<void(int64_t)>& on_step);

}  // namespace grove::files_internal

#endif  // GROVE_FILES_KERNEL_COPY_H_
