#include "router/context.h"

namespace grove {

absl::Status Context::Ping(const CallOptions& options) const {
  return Call<v1::Empty>("grove.ping", v1::Empty(), options).status();
}

absl::StatusOr<v1::InfoReply> Context::Info(const CallOptions& options) const {
  return Call<v1::InfoReply>("grove.info", v1::Empty(), options);
}

absl::StatusOr<v1::RunReply> Context::Run(const v1::RunRequest& request,
                                          const CallOptions& options) const {
  return Call<v1::RunReply>("grove.run", request, options);
}

absl::StatusOr<Context> Context::Spawn(const std::string& hop, const CallOptions& options) const {
  absl::StatusOr<Hop> parsed = ParseHop(hop);
  if (!parsed.ok()) return parsed.status();
  v1::ContextInfo info;
  if (id_ == router_->id()) {
    absl::Time deadline = options.deadline;
    if (options.timeout != absl::InfiniteDuration()) {
      deadline = std::min(deadline, absl::Now() + options.timeout);
    }
    absl::StatusOr<v1::ContextInfo> spawned = router_->SpawnChild(*parsed, deadline);
    if (!spawned.ok()) return spawned.status();
    info = *std::move(spawned);
  } else {
    v1::SpawnRequest request;
    request.set_hop(hop);
    absl::StatusOr<v1::SpawnReply> reply = Call<v1::SpawnReply>("grove.spawn", request, options);
    if (!reply.ok()) return reply.status();
    info = reply->info();
  }
  return Context(router_, ContextId(info.id()), info.name());
}

absl::Status Context::Shutdown(const CallOptions& options) const {
  if (id_ == router_->id()) {
    return absl::FailedPreconditionError(
        absl::StrCat("context ", name_, " cannot shut itself down through a handle"));
  }
  std::optional<ContextRecord> record = router_->registry().Find(id_);
  if (!record) {
    return absl::NotFoundError(absl::StrCat("context ", name_, " (id ", id_.value(),
                                            ") is not in the registry of ", router_->name()));
  }
  if (record->state == ContextState::kGone) return absl::OkStatus();
  if (record->parent == router_->id()) return router_->StopChild(id_);
  v1::StopRequest request;
  request.set_id(id_.value());
  Context parent(router_, record->parent, "");
  return parent.Call<v1::Empty>("grove.stop", request, options).status();
}

}  // namespace grove
