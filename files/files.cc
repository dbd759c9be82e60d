#include "files/files.h"

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
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/fd.h"
#include "common/printable.h"
#include "common/sha256.h"
#include "common/status_util.h"
#include "proto/builtins.pb.h"
#include "proto/files.pb.h"
#include "router/context.h"

namespace grove {
namespace {

constexpr int kMaxDepth = 4096;
constexpr int64_t kMaxChunk = int64_t{4} << 20;
// A kernel copy is done in steps of this many bytes: between two, it checks for a
// cancellation and its deadline, and reports its progress.
constexpr int64_t kCopyStep = int64_t{16} << 20;

// "cannot create /x/y in context web1: Permission denied", with the errno's canonical code.
absl::Status PathError(int err, absl::string_view what, const std::string& path,
                       const std::string& where) {
  absl::Status base = ErrnoStatus(err, "");
  return absl::Status(base.code(), absl::StrCat("cannot ", what, " ", path, " in context ",
                                                where, base.message()));
}

// SHA-256 of the bytes of the open file `fd` (`path` and `where` name it in errors).
absl::StatusOr<std::string> Sha256Of(int fd, const std::string& path, const std::string& where) {
  Sha256 sha;
  std::string buffer(1 << 20, '\0');
  for (int64_t offset = 0;;) {
    ssize_t n = ::pread(fd, buffer.data(), buffer.size(), offset);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return PathError(errno, "read", path, where);
    if (n == 0) break;
    sha.Update(buffer.data(), static_cast<size_t>(n));
    offset += n;
  }
  return sha.HexDigest();
}

std::string Join(const std::string& dir, const std::string& rel) {
  if (rel.empty()) return dir;
  if (!dir.empty() && dir.back() == '/') return dir + rel;
  return absl::StrCat(dir, "/", rel);
}

std::string BaseName(std::string path) {
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

int64_t MtimeNs(const struct stat& st) {
  return int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
}

int64_t CtimeNs(const struct stat& st) {
  return int64_t{st.st_ctim.tv_sec} * 1000000000 + st.st_ctim.tv_nsec;
}

// This kernel's boot id ("" if unreadable: no kernel copies then).
const std::string& BootId() {
  static const std::string* id = [] {
    std::string line;
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::getline(in, line);
    return new std::string(line);
  }();
  return *id;
}

// Where a context on this host can open the regular file `fd` of this process
// (grove.file_copy, grove.file_hold).
absl::StatusOr<v1::Origin> OriginOf(int fd, const std::string& path, const std::string& where) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return PathError(errno, "read", path, where);
  if (!S_ISREG(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path, " in context ", where, " is not a regular file"));
  }
  v1::Origin origin;
  origin.set_boot_id(BootId());
  origin.set_pid(::getpid());
  origin.set_fd(fd);
  origin.set_dev(st.st_dev);
  origin.set_ino(st.st_ino);
  origin.set_size(st.st_size);
  origin.set_ctime_ns(CtimeNs(st));
  return origin;
}

// True if the open file `fd` is still the one `origin` describes, unchanged.
bool Matches(int fd, const v1::Origin& origin) {
  struct stat st;
  return ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == origin.dev() &&
         st.st_ino == origin.ino() && st.st_size == origin.size() &&
         CtimeNs(st) == origin.ctime_ns();
}

// The sender's file named by `origin`, opened through /proc; invalid when this context cannot
// open it (another host, user or pid namespace) or it is no longer that file, unchanged.
UniqueFd OpenOrigin(const v1::Origin& origin) {
  if (origin.boot_id().empty() || origin.boot_id() != BootId() || origin.pid() <= 0 ||
      origin.fd() < 0) {
    return UniqueFd();
  }
  // O_NONBLOCK: a fifo must not hold the open; it fails the check below.
  UniqueFd fd(::open(absl::StrCat("/proc/", origin.pid(), "/fd/", origin.fd()).c_str(),
                     O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid() || !Matches(fd.get(), origin)) return UniqueFd();
  return fd;
}

struct timespec ToTimespec(int64_t ns) {
  struct timespec t;
  t.tv_sec = ns / 1000000000;
  t.tv_nsec = ns % 1000000000;
  return t;
}

// The entries under `root` (itself first, then pre-order), files with their SHA-256 when
// `hash` (otherwise empty files only: a push hashes the others while it sends them).
absl::Status Scan(const std::string& root, const std::string& rel, bool recursive, bool hash,
                  int depth, const std::string& where, std::vector<v1::FileEntry>* out) {
  const std::string path = Join(root, rel);
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return PathError(errno, "read", path, where);
  v1::FileEntry entry;
  entry.set_path(rel);
  entry.set_mode(st.st_mode & 07777);
  entry.set_mtime_ns(MtimeNs(st));
  if (S_ISLNK(st.st_mode)) {
    std::string target(4096, '\0');
    ssize_t n = ::readlink(path.c_str(), target.data(), target.size());
    if (n < 0) return PathError(errno, "read the symlink", path, where);
    target.resize(static_cast<size_t>(n));
    entry.set_kind(v1::FileEntry::SYMLINK);
    entry.set_symlink_target(target);
    out->push_back(std::move(entry));
    return absl::OkStatus();
  }
  if (S_ISREG(st.st_mode)) {
    // Opened even when not hashed: an unreadable file fails the scan, before anything is sent.
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return PathError(errno, "read", path, where);
    entry.set_kind(v1::FileEntry::FILE);
    entry.set_size(st.st_size);
    if (hash || st.st_size == 0) {
      absl::StatusOr<std::string> digest = Sha256Of(fd.get(), path, where);
      if (!digest.ok()) return digest.status();
      entry.set_sha256(*digest);
    }
    out->push_back(std::move(entry));
    return absl::OkStatus();
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, " in context ", where, " is not a regular file, directory or symlink"));
  }
  if (!recursive) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " in context ", where, " is a directory (copy it with recursive)"));
  }
  if (depth > kMaxDepth) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": directories nest too deep"));
  }
  entry.set_kind(v1::FileEntry::DIRECTORY);
  out->push_back(std::move(entry));
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), ::closedir);
  if (dir == nullptr) return PathError(errno, "list", path, where);
  std::vector<std::string> names;
  for (struct dirent* e; (e = ::readdir(dir.get())) != nullptr;) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(std::move(name));
  }
  std::sort(names.begin(), names.end());
  for (const std::string& name : names) {
    const std::string child = rel.empty() ? name : absl::StrCat(rel, "/", name);
    if (absl::Status s = Scan(root, child, true, hash, depth + 1, where, out); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

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
  }

  ~Fanout() {
    // Finish() was not reached (an error on our side): stop the receivers.
    for (auto& group : groups_) group->cancel.Cancel();
    WaitForChunks();
    for (auto& group : groups_) {
      if (group->receive.valid()) group->receive.wait();
    }
  }

  bool empty() const { return groups_.empty(); }

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
  std::vector<TargetResult> early_;
  mutable absl::Mutex mu_;
};

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

