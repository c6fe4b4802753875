#!/bin/sh
# bench/read_probe.sh — where a multi-rank job's host time goes when several ranks of one node
# read the same input: each rank's read phase, against the storage alone, to tell contention
# from the pipeline's own waits (bench/NOTES_SCALING.md).
#
#   sh bench/read_probe.sh            N = 262144 queries, H 32, Hkv 8, D 128, bf16 (N=... smaller)
#
# Rows, 1 and 2 ranks each (one rank per GPU where there are GPUs):
#   cat      the input file read by 1 or 2 concurrent `cat`s (storage / page cache alone)
#   qonly    fa_long --backend cpu on a file with 512 keys: the query reads, widening and the
#            per-chunk agreements of the pipeline (the report's sync phase), no GPU
#   gpu      the whole GPU job (N keys), when there is a GPU
#   *_rank   the same with FA_Q_READ=rank (every rank reads every query chunk; the default reads
#            once per node into a shared-memory window)
# each from the input under /tmp (TMPDIR) and, when it has room, under /dev/shm.
# Out: bench/results/read_probe_<machine>.csv (date, machine, rev, row kind, where, ranks, elapsed,
# read phase of the slowest rank and of it the keys, per-rank read range, finalize, write, sync,
# GPU idle). On a lent GPU machine: `sh bench/gpu_session.sh build probe`.
set -eu
cd "$(dirname "$0")/.."
FA=${FA_LONG:-$PWD/fa_long}
N=${N:-262144}
H=32; HKV=8; D=128
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REV=${FA_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
MPI="mpirun --oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && MPI="$MPI --allow-run-as-root"
export NCCL_NVLS_ENABLE=0
NG=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l || true)
if [ "${NG:-0}" -gt 0 ]; then
    DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    TAG=$(echo "$DEV" | tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_' | sed 's/nvidia_//')_x$NG
else
    DEV="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    TAG=$(echo "$DEV" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-' | cut -c1-16)_$(nproc)c
fi
# OMP_NUM_THREADS stays unset unless given: fa_long gives each rank its share of the node's CPUs
OUT=bench/results/read_probe_$TAG.csv
W=${TMPDIR:-/tmp}/fa_read_probe_$$
mkdir -p "$W" bench/results
trap 'rm -rf "$W" /dev/shm/fa_read_probe_$$' EXIT
$FA gen -o "$W/q.h5" --nq "$N" --nk 512 --heads $H --kv-heads $HKV -d $D -t bfloat16 -f > /dev/null
[ "${NG:-0}" -gt 0 ] && $FA gen -o "$W/full.h5" -n "$N" --heads $H --kv-heads $HKV -d $D -t bfloat16 -f > /dev/null
PLACES="$W"
need=$(du -sk "$W" | cut -f1)
free=$(df -k /dev/shm 2>/dev/null | awk 'NR==2 {print $4}' || echo 0)
if [ "${free:-0}" -gt $((need * 2 + 1048576)) ]; then
    mkdir -p /dev/shm/fa_read_probe_$$
    cp "$W"/*.h5 /dev/shm/fa_read_probe_$$/
    PLACES="$PLACES /dev/shm/fa_read_probe_$$"
fi
echo "date,machine,rev,kind,where,ranks,threads_per_rank,elapsed_s,read_max_s,read_kv_max_s,read_min_s,finalize_max_s,write_max_s,sync_max_s,compute_idle_s" > "$OUT"
row() {   # kind where ranks json|seconds
    if [ -f "$4" ]; then
        python3 - "$4" "$OUT" "$DATE,$DEV,$REV,$1,$2,$3" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
pr = r["per_rank"]
rd = [x["read_s"] for x in pr]
line = [sys.argv[3], str(r["config"].get("threads_per_rank", "")), f"{r['elapsed_s']:.3f}", f"{max(rd):.3f}", f"{max(x['read_kv_s'] for x in pr):.3f}",
        f"{min(rd):.3f}", f"{max(x['finalize_s'] for x in pr):.3f}", f"{max(x['write_s'] for x in pr):.3f}",
        f"{max(x.get('sync_s', 0) for x in pr):.3f}", f"{r['merge']['compute_idle_s']:.3f}"]
open(sys.argv[2], "a").write(",".join(line) + "\n")
PY
    else
        printf '%s,%.3f,,,,,,,\n' "$DATE,$DEV,$REV,$1,$2,$3,${OMP_NUM_THREADS:-}" "$4" >> "$OUT"
    fi
}
for P in $PLACES; do
    where=$(case "$P" in /dev/shm*) echo shm ;; *) echo tmp ;; esac)
    for np in 1 2; do
        t0=$(date +%s.%N)
        for r in $(seq "$np"); do cat "$P/q.h5" > /dev/null & done
        wait
        row cat "$where" "$np" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
        $MPI -np "$np" "$FA" -i "$P/q.h5" -o "$W/o.h5" -f -q --backend cpu --chunk 8192 \
            --report "$W/r.json"
        row qonly "$where" "$np" "$W/r.json"
        if [ "$np" -gt 1 ]; then
            FA_Q_READ=rank $MPI -np "$np" -x FA_Q_READ "$FA" -i "$P/q.h5" -o "$W/o.h5" -f -q \
                --backend cpu --chunk 8192 --report "$W/r.json"
            row qonly_rank "$where" "$np" "$W/r.json"
        fi
        if [ "${NG:-0}" -ge "$np" ]; then
            $MPI -np "$np" -x NCCL_NVLS_ENABLE "$FA" -i "$P/full.h5" -o "$W/o.h5" -f -q \
                --backend cuda --chunk 8192 --report "$W/r.json"
            row gpu "$where" "$np" "$W/r.json"
            if [ "$np" -gt 1 ]; then
                FA_Q_READ=rank $MPI -np "$np" -x NCCL_NVLS_ENABLE -x FA_Q_READ "$FA" -i "$P/full.h5" \
                    -o "$W/o.h5" -f -q --backend cuda --chunk 8192 --report "$W/r.json"
                row gpu_rank "$where" "$np" "$W/r.json"
            fi
        fi
    done
done
python3 -c 'import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
for r in rows: print("  ".join(x.rjust(w[i]) for i, x in enumerate(r[3:], 3)))' "$OUT"
echo "# table: $OUT"
