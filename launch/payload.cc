#include "launch/payload.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sys/utsname.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/call_once.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/fd.h"
#include "common/sha256.h"

namespace grove {
namespace {

absl::StatusOr<std::string> Gzip(const std::string& data) {
  z_stream z = {};
  // windowBits 15 + 16: a gzip header, which `gzip -dc` reads.
  if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    return absl::InternalError("deflateInit2 failed");
  }
  std::string out(deflateBound(&z, data.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  int r = deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  if (r != Z_STREAM_END) return absl::InternalError("deflate did not finish");
  return out;
}

// zstd level 3: 16 MB in ~140 ms here (gzip -1: ~350 ms), a smaller result than gzip -1.
absl::StatusOr<std::string> Zstd(const std::string& data) {
  std::string out(ZSTD_compressBound(data.size()), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), data.data(), data.size(), 3);
  if (ZSTD_isError(n)) return absl::InternalError(absl::StrCat("zstd: ", ZSTD_getErrorName(n)));
  out.resize(n);
  return out;
}

uint32_t LittleEndian32(const std::string& s, size_t at) {
  return static_cast<uint32_t>(static_cast<unsigned char>(s[at])) |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 1])) << 8 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 2])) << 16 |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 3])) << 24;
}

// Whether `gz` is a one-member gzip whose trailer (CRC-32 and size) matches `data`.
bool IsGzipOf(const std::string& gz, const std::string& data) {
  if (gz.size() < 18 || gz[0] != '\x1f' || gz[1] != '\x8b') return false;
  uLong crc = crc32(0L, Z_NULL, 0);
  crc = crc32(crc, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size()));
  return LittleEndian32(gz, gz.size() - 8) == static_cast<uint32_t>(crc) &&
         LittleEndian32(gz, gz.size() - 4) == static_cast<uint32_t>(data.size());
}

// Whether `zst` is one zstd frame that says it holds data.size() bytes.
bool IsZstdOf(const std::string& zst, const std::string& data) {
  return ZSTD_findFrameCompressedSize(zst.data(), zst.size()) == zst.size() &&
         ZSTD_getFrameContentSize(zst.data(), zst.size()) == data.size();
}

// The file name suffix of a compressed payload kept on disk.
const char* Suffix(Codec codec) { return codec == Codec::kZstd ? ".zst" : ".gz"; }

// Where this build's compressed payload is kept between runs: under $HOME/.cache/grove
// (0700), or "" without a home.
std::string LocalPayloadCache(const Payload& payload, Codec codec) {
  const char* home = ::getenv("HOME");
  if (home == nullptr || *home == '\0') return "";
  std::string dir = absl::StrCat(home, "/.cache");
  ::mkdir(dir.c_str(), 0700);
  dir += "/grove";
  ::mkdir(dir.c_str(), 0700);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
    return "";  // Not ours, or not private: do not trust what is there.
  }
  return absl::StrCat(dir, "/", payload.sha256, Suffix(codec));
}

// Reads a whole file with read(2) into a string sized from fstat: iostreams take 77 ms
// for this 12 MB program, this 3 ms.
bool ReadFile(const std::string& path, std::string* out) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st;
  if (!fd.valid() || ::fstat(fd.get(), &st) != 0) return false;
  out->resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < out->size()) {
    ssize_t n = ::read(fd.get(), out->data() + done, out->size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  out->resize(done);
  return done == static_cast<size_t>(st.st_size);
}

// Writes under a temporary name and renames, so a reader never sees a partial file.
void KeepFile(const std::string& path, const std::string& data) {
  std::string tmp = absl::StrCat(path, ".", ::getpid(), ".tmp");
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd.valid()) return;
  if (!WriteAll(fd.get(), data.data(), data.size()).ok() || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
  }
}

