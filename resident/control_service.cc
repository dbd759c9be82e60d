#include "resident/control_service.h"

#include <deque>
#include <thread>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/json_bridge.h"
#include "common/status_util.h"
#include "files/files.h"
#include "link/hop.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/impl/codegen/client_unary_call.h"
#include "mesh/mesh.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"
#include "router/functions.h"

namespace grove {
namespace {

// How often a streaming RPC that waits for the tree looks whether its client went away.
constexpr absl::Duration kCancelPoll = absl::Milliseconds(100);
// How long a watch holds an added context's event for the start that keeps its path.
constexpr absl::Duration kStartWait = absl::Seconds(2);

// Items produced on the router's threads for one streaming RPC, drained by its thread.
template <typename T>
class EventQueue {
 public:
  void Push(T item) {
    absl::MutexLock lock(&mu_);
    items_.push_back(std::move(item));
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
  }
  // What is queued, waiting until `deadline` for something (or the close).
  std::deque<T> Take(absl::Time deadline, bool* closed) {
    absl::MutexLock lock(&mu_);
    auto ready = [this]() ABSL_NO_THREAD_SAFETY_ANALYSIS { return !items_.empty() || closed_; };
    mu_.AwaitWithDeadline(absl::Condition(&ready), deadline);
    *closed = closed_;
    return std::exchange(items_, {});
  }

