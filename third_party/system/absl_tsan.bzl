"""Abseil's synchronization code, rebuilt from Debian's own source package so that
ThreadSanitizer sees absl::Mutex (used by grove, gRPC core, gpr_mu and grpc::internal::Mutex).

Debian's libabsl_*.a are not instrumented, so under --config=tsan every absl::Mutex
lock/unlock is invisible and data guarded by one is reported as racy. This repository
compiles the .cc files behind those archives (same version, same /usr/include headers, so
the same inline namespace and options) with the build's -fsanitize=thread; alwayslink puts
every object on the link line ahead of Debian's archives, so the linker never pulls Debian's
copies of these members. @system//:grpc depends on it under --config=tsan only.

The source comes from `tools/setup --tsan` (apt-get source abseil), into $GROVE_ABSL_SRC or
~/.cache/grove/abseil-<upstream version of libabsl-dev>. Nothing is downloaded here.
"""

# Used when dpkg-query cannot tell libabsl-dev's version (Debian 12's).
DEFAULT_VERSION = "20220623.1"

# The members of libabsl_{synchronization,graphcycles_internal,base,spinlock_wait,
# malloc_internal,raw_logging_internal,status,statusor}.a (all but spinlock.cc, see below):
# whole archive members, so that a Debian member is never needed next to one of these objects
# (which would be a duplicate definition).
# absl::Status is here for its reference count (Status::UnrefNonInlined frees the rep).
#
# Not absl/base/internal/spinlock.cc: SpinLock::Lock() is inline and annotates the lock for
# TSan only where it is compiled with TSan, while SlowLock() "diverts" out of that annotation.
# Debian's uninstrumented callers (absl::Now()'s clock, the random pool, cordz) would reach an
# instrumented SlowLock() without the annotation and abort TSan ("CHECK failed: ...
# ignore_sync > 0") under contention. Debian's spinlock.o has no annotations at all, which is
# right for both kinds of caller.
SRCS = [
    "absl/synchronization/barrier.cc",
    "absl/synchronization/blocking_counter.cc",
    "absl/synchronization/mutex.cc",
    "absl/synchronization/notification.cc",
    "absl/synchronization/internal/create_thread_identity.cc",
    "absl/synchronization/internal/graphcycles.cc",
    "absl/synchronization/internal/per_thread_sem.cc",
    "absl/synchronization/internal/waiter.cc",
    "absl/base/internal/cycleclock.cc",
    "absl/base/internal/low_level_alloc.cc",
    "absl/base/internal/raw_logging.cc",
    "absl/base/internal/spinlock_wait.cc",
    "absl/base/internal/sysinfo.cc",
    "absl/base/internal/thread_identity.cc",
    "absl/base/internal/unscaledcycleclock.cc",
    "absl/status/status.cc",
    "absl/status/status_payload_printer.cc",
    "absl/status/statusor.cc",
]

_BUILD = """
cc_library(
    name = "absl_tsan",
    srcs = {srcs},
    # No includes/hdrs: "absl/..." resolves to Debian's /usr/include/absl, the headers
    # Debian's archives were built from. -UNDEBUG: Debian builds Abseil without NDEBUG.
    copts = ["-UNDEBUG", "-w"],
    alwayslink = True,
    visibility = ["//visibility:public"],
)
"""

# Fails only when a --config=tsan build needs it. Bazel does not notice the source appearing
# later on its own, hence the hint to re-fetch.
_MISSING = """
genrule(
    name = "missing",
    outs = ["missing.cc"],
    cmd = "if [ -f {path}/absl/synchronization/mutex.cc ]; then " +
          "echo 'Abseil source now at {path}: run bazel sync --only=absl_tsan' >&2; else " +
          "echo 'Abseil source not found at {path}: run tools/setup --tsan' >&2; fi; exit 1",
)

cc_library(
    name = "absl_tsan",
    srcs = [":missing"],
    visibility = ["//visibility:public"],
)
"""

def _upstream_version(ctx):
    result = ctx.execute(["dpkg-query", "-W", "-f=${source:Version}", "libabsl-dev"])
    version = result.stdout.strip()
    if result.return_code != 0 or not version:
        return DEFAULT_VERSION
    return version.split("-")[0]  # 20220623.1-1+deb12u2 -> 20220623.1

def _absl_tsan_impl(ctx):
    path = ctx.os.environ.get("GROVE_ABSL_SRC", "")
    if not path:
        path = "%s/.cache/grove/abseil-%s" % (ctx.os.environ.get("HOME", "/root"),
                                              _upstream_version(ctx))
    if not ctx.path(path + "/absl/synchronization/mutex.cc").exists:
        ctx.file("BUILD.bazel", _MISSING.format(path = path))
        return
    for src in SRCS:
        ctx.file(src, ctx.read(path + "/" + src))  # a copy: the patch must not touch the cache
    ctx.patch(Label("//third_party/system:absl-tsan-incrementsynchsem.patch"), strip = 1)
    ctx.file("BUILD.bazel", _BUILD.format(srcs = repr(SRCS)))

absl_tsan = repository_rule(
    implementation = _absl_tsan_impl,
    environ = ["GROVE_ABSL_SRC", "HOME"],
    local = True,
)
