#!/bin/bash
# startup.sh — what a run costs before any data moves (issue 22 item 2): a tiny job (512 rows,
# H 4, D 64, CPU engine) started alone, under `mpirun -np 1` and `mpirun -np 2` (Open MPI's
# defaults, as users type them), ./fa_long against BASE_FA (the previous revision, built beside)
# alternating, ROUNDS each; the command's wall clock from outside (median and best) and, for
# ./fa_long, the report's MPI_Init time and the transport it chose (whole.mpi_transport). A
# '#'-headed table; rows kept in bench/results/startup_<machine>.csv.
#
#   BASE_FA=/path/to/old/fa_long [BASE_REV=1e9b231] [ROUNDS=7] bash bench/startup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FA=${FA_LONG:-./fa_long}; BASE_FA=${BASE_FA:?BASE_FA: the fa_long of the previous revision}
BASE_REV=${BASE_REV:-base}; ROUNDS=${ROUNDS:-7}
PY=/usr/bin/python3; $PY -c 'import json' 2>/dev/null || PY=python3
if [ -z "${MACHINE:-}" ]; then MACHINE="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')_$(nproc)c"; fi
SLUG=$(printf '%s' "$MACHINE" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')
CSV=bench/results/startup_$SLUG.csv
REV=${REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
R=""; [ "$(id -u)" = 0 ] && R="--allow-run-as-root"
"$FA" gen -o "$TMP/in.h5" -n 512 --heads 4 --kv-heads 2 -d 64 -f > /dev/null
[ -f "$CSV" ] || echo "machine,date,rev,launch,binary,rounds,median_s,best_s,mpi_init_median_s,mpi_transport" > "$CSV"
echo "# fa_long start-up  $DATE  $MACHINE  rev $REV  against $BASE_REV (same run, alternating, $ROUNDS rounds)"
printf '#%-8s %-14s %9s %9s %13s  %s\n' launch binary median_s best_s mpi_init_med transport
for launch in alone mpirun1 mpirun2; do
  case $launch in alone) pre="";; mpirun1) pre="mpirun $R -np 1";; mpirun2) pre="mpirun $R -np 2 --oversubscribe";; esac
  for r in $(seq "$ROUNDS"); do
    for bin in new base; do
      exe=$FA; [ $bin = base ] && exe=$BASE_FA
      t0=$(date +%s.%N)
      env -u OMPI_MCA_pml -u OMPI_MCA_ess_singleton_isolated $pre "$exe" -i "$TMP/in.h5" \
        -o "$TMP/out.h5" -f -q --backend cpu --report "$TMP/$launch.$bin.$r.json"
      t1=$(date +%s.%N)
      echo "$t0 $t1" | awk '{printf "%.6f\n", $2 - $1}' > "$TMP/$launch.$bin.$r.t"
    done
  done
  $PY - "$TMP" "$launch" "$ROUNDS" "$CSV" "$MACHINE,$DATE" "$REV" "$BASE_REV" <<'PY'
import json, statistics, sys
tmp, launch, rounds, csv, prefix, rev, base_rev = sys.argv[1:8]
for bin in ("new", "base"):
    ts = [float(open(f"{tmp}/{launch}.{bin}.{r}.t").read()) for r in range(1, int(rounds) + 1)]
    mi, tr = "", ""
    if bin == "new":
        reps = [json.load(open(f"{tmp}/{launch}.{bin}.{r}.json")) for r in range(1, int(rounds) + 1)]
        mi = "%.4f" % statistics.median(j["whole"]["timeline_s"]["mpi_init"] for j in reps)
        tr = reps[0]["whole"]["mpi_transport"]
    name = rev if bin == "new" else base_rev
    print(" %-8s %-14s %9.3f %9.3f %13s  %s" % (launch, name, statistics.median(ts), min(ts), mi or "-", tr))
    with open(csv, "a") as f:
        f.write(f"{prefix},{rev},{launch},{name},{rounds},{statistics.median(ts):.4f},{min(ts):.4f},{mi},{tr}\n")
PY
done
echo "# wrote $CSV"
