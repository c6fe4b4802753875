#!/bin/sh
# masks_cpu.sh — how the ranks share the work of masked jobs on the CPU engine (issue #18 item 7):
# a 4096 window and 16 causal documents of very unequal lengths (one of 40% of the tokens, the
# others growing), with 2..8 ranks and the planner's layout for masks (striped), through ./fa_long
# --report. Per row: the visible pairs' max/mean over the ranks (exact, from the report's
# per-rank work) and the measured compute max/mean; the job's TFLOP/s. Ranks beyond the cores
# oversubscribe them (one thread a rank): their measured compute times then carry the scheduler's
# noise, the pair counts do not.
# Prints a '#'-headed table and appends to bench/results/masks_balance_<cpu>.csv.
#
#   N=16384 RANKS="2 3 4 8" sh bench/masks_cpu.sh
set -e
PY=${PYTHON:-/usr/bin/python3}      # with numpy and h5py
cd "$(dirname "$0")/.."
[ -x ./fa_long ] || { echo "masks_cpu.sh: ./fa_long not built (make)" >&2; exit 1; }
N=${N:-16384}
RANKS=${RANKS:-"2 3 4 5 6 7 8"}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')
SLUG=$(printf '%s' "$MODEL" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')_$(nproc)c
CSV=bench/results/masks_balance_$SLUG.csv
REV=$(git log -1 --format=%h 2>/dev/null || echo "?")
DATE=$(date -u +%Y-%m-%d)
./fa_long gen --output "$T/in.h5" -n "$N" --heads 4 --kv-heads 2 -d 64 --force -q 2>/dev/null || \
    ./fa_long gen --output "$T/in.h5" -n "$N" --heads 4 --kv-heads 2 -d 64 --force >/dev/null
cp "$T/in.h5" "$T/docs.h5"
"$PY" - "$T/docs.h5" "$N" <<'PY'
import sys, h5py, numpy as np
path, n = sys.argv[1], int(sys.argv[2])
big = int(n * 0.4)
w = np.arange(1, 16) ** 2
rest = (n - big) * w // w.sum()
rest[-1] += n - big - rest.sum()
cu = np.concatenate([[0], np.cumsum(np.concatenate([[big], rest]))]).astype(np.int64)
with h5py.File(path, "a") as f:
    f["cu_seqlens"] = cu
PY
[ -f "$CSV" ] || echo "date,cpu,rev,n,heads,kv_heads,d,mask,ranks,shard,pairs_max_over_mean,compute_max_over_mean,tflops" > "$CSV"
echo "# $MODEL, $(nproc) cores, $DATE, rev $REV: N=$N H=4 Hkv=2 D=64 float32, one thread a rank"
echo "# mask                ranks  shard     pairs max/mean  compute max/mean   TFLOP/s"
for mask in window documents; do
    for p in $RANKS; do
        if [ $mask = window ]; then inp=$T/in.h5; args="--window-size 4095,0"; else inp=$T/docs.h5; args="--causal"; fi
        mpirun --allow-run-as-root --oversubscribe --bind-to none -np "$p" -x OMP_NUM_THREADS=1 \
            ./fa_long -i "$inp" -o "$T/o.h5" -f -q $args --report "$T/r.json"
        "$PY" - "$T/r.json" "$mask" "$p" "$CSV" "$DATE" "$MODEL" "$REV" "$N" <<'PY'
import json, sys
r, mask, p, csv, date, model, rev, n = sys.argv[1:9]
rep = json.load(open(r))
w = [x["work_pairs"] for x in rep["per_rank"]]
c = [x["compute_s"] for x in rep["per_rank"]]
pw, pc = max(w) / (sum(w) / len(w)), max(c) / (sum(c) / len(c))
shard = rep["config"]["shard"]
print(f"  {mask:18s} {int(p):6d}  {shard:9s} {pw:15.4f} {pc:17.3f} {rep['tflops']:9.4f}")
with open(csv, "a") as f:
    f.write(f"{date},{model},{rev},{n},4,2,64,{mask},{p},{shard},{pw:.4f},{pc:.3f},{rep['tflops']:.4f}\n")
PY
    done
done
echo "# rows appended to $CSV"
