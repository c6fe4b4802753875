#!/bin/sh
# cpu.sh — CPU engine benchmark (make bench-cpu): GFLOP/s of the engine at N in {4K,16K} x
# D in {64,128} (plus causal at 16K), against the machine's measured fp32 FMA peak and a plain
# GEMM-softmax-GEMM attention through multi-threaded OpenBLAS, on the same inputs, same run.
# Each method runs in its own process so its peak resident memory (ru_maxrss) is its own.
# Prints a '#'-headed table and writes bench/results/cpu_<cpu-model>_<cores>c.csv.
# rate is FLOPs / best wall time (the figure that counts); cpu_rate is FLOPs / (CPU time / threads),
# which a neighbour on a shared machine disturbs less (it steals wall time, not our CPU time).
#
#   BENCH=path      the cpu_bench binary (default build/bench/cpu_bench)
#   OMP_NUM_THREADS threads for both methods (default: all cores)
#   CONFIGS         "N:D:H:HKV:CAUSAL ..." to run other sizes
#   REPS            timed runs per process after the validated warm-up (default 2)
#   ROUNDS          processes per method, alternating engine and baseline (default 3); the best
#                   time over ROUNDS x REPS is kept
#   JOB_ONLY=1      only the whole-job section (1, 2, 4 ranks through ./fa_long)
set -e
cd "$(dirname "$0")/.."
BENCH=${BENCH:-build/bench/cpu_bench}
[ -x "$BENCH" ] || { echo "cpu.sh: $BENCH not built (make)" >&2; exit 1; }
THREADS=${OMP_NUM_THREADS:-$(nproc)}
export OMP_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
REPS=${REPS:-2}
ROUNDS=${ROUNDS:-3}
# H keeps each run near a second on 2 cores; Hkv = H so the baseline is not handicapped by GQA.
CONFIGS=${CONFIGS:-"4K:64:16:16:0 4K:128:8:8:0 16K:64:2:2:0 16K:128:1:1:0 16K:64:2:2:1 16K:128:1:1:1"}

