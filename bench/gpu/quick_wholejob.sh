#!/bin/bash
# quick_wholejob.sh — a first look at the whole GPU job (issue 22) inside a short device call:
# the 256K job (q [1, 256K, 32, 128], k and v [1, 256K, 8, 128], bf16) full and causal, and the
# decode-like job (16 queries over 1M keys), each run as it is now (typed transfers, streamed
# keys) and with FA_TYPED_TRANSFERS=0 FA_STREAM_KEYS=0 (the host widening and the keys read whole
# before compute, as before), timed from outside; the reports and a time line per run go to
# LOGS (default /tmp/gpu_session_logs), and the page-cache read rates of the input beside them.
set -u
cd "$(dirname "$0")/../.."
L=${LOGS:-/tmp/gpu_session_logs}; D=${TMPDIR:-/tmp}/qwj; mkdir -p "$L" "$D"
TIMEFORMAT='%R'
one() {   # one NAME IN ARGS...: best-effort timing from outside, the report beside it
    local name=$1 in=$2; shift 2
    local t; t=$( { time ./fa_long -i "$in" -o "$D/o.h5" -f --lse "$@" --report "$L/$name.json" 2> "$L/$name.err" >/dev/null; } 2>&1 )
    echo "$name: outside ${t} s; $(grep -h 'floor\|times:' "$L/$name.err" | tr '\n' ' ' | cut -c1-400)"
}
./fa_long gen -o "$D/in.h5" -n 256K --heads 32 --kv-heads 8 -d 128 --dtype bfloat16 -f > /dev/null
build/bench/page_cache_read "$D/in.h5" | tail -1 | sed 's/^/page cache 256K file: bytes threads memcpy_gbps pread_gbps: /'
for c in "" "--causal"; do
    t=${c#--}; t=${t:-full}
    one "new_$t" "$D/in.h5" $c
    FA_TYPED_TRANSFERS=0 FA_STREAM_KEYS=0 one "old_$t" "$D/in.h5" $c
done
./fa_long check -i "$D/in.h5" -o "$D/o.h5" --rows 32 | tail -1
rm -f "$D/in.h5"
./fa_long gen -o "$D/dec.h5" --nq 16 --nk 1M --heads 32 --kv-heads 8 -d 128 --dtype bfloat16 -f > /dev/null
build/bench/page_cache_read "$D/dec.h5" | tail -1 | sed 's/^/page cache decode file: /'
one new_decode "$D/dec.h5"
FA_TYPED_TRANSFERS=0 FA_STREAM_KEYS=0 one old_decode "$D/dec.h5"
./fa_long check -i "$D/dec.h5" -o "$D/o.h5" --rows 16 | tail -1
rm -rf "$D"
