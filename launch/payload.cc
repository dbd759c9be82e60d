#include "launch/payload.h"

#include <openssl/sha.h>
#include <sys/utsname.h>
#include <zlib.h>

#include <fstream>
#include <sstream>

#include "absl/base/call_once.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"

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

}  // namespace

std::string Sha256Hex(const std::string& data) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(data.data()), data.size(), digest);
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(digest), sizeof(digest)));
}

absl::StatusOr<const Payload*> ThisProgram() {
  static absl::once_flag once;
  static absl::StatusOr<Payload>* payload = nullptr;
  absl::call_once(once, [] {
    std::ifstream in("/proc/self/exe", std::ios::binary);
    std::stringstream bytes;
    bytes << in.rdbuf();
    std::string exe = bytes.str();
    if (!in || exe.empty()) {
      payload = new absl::StatusOr<Payload>(
          absl::InternalError("cannot read this program from /proc/self/exe"));
      return;
    }
    Payload p;
    p.sha256 = Sha256Hex(exe);
    p.size = exe.size();
    p.bytes = std::move(exe);
    payload = new absl::StatusOr<Payload>(std::move(p));
  });
  if (!payload->ok()) return payload->status();
  return &**payload;
}

absl::StatusOr<const std::string*> CompressedProgram() {
  static absl::once_flag once;
  static absl::StatusOr<std::string>* compressed = nullptr;
  absl::call_once(once, [] {
    absl::StatusOr<const Payload*> payload = ThisProgram();
    compressed = new absl::StatusOr<std::string>(
        payload.ok() ? Gzip((*payload)->bytes) : absl::StatusOr<std::string>(payload.status()));
  });
  if (!compressed->ok()) return compressed->status();
  return &**compressed;
}

std::string ShellQuote(const std::string& s) {
  return absl::StrCat("'", absl::StrReplaceAll(s, {{"'", "'\\''"}}), "'");
}

std::string FirstStage(const Payload& payload, const std::string& cache_dir,
                       const std::vector<std::string>& agent_args) {
  struct utsname u;
  ::uname(&u);
  std::vector<std::string> quoted;
  for (const std::string& a : agent_args) quoted.push_back(ShellQuote(a));
  const std::string args = absl::StrJoin(quoted, " ");
  // POSIX sh only. Each step is checked; any failure prints a marker the parent recognises.
  // The digest tool: sha256sum (GNU, busybox) or shasum -a 256 (BSD, macOS).
  return absl::StrCat(
      "umask 077;h=", payload.sha256, ";",
      "[ \"`uname -m`\" = ", ShellQuote(u.machine), " ] || { printf '", kArchMarker,
      "%s\\n' \"`uname -m`\";exit 1;};",
      "s(){ if command -v sha256sum >/dev/null;then sha256sum|cut -c1-64;"
      "else shasum -a 256|cut -c1-64;fi;};",
      "d=", cache_dir.empty() ? "\"$HOME/.cache/grove\"" : ShellQuote(cache_dir), ";",
      "if ! { mkdir -p \"$d\" 2>/dev/null&&[ -w \"$d\" ];};then d=\"${TMPDIR:-/tmp}/grove-`id -u`\";"
      "mkdir -p \"$d\"||exit 1;fi;",
      // The cache must be ours and private: refused otherwise.
      "[ -O \"$d\" ]||{ printf '", kFailMarker, "cache %s is not owned by this user\\n' \"$d\";exit 1;};",
      "chmod 700 \"$d\";f=\"$d/$h\";",
      "if [ -x \"$f\" ]&&[ \"`s<\"$f\"`\" = $h ];then exec \"$f\" ", args, ";fi;",
      "t=`mktemp \"$d/.$h.XXXXXX\"`||exit 1;printf ", kNeedMarker, ";read n||exit 1;",
      "if head -c $n|gzip -dc>\"$t\"&&[ \"`s<\"$t\"`\" = $h ]&&chmod 700 \"$t\"&&mv -f \"$t\" \"$f\";",
      "then exec \"$f\" ", args, ";fi;",
      "rm -f \"$t\";printf '", kFailMarker, "upload did not verify\\n';exit 1");
}

}  // namespace grove
