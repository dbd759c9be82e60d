#include "tests/test_functions.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>

#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"

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

// Random state created with the functions, before the zygote started: fork children
// inherit copies of it.
struct RandomState {
  absl::Mutex mu;
  absl::BitGen reseeded ABSL_GUARDED_BY(mu);
  absl::BitGen unseeded ABSL_GUARDED_BY(mu);
};

test::Count Draw(absl::BitGen& gen) {
  test::Count out;
  out.set_value(absl::Uniform<int64_t>(gen, 0, std::numeric_limits<int64_t>::max()));
  return out;
}

Functions* Build() {
  auto* f = new Functions();
  auto* random = new RandomState();
  f->OnFork([random] {
    std::random_device device;
    std::seed_seq seed = {device(), device(), device(), device()};
    absl::MutexLock lock(&random->mu);
    random->reseeded = absl::BitGen(seed);
  });
  f->Register<test::Echo, test::Count>(
      "random", [random](const test::Echo&, CallContext&) -> absl::StatusOr<test::Count> {
        absl::MutexLock lock(&random->mu);
        return Draw(random->reseeded);
      });
  f->Register<test::Echo, test::Count>(
      "random_unseeded",
      [random](const test::Echo&, CallContext&) -> absl::StatusOr<test::Count> {
        absl::MutexLock lock(&random->mu);
        return Draw(random->unseeded);
      });
  f->Register<test::Echo, test::Count>(
      "random_libc", [](const test::Echo&, CallContext&) -> absl::StatusOr<test::Count> {
        test::Count out;
        out.set_value(::rand());
        return out;
      });
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

namespace {
absl::Mutex zygote_mu;
std::shared_ptr<Zygote>* test_zygote ABSL_GUARDED_BY(zygote_mu) = nullptr;
}  // namespace

std::shared_ptr<Zygote> TestZygote() {
  absl::MutexLock lock(&zygote_mu);
  return test_zygote == nullptr ? nullptr : *test_zygote;
}

void SetTestZygote(std::shared_ptr<Zygote> zygote) {
  std::shared_ptr<Zygote> old;  // Released outside the lock (its destructor reaps).
  absl::MutexLock lock(&zygote_mu);
  if (test_zygote == nullptr) test_zygote = new std::shared_ptr<Zygote>();
  old = std::exchange(*test_zygote, std::move(zygote));
}

}  // namespace grove::testing
