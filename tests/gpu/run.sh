#!/bin/sh
# tests/gpu/run.sh — the GPU tests (`make test-gpu`), on a machine with an NVIDIA GPU (H100).
#
#   sh tests/gpu/run.sh            build, then: every kernel variant and the engine against the
#                                  fp64 reference (tests/gpu/test_flash.cu), compute-sanitizer
#                                  memcheck + racecheck on a small case, and the CPU engine vs the
#                                  GPU engine on one HDF5 job through ./fa_long, paged keys and
#                                  ranks sharing the GPU (job_paging.sh), typed transfers and
#                                  streamed keys (transfers.sh), the masks (masks.py),
#                                  --mode taylor (taylor.sh),
#                                  and a few seconds of bench/gpu/bench.py --smoke (the kernel
#                                  through ctypes against torch SDPA: needs python3 with torch).
# Overridable: NVCC, NVCC_GENCODE, BUILD; BENCH_SMOKE=0 leaves the bench smoke out (no torch).
# Exit status non-zero when any step failed.
set -u
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
CUDA_BIN=$(dirname "$NVCC")
NVCC_GENCODE=${NVCC_GENCODE:--gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80}
BUILD=${BUILD:-build}
OBJ=$BUILD/tests/gpu
mkdir -p "$OBJ"
fail=0

# the kernels compile in the background while the jobs through ./fa_long run first (the engine
# glue changes most often); then the kernel checks
echo "== building the kernels and tests/gpu/test_flash ($NVCC), in the background"
# the flash kernels and the engine (other kernels/cuda files belong to other engines)
# (the dispatch, one file per (head dim, type) instance from kernels/cuda/gen_instances.py, the engine)
SRCS="kernels/cuda/flash_sm80.cu kernels/cuda/flash_sm90.cu $(ls kernels/cuda/inst/flash_*.cu) kernels/cuda/engine.cu"
for f in $SRCS; do
    b=$(basename "$f" .cu)
    "$NVCC" -O3 -lineinfo -std=c++17 $NVCC_GENCODE -Xptxas=-v --expt-relaxed-constexpr -I. -DFA_HAVE_CUDA \
        -Xcompiler -fPIC -c "$f" -o "$OBJ/$b.o" 2> "$OBJ/$b.ptxas.txt" &
done
echo "== CPU engine vs GPU engine on one HDF5 job (./fa_long)"
if [ -x ./fa_long ]; then
    sh tests/gpu/job_cpu_vs_cuda.sh || { echo "FAIL: fa_long cpu vs cuda"; fail=1; }
    echo "== paged keys, --device-mem, ranks sharing the GPU (./fa_long)"
    sh tests/gpu/job_paging.sh || { echo "FAIL: paging / shared-GPU jobs"; fail=1; }
    echo "== typed transfers and streamed keys: host link bytes, bit-identical outputs (./fa_long)"
    bash tests/gpu/transfers.sh || { echo "FAIL: typed transfers / streamed keys"; fail=1; }
    echo "== the tuner with a device budget that pages (./fa_long tune)"
    sh tests/gpu/tune_paged.sh || { echo "FAIL: tune with paging"; fail=1; }
    echo "== overflowing inputs refused on the GPU, compute labels (./fa_long)"
    sh tests/gpu/overflow.sh || { echo "FAIL: overflow / compute label on the GPU"; fail=1; }
    if [ "${SKIP_MASKS:-0}" != 1 ]; then
        echo "== masks: windows, documents, softcap, ALiBi on the CUDA engine (./fa_long)"
        timeout 900 python3 tests/gpu/masks.py || { echo "FAIL: masks on the GPU"; fail=1; }
    fi
    if [ -f tests/gpu/taylor.sh ]; then
        echo "== --mode taylor on the GPU (./fa_long)"
        sh tests/gpu/taylor.sh || { echo "FAIL: taylor on the GPU"; fail=1; }
    fi
else
    echo "FAIL: ./fa_long is not built (make test-gpu builds it first)"; fail=1
fi

