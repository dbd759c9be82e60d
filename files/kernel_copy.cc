#include "files/kernel_copy.h"

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
#include "files/file_writer.h"
#include "files/origin.h"

namespace grove::files_internal {

// A push's kernel copies of one file (`copy`) into each of `targets` at once
// (grove.file_copy); their replies, by target, once all came. Meanwhile `on_progress` is called
// on this thread with the bytes that every copy still running has copied.
std::vector<std::pair<uint64_t, absl::StatusOr<v1::CopyReply>>> KernelCopies(
    Router& router, const std::vector<uint64_t>& targets, const v1::CopyRequest& copy,
    const CallOptions& options, const std::function<void(int64_t least)>& on_progress) {
  // What the calls report, on the links' thread.
  struct State {
    absl::Mutex mu;
    std::map<uint64_t, int64_t> copied ABSL_GUARDED_BY(mu);  // Of the copies still running.
    std::vector<std::pair<uint64_t, absl::StatusOr<v1::CopyReply>>> replies ABSL_GUARDED_BY(mu);
  };
  auto state = std::make_shared<State>();
  {
    absl::MutexLock lock(&state->mu);
    for (uint64_t t : targets) state->copied[t] = 0;
  }
  const std::string bytes = copy.SerializeAsString();
  for (uint64_t t : targets) {
    CallOptions call = options;
    call.on_output = [state, t](int stream, const std::string& data) {
      int64_t n;
      if (stream != 0 || !absl::SimpleAtoi(data, &n)) return;
      absl::MutexLock lock(&state->mu);
      if (auto it = state->copied.find(t); it != state->copied.end()) it->second = n;
    };
    Context(&router, ContextId(t), "")
        .CallRaw("grove.file_copy", v1::CopyRequest::descriptor()->full_name(), bytes, call,
                 [state, t](absl::StatusOr<std::string> result) {
                   absl::StatusOr<v1::CopyReply> reply =
                       Context::Decode<v1::CopyReply>("grove.file_copy", std::move(result));
                   absl::MutexLock lock(&state->mu);
                   state->copied.erase(t);
                   state->replies.emplace_back(t, std::move(reply));
                 });
  }
  int64_t reported = 0;
  absl::MutexLock lock(&state->mu);
  auto least = [&state]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mu) {
    int64_t n = INT64_MAX;
    for (const auto& [t, copied] : state->copied) n = std::min(n, copied);
    return n;
  };
  auto moved = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(state->mu) {
    return state->copied.empty() || least() > reported;
  };
  while (true) {
    state->mu.Await(absl::Condition(&moved));
    if (state->copied.empty()) break;
    reported = least();
    state->mu.Unlock();
    on_progress(reported);
    state->mu.Lock();
  }
  return std::move(state->replies);
}


// A pull's kernel copy of `path` in context `from` into `writer`: the file is held open there
// (grove.file_hold) while this context opens it through /proc and copies it. False, with
// nothing written, when this context cannot open it (another host, user or pid namespace); an
// error when the copy failed or the file could not be held (missing, unreadable). `on_step` is
// CopyFrom's. The copy stops, like the hold, when `options` cancel the pull (its own source,
// or the function call it is part of) or its deadline (or that call's) passes.
absl::StatusOr<bool> CopyHeldFile(Router& router, ContextId from, const std::string& path,
                                  int64_t size, FileWriter& writer, const CallOptions& options,
                                  const std::function<void(int64_t)>& on_step) {
  // What the hold call reports, on the link's thread.
  struct Held {
    absl::Mutex mu;
    std::optional<v1::Origin> origin ABSL_GUARDED_BY(mu);
    std::optional<absl::Status> ended ABSL_GUARDED_BY(mu);
  };
  auto held = std::make_shared<Held>();
  CancelSource release;
  // The pull cancelled, or the call it is part of: the hold ends and the copy stops.
  auto stop = [&] {
    release.Cancel();
    writer.Discard();
  };
  uint64_t chained = options.cancel == nullptr ? 0 : options.cancel->AddCallback(stop);
  uint64_t chained_parent =
      options.parent == nullptr ? 0 : options.parent->cancel_source().AddCallback(stop);
  CallOptions call;
  call.parent = options.parent;
  call.timeout = options.timeout;
  call.deadline = options.deadline;
  call.cancel = &release;
  call.on_output = [held](int stream, const std::string& data) {
    v1::Origin origin;
    if (stream != 0 || !origin.ParseFromString(data)) return;
    absl::MutexLock lock(&held->mu);
    held->origin = std::move(origin);
  };
  v1::HoldRequest hold;
  hold.set_path(path);
  Context(&router, from, "")
      .CallRaw("grove.file_hold", v1::HoldRequest::descriptor()->full_name(),
               hold.SerializeAsString(), call, [held](absl::StatusOr<std::string> result) {
                 absl::MutexLock lock(&held->mu);
                 held->ended = result.status();
               });
  std::optional<v1::Origin> origin;
  absl::Status ended;
  {
    absl::MutexLock lock(&held->mu);
    auto ready = [&held]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(held->mu) {
      return held->origin.has_value() || held->ended.has_value();
    };
    held->mu.Await(absl::Condition(&ready));
    origin = held->origin;
    if (held->ended.has_value()) ended = *held->ended;
  }
  absl::StatusOr<bool> copied = false;
  if (!origin.has_value()) {
    if (!ended.ok()) copied = ended;
  } else if (UniqueFd src = OpenOrigin(*origin); src.valid() && origin->size() == size) {
    absl::Time deadline = std::min(options.deadline, absl::Now() + options.timeout);
    if (options.parent != nullptr) deadline = std::min(deadline, options.parent->deadline());
    absl::Status status = writer.CopyFrom(src.get(), *origin, deadline, on_step);
    if (!status.ok() && options.parent != nullptr && options.parent->deadline_exceeded()) {
      status = absl::DeadlineExceededError(absl::StrCat("pull of ", path, " past its deadline"));
    }
    if (status.ok()) {
      copied = true;
    } else {
      copied = status;
    }
  }
  release.Cancel();
  if (chained != 0) options.cancel->RemoveCallback(chained);
  if (chained_parent != 0) options.parent->cancel_source().RemoveCallback(chained_parent);
  absl::MutexLock lock(&held->mu);
  auto ended_now = [&held]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(held->mu) {
    return held->ended.has_value();
  };
  held->mu.Await(absl::Condition(&ended_now));  // `release` outlives the call.
  return copied;
}


}  // namespace grove::files_internal
