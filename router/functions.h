// Functions: the typed protobuf functions a program registers in main(), callable in every
// context of its tree (a local child is the same binary; a remote one the same binary
// uploaded).
//
//   grove::Functions functions;
//   functions.Register<EchoRequest, EchoReply>(
//       "echo", [](const EchoRequest& in, grove::CallContext& call) -> absl::StatusOr<EchoReply> {
//         EchoReply out;
//         out.set_text(in.text());
//         return out;
//       });
#ifndef GROVE_ROUTER_FUNCTIONS_H_
#define GROVE_ROUTER_FUNCTIONS_H_

#include <cstdint>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/context_id.h"
#include "glog/logging.h"
#include "google/protobuf/message.h"

namespace grpc {
class Service;
}  // namespace grpc

namespace grove {

class Router;

// Cancellation that can be observed and chained. Thread-safe.
class CancelSource {
 public:
  CancelSource() = default;
  CancelSource(const CancelSource&) = delete;
  CancelSource& operator=(const CancelSource&) = delete;

  // Cancels; runs every registered callback once (outside any lock). Idempotent.
  void Cancel();
  bool cancelled() const;
  // Runs `callback` on cancellation, or now when already cancelled. Returns an id for
  // RemoveCallback (0 when it ran now).
  uint64_t AddCallback(std::function<void()> callback);
  // After it returns the callback is not running and will not run, so what it refers to may
  // be destroyed (unless called from inside a callback of this source).
  void RemoveCallback(uint64_t id);

 private:
  mutable absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  // The thread running the callbacks, while it does.
  std::thread::id running_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, std::function<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
};

// What a running function knows of its call. Created by the router for each incoming call;
// valid for the duration of the function. Thread-safe.
class CallContext {
 public:
  CallContext(Router* router, ContextId caller, uint64_t call_id, absl::Time deadline)
      : router_(router), caller_(caller), call_id_(call_id), deadline_(deadline) {}
  CallContext(const CallContext&) = delete;
  CallContext& operator=(const CallContext&) = delete;

  // The context that made the call.
  ContextId caller() const { return caller_; }
  absl::Time deadline() const { return deadline_; }
  // True once the caller cancelled, the deadline passed, or the caller was lost. Functions
  // that run long should check it (or register on cancel_source()) and return early.
  bool cancelled() const { return cancel_.cancelled(); }
  CancelSource& cancel_source() { return cancel_; }
  // True once the router cancelled it because its deadline passed (set before the cancel).
  bool deadline_exceeded() const { return deadline_exceeded_.load(std::memory_order_acquire); }
  void MarkDeadlineExceeded() { deadline_exceeded_.store(true, std::memory_order_release); }

  // This context's router: start children, call other contexts (pass `this` as
  // CallOptions::parent so deadline and cancellation carry over).
  Router& router() const { return *router_; }

  // Streams output to the caller before the reply (stream 1 stdout, 2 stderr).
  void Output(int stream, std::string data);

  uint64_t call_id() const { return call_id_; }

 private:
  Router* const router_;
  const ContextId caller_;
  const uint64_t call_id_;
  const absl::Time deadline_;
  std::atomic<bool> deadline_exceeded_{false};
  CancelSource cancel_;
};

// Who may call a function, besides the context itself.
enum class CallableBy {
  kAncestors,    // The default: only contexts above this one in the tree.
  kDescendants,  // Also contexts below this one.
  kAny,          // Any context in the tree, siblings included.
};

struct FunctionOptions {
  CallableBy callable_by = CallableBy::kAncestors;
  // The function is quick and never blocks: run it on the thread that received the call,
  // saving a thread hand-off.
  bool run_inline = false;
};

namespace internal {

// Whether `F` can be called as fn(const In&, CallContext&) and returns absl::StatusOr<Out>
// (or something that converts to it): the signature Functions::Register expects.
template <typename F, typename In, typename Out, typename = void>
struct ReturnsStatusOr : std::false_type {};
template <typename F, typename In, typename Out>
struct ReturnsStatusOr<
    F, In, Out,
    std::void_t<std::invoke_result_t<std::decay_t<F>&, const In&, CallContext&>>>
    : std::is_convertible<std::invoke_result_t<std::decay_t<F>&, const In&, CallContext&>,
                          absl::StatusOr<Out>> {};

}  // namespace internal

// One registered function, type-erased to bytes.
struct Function {
  std::string name;
  std::string argument_type;  // Full protobuf name, checked against the call's.
  std::string result_type;
  FunctionOptions options;
  std::function<absl::StatusOr<std::string>(const std::string& argument, CallContext& call)>
      invoke;
};

// The functions a program offers. Filled in main() before grove takes over, then read-only:
// Register is not thread-safe; Find is, once registration is over.
class Functions {
 public:
  Functions() = default;
  Functions(const Functions&) = delete;
  Functions& operator=(const Functions&) = delete;

