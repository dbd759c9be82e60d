#include "resident/attach.h"

#include <algorithm>

#include "common/status_util.h"
#include "resident/control_service.h"
#include "resident/control_socket.h"

namespace grove {
namespace {

std::unique_ptr<grpc::ClientContext> ContextWith(absl::Duration timeout) {
  auto context = std::make_unique<grpc::ClientContext>();
  if (timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  return context;
}

}  // namespace

AttachedTree::AttachedTree(std::shared_ptr<grpc::Channel> channel, v1::VersionReply version)
    : version_(std::move(version)), stub_(v1::Control::NewStub(std::move(channel))) {}

absl::StatusOr<v1::ContextStatus> AttachedTree::Spawn(const std::string& path,
                                                      absl::Duration connect_timeout) {
  grpc::ClientContext context;
  v1::SpawnPathRequest request;
  request.set_path(path);
  request.set_connect_timeout_ms(absl::ToInt64Milliseconds(connect_timeout));
  v1::ContextStatus reply;
  grpc::Status status = stub_->Spawn(&context, request, &reply);
  if (!status.ok()) return FromGrpcStatus(status);
  return reply;
}

absl::Status AttachedTree::Stop(const std::string& path) {
  grpc::ClientContext context;
  v1::StopPathRequest request;
  request.set_path(path);
  v1::StopPathReply reply;
  return FromGrpcStatus(stub_->Stop(&context, request, &reply));
}

absl::StatusOr<std::vector<v1::ContextStatus>> AttachedTree::List(bool include_gone) {
  grpc::ClientContext context;
  v1::ListContextsRequest request;
  request.set_include_gone(include_gone);
  v1::ListContextsReply reply;
  grpc::Status status = stub_->ListContexts(&context, request, &reply);
  if (!status.ok()) return FromGrpcStatus(status);
  return std::vector<v1::ContextStatus>(reply.contexts().begin(), reply.contexts().end());
}

absl::StatusOr<std::string> AttachedTree::CallRaw(const std::string& path,
                                                  const std::string& function,
                                                  std::string argument, absl::Duration timeout) {
  std::unique_ptr<grpc::ClientContext> context = ContextWith(timeout);
  v1::ControlCallRequest request;
  request.set_path(path);
  request.set_function(function);
  request.set_binary(std::move(argument));
  v1::ControlCallReply reply;
  grpc::Status status = stub_->Call(context.get(), request, &reply);
  if (!status.ok()) return FromGrpcStatus(status);
  return std::move(*reply.mutable_binary());
}

absl::StatusOr<v1::RunReply> AttachedTree::Run(const std::string& path,
                                               const v1::RunRequest& command,
                                               const CallOptions& options,
                                               v1::ContextStatus* started,
                                               absl::Duration connect_timeout) {
  grpc::ClientContext context;
  absl::Time deadline = options.deadline;
  if (options.timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, absl::Now() + options.timeout);
  }
  if (deadline != absl::InfiniteFuture()) context.set_deadline(absl::ToChronoTime(deadline));
  uint64_t on_cancel = 0;
  if (options.cancel != nullptr) {
    on_cancel = options.cancel->AddCallback([&context] { context.TryCancel(); });
  }
  v1::ControlRunRequest request;
  request.set_path(path);
  *request.mutable_command() = command;
  request.set_connect_timeout_ms(absl::ToInt64Milliseconds(connect_timeout));
  auto reader = stub_->Run(&context, request);
  v1::ControlRunEvent event;
  v1::RunReply reply;
  while (reader->Read(&event)) {
    switch (event.event_case()) {
      case v1::ControlRunEvent::kStarted:
        if (started != nullptr) *started = event.started();
        break;
      case v1::ControlRunEvent::kStdout:
        if (options.on_output) {
          options.on_output(1, event.stdout());
        } else {
          *reply.mutable_stdout() += event.stdout();
        }
        break;
      case v1::ControlRunEvent::kStderr:
        if (options.on_output) {
          options.on_output(2, event.stderr());
        } else {
          *reply.mutable_stderr() += event.stderr();
        }
        break;
      case v1::ControlRunEvent::kExit:
        reply.set_exit_status(event.exit().exit_status());
        reply.set_signal(event.exit().signal());
        break;
      default:
        break;
    }
  }
  grpc::Status status = reader->Finish();
  if (options.cancel != nullptr) options.cancel->RemoveCallback(on_cancel);
  if (!status.ok()) return FromGrpcStatus(status);
  return reply;
}

absl::StatusOr<std::unique_ptr<AttachedTree>> Attach(const std::string& given) {
  const std::string socket = given.empty() ? DefaultControlSocket() : given;
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = ConnectControl(socket);
  if (!channel.ok()) return channel.status();
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::VersionReply version;
  grpc::Status status =
      v1::Control::NewStub(*channel)->Version(&context, v1::VersionRequest(), &version);
  if (!status.ok()) {
    return absl::UnavailableError(absl::StrCat("the resident master at ", socket,
                                               " does not answer: ", status.error_message()));
  }
  if (version.api_version() != kControlApiVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the resident master at ", socket, " (pid ", version.pid(), ", grove ",
        version.version(), ", build ", version.build().substr(0, 12), ") speaks control API v",
        version.api_version(), "; this build speaks v", kControlApiVersion,
        ": restart it with this build (grove down; grove up) or use --fresh"));
  }
  return std::make_unique<AttachedTree>(*std::move(channel), std::move(version));
}

}  // namespace grove