 private:
  absl::Mutex mu_;
  std::deque<T> items_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

absl::Duration ConnectTimeout(int64_t ms) {
  return ms > 0 ? absl::Milliseconds(ms) : absl::Seconds(30);
}

// The call's deadline: the request's timeout and the client's own deadline, whichever is first.
absl::Time CallDeadline(const grpc::ServerContext* context, int64_t timeout_ms) {
  absl::Time deadline = absl::FromChrono(context->deadline());
  if (timeout_ms > 0) deadline = std::min(deadline, absl::Now() + absl::Milliseconds(timeout_ms));
  return deadline;
}

// Waits for `done`, cancelling `cancel` if the client goes away meanwhile.
void WaitOrCancel(grpc::ServerContext* context, absl::Notification& done, CancelSource& cancel) {
  while (!done.WaitForNotificationWithTimeout(kCancelPoll)) {
    if (context->IsCancelled()) cancel.Cancel();
  }
}

grpc::Status PathError(const std::string& path, const absl::Status& status) {
  return ToGrpcStatus(Annotate(status, absl::StrCat("path ", path)));
}

}  // namespace

ControlService::Known ControlService::Snapshot() const {
  Known known;
  for (KeptPaths::Entry& entry : deps_.kept->List()) {
    const uint64_t id = entry.id.value();
    known.kept.emplace(id, std::move(entry));
  }
  for (Supervisor::State& state : deps_.supervisor->States()) {
    if (state.id.has_value()) known.supervised.emplace(state.id->value(), std::move(state));
  }
  return known;
}

v1::ContextStatus ControlService::Describe(const ContextRecord& r, const Known& known) const {
  v1::ContextStatus s;
  s.set_id(r.id.value());
  s.set_name(r.name);
  s.set_parent(r.parent.value());
  s.set_method(r.method);
  s.set_host(r.host);
  s.set_pid(r.pid);
  s.set_user(r.user);
  s.set_state(ContextStateName(r.state));
  s.set_reason(r.reason);
  if (auto kept = known.kept.find(r.id.value()); kept != known.kept.end()) {
    s.set_path(kept->second.display);
    s.set_last_used_unix_ms(absl::ToUnixMillis(kept->second.last_used));
  }
  if (auto state = known.supervised.find(r.id.value()); state != known.supervised.end()) {
    s.set_supervised(true);
    s.set_restarts(state->second.restarts);
    if (s.reason().empty()) s.set_reason(state->second.reason);
  }
  return s;
}

grpc::Status ControlService::Version(grpc::ServerContext*, const v1::VersionRequest*,
                                     v1::VersionReply* reply) {
  *reply = deps_.version;
  return grpc::Status::OK;
}

grpc::Status ControlService::Status(grpc::ServerContext*, const v1::StatusRequest*,
                                    v1::StatusReply* reply) {
  *reply->mutable_master() = deps_.version;
  reply->set_uptime_ms(absl::ToUnixMillis(absl::Now()) - deps_.version.started_unix_ms());
  reply->set_idle_timeout_ms(absl::ToInt64Milliseconds(deps_.idle_timeout));
  const Known known = Snapshot();
  *reply->add_contexts() = Describe(RecordFromInfo(deps_.root->self()), known);
  for (const ContextRecord& r : deps_.root->registry().List(false)) {
    *reply->add_contexts() = Describe(r, known);
  }
  for (const Supervisor::State& state : deps_.supervisor->States()) {
    if (state.state == "running") continue;
    v1::ContextStatus* down = reply->add_down();
    down->set_path(state.display);
    down->set_state(state.state);
    down->set_reason(state.reason);
    down->set_supervised(true);
    down->set_restarts(state.restarts);
  }
  for (v1::ServiceStatus& service : deps_.ingress->Describe()) {
    *reply->add_services() = std::move(service);
  }
  reply->set_ingress(deps_.ingress->address());
  return grpc::Status::OK;
}

grpc::Status ControlService::Spawn(grpc::ServerContext*, const v1::SpawnPathRequest* request,
                                   v1::ContextStatus* reply) {
  absl::StatusOr<Context> context =
      deps_.kept->Ensure(request->path(), ConnectTimeout(request->connect_timeout_ms()));
  if (!context.ok()) return ToGrpcStatus(context.status());
  std::optional<ContextRecord> record = deps_.root->registry().Find(context->id());
  if (!record.has_value()) {
    return PathError(request->path(), absl::UnavailableError(
                                          absl::StrCat(context->name(), " went as it started")));
  }
  *reply = Describe(*record, Snapshot());
  return grpc::Status::OK;
}

grpc::Status ControlService::Stop(grpc::ServerContext*, const v1::StopPathRequest* request,
                                  v1::StopPathReply* reply) {
  std::string path = request->path();
  if (std::optional<KeptPaths::Entry> kept = deps_.kept->FindByPathOrName(path)) path = kept->path;
  absl::StatusOr<std::string> key = CanonicalPath(path);
  if (!key.ok()) {
    return ToGrpcStatus(absl::NotFoundError(absl::StrCat(
        "no context is kept at path or under the name '", request->path(), "' (", key.status().message(), ")")));
  }
  const bool supervised = deps_.supervisor->Forget(*key);
  absl::StatusOr<int> stopped = deps_.kept->Stop(path);
  if (!stopped.ok()) {
    if (supervised && stopped.status().code() == absl::StatusCode::kNotFound) {
      deps_.log->Note(absl::StrCat("stopped supervising ", request->path()));
      return grpc::Status::OK;
    }
    return ToGrpcStatus(stopped.status());
  }
  reply->set_stopped(*stopped);
  deps_.log->Note(absl::StrCat("stopped ", request->path(), " (", *stopped, " kept paths)"));
  return grpc::Status::OK;
}

grpc::Status ControlService::ListContexts(grpc::ServerContext*,
                                          const v1::ListContextsRequest* request,
                                          v1::ListContextsReply* reply) {
  const Known known = Snapshot();
  *reply->add_contexts() = Describe(RecordFromInfo(deps_.root->self()), known);
  for (const ContextRecord& r : deps_.root->registry().List(request->include_gone())) {
    *reply->add_contexts() = Describe(r, known);
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::WatchContexts(grpc::ServerContext* context,
                                           const v1::WatchContextsRequest*,
                                           grpc::ServerWriter<v1::ContextEvent>* writer) {
  auto queue = std::make_shared<EventQueue<RegistryEvent>>();
  Registry& registry = deps_.root->registry();
  // Subscribed before the snapshot is taken, so nothing falls between; an ADDED seen in both
  // is sent once.
  const int subscription =
      registry.Subscribe([queue](const RegistryEvent& event) { queue->Push(event); });
  absl::flat_hash_set<uint64_t> announced;
  bool open = true;
  const Known known = Snapshot();
  for (const ContextRecord& r : registry.List(false)) {
    v1::ContextEvent event;
    event.set_kind(v1::ContextEvent::ADDED);
    *event.mutable_context() = Describe(r, known);
    announced.insert(r.id.value());
    if (!writer->Write(event)) open = false;
  }
  while (open && !context->IsCancelled()) {
    bool closed = false;
    for (const RegistryEvent& e : queue->Take(absl::Now() + kCancelPoll, &closed)) {
      const bool added = e.kind == RegistryEvent::kAdded;
      if (added && !announced.insert(e.record.id.value()).second) continue;
      v1::ContextEvent event;
      event.set_kind(added ? v1::ContextEvent::ADDED : v1::ContextEvent::REMOVED);
      *event.mutable_context() = Describe(e.record, Snapshot());
      // A context is added while the start that keeps its path is still returning: its path
      // is known once that start ends (bounded: a start elsewhere may take longer).
      if (added && event.context().path().empty() &&
          deps_.kept->AwaitStarts(absl::Now() + kStartWait)) {
        *event.mutable_context() = Describe(e.record, Snapshot());
      }
      if (!writer->Write(event)) {
        open = false;
        break;
      }
    }
  }
  registry.Unsubscribe(subscription);
  return grpc::Status::OK;
}

grpc::Status ControlService::Call(grpc::ServerContext* context,
                                  const v1::ControlCallRequest* request,
                                  v1::ControlCallReply* reply) {
  const Function* function = deps_.root->FindFunction(request->function());
  if (function == nullptr) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("no function '", request->function(),
                                     "' in the resident program (", deps_.version.build(), ")"));
  }
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  const google::protobuf::Descriptor* in_type = pool->FindMessageTypeByName(function->argument_type);
  const google::protobuf::Descriptor* out_type = pool->FindMessageTypeByName(function->result_type);
  std::string argument;
  if (request->argument_case() == v1::ControlCallRequest::kJson) {
    if (in_type == nullptr || out_type == nullptr) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("the types of '", request->function(),
                                       "' are unknown here: call it with binary arguments"));
    }
    std::unique_ptr<google::protobuf::Message> in(
        google::protobuf::MessageFactory::generated_factory()->GetPrototype(in_type)->New());
    if (absl::Status parsed = JsonToMessage(request->json(), in.get()); !parsed.ok()) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("the argument of '", request->function(), "' is not a ",
                                       in_type->full_name(), " in JSON: ", parsed.message()));
    }
    argument = in->SerializeAsString();
  } else {
    argument = request->binary();
  }
  KeptPaths::Lease lease;
  absl::StatusOr<Context> target = deps_.kept->Ensure(
      request->path(), ConnectTimeout(request->connect_timeout_ms()), &lease);
  if (!target.ok()) return ToGrpcStatus(target.status());
  CancelSource cancel;
  CallOptions options;
  options.cancel = &cancel;
  options.deadline = CallDeadline(context, request->timeout_ms());
  absl::Notification done;
  absl::StatusOr<std::string> result = absl::UnknownError("no result");
  target->CallRaw(request->function(), function->argument_type, std::move(argument), options,
                  [&result, &done](absl::StatusOr<std::string> r) {
                    result = std::move(r);
                    done.Notify();
                  });
  WaitOrCancel(context, done, cancel);
  if (!result.ok()) return PathError(request->path(), result.status());
  reply->set_context(target->name());
  reply->set_result_type(function->result_type);
  if (request->argument_case() == v1::ControlCallRequest::kJson) {
    std::unique_ptr<google::protobuf::Message> out(
        google::protobuf::MessageFactory::generated_factory()->GetPrototype(out_type)->New());
    if (!out->ParseFromString(*result)) {
      return grpc::Status(grpc::StatusCode::INTERNAL,
                          absl::StrCat("cannot decode the result of '", request->function(),
                                       "' as ", out_type->full_name()));
    }
    absl::StatusOr<std::string> json = MessageToJson(*out);
    if (!json.ok()) return ToGrpcStatus(json.status());
    reply->set_json(*std::move(json));
  } else {
    reply->set_binary(*std::move(result));
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::Run(grpc::ServerContext* context,
                                 const v1::ControlRunRequest* request,
                                 grpc::ServerWriter<v1::ControlRunEvent>* writer) {
  if (request->command().argv_size() == 0) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Run needs a command (argv)");
  }
  KeptPaths::Lease lease;
  absl::StatusOr<Context> target = deps_.kept->Ensure(
      request->path(), ConnectTimeout(request->connect_timeout_ms()), &lease);
  if (!target.ok()) return ToGrpcStatus(target.status());
  {
    v1::ControlRunEvent started;
    std::optional<ContextRecord> record = deps_.root->registry().Find(target->id());
    if (record.has_value()) *started.mutable_started() = Describe(*record, Snapshot());
    writer->Write(started);
  }
  auto queue = std::make_shared<EventQueue<v1::ControlRunEvent>>();
  CancelSource cancel;
  CallOptions options;
  options.cancel = &cancel;
  options.deadline = CallDeadline(context, request->timeout_ms());
  options.on_output = [queue](int stream, const std::string& data) {
    v1::ControlRunEvent event;
    if (stream == 2) {
      event.set_stderr(data);
    } else {
      event.set_stdout(data);
    }
    queue->Push(std::move(event));
  };
  v1::RunRequest command = request->command();
  command.set_output(v1::RunRequest::STREAM);
  absl::StatusOr<v1::RunReply> result = absl::UnknownError("no result");
  target->CallRaw(
      "grove.run", v1::RunRequest::descriptor()->full_name(), command.SerializeAsString(),
      options,
      [queue, &result](absl::StatusOr<std::string> bytes) {
        result = Context::Decode<v1::RunReply>("grove.run", std::move(bytes));
        queue->Close();  // After the output: it comes before the reply.
      },
      v1::RunReply::descriptor()->full_name());
  bool writing = true, closed = false;
  while (!closed) {
    for (v1::ControlRunEvent& event : queue->Take(absl::Now() + kCancelPoll, &closed)) {
      if (writing && !writer->Write(event)) {
        writing = false;
        cancel.Cancel();
      }
    }
    if (writing && context->IsCancelled()) {
      writing = false;
      cancel.Cancel();
    }
  }
  if (!result.ok()) return PathError(request->path(), result.status());
  v1::ControlRunEvent exit;
  *exit.mutable_exit() = *result;
  writer->Write(exit);
  return grpc::Status::OK;
}

