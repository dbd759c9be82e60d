#include "router/testing/router_fixture.h"

#include <string>

#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"

namespace grove::testing {

// The functions every context of the test tree offers (as a real program registers them
// once, in main()).
void RouterTest::RegisterFunctions() {
  // Echo: stdout the arguments, stderr where it ran, exit_status who called.
  functions_.Register<v1::RunRequest, v1::RunReply>(
      "test.echo",
      [](const v1::RunRequest& in, CallContext& call) -> absl::StatusOr<v1::RunReply> {
        v1::RunReply out;
        out.set_stdout(absl::StrJoin(in.argv(), " "));
        out.set_stderr(call.router().name());
        out.set_exit_status(static_cast<int>(call.caller().value()));
        return out;
      });
  // Fails with code argv[0] and message argv[1].
  functions_.Register<v1::RunRequest, v1::RunReply>(
      "test.fail",
      [](const v1::RunRequest& in, CallContext&) -> absl::StatusOr<v1::RunReply> {
        return absl::Status(static_cast<absl::StatusCode>(std::stoi(in.argv(0))), in.argv(1));
      },
      {CallableBy::kAny, false});
  // Calls function argv[1] in context argv[0] with the remaining argv, as part of this call.
  functions_.Register<v1::RunRequest, v1::RunReply>(
      "test.relay",
      [](const v1::RunRequest& in, CallContext& call) -> absl::StatusOr<v1::RunReply> {
        v1::RunRequest nested;
        for (int i = 2; i < in.argv_size(); ++i) nested.add_argv(in.argv(i));
        CallOptions options;
        options.parent = &call;
        Context target(&call.router(), ContextId(std::stoull(in.argv(0))), "");
        return target.Call<v1::RunReply>(in.argv(1), nested, options);
      });
  // Calls test.block in context argv[0] for argv[1] ms, as part of this call.
  functions_.Register<v1::RunRequest, v1::Empty>(
      "test.relay_block",
      [this](const v1::RunRequest& in, CallContext& call) -> absl::StatusOr<v1::Empty> {
        CallOptions options;
        options.parent = &call;
        Context target(&call.router(), ContextId(std::stoull(in.argv(0))), "");
        absl::StatusOr<v1::Empty> result =
            target.Call<v1::Empty>("test.block", Ms(std::stoll(in.argv(1))), options);
        probe_.Relayed();
        return result;
      });
  // Streams each argument as output (odd ones on stderr), then returns.
  functions_.Register<v1::RunRequest, v1::RunReply>(
      "test.chatter",
      [](const v1::RunRequest& in, CallContext& call) -> absl::StatusOr<v1::RunReply> {
        for (int i = 0; i < in.argv_size(); ++i) call.Output(i % 2 == 0 ? 1 : 2, in.argv(i));
        v1::RunReply out;
        out.set_stdout("done");
        return out;
      });
  // A result of `ms` bytes.
  functions_.Register<v1::SleepRequest, v1::RunReply>(
      "test.big",
      [](const v1::SleepRequest& in, CallContext&) -> absl::StatusOr<v1::RunReply> {
        v1::RunReply out;
        out.set_stdout(std::string(static_cast<size_t>(in.ms()), 'x'));
        return out;
      });
  // Who am I, who called: one per policy.
  auto whoami = [](const v1::Empty&, CallContext& call) -> absl::StatusOr<v1::InfoReply> {
    v1::InfoReply out;
    out.set_id(call.router().id().value());
    out.set_name(call.router().name());
    out.set_parent(call.caller().value());  // The caller, for the test.
    return out;
  };
  functions_.Register<v1::Empty, v1::InfoReply>("test.ancestors", whoami,
                                                {CallableBy::kAncestors, false});
  functions_.Register<v1::Empty, v1::InfoReply>("test.descendants", whoami,
                                                {CallableBy::kDescendants, false});
  functions_.Register<v1::Empty, v1::InfoReply>("test.any", whoami, {CallableBy::kAny, true});
  // Records its caller; inline, so it runs in arrival order on the link's thread.
  functions_.Register<v1::Empty, v1::Empty>(
      "test.record",
      [this](const v1::Empty&, CallContext& call) -> absl::StatusOr<v1::Empty> {
        probe_.Record(call.caller().value());
        return v1::Empty();
      },
      {CallableBy::kAny, true});
  // Blocks for `ms` or until cancelled, telling the probe.
  functions_.Register<v1::SleepRequest, v1::Empty>(
      "test.block",
      [this](const v1::SleepRequest& in, CallContext& call) -> absl::StatusOr<v1::Empty> {
        probe_.Started();
        absl::Notification cancelled;
        uint64_t id = call.cancel_source().AddCallback([&cancelled] { cancelled.Notify(); });
        bool was_cancelled =
            cancelled.WaitForNotificationWithTimeout(absl::Milliseconds(in.ms()));
        if (id != 0) call.cancel_source().RemoveCallback(id);
        probe_.Finished(was_cancelled);
        if (was_cancelled) return absl::CancelledError("block cancelled");
        return v1::Empty();
      },
      {CallableBy::kAny, false});
}

}  // namespace grove::testing
