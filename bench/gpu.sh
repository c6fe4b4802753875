#!/bin/sh
# bench/gpu.sh — build, check and time the GPU kernel against PyTorch SDPA (flash and cuDNN
# backends) and the card's bf16 GEMM rate, all in one run. Prints a short table last.
#
#   sh bench/gpu.sh [--quick] [--dims 64,80,96,128,192,256]
#                                 (on a machine with an NVIDIA GPU, CUDA, python3 with torch)
#
# Writes bench/results/kernel_<card>.csv (n,heads,d,causal,ours_tflops,flash_tflops,cudnn_tflops),
# bench/results/kernel_<card>.json (every timing, both variants, errors vs cuDNN) and
# bench/results/kernel_<card>.txt (the table). Overridable: NVCC, NVCC_GENCODE, BUILD, VALIDATE=0
# (no fp64 validation run first: for a revision whose make test-gpu passed), TAG (a suffix of the
# result files: kernel_<card><TAG>.*, so that a partial run keeps the full table).
set -u
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
NVCC_GENCODE=${NVCC_GENCODE:--gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80}
BUILD=${BUILD:-build}
OBJ=$BUILD/bench/gpu
mkdir -p "$OBJ" bench/results
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr 'A-Z' 'a-z' | sed -E 's/nvidia //; s/ .*//')
card=${card:-unknown}

echo "== building $OBJ/libflash.so and the checks"
FLASH_SRCS="kernels/cuda/flash_sm80.cu kernels/cuda/flash_sm90.cu $(ls kernels/cuda/inst/flash_*.cu)"   # dispatch + instances
# one object per source, compiled side by side (24 instances: one nvcc call for all would take minutes)
OBJS=""
for f in $FLASH_SRCS kernels/cuda/engine.cu; do
    b=$(basename "$f" .cu)
    "$NVCC" -O3 -lineinfo -std=c++17 $NVCC_GENCODE --expt-relaxed-constexpr -I. -DFA_HAVE_CUDA -Xcompiler -fPIC \
        -c "$f" -o "$OBJ/$b.o" 2> "$OBJ/$b.log" &
    case $f in */engine.cu) ;; *) OBJS="$OBJS $OBJ/$b.o" ;; esac
done
wait
for f in $FLASH_SRCS kernels/cuda/engine.cu; do
    b=$(basename "$f" .cu)
    [ -s "$OBJ/$b.o" ] || { cat "$OBJ/$b.log"; echo "FAIL: build $f"; exit 1; }
done
"$NVCC" -shared $NVCC_GENCODE $OBJS -o "$OBJ/libflash.so" || { echo "FAIL: build"; exit 1; }
"$NVCC" -O2 -std=c++17 $NVCC_GENCODE -I. -DFA_HAVE_CUDA -Xcompiler -fopenmp tests/gpu/test_flash.cu \
    $OBJS "$OBJ/engine.o" -o "$OBJ/test_flash" || { echo "FAIL: build test"; exit 1; }

ok_variants=""
check_variants="1 2 3 4"
if [ "${VALIDATE:-1}" = 0 ]; then
    # VALIDATE=0: make test-gpu has checked the kernels on this revision; every timed row is still
    # compared with cuDNN's output (bench.py), and a wrong one is not counted
    echo "== not validating against fp64 first (VALIDATE=0)"
    ok_variants=1,2,3,4
    check_variants=""
else
    echo "== validating every variant before timing (fp64 reference, fresh random inputs)"
fi
for v in $check_variants; do
    OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} timeout 300 "$OBJ/test_flash" --no-large --variant $v > "$OBJ/validate_v$v.txt" 2>&1
    rc=$?
    echo "variant $v: $(grep -E '^# [0-9]+ checks' "$OBJ/validate_v$v.txt") (rc $rc)"
    grep -m 5 FAIL "$OBJ/validate_v$v.txt"
    if [ $rc -eq 0 ]; then ok_variants="$ok_variants${ok_variants:+,}$v"; fi
done
[ -n "$ok_variants" ] || { echo "FAIL: no variant validated; not timing"; exit 1; }

echo "== timing (card: $card)"
PYTHONUNBUFFERED=1 python3 bench/gpu/bench.py --lib "$OBJ/libflash.so" --csv "bench/results/kernel_$card${TAG:-}.csv" \
    --raw "bench/results/kernel_$card${TAG:-}.json" --variants "$ok_variants" "$@" | tee "$OBJ/bench.txt"
rc=$?
sed -n '/^$/,$p' "$OBJ/bench.txt" > "bench/results/kernel_$card${TAG:-}.txt"
exit $rc
