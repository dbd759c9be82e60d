// Master: the root of a grove tree (context 0).
//
// It owns the router at the root, whose registry holds every context of the tree by id and
// by name, hands out context ids, and receives every context's logs.
//
//   int main(int argc, char** argv) {
//     grove::Functions functions;
//     functions.Register<EchoRequest, EchoReply>("echo", Echo);
//     return grove::Main(argc, argv, functions, [](grove::Master& master) {
//       absl::StatusOr<grove::Context> child = master.Spawn("local");
//       ...
//       return 0;
//     });
//   }
#ifndef GROVE_MASTER_MASTER_H_
#define GROVE_MASTER_MASTER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "launch/fork_launcher.h"
#include "launch/standard.h"
#include "resident/resident.h"
#include "router/context.h"
#include "router/functions.h"
#include "router/registry.h"
#include "router/router.h"

namespace grove {

struct MasterOptions {
  std::string name = "master";
  // Largest envelope on any link of the tree (inherited by every context).
  int64_t max_message_bytes = kDefaultMaxMessageBytes;
  // How long a context gets to exit on its own before SIGTERM, and again before SIGKILL.
  absl::Duration stop_grace = absl::Seconds(2);
  // A link of the tree that delivers nothing for this long (not even a heartbeat's answer) is
  // closed as lost (router/link_watch.h); every context of the tree inherits it. Zero: never.
  absl::Duration link_silence_limit = kDefaultSilenceLimit;
  // How many gone contexts the registry keeps records of (and calls to them are answered
  // "is gone", with why); older ones are forgotten, so that a master that starts and stops
  // contexts for ever keeps its memory flat. Every other context keeps kDefaultGoneHistory.
  size_t gone_history = kDefaultGoneHistory;
  // Receives every context's stdout/stderr lines and glog records. The default writes
  // "[name] line" to stderr and re-emits glog records through this process's glog.
  LogSink log_sink;
  // The zygote that the `fork` method forks the master's fork children from (StartZygote,
  // called while the process has one thread). grove::Main starts one when this is null;
  // a master without one refuses `fork` hops (FAILED_PRECONDITION).
  std::shared_ptr<Zygote> zygote;
  // Set: grove::Main serves the tree as a resident master (resident/resident.h) instead of
  // running its body. Main also sets it from argv's --grove-resident flags (grove up
  // --program starts any grove program so).
  std::optional<ResidentOptions> resident;
};

// Thread-safe. The destructor shuts the whole tree down and reaps it.
class Master {
 public:
  // `functions` must outlive the master.
  explicit Master(const Functions& functions, MasterOptions options = {});
  Master(const Master&) = delete;
  Master& operator=(const Master&) = delete;
  ~Master();

  Router& router() { return *router_; }
  Registry& registry() { return router_->registry(); }
  Context self() { return Context(router_.get(), kMasterId, router_->name()); }

  // Starts a child of the master ("local", "local,name=worker1").
  absl::StatusOr<Context> Spawn(const std::string& hop, const CallOptions& options = {});
  // Starts (or reuses, for prefixes already started with the same hops by this call) each
  // hop of `path` as a child of the previous one, e.g. "local/local,name=deep". Returns the
  // last.
  absl::StatusOr<Context> SpawnPath(const std::string& path, const CallOptions& options = {});

  // A context of the tree, live or gone. NOT_FOUND when unknown.
  absl::StatusOr<Context> Find(ContextId id);
  absl::StatusOr<Context> Find(const std::string& name);

  // Takes the whole tree down, deepest first, and reaps it. Idempotent.
  void Shutdown();

 private:
  MasterOptions options_;
  StandardLaunchers launchers_;
  std::unique_ptr<Router> router_;
};

// The default log sink (see MasterOptions::log_sink): "[name] line" on stderr for each line of
// a stdout or stderr record (FormatOutputLines); a glog record re-emitted through this
// process's glog, one message per line, tagged the same way. Names and text come from other
// contexts and are made Printable: a context cannot act on the master's terminal, nor write
// a line that looks like another context's.
void LogToStderr(const ContextRecord& from, const v1::LogRecord& record);
// What LogToStderr writes for a stdout or stderr record.
std::string FormatOutputLines(const ContextRecord& from, const v1::LogRecord& record);

// Hands a program to grove: in a context started by grove this runs the agent and never
// returns; otherwise it starts the zygote (for the `fork` method; the process must not have
// started a thread yet), initialises glog, builds a Master and runs `body` with it, or, as a
// resident master (options.resident, or --grove-resident=DIR in argv), serves the tree
// through its control socket until it is told to stop.
int Main(int argc, char** argv, const Functions& functions,
         const std::function<int(Master&)>& body, MasterOptions options = {});

}  // namespace grove

#endif  // GROVE_MASTER_MASTER_H_
