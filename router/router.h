// Router: what every context runs.
//
// A router knows its own subtree: for every descendant id, the child link it is reached
// through; everything else goes to the parent link. It moves envelopes between its links and
// its own handlers, runs the functions called in this context, keeps the calls this context
// has pending elsewhere, and turns a lost link into ContextRemoved events and UNAVAILABLE
// errors for every call that was waiting on the lost subtree.
//
//                 parent link
//                      │
//              ┌───────┴────────┐   children_ (ChildSet): child links; descendant id ─> child
//              │     Router     │   calls_ (CallTable): calls this context made (pending),
//              └──┬─────────┬───┘                       calls running here (incoming)
//            child link   child link
//
// The Router coordinates parts that each keep one kind of state, in files of their own:
// ChildSet (router/child_set.h), CallTable (router/call_table.h), IdBlocks, GoneContexts,
// LogQuota (one per child), the Registry and the LinkWatch. The ones under its mutex only
// record, and return what the Router must then do: it makes every call out.
//
// Rules enforced here (see docs/architecture.md, "The router" and "Calls"):
//  - Names go up: a parent sends ContextAdded up before any envelope of its new child.
//  - An envelope whose source is not reachable through the link it arrived on is dropped.
//  - A reply (or output) is taken only from the link its call went out on.
//  - An envelope from the parent with no route down is answered "no route", never sent up.
//  - By default only an ancestor may call a function; see CallableBy.
//  - Log records from behind one child link are limited to a rate (router/log_quota.h);
//    the excess is dropped where it arrives and reported as a count.
//
// Thread-safety: thread-safe. One mutex guards the routing state; it is never held while
// calling out (a link, a launcher, a user callback, a function).
#ifndef GROVE_ROUTER_ROUTER_H_
#define GROVE_ROUTER_ROUTER_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/context_id.h"
#include "common/executor.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "router/call_table.h"
#include "router/child_set.h"
#include "router/component.h"
#include "router/functions.h"
#include "router/gone_contexts.h"
#include "router/id_blocks.h"
#include "router/link_watch.h"
#include "link/hop.h"
#include "link/launcher.h"
#include "link/link.h"
#include "router/registry.h"

namespace grove {

inline constexpr int64_t kDefaultMaxMessageBytes = int64_t{64} << 20;
// Router::Options::silence_limit by default.
inline constexpr absl::Duration kDefaultSilenceLimit = absl::Seconds(10);

struct CallOptions {
  // The call fails with DEADLINE_EXCEEDED (and is cancelled in the callee) after `timeout`
  // or at `deadline`, whichever is first.
  absl::Duration timeout = absl::InfiniteDuration();
  absl::Time deadline = absl::InfiniteFuture();
  // A call made by a running function: inherits its deadline and is cancelled with it.
  CallContext* parent = nullptr;
  // Cancelling this source cancels the call (CANCELLED).
  CancelSource* cancel = nullptr;
  // Receives streamed output (CallContext::Output) in order, before the result.
  std::function<void(int stream, const std::string& data)> on_output;
};

// Receives log records from the whole tree; only the master has one. Called on a link's
// reader thread; must not block.
using LogSink = std::function<void(const ContextRecord& from, const v1::LogRecord& record)>;

class Router : public LinkDelegate {
 public:
  struct Options {
    // id, name, parent, method, host, pid, user of this context.
    v1::ContextInfo self;
    // Nearest first; empty in the master.
    std::vector<uint64_t> ancestors;
    // Not owned; must outlive the router. May be null (built-ins only).
    const Functions* functions = nullptr;
    int64_t max_message_bytes = kDefaultMaxMessageBytes;
    int min_log_level = 0;
    int verbosity = 0;
    // How long a child gets to exit on its own before SIGTERM (and again before SIGKILL).
    absl::Duration stop_grace = absl::Seconds(2);
    // How many gone contexts this router remembers, with why they went (its registry's
    // records, and its "is gone" answers to calls). Older ones are forgotten: a call to one
    // fails NOT_FOUND instead of UNAVAILABLE, and it leaves `List(true)`.
    size_t gone_history = kDefaultGoneHistory;
    // The most contexts one child link may carry (the child and its live descendants): a
    // ContextAdded beyond it is refused. Far above any tree grove is built for; it bounds
    // what a hostile child can make its ancestors hold.
    size_t max_contexts_per_link = 100000;
    // The most calls that came in over one link (a child's, or the parent's) that may run
    // here at once on worker threads (functions not registered to run inline): a call
    // beyond it is refused RESOURCE_EXHAUSTED. Each such call holds a thread while it runs;
    // this bounds the threads a hostile subtree (or a flood from elsewhere, for functions
    // any context may call, like grove.sleep) can make this context start.
    int max_running_calls_per_link = 10000;
    // Attached in this order as the router is made (router/component.h): files, mesh.
    std::vector<Component> components;
    // A link to a child that delivers nothing for this long is closed as UNAVAILABLE ("went
    // silent"): a partition or a frozen child is noticed without waiting for ssh's keepalive.
    // Idle links carry a heartbeat from half of it on (router/link_watch.h). Zero: never.
    absl::Duration silence_limit = kDefaultSilenceLimit;
  };

