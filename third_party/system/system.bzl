"""Wraps the C++ libraries that Debian installs (gRPC, protobuf, Abseil, glog, GoogleTest,
Google Benchmark) as Bazel targets, with no download.

gRPC and everything below it are linked statically from Debian's `.a` files (glibc stays
dynamic), so every grove binary is one self-contained executable that can travel to another
host. The link flags come from `pkg-config --static` at fetch time, deduplicated.
"""

# System libraries linked dynamically. libunwind's archive (glog's stack traces) is not
# position-independent, so it stays a shared library.
DYNAMIC = ["-lpthread", "-ldl", "-lrt", "-lm", "-lunwind"]

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
    for extra in ["-lupb", "-laddress_sorting", "-lcares", "-lre2", "-lz", "-latomic"]:
        if extra not in grpc:
            grpc.append(extra)
    static = ["-Wl,-Bstatic", "-Wl,--start-group"] + grpc + ["-Wl,--end-group", "-Wl,-Bdynamic"]
    dynamic = DYNAMIC + ["-static-libstdc++", "-static-libgcc"]

    ctx.file("BUILD.bazel", """
package(default_visibility = ["//visibility:public"])

# gRPC (unsecure), protobuf, Abseil, glog, gflags, libunwind: static.
cc_library(
    name = "grpc",
    linkopts = {grpc},
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
""".format(grpc = repr(static + dynamic)))
    ctx.file("WORKSPACE", "workspace(name = \"system\")\n")

system_libraries = repository_rule(
    implementation = _system_libraries_impl,
    local = True,
)
