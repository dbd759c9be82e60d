#include "master/master.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/string_view.h"
#include "child/agent.h"
#include "common/printable.h"
#include "common/process.h"
#include "glog/logging.h"
#include "link/hop.h"

namespace grove {

std::string FormatOutputLines(const ContextRecord& from, const v1::LogRecord& record) {
  const std::string tag = absl::StrCat("[", Printable(from.name), "] ");
  std::string out;
  for (absl::string_view line :
       absl::StrSplit(absl::StripSuffix(record.text(), "\n"), '\n')) {
    absl::StrAppend(&out, tag, Printable(line), "\n");
  }
  return out;
}

void LogToStderr(const ContextRecord& from, const v1::LogRecord& record) {
  if (record.kind() == v1::LogRecord::GLOG) {
    // Re-emitted here, keeping the child's file and line; never fatal in the master.
    const int severity = std::min<int>(record.severity(), google::ERROR);
    const std::string file = Printable(record.file());
    const std::string name = Printable(from.name);
    for (absl::string_view line :
         absl::StrSplit(absl::StripSuffix(record.text(), "\n"), '\n')) {
      google::LogMessage(file.c_str(), record.line(), severity).stream()
          << "[" << name << "] " << Printable(line);
    }
    return;
  }
  const std::string lines = FormatOutputLines(from, record);
  (void)!::write(2, lines.data(), lines.size());
}

Master::Master(const Functions& functions, MasterOptions options)
    : options_(std::move(options)),
      launchers_(options_.zygote,
                 "the master has no zygote: start one with grove::StartZygote at the top "
                 "of main() and pass it in MasterOptions::zygote, or use grove::Main") {
  ::signal(SIGPIPE, SIG_IGN);
  RaiseOpenFileLimit();
  v1::ContextInfo self;
  self.set_id(0);
  self.set_name(options_.name);
  self.set_parent(0);
  self.set_method("master");
  self.set_host(CurrentHostName());
  self.set_pid(::getpid());
  self.set_user(CurrentUserName());
  Router::Options router_options = StandardRouterOptions(
      self, {}, &functions, options_.max_message_bytes, FLAGS_minloglevel, FLAGS_v);
  router_options.stop_grace = options_.stop_grace;
  router_options.silence_limit = options_.link_silence_limit;
  router_options.gone_history = options_.gone_history;
  router_ = std::make_unique<Router>(std::move(router_options));
  launchers_.AddTo(*router_);
  router_->SetLogSink(options_.log_sink ? options_.log_sink : LogSink(LogToStderr));
}

Master::~Master() { Shutdown(); }

void Master::Shutdown() { router_->Shutdown(absl::CancelledError("the master shut down")); }

absl::StatusOr<Context> Master::Spawn(const std::string& hop, const CallOptions& options) {
  return self().Spawn(hop, options);
}

absl::StatusOr<Context> Master::SpawnPath(const std::string& path, const CallOptions& options) {
  absl::StatusOr<std::vector<Hop>> hops = ParsePath(path);
  if (!hops.ok()) return hops.status();
  Context current = self();
  for (const Hop& hop : *hops) {
    absl::StatusOr<Context> next = current.Spawn(hop.ToString(), options);
    if (!next.ok()) return next.status();
    current = *std::move(next);
  }
  return current;
}

absl::StatusOr<Context> Master::Find(ContextId id) {
  if (id == kMasterId) return self();
  std::optional<ContextRecord> record = registry().Find(id);
  if (!record) return absl::NotFoundError(absl::StrCat("no context with id ", id.value()));
  return Context(router_.get(), record->id, record->name);
}

absl::StatusOr<Context> Master::Find(const std::string& name) {
  if (name == router_->name()) return self();
  std::optional<ContextRecord> record = registry().FindByName(name);
  if (!record) return absl::NotFoundError(absl::StrCat("no context named '", name, "'"));
  return Context(router_.get(), record->id, record->name);
}

int Main(int argc, char** argv, const Functions& functions,
         const std::function<int(Master&)>& body, MasterOptions options) {
  if (IsAgentInvocation(argc, argv)) RunAgent(argc, argv, functions);
  absl::StatusOr<std::optional<ResidentOptions>> resident = ResidentFromArgs(argc, argv);
  if (!resident.ok()) {
    fprintf(stderr, "grove: %s\n", std::string(resident.status().message()).c_str());
    return 2;
  }
  if (resident->has_value()) options.resident = **resident;
  if (options.zygote == nullptr) {
    // First, while this process has one thread. Without it the master offers no `fork`.
    absl::StatusOr<std::shared_ptr<Zygote>> zygote = StartZygote(functions);
    if (zygote.ok()) {
      options.zygote = *std::move(zygote);
    } else {
      fprintf(stderr, "grove: cannot start the zygote (no fork method): %s\n",
              zygote.status().ToString().c_str());
    }
  }
  if (!google::IsGoogleLoggingInitialized()) {
    google::InitGoogleLogging(argv[0]);
    FLAGS_logtostderr = true;
  }
  std::optional<ResidentOptions> resident_options = options.resident;
  Master master(functions, std::move(options));
  if (resident_options.has_value()) return ServeResident(master.router(), *resident_options);
  return body(master);
}

}  // namespace grove
