// The sending side: one entry sent to a set of targets below this context, once per link.
#ifndef GROVE_FILES_FANOUT_H_
#define GROVE_FILES_FANOUT_H_

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
#include "files/files.h"
#include "files/paths.h"

namespace grove::files_internal {

// A ChunkRequest's wire bytes, with `data` copied once: its other fields, then field 3 (data)
// by hand (what SerializeAsString would do after copying `data` into the message first, and
// zero-filling its output).
std::string SerializedChunk(uint64_t transfer, int64_t offset, const std::string& data,
                            const std::string& sha256);

uint64_t NextTransferId();

// Sends one entry to a set of targets below this context, once per link: targets are
// grouped by the child of this context they are reached through, and each group gets one
// grove.file_receive (and one copy of each chunk) at that child, which relays the rest.
// Thread-safe: Write may be called from several threads.
class Fanout {
 public:
  Fanout(Router& router, const std::vector<uint64_t>& targets, const TransferOptions& options,
         CallContext* parent)
      : router_(router), options_(options), parent_(parent) {
    std::map<uint64_t, std::vector<uint64_t>> by_child;
    const uint64_t self = router.id().value();
    for (uint64_t target : targets) {
      absl::StatusOr<uint64_t> child = ChildToward(target, self);
      if (!child.ok()) {
        early_.push_back(Result(target, child.status()));
        continue;
      }
      by_child[*child].push_back(target);
    }
    for (auto& [child, group_targets] : by_child) {
      auto group = std::make_unique<Group>();
      group->root = child;
      group->targets = std::move(group_targets);
      group->transfer = NextTransferId();
      groups_.push_back(std::move(group));
    }
    // The transfer cancelled (Ctrl-C, its caller): every group stops, and its receivers drop
    // what they wrote.
    if (options_.call.cancel != nullptr) {
      chained_ = options_.call.cancel->AddCallback([this] {
        for (auto& group : groups_) group->cancel.Cancel();
      });
    }
  }

  ~Fanout() {
    if (chained_ != 0) options_.call.cancel->RemoveCallback(chained_);
    Abort();  // Finish() was not reached (an error on our side): stop the receivers.
    WaitForChunks();
    for (auto& group : groups_) {
      if (group->receive.valid()) group->receive.wait();
    }
  }

  bool empty() const { return groups_.empty(); }

  // Stops every group: their receivers drop what they wrote, and Finish reports them failed.
  void Abort() {
    for (auto& group : groups_) group->cancel.Cancel();
  }

  // Starts the receive at each group's root.
  void Open(const v1::FileEntry& entry, const std::string& dest, bool finish_directory) {
    for (auto& group : groups_) {
      v1::ReceiveRequest request;
      request.set_transfer(group->transfer);
      request.set_dest(dest);
      *request.mutable_entry() = entry;
      for (uint64_t t : group->targets) request.add_targets(t);
      request.set_finish_directory(finish_directory);
      CallOptions call = CallOptionsFor(group.get());
      group->receive = Context(&router_, ContextId(group->root), "")
                           .CallAsync<v1::ReceiveReply>("grove.file_receive", request, call);
    }
  }

  // Sends a chunk to every group still receiving (with the file's digest when it is the
  // last and the entry went without one); waits while a group has `window` chunks in
  // flight. Returns the bytes sent (0 once every group has failed).
  int64_t Write(int64_t offset, const std::string& data, const std::string& sha256 = "") {
    int64_t sent = 0;
    for (auto& group : groups_) {
      {
        absl::MutexLock lock(&mu_);
        Group* g = group.get();
        auto room = [this, g]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return g->in_flight < options_.window || !g->failed.ok();
        };
        mu_.Await(absl::Condition(&room));
        if (!g->failed.ok()) continue;
        ++g->in_flight;
      }
      sent += static_cast<int64_t>(data.size());
      Group* g = group.get();
      Context(&router_, ContextId(g->root), "")
          .CallRaw("grove.file_chunk", v1::ChunkRequest::descriptor()->full_name(),
                   SerializedChunk(group->transfer, offset, data, sha256), CallOptionsFor(g),
                   [this, g](absl::StatusOr<std::string> result) {
                     bool cancel = false;
                     {
                       absl::MutexLock lock(&mu_);
                       if (!result.ok() && g->failed.ok()) {
                         g->failed = result.status();
                         cancel = true;
                       } else {
                         --g->in_flight;
                       }
                     }
                     if (!cancel) return;
                     // The receive would wait for bytes that will not come. The chunk
                     // stays counted in flight until then: `g` lives as long as one is.
                     g->cancel.Cancel();
                     absl::MutexLock lock(&mu_);
                     --g->in_flight;
                   });
    }
    return sent;
  }

