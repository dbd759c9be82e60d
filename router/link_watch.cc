#include "router/link_watch.h"

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace grove {
namespace {

// Marks a SilenceError (an absl::Status payload).
constexpr char kSilencePayload[] = "type.googleapis.com/grove.LinkSilent";

}  // namespace

absl::Status SilenceError(const Link& link, absl::Duration limit) {
  absl::Status status = absl::UnavailableError(
      absl::StrCat(link.DebugName(), " went silent for ", absl::FormatDuration(limit),
                   " (no envelope, not even a heartbeat's answer)"));
  status.SetPayload(kSilencePayload, absl::Cord("1"));
  return status;
}

bool IsSilence(const absl::Status& status) {
  return status.GetPayload(kSilencePayload).has_value();
}

LinkWatch::LinkWatch(absl::Duration limit,
                     std::function<std::vector<std::shared_ptr<Link>>()> links,
                     std::function<Deliveries()> deliveries)
    : limit_(limit), links_(std::move(links)), deliveries_(std::move(deliveries)) {
  thread_ = std::thread([this] { Loop(); });
}

LinkWatch::~LinkWatch() { Stop(); }

void LinkWatch::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void LinkWatch::Loop() {
  struct Seen {
    uint64_t received = 0;
    absl::Time since;  // When `received` last changed.
  };
  // Keyed by the link's address, but holding the link: an address is not reused meanwhile.
  absl::flat_hash_map<Link*, std::pair<std::shared_ptr<Link>, Seen>> seen;
  const absl::Duration tick = limit_ / 4;
  uint64_t finished = 0;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), tick)) return;
    }
    const absl::Time now = absl::Now();
    // This process's own reading is stuck: nothing can be judged (see Deliveries).
    const Deliveries deliveries = deliveries_();
    const bool stuck = deliveries.in_progress > 0 && deliveries.finished == finished;
    finished = deliveries.finished;
    if (stuck) {
      for (auto& [key, entry] : seen) entry.second.since = now;
      continue;
    }
    absl::flat_hash_set<Link*> current;
    for (std::shared_ptr<Link>& link : links_()) {
      Link* key = link.get();
      current.insert(key);
      const uint64_t received = link->received();
      auto [it, added] = seen.try_emplace(key, link, Seen{received, now});
      Seen& s = it->second.second;
      if (added || received != s.received || link->WriteOutstanding()) {
        s = {received, now};
        continue;
      }
      const absl::Duration idle = now - s.since;
      if (idle >= limit_) {
        link->Close(SilenceError(*link, limit_));
      } else if (idle >= limit_ / 2) {
        v1::Envelope heartbeat;
        heartbeat.mutable_heartbeat();
        link->Send(std::move(heartbeat));
      }
    }
    for (auto it = seen.begin(); it != seen.end();) {
      if (!current.contains(it->first)) {
        seen.erase(it++);
      } else {
        ++it;
      }
    }
  }
}

}  // namespace grove