grpc::Status ControlService::Transfer(bool pull, grpc::ServerContext* context,
                                      const v1::TransferRequest* request,
                                      grpc::ServerWriter<v1::TransferEvent>* writer) {
  const char* verb = pull ? "pull" : "push";
  if (request->paths().empty() || request->src().empty() || request->dest().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat(verb, " needs paths, src and dest"));
  }
  if (pull && request->paths_size() != 1) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "pull takes one path");
  }
  const std::string& local = pull ? request->dest() : request->src();
  if (local.empty() || local[0] != '/') {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("the master's side of a ", verb, " must be an absolute path (",
                                     local, "): the master does not share the client's directory"));
  }
  v1::TransferResult result;
  std::vector<KeptPaths::Lease> leases(request->paths_size());
  std::vector<ContextId> targets;
  std::vector<int> target_index;  // targets[i] is result.targets(target_index[i]).
  for (int i = 0; i < request->paths_size(); ++i) {
    v1::TransferTarget* target = result.add_targets();
    target->set_path(request->paths(i));
    absl::StatusOr<Context> c = deps_.kept->Ensure(
        request->paths(i), ConnectTimeout(request->connect_timeout_ms()), &leases[i]);
    if (!c.ok()) {
      target->set_unreachable(true);
      target->set_code(static_cast<int>(c.status().code()));
      target->set_error(std::string(c.status().message()));
      continue;
    }
    target->set_context(c->name());
    targets.push_back(c->id());
    target_index.push_back(i);
  }
  // Progress is coalesced: the latest figures, sent when they change.
  struct Shared {
    absl::Mutex mu;
    int64_t done ABSL_GUARDED_BY(mu) = 0, total ABSL_GUARDED_BY(mu) = -1;
    bool finished ABSL_GUARDED_BY(mu) = false;
  };
  auto shared = std::make_shared<Shared>();
  CancelSource cancel;
  TransferOptions options;
  options.recursive = request->recursive();
  options.kernel_copy = !request->no_kernel_copy();
  options.call.cancel = &cancel;
  options.call.deadline = CallDeadline(context, request->timeout_ms());
  options.progress = [shared](int64_t done, int64_t total) {
    absl::MutexLock lock(&shared->mu);
    shared->done = done;
    shared->total = total;
  };
  absl::StatusOr<TransferSummary> summary = TransferSummary();
  std::thread transfer;
  if (!targets.empty()) {
    transfer = std::thread([&] {
      summary = pull ? PullFiles(*deps_.root, targets[0], request->src(), request->dest(), options)
                     : PushFiles(*deps_.root, targets, request->src(), request->dest(), options);
      absl::MutexLock lock(&shared->mu);
      shared->finished = true;
    });
  }
  int64_t sent_done = -1;
  bool writing = true;
  while (transfer.joinable()) {
    v1::TransferEvent event;
    bool finished;
    {
      absl::MutexLock lock(&shared->mu);
      auto changed = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
        return shared->finished || shared->done != sent_done;
      };
      shared->mu.AwaitWithTimeout(absl::Condition(&changed), kCancelPoll);
      finished = shared->finished;
      if (shared->total >= 0 && shared->done != sent_done) {
        event.mutable_progress()->set_done(shared->done);
        event.mutable_progress()->set_total(shared->total);
        sent_done = shared->done;
      }
    }
    if (writing && event.has_progress() && !writer->Write(event)) writing = false;
    if (writing && context->IsCancelled()) writing = false;
    if (!writing) cancel.Cancel();
    if (finished) transfer.join();
  }
  if (!summary.ok()) return PathError(request->paths(0), summary.status());
  result.set_bytes(summary->bytes);
  result.set_entries(summary->entries);
  for (const TargetResult& r : summary->results) {
    for (size_t i = 0; i < targets.size(); ++i) {
      // A pull's one result is this context's (where it wrote).
      if (!pull && targets[i] != r.id) continue;
      v1::TransferTarget* target = result.mutable_targets(target_index[i]);
      target->set_code(static_cast<int>(r.status.code()));
      target->set_error(std::string(r.status.message()));
      break;
    }
  }
  v1::TransferEvent last;
  *last.mutable_result() = std::move(result);
  writer->Write(last);
  return grpc::Status::OK;
}

