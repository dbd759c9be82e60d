#include "files/service.h"

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
#include "files/fanout.h"
#include "files/file_writer.h"
#include "files/origin.h"
#include "files/paths.h"
#include "files/scan.h"

namespace grove::files_internal {

namespace {

// Bytes of chunks a context received and relayed, of files it copied, and of files it sent
// to pulls (grove.file_stats).
struct FileCounters {
  std::atomic<int64_t> received{0};
  std::atomic<int64_t> relayed{0};
  std::atomic<int64_t> copied{0};
  std::atomic<int64_t> served{0};
};

// One entry being received: written here when this context is a target, relayed to the
// others. Thread-safe.
class Session {
 public:
  Session(int64_t size, std::shared_ptr<FileWriter> writer, absl::Status local,
          std::unique_ptr<Fanout> fanout, bool wanted_here, FileCounters* counters)
      : counters_(counters),
        size_(size),
        writer_(std::move(writer)),
        local_(std::move(local)),
        fanout_(std::move(fanout)),
        wanted_here_(wanted_here) {}

  // Writes and relays one chunk. An error only when no target can use it any more.
  absl::Status Chunk(int64_t offset, const std::string& data, const std::string& sha256) {
    absl::Status local_error;
    std::shared_ptr<FileWriter> writer;
    {
      absl::MutexLock lock(&mu_);
      if (local_.ok()) writer = writer_;
      local_error = local_;
    }
    if (writer != nullptr) {
      absl::Status written = writer->Write(offset, data);
      if (!written.ok()) {
        {
          // The first error is the one reported: record it before the discard makes
          // concurrent chunks fail with "dropped".
          absl::MutexLock lock(&mu_);
          if (local_.ok()) local_ = written;
          local_error = local_;
        }
        writer->Discard();  // Nothing partial stays behind (a full disk, say).
      }
    }
    int64_t relayed = fanout_->Write(offset, data, sha256);
    counters_->received += static_cast<int64_t>(data.size());
    counters_->relayed += relayed;
    absl::MutexLock lock(&mu_);
    if (!sha256.empty()) late_sha256_ = sha256;  // Before received_ may say complete.
    received_ += static_cast<int64_t>(data.size());
    if (relayed == 0 && (!wanted_here_ || !local_error.ok())) {
      return local_error.ok() ? absl::AbortedError("no target is receiving") : local_error;
    }
    return absl::OkStatus();
  }

  // Waits until every byte arrived, or `cancel` fires (the sender is gone or this context
  // shuts down: the temporary file goes at once, before the process may exit); true if
  // complete.
  bool WaitComplete(CancelSource& cancel) {
    uint64_t id = cancel.AddCallback([this] {
      std::shared_ptr<FileWriter> writer;
      {
        absl::MutexLock lock(&mu_);
        cancelled_ = true;
        writer = writer_;
      }
      if (writer != nullptr) writer->Discard();
    });
    bool complete;
    {
      absl::MutexLock lock(&mu_);
      auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return received_ >= size_ || cancelled_;
      };
      mu_.Await(absl::Condition(&done));
      complete = received_ >= size_ && !cancelled_;
    }
    if (id) cancel.RemoveCallback(id);
    return complete;
  }

  // Commits (or drops) the local copy and collects every target's result.
  std::vector<TargetResult> Finish(uint64_t self) {
    std::shared_ptr<FileWriter> writer;
    absl::Status local;
    std::string late_sha256;
    {
      absl::MutexLock lock(&mu_);
      writer = std::move(writer_);
      local = local_;
      late_sha256 = late_sha256_;
    }
    if (local.ok() && writer != nullptr) local = writer->Commit(late_sha256);
    if (writer != nullptr) writer->Discard();  // Unless committed: the temporary file goes.
    std::vector<TargetResult> results = fanout_->Finish();
    if (wanted_here_) results.push_back(TargetResult{ContextId(self), local});
    return results;
  }

 private:
  FileCounters* const counters_;
  const int64_t size_;
  absl::Mutex mu_;
  std::shared_ptr<FileWriter> writer_ ABSL_GUARDED_BY(mu_);
  absl::Status local_ ABSL_GUARDED_BY(mu_);
  int64_t received_ ABSL_GUARDED_BY(mu_) = 0;
  std::string late_sha256_ ABSL_GUARDED_BY(mu_);  // From the last chunk (ChunkRequest).
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  const std::unique_ptr<Fanout> fanout_;
  const bool wanted_here_;
};

// The receiving side of transfers in one context: sessions by (caller, transfer).
// Thread-safe.
class FileService {
 public:
  explicit FileService(Router* router) : router_(router) {}

