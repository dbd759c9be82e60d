#include "resident/supervisor.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_util.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"
#include "link/hop.h"

namespace grove {
namespace {

constexpr int64_t kDefaultInitialMs = 100;
constexpr int64_t kDefaultMaxMs = 30000;
constexpr int32_t kDefaultRestarts = 5;
constexpr int64_t kDefaultWindowS = 60;

absl::Duration InitialBackoff(const v1::SupervisedContext& s) {
  return absl::Milliseconds(s.backoff().has_initial_ms() ? s.backoff().initial_ms()
                                                         : kDefaultInitialMs);
}
absl::Duration MaxBackoff(const v1::SupervisedContext& s) {
  return absl::Milliseconds(s.backoff().has_max_ms() ? s.backoff().max_ms() : kDefaultMaxMs);
}
int32_t RestartLimit(const v1::SupervisedContext& s) {
  return s.limit().has_restarts() ? s.limit().restarts() : kDefaultRestarts;
}
absl::Duration Window(const v1::SupervisedContext& s) {
  return absl::Seconds(s.limit().has_window_s() ? s.limit().window_s() : kDefaultWindowS);
}

// A context that ended on its own with status 0, or was shut down on request, ended cleanly.
bool EndedCleanly(const std::string& reason) {
  return absl::StrContains(reason, "exited with status 0") ||
         absl::StrContains(reason, "shut down");
}

class SpecErrors : public google::protobuf::io::ErrorCollector {
 public:
  explicit SpecErrors(std::string file) : file_(std::move(file)) {}
  void AddError(int line, int column, const std::string& message) override {
    if (first_.empty()) first_ = absl::StrCat(file_, ":", line + 1, ":", column + 1, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  const std::string file_;
  std::string first_;
};

}  // namespace

std::vector<v1::SupervisedContext> SupervisedContexts(const v1::Spec& spec) {
  std::vector<v1::SupervisedContext> all(spec.context().begin(), spec.context().end());
  for (const v1::Service& service : spec.service()) {
    all.insert(all.end(), service.replica().begin(), service.replica().end());
  }
  return all;
}

absl::Status ValidateSpec(const v1::Spec& spec) {
  if (absl::Status services = ValidateServices(spec); !services.ok()) return services;
  absl::flat_hash_set<std::string> seen;
  const std::vector<v1::SupervisedContext> all = SupervisedContexts(spec);
  for (size_t i = 0; i < all.size(); ++i) {
    const v1::SupervisedContext& c = all[i];
    const std::string where =
        i < static_cast<size_t>(spec.context_size())
            ? absl::StrCat("spec context #", i + 1, " (path \"", c.path(), "\")")
            : absl::StrCat("spec replica (path \"", c.path(), "\")");
    absl::StatusOr<std::string> key = CanonicalPath(c.path());
    if (!key.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", key.status().message()));
    }
    if (!seen.insert(*key).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the path is declared twice"));
    }
    if (c.backoff().initial_ms() < 0 || c.backoff().max_ms() < 0 ||
        c.limit().restarts() < 0 || c.limit().window_s() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": backoff and limit values must not be negative"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Spec> ParseSpec(const std::string& text, const std::string& file_name) {
  v1::Spec spec;
  SpecErrors errors(file_name);
  google::protobuf::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text, &spec)) {
    return absl::InvalidArgumentError(
        errors.first().empty() ? absl::StrCat(file_name, ": not a grove.v1.Spec") : errors.first());
  }
  if (absl::Status valid = ValidateSpec(spec); !valid.ok()) {
    return Annotate(valid, file_name + ": ");
  }
  return spec;
}

absl::StatusOr<v1::Spec> ReadSpecFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path, ": ", strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  return ParseSpec(text.str(), path);
}

Supervisor::Supervisor(Router* root, KeptPaths* kept, LogBook* log)
    : root_(root), kept_(kept), log_(log) {
  subscription_ = root_->registry().Subscribe([this](const RegistryEvent& event) {
    if (event.kind == RegistryEvent::kRemoved) OnRemoved(event.record);
  });
  thread_ = std::thread([this] { Loop(); });
}

Supervisor::~Supervisor() {
  root_->registry().Unsubscribe(subscription_);
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

v1::ReloadReply Supervisor::Apply(const v1::Spec& spec, absl::Duration connect_timeout) {
  v1::ReloadReply reply;
  std::vector<std::pair<std::string, uint64_t>> to_start;
  std::vector<std::string> to_stop;
  {
    absl::MutexLock lock(&mu_);
    absl::flat_hash_set<std::string> wanted;
    for (const v1::SupervisedContext& c : SupervisedContexts(spec)) {
      const std::string key = *CanonicalPath(c.path());
      wanted.insert(key);
      auto [it, added] = entries_.try_emplace(key);
      Entry& e = it->second;
      e.spec = c;
      if (added || e.state == "down") {
        e.display = c.path();
        if (std::optional<KeptPaths::Entry> kept = kept_->Find(key)) e.display = kept->display;
        e.state = "starting";
        e.reason.clear();
        e.recent.clear();
        e.backoff = InitialBackoff(c);
        e.due = absl::InfiniteFuture();
        e.generation = next_generation_++;
        to_start.emplace_back(key, e.generation);
        reply.add_started(e.display);
      } else {
        reply.add_kept(e.display);
      }
    }
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (!wanted.contains(it->first)) {
        to_stop.push_back(it->first);
        reply.add_stopped(it->second.display);
        it = entries_.erase(it);  // A btree's erase invalidates every iterator but its result.
      } else {
        ++it;
      }
    }
  }
  for (const std::string& path : to_stop) {
    absl::StatusOr<int> stopped = kept_->Stop(path);
    log_->Note(absl::StrCat("reload: stopped ", path,
                            stopped.ok() ? "" : absl::StrCat(" (", stopped.status().message(), ")")));
  }
  std::vector<std::thread> starts;
  for (const auto& [path, generation] : to_start) {
    starts.emplace_back([this, path = path, generation = generation, connect_timeout] {
      StartOne(path, generation, connect_timeout);
    });
  }
  for (std::thread& t : starts) t.join();
  return reply;
}

bool Supervisor::Forget(const std::string& canonical_path) {
  absl::MutexLock lock(&mu_);
  return entries_.erase(canonical_path) > 0;
}

std::vector<Supervisor::State> Supervisor::States() const {
  absl::MutexLock lock(&mu_);
  std::vector<State> out;
  for (const auto& [path, e] : entries_) {
    out.push_back({path, e.display, e.state, e.reason, e.restarts, e.id});
  }
  return out;
}

std::vector<std::string> Supervisor::Paths() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [path, e] : entries_) out.push_back(path);
  return out;
}

void Supervisor::StartOne(const std::string& path, uint64_t generation,
                          absl::Duration connect_timeout) {
  absl::StatusOr<Context> context = kept_->Ensure(path, connect_timeout);
  // Lost again before it was recorded: its removal event may have come and gone.
  if (context.ok() && !root_->registry().Find(context->id()).has_value()) {
    context = absl::UnavailableError(absl::StrCat(context->name(), " was lost as it started"));
  }
  std::string note;
  {
    absl::MutexLock lock(&mu_);
    auto it = entries_.find(path);
    if (it == entries_.end() || it->second.generation != generation) return;
    Entry& e = it->second;
    if (context.ok()) {
      std::optional<ContextRecord> record = root_->registry().Find(context->id());
      if (record.has_value() && record->state == ContextState::kConnected) {
        e.state = "running";
        e.id = context->id();
        e.started = absl::Now();
        note = absl::StrCat("supervised ", e.display, " is running as ", context->name(),
                            " (id ", context->id().value(), ")");
      } else {
        ScheduleLocked(e, record.has_value() ? record->reason : "lost as it started");
      }
    } else {
      ScheduleLocked(e, std::string(context.status().message()));
    }
    if (note.empty()) note = absl::StrCat("supervised ", e.display, ": ", e.state, ": ", e.reason);
  }
  log_->Note(note);
}

void Supervisor::OnRemoved(const ContextRecord& record) {
  std::string note;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [path, e] : entries_) {
      if (e.state != "running" || e.id != record.id) continue;
      e.id.reset();
      const v1::SupervisedContext::Restart policy = e.spec.restart();
      if (policy == v1::SupervisedContext::NEVER ||
          (policy == v1::SupervisedContext::ON_FAILURE && EndedCleanly(record.reason))) {
        e.state = "down";
        e.reason = record.reason;
      } else {
        ScheduleLocked(e, record.reason);
      }
      note = absl::StrCat("supervised ", e.display, ": ", e.state, ": ", e.reason);
      break;
    }
  }
  if (!note.empty()) log_->Note(note);
}

