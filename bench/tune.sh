#!/bin/sh
# bench/tune.sh — the cost model and the autotuner against measurement (issue 7).
#
#   bench/tune.sh            CPU: 12 job shapes on this machine's cores
#   bench/tune.sh --gpu      GPU: the same table for the flash kernel on the first CUDA device
#   SHAPES="N:D:H:HKV:CAUSAL ..." bench/tune.sh   other shapes
#
# For each shape, one `fa_long tune --sweep` process (runner/tune.c) measures the machine figures
# (FMA peak, memory bandwidth, product efficiency calibrated on a fixed 2K job), times the fixed
# defaults and the model's 8 best candidates on the real engine (best of REPS), then times every
# configuration of the sweep grid, and finally the tuned configuration, the sweep's best and the
# defaults once more, interleaved (2 x REPS rounds, best of each), for the comparisons. A row: the model's prediction against the measured time of the tuned
# configuration, the median model error over the sweep, the tuned time against the sweep's best,
# and against the defaults. The user's tune cache is never touched.
# Output: bench/results/tune_<machine>.csv (+ .txt, the raw result lines), with date, CPU, rev,
# and the load average at the start of each row (the machine is shared). The machine figures are
# measured once (first shape) into a bench-only tune cache and reused; the user's cache is
# never touched.
set -eu
cd "$(dirname "$0")/.."
FA=${FA_LONG:-./fa_long}
GPU=0
[ "${1:-}" = "--gpu" ] && GPU=1
REPS=${REPS:-3}
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ $GPU = 1 ]; then
    DEV=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    TAG=$(echo "$DEV" | tr 'A-Z ' 'a-z_' | tr -cd 'a-z0-9_' | sed 's/nvidia_//')
    # N D H HKV CAUSAL BUDGET(bytes per rank, 0 = all): 8K-256K, budgets unlimited to 1/16 of K/V
    SHAPES=${SHAPES:-"8192:64:32:32:0:0 8192:128:32:8:1:0 32768:64:32:8:0:0 32768:128:32:4:1:0
        65536:128:32:8:0:0 65536:64:32:32:1:0 131072:128:32:8:1:0 131072:64:16:2:0:0
        262144:128:32:8:0:0 262144:128:32:8:1:0 262144:128:32:8:0:4G 262144:128:32:8:1:2G"}
    BACKEND="--backend cuda"
else
    DEV="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    NT=${OMP_NUM_THREADS:-$(nproc)}
    TAG=$(echo "$DEV" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9-' | cut -c1-16)_${NT}c
    # N D H HKV CAUSAL: D 64/128, causal and not, GQA 1/4/8, N 2K-16K (what fits seconds per run)
    SHAPES=${SHAPES:-"2048:64:8:8:0 2048:64:8:2:1 2048:128:8:1:0 2048:128:8:8:1 4096:64:8:2:0
        4096:64:8:1:1 4096:128:8:2:1 4096:128:8:8:0 8192:64:8:8:1 8192:128:8:1:1
        16384:64:8:2:1 16384:64:8:1:1"}
    BACKEND="--backend cpu"
fi
OUT=bench/results/tune_${TAG}
CACHE=/tmp/fa_tune_bench_$$.txt
rm -f "$CACHE"
RAW=$OUT.txt
CSV=$OUT.csv
: > "$RAW"
echo "date,device,rev,load1,n,d,h,hkv,gqa,causal,budget,default_cfg,default_s,tuned_cfg,tuned_pred_s,tuned_s,model_err_pct,sweep_median_err_pct,sweep_n,best_cfg,best_s,tuned_vs_best_pct,gain_vs_default_pct" > "$CSV"
printf "# %-6s %3s %3s %3s %2s %6s | %-14s %8s | %-14s %8s %8s %6s | %6s | %-14s %8s %6s | %6s\n" \
    N D H Hkv c budget default s tuned pred_s s err% sw_err% best s vs_best% gain%
for S in $SHAPES; do
    N=$(echo "$S" | cut -d: -f1); D=$(echo "$S" | cut -d: -f2); H=$(echo "$S" | cut -d: -f3)
    HKV=$(echo "$S" | cut -d: -f4); C=$(echo "$S" | cut -d: -f5); B=$(echo "$S" | cut -d: -f6)
    # one bench cache: the machine figures are measured by the first shape and kept for the others
    ARGS="-n $N -d $D --heads $H --kv-heads $HKV --reps $REPS --tune-cache $CACHE $BACKEND"
    [ "$C" = 1 ] && ARGS="$ARGS --causal"
    [ -n "$B" ] && [ "$B" != 0 ] && ARGS="$ARGS --device-mem $B"
    if [ $GPU = 0 ]; then
        ARGS="$ARGS --sweep"
        [ "$N" -ge 8192 ] && ARGS="$ARGS --small-grid --top 4"
    fi
    LOAD=$(cut -d' ' -f1 /proc/loadavg)
    # shellcheck disable=SC2086
    $FA tune $ARGS > /tmp/fa_tune_$$.txt
    { echo "## $S load $LOAD"; cat /tmp/fa_tune_$$.txt; } >> "$RAW"
    python3 - "$S" "$LOAD" "$DATE" "$DEV" "$REV" /tmp/fa_tune_$$.txt >> "$CSV" <<'EOF'
import statistics, sys
shape, load, date, dev, rev, path = sys.argv[1:7]
f = shape.split(":") + ["0"]
n, d, h, hkv, causal, budget = f[:6]
rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) for l in open(path) if l.startswith("result ")]
def cfg(r):
    if r.get("variant", "0") != "0" or r.get("br") == "0":
        return f"v{r['variant']}/c{r['chunk']}"
    return f"{r['br']}x{r['bc']}/c{r['chunk']}"
get = lambda k: [r for r in rows if r["kind"] == k]
tuned = get("tuned")[0]
tuned_m = get("tuned_again")[0] if get("tuned_again") else tuned
default = get("default_again")[0] if get("default_again") else get("default")[0]
sweep = get("sweep")
pool = sweep + [tuned_m]
best = min(pool, key=lambda r: float(r["measured_s"]))
if get("best_again"):            # the final interleaved timing of tuned, sweep best, defaults
    best = get("best_again")[0]
    if float(tuned_m["measured_s"]) < float(best["measured_s"]):
        best = tuned_m
ts, tp = float(tuned_m["measured_s"]), float(tuned_m["predicted_s"])
errs = [abs(float(r["predicted_s"]) / float(r["measured_s"]) - 1) * 100 for r in sweep]
sw = statistics.median(errs) if errs else float("nan")
bs, dsec = float(best["measured_s"]), float(default["measured_s"])
print(",".join(str(x) for x in [date, dev, rev, load, n, d, h, hkv, int(h) // int(hkv), causal, budget,
      cfg(default), f"{dsec:.4f}", cfg(tuned_m), f"{tp:.4f}", f"{ts:.4f}",
      f"{(tp / ts - 1) * 100:+.1f}", f"{sw:.1f}", len(sweep), cfg(best), f"{bs:.4f}",
      f"{(ts / bs - 1) * 100:+.1f}", f"{(dsec / ts - 1) * 100:+.1f}"]))
EOF
    tail -1 "$CSV" | awk -F, '{printf "  %-6s %3s %3s %3s %2s %6s | %-14s %8s | %-14s %8s %8s %6s | %6s | %-14s %8s %6s | %6s\n", $5,$6,$7,$8,$10,$11,$12,$13,$14,$15,$16,$17,$18,$20,$21,$22,$23}'
done
rm -f /tmp/fa_tune_$$.txt "$CACHE"
python3 - "$CSV" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
e = [abs(float(r["model_err_pct"])) for r in rows]
s = [float(r["sweep_median_err_pct"]) for r in rows if r["sweep_median_err_pct"] != "nan"]
vb = [float(r["tuned_vs_best_pct"]) for r in rows]
g = [float(r["gain_vs_default_pct"]) for r in rows]
print(f"# {len(rows)} shapes: model error at the tuned configuration median {statistics.median(e):.1f}% "
      f"(max {max(e):.1f}%)" + (f", over all sweep configurations median {statistics.median(s):.1f}%" if s else ""))
print(f"# tuned vs best of sweep: max {max(vb):+.1f}% (rows within 3%: {sum(v <= 3 for v in vb)}/{len(vb)})")
print(f"# tuned vs fixed defaults: gain median {statistics.median(g):+.1f}%, min {min(g):+.1f}% "
      f"(rows slower: {sum(x < 0 for x in g)})")
EOF
echo "# table: $CSV   raw: $RAW"