  // How many id blocks (grove.id_block) one context holds at most, in the master and in
  // every context on the way to it (IdBlockGranted); a new block beyond them drops its
  // oldest (a context takes ids from its latest block only).
  static constexpr size_t kMaxIdBlocksPerContext = 16;

  explicit Router(Options options);
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;
  // Call Shutdown first; the destructor only checks that it happened.
  ~Router() override;

  ContextId id() const { return ContextId(self_.id()); }
  const std::string& name() const { return self_.name(); }
  const v1::ContextInfo& self() const { return self_; }
  bool is_master() const { return self_.id() == 0; }
  int64_t max_message_bytes() const { return options_.max_message_bytes; }
  // Records of this context's subtree (the whole tree in the master).
  Registry& registry() { return registry_; }
  // A built-in or one of the program's functions, as calls here would find it; nullptr if
  // unknown.
  const Function* FindFunction(const std::string& name) const;
  // The program's functions (Options::functions); may be null.
  const Functions* program_functions() const { return options_.functions; }

  // State a component keeps for this router, under `key` (the address of an object of the
  // component's own). Set once per key, from the component's attach call (router/component.h);
  // read from any thread. Null if unset.
  void SetAttachment(const void* key, std::shared_ptr<void> value);
  std::shared_ptr<void> attachment(const void* key) const;

  // ---- Wiring, by child/ and master/ before use ----
  // Not owned; must outlive the router.
  void AddLauncher(const std::string& method, Launcher* launcher);
  // The link to the parent (not in the master). Starts it.
  void SetParentLink(std::shared_ptr<Link> link);
  // Called once when this context must end: the parent asked (Shutdown envelope) or the
  // parent link was lost. Runs on a router thread; must not block.
  void SetShutdownHandler(std::function<void(const absl::Status& why)> handler);
  // Master only.
  void SetLogSink(LogSink sink);

  // ---- Calls ----
  using Done = std::function<void(absl::StatusOr<std::string> result)>;
  // Calls `function` in context `dst` with a serialized argument of type `argument_type`.
  // `done` runs exactly once, without locks held, possibly before StartCall returns.
  // `result_type`, when not empty, is the full protobuf name the caller will decode the
  // result as: a function that returns another type fails the call with INVALID_ARGUMENT.
  void StartCall(ContextId dst, const std::string& function, const std::string& argument_type,
                 std::string argument, const CallOptions& options, Done done,
                 const std::string& result_type = "");

  // Sends output of call `call_id` back to `caller` (see CallContext::Output).
  void SendOutput(ContextId caller, uint64_t call_id, int stream, std::string data);
  // Sends a log record to the master (or hands it to the sink in the master).
  void SendLog(v1::LogRecord record);

  // ---- Children ----
  // Starts a child of this context as `hop` says and links up with it. The child is in the
  // registry (here and in every ancestor) before this returns.
  absl::StatusOr<v1::ContextInfo> SpawnChild(const Hop& hop, absl::Time deadline);
  // Takes down child `id` and its subtree: asks it to shut down, then SIGTERM, then SIGKILL;
  // returns once it is reaped. NOT_FOUND when `id` is not a child of this context.
  absl::Status StopChild(ContextId id);
  // Takes down every child in parallel; returns once all are reaped.
  void StopAllChildren();
  // The children of this context.
  std::vector<ContextId> Children() const;

  // A new context id: from the master's counter, or from this context's block (asking the
  // master for a new block when it runs out).
  absl::StatusOr<ContextId> AllocateId();
  // In the master (grove.id_block): the next `count` ids for `owner`, recorded and told to
  // the contexts on the way to it.
  absl::StatusOr<v1::IdBlockReply> GrantIdBlock(uint64_t owner, uint32_t count);
  // An IdBlockGranted from the parent (or the master's own): recorded if `dst` is below, and
  // passed on towards it unless `dst` is the child it goes to (which has the reply).
  void HandleGranted(v1::Envelope envelope);

  // Fails every pending call, refuses new ones, stops all children and closes the parent
  // link. Blocks until every link is down. Idempotent.
  void Shutdown(const absl::Status& why);

  // ---- LinkDelegate ----
  void OnEnvelope(Link* link, v1::Envelope envelope) override;
  void OnLinkDown(Link* link, const absl::Status& reason) override;
  // Takes the child down (SIGTERM, then SIGKILL), in the background.
  void OnLinkStalled(Link* link, const absl::Status& why) override;

  // For tests and figures.
  size_t pending_calls() const;

 private:
  using Child = ChildSet::Child;

  // Where an envelope goes next.
  struct Route {
    enum Kind { kLocal, kChild, kParent, kNone } kind = kNone;
    std::shared_ptr<Link> link;
  };