  absl::StatusOr<v1::ReceiveReply> Receive(const v1::ReceiveRequest& request, CallContext& call) {
    const uint64_t self = router_->id().value();
    const std::string where = router_->name();
    bool here = false;
    std::vector<uint64_t> others;
    for (uint64_t t : request.targets()) {
      if (t == self) {
        here = true;
      } else {
        others.push_back(t);
      }
    }
    if (request.dest().empty() || request.dest()[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("'", request.dest(), "' is not an absolute path (in context ", where, ")"));
    }
    std::shared_ptr<FileWriter> writer;
    absl::Status local;
    if (here) {
      absl::StatusOr<std::unique_ptr<FileWriter>> begun =
          FileWriter::Begin(request.entry(), request.dest(), where, request.finish_directory());
      if (begun.ok()) {
        writer = *std::move(begun);
      } else {
        local = begun.status();
      }
    }
    TransferOptions relay;
    auto fanout = std::make_unique<Fanout>(*router_, others, relay, &call);
    fanout->Open(request.entry(), request.dest(), request.finish_directory());
    const bool has_bytes =
        request.entry().kind() == v1::FileEntry::FILE && request.entry().size() > 0;
    auto session = std::make_shared<Session>(has_bytes ? request.entry().size() : 0,
                                             std::move(writer), local, std::move(fanout), here,
                                             &counters_);
    const auto key = std::make_pair(call.caller().value(), request.transfer());
    if (has_bytes) {
      {
        absl::MutexLock lock(&mu_);
        sessions_[key] = session;
      }
      bool complete = session->WaitComplete(call.cancel_source());
      {
        absl::MutexLock lock(&mu_);
        sessions_.erase(key);
      }
      if (!complete) {
        // The sender is gone or gave up: drop the partial file (Finish removes it).
        session->Finish(self);
        return absl::CancelledError(absl::StrCat("transfer to ", request.dest(), " in context ",
                                                 where, " cancelled before it completed"));
      }
    }
    v1::ReceiveReply reply;
    for (const TargetResult& r : session->Finish(self)) {
      v1::TargetResult* out = reply.add_results();
      out->set_id(r.id.value());
      out->set_code(static_cast<int>(r.status.code()));
      out->set_message(std::string(r.status.message()));
    }
    return reply;
  }

  absl::StatusOr<v1::Empty> Chunk(const v1::ChunkRequest& request, CallContext& call) {
    const auto key = std::make_pair(call.caller().value(), request.transfer());
    std::shared_ptr<Session> session;
    {
      // The receive that opens the session may still be on its way to a worker thread.
      absl::MutexLock lock(&mu_);
      auto opened = [this, &key]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return sessions_.contains(key);
      };
      absl::Time deadline = std::min(call.deadline(), absl::Now() + absl::Seconds(30));
      if (!mu_.AwaitWithDeadline(absl::Condition(&opened), deadline)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "no transfer ", request.transfer(), " from this caller in context ", router_->name()));
      }
      session = sessions_[key];
    }
    absl::Status status = session->Chunk(request.offset(), request.data(), request.sha256());
    if (!status.ok()) return status;
    return v1::Empty();
  }

  // A push's kernel copy into this context (grove.file_copy in files.proto).
  absl::StatusOr<v1::CopyReply> Copy(const v1::CopyRequest& request, CallContext& call) {
    const std::string where = router_->name();
    const std::string& dest = request.dest();
    if (dest.empty() || dest[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("'", dest, "' is not an absolute path (in context ", where, ")"));
    }
    v1::CopyReply reply;
    UniqueFd src = OpenOrigin(request.origin());
    if (!src.valid() || request.entry().kind() != v1::FileEntry::FILE ||
        request.entry().size() != request.origin().size()) {
      return reply;  // Not copied: the sender streams the bytes.
    }
    absl::StatusOr<std::unique_ptr<FileWriter>> begun =
        FileWriter::Begin(request.entry(), dest, where, false);
    if (!begun.ok()) return begun.status();
    std::shared_ptr<FileWriter> writer = *std::move(begun);
    // The sender gone or this context shutting down: the temporary file goes at once.
    uint64_t id = call.cancel_source().AddCallback([writer] { writer->Discard(); });
    // Progress, as the call's output on stream 0: the bytes copied so far, in decimal.
    absl::Status copied =
        writer->CopyFrom(src.get(), request.origin(), absl::InfiniteFuture(),
                         [&call](int64_t n) { call.Output(0, absl::StrCat(n)); });
    if (id) call.cancel_source().RemoveCallback(id);
    if (copied.ok()) copied = writer->CommitCopy();
    if (!copied.ok()) return copied;  // The writer removes its temporary file.
    counters_.copied += request.origin().size();
    reply.set_copied(true);
    return reply;
  }

  // Holds a file open for a pull's kernel copy (grove.file_hold in files.proto).
  absl::StatusOr<v1::Empty> Hold(const v1::HoldRequest& request, CallContext& call) {
    const std::string where = router_->name();
    const std::string& path = request.path();
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
    if (!fd.valid()) return PathError(errno, "read", path, where);
    absl::StatusOr<v1::Origin> origin = OriginOf(fd.get(), path, where);
    if (!origin.ok()) return origin.status();
    call.Output(0, origin->SerializeAsString());
    absl::Notification released;
    uint64_t id = call.cancel_source().AddCallback([&released] { released.Notify(); });
    released.WaitForNotificationWithDeadline(call.deadline());
    if (id) call.cancel_source().RemoveCallback(id);
    return v1::Empty();
  }

  absl::StatusOr<v1::ReadReply> Read(const v1::ReadRequest& request) {
    const std::string& path = request.path();
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return PathError(errno, "read", path, router_->name());
    v1::ReadReply reply;
    std::string* data = reply.mutable_data();
    data->resize(static_cast<size_t>(std::clamp<int64_t>(request.length(), 0, kMaxChunk)));
    size_t done = 0;
    while (done < data->size()) {
      ssize_t n = ::pread(fd.get(), data->data() + done, data->size() - done,
                          request.offset() + static_cast<int64_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return PathError(errno, "read", path, router_->name());
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    data->resize(done);
    counters_.served += static_cast<int64_t>(done);
    return reply;
  }

  v1::FileStatsReply Stats() const {
    v1::FileStatsReply reply;
    reply.set_received_bytes(counters_.received.load());
    reply.set_relayed_bytes(counters_.relayed.load());
    reply.set_copied_bytes(counters_.copied.load());
    reply.set_served_bytes(counters_.served.load());
    return reply;
  }

 private:
  Router* const router_;
  FileCounters counters_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, std::shared_ptr<Session>> sessions_
      ABSL_GUARDED_BY(mu_);
};


absl::StatusOr<v1::StatReply> StatPath(const std::string& path) {
  v1::StatReply reply;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    reply.set_exists(true);
    reply.set_is_directory(S_ISDIR(st.st_mode));
  }
  return reply;
}


}  // namespace

