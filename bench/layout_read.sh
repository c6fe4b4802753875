#!/bin/sh
# bench/layout_read.sh — how much slower a bhnd (torch's [B, H, N, D]) input reads than a bnhd
# one: two files of the same values (fa_long gen, gen --layout bhnd), read by
# build/bench/layout_read (every q row in chunks, k and v whole; validated bit-identical first).
#
#   sh bench/layout_read.sh        N=131072 H=8 Hkv=8 D=128 bfloat16 (768 MB a file); N=... smaller
# The files go to TMPDIR (default /tmp) and are removed; the page cache holds them, so this is
# the transposing copy's cost where it shows most (a read from disk hides more of it).
# Out: the table on stdout, appended to bench/results/layout_read_<cpu>_<n>c.txt. REPS (7),
# OMP_NUM_THREADS (2) as set.
set -eu
cd "$(dirname "$0")/.."
N=${N:-131072}; H=${H:-8}; HKV=${HKV:-8}; D=${D:-128}; DTYPE=${DTYPE:-bfloat16}
dir=$(mktemp -d "${TMPDIR:-/tmp}/layout_read.XXXXXX")
trap 'rm -rf "$dir"' EXIT
for l in bnhd bhnd; do
    ./fa_long gen --output "$dir/$l.h5" -n "$N" --heads "$H" --kv-heads "$HKV" -d "$D" \
        --dtype "$DTYPE" --layout "$l" --seed 3
done
cpu=$(sed -n 's/^model name[^:]*: *//p' /proc/cpuinfo | head -1 | tr 'A-Z' 'a-z' |
      sed 's/[^a-z0-9][^a-z0-9]*/-/g; s/^-//; s/-$//' | cut -c1-32)
out=bench/results/layout_read_${cpu}_$(env -u OMP_NUM_THREADS nproc)c.txt   # nproc honours OMP_NUM_THREADS
{ echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) rev $(git rev-parse --short HEAD 2>/dev/null || echo ?) OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} ./build/bench/layout_read "$dir/bnhd.h5" "$dir/bhnd.h5" 1024 "${REPS:-7}"; } | tee -a "$out"
