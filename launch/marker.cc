#include "launch/marker.h"

#include "launch/payload.h"

namespace grove {

MarkerScanner::Event MarkerScanner::Feed(char c) {
  if (detail_for_ != Event::kNone) {
    if (c != '\n') detail_.push_back(c);
    if (c != '\n' && detail_.size() < kMaxDetail) return Event::kNone;
    Event done = detail_for_;
    detail_for_ = Event::kNone;
    return done;
  }
  window_.push_back(c);
  if (window_.size() > kMarkerSize) window_.erase(0, window_.size() - kMarkerSize);
  if (window_.size() < kMarkerSize) return Event::kNone;
  Event event = Event::kNone;
  if (window_ == kBootMarker) {
    event = Event::kBoot;
  } else if (window_ == kNeedMarker) {
    event = Event::kNeed;
  } else if (window_ == kZstdMarker) {
    event = Event::kZstd;
  } else if (window_ == kMoreMarker) {
    event = Event::kMore;
  } else if (window_ == kArchMarker || window_ == kFailMarker) {
    detail_for_ = window_ == kArchMarker ? Event::kArch : Event::kFail;
    detail_.clear();
  }
  if (event != Event::kNone || detail_for_ != Event::kNone) window_.clear();
  return event;
}

}  // namespace grove
