// Context: a handle on one context of the tree, from the point of view of this one.
//
//   absl::StatusOr<grove::Context> worker = master.Spawn("local,name=worker1");
//   absl::StatusOr<EchoReply> reply = worker->Call<EchoReply>("echo", request);
//   absl::StatusOr<grove::Context> deep = worker->Spawn("local,name=deep");
//
// The same API works in every context: code running in a child gets its router from the
// CallContext and makes Contexts of its own children, or of any context it may call.
#ifndef GROVE_ROUTER_CONTEXT_H_
#define GROVE_ROUTER_CONTEXT_H_

#include <future>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "common/context_id.h"
#include "common/status_util.h"
#include "proto/builtins.pb.h"
#include "router/router.h"

namespace grove {

// A value type: an id and a name, and the router calls go through. Cheap to copy. Thread-safe
// (every method may be called from any thread). The router must outlive it.
class Context {
 public:
  Context(Router* router, ContextId id, std::string name)
      : router_(router), id_(id), name_(std::move(name)) {}

  ContextId id() const { return id_; }
  const std::string& name() const { return name_; }
  Router& router() const { return *router_; }

  // Calls `function` there and waits for the result (or the deadline in `options`). A remote
  // error keeps its code and message and names the context it happened in; a lost context
  // gives UNAVAILABLE naming it and why.
  template <typename Out, typename In>
  absl::StatusOr<Out> Call(const std::string& function, const In& in,
                           const CallOptions& options = {}) const {
    // Waits on a Notification, not CallAsync's future: no shared state to allocate, and no
    // futex call from std::call_once in set_value.
    absl::StatusOr<std::string> bytes = absl::UnknownError("no result");
    absl::Notification done;
    CallRaw(function, In::descriptor()->full_name(), in.SerializeAsString(), options,
            [&bytes, &done](absl::StatusOr<std::string> result) {
              bytes = std::move(result);
              done.Notify();
            },
            Out::descriptor()->full_name());
    done.WaitForNotification();
    return Decode<Out>(function, std::move(bytes));
  }

  // Like Call, without waiting. Any number of calls may be in flight.
  template <typename Out, typename In>
  std::future<absl::StatusOr<Out>> CallAsync(const std::string& function, const In& in,
                                             const CallOptions& options = {}) const {
    auto promise = std::make_shared<std::promise<absl::StatusOr<Out>>>();
    std::future<absl::StatusOr<Out>> future = promise->get_future();
    CallRaw(function, In::descriptor()->full_name(), in.SerializeAsString(), options,
            [promise, function](absl::StatusOr<std::string> bytes) {
              promise->set_value(Decode<Out>(function, std::move(bytes)));
            },
            Out::descriptor()->full_name());
    return future;
  }

  // A call's serialized result (what CallRaw's `done` gets) as `Out`.
  template <typename Out>
  static absl::StatusOr<Out> Decode(const std::string& function,
                                    absl::StatusOr<std::string> bytes) {
    if (!bytes.ok()) return bytes.status();
    Out out;
    if (!out.ParseFromString(*bytes)) {
      return absl::InternalError(absl::StrCat("cannot decode the result of '", function,
                                              "' as ", Out::descriptor()->full_name()));
    }
    return out;
  }

  // The untyped form: `done` runs once with the serialized result. With `result_type`
  // (a full protobuf name), the callee refuses the call (INVALID_ARGUMENT) unless its function
  // returns that type.
  void CallRaw(const std::string& function, const std::string& argument_type,
               std::string argument, const CallOptions& options, Router::Done done,
               const std::string& result_type = "") const {
    router_->StartCall(id_, function, argument_type, std::move(argument), options,
                       std::move(done), result_type);
  }

  // ---- Built-ins ----
  absl::Status Ping(const CallOptions& options = {}) const;
  absl::StatusOr<v1::InfoReply> Info(const CallOptions& options = {}) const;
  // Runs a command there (argv, env, cwd, stdin) and returns its exit status and output.
  absl::StatusOr<v1::RunReply> Run(const v1::RunRequest& request,
                                   const CallOptions& options = {}) const;
  // Starts a child of this context, as `hop` says ("local", "local,name=worker2").
  absl::StatusOr<Context> Spawn(const std::string& hop, const CallOptions& options = {}) const;
  // Takes this context and its subtree down (its parent does it: graceful, then SIGTERM,
  // then SIGKILL) and returns once it is reaped.
  absl::Status Shutdown(const CallOptions& options = {}) const;

 private:
  Router* router_;
  ContextId id_;
  std::string name_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_CONTEXT_H_
