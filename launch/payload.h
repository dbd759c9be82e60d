// The travelling agent: this very program, read from /proc/self/exe, named by its SHA-256 and
// compressed (zstd or gzip) for the wire. Remote contexts run exactly this file, so every function
// registered in main() exists there too.
#ifndef GROVE_LAUNCH_PAYLOAD_H_
#define GROVE_LAUNCH_PAYLOAD_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace grove {

struct Payload {
  std::string sha256;  // Hex digest of the executable.
  size_t size = 0;     // Bytes of the executable.
  std::string bytes;   // The executable.
};

// This program's payload, read and hashed once per process (thread-safe) and kept.
absl::StatusOr<const Payload*> ThisProgram();

// How the program travels: zstd where the target has a `zstd` command (decompresses ~3x
// faster than gzip, and compresses ~2.5x faster here), gzip everywhere else.
enum class Codec { kGzip, kZstd };

// This program compressed with `codec`, made on first use and kept; also kept on disk as
// $HOME/.cache/grove/<sha256>.gz or .zst (0700 dir) for the next run of the same build, and
// read back from there when it is of this program (gzip: its trailer's CRC and size; zstd:
// its frame's content size; the target verifies the digest in any case). Thread-safe.
absl::StatusOr<const std::string*> CompressedProgram(Codec codec);

// Starts making the zstd compression on a thread of its own, once per process, so that the
// first upload does not wait for it (~140 ms of CPU, which overlaps the ssh handshake); the
// gzip one, for targets without zstd, is made when one asks. Returns at once. Thread-safe.
void PrepareCompressedProgram();

// `FILE --grove-verify=SHA256` hashes the executable it runs from (OpenSSL, several times
// faster than sha256sum) and exits 0 only when it is the file with that digest: for checking
// a cache by hand (the first stage has the agent check itself, kExpectFlag).
inline constexpr char kVerifyFlag[] = "--grove-verify=";
// Exit status of a --grove-verify run: 0 when /proc/self/exe has digest `sha256`, 1 if not.
int VerifySelf(const char* sha256);

// Agent flags the first stage adds: the agent hashes its own executable before anything else
// and runs only when it has this digest. Otherwise it exits kStaleAgentExit (a cached copy:
// the first stage then uploads a fresh one) or, with kUploadedFlag, prints kFailMarker and
// exits 1 (a fresh upload that does not verify is final).
inline constexpr char kExpectFlag[] = "--grove-expect";
inline constexpr char kUploadedFlag[] = "--grove-uploaded";
inline constexpr int kStaleAgentExit = 86;

// The size of the pieces an upload is sent in (see FirstStage).
inline constexpr size_t kUploadChunk = size_t{1} << 20;

// Programs (builds) a cache keeps; older ones are removed when a new one arrives.
inline constexpr int kKeptBuilds = 4;

// The first stage: a POSIX sh program that runs `<cache>/<sha256>` with `agent_args` if it
// is there (the agent checks its own digest, kExpectFlag; the shell waits, and goes on to the
// upload if the copy is stale), and otherwise prints kZstdMarker (when the target has `zstd`)
// or kNeedMarker, reads a line with the compressed size and then exactly that many bytes from
// stdin, decompresses, renames into the cache atomically and execs it (which verifies itself
// before it does anything else). The bytes come in kUploadChunk pieces: after each but the
// last, the first stage prints kMoreMarker and the launcher sends the next one. So sshd never
// holds more than one piece for the shell: with its whole 2 MB channel window queued up,
// OpenSSH's sshd spends ~200 ms growing and moving that buffer (measured on loopback: a 4 MB
// upload took 216-300 ms unpaced, 64-85 ms in 1 MiB pieces). One piece at a time also keeps
// the protocol exact with any `head`, including ones that read ahead through stdio.
// After an upload, it removes the cache's other programs (files named by a digest) beyond the
// kKeptBuilds most recently modified; the master does the same with its compressions.
// `cache_dir` empty means "$HOME/.cache/grove", falling back to "${TMPDIR:-/tmp}/grove-$uid"
// when that is not writable.
std::string FirstStage(const Payload& payload, const std::string& cache_dir,
                       const std::vector<std::string>& agent_args);

// 8-byte markers the first stage and the agent print on stdout. Nothing else a shell, ssh or
// sudo prints contains them.
inline constexpr char kNeedMarker[] = "GRV1NEED";  // Send the payload now, gzip.
inline constexpr char kZstdMarker[] = "GRV1ZSTD";  // Send the payload now, zstd.
inline constexpr char kMoreMarker[] = "GRV1MORE";  // Send the next piece of the upload.
inline constexpr char kBootMarker[] = "GRV1BOOT";  // The agent runs; gRPC follows.
inline constexpr char kFailMarker[] = "GRV1FAIL";  // The upload did not verify.
inline constexpr char kArchMarker[] = "GRV1ARCH";  // Wrong machine; `uname -m` follows.
inline constexpr size_t kMarkerSize = 8;

// Quotes `s` for a POSIX shell: 'it'\''s'.
std::string ShellQuote(const std::string& s);

}  // namespace grove

#endif  // GROVE_LAUNCH_PAYLOAD_H_