// A transfer's progress, passed to TransferOptions::progress on the transferring thread. It
// never goes back: a push whose kernel copies got part way before a target asked for the bytes
// streams that file from its start, and is reported again only past where the copies were.
// Thread-compatible.
class Progress {
 public:
  Progress(const TransferOptions& options, int64_t total) : options_(options), total_(total) {
    if (options_.progress) options_.progress(0, total_);
  }
  void Report(int64_t done) {
    if (done <= shown_ || !options_.progress) return;
    shown_ = done;
    options_.progress(done, total_);
  }

 private:
  const TransferOptions& options_;
  const int64_t total_;
  int64_t shown_ = 0;
};

int64_t TotalBytes(const std::vector<v1::FileEntry>& entries) {
  int64_t total = 0;
  for (const v1::FileEntry& e : entries) total += e.kind() == v1::FileEntry::FILE ? e.size() : 0;
  return total;
}

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

}  // namespace

bool TransferSummary::ok() const {
  for (const TargetResult& r : results) {
    if (!r.status.ok()) return false;
  }
  return true;
}

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

absl::StatusOr<TransferSummary> PushFiles(Router& router, const std::vector<ContextId>& targets,
                                          const std::string& src, const std::string& dest,
                                          const TransferOptions& options) {
  if (dest.empty() || dest[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("push: '", dest, "' is not an absolute path"));
  }
  std::vector<v1::FileEntry> entries;
  absl::Status scanned = Scan(src, "", options.recursive, /*hash=*/false, 0, router.name(),
                              &entries);
  if (!scanned.ok()) return scanned;
  TransferSummary summary;
  summary.entries = static_cast<int64_t>(entries.size());
  // Where the copy goes in each target: inside `dest` when that is a directory there.
  std::map<std::string, std::vector<uint64_t>> by_root;
  {
    std::vector<std::future<absl::StatusOr<v1::StatReply>>> stats;
    v1::StatRequest stat;
    stat.set_path(dest);
    for (ContextId t : targets) {
      stats.push_back(Context(&router, t, "").CallAsync<v1::StatReply>("grove.file_stat", stat,
                                                                      options.call));
    }
    for (size_t i = 0; i < targets.size(); ++i) {
      absl::StatusOr<v1::StatReply> st = stats[i].get();
      if (!st.ok()) {
        summary.results.push_back({targets[i], st.status()});
        continue;
      }
      std::string root = st->is_directory() ? Join(dest, BaseName(src)) : dest;
      by_root[root].push_back(targets[i].value());
    }
  }
  const int64_t total = TotalBytes(entries) * static_cast<int64_t>(by_root.size());
  int64_t done = 0;
  Progress progress(options, total);
  const uint64_t self = router.id().value();
  std::set<uint64_t> streamed;  // Targets that cannot copy in the kernel (grove.file_copy).
  for (auto& [root, group] : by_root) {
    std::vector<uint64_t> live = group;
    auto drop_failed = [&summary, &live](std::vector<TargetResult> results) {
      for (TargetResult& r : results) {
        if (r.status.ok()) continue;
        live.erase(std::remove(live.begin(), live.end(), r.id.value()), live.end());
        summary.results.push_back(std::move(r));
      }
    };
    for (const v1::FileEntry& entry : entries) {
      if (live.empty()) break;
      const std::string path = Join(root, entry.path());
      const bool has_bytes = entry.kind() == v1::FileEntry::FILE && entry.size() > 0;
      const std::string local = Join(src, entry.path());
      UniqueFd fd;
      std::vector<uint64_t> stream = live;
      if (has_bytes) {
        fd.Reset(::open(local.c_str(), O_RDONLY | O_CLOEXEC));
        if (!fd.valid()) return PathError(errno, "read", local, router.name());
      }
      if (has_bytes && options.kernel_copy) {
        // Every target that can copies in the kernel, all at once; the rest get the bytes.
        absl::StatusOr<v1::Origin> origin = OriginOf(fd.get(), local, router.name());
        if (!origin.ok()) return origin.status();
        v1::CopyRequest copy;
        copy.set_dest(path);
        *copy.mutable_entry() = entry;
        *copy.mutable_origin() = *origin;
        stream.clear();
        std::vector<uint64_t> copying;
        for (uint64_t t : live) {
          (t == self || streamed.count(t) != 0 ? stream : copying).push_back(t);
        }
        std::vector<TargetResult> failed;
        for (auto& [t, reply] : KernelCopies(router, copying, copy, options.call,
                                             [&](int64_t least) {
                                               progress.Report(done + least);
                                             })) {
          if (!reply.ok()) {
            failed.push_back({ContextId(t), reply.status()});
          } else if (!reply->copied()) {
            streamed.insert(t);
            stream.push_back(t);
          }
        }
        drop_failed(std::move(failed));
        if (stream.empty()) {
          summary.bytes += entry.size();
          done += entry.size();
          progress.Report(done);
          continue;
        }
      }
      Fanout fanout(router, stream, options, options.call.parent);
      fanout.Open(entry, path, false);
      if (has_bytes) {
        std::string buffer;
        Sha256 sha;  // Sent with the last chunk (the entry went without it: see Scan).
        for (int64_t offset = 0; offset < entry.size();) {
          buffer.resize(static_cast<size_t>(std::min(options.chunk_bytes, entry.size() - offset)));
          ssize_t n = ::pread(fd.get(), buffer.data(), buffer.size(), offset);
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) {
            return n == 0 ? absl::DataLossError(absl::StrCat(local, " shrank while it was sent"))
                          : PathError(errno, "read", local, router.name());
          }
          buffer.resize(static_cast<size_t>(n));
          sha.Update(buffer.data(), buffer.size());
          const bool last = offset + n == entry.size();
          if (fanout.Write(offset, buffer, last ? sha.HexDigest() : "") == 0) break;
          offset += n;
          summary.bytes += n;
          done += n;
          progress.Report(done);
        }
      }
      drop_failed(fanout.Finish());
    }
    // Directories get their times once their contents are in place, deepest first.
    for (auto it = entries.rbegin(); it != entries.rend() && !live.empty(); ++it) {
      if (it->kind() != v1::FileEntry::DIRECTORY) continue;
      Fanout fanout(router, live, options, options.call.parent);
      fanout.Open(*it, Join(root, it->path()), true);
      drop_failed(fanout.Finish());
    }
    for (uint64_t t : live) summary.results.push_back({ContextId(t), absl::OkStatus()});
  }
  return summary;
}

