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
#   MODES    what runs each round (default "thread series"; with BACKEND=cuda "new mpirun1 base
#            torch"): thread / series: FA_IO_THREAD=1 / 0 under mpirun --bind-to none; new: the
#            binary started directly; mpirun1: under a plain `mpirun -np 1` (Open MPI's default
#            binding, as users type it); base: BASE_FA (the previous revision's binary, built
#            beside) started directly; torch: bench/gpu/torch_wholejob.py, a user's h5py + torch
#            SDPA script (outside time only). The baseline column is series' whole time, or with
#            base among the modes base's outside time (its report's elapsed_s stopped before the
#            commit). Each shape's input is flushed to disk after gen (sync) and its page-cache
#            read rates measured (build/bench/page_cache_read: memcpy and pread by every thread,
#            columns appended) beside the job's own key-read rate. VERBOSE_ONCE=1: the first
#            round's run of mode new with --verbose, its lines kept in the results folder.
set -euo pipefail
cd "$(dirname "$0")/.."
FA=${FA_LONG:-./fa_long}
[ -x "$FA" ] || { echo "wholejob.sh: $FA not built (make)" >&2; exit 1; }
PY=/usr/bin/python3; $PY -c 'import json' 2>/dev/null || PY=python3
TPY=python3                      # the one with torch and h5py (a GPU node's /usr/bin/python3 may lack them)
for p in python3 /usr/bin/python3; do $p -c 'import torch, h5py' 2>/dev/null && { TPY=$p; break; }; done
BACKEND=${BACKEND:-cpu}; RANKS=${RANKS:-1}; ROUNDS=${ROUNDS:-3}
if [ "$BACKEND" = cuda ]; then MODES=${MODES:-"new mpirun1 base torch"}; else MODES=${MODES:-"thread series"}; fi
BASE_FA=${BASE_FA:-}; BASE_REV=${BASE_REV:-base}
case " $MODES " in *" base "*) [ -x "$BASE_FA" ] || { echo "wholejob.sh: mode base needs BASE_FA" >&2; exit 1; } ;; esac
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
NEWCOLS2=read_kv_gbps,page_cache_memcpy_gbps,page_cache_pread_gbps,whole_over_io
head -1 "$CSV" | grep -q read_kv_gbps || sed -i "1s/\$/,$NEWCOLS2/" "$CSV"

echo "# fa_long whole job  $DATE  $MACHINE  rev $REV  backend $BACKEND  $RANKS rank(s)  best of $ROUNDS"
case " $MODES " in
  *" base "*) echo "# baseline: $BASE_FA (rev $BASE_REV) started directly, its outside time; same run" ;;
  *) echo "# baseline: the same binary with FA_IO_THREAD=0 (reads and writes in series), same run" ;;
esac
MPI1="mpirun -np 1"; [ "$(id -u)" = 0 ] && MPI1="$MPI1 --allow-run-as-root"
fmt=' %-8s %-7s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %8s %7s\n'
printf "#${fmt# }" shape mode whole outside run compute read write exposed commit floor baseline ratio w/floor
printf "#${fmt# }" "" "" s s s s s s s s s s x x
for spec in $SHAPES; do
  IFS=: read -r name B NQ NK H HKV D C DT <<< "$spec"
  in=$TMP/$name.h5
  "$FA" gen -o "$in" -b "$B" --nq "$NQ" --nk "$NK" --heads "$H" --kv-heads "$HKV" -d "$D" \
        --dtype "$DT" -f >/dev/null
  sync                           # gen's writeback out of the way of the timed runs
  pc="0 0"
  [ -x build/bench/page_cache_read ] && pc=$(build/bench/page_cache_read "$in" | tail -1 | awk '{print $3, $4}')
  cflag=""; [ "$C" = 1 ] && cflag="--causal"
  for r in $(seq "$ROUNDS"); do
    for mode in $MODES; do
      rep="$TMP/$name.$mode.$r.json"
      t0=$(date +%s.%N)
      case $mode in
        thread|series)
          env_io=1; [ $mode = series ] && env_io=0
          FA_IO_THREAD=$env_io $MPIRUN -x FA_IO_THREAD "$FA" -i "$in" -o "$TMP/out.h5" -f --lse $cflag \
            --backend "$BACKEND" -q --report "$rep" ;;
        new)  if [ "$r" = 1 ] && [ "${VERBOSE_ONCE:-0}" = 1 ]; then   # where the time went, once
                "$FA" -i "$in" -o "$TMP/out.h5" -f --lse $cflag --backend "$BACKEND" --verbose \
                  --report "$rep" 2> "$JDIR/${name}_new_verbose.txt"
              else "$FA" -i "$in" -o "$TMP/out.h5" -f --lse $cflag --backend "$BACKEND" -q --report "$rep"; fi ;;
        mpirun1) $MPI1 "$FA" -i "$in" -o "$TMP/out.h5" -f --lse $cflag --backend "$BACKEND" -q --report "$rep" ;;
        base) "$BASE_FA" -i "$in" -o "$TMP/out.h5" -f --lse $cflag --backend "$BACKEND" -q --report "$rep" ;;
        torch) $TPY bench/gpu/torch_wholejob.py "$in" "$TMP/out_torch.h5" $cflag > "$TMP/$name.$mode.$r.txt" ;;
      esac
      t1=$(date +%s.%N)
      echo "$t0 $t1" | awk '{printf "%.6f\n", $2 - $1}' > "$TMP/$name.$mode.$r.outside"
      rm -f "$TMP/out.h5" "$TMP/out_torch.h5"
    done
  done
  $PY - "$TMP" "$name" "$ROUNDS" "$JDIR" "$CSV" "$MACHINE,$DATE,$REV,$BACKEND,$RANKS,$name,$B,$NQ,$NK,$H,$HKV,$D,$C,$DT" "$in" "$MODES" "$BASE_REV" $pc <<'EOF'
