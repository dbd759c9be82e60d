// Fuzzes what a child's link feeds into its parent's router: the input is the bytes of one
// grove.v1.Batch, parsed as gRPC parses a Router.Attach message; every envelope in it is
// handed to Router::OnEnvelope as if child A sent it, then A's link drops and the router shuts
// down. Each input runs twice: with the router under test as the master, and as a middle
// context (id 3) under a parent.
//
//              parent (id 0; fake, middle run only)
//                 │
//          router under test (id 0 or 3)
//             │                 │
//     child A (id 1)      child B (id 2)
//     sends the batch     sends nothing
//
// The links are fakes without threads: the router's sends are checked and dropped, and the
// fuzzer calls the router directly, so a run is deterministic up to the functions that run
// on the router's workers. Besides not crashing, hanging or leaking, a run checks what a
// compromised child must never achieve (see SECURITY.md):
//  - run a function only ancestors may call (fuzz.ancestors_only aborts);
//  - make the router send its parent or its sibling anything in the name of the parent or
//    the sibling (a forged source id);
//  - complete a call that the router made to a context outside A's subtree (fuzz.start_call
//    starts one; B and the parent never answer).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/context_id.h"
#include "glog/logging.h"
#include "google/protobuf/stubs/logging.h"
#include "proto/builtins.pb.h"
#include "proto/grove.pb.h"
#include "router/functions.h"
#include "link/launcher.h"
#include "link/link.h"
#include "router/router.h"
#include "router/testing/fake_link.h"

namespace grove {
namespace {

constexpr uint64_t kParent = 0;  // The master: the parent in the middle run.
constexpr uint64_t kChildA = 1;  // Sends the batch.
constexpr uint64_t kChildB = 2;  // A's sibling.
constexpr uint64_t kMiddle = 3;  // The router under test in the middle run.

// The links around one router under test, and the checks on what it sends.
class Harness final : public Launcher {
 public:
  explicit Harness(bool master) : master_(master) {}

  // The parent link of the middle router. Answers the router's own id block request (ids
  // 1 and 2, for A and B) and checks the rest.
  std::shared_ptr<FakeLink> MakeParentLink() {
    parent_ = std::make_shared<FakeLink>("parent link", [this](FakeLink* link, v1::Envelope e) {
      CheckForwarded("the parent", e);
      AnswerIdBlock(*link, e, kMiddle, kParent, kChildA, 2);
    });
    return parent_;
  }

  // Launcher: children A then B, on fake links.
  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override {
    const bool is_a = request.info.id() == kChildA;
    CHECK(is_a || request.info.id() == kChildB) << "unexpected child id " << request.info.id();
    auto link = std::make_shared<FakeLink>(
        absl::StrCat("link to ", request.info.name()),
        [this, is_a](FakeLink*, v1::Envelope e) {
          if (!is_a) CheckForwarded("child B", e);
        });
    (is_a ? a_ : b_) = link;
    LaunchedChild launched;
    launched.link = link;
    launched.info = request.info;
    launched.info.set_host("fuzz");
    launched.info.set_pid(1000 + request.info.id());
    launched.handle = std::make_unique<LinkChildHandle>(link);
    return launched;
  }

  FakeLink& a() const { return *a_; }

 private:
  // Whatever A sends, nothing may reach the parent or B in the name of the parent, B, or an
  // ancestor: A speaks only for itself and its own subtree.
  void CheckForwarded(const char* to, const v1::Envelope& e) const {
    const bool forged = e.src() == kChildB || (!master_ && e.src() == kParent);
    CHECK(!forged) << "the router sent " << to << " an envelope with the forged source "
                   << e.src() << ": " << e.ShortDebugString();
  }

