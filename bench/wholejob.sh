#!/bin/bash
# wholejob.sh — the whole job against its parts (issue 16): for each shape, ./fa_long with its
# reads and writes on the I/O thread (the default) and in series (FA_IO_THREAD=0, the previous
# pipeline: the baseline), alternating, best of ROUNDS each, in the same run. Rows carry the
# issue's columns (whole, compute, read, write, floor, host<->device bytes, the file's bytes) and
# the ratios whole/compute and whole/floor; bench/results/wholejob_<machine>.csv keeps them and
# the reports go to bench/results/wholejob_<machine>/ as JSON.
# "whole" is the report's elapsed_s: from the process's start to the committed output since issue
# 22 (before it, it stopped before the commit: that figure is now elapsed_run_s, the column
# run_s); "outside" is the wall clock of the whole command (mpirun and fa_long, timed here), so
# the two stand beside each other; commit_s, startup_s and flushed_behind_bytes come from the
# report too (columns appended after whole_over_floor; older rows lack them).
#
#   SHAPES   "name:B:Nq:Nk:H:Hkv:D:causal:dtype ..." (default: three CPU-sized jobs: the cpu.sh
#            job shape, one where queries and outputs dominate, a decode-like one)
#   RANKS    ranks per run (default 1);  ROUNDS  runs per mode (default 3)
#   FA_LONG  the binary (default ./fa_long), REV its revision for the rows (default: HEAD)
#   BACKEND  cpu (default) or cuda;  MACHINE  the results' name (default: CPU model and cores,
#            or the GPU's name with BACKEND=cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
FA=${FA_LONG:-./fa_long}
[ -x "$FA" ] || { echo "wholejob.sh: $FA not built (make)" >&2; exit 1; }
PY=/usr/bin/python3; $PY -c 'import json' 2>/dev/null || PY=python3
BACKEND=${BACKEND:-cpu}; RANKS=${RANKS:-1}; ROUNDS=${ROUNDS:-3}
SHAPES=${SHAPES:-"job16k:1:16384:16384:2:2:64:0:float32 qheavy:1:262144:256:8:2:64:0:bfloat16 decode:1:16:262144:32:8:128:0:bfloat16"}
if [ -z "${MACHINE:-}" ]; then
  if [ "$BACKEND" = cuda ]; then MACHINE=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  else MACHINE="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')_$(nproc)c"; fi
fi
SLUG=$(printf '%s' "$MACHINE" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')
CSV=bench/results/wholejob_$SLUG.csv
JDIR=bench/results/wholejob_$SLUG
mkdir -p "$JDIR"
REV=${REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
MPIRUN="mpirun --oversubscribe --bind-to none -np $RANKS"
[ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
[ -f "$CSV" ] || echo "machine,date,rev,backend,ranks,name,b,nq,nk,heads,kv_heads,d,causal,dtype,mode,whole_s,compute_s,read_s,write_s,io_exposed_s,floor_s,h2d_bytes,d2h_bytes,input_bytes,output_bytes,baseline_whole_s,ratio_vs_baseline,whole_over_compute,whole_over_floor,outside_s,run_s,commit_s,startup_s,flushed_behind_bytes" > "$CSV"
# a file from before the appended columns: its header gains them (its rows stay shorter)
NEWCOLS=outside_s,run_s,commit_s,startup_s,flushed_behind_bytes
head -1 "$CSV" | grep -q outside_s || sed -i "1s/\$/,$NEWCOLS/" "$CSV"

echo "# fa_long whole job  $DATE  $MACHINE  rev $REV  backend $BACKEND  $RANKS rank(s)  best of $ROUNDS"
echo "# baseline: the same binary with FA_IO_THREAD=0 (reads and writes in series), same run"
fmt=' %-8s %-7s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %7s\n'
printf "#${fmt# }" shape mode whole outside run compute read write exposed commit floor baseline ratio w/floor
printf "#${fmt# }" "" "" s s s s s s s s s s x x
for spec in $SHAPES; do
  IFS=: read -r name B NQ NK H HKV D C DT <<< "$spec"
  in=$TMP/$name.h5
  "$FA" gen -o "$in" -b "$B" --nq "$NQ" --nk "$NK" --heads "$H" --kv-heads "$HKV" -d "$D" \
        --dtype "$DT" -f >/dev/null
  cflag=""; [ "$C" = 1 ] && cflag="--causal"
  for r in $(seq "$ROUNDS"); do
    for mode in thread series; do
      env_io=1; [ $mode = series ] && env_io=0
      t0=$(date +%s.%N)
      FA_IO_THREAD=$env_io $MPIRUN -x FA_IO_THREAD "$FA" -i "$in" -o "$TMP/out.h5" -f --lse $cflag \
        --backend "$BACKEND" -q --report "$TMP/$name.$mode.$r.json"
      t1=$(date +%s.%N)
      echo "$t0 $t1" | awk '{printf "%.6f\n", $2 - $1}' > "$TMP/$name.$mode.$r.outside"
    done
  done
  $PY - "$TMP" "$name" "$ROUNDS" "$JDIR" "$CSV" "$MACHINE,$DATE,$REV,$BACKEND,$RANKS,$name,$B,$NQ,$NK,$H,$HKV,$D,$C,$DT" "$in" <<'EOF'
import json, os, shutil, sys
tmp, name, rounds, jdir, csv, prefix, inp = sys.argv[1:8]
best, outside = {}, {}
for mode in ("thread", "series"):
    reps = [json.load(open(f"{tmp}/{name}.{mode}.{r}.json")) for r in range(1, int(rounds) + 1)]
    b = min(reps, key=lambda j: j["elapsed_s"])
    best[mode] = b
    i = reps.index(b) + 1
    outside[mode] = float(open(f"{tmp}/{name}.{mode}.{i}.outside").read())
    shutil.copy(f"{tmp}/{name}.{mode}.{i}.json", f"{jdir}/{name}_{mode}.json")
base = best["series"]["elapsed_s"]
in_bytes = os.path.getsize(inp)
for mode in ("thread", "series"):
    j = best[mode]
    ph, fl, by = j["phases_s"], j["floor"], j["bytes"]
    w = j["elapsed_s"]
    row = [w, ph["compute"], ph["read"], ph["write"], ph.get("io_exposed", 0.0), fl["s"]]
    wh = j.get("whole", {})
    commit, run = ph.get("commit", 0.0), j.get("elapsed_run_s", w)
    print(" %-8s %-7s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.2f %7.2f" % (
        name, mode, w, outside[mode], run, *row[1:5], commit, fl["s"], base, base / w,
        w / fl["s"]))
    with open(csv, "a") as f:
        f.write(prefix + ",%s,%s,%d,%d,%d,%.0f,%.6f,%.3f,%.3f,%.3f,%.6f,%.6f,%.6f,%.6f,%.0f\n" % (
            mode, ",".join("%.6f" % x for x in row), by["host_to_device"], by["device_to_host"],
            in_bytes, fl["bytes_written"], base, base / w, w / max(ph["compute"], 1e-9),
            w / fl["s"], outside[mode], run, commit, ph.get("startup", 0.0),
            wh.get("write_behind", {}).get("bytes_flushed_behind", 0)))
EOF
done
echo "# wrote $CSV and $JDIR/"