// Whether `name` is a program's digest (64 lowercase hex digits) followed by `suffix`.
bool IsPayloadName(absl::string_view name, absl::string_view suffix) {
  if (name.size() != 64 + suffix.size() || !absl::EndsWith(name, suffix)) return false;
  return std::all_of(name.begin(), name.begin() + 64,
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// Removes all but the `keep` most recently modified "<sha256><suffix>" files of `dir` (other
// builds' compressions; a developer's machine makes one per build).
void EvictOldPayloads(const std::string& dir, absl::string_view suffix, size_t keep) {
  std::vector<std::pair<int64_t, std::string>> found;  // mtime (ns), name
  if (DIR* d = ::opendir(dir.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      struct stat st;
      if (IsPayloadName(e->d_name, suffix) &&
          ::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
        found.emplace_back(int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec, e->d_name);
      }
    }
    ::closedir(d);
  }
  if (found.size() <= keep) return;
  std::sort(found.begin(), found.end(), std::greater<>());
  for (size_t i = keep; i < found.size(); ++i) {
    ::unlink(absl::StrCat(dir, "/", found[i].second).c_str());
  }
}

}  // namespace

int VerifySelf(const char* sha256) {
  UniqueFd fd(::open("/proc/self/exe", O_RDONLY | O_CLOEXEC));
  struct stat st;
  if (!fd.valid() || ::fstat(fd.get(), &st) != 0 || st.st_size == 0) return 1;
  void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd.get(), 0);
  if (map == MAP_FAILED) return 1;
  Sha256 sha;
  sha.Update(map, static_cast<size_t>(st.st_size));
  ::munmap(map, static_cast<size_t>(st.st_size));
  return sha.HexDigest() == sha256 ? 0 : 1;
}

absl::StatusOr<const Payload*> ThisProgram() {
  static absl::once_flag once;
  static absl::StatusOr<Payload>* payload = nullptr;
  absl::call_once(once, [] {
    std::string exe;
    if (!ReadFile("/proc/self/exe", &exe) || exe.empty()) {
      payload = new absl::StatusOr<Payload>(
          absl::InternalError("cannot read this program from /proc/self/exe"));
      return;
    }
    Payload p;
    p.sha256 = Sha256::Hex(exe);
    p.size = exe.size();
    p.bytes = std::move(exe);
    payload = new absl::StatusOr<Payload>(std::move(p));
  });
  if (!payload->ok()) return payload->status();
  return &**payload;
}

absl::StatusOr<const std::string*> CompressedProgram(Codec codec) {
  static absl::once_flag once[2];
  static absl::StatusOr<std::string>* compressed[2] = {nullptr, nullptr};
  const int i = codec == Codec::kZstd ? 1 : 0;
  absl::call_once(once[i], [codec, i] {
    absl::StatusOr<const Payload*> payload = ThisProgram();
    if (!payload.ok()) {
      compressed[i] = new absl::StatusOr<std::string>(payload.status());
      return;
    }
    const std::string& bytes = (*payload)->bytes;
    const std::string path = LocalPayloadCache(**payload, codec);
    std::string kept;
    if (!path.empty() && ReadFile(path, &kept) &&
        (codec == Codec::kZstd ? IsZstdOf(kept, bytes) : IsGzipOf(kept, bytes))) {
      compressed[i] = new absl::StatusOr<std::string>(std::move(kept));
      return;
    }
    compressed[i] = new absl::StatusOr<std::string>(codec == Codec::kZstd ? Zstd(bytes)
                                                                          : Gzip(bytes));
    if (compressed[i]->ok() && !path.empty()) {
      KeepFile(path, **compressed[i]);
      EvictOldPayloads(path.substr(0, path.rfind('/')), Suffix(codec), kKeptBuilds);
    }
  });
  if (!compressed[i]->ok()) return compressed[i]->status();
  return &**compressed[i];
}

void PrepareCompressedProgram() {
  static absl::once_flag once;
  absl::call_once(once, [] {
    // Detached: it ends on its own within a second, and a program that exits before then
    // loses nothing (the results are kept only once complete).
    std::thread([] {
      ::pthread_setname_np(::pthread_self(), "grove-compress");
      CompressedProgram(Codec::kZstd).IgnoreError();
    }).detach();
  });
}

std::string ShellQuote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

