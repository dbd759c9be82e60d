"""grove_fuzzer: one libFuzzer target, and the test that replays its corpus.

    load("//fuzz:fuzz.bzl", "grove_fuzzer")
    grove_fuzzer(name = "hop", deps = ["//router"])

`<name>_fuzzer.cc` defines `extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t)`
(and may define `LLVMFuzzerInitialize`). Seeds go in `corpus/<name>/` (at least one file);
inputs that once crashed go in `regressions/<name>/`. The macro makes:

  :<name>_fuzzer       under --config=fuzz (tools/fuzz: clang, -fsanitize=fuzzer,address), a
                       libFuzzer binary; otherwise a replayer, `<name>_fuzzer FILE_OR_DIR...`
                       runs each input once (one gtest case per file).
  :<name>_fuzzer_test  a cc_test that replays every file of corpus/<name>/ and
                       regressions/<name>/, one gtest case per file; part of `bazel test //...`,
                       so it also runs under --config=asan and --config=tsan.

Call it from fuzz/BUILD.bazel only: the corpus is globbed in the calling package.
"""

def grove_fuzzer(name, deps, srcs = None, size = "small", timeout = None):
    """Declares the fuzzer `name` (see the file comment)."""
    srcs = srcs or [name + "_fuzzer.cc"]
    corpus = native.glob(["corpus/%s/**" % name], allow_empty = False)
    regressions = native.glob(["regressions/%s/**" % name], allow_empty = True)
    package = native.package_name()

    # The target, compiled once for both binaries.
    native.cc_library(
        name = name + "_fuzz_target",
        srcs = srcs,
        deps = deps,
        alwayslink = True,
    )
    native.cc_binary(
        name = name + "_fuzzer",
        deps = [":" + name + "_fuzz_target"] + select({
            "//fuzz:fuzzing": [],
            "//conditions:default": ["//fuzz:replay_main"],
        }),
        linkopts = select({
            "//fuzz:fuzzing": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        tags = ["grove_fuzzer"],
    )
    native.cc_test(
        name = name + "_fuzzer_test",
        size = size,
        timeout = timeout,
        deps = [
            ":" + name + "_fuzz_target",
            "//fuzz:replay_main",
        ],
        data = corpus + regressions,
        args = [
            "--corpus=%s/corpus/%s" % (package, name),
            "%s/regressions/%s" % (package, name),
        ],
    )
