#!/usr/bin/env bash
# Runs each example and checks what it prints.
set -euo pipefail
bin="$TEST_SRCDIR/grove/examples"
fanout="$bin/fanout/fanout" push="$bin/push/push" service="$bin/service/service"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

out=$("$fanout")
for i in 0 1 2 3 4 5 6 7; do
  grep -qx "hello from worker$i" <<<"$out" || fail "fanout: no reply from worker$i: $out"
done

mkdir -p "$work/src/sub" "$work/dest"
echo one > "$work/src/a"
echo two > "$work/src/sub/b"
out=$("$push" "$work/src" "$work/dest")
grep -q "pushed 4 entries, 8 bytes" <<<"$out" || fail "push: $out"
grep -q "pulled 4 entries back" <<<"$out" || fail "push: $out"
[ "$(cat "$work/dest/pulled/sub/b")" = two ] || fail "push: the pulled tree differs"

out=$("$service")
grep -q "^hello, grove, from pid " <<<"$out" || fail "service: $out"
[ "$(grep -c '^hello [123], grove$' <<<"$out")" = 3 ] || fail "service: the stream: $out"
echo "PASS: fanout, push and service"