import json, os, shutil, sys
tmp, name, rounds, jdir, csv, prefix, inp, modes, base_rev, pc_copy, pc_pread = sys.argv[1:12]
modes = modes.split()
best, outside = {}, {}
for mode in modes:
    outs = [float(open(f"{tmp}/{name}.{mode}.{r}.outside").read()) for r in range(1, int(rounds) + 1)]
    if mode == "torch":          # no report: the script's own line (total read compute write)
        lines = [open(f"{tmp}/{name}.{mode}.{r}.txt").read().split() for r in range(1, int(rounds) + 1)]
        i = outs.index(min(outs))
        t = [float(x) for x in lines[i][1:5]]
        best[mode] = {"elapsed_s": t[0], "phases_s": {"compute": t[2], "read": t[1], "write": t[3]},
                      "floor": {"s": 0.0, "bytes_written": 0}, "bytes": {"host_to_device": 0, "device_to_host": 0}}
        outside[mode] = outs[i]
        continue
    reps = [json.load(open(f"{tmp}/{name}.{mode}.{r}.json")) for r in range(1, int(rounds) + 1)]
    key = (lambda k: outs[k]) if mode == "base" else (lambda k: reps[k]["elapsed_s"])
    i = min(range(len(reps)), key=key)
    best[mode] = reps[i]
    outside[mode] = outs[i]
    shutil.copy(f"{tmp}/{name}.{mode}.{i + 1}.json", f"{jdir}/{name}_{mode}.json")
# the baseline: base's outside time, else series' whole, else the user's script, else none (0)
base = (outside["base"] if "base" in modes else best["series"]["elapsed_s"] if "series" in modes
        else outside["torch"] if "torch" in modes else 0.0)
in_bytes = os.path.getsize(inp)
for mode in modes:
    j = best[mode]
    ph, fl, by = j["phases_s"], j["floor"], j["bytes"]
    w = outside[mode] if mode in ("base", "torch") else j["elapsed_s"]
    row = [w, ph["compute"], ph["read"], ph["write"], ph.get("io_exposed", 0.0), fl["s"]]
    wh = j.get("whole", {})
    commit, run = ph.get("commit", 0.0), j.get("elapsed_run_s", w)
    # the keys' read rate: k and v as stored over the read_kv phase
    p = prefix.split(",")
    B, NK, HKV, D, DT = int(p[6]), int(p[8]), int(p[10]), int(p[11]), p[13]
    kv_bytes = B * NK * HKV * D * 2 * (4 if DT == "float32" else 2)
    rkv = ph.get("read_kv", 0.0)
    kv_gbps = kv_bytes / rkv * 1e-9 if rkv > 0 else 0.0
    io = ph.get("read", 0.0) + ph.get("write", 0.0)
    fs = fl["s"] if fl["s"] > 0 else 1e-9
    print(" %-8s %-7s %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.3f %8.2f %7.2f" % (
        name, mode, w, outside[mode], run, *row[1:5], commit, fl["s"], base, base / max(w, 1e-9) if base else 0.0,
        w / fs))
    with open(csv, "a") as f:
        f.write(prefix + ",%s,%s,%d,%d,%d,%.0f,%.6f,%.3f,%.3f,%.3f,%.6f,%.6f,%.6f,%.6f,%.0f,%.3f,%s,%s,%.3f\n" % (
            mode if mode != "base" else f"base {base_rev}", ",".join("%.6f" % x for x in row),
            by["host_to_device"], by["device_to_host"],
            in_bytes, fl["bytes_written"], base, base / max(w, 1e-9) if base else 0.0, w / max(ph["compute"], 1e-9),
            w / fs, outside[mode], run, commit, ph.get("startup", 0.0),
            wh.get("write_behind", {}).get("bytes_flushed_behind", 0), kv_gbps, pc_copy, pc_pread,
            w / io if io > 0 else 0.0))
EOF
done
echo "# wrote $CSV and $JDIR/"
