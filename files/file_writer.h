// The writing side of every transfer: one entry written under a temporary name and renamed
// into place, and the checks and directory walk that keep a pull inside its destination.
#ifndef GROVE_FILES_FILE_WRITER_H_
#define GROVE_FILES_FILE_WRITER_H_

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
#include "files/paths.h"
#include "files/origin.h"

namespace grove::files_internal {

// Writes one entry at its final path, named by a directory it holds open and a name in it:
// nothing it does follows a symlink in that last step, so a name can only land in that
// directory. A file goes to a temporary name in the same directory and is renamed once
// complete and verified; the destructor removes the temporary file of an entry never
// committed. Owns the directory fd and the temporary file. Thread-safe: chunks may be
// written concurrently at their offsets, and Discard may come from any thread (a
// cancellation).
class FileWriter {
 public:
  // Writes `entry` as `name` in the directory `dir`; `dest` is its path, for errors. A
  // directory entry is created (unless `finish_directory`: it exists, and gets its mode and
  // time now), and must be a directory, not a symlink to one.
  static absl::StatusOr<std::unique_ptr<FileWriter>> BeginAt(const v1::FileEntry& entry,
                                                             UniqueFd dir,
                                                             const std::string& name,
                                                             const std::string& dest,
                                                             const std::string& where,
                                                             bool finish_directory) {
    std::unique_ptr<FileWriter> w(new FileWriter(entry, std::move(dir), name, dest, where));
    const int at = w->dir_.get();
    const char* leaf = w->name_.c_str();
    switch (entry.kind()) {
      case v1::FileEntry::DIRECTORY: {
        if (!finish_directory && ::mkdirat(at, leaf, 0700) != 0 && errno != EEXIST) {
          return PathError(errno, "create the directory", dest, where);
        }
        UniqueFd self(::openat(at, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!self.valid()) {
          return PathError(errno == ELOOP ? ENOTDIR : errno, "create the directory", dest, where);
        }
        if (::fchmod(self.get(), entry.mode()) != 0) return PathError(errno, "chmod", dest, where);
        if (finish_directory) {
          struct timespec times[2] = {ToTimespec(entry.mtime_ns()), ToTimespec(entry.mtime_ns())};
          if (::futimens(self.get(), times) != 0) {
            return PathError(errno, "set the time of", dest, where);
          }
        }
        w->MarkCommitted();
        return w;
      }
      case v1::FileEntry::SYMLINK: {
        std::string tmp = w->TempName();
        if (::symlinkat(entry.symlink_target().c_str(), at, tmp.c_str()) != 0) {
          return PathError(errno, "create the symlink", dest, where);
        }
        struct timespec times[2] = {ToTimespec(entry.mtime_ns()), ToTimespec(entry.mtime_ns())};
        ::utimensat(at, tmp.c_str(), times, AT_SYMLINK_NOFOLLOW);
        if (::renameat(at, tmp.c_str(), at, leaf) != 0) {
          int err = errno;
          ::unlinkat(at, tmp.c_str(), 0);
          return PathError(err, "create the symlink", dest, where);
        }
        w->MarkCommitted();
        return w;
      }
      case v1::FileEntry::FILE:
      default: {
        for (int attempt = 0;; ++attempt) {
          std::string tmp = w->TempName();
          int fd = ::openat(at, tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                            0600);
          if (fd < 0 && errno == EEXIST && attempt < 100) continue;
          if (fd < 0) return PathError(errno, "create", dest, where);
          w->fd_.Reset(fd);
          w->temp_ = tmp;
          return w;
        }
      }
    }
  }

  // Writes `entry` at the absolute path `dest`, whose directory is opened by its path.
  static absl::StatusOr<std::unique_ptr<FileWriter>> Begin(const v1::FileEntry& entry,
                                                           const std::string& dest,
                                                           const std::string& where,
                                                           bool finish_directory) {
    std::string name = BaseName(dest);
    std::string parent = DirName(dest);
    if (name == "/" || name.empty()) {  // The root directory itself.
      name = ".";
      parent = "/";
    }
    UniqueFd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dir.valid()) return PathError(errno, "open the directory", parent, where);
    return BeginAt(entry, std::move(dir), name, dest, where, finish_directory);
  }

  ~FileWriter() { Discard(); }

  // Removes the temporary file now, unless committed; later writes and Commit fail.
  void Discard() {
    absl::MutexLock lock(&mu_);
    if (committed_ || discarded_) return;
    discarded_ = true;
    if (!temp_.empty()) ::unlinkat(dir_.get(), temp_.c_str(), 0);
  }

  absl::Status Write(int64_t offset, const std::string& data) {
    {
      absl::MutexLock lock(&mu_);
      if (discarded_) return absl::CancelledError(absl::StrCat("transfer to ", dest_, " dropped"));
    }
    const int64_t start = offset;
    const char* p = data.data();
    size_t left = data.size();
    while (left > 0) {
      ssize_t n = ::pwrite(fd_.get(), p, left, offset);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return PathError(errno, "write", dest_, where_);
      p += n;
      left -= static_cast<size_t>(n);
      offset += n;
    }
    Hash(start, data);
    return absl::OkStatus();
  }