// Installs the built-ins of FilesComponent into `functions`.
void RegisterFileFunctions(Router* router, Functions* functions) {
  auto service = std::make_shared<FileService>(router);
  functions->Add(Functions::MakeFunction<v1::ReceiveRequest, v1::ReceiveReply>(
      "grove.file_receive",
      [service](const v1::ReceiveRequest& request, CallContext& call) {
        return service->Receive(request, call);
      },
      {}));
  functions->Add(Functions::MakeFunction<v1::ChunkRequest, v1::Empty>(
      "grove.file_chunk",
      [service](const v1::ChunkRequest& request, CallContext& call) {
        return service->Chunk(request, call);
      },
      {}));
  functions->Add(Functions::MakeFunction<v1::CopyRequest, v1::CopyReply>(
      "grove.file_copy",
      [service](const v1::CopyRequest& request, CallContext& call) {
        return service->Copy(request, call);
      },
      {}));
  functions->Add(Functions::MakeFunction<v1::Empty, v1::FileStatsReply>(
      "grove.file_stats",
      [service](const v1::Empty&, CallContext&) -> absl::StatusOr<v1::FileStatsReply> {
        return service->Stats();
      },
      {CallableBy::kAncestors, true}));
  functions->Add(Functions::MakeFunction<v1::StatRequest, v1::StatReply>(
      "grove.file_stat",
      [](const v1::StatRequest& request, CallContext&) { return StatPath(request.path()); },
      {CallableBy::kAncestors, true}));
  functions->Add(Functions::MakeFunction<v1::ListRequest, v1::ListReply>(
      "grove.file_list",
      [router](const v1::ListRequest& request, CallContext&) -> absl::StatusOr<v1::ListReply> {
        std::vector<v1::FileEntry> entries;
        absl::Status s = Scan(request.path(), "", request.recursive(),
                              /*hash=*/!request.without_digests(), 0, router->name(), &entries);
        if (!s.ok()) return s;
        v1::ListReply reply;
        for (v1::FileEntry& e : entries) *reply.add_entries() = std::move(e);
        return reply;
      },
      {}));
  functions->Add(Functions::MakeFunction<v1::ReadRequest, v1::ReadReply>(
      "grove.file_read",
      [service](const v1::ReadRequest& request, CallContext&) { return service->Read(request); },
      {}));
  functions->Add(Functions::MakeFunction<v1::HoldRequest, v1::Empty>(
      "grove.file_hold",
      [service](const v1::HoldRequest& request, CallContext& call) {
        return service->Hold(request, call);
      },
      {}));
}


}  // namespace grove::files_internal
