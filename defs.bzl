"""Bazel helpers for programs built on grove."""

def grove_cc_proto(name, srcs, deps = [], visibility = None, grpc = False):
    """C++ classes for `srcs` (.proto files in this package), generated with Debian's protoc.

    Creates `name`, a cc_library whose headers are included as "<package>/<file>.pb.h".
    `deps` are other grove_cc_proto targets whose protos these import. With `grpc = True`,
    the gRPC service classes too ("<package>/<file>.grpc.pb.h"), for services hosted with
    grove::Functions::AddService and stubs on grove::ChannelTo.
    """
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.cc", base + ".pb.h"]
        if grpc:
            outs += [base + ".grpc.pb.cc", base + ".grpc.pb.h"]
    grpc_flags = ""
    if grpc:
        grpc_flags = "--grpc_out=$(RULEDIR) --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin "
    native.genrule(
        name = name + "_gen",
        srcs = srcs,
        outs = outs,
        cmd = "/usr/bin/protoc -I$$(dirname $(location %s)) --cpp_out=$(RULEDIR) %s$(SRCS)" % (
            srcs[0],
            grpc_flags,
        ),
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        deps = deps + ["@system//:grpc"],
        visibility = visibility,
    )