  // Copies the file `src`, opened from `origin` (OpenOrigin), to the temporary file in the
  // kernel (copy_file_range; sendfile where the filesystems refuse it), then checks that the
  // source did not change meanwhile (DATA_LOSS). CANCELLED once Discard ran,
  // DEADLINE_EXCEEDED after `deadline`. `on_step`, when set, is called on this thread with
  // the bytes copied so far, every kCopyStep bytes.
  absl::Status CopyFrom(int src, const v1::Origin& origin,
                        absl::Time deadline = absl::InfiniteFuture(),
                        const std::function<void(int64_t copied)>& on_step = nullptr) {
    const int64_t size = origin.size();
    bool copy_file_range_works = true;
    for (int64_t offset = 0; offset < size;) {
      {
        absl::MutexLock lock(&mu_);
        if (discarded_) return absl::CancelledError(absl::StrCat("transfer to ", dest_, " dropped"));
      }
      if (absl::Now() > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("copy to ", dest_, " in context ", where_, " past its deadline"));
      }
      const size_t step = static_cast<size_t>(std::min(kCopyStep, size - offset));
      ssize_t n;
      if (copy_file_range_works) {
        loff_t in = offset, out = offset;
        n = ::copy_file_range(src, &in, fd_.get(), &out, step, 0);
        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
          copy_file_range_works = false;
          continue;
        }
      } else {
        off_t in = offset;
        n = ::lseek(fd_.get(), offset, SEEK_SET) < 0 ? -1 : ::sendfile(fd_.get(), src, &in, step);
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return PathError(errno, "write", dest_, where_);
      if (n == 0) {
        return absl::DataLossError(absl::StrCat("the source of ", dest_, " in context ", where_,
                                                " shrank while it was copied"));
      }
      offset += n;
      if (on_step) on_step(offset);
    }
    if (!Matches(src, origin)) {
      return absl::DataLossError(absl::StrCat("the source of ", dest_, " in context ", where_,
                                              " changed while it was copied"));
    }
    return absl::OkStatus();
  }

  // Verifies against the entry's SHA-256 (or, when it came without one, `late_sha256`, which
  // came with the last chunk), sets mode and time, renames into place.
  absl::Status Commit(const std::string& late_sha256 = "") {
    absl::MutexLock lock(&mu_);
    if (committed_) return absl::OkStatus();
    if (discarded_) return absl::CancelledError(absl::StrCat("transfer to ", dest_, " dropped"));
    const std::string& expected = entry_.sha256().empty() ? late_sha256 : entry_.sha256();
    absl::StatusOr<std::string> digest;
    if (in_order_ && hashed_ == entry_.size()) {
      digest = sha_.HexDigest();
    } else {
      digest = Sha256Of(fd_.get(), temp_, where_);  // The bytes came out of order.
    }
    if (!digest.ok()) return digest.status();
    if (*digest != expected) {
      return absl::DataLossError(absl::StrCat(dest_, " in context ", where_,
                                              " did not verify: SHA-256 ", *digest, ", expected ",
                                              expected.empty() ? "(none sent)" : expected));
    }
    return Install();
  }

  // Commits what CopyFrom wrote, which nothing carried and so needs no digest.
  absl::Status CommitCopy() {
    absl::MutexLock lock(&mu_);
    if (committed_) return absl::OkStatus();
    if (discarded_) return absl::CancelledError(absl::StrCat("transfer to ", dest_, " dropped"));
    return Install();
  }

