// SHA-256, for the travelling agent's name and for file transfers' integrity checks.
#ifndef GROVE_COMMON_SHA256_H_
#define GROVE_COMMON_SHA256_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace grove {

// An incremental SHA-256. Built on libcrypto's low-level SHA-256 (which uses the CPU's SHA
// extensions), not on its EVP layer: EVP brings OpenSSL's provider machinery along, 2.8 MB of
// a travelling agent that needs one digest. Thread-compatible; owns its state.
class Sha256 {
 public:
  Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t size);
  // The digest as 64 lowercase hex digits. Call once; the object is spent afterwards.
  std::string HexDigest();

  // The hex digest of `data` in one call.
  static std::string Hex(absl::string_view data);

 private:
  alignas(8) unsigned char state_[112];  // SHA256_CTX, which OpenSSL's header defines.
};

}  // namespace grove

#endif  // GROVE_COMMON_SHA256_H_
