#!/bin/sh
# tests/gpu/taylor.sh — the CUDA engine of the Taylor mode (kernels/cuda/taylor.cu), on a machine
# with an NVIDIA GPU. Written without a GPU at hand: this is its first run.
#
#   sh tests/gpu/taylor.sh     1. make (fa_long with CUDA, build/bench/taylor_bench)
#                              2. engine vs the fp64 Taylor formula at 1e-5, D 16/33/64/128/256,
#                                 causal and not (taylor_bench's validation, N 300, Nq = Nk)
#                              3. the end-to-end suite tests/test_taylor.py with --backend cuda
#                                 (1-4 ranks on the GPU, GQA, odd D, Nq != Nk, policy, check, compare)
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

echo "== tests/test_taylor.py on the CUDA engine"
FA_TAYLOR_BACKEND=cuda /usr/bin/python3 -m pytest -q tests/test_taylor.py || { echo "FAIL: test_taylor.py (cuda)"; fail=1; }

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