absl::StatusOr<TransferSummary> PullFiles(Router& router, ContextId from, const std::string& src,
                                          const std::string& dest, const TransferOptions& options) {
  Context remote(&router, from, "");
  v1::ListRequest list;
  list.set_path(src);
  list.set_recursive(options.recursive);
  list.set_without_digests(options.kernel_copy);  // Asked for once a file must be streamed.
  absl::StatusOr<v1::ListReply> listed =
      remote.Call<v1::ListReply>("grove.file_list", list, options.call);
  if (!listed.ok()) return listed.status();
  bool stream = !options.kernel_copy;
  std::map<std::string, std::string> digests;  // By entry path, once streaming.
  struct stat st;
  const std::string root =
      ::stat(dest.c_str(), &st) == 0 && S_ISDIR(st.st_mode) ? Join(dest, BaseName(src)) : dest;
  const std::string where = router.name();
  std::vector<v1::FileEntry> entries(listed->entries().begin(), listed->entries().end());
  std::optional<ContextRecord> source = router.registry().Find(from);
  if (absl::Status checked =
          CheckListing(entries, source.has_value() ? source->name : absl::StrCat(from.value()));
      !checked.ok()) {
    return checked;
  }
  PullDestination destination(root, where);
  TransferSummary summary;
  summary.entries = static_cast<int64_t>(entries.size());
  Progress progress(options, TotalBytes(entries));
  auto fail = [&summary, from](absl::Status status) {
    summary.results.push_back({from, std::move(status)});
    return summary;
  };
  for (const v1::FileEntry& entry : entries) {
    absl::StatusOr<std::unique_ptr<FileWriter>> writer = destination.Begin(entry, false);
    if (!writer.ok()) return fail(writer.status());
    if (entry.kind() != v1::FileEntry::FILE) continue;
    if (!stream && entry.size() > 0) {
      absl::StatusOr<bool> copied =
          CopyHeldFile(router, from, Join(src, entry.path()), entry.size(), **writer, options.call,
                       [&](int64_t n) { progress.Report(summary.bytes + n); });
      absl::Status committed = copied.ok() && *copied ? (*writer)->CommitCopy() : copied.status();
      if (!committed.ok()) return fail(committed);  // The writer removes its temporary file.
      if (*copied) {
        summary.bytes += entry.size();
        progress.Report(summary.bytes);
        continue;
      }
      // This context cannot open the files there: stream this one and the rest, with digests.
      stream = true;
      list.set_without_digests(false);
      absl::StatusOr<v1::ListReply> again =
          remote.Call<v1::ListReply>("grove.file_list", list, options.call);
      if (!again.ok()) return fail(again.status());
      for (const v1::FileEntry& e : again->entries()) digests[e.path()] = e.sha256();
    }
    // Reads with `window` chunks in flight; each reply is written at its offset.
    std::vector<std::pair<int64_t, std::future<absl::StatusOr<v1::ReadReply>>>> in_flight;
    absl::Status failed;
    int64_t next = 0;
    auto collect_one = [&]() {
      auto [offset, future] = std::move(in_flight.front());
      in_flight.erase(in_flight.begin());
      absl::StatusOr<v1::ReadReply> reply = future.get();
      if (!reply.ok()) {
        if (failed.ok()) failed = reply.status();
        return;
      }
      if (failed.ok()) failed = (*writer)->Write(offset, reply->data());
      summary.bytes += static_cast<int64_t>(reply->data().size());
      progress.Report(summary.bytes);
    };
    while (next < entry.size() && failed.ok()) {
      while (static_cast<int>(in_flight.size()) >= options.window) collect_one();
      v1::ReadRequest read;
      read.set_path(Join(src, entry.path()));
      read.set_offset(next);
      read.set_length(std::min(options.chunk_bytes, entry.size() - next));
      in_flight.emplace_back(next, remote.CallAsync<v1::ReadReply>("grove.file_read", read,
                                                                  options.call));
      next += read.length();
    }
    while (!in_flight.empty()) collect_one();
    if (failed.ok()) failed = (*writer)->Commit(digests[entry.path()]);
    if (!failed.ok()) return fail(failed);  // The writer removes its temporary file.
  }
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) {
    if (it->kind() != v1::FileEntry::DIRECTORY) continue;
    absl::StatusOr<std::unique_ptr<FileWriter>> done = destination.Begin(*it, true);
    if (!done.ok()) return fail(done.status());
  }
  summary.results.push_back({from, absl::OkStatus()});
  return summary;
}

Component FilesComponent() {
  return [](Router& router, Functions& builtins) { RegisterFileFunctions(&router, &builtins); };
}

}  // namespace grove
