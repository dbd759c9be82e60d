#include "common/sha256.h"

// SHA256_Init/Update/Final are deprecated in OpenSSL 3 in favour of EVP, which is what this
// file avoids (see the header).
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include "absl/strings/escaping.h"

namespace grove {
namespace {

static_assert(sizeof(SHA256_CTX) <= 112, "Sha256::state_ is too small for SHA256_CTX");

SHA256_CTX* Context(unsigned char* state) { return reinterpret_cast<SHA256_CTX*>(state); }

}  // namespace

Sha256::Sha256() { SHA256_Init(Context(state_)); }

void Sha256::Update(const void* data, size_t size) { SHA256_Update(Context(state_), data, size); }

std::string Sha256::HexDigest() {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256_Final(digest, Context(state_));
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

std::string Sha256::Hex(absl::string_view data) {
  Sha256 sha;
  sha.Update(data.data(), data.size());
  return sha.HexDigest();
}

}  // namespace grove
