#!/bin/sh
# taylor.sh — the Taylor mode (--mode taylor) against the exact engine (issue 8).
#
#   bench/taylor.sh            CPU timings: Taylor and exact engines, N 128..1M, D 64/128, causal and
#                              not (H = Hkv = 4, B = 1), in-process (build/bench/taylor_bench time)
#   bench/taylor.sh --gpu      the same on the CUDA engines (Taylor fp32, exact bf16 flash), N up to 1M
#   bench/taylor.sh --error    approximation error against exact attention (random, small-logit and
#                              rank-8 inputs), N 1K..256K, D 64/128, causal and not (CPU engine)
#
# Each mode writes bench/results/taylor_{time_<machine>,error}.csv (date, machine, load average kept
# on every row) and prints a '#'-headed table last (bench/taylor_table.py): seconds per mode, the
# speedup, the crossover length, the speedup at 256K and the fitted slope of log(time) against
# log(N) for N >= 8K (1.0 = linear).
# Exact at large N is extrapolated from a block of rows around N/2 (ROWS_CPU=1024, ROWS_GPU=8192
# rows, from N >= 32K on the CPU and 256K on the GPU; est = load + compute * N / rows); such rows
# say measured=0. Taylor is always measured on all N rows.
#
#   NS="512 1K ..."  sizes;  DS="64 128";  CAUSALS="0 1";  REPS (best of, default 3)
#   OMP_NUM_THREADS  CPU threads (default: all cores). OMP_WAIT_POLICY=passive unless set: on a
#                    shared machine spinning threads waiting at a barrier take the CPU from the
#                    descheduled thread they wait for, which multiplies both engines' times.
set -e
cd "$(dirname "$0")/.."
BENCH=${BENCH:-build/bench/taylor_bench}
[ -x "$BENCH" ] || { echo "taylor.sh: $BENCH not built (make)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
export REPS=${REPS:-3}
MODE=cpu
[ "$1" = "--gpu" ] && MODE=gpu
[ "$1" = "--error" ] && MODE=error
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REV=$(git log -1 --format=%h 2>/dev/null || echo unknown)
mkdir -p bench/results
H=4

slug() { printf '%s' "$1" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//'; }
field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
tosize() { case "$1" in *K) echo $(( ${1%K} * 1024 ));; *M) echo $(( ${1%M} * 1048576 ));; *) echo "$1";; esac; }

if [ "$MODE" = error ]; then
  CSV=bench/results/taylor_error.csv
  MACHINE=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')
  NS=${NS:-"1K 4K 16K 64K 256K"}
  echo "date,machine,rev,kind,n,d,h,causal,rows,max_rel,mean_row_rel,formula_rel,fallback_frac" > "$CSV"
  for kind in random small lowrank; do
    for d in ${DS:-64 128}; do
      for c in ${CAUSALS:-0 1}; do
        for n in $NS; do
          L=$($BENCH error $kind "$n" "$d" 2 "$c" 32)
          echo "$DATE,\"$MACHINE\",$REV,$kind,$(field "$L" n),$d,2,$c,32,$(field "$L" max_rel),$(field "$L" mean_row_rel),$(field "$L" formula_rel),$(field "$L" fallback_frac)" >> "$CSV"
        done
      done
    done
  done
  python3 bench/taylor_table.py error "$CSV"
  exit 0
fi

if [ "$MODE" = gpu ]; then
  MACHINE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  [ -n "$MACHINE" ] || { echo "taylor.sh --gpu: no NVIDIA GPU (nvidia-smi)" >&2; exit 1; }
  BACKEND=cuda
  NS=${NS:-"128 256 512 1K 2K 4K 8K 16K 32K 64K 128K 256K 512K 1M"}
  ROWS=${ROWS_GPU:-8192}
  SAMPLE_FROM=262144
else
  MACHINE="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//'), $OMP_NUM_THREADS threads"
  BACKEND=cpu
  NS=${NS:-"128 256 512 1K 2K 4K 8K 16K 32K 64K 128K 256K 512K 1M"}
  ROWS=${ROWS_CPU:-1024}
  SAMPLE_FROM=32768
fi
CSV=bench/results/taylor_time_$(slug "$MACHINE" | cut -c1-40).csv
echo "date,machine,rev,backend,mode,n,d,h,causal,rows,load_s,compute_s,est_s,measured,threads,loadavg" > "$CSV"
for d in ${DS:-64 128}; do
  for c in ${CAUSALS:-0 1}; do
    for n in $NS; do
      for mode in taylor exact; do
        rows=0
        [ "$mode" = exact ] && [ "$(tosize "$n")" -ge "$SAMPLE_FROM" ] && rows=$ROWS
        LOAD=$(cut -d' ' -f1 /proc/loadavg)
        L=$($BENCH time $BACKEND $mode "$n" "$d" $H "$c" $rows)
        echo "$DATE,\"$MACHINE\",$REV,$BACKEND,$mode,$(field "$L" n),$d,$H,$c,$(field "$L" rows),$(field "$L" load_s),$(field "$L" compute_s),$(field "$L" est_s),$(field "$L" measured),$(field "$L" threads),$LOAD" >> "$CSV"
        echo "  $L" >&2
      done
    done
  done
done
python3 bench/taylor_table.py time "$CSV"
