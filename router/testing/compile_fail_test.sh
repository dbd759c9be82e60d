#!/usr/bin/env bash
# A function registered with the wrong signature fails to compile with a static_assert that
# says which signature is expected (router/functions.h); a right one compiles.
set -euo pipefail
root="$TEST_SRCDIR/grove"
cflags=$(pkg-config --cflags protobuf grpc++ libglog 2>/dev/null || true)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# shellcheck disable=SC2086  # $cflags is a list of flags.
if g++ -std=c++17 -fsyntax-only -I"$root" $cflags \
    "$root/router/testing/compile_fail/wrong_signature.cc" > "$out" 2>&1; then
  echo "FAIL: a function with the wrong signature compiled"
  exit 1
fi
if ! grep -q "must be callable as fn(const In& argument, grove::CallContext& call)" "$out"; then
  echo "FAIL: the compiler did not say which signature is expected:"
  head -n 30 "$out"
  exit 1
fi
echo "PASS: refused with the expected static_assert"
