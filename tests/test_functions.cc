#include "tests/test_functions.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "common/status_util.h"
#include "glog/logging.h"
#include "router/context.h"
#include "tests/test.pb.h"

namespace grove::testing {
namespace {

absl::StatusOr<test::Echo> EchoFn(const test::Echo& in, CallContext& call) {
  test::Echo out = in;
  out.set_text(call.router().name() + ": " + in.text());
  return out;
}

Functions* Build() {
  auto* f = new Functions();
  f->Register<test::Echo, test::Echo>("echo", EchoFn);
  f->Register<test::Echo, test::Echo>("for_descendants", EchoFn,
                                      {CallableBy::kDescendants, false});
  f->Register<test::Echo, test::Echo>("for_anyone", EchoFn, {CallableBy::kAny, false});
  f->Register<test::FailRequest, test::Echo>(
      "fail", [](const test::FailRequest& in, CallContext&) -> absl::StatusOr<test::Echo> {
        return absl::Status(static_cast<absl::StatusCode>(in.code()), in.message());
      });
  f->Register<test::Forward, test::Echo>(
      "forward", [](const test::Forward& in, CallContext& call) -> absl::StatusOr<test::Echo> {
        Context target(&call.router(), ContextId(in.target()), "");
        CallOptions options;
        options.parent = &call;
        if (in.timeout_ms() > 0) options.timeout = absl::Milliseconds(in.timeout_ms());
        return target.Call<test::Echo>(in.function(), in.echo(), options);
      });
  f->Register<test::PrintRequest, test::Count>(
      "print", [](const test::PrintRequest& in, CallContext&) -> absl::StatusOr<test::Count> {
        if (in.glog()) {
          LOG(WARNING) << in.line();
        } else if (in.bytes() > 0) {
          std::string block(4096, 'x');
          for (int64_t i = 0; i < in.bytes(); i += 4096) {
            block.back() = '\n';
            size_t n = std::min<int64_t>(4096, in.bytes() - i);
            fwrite(block.data(), 1, n, in.to_stderr() ? stderr : stdout);
          }
          fflush(nullptr);
        } else {
          fprintf(in.to_stderr() ? stderr : stdout, "%s\n", in.line().c_str());
          fflush(nullptr);
        }
        test::Count out;
        out.set_value(in.bytes());
        return out;
      });
  f->Register<test::Echo, test::Echo>(
      "crash", [](const test::Echo&, CallContext&) -> absl::StatusOr<test::Echo> {
        std::abort();
      });
  return f;
}

}  // namespace

const Functions& TestFunctions() {
  static const Functions* functions = Build();
  return *functions;
}

}  // namespace grove::testing