wait                                # the kernels' compiles
FLASH_OBJS=""                       # the dispatch and the instances: every source but the engine
for f in $SRCS; do case $f in */engine.cu) ;; *) FLASH_OBJS="$FLASH_OBJS $OBJ/$(basename "$f" .cu).o" ;; esac; done
for f in $SRCS; do
    b=$(basename "$f" .cu)
    [ -s "$OBJ/$b.o" ] || { cat "$OBJ/$b.ptxas.txt"; echo "FAIL: compiling $f"; exit 1; }
done
"$NVCC" -O2 -std=c++17 $NVCC_GENCODE -I. -DFA_HAVE_CUDA -Xcompiler -fopenmp tests/gpu/test_flash.cu \
    $FLASH_OBJS "$OBJ"/engine.o -o "$OBJ/test_flash" || { echo "FAIL: compiling the test"; exit 1; }
"$NVCC" -shared $NVCC_GENCODE $FLASH_OBJS -o "$OBJ/libflash.so" || { echo "FAIL: linking libflash.so"; exit 1; }
echo "== resource usage (ptxas, sm_90a) per kernel"
grep -h -A2 "Compiling entry function '_Z.*flash_fwd.*sm_90a" "$OBJ"/flash_sm*.ptxas.txt | grep -E "entry|Used|spill" | sed 's/ptxas info *: //' || true

echo "== kernel variants and engine vs fp64 reference"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)} timeout 600 "$OBJ/test_flash" "$@" || { echo "FAIL: test_flash"; fail=1; }

if [ -x "$CUDA_BIN/compute-sanitizer" ] || command -v compute-sanitizer >/dev/null 2>&1; then
    CS=$( [ -x "$CUDA_BIN/compute-sanitizer" ] && echo "$CUDA_BIN/compute-sanitizer" || command -v compute-sanitizer )
    for tool in memcheck racecheck; do
        echo "== compute-sanitizer --tool $tool (small case, every variant)"
        timeout 300 "$CS" --tool $tool --error-exitcode 3 "$OBJ/test_flash" --small > "$OBJ/sanitizer_$tool.txt" 2>&1
        rc=$?
        tail -n 4 "$OBJ/sanitizer_$tool.txt"
        [ $rc -eq 0 ] && echo "ok: $tool clean" || { echo "FAIL: $tool (rc $rc, $OBJ/sanitizer_$tool.txt)"; fail=1; }
    done
else
    echo "FAIL: compute-sanitizer not found"; fail=1
fi

if [ "${BENCH_SMOKE:-1}" != 0 ]; then
    # bench/gpu.sh's timing step on small shapes, so that its ctypes call of the kernel cannot rot
    echo "== kernel timing smoke: bench/gpu/bench.py --smoke ($OBJ/libflash.so, results under $OBJ)"
    PYTHONUNBUFFERED=1 timeout 300 python3 bench/gpu/bench.py --lib "$OBJ/libflash.so" --csv "$OBJ/bench_smoke.csv" \
        --smoke --dims 64,128,72,256 > "$OBJ/bench_smoke.txt" 2>&1
    rc=$?
    # the final table: one row per (d, causal, n), ours/flash/cudnn TFLOP/s, ratios ("-" where a
    # torch backend lacks the head dim), variant
    nrows=$(grep -cE '^ +[0-9]+ +[0-9]+ +(64|128|72|256) +[01] +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.-]+ +[0-9.-]+  v[0-9]' "$OBJ/bench_smoke.txt")
    sed -n '/^$/,$p' "$OBJ/bench_smoke.txt"
    if [ $rc -eq 0 ] && [ "$nrows" -eq 16 ]; then
        echo "ok: bench smoke (16 table rows)"
    else
        tail -n 20 "$OBJ/bench_smoke.txt"
        echo "FAIL: bench smoke (rc $rc, $nrows of 16 table rows, $OBJ/bench_smoke.txt)"; fail=1
    fi
fi

[ $fail -eq 0 ] && echo "# GPU tests: all passed" || echo "# GPU tests: FAILED"
exit $fail
