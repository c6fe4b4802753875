#!/bin/bash
# check_rows.sh — `fa_long check --rows all` (issue 27 item 7): the fp64 recomputation of every
# row of the issue's job (q [1, 6000, 16, 64], k and v [1, 6000, 4, 64], float16, causal), this
# build against BASE_FA (the previous revision's binary) alternating, ROUNDS each, wall clock and
# the checks' verdict; a '#'-headed table, rows kept in bench/results/check_rows_<machine>.csv.
#
#   BASE_FA=/path/to/old/fa_long [BASE_REV=1e9b231] [ROUNDS=2] bash bench/check_rows.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FA=${FA_LONG:-./fa_long}; BASE_FA=${BASE_FA:?BASE_FA: the fa_long of the previous revision}
BASE_REV=${BASE_REV:-base}; ROUNDS=${ROUNDS:-2}
if [ -z "${MACHINE:-}" ]; then MACHINE="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')_$(nproc)c"; fi
SLUG=$(printf '%s' "$MACHINE" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')
CSV=bench/results/check_rows_$SLUG.csv
REV=${REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
"$FA" gen -o "$TMP/in.h5" --nq 6000 --nk 6000 --heads 16 --kv-heads 4 -d 64 --dtype float16 -f > /dev/null
"$FA" -i "$TMP/in.h5" -o "$TMP/out.h5" --causal --lse -f -q --backend cpu
[ -f "$CSV" ] || echo "machine,date,rev,binary,threads,round,check_all_s,verdict" > "$CSV"
echo "# fa_long check --rows all  $DATE  $MACHINE  rev $REV  against $BASE_REV (same run, alternating)"
printf '#%-14s %6s %12s  %s\n' binary round check_s verdict
for r in $(seq "$ROUNDS"); do
  for bin in new base; do
    exe=$FA; name=$REV; [ $bin = base ] && exe=$BASE_FA && name=$BASE_REV
    t0=$(date +%s.%N)
    verdict=$("$exe" check -i "$TMP/in.h5" -o "$TMP/out.h5" --rows all | grep -o 'PASS\|FAIL' | tail -1)
    t1=$(date +%s.%N)
    t=$(echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}')
    printf ' %-14s %6d %12s  %s\n' "$name" "$r" "$t" "$verdict"
    echo "$MACHINE,$DATE,$REV,$name,$(nproc),$r,$t,$verdict" >> "$CSV"
  done
done
echo "# wrote $CSV"