MODEL=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')
SLUG=$(printf '%s' "$MODEL" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')_$(nproc)c
CSV=bench/results/cpu_$SLUG.csv
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
REV=$(git log -1 --format=%h -- kernels/cpu/attn_cpu.c 2>/dev/null || echo unknown)
mkdir -p bench/results

field() { printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

if [ "${JOB_ONLY:-0}" != 1 ]; then   # JOB_ONLY=1: only the whole-job section below
# The peak is the best of several measurements spread over the run: on a shared machine a
# single one can catch a neighbour's burst and halve it.
PEAK=0
measure_peak() {
  PEAK_LINE=$($BENCH peak)
  PEAK=$(awk -v a="$(field "$PEAK_LINE" gflops)" -v b="$PEAK" 'BEGIN{print (a > b ? a : b)}')
}
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
measure_peak
ROWS=""
# Keep the line with the higher rate of two result lines ($1 may be empty).
better() {
  if [ -z "$1" ] || awk -v a="$(field "$2" gflops)" -v b="$(field "$1" gflops)" 'BEGIN{exit !(a > b)}'
  then printf '%s' "$2"; else printf '%s' "$1"; fi
}
for cfg in $CONFIGS; do
  set -- $(echo "$cfg" | tr ':' ' ')
  BL=""; EN=""
  # Methods alternate, process after process, so a neighbour's burst hits both alike.
  for r in $(seq "$ROUNDS"); do
    BL=$(better "$BL" "$($BENCH blas "$1" "$2" "$3" "$4" "$5" "$REPS")")
    EN=$(better "$EN" "$($BENCH engine "$1" "$2" "$3" "$4" "$5" "$REPS")")
    measure_peak
  done
  ROWS="$ROWS$cfg $EN
$cfg $BL
"
done

row_fmt=' %-7s %6s %4s %3s %4s %6s %9s %9s %9s %6s %8s %9s %9s\n'
echo "# fa_long CPU engine benchmark  $DATE  $MODEL, $(nproc) cores, $THREADS threads, engine rev $REV"
echo "# measured fp32 FMA peak: $PEAK GFLOP/s ($(field "$PEAK_LINE" vector_bits)-bit vectors, all threads, best of the run); load average at start: $LOAD"
printf "#${row_fmt# }" method N D H Hkv causal time rate cpu_rate peak vs_blas maxrss err
printf "#${row_fmt# }" "" "" "" "" "" "" s GFLOP/s GFLOP/s % x MiB rel
echo "date,cpu,cores,threads,engine_rev,method,n,d,h,hkv,causal,seconds,gflops,pct_peak,ratio_vs_blas,maxrss_mib,err,peak_gflops,cpu_gflops" > "$CSV"
printf '%s' "$ROWS" | while read -r cfg line; do
  set -- $(echo "$cfg" | tr ':' ' ')
  blas_g=$(field "$(printf '%s' "$ROWS" | grep "^$cfg .*method=blas")" gflops)
  m=$(field "$line" method); g=$(field "$line" gflops)
  pct=$(awk -v g="$g" -v p="$PEAK" 'BEGIN{printf "%.1f", 100*g/p}')
  ratio=$(awk -v g="$g" -v b="$blas_g" 'BEGIN{printf "%.2f", g/b}')
  printf "$row_fmt" "$m" "$1" "$2" "$3" "$4" "$5" "$(field "$line" seconds)" "$g" \
    "$(field "$line" cpu_gflops)" "$pct" "$ratio" \
    "$(field "$line" maxrss_mib)" "$(field "$line" err)"
  echo "$DATE,$MODEL,$(nproc),$THREADS,$REV,$m,$1,$2,$3,$4,$5,$(field "$line" seconds),$g,$pct,$ratio,$(field "$line" maxrss_mib),$(field "$line" err),$PEAK,$(field "$line" cpu_gflops)" >> "$CSV"
done
echo "# wrote $CSV"

fi
# ---- whole job through ./fa_long on 1, 2, 4 ranks (same cores split between ranks) -------------
# Ranks x threads = cores (4 ranks on 2 cores oversubscribe, 1 thread each). --bind-to none: Open
# MPI binds a rank to one core by default, which would fold a rank's threads onto that core.
FA=${FA_LONG:-./fa_long}
[ -x "$FA" ] || { echo "# $FA not built: multi-rank section skipped"; exit 0; }
JOB_N=${JOB_N:-16K}; JOB_H=${JOB_H:-2}; JOB_D=${JOB_D:-64}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
"$FA" gen -o "$TMP/in.h5" -n "$JOB_N" --heads "$JOB_H" -d "$JOB_D" -f >/dev/null 2>&1
MPIRUN="mpirun --oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
JCSV=bench/results/cpu_${SLUG}_job.csv
echo "date,cpu,cores,engine_rev,ranks,threads_per_rank,n,h,d,causal,elapsed_s,gflops,compute_s_max,merge_wait_s_max,maxrss_mib_per_rank" > "$JCSV"
echo "# fa_long job: N=$JOB_N H=$JOB_H D=$JOB_D, float32 input, cpu backend, best of $((REPS * ROUNDS))"
jfmt=' %-6s %7s %6s %9s %9s %9s %10s %9s\n'
printf "#${jfmt# }" ranks threads causal time rate compute merge_wait maxrss
printf "#${jfmt# }" "" "/rank" "" s GFLOP/s "s(max)" "s(max)" "MiB/rank"
jnum() { sed -n "s/^ *\"$2\": *\([0-9.e+-]*\).*/\1/p" "$1" | head -1; }
jmax() { sed -n "s/.*\"$2\": *\([0-9.e+-]*\).*/\1/p" "$1" | sort -g | tail -1; }
for causal in 0 1; do
  cflag=""; [ "$causal" = 1 ] && cflag="--causal"
  for np in 1 2 4; do
    t=$(( $(nproc) / np )); [ "$t" -lt 1 ] && t=1
    best=""
    for r in $(seq $((REPS * ROUNDS))); do
      OMP_NUM_THREADS=$t $MPIRUN -np "$np" "$FA" -i "$TMP/in.h5" -o "$TMP/out.h5" -f -q $cflag \
        --threads "$t" --report "$TMP/r.json" >/dev/null 2>&1 || { echo "# fa_long failed on $np ranks"; break; }
      e=$(jnum "$TMP/r.json" elapsed_s)
      if [ -z "$best" ] || awk -v a="$e" -v b="$best" 'BEGIN{exit !(a < b)}'; then
        best=$e; cp "$TMP/r.json" "$TMP/best.json"
      fi
    done
    [ -n "$best" ] || continue
    g=$(awk -v t="$(jnum "$TMP/best.json" tflops)" 'BEGIN{printf "%.2f", t*1000}')
    cmax=$(jmax "$TMP/best.json" compute_s); wmax=$(jmax "$TMP/best.json" merge_wait_s)
    rss=$(jmax "$TMP/best.json" maxrss_mib)
    printf "$jfmt" "$np" "$t" "$causal" "$(printf %.4f "$best")" "$g" "$(printf %.4f "$cmax")" \
      "$(printf %.4f "$wmax")" "$(printf %.1f "$rss")"
    echo "$DATE,$MODEL,$(nproc),$REV,$np,$t,$JOB_N,$JOB_H,$JOB_D,$causal,$best,$g,$cmax,$wmax,$rss" >> "$JCSV"
  done
done
echo "# wrote $JCSV"