namespace {

// The shell word for the cache directory: $HOME/.cache/grove by default; a leading "~/"
// means the target user's home, as in a shell (quoted, "~" would be a directory named so).
std::string CacheDirWord(const std::string& cache_dir) {
  if (cache_dir.empty()) return "\"$HOME/.cache/grove\"";
  if (cache_dir == "~") return "\"$HOME\"";
  if (absl::StartsWith(cache_dir, "~/")) return "\"$HOME\"/" + ShellQuote(cache_dir.substr(2));
  return ShellQuote(cache_dir);
}

}  // namespace

std::string FirstStage(const Payload& payload, const std::string& cache_dir,
                       const std::vector<std::string>& agent_args) {
  struct utsname u;
  ::uname(&u);
  std::vector<std::string> quoted;
  for (const std::string& a : agent_args) quoted.push_back(ShellQuote(a));
  const std::string args = absl::StrJoin(quoted, " ");
  // POSIX sh only. Each step is checked; any failure prints a marker the parent recognises.
  // A cached agent runs as the shell's child, not through exec, so that a stale copy (the
  // agent's own digest check fails: kStaleAgentExit) falls through to the upload; any other
  // exit of the agent ends the shell with it. A fresh upload is exec'd: it checks itself too.
  // Each marker split by an empty quoted string ("GRV1''ARCH"): sh prints it whole, but the
  // script's own text never holds it, so that a command that echoes its input (not a shell)
  // is not taken for a target that printed a marker.
  auto m = [](absl::string_view marker) {
    return absl::StrCat(marker.substr(0, 4), "''", marker.substr(4));
  };
  const std::string expect = absl::StrCat(kExpectFlag, "=$h");
  return absl::StrCat(
      "umask 077;h=", payload.sha256, ";",
      "[ \"`uname -m`\" = ", ShellQuote(u.machine), " ] || { printf '", m(kArchMarker),
      "%s\\n' \"`uname -m`\";exit 1;};",
      "d=", CacheDirWord(cache_dir), ";",
      "if ! { mkdir -p \"$d\" 2>/dev/null&&[ -w \"$d\" ];};then d=\"${TMPDIR:-/tmp}/grove-`id -u`\";"
      "mkdir -p \"$d\"||exit 1;fi;",
      // The cache must be ours and private: refused otherwise.
      "[ -h \"$d\" ]&&{ printf '", m(kFailMarker), "cache %s is a symlink\\n' \"$d\";exit 1;};",
      "[ -O \"$d\" ]||{ printf '", m(kFailMarker), "cache %s is not owned by this user\\n' \"$d\";exit 1;};",
      "chmod 700 \"$d\";f=\"$d/$h\";",
      "if [ -x \"$f\" ];then \"$f\" ", args, " ", expect, ";s=$?;[ $s = ", kStaleAgentExit,
      " ]||exit $s;fi;",
      "t=`mktemp \"$d/.$h.XXXXXX\"`||exit 1;",
      "if command -v zstd >/dev/null 2>&1;then printf ", m(kZstdMarker), ";c='zstd -dcq';",
      "else printf ", m(kNeedMarker), ";c='gzip -dc';fi;read n||exit 1;",
      // All but the last piece, each followed by a request for the next (on fd 3: the
      // shell's own stdout, while the pieces go down the pipe).
      "if { { i=$n;while [ $i -gt ", kUploadChunk, " ];do head -c ", kUploadChunk,
      "||exit 1;printf ", m(kMoreMarker), ">&3;i=$((i-", kUploadChunk, "));done;head -c $i;}",
      "|$c>\"$t\";} 3>&1&&chmod 700 \"$t\"&&mv -f \"$t\" \"$f\";then ",
      // Other builds beyond the newest kKeptBuilds go (only files named like a digest:
      // cache_dir may be a directory with other files in it).
      "ls -t \"$d\"|{ i=0;while read o;do case $o in *[!0-9a-f]*)continue;;esac;",
      "[ ${#o} = 64 ]||continue;i=$((i+1));[ $i -le ", kKeptBuilds, " ]||[ $o = $h ]||",
      "rm -f \"$d/$o\";done;};",
      "exec \"$f\" ", args, " ", expect, " ", kUploadedFlag, ";fi;",
      "rm -f \"$t\";printf '", m(kFailMarker), "upload did not arrive whole\\n';exit 1");
}

}  // namespace grove