  const bool master_;
  std::shared_ptr<FakeLink> parent_;
  std::shared_ptr<FakeLink> a_;
  std::shared_ptr<FakeLink> b_;
};

// True when `id` is A or a context that A added below itself.
bool BehindA(const Registry& registry, uint64_t id) {
  for (int hops = 0; hops < 64; ++hops) {
    if (id == kChildA) return true;
    std::optional<ContextRecord> record = registry.Find(ContextId(id));
    if (!record || record->parent.value() == id) return false;
    id = record->parent.value();
  }
  return false;
}

// The functions A may try to call (besides the built-ins).
const Functions& FuzzFunctions() {
  static const Functions* functions = [] {
    auto* f = new Functions();
    // Streams its stdin back as output, then returns it. On a worker thread.
    f->Register<v1::RunRequest, v1::RunReply>(
        "fuzz.echo",
        [](const v1::RunRequest& in, CallContext& call) -> absl::StatusOr<v1::RunReply> {
          call.Output(1, in.stdin());
          v1::RunReply out;
          out.set_stdout(in.stdin());
          return out;
        },
        {CallableBy::kAny, /*run_inline=*/false});
    f->Register<v1::Empty, v1::Empty>(
        "fuzz.descendants",
        [](const v1::Empty&, CallContext&) -> absl::StatusOr<v1::Empty> { return v1::Empty(); },
        {CallableBy::kDescendants, /*run_inline=*/true});
    f->Register<v1::Empty, v1::Empty>(
        "fuzz.ancestors_only",
        [](const v1::Empty&, CallContext& call) -> absl::StatusOr<v1::Empty> {
          LOG(FATAL) << "context " << call.caller() << " ran an ancestors-only function in "
                     << call.router().name();
          return v1::Empty();
        });
    // Starts a ping of context `id` from the router under test and returns at once. Its
    // reply may only come from that context's side of the tree: a success for a context
    // that is neither A's subtree nor the router itself means a forged reply was accepted.
    f->Register<v1::StopRequest, v1::Empty>(
        "fuzz.start_call",
        [](const v1::StopRequest& in, CallContext& call) -> absl::StatusOr<v1::Empty> {
          Router& router = call.router();
          const uint64_t dst = in.id();
          const bool answerable = dst == router.id().value() || BehindA(router.registry(), dst);
          router.StartCall(ContextId(dst), "grove.ping", v1::Empty::descriptor()->full_name(),
                           "", CallOptions(), [dst, answerable](absl::StatusOr<std::string> r) {
                             CHECK(answerable || !r.ok())
                                 << "a ping of context " << dst
                                 << ", which never answers, succeeded: a forged reply";
                           });
          return v1::Empty();
        },
        {CallableBy::kAny, /*run_inline=*/true});
    return f;
  }();
  return *functions;
}

void RunRouter(const v1::Batch& batch, bool master) {
  Harness harness(master);  // Outlives the router, whose workers may still send.
  Router::Options options;
  options.self.set_id(master ? kParent : kMiddle);
  options.self.set_name(master ? "master" : "middle");
  options.self.set_parent(kParent);
  options.self.set_method(master ? "" : "local");
  options.self.set_host("fuzz");
  if (!master) options.ancestors = {kParent};
  options.functions = &FuzzFunctions();
  options.max_message_bytes = 1 << 20;
  options.stop_grace = absl::ZeroDuration();
  Router router(options);
  router.AddLauncher("local", &harness);
  if (master) {
    router.SetLogSink([](const ContextRecord&, const v1::LogRecord&) {});
  } else {
    router.SetParentLink(harness.MakeParentLink());
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  for (const char* hop : {"local,name=a", "local,name=b"}) {
    absl::Status spawned = router.SpawnChild(*ParseHop(hop), deadline).status();
    CHECK(spawned.ok()) << spawned;
  }

  for (const v1::Envelope& envelope : batch.envelopes()) harness.a().Deliver(envelope);
  harness.a().Close(absl::UnavailableError("child A's link dropped"));
  router.Shutdown(absl::CancelledError("the input is over"));
}

}  // namespace
}  // namespace grove

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  FLAGS_logtostderr = true;
  FLAGS_minloglevel = 2;  // The router warns about every envelope it drops.
  google::InitGoogleLogging((*argv)[0]);
  // Nor protobuf's complaint about each string field that is not UTF-8.
  google::protobuf::SetLogHandler(nullptr);
  // Should the policy ever let A reach grove.run, it must not find a program to run.
  setenv("PATH", "/nonexistent/grove-envelope-fuzzer", 1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  grove::v1::Batch batch;
  // What gRPC does with a Router.Attach message; what does not parse never reaches a router.
  if (!batch.ParseFromArray(data, static_cast<int>(size))) return 0;
  grove::RunRouter(batch, /*master=*/true);
  grove::RunRouter(batch, /*master=*/false);
  return 0;
}
