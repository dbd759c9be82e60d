// CallTable: what a router keeps about calls.
//
// Two kinds of call pass through a router's table:
//   - pending calls, made by this context and not yet complete, by call id: the link each
//     went out on (its reply and output are taken from there only), and what completes it;
//   - incoming calls, running here, by (caller, call id): the CallContext a cancel reaches,
//     counted per link they came over, so that one link runs at most `max_running_per_link`
//     calls at once on worker threads.
//
//   StartCall ──AddPending──> pending ──TakeReply / TakePending──> done(result)
//   link or subtree lost ─────TakePendingTo / TakePendingWhere──> done(UNAVAILABLE)
//   HandleCall ─AddIncoming─> incoming ──RemoveIncoming──> reply sent
//   caller lost ──IncomingFrom──> cancelled
//
// The table only records. Everything a completed or cancelled call needs next (its timer
// cancelled, its cancel callbacks removed, `done` run, its CallContext cancelled) is returned
// to the router, which does it with no lock held.
//
// Not thread-safe: its owner guards it (the router, with its mutex).
#ifndef GROVE_ROUTER_CALL_TABLE_H_
#define GROVE_ROUTER_CALL_TABLE_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "link/link.h"
#include "router/functions.h"

namespace grove {

// A call this context made that has not completed. The router fills it in; the table holds
// it until it is taken.
struct PendingCall {
  uint64_t dst = 0;
  // The link the call went out on (null: this context). Its reply and output are taken from
  // there only: a child cannot answer, in another context's name, a call that did not go to
  // its subtree.
  std::shared_ptr<Link> via;
  std::function<void(absl::StatusOr<std::string> result)> done;
  std::function<void(int stream, const std::string& data)> on_output;
  // What ends the call early, undone by whoever completes it: a timer of the router's, a
  // callback on the caller's CancelSource, one on the cancel source of the running function
  // that made the call. Zero ids: none. Set while the call is pending, under the lock that
  // guards the table.
  uint64_t timer = 0;
  CancelSource* cancel = nullptr;
  uint64_t cancel_callback = 0;
  CancelSource* parent_cancel = nullptr;
  uint64_t parent_callback = 0;
};

// A call running here, as the table knows it.
struct IncomingCall {
  uint64_t src = 0;
  uint64_t id = 0;
  // The link the call came over, by the id of the context at its far end (the child, or the
  // parent), when the call counts against that link's limit; nullopt when it does not (made
  // in this context, or run inline). Context ids are never reused, so neither is a count.
  std::optional<uint64_t> link;
};

class CallTable {
 public:
  // `max_running_per_link`: how many counted incoming calls one link may have running.
  explicit CallTable(int max_running_per_link) : max_running_per_link_(max_running_per_link) {}
  CallTable(const CallTable&) = delete;
  CallTable& operator=(const CallTable&) = delete;

  // ---- Calls this context made ----
  // Records `call` under `id`. ALREADY_EXISTS (nothing recorded) when `id` is pending.
  absl::Status AddPending(uint64_t id, std::shared_ptr<PendingCall> call);
  bool IsPending(uint64_t id) const { return pending_.contains(id); }
  // Takes call `id` out of the table; null when it is not pending (completed already).
  std::shared_ptr<PendingCall> TakePending(uint64_t id);
  // Takes call `id` for its reply, which arrived on `from` (null: from this context).
  // NOT_FOUND when it is not pending (completed already, say by its deadline);
  // PERMISSION_DENIED when the call went out on another link (it stays pending).
  absl::StatusOr<std::shared_ptr<PendingCall>> TakeReply(uint64_t id, const Link* from);
  // Call `id`, left in the table, for output that arrived on `from`; null when it is not
  // pending or went out on another link.
  std::shared_ptr<PendingCall> PendingFrom(uint64_t id, const Link* from) const;
  // Takes every pending call to one of `dsts` (a subtree that was lost).
  std::vector<std::shared_ptr<PendingCall>> TakePendingTo(
      const absl::flat_hash_set<uint64_t>& dsts);
  // Takes every pending call whose destination `lost` says is lost.
  std::vector<std::shared_ptr<PendingCall>> TakePendingWhere(
      absl::FunctionRef<bool(uint64_t dst)> lost);
  // Takes every pending call (at shutdown).
  std::vector<std::shared_ptr<PendingCall>> TakeAllPending();
  size_t pending_count() const { return pending_.size(); }

  // ---- Calls running here ----
  // Records `context` as running `call`, counted against `call.link`. RESOURCE_EXHAUSTED
  // (nothing recorded) when that link already has max_running_per_link calls running (see
  // running_over). A call whose (src, id) is recorded already replaces it there (the count
  // takes both).
  absl::Status AddIncoming(const IncomingCall& call, std::shared_ptr<CallContext> context);
  // Forgets `call`, which ended (or never started), and counts it out of its link.
  void RemoveIncoming(const IncomingCall& call);
  // The running call `id` from `src`; null when none.
  std::shared_ptr<CallContext> FindIncoming(uint64_t src, uint64_t id) const;
  // The running calls from any of `srcs` (callers that were lost), left in the table: they
  // leave it as they end.
  std::vector<std::shared_ptr<CallContext>> IncomingFrom(
      const absl::flat_hash_set<uint64_t>& srcs) const;
  // Every running call (at shutdown), left in the table.
  std::vector<std::shared_ptr<CallContext>> AllIncoming() const;
  size_t incoming_count() const { return incoming_.size(); }
  // How many counted calls that came over `link` are running.
  int running_over(uint64_t link) const;

 private:
  const int max_running_per_link_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<PendingCall>> pending_;
  absl::flat_hash_map<std::pair<uint64_t, uint64_t>, std::shared_ptr<CallContext>> incoming_;
  // Counted calls running, by link (IncomingCall::link); a link with none has no entry.
  absl::flat_hash_map<uint64_t, int> running_by_link_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_CALL_TABLE_H_
