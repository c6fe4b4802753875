#!/bin/sh
# host_io.sh — the host side of a job: reading the keys (HDF5 -> fp32) and writing o, against a
# baseline build of an earlier revision measured in the same run (a GPU job is host-bound when
# these phases outlast the device's compute, so they set its whole-job time).
#
#   sh bench/host_io.sh [BASE_REV]      (default b782d32, the baseline of bench/NOTES_GPU_JOB.md's
#                                        host read/write figures)
#
# Both builds are CPU-only here (USE_CUDA=0; the host code is the same). Two jobs from bf16 files,
# each run REPS times (default 3) per build, alternating, best of REPS, warm page cache:
#   keys:  16 queries x 256K keys x 8 kv heads x D 128 (1 GiB of bf16 keys): phase read_kv
#          (the baseline's report has no read_kv; its read is the same thing here: 16 queries)
#   write: 64K queries x 256 keys x 32 heads x D 128 (512 MiB of bf16 o): phase write
# -> rows appended to bench/results/host_io_<machine>.csv, and a table.
set -eu
cd "$(dirname "$0")/.."
BASE=${1:-b782d32}
REPS=${REPS:-3}
W=${TMPDIR:-/tmp}/fa_host_io.$$
mkdir -p "$W"
trap 'git worktree remove --force "$W/base" 2>/dev/null || true; rm -rf "$W"' EXIT
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
make -j"$(nproc)" >/dev/null
git worktree add -q --detach "$W/base" "$BASE"
(cd "$W/base" && make -j"$(nproc)" USE_CUDA=0 fa_long >/dev/null)
NEW=$PWD/fa_long OLD=$W/base/fa_long
MACHINE=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')
SLUG=$(echo "$MACHINE" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//' | cut -c1-20)_$(nproc)c
CSV=bench/results/host_io_$SLUG.csv
DATE=$(date -u +%Y-%m-%dT%H:%MZ)
$NEW gen -o "$W/keys.h5" --nq 16 --nk 256K --heads 8 --kv-heads 8 -d 128 --dtype bfloat16 -f >/dev/null
$NEW gen -o "$W/write.h5" --nq 64K --nk 256 --heads 32 --kv-heads 8 -d 128 --dtype bfloat16 -f >/dev/null
# rows are appended run after run (a shared 2-core machine's noise shows between runs)
[ -f "$CSV" ] || echo "date,machine,threads,rev_new,rev_base,job,phase,new_s,base_s,base_over_new" > "$CSV"
for job in keys write; do
    for r in $(seq "$REPS"); do
        for b in new base; do
            BIN=$NEW; [ $b = base ] && BIN=$OLD
            $BIN -i "$W/$job.h5" -o "$W/out.h5" -f -q --backend cpu --chunk 8192 --report "$W/${job}_${b}_$r.json"
        done
    done
done
python3 - "$W" "$REPS" "$CSV" "$DATE" "$MACHINE" "$OMP_NUM_THREADS" "$(git rev-parse --short HEAD)" "$BASE" <<'PY'
import json, sys
w, reps, csv, date, machine, thr, rnew, rbase = sys.argv[1:9]
def best(job, b, phase):
    v = []
    for r in range(1, int(reps) + 1):
        ph = json.load(open(f"{w}/{job}_{b}_{r}.json"))["phases_s"]
        v.append(ph.get(phase, ph["read"] if phase == "read_kv" else None))
    return min(v)
rows = []
for job, phase in (("keys", "read_kv"), ("write", "write")):
    n, o = best(job, "new", phase), best(job, "base", phase)
    rows.append((job, phase, n, o))
with open(csv, "a") as f:
    for job, phase, n, o in rows:
        f.write(f"{date},\"{machine}\",{thr},{rnew},{rbase},{job},{phase},{n:.4f},{o:.4f},{o / n:.2f}\n")
print(f"# host I/O, {machine}, {thr} threads, {date}: this build ({rnew}) vs {rbase}, best of {reps}")
print(f"{'job':<8}{'phase':<10}{'new s':>9}{'base s':>9}{'base/new':>10}")
for job, phase, n, o in rows:
    print(f"{job:<8}{phase:<10}{n:9.3f}{o:9.3f}{o / n:10.2f}")
PY
echo "# table: $CSV"