 private:
  FileWriter(v1::FileEntry entry, UniqueFd dir, std::string name, std::string dest,
             std::string where)
      : entry_(std::move(entry)),
        dir_(std::move(dir)),
        name_(std::move(name)),
        dest_(std::move(dest)),
        where_(std::move(where)) {}
  // Sets mode and time and renames into place.
  absl::Status Install() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (::fchmod(fd_.get(), entry_.mode()) != 0) return PathError(errno, "chmod", dest_, where_);
    struct timespec times[2] = {ToTimespec(entry_.mtime_ns()), ToTimespec(entry_.mtime_ns())};
    if (::futimens(fd_.get(), times) != 0) return PathError(errno, "set the time of", dest_, where_);
    if (::renameat(dir_.get(), temp_.c_str(), dir_.get(), name_.c_str()) != 0) {
      return PathError(errno, "rename into", dest_, where_);
    }
    committed_ = true;
    return absl::OkStatus();
  }
  void MarkCommitted() {
    absl::MutexLock lock(&mu_);
    committed_ = true;
  }
  // Hashes the file's bytes as they are written, in order: a chunk that comes early waits in
  // ahead_ for the ones before it (a few, as many as a sender keeps in flight); beyond
  // kMaxAhead, Commit reads the file back instead.
  void Hash(int64_t offset, const std::string& data) {
    static constexpr size_t kMaxAhead = size_t{16} << 20;
    absl::MutexLock lock(&mu_);
    if (!in_order_ || data.empty()) return;
    if (offset != hashed_) {
      ahead_bytes_ += data.size();
      ahead_.emplace(offset, data);
      if (ahead_bytes_ > kMaxAhead || offset < hashed_) {
        in_order_ = false;
        ahead_.clear();
      }
      return;
    }
    sha_.Update(data.data(), data.size());
    hashed_ += static_cast<int64_t>(data.size());
    for (auto it = ahead_.begin(); it != ahead_.end() && it->first == hashed_;
         it = ahead_.erase(it)) {
      sha_.Update(it->second.data(), it->second.size());
      hashed_ += static_cast<int64_t>(it->second.size());
      ahead_bytes_ -= it->second.size();
    }
  }
  // A name in dir_ for the entry while it is written.
  std::string TempName() const {
    static std::atomic<uint64_t> counter{0};
    return absl::StrCat(".", name_ == "." ? "root" : name_, ".grove-", ::getpid(), "-",
                        counter.fetch_add(1));
  }

  const v1::FileEntry entry_;
  const UniqueFd dir_;      // The directory the entry goes in.
  const std::string name_;  // Its name there.
  const std::string dest_;
  const std::string where_;
  UniqueFd fd_;         // Set in Begin, then read-only.
  std::string temp_;    // Set in Begin, then read-only.
  absl::Mutex mu_;
  bool committed_ ABSL_GUARDED_BY(mu_) = false;
  bool discarded_ ABSL_GUARDED_BY(mu_) = false;
  Sha256 sha_ ABSL_GUARDED_BY(mu_);            // Of the bytes [0, hashed_).
  int64_t hashed_ ABSL_GUARDED_BY(mu_) = 0;
  bool in_order_ ABSL_GUARDED_BY(mu_) = true;  // False: Commit reads the file back.
  std::map<int64_t, std::string> ahead_ ABSL_GUARDED_BY(mu_);  // Chunks past hashed_.
  size_t ahead_bytes_ ABSL_GUARDED_BY(mu_) = 0;
};


// Checks the listing that context `source` sent for a pull before anything is written: the
// root first (path ""), then entries whose paths are relative, with no empty, "." or ".."
// component, each inside a directory listed before it (never under a symlink or a file). A
// context that lies cannot make the pull write outside its destination.
absl::Status CheckListing(const std::vector<v1::FileEntry>& entries, const std::string& source);

// The directories of a pull's destination, opened without following a symlink anywhere below
// its root. Owns the fds it holds; thread-compatible.
class PullDestination {
 public:
  PullDestination(std::string root, std::string where)
      : root_(std::move(root)), where_(std::move(where)) {}

  // A writer for `entry` (a checked listing's), in the directory it goes in.
  absl::StatusOr<std::unique_ptr<FileWriter>> Begin(const v1::FileEntry& entry,
                                                    bool finish_directory) {
    const std::string dest = Join(root_, entry.path());
    if (entry.path().empty()) return FileWriter::Begin(entry, dest, where_, finish_directory);
    const size_t slash = entry.path().rfind('/');
    const std::string parent = slash == std::string::npos ? "" : entry.path().substr(0, slash);
    absl::StatusOr<UniqueFd> dir = Directory(parent);
    if (!dir.ok()) return dir.status();
    return FileWriter::BeginAt(entry, *std::move(dir), entry.path().substr(slash + 1), dest,
                               where_, finish_directory);
  }

 private:
  // Directory `rel` under the root (a dup the caller owns), walked one component at a time.
  absl::StatusOr<UniqueFd> Directory(const std::string& rel) {
    if (!root_fd_.valid()) {
      root_fd_.Reset(::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!root_fd_.valid()) return PathError(errno, "open the directory", root_, where_);
    }
    if (!last_.valid() || last_rel_ != rel) {
      UniqueFd at(::fcntl(root_fd_.get(), F_DUPFD_CLOEXEC, 0));
      if (!rel.empty()) {
        for (absl::string_view part : absl::StrSplit(rel, '/')) {
          UniqueFd next(::openat(at.get(), std::string(part).c_str(),
                                 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
          if (!next.valid()) {
            return PathError(errno == ELOOP ? ENOTDIR : errno, "open the directory",
                             Join(root_, rel), where_);
          }
          at = std::move(next);
        }
      }
      last_ = std::move(at);
      last_rel_ = rel;
    }
    UniqueFd dup(::fcntl(last_.get(), F_DUPFD_CLOEXEC, 0));
    if (!dup.valid()) return PathError(errno, "open the directory", Join(root_, rel), where_);
    return dup;
  }

  const std::string root_;
  const std::string where_;
  UniqueFd root_fd_;
  UniqueFd last_;  // Directory last_rel_, the last one asked for.
  std::string last_rel_;
};


}  // namespace grove::files_internal

#endif  // GROVE_FILES_FILE_WRITER_H_
