// The travelling agent: this very program, read from /proc/self/exe, named by its SHA-256 and
// compressed (gzip) for the wire. Remote contexts run exactly this file, so every function
// registered in main() exists there too.
#ifndef GROVE_LAUNCH_PAYLOAD_H_
#define GROVE_LAUNCH_PAYLOAD_H_

#include <string>

#include "absl/status/statusor.h"

namespace grove {

struct Payload {
  std::string sha256;  // Hex digest of the executable.
  size_t size = 0;     // Bytes of the executable.
  std::string bytes;   // The executable.
};

// This program's payload, read and hashed once per process (thread-safe) and kept.
absl::StatusOr<const Payload*> ThisProgram();

// The gzip of this program, made on first use (the first upload) and kept; also kept on disk
// as $HOME/.cache/grove/<sha256>.gz (0700 dir) for the next run of the same build, and read
// back from there when its gzip trailer matches this program. Thread-safe.
absl::StatusOr<const std::string*> CompressedProgram();

// Hex SHA-256 of `data`.
std::string Sha256Hex(const std::string& data);

// The first stage runs a cached (or just uploaded) agent as `FILE --grove-verify=SHA256`
// before it execs it: the program hashes its own executable (OpenSSL, several times faster
// than sha256sum) and exits 0 only when it is the file with that digest.
inline constexpr char kVerifyFlag[] = "--grove-verify=";
// Exit status of a --grove-verify run: 0 when /proc/self/exe has digest `sha256`, 1 if not.
int VerifySelf(const char* sha256);

// The first stage: a POSIX sh program that execs `<cache>/<sha256>` with `agent_args` if it
// is there and verifies, and otherwise prints kNeedMarker, reads a line with the compressed
// size and then exactly that many bytes from stdin, decompresses, verifies, renames into the
// cache atomically and execs it.
// `cache_dir` empty means "$HOME/.cache/grove", falling back to "${TMPDIR:-/tmp}/grove-$uid"
// when that is not writable.
std::string FirstStage(const Payload& payload, const std::string& cache_dir,
                       const std::vector<std::string>& agent_args);

// 8-byte markers the first stage and the agent print on stdout. Nothing else a shell, ssh or
// sudo prints contains them.
inline constexpr char kNeedMarker[] = "GRV1NEED";  // Send the payload now.
inline constexpr char kBootMarker[] = "GRV1BOOT";  // The agent runs; gRPC follows.
inline constexpr char kFailMarker[] = "GRV1FAIL";  // The upload did not verify.
inline constexpr char kArchMarker[] = "GRV1ARCH";  // Wrong machine; `uname -m` follows.
inline constexpr size_t kMarkerSize = 8;

// Quotes `s` for a POSIX shell: 'it'\''s'.
std::string ShellQuote(const std::string& s);

}  // namespace grove

#endif  // GROVE_LAUNCH_PAYLOAD_H_
