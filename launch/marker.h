// MarkerScanner: finds the first stage's markers (launch/payload.h) in what a remote command
// prints on stdout, fed one byte at a time so that nothing after the boot marker (the start
// of gRPC) is consumed by the launcher. Whatever ssh, a shell, a motd or a password prompt
// prints around the markers is passed over.
//
//   MarkerScanner scanner;
//   for (char c : bytes) {
//     switch (scanner.Feed(c)) {
//       case MarkerScanner::Event::kBoot: ...          // gRPC follows
//       case MarkerScanner::Event::kArch: scanner.detail() ...   // `uname -m` of the target
//       ...
//     }
//   }
//
// Thread-compatible (one per bootstrap).
#ifndef GROVE_LAUNCH_MARKER_H_
#define GROVE_LAUNCH_MARKER_H_

#include <cstddef>
#include <string>

namespace grove {

class MarkerScanner {
 public:
  enum class Event {
    kNone,
    kBoot,  // GRV1BOOT: the agent runs; what follows is gRPC.
    kNeed,  // GRV1NEED: send the size line and the gzip of the program now.
    kZstd,  // GRV1ZSTD: the same, with the zstd of the program.
    kMore,  // GRV1MORE: send the next piece of the upload.
    kArch,  // GRV1ARCH and the rest of its line: the target's machine, in detail().
    kFail,  // GRV1FAIL and the rest of its line: why the upload did not verify, in detail().
  };

  // The longest detail line kept; the line ends there if no newline came before.
  static constexpr size_t kMaxDetail = 512;

  // Takes the next byte. kBoot, kNeed, kZstd and kMore come on their marker's last byte;
  // kArch and kFail once the line after the marker is complete.
  Event Feed(char c);

  // The line after an ARCH or FAIL marker (without its newline), so far.
  const std::string& detail() const { return detail_; }
  // True between an ARCH or FAIL marker and the end of its line.
  bool in_detail() const { return detail_for_ != Event::kNone; }
  // The event a line being read belongs to (kArch or kFail), if in_detail().
  Event pending() const { return detail_for_; }

 private:
  std::string window_;  // The last bytes seen, at most one marker's length.
  std::string detail_;
  Event detail_for_ = Event::kNone;
};

}  // namespace grove

#endif  // GROVE_LAUNCH_MARKER_H_
