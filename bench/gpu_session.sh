#!/bin/sh
# gpu_session.sh — one call on a lent GPU machine: build, then the named steps in order, each under
# its own time limit (cut to what is left of the budget), logs and changed results packed into $OUT (the device tool brings back at
# most 8 files). A step that would start with less than its limit left of the call's budget is
# skipped (said in the summary), so the packing always happens.
#
#   sh bench/gpu_session.sh [--budget SECONDS] STEP...      (default budget 570 s)
#
# Steps: build (make), tests (tests/gpu/run.sh), paging (bench/paging.sh, 256K rows),
#        big (the 4M-key paged job and its check), taylor (bench/taylor.sh --gpu),
#        tune (fa_long tune smoke run, then bench/tune.sh --gpu), gputune (a job that reads the
#        tune cache, with --verbose), scaling (bench/scaling.sh --gpu: multi-GPU kinds),
#        probe (bench/read_probe.sh: where several ranks' host time goes),
#        cmd:'shell words' (any command, 300 s), cmd@SECONDS:'shell words' (its own limit)
# Out: $OUT/summary.txt (one line per step: rc, seconds), $OUT/logs.tgz (every step's log),
#      $OUT/results.tgz (bench/results and tests/gpu logs that changed).
set -u
cd "$(dirname "$0")/.."
BUDGET=570
[ "${1:-}" = "--budget" ] && { BUDGET=$2; shift 2; }
OUT=${OUT:-/tmp/gpu_session_out}
LOGS=/tmp/gpu_session_logs
mkdir -p "$OUT" "$LOGS"
START=$(date +%s)
touch /tmp/gpu_session_start
SUM=$OUT/summary.txt
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader > "$LOGS/device.txt" 2>&1
echo "# $(date -u +%FT%TZ) $(cat "$LOGS/device.txt") rev $(git log -1 --format=%h 2>/dev/null)" > "$SUM"
# OMP_NUM_THREADS is not exported here: each step's script sets its own, and multi-rank jobs
# leave it to fa_long to split the node's CPUs among the ranks

step() {   # name limit command...
    name=$1; lim=$2; shift 2
    now=$(date +%s); left=$((BUDGET - (now - START)))
    # a step given less than its limit runs with what is left (at least half its limit, else it
    # is skipped); steps write their results as they go, so a cut step keeps its finished rows
    if [ "$left" -lt "$lim" ]; then
        if [ $((left - 20)) -lt $((lim / 2)) ]; then
            echo "$name: skipped ($left s left of the budget, needs $lim)" | tee -a "$SUM"
            return
        fi
        lim=$((left - 20))
        echo "$name: limit cut to $lim s (what is left of the budget)" | tee -a "$SUM"
    fi
    t0=$(date +%s)
    timeout "$lim" sh -c "$*" > "$LOGS/$name.log" 2>&1
    rc=$?
    echo "$name: rc $rc, $(( $(date +%s) - t0 )) s" | tee -a "$SUM"
    tail -n 25 "$LOGS/$name.log"
}

for s in "$@"; do
    case "$s" in
    build)   step build 300 "make -j$(nproc)" ;;
    tests)   step tests 480 "sh tests/gpu/run.sh" ;;   # 228 s on the H100 (e503cee); cut at 300 s in racecheck on an H200 (cd71a50)
    paging)  step paging 240 "SKIP_BIG=1 sh bench/paging.sh" ;;
    big)     step big 240 "ONLY_BIG=1 sh bench/paging.sh" ;;
    taylor)  step taylor 240 "sh bench/taylor.sh --gpu" ;;
    tune)    step tune 540 "./fa_long tune --backend cuda -n 8K --heads 32 --kv-heads 8 -d 128 --tune-cache /tmp/t.txt --verbose && cat /tmp/t.txt && sh bench/tune.sh --gpu" ;;
    gputune) step gputune 120 "./fa_long tune --backend cuda -n 256K --heads 32 --kv-heads 8 -d 128 && ./fa_long gen --output /tmp/in.h5 -n 256K --heads 32 --kv-heads 8 -d 128 --dtype bfloat16 -f && ./fa_long --input /tmp/in.h5 --output /tmp/out.h5 -f --backend cuda --verbose --report bench/results/tuned_run_h100.json" ;;
    scaling) step scaling 540 "sh bench/scaling.sh --gpu" ;;
    probe)   step probe 300 "sh bench/read_probe.sh" ;;
    cmd:*)   NCMD=$((${NCMD:-0} + 1)); step cmd$NCMD 300 "${s#cmd:}" ;;
    cmd@*)   NCMD=$((${NCMD:-0} + 1)); lim=${s#cmd@}; lim=${lim%%:*}; step cmd$NCMD "$lim" "${s#cmd@*:}" ;;
    *)       echo "unknown step $s" | tee -a "$SUM" ;;
    esac
done
cp "$SUM" "$LOGS/"
tar czf "$OUT/logs.tgz" -C /tmp gpu_session_logs
find bench/results tests/gpu -type f -newer /tmp/gpu_session_start > /tmp/changed.txt
[ -s /tmp/changed.txt ] && tar czf "$OUT/results.tgz" -T /tmp/changed.txt
echo "# packed: $(wc -l < /tmp/changed.txt) changed result files"
cat "$SUM"
