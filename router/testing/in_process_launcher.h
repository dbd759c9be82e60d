// A launcher that starts each child as a Router in this process, linked to its parent by an
// in-memory link (link/testing/in_memory_link.h): a whole tree of routers in one test
// process, every envelope through the wire format.
#ifndef GROVE_ROUTER_TESTING_IN_PROCESS_LAUNCHER_H_
#define GROVE_ROUTER_TESTING_IN_PROCESS_LAUNCHER_H_

#include <unistd.h>

#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "link/launcher.h"
#include "link/testing/in_memory_link.h"
#include "router/component.h"
#include "router/functions.h"
#include "router/router.h"
#include "router/testing/fake_link.h"

namespace grove {

// Creates a Router for each child (id, name, parent, method from the LaunchRequest; the name
// defaults to "mem.<id>"), links it to its parent with an in-memory link, and registers
// itself as the "local" launcher of the new router so that children can spawn too. Owns the
// child routers. Thread-safe.
class InProcessLauncher : public Launcher {
 public:
  // `functions` (may be null) and `components` go to every child router.
  InProcessLauncher(InMemoryNetwork* network, const Functions* functions,
                    std::vector<Component> components = {})
      : network_(network), functions_(functions), components_(std::move(components)) {}

  absl::StatusOr<LaunchedChild> Launch(const Hop& hop, const LaunchRequest& request) override {
    {
      absl::MutexLock lock(&mu_);
      ++launches_;
      if (!fail_next_.ok()) {
        absl::Status status = std::move(fail_next_);
        fail_next_ = absl::OkStatus();
        return status;
      }
    }
    Router::Options options;
    options.self = request.info;
    if (options.self.name().empty()) {
      options.self.set_name(absl::StrCat("mem.", request.info.id()));
    }
    options.self.set_host("in-memory");
    options.self.set_pid(::getpid());
    options.self.set_user("tester");
    options.ancestors = request.ancestors;
    options.functions = functions_;
    options.max_message_bytes = request.max_message_bytes;
    options.min_log_level = request.min_log_level;
    options.verbosity = request.verbosity;
    options.stop_grace = absl::Milliseconds(100);
    options.silence_limit = request.silence_limit;
    options.components = components_;

    auto child = std::make_unique<Child>();
    Child* raw = child.get();
    child->id = ContextId(request.info.id());
    child->router = std::make_unique<Router>(options);
    child->router->AddLauncher("local", this);
    child->router->SetShutdownHandler([this, raw](const absl::Status& why) {
      absl::MutexLock lock(&mu_);
      raw->shutdown_why = why;
      raw->shutdown_requested.Notify();
    });
    InMemoryNetwork::Ends ends =
        network_->Connect(absl::StrCat("link to ", options.self.name()),
                          absl::StrCat("parent link of ", options.self.name()));
    child->parent_end = ends.a;
    child->child_end = ends.b;
    child->router->SetParentLink(ends.b);

    LaunchedChild launched;
    launched.link = ends.a;  // Not started: the parent's router starts it.
    launched.info = options.self;
    launched.handle = std::make_unique<LinkChildHandle>(ends.a);
    absl::MutexLock lock(&mu_);
    children_.push_back(std::move(child));
    return launched;
  }

  // The router of child `id`; null when this launcher did not start it.
  Router* router(ContextId id) const {
    const Child* child = Find(id);
    return child ? child->router.get() : nullptr;
  }
  // The end of child `id`'s link that its parent routes over.
  std::shared_ptr<InMemoryLink> parent_end(ContextId id) const {
    const Child* child = Find(id);
    return child ? child->parent_end : nullptr;
  }
  // The end of child `id`'s link that the child routes over (its parent link).
  std::shared_ptr<InMemoryLink> child_end(ContextId id) const {
    const Child* child = Find(id);
    return child ? child->child_end : nullptr;
  }

  // Waits until child `id` has been asked to shut down (Shutdown envelope or lost parent).
  bool WaitShutdownRequested(ContextId id, absl::Status* why = nullptr,
                             absl::Duration timeout = absl::Seconds(20)) {
    Child* child = Find(id);
    if (child == nullptr) return false;
    if (!child->shutdown_requested.WaitForNotificationWithTimeout(timeout)) return false;
    absl::MutexLock lock(&mu_);
    if (why != nullptr) *why = child->shutdown_why;
    return true;
  }
  bool ShutdownRequested(ContextId id) {
    Child* child = Find(id);
    return child != nullptr && child->shutdown_requested.HasBeenNotified();
  }

  // The next Launch fails with `status`.
  void FailNextLaunch(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_next_ = std::move(status);
  }
  int launches() const {
    absl::MutexLock lock(&mu_);
    return launches_;
  }

  // Shuts down every child router, newest first, so that a child's children go before it.
  void ShutdownAll() {
    std::vector<Router*> routers;
    {
      absl::MutexLock lock(&mu_);
      for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
        routers.push_back((*it)->router.get());
      }
    }
    for (Router* router : routers) router->Shutdown(absl::CancelledError("the test is over"));
  }

 private:
  struct Child {
    ContextId id;
    std::unique_ptr<Router> router;
    std::shared_ptr<InMemoryLink> parent_end;
    std::shared_ptr<InMemoryLink> child_end;
    absl::Notification shutdown_requested;
    absl::Status shutdown_why;  // Guarded by InProcessLauncher::mu_.
  };

  Child* Find(ContextId id) const {
    absl::MutexLock lock(&mu_);
    for (const auto& child : children_) {
      if (child->id == id) return child.get();
    }
    return nullptr;
  }

  InMemoryNetwork* const network_;
  const Functions* const functions_;
  const std::vector<Component> components_;
  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Child>> children_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_next_ ABSL_GUARDED_BY(mu_);
  int launches_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace grove

#endif  // GROVE_ROUTER_TESTING_IN_PROCESS_LAUNCHER_H_
