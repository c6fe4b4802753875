#!/bin/sh
# tests/gpu/taylor.sh — the CUDA engine of the Taylor mode (kernels/cuda/taylor.cu), on a machine
# with an NVIDIA GPU. Written without a GPU at hand: this is its first run.
#
#   sh tests/gpu/taylor.sh     1. make (fa_long with CUDA, build/bench/taylor_bench)
#                              2. engine vs the fp64 Taylor formula at 1e-5, D 16/33/64/128/256,
#                                 causal and not (taylor_bench's validation, N 300, Nq = Nk)
#                              3. jobs through ./fa_long with --backend cuda on 1, 2, 4 ranks, causal
#                                 and not, GQA, B > 1, odd lengths: fa_long check --mode taylor against
#                                 the fp64 formula, and the CPU engine's output
#                              4. compute-sanitizer memcheck on one small causal job (D 33 and 256)
# Exit status non-zero when any step failed.
set -u
cd "$(dirname "$0")/../.."
fail=0
echo "== make"
make >/dev/null || { echo "FAIL: make"; exit 1; }
./fa_long --version | grep -i cuda || true

echo "== CUDA Taylor engine vs fp64 formula (N 300)"
for d in 16 33 64 128 256; do
    for c in 0 1; do
        if REPS=1 build/bench/taylor_bench time cuda taylor 300 $d 4 $c >/dev/null; then
            echo "PASS  D=$d causal=$c"
        else
            echo "FAIL  D=$d causal=$c"; fail=1
        fi
    done
done

echo "== end to end through ./fa_long: CUDA Taylor jobs against the fp64 formula (fa_long check)"
# (GPU nodes have no pytest: tests/test_taylor.py runs in CI on the CPU engine; here the same
# kinds of job go through fa_long and its fp64 check, and the CPU and CUDA engines are compared)
T=$(mktemp -d)
./fa_long gen --output "$T/in.h5" -b 2 --nq 301 --nk 419 --heads 6 --kv-heads 2 -d 64 --seed 5 --force >/dev/null
for c in "" "--causal"; do
    for np in 1 2 4; do
        mpirun --allow-run-as-root --oversubscribe -np $np ./fa_long --input "$T/in.h5" --output "$T/t$np.h5" \
            --mode taylor --backend cuda $c --chunk 100 --lse --force --quiet \
            || { echo "FAIL: taylor cuda run, $np ranks ${c:-non-causal}"; fail=1; continue; }
        ./fa_long check --mode taylor --input "$T/in.h5" --output "$T/t$np.h5" --rows all > "$T/chk.txt" \
            && echo "PASS  $np rank(s) ${c:-non-causal}: $(grep -m1 'o   against' "$T/chk.txt" | sed 's/check: o   against the fp64 Taylor formula: //')" \
            || { cat "$T/chk.txt"; echo "FAIL: check --mode taylor, $np ranks ${c:-non-causal}"; fail=1; }
    done
    ./fa_long --input "$T/in.h5" --output "$T/cpu.h5" --mode taylor --backend cpu $c --lse --force --quiet
    python3 - "$T/cpu.h5" "$T/t1.h5" <<'PY' || { echo "FAIL: cpu vs cuda taylor ${c:-non-causal}"; fail=1; }
import sys, h5py, numpy as np
a, b = (h5py.File(f, "r")["o"][...].astype(np.float64) for f in sys.argv[1:3])
err = np.abs(a - b).max() / np.abs(a).max()
print(f"PASS  cpu vs cuda taylor: {err:.2e} of scale" if err <= 1e-5 else f"cpu vs cuda taylor: {err:.2e}")
sys.exit(0 if err <= 1e-5 else 1)
PY
done
rm -rf "$T"

CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$CS" ]; then
    echo "== compute-sanitizer memcheck"
    T=$(mktemp -d)
    for d in 33 256; do
        ./fa_long gen --output "$T/in$d.h5" --nq 150 --nk 190 --heads 4 --kv-heads 2 -d $d --force >/dev/null
        "$CS" --tool memcheck --error-exitcode 1 ./fa_long --input "$T/in$d.h5" --output "$T/o$d.h5" \
            --mode taylor --backend cuda --causal --chunk 70 --force --quiet \
            || { echo "FAIL: memcheck D=$d"; fail=1; }
    done
    rm -rf "$T"
fi
[ $fail = 0 ] && echo "tests/gpu/taylor.sh: all passed" || echo "tests/gpu/taylor.sh: FAILURES"
exit $fail
