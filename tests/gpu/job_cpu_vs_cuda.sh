#!/bin/sh
# tests/gpu/job_cpu_vs_cuda.sh — the CPU engine and the GPU engine agree on the same HDF5 job
# (called by tests/gpu/run.sh when ./fa_long is built). For causal and full attention, GQA, odd
# lengths, Nq != Nk, head dims 128, 72 (run in the 80 instance, its extra columns zero) and 256
# (64-key tiles): ./fa_long gen writes the job; --backend cpu and --backend cuda (1 rank, and
# 2 ranks with striped key shards) each write o and lse; h5py compares them
# (max |o_cuda - o_cpu| <= 1e-2 * max |o_cpu|, |lse_cuda - lse_cpu| <= 1e-3 (1 + |lse|)), and
# `fa_long check` compares the CUDA output with the fp64 reference on sampled rows.
set -u
T=${TMPDIR:-/tmp}/fa_gpu_job.$$
mkdir -p "$T"
trap 'rm -rf "$T"' EXIT
MPIRUN="mpirun --allow-run-as-root --oversubscribe -np 2"
fail=0
for d in 128 72 256; do
./fa_long gen -o "$T/in.h5" --nq 1500 --nk 2333 --heads 4 --kv-heads 2 -d $d --seed $$ -f || exit 1
echo "-- head dim $d"
for causal in "" "--causal"; do
    ./fa_long -i "$T/in.h5" -o "$T/cpu.h5" $causal --lse --backend cpu -f -q || { echo "FAIL: cpu run"; fail=1; continue; }
    ./fa_long -i "$T/in.h5" -o "$T/cuda.h5" $causal --lse --backend cuda -f -q || { echo "FAIL: cuda run"; fail=1; continue; }
    $MPIRUN ./fa_long -i "$T/in.h5" -o "$T/cuda2.h5" $causal --lse --backend cuda --shard striped --stripe 200 -f -q \
        || { echo "FAIL: cuda run, 2 ranks"; fail=1; continue; }
    for out in cuda.h5 cuda2.h5; do
        python3 - "$T/cpu.h5" "$T/$out" <<'PY' || fail=1
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
oa, ob = a["o"][...].astype(np.float64), b["o"][...].astype(np.float64)
la, lb = a["lse"][...].astype(np.float64), b["lse"][...].astype(np.float64)
scale = np.abs(oa).max()
err = np.abs(oa - ob).max() / scale
fin = np.isfinite(la)
lerr = (np.abs(la[fin] - lb[fin]) / (1 + np.abs(la[fin]))).max() if fin.any() else 0.0
ok = err <= 1e-2 and lerr <= 1e-3 and np.isfinite(ob).all() and (np.isinf(lb) == np.isinf(la)).all()
print(f"{sys.argv[2].split('/')[-1]} vs cpu: max |o diff| {err:.2e} of scale, lse {lerr:.1e}  {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
    done
    ./fa_long check -i "$T/in.h5" -o "$T/cuda.h5" --rows 64 || { echo "FAIL: fa_long check of the cuda output"; fail=1; }
done
done
exit $fail