void Supervisor::ScheduleLocked(Entry& e, const std::string& why) {
  const absl::Time now = absl::Now();
  const absl::Duration window = Window(e.spec);
  // It had run for a whole window: this restart is like a first one.
  if (e.started != absl::InfinitePast() && now - e.started >= window) {
    e.backoff = InitialBackoff(e.spec);
  }
  while (!e.recent.empty() && now - e.recent.front() > window) e.recent.pop_front();
  const int32_t limit = RestartLimit(e.spec);
  if (limit > 0 && static_cast<int32_t>(e.recent.size()) >= limit) {
    e.state = "down";
    e.reason = absl::StrCat("gave up after ", e.recent.size(), " restarts in ",
                            absl::FormatDuration(window), "; last: ", why);
    e.due = absl::InfiniteFuture();
    return;
  }
  e.state = "restarting";
  e.reason = why;
  e.due = now + e.backoff;
  e.backoff = std::min(std::max(e.backoff * 2, InitialBackoff(e.spec)), MaxBackoff(e.spec));
  wake_ = true;
}

void Supervisor::Loop() {
  while (true) {
    std::vector<std::pair<std::string, uint64_t>> due;
    {
      absl::MutexLock lock(&mu_);
      absl::Time next = absl::InfiniteFuture();
      for (const auto& [path, e] : entries_) {
        if (e.state == "restarting") next = std::min(next, e.due);
      }
      auto woken = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return wake_ || stopping_; };
      mu_.AwaitWithDeadline(absl::Condition(&woken), next);
      if (stopping_) return;
      wake_ = false;
      const absl::Time now = absl::Now();
      for (auto& [path, e] : entries_) {
        if (e.state == "restarting" && e.due <= now) {
          e.state = "starting";
          e.recent.push_back(now);
          ++e.restarts;
          due.emplace_back(path, e.generation);
        }
      }
    }
    for (const auto& [path, generation] : due) {
      StartOne(path, generation, absl::Seconds(30));
    }
  }
}

}  // namespace grove