  // Waits for every group; one result per target.
  std::vector<TargetResult> Finish() {
    WaitForChunks();
    std::vector<TargetResult> results = std::move(early_);
    for (auto& group : groups_) {
      absl::StatusOr<v1::ReceiveReply> reply = group->receive.get();
      absl::Status failed;
      {
        absl::MutexLock lock(&mu_);
        failed = group->failed;
      }
      if (!failed.ok() && (reply.ok() || reply.status().code() == absl::StatusCode::kCancelled)) {
        reply = failed;
      }
      if (!reply.ok()) {
        for (uint64_t t : group->targets) results.push_back(Result(t, reply.status()));
        continue;
      }
      for (const v1::TargetResult& r : reply->results()) {
        results.push_back(Result(r.id(), absl::Status(static_cast<absl::StatusCode>(r.code()),
                                                      r.message())));
      }
    }
    return results;
  }

 private:
  struct Group {
    uint64_t root = 0;
    std::vector<uint64_t> targets;
    uint64_t transfer = 0;
    CancelSource cancel;
    std::future<absl::StatusOr<v1::ReceiveReply>> receive;
    int in_flight ABSL_GUARDED_BY(Fanout::mu_) = 0;
    absl::Status failed ABSL_GUARDED_BY(Fanout::mu_);
  };

  static TargetResult Result(uint64_t id, absl::Status status) {
    return TargetResult{ContextId(id), std::move(status)};
  }

  CallOptions CallOptionsFor(Group* group) const {
    CallOptions call;
    call.parent = parent_;
    call.timeout = options_.call.timeout;
    call.deadline = options_.call.deadline;
    call.cancel = &group->cancel;
    return call;
  }

  // The child of `self` on the way to `target`, from the registry of this subtree.
  absl::StatusOr<uint64_t> ChildToward(uint64_t target, uint64_t self) const {
    uint64_t at = target;
    for (int hops = 0; hops < kMaxDepth; ++hops) {
      std::optional<ContextRecord> record = router_.registry().Find(ContextId(at));
      if (!record.has_value() || at == self) break;
      if (record->state == ContextState::kGone) {
        return absl::UnavailableError(absl::StrCat("context ", record->name, " (id ", at,
                                                   ") is gone: ", record->reason));
      }
      if (record->parent.value() == self) return at;
      at = record->parent.value();
    }
    return absl::NotFoundError(absl::StrCat("context ", target, " is not below context ",
                                            router_.name()));
  }

  void WaitForChunks() {
    absl::MutexLock lock(&mu_);
    auto idle = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& group : groups_) {
        if (group->in_flight > 0) return false;
      }
      return true;
    };
    mu_.Await(absl::Condition(&idle));
  }

  Router& router_;
  const TransferOptions options_;
  CallContext* const parent_;
  std::vector<std::unique_ptr<Group>> groups_;  // Fixed after construction.
  uint64_t chained_ = 0;  // The callback on options_.call.cancel; set in the constructor.
  std::vector<TargetResult> early_;
  mutable absl::Mutex mu_;
};


}  // namespace grove::files_internal

#endif  // GROVE_FILES_FANOUT_H_
