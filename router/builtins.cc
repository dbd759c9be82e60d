// The functions every context's router offers: ping, info, run, spawn, stop, sleep, and (in
// the master) id blocks. Files and the mesh add theirs as components (files/service.cc,
// mesh/mesh.cc).
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/fd.h"
#include "common/process.h"
#include "common/status_util.h"
#include "proto/builtins.pb.h"
#include "router/router.h"
#include "router/run_command.h"

extern char** environ;

namespace grove {
namespace {

template <typename In, typename Out, typename F>
Function MakeBuiltin(const std::string& name, FunctionOptions options, F fn) {
  return Functions::MakeFunction<In, Out>(name, std::move(fn), options);
}

}  // namespace

void Router::RegisterBuiltins() {
  const absl::Time started = absl::Now();
  FunctionOptions any_inline{CallableBy::kAny, /*run_inline=*/true};
  builtins_.Add(MakeBuiltin<v1::Empty, v1::Empty>(
      "grove.ping", any_inline,
      [](const v1::Empty&, CallContext&) -> absl::StatusOr<v1::Empty> { return v1::Empty(); }));
  builtins_.Add(MakeBuiltin<v1::Empty, v1::InfoReply>(
      "grove.info", {CallableBy::kAncestors, true},
      [this, started](const v1::Empty&, CallContext&) -> absl::StatusOr<v1::InfoReply> {
        v1::InfoReply reply;
        reply.set_id(self_.id());
        reply.set_name(self_.name());
        reply.set_parent(self_.parent());
        reply.set_method(self_.method());
        reply.set_host(self_.host());
        reply.set_pid(::getpid());
        reply.set_user(CurrentUserName());
        reply.set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - started));
        return reply;
      }));
  builtins_.Add(MakeBuiltin<v1::RunRequest, v1::RunReply>("grove.run", {}, RunCommand));
  builtins_.Add(MakeBuiltin<v1::SpawnRequest, v1::SpawnReply>(
      "grove.spawn", {},
      [this](const v1::SpawnRequest& request,
             CallContext& call) -> absl::StatusOr<v1::SpawnReply> {
        absl::StatusOr<Hop> hop = ParseHop(request.hop());
        if (!hop.ok()) return hop.status();
        absl::StatusOr<v1::ContextInfo> info = SpawnChild(*hop, call.deadline());
        if (!info.ok()) return info.status();
        v1::SpawnReply reply;
        *reply.mutable_info() = *info;
        return reply;
      }));
  builtins_.Add(MakeBuiltin<v1::StopRequest, v1::Empty>(
      "grove.stop", {},
      [this](const v1::StopRequest& request, CallContext&) -> absl::StatusOr<v1::Empty> {
        absl::Status status = StopChild(ContextId(request.id()));
        if (!status.ok()) return status;
        return v1::Empty();
      }));
  builtins_.Add(MakeBuiltin<v1::SleepRequest, v1::Empty>(
      "grove.sleep", {CallableBy::kAny, false},
      [](const v1::SleepRequest& request, CallContext& call) -> absl::StatusOr<v1::Empty> {
        absl::Notification cancelled;
        uint64_t id = call.cancel_source().AddCallback([&cancelled] { cancelled.Notify(); });
        bool was_cancelled =
            cancelled.WaitForNotificationWithTimeout(absl::Milliseconds(request.ms()));
        if (id) call.cancel_source().RemoveCallback(id);
        if (was_cancelled) return absl::CancelledError("sleep cancelled");
        return v1::Empty();
      }));
  builtins_.Add(MakeBuiltin<v1::IdBlockRequest, v1::IdBlockReply>(
      "grove.id_block", {CallableBy::kDescendants, true},
      [this](const v1::IdBlockRequest& request,
             CallContext& call) -> absl::StatusOr<v1::IdBlockReply> {
        if (!is_master()) {
          return absl::FailedPreconditionError("only the master hands out context ids");
        }
        uint32_t count = std::clamp<uint32_t>(request.count(), 1, 100000);
        return GrantIdBlock(call.caller().value(), count);
      }));
}

}  // namespace grove
