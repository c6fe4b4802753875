#!/bin/sh
# tests/gpu/overflow.sh — never silently wrong on the GPU either: finite inputs whose scores
# overflow float32 are refused with one line (exit 2, no output) on the CUDA engine, 1 and 2
# ranks; inputs just inside the range run and pass fa_long check; the Taylor engine on CUDA
# records compute = float32 (it computes in fp32) and check judges it at fp32's tolerance.
set -u
cd "$(dirname "$0")/../.."
fail=0
T=$(mktemp -d)
R=""; [ "$(id -u)" = 0 ] && R="--allow-run-as-root"
./fa_long gen --output "$T/big.h5" --nq 300 --nk 333 --heads 4 --kv-heads 2 -d 64 --magnitude 1e20 --force >/dev/null
for np in 1 2; do
    for c in "" "--causal"; do
        mpirun $R --oversubscribe -np $np ./fa_long --input "$T/big.h5" --output "$T/o.h5" \
            --backend cuda $c --force --quiet 2> "$T/err.txt"
        rc=$?
        n=$(grep -c '^fa_long:' "$T/err.txt")
        if [ $rc = 2 ] && [ "$n" = 1 ] && grep -q 'overflow float32' "$T/err.txt" && [ ! -e "$T/o.h5" ]; then
            echo "PASS  overflow refused: $np rank(s) ${c:-non-causal}"
        else
            cat "$T/err.txt"; echo "FAIL: overflow not refused (rc $rc): $np rank(s) ${c:-non-causal}"; fail=1
        fi
        rm -f "$T/o.h5"
    done
done
./fa_long gen --output "$T/ok.h5" --nq 300 --nk 333 --heads 4 --kv-heads 2 -d 64 --magnitude 3 --force >/dev/null
./fa_long --input "$T/ok.h5" --output "$T/ok_out.h5" --backend cuda --causal --force --quiet \
    && ./fa_long check --input "$T/ok.h5" --output "$T/ok_out.h5" > "$T/chk.txt" \
    && echo "PASS  magnitude 3 on cuda: $(grep tolerance "$T/chk.txt" | head -1)" \
    || { cat "$T/chk.txt"; echo "FAIL: magnitude 3 on cuda"; fail=1; }
./fa_long --input "$T/ok.h5" --output "$T/tay.h5" --backend cuda --mode taylor --force --quiet \
    && ./fa_long check --input "$T/ok.h5" --output "$T/tay.h5" > "$T/chk.txt" \
    && grep -q 'compute float32' "$T/chk.txt" && grep -q 'PASS against the fp64 Taylor formula (to fp32 rounding, tolerance 1.0e-04)' "$T/chk.txt" \
    && echo "PASS  taylor on cuda recorded as float32 compute, checked at 1e-4" \
    || { cat "$T/chk.txt"; echo "FAIL: taylor on cuda: compute label or tolerance"; fail=1; }
rm -rf "$T"
[ $fail = 0 ] && echo "tests/gpu/overflow.sh: all passed" || echo "tests/gpu/overflow.sh: FAILURES"
exit $fail