  // Registers `fn` under `name`. Names starting with "grove." are reserved. Registering a
  // name twice is a programmer error (CHECK).
  template <typename In, typename Out, typename F>
  void Register(const std::string& name, F&& fn, FunctionOptions options = {}) {
    CHECK(name.rfind("grove.", 0) != 0) << "function names starting with grove. are reserved";
    Add(MakeFunction<In, Out>(name, std::forward<F>(fn), options));
  }

  // `fn` type-erased to bytes: decodes the argument as In, encodes the result.
  template <typename In, typename Out, typename F>
  static Function MakeFunction(const std::string& name, F&& fn, FunctionOptions options) {
    static_assert(std::is_base_of_v<google::protobuf::Message, In>, "In must be a protobuf");
    static_assert(std::is_base_of_v<google::protobuf::Message, Out>, "Out must be a protobuf");
    static_assert(internal::ReturnsStatusOr<F, In, Out>::value,
                  "a function registered as <In, Out> must be callable as "
                  "fn(const In& argument, grove::CallContext& call) and return "
                  "absl::StatusOr<Out> (or Out)");
    Function f;
    f.name = name;
    f.argument_type = In::descriptor()->full_name();
    f.result_type = Out::descriptor()->full_name();
    f.options = options;
    f.invoke = [name, fn = std::forward<F>(fn)](const std::string& argument,
                                                 CallContext& call) -> absl::StatusOr<std::string> {
      In in;
      if (!in.ParseFromString(argument)) {
        return absl::InvalidArgumentError(absl::StrCat("cannot decode the argument of '", name,
                                                       "' as ", In::descriptor()->full_name()));
      }
      absl::StatusOr<Out> out = fn(in, call);
      if (!out.ok()) return out.status();
      return out->SerializeAsString();
    };
    return f;
  }

  // Registers an already type-erased function (used for the built-ins).
  void Add(Function function);

  // nullptr when unknown.
  const Function* Find(const std::string& name) const;
  std::vector<std::string> Names() const;

  // Hosts `service` (a generated service's sync or callback implementation; async services
  // are not supported) in every context of the tree, reachable with ordinary stubs on
  // grove::ChannelTo(context) (mesh/mesh.h) from that context's ancestors. Not owned; must
  // outlive every context of this process. Not thread-safe, like Register.
  void AddService(grpc::Service* service) { services_.push_back(service); }
  const std::vector<grpc::Service*>& services() const { return services_; }

  // Registers `hook` to run first thing in every fork child (the `fork` method), before
  // grove starts anything there. A fork child begins as a copy of its context as it was
  // when that context started its zygote (at startup), so state created before then is the
  // same in every fork child: re-seed random generators here so that siblings differ.
  // Hooks run in registration order, on the child's only thread. Not thread-safe, like
  // Register.
  void OnFork(std::function<void()> hook) { fork_hooks_.push_back(std::move(hook)); }
  void RunForkHooks() const {
    for (const auto& hook : fork_hooks_) hook();
  }

 private:
  absl::flat_hash_map<std::string, std::unique_ptr<Function>> functions_;
  std::vector<std::function<void()>> fork_hooks_;
  std::vector<grpc::Service*> services_;
};

}  // namespace grove

#endif  // GROVE_ROUTER_FUNCTIONS_H_
