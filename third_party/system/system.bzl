"""Wraps the C++ libraries that Debian installs (gRPC, protobuf, Abseil, glog, GoogleTest,
Google Benchmark) as Bazel targets, with no download.

gRPC and everything below it are linked statically from Debian's `.a` files (glibc stays
dynamic), so every grove binary is one self-contained executable that can travel to another
host. The link flags come from `pkg-config --static` at fetch time, deduplicated.
"""

# Linked dynamically: glibc's parts only.
DYNAMIC = ["-lpthread", "-ldl", "-lrt", "-lm"]

def _libs(ctx, packages):
    result = ctx.execute(["pkg-config", "--static", "--libs"] + packages)
    if result.return_code != 0:
        fail("pkg-config failed for %s: %s (install libgrpc++-dev, libprotobuf-dev, libgoogle-glog-dev)" % (packages, result.stderr))
    libs = []
    for flag in result.stdout.split(" "):
        flag = flag.strip()
        if flag.startswith("-l") and flag not in libs and flag not in DYNAMIC:
            libs.append(flag)
    return libs

def _system_libraries_impl(ctx):
    grpc = _libs(ctx, ["grpc++_unsecure", "protobuf", "libglog"])

    # pkg-config's list for grpc++_unsecure misses a few of gRPC core's own dependencies.
    # libcrypto: SHA-256 of the travelling agent. libunwind (glog's stack traces) needs lzma.
    for extra in ["-lupb", "-laddress_sorting", "-lcares", "-lre2", "-lz", "-latomic", "-lcrypto",
                  "-lunwind", "-llzma"]:
        if extra not in grpc:
            grpc.append(extra)

    # libgcc_eh first, so that C++'s _Unwind_* come from it and not from libunwind (whose
    # copies would clash with it); glog takes only libunwind's own unw_* calls.
    grpc = ["-l:libgcc_eh.a"] + grpc
    static = ["-Wl,-Bstatic", "-Wl,--start-group"] + grpc + ["-Wl,--end-group", "-Wl,-Bdynamic"]

    # A self-contained program: libstdc++ and libgcc static too (the -lstdc++ Bazel appends
    # then resolves nothing and, with --as-needed, is not recorded). libunwind.a is not
    # position-independent, hence -no-pie. Under a sanitizer, libstdc++ stays shared so that
    # the sanitizer's operator new/delete take effect.
    self_contained = ["-no-pie", "-Wl,-Bstatic", "-l:libstdc++.a", "-Wl,-Bdynamic",
                      "-static-libgcc", "-Wl,--as-needed"]
    sanitized = ["-no-pie"]

    ctx.file("BUILD.bazel", """
package(default_visibility = ["//visibility:public"])

# gRPC (unsecure), protobuf, Abseil, glog, gflags, libunwind: static.
config_setting(
    name = "asan",
    define_values = {{"grove_sanitizer": "address"}},
)

config_setting(
    name = "tsan",
    define_values = {{"grove_sanitizer": "thread"}},
)

cc_library(
    name = "grpc",
    linkopts = {grpc} + select({{
        ":asan": {sanitized},
        ":tsan": {sanitized},
        "//conditions:default": {self_contained},
    }}),
)

cc_library(
    name = "gtest",
    linkopts = ["-Wl,-Bstatic", "-lgmock", "-lgtest", "-Wl,-Bdynamic"],
    deps = [":grpc"],
)

cc_library(
    name = "benchmark",
    linkopts = ["-lbenchmark"],
)
""".format(
        grpc = repr(static + DYNAMIC),
        sanitized = repr(sanitized),
        self_contained = repr(self_contained),
    ))
    ctx.file("WORKSPACE", "workspace(name = \"system\")\n")

system_libraries = repository_rule(
    implementation = _system_libraries_impl,
    local = True,
)
