// Fuzzes the first stage's marker scanner (launch/marker.h), which reads whatever a remote
// command prints: ssh banners, a motd, prompts, a hostile or broken remote shell.
//
// Besides not crashing, it checks what the launcher relies on:
//  - kBoot, kNeed, kZstd and kMore come exactly when the last 8 bytes are that marker;
//  - an ARCH or FAIL detail holds no newline and at most kMaxDetail bytes;
//  - whatever came before, a newline and then GRV1BOOT are seen as the boot, on its last
//    byte and not before (nothing is consumed past it).
#include <cstddef>
#include <cstdint>
#include <string>

#include "glog/logging.h"
#include "launch/marker.h"
#include "launch/payload.h"

namespace grove {
namespace {

void Check(const uint8_t* data, size_t size) {
  MarkerScanner scanner;
  std::string seen;
  auto feed = [&](char c) {
    seen.push_back(c);
    MarkerScanner::Event event = scanner.Feed(c);
    std::string last = seen.size() >= kMarkerSize ? seen.substr(seen.size() - kMarkerSize) : "";
    if (event == MarkerScanner::Event::kBoot) CHECK_EQ(last, kBootMarker);
    if (event == MarkerScanner::Event::kNeed) CHECK_EQ(last, kNeedMarker);
    if (event == MarkerScanner::Event::kZstd) CHECK_EQ(last, kZstdMarker);
    if (event == MarkerScanner::Event::kMore) CHECK_EQ(last, kMoreMarker);
    if (event == MarkerScanner::Event::kArch || event == MarkerScanner::Event::kFail) {
      CHECK(scanner.detail().find('\n') == std::string::npos);
      CHECK_LE(scanner.detail().size(), MarkerScanner::kMaxDetail);
      CHECK(!scanner.in_detail());
    }
    return event;
  };
  for (size_t i = 0; i < size; ++i) feed(static_cast<char>(data[i]));
  feed('\n');
  const std::string boot = kBootMarker;
  for (size_t i = 0; i < boot.size(); ++i) {
    MarkerScanner::Event event = feed(boot[i]);
    if (i + 1 < boot.size()) {
      CHECK(event == MarkerScanner::Event::kNone) << "an event inside the boot marker";
    } else {
      CHECK(event == MarkerScanner::Event::kBoot) << "the boot marker was missed";
    }
  }
}

}  // namespace
}  // namespace grove

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  grove::Check(data, size);
  return 0;
}