grpc::Status ControlService::Forward(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<v1::ForwardResponse, v1::ForwardRequest>* stream) {
  v1::ForwardRequest first;
  if (!stream->Read(&first) || !first.has_start() || first.start().method().empty()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "Forward's first message names the path and the method");
  }
  const v1::ForwardStart& start = first.start();
  KeptPaths::Lease lease;
  absl::StatusOr<Context> target = deps_.kept->Ensure(
      start.path(), ConnectTimeout(start.connect_timeout_ms()), &lease);
  if (!target.ok()) return ToGrpcStatus(target.status());
  std::shared_ptr<grpc::Channel> channel = ChannelTo(*target);
  grpc::ClientContext upstream_context;
  upstream_context.set_deadline(absl::ToChronoTime(CallDeadline(context, start.timeout_ms())));
  // Every kind of method goes as a bidirectional stream: the wire is the same, and the
  // service's handler reads as many messages as its kind takes.
  grpc::internal::RpcMethod method(start.method().c_str(),
                                   grpc::internal::RpcMethod::BIDI_STREAMING);
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> upstream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(), method, &upstream_context));
  // Requests, from the client to the service, on a thread of their own.
  absl::Notification requests_done;
  std::thread requests([&] {
    v1::ForwardRequest request;
    while (stream->Read(&request)) {
      grpc::Slice slice(request.message());
      if (!upstream->Write(grpc::ByteBuffer(&slice, 1))) break;
    }
    upstream->WritesDone();
    requests_done.Notify();
  });
  grpc::ByteBuffer buffer;
  bool client_gone = false;
  while (upstream->Read(&buffer)) {
    std::vector<grpc::Slice> slices;
    v1::ForwardResponse response;
    if (buffer.Dump(&slices).ok()) {
      for (const grpc::Slice& s : slices) {
        response.mutable_message()->append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
    if (!stream->Write(response)) {
      client_gone = true;
      upstream_context.TryCancel();
      break;
    }
  }
  grpc::Status status = upstream->Finish();
  // The service is done. A client still sending (it has not half-closed a moment later) has
  // its call cancelled, which ends the reading thread.
  if (client_gone || !requests_done.WaitForNotificationWithTimeout(absl::Seconds(1))) {
    context->TryCancel();
  }
  requests.join();
  if (!status.ok()) {
    return grpc::Status(status.error_code(),
                        absl::StrCat("path ", start.path(), ": ", status.error_message()));
  }
  return status;
}

grpc::Status ControlService::Logs(grpc::ServerContext* context, const v1::LogsRequest* request,
                                  grpc::ServerWriter<v1::LogLine>* writer) {
  std::optional<ContextId> under;
  if (!request->path().empty()) {
    std::optional<KeptPaths::Entry> kept = deps_.kept->FindByPathOrName(request->path());
    if (!kept.has_value()) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND,
                          absl::StrCat("no context is kept at path or under the name '",
                                       request->path(), "'"));
    }
    under = kept->id;
  }
  Registry& registry = deps_.root->registry();
  // Whether context `id` is `*under` or below it.
  auto wanted = [&](uint64_t id) {
    if (!under.has_value()) return true;
    for (int depth = 0; depth < 64 && id != 0; ++depth) {
      if (id == under->value()) return true;
      std::optional<ContextRecord> record = registry.Find(ContextId(id));
      if (!record.has_value()) return false;
      id = record->parent.value();
    }
    return false;
  };
  uint64_t after = 0;
  const uint64_t end = deps_.log->latest();
  while (!context->IsCancelled()) {
    size_t max = 256;
    if (!request->follow()) {
      // What was there when the request came, and no more.
      if (after >= end) break;
      max = std::min<uint64_t>(max, end - after);
    }
    for (const v1::LogLine& line : deps_.log->Since(&after, max, absl::Now() + kCancelPoll)) {
      if (!wanted(line.context_id())) continue;
      if (!writer->Write(line)) return grpc::Status::OK;
    }
  }
  return grpc::Status::OK;
}

grpc::Status ControlService::Reload(grpc::ServerContext*, const v1::ReloadRequest* request,
                                    v1::ReloadReply* reply) {
  if (absl::Status valid = ValidateSpec(request->spec()); !valid.ok()) {
    return ToGrpcStatus(valid);
  }
  // The ingress first: a listener that cannot move refuses the whole spec, changing nothing.
  if (absl::Status ingress = deps_.ingress->Apply(request->spec()); !ingress.ok()) {
    deps_.log->Note(absl::StrCat("reload refused: the ingress: ", ingress.message()));
    return ToGrpcStatus(ingress);
  }
  *reply = deps_.supervisor->Apply(request->spec(), absl::Seconds(30));
  deps_.log->Note(absl::StrCat("reload: ", reply->started_size(), " started, ",
                               reply->stopped_size(), " stopped, ", reply->kept_size(), " kept"));
  return grpc::Status::OK;
}

grpc::Status ControlService::Shutdown(grpc::ServerContext*, const v1::ShutdownRequest*,
                                      v1::ShutdownReply*) {
  deps_.log->Note("shutdown requested through the control socket");
  deps_.shutdown();
  return grpc::Status::OK;
}

}  // namespace grove