  Route RouteTo(uint64_t dst) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  void Deliver(Link* from, v1::Envelope envelope);
  void HandleLocal(Link* from, v1::Envelope envelope);
  // A call to a function here, which came in over `from` (null: made in this context).
  void HandleCall(Link* from, v1::Envelope envelope);
  // Runs it, registered in calls_ as `incoming`, and forgets it there once it returns.
  void RunCall(const IncomingCall& incoming, v1::Call call, const Function* function,
               std::shared_ptr<CallContext> context);
  void SendReply(uint64_t dst, uint64_t call_id, const absl::StatusOr<std::string>& result,
                 const std::string& origin);
  // A reply or output for a call this context made, which arrived on `from` (null: from
  // this context). Dropped unless it came on the link the call went out on.
  void HandleReply(Link* from, const v1::Reply& reply);
  void HandleOutput(Link* from, v1::Output* output);
  void HandleCancel(uint64_t src, const v1::Cancel& cancel);
  void HandleAdded(Link* from, v1::Envelope envelope);
  void HandleRemoved(Link* from, v1::Envelope envelope);
  // A ContextRefused from the parent: drops the routes and records it names.
  void HandleRefused(v1::Envelope envelope);
  // Removes `ids` (all routed through `child`, or unrouted notices from the parent when
  // `child` is null): fails pending calls to them, cancels calls from them, tells the parent
  // and the children that were talking to them.
  void RemoveContexts(const std::shared_ptr<Child>& child, std::vector<uint64_t> ids,
                      const std::string& reason);
  // Completes call `call_id` with `result` unless it completed already.
  void Complete(uint64_t call_id, absl::StatusOr<std::string> result);
  // Completes `call`, taken out of calls_: undoes its timer and cancel callbacks, runs done.
  void Finish(const std::shared_ptr<PendingCall>& call, absl::StatusOr<std::string> result);
  void Send(Route route, v1::Envelope envelope);
  void SendToParent(v1::Envelope envelope);
  bool Allowed(uint64_t src, CallableBy callable_by) const;
  void RegisterBuiltins();
  void RequestShutdown(const absl::Status& why);
  std::string DescribeContext(uint64_t id) const;
  // The name a child started by `hop` gets when the hop names none.
  std::string DefaultName(const Hop& hop) const;
  // Stops (SIGTERM, then SIGKILL after the grace period) and reaps the process of `child`,
  // which has a handle, on a worker.
  void StopInBackground(const std::shared_ptr<Child>& child, bool at_once = false);
  // Sends `child` a Shutdown envelope (it takes its subtree down, then exits).
  void AskToShutDown(const Child& child);
  // Makes sure the process of a child asked to shut down is gone (SIGTERM, then SIGKILL,
  // after the grace period) and waits until its link-down has been handled.
  void WaitUntilStopped(const std::shared_ptr<Child>& child);

  const Options options_;
  const v1::ContextInfo self_;
  const absl::flat_hash_set<uint64_t> ancestors_;
  Functions builtins_;
  // By key; written only while the constructor runs the components, then read-only.
  absl::flat_hash_map<const void*, std::shared_ptr<void>> attachments_;
  Registry registry_;
  std::atomic<uint64_t> next_call_id_{1};

  mutable absl::Mutex mu_;
  std::shared_ptr<Link> parent_ ABSL_GUARDED_BY(mu_);
  bool parent_down_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<std::string, Launcher*> launchers_ ABSL_GUARDED_BY(mu_);
  // The children, their links and the routes to their subtrees; the names of children being
  // spawned; the child links not yet through OnLinkDown (Shutdown waits for none, so that no
  // link calls into a destroyed router).
  ChildSet children_ ABSL_GUARDED_BY(mu_);
  GoneContexts gone_ ABSL_GUARDED_BY(mu_);
  // Calls this context made (pending), and calls running here (incoming), counted per link
  // for max_running_calls_per_link: a link's count is keyed by the id of the context at its
  // far end (the child, or this context's parent).
  CallTable calls_ ABSL_GUARDED_BY(mu_);
  // This context's own ids, and the blocks the master handed out (grove.id_block) to contexts
  // of this subtree: in the master, all of them; elsewhere, as IdBlockGranted told on the way
  // down. A ContextAdded is accepted only for an id in a block of its parent, and only once,
  // so that ids stay unique after gone_ has forgotten them.
  IdBlocks id_blocks_ ABSL_GUARDED_BY(mu_);
  // Set at the end of OnLinkDown for the parent link.
  bool parent_link_done_ ABSL_GUARDED_BY(mu_) = false;
  bool shutting_down_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::function<void(const absl::Status&)> shutdown_handler_ ABSL_GUARDED_BY(mu_);
  bool shutdown_requested_ ABSL_GUARDED_BY(mu_) = false;
  LogSink log_sink_ ABSL_GUARDED_BY(mu_);
  // Serialises id block requests to the master.
  absl::Mutex id_block_mu_ ABSL_ACQUIRED_BEFORE(mu_);

  // Last, so that they are destroyed first: their destructors wait for the callbacks and
  // tasks that still use the members above.
  Timer timer_;
  WorkerPool workers_;
  // Envelopes being delivered now, and delivered so far (OnEnvelope): for LinkWatch.
  std::atomic<int> delivering_{0};
  std::atomic<uint64_t> delivered_{0};
  // Last: stopped (and its thread joined) before anything it reads goes.
  std::unique_ptr<LinkWatch> watch_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_ROUTER_H_
