#!/bin/bash
# read_rate.sh — fa_long's key reads against the host's own rate from the page cache (issue 22
# item 6: at least 70% of a plain multi-threaded memcpy). A decode-shaped bfloat16 file (16
# queries, NK keys, H 32, Hkv 8, D 128) is made, read once into the page cache, then in the same
# run: build/bench/page_cache_read (memcpy from a mapping of the file, and pread in 4 MiB runs,
# best of 3; run before and after the rest, the better kept) and build/bench/read_rate (k and v
# read by h5in as the pipeline reads keys, the finite check on, kept as bfloat16 and widened to
# float32, fused and with FA_FUSED_READ's separate passes, validated equal first, best of REPS;
# zlib crc32's rate on one thread, and fa_crc32's: libdeflate's where the machine has it). A '#'-headed table; rows appended to
# bench/results/read_rate_<machine>.csv.
#
#   [NK=262144] [REPS=5] [OMP_NUM_THREADS=...] [MACHINE=name] bash bench/read_rate.sh
# NK=262144 makes 1.07 GB of k and v; on a 16-core GPU host NK=1048576 is the decode job of issue 22.
set -euo pipefail
cd "$(dirname "$0")/.."
NK=${NK:-262144}; REPS=${REPS:-5}
THREADS=${OMP_NUM_THREADS:-$(nproc)}
export OMP_NUM_THREADS=$THREADS
if [ -z "${MACHINE:-}" ]; then MACHINE="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: *//')_$(env -u OMP_NUM_THREADS nproc)c"; fi
SLUG=$(printf '%s' "$MACHINE" | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\{1,\}/-/g; s/^-//; s/-$//')
CSV=bench/results/read_rate_$SLUG.csv
REV=${REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/read_rate.XXXXXX"); trap 'rm -rf "$TMP"' EXIT
R=""; [ "$(id -u)" = 0 ] && R="--allow-run-as-root"
./fa_long gen -o "$TMP/in.h5" --nq 16 --nk "$NK" --heads 32 --kv-heads 8 -d 128 \
    --dtype bfloat16 --seed 5 -f > /dev/null
# the yardstick before and after fa_long's reads, the better of each kept (a busy machine's
# slow moment does not flatter the ratio)
./build/bench/page_cache_read "$TMP/in.h5" "$THREADS" > "$TMP/pc.txt"
mpirun $R -np 1 --bind-to none -x OMP_NUM_THREADS ./build/bench/read_rate "$TMP/in.h5" "$REPS" > "$TMP/rr.txt"
./build/bench/page_cache_read "$TMP/in.h5" "$THREADS" >> "$TMP/pc.txt"
read -r MEMCPY PREAD < <(awk '!/^#/ {if ($3 > m) m = $3; if ($4 > p) p = $4} END {print m, p}' "$TMP/pc.txt")
GB=$(awk '!/^#/ {print $3; exit}' "$TMP/rr.txt")
CRC=$(sed -n 's/^# zlib crc32 .*: \([0-9.]*\) GB\/s$/\1/p' "$TMP/rr.txt")
FCRC=$(sed -n 's/^# fa_crc32 .*: \([0-9.]*\) GB\/s$/\1/p' "$TMP/rr.txt")
FIMPL=$(sed -n 's/^# fa_crc32 (\([a-z]*\)).*/\1/p' "$TMP/rr.txt")
rate() { awk -v a="$1" -v p="$2" '!/^#/ && $1 == a && $2 == p {print $5}' "$TMP/rr.txt"; }
[ -f "$CSV" ] || echo "machine,date,rev,threads,nk,kv_gb,as,fused_gbps,separate_gbps,memcpy_gbps,pread_gbps,fused_over_memcpy,separate_over_memcpy,crc32_gbps_one_thread,crc32_impl,fa_crc32_gbps_one_thread,fused_fresh_gbps" > "$CSV"
head -1 "$CSV" | grep -q crc32_impl || sed -i '1s/$/,crc32_impl,fa_crc32_gbps_one_thread/' "$CSV"   # rows before: zlib
head -1 "$CSV" | grep -q fused_fresh || sed -i '1s/$/,fused_fresh_gbps/' "$CSV"   # rows before: not measured
echo "# fa_long key reads from the page cache  $DATE  $MACHINE  rev $REV  $THREADS threads"
echo "# bfloat16 k and v of 16 queries x $NK keys (H 32, Hkv 8, D 128): $GB GB; memcpy and pread of the whole file in the same run"
grep '^#' "$TMP/rr.txt" | head -3
printf '#%-9s %12s %14s %12s %11s %13s %15s\n' as fused_GB/s separate_GB/s memcpy_GB/s pread_GB/s fused/memcpy separate/memcpy
for as in bfloat16 float32; do
  F=$(rate $as fused); S=$(rate $as separate)
  RF=$(awk -v a="$F" -v b="$MEMCPY" 'BEGIN {printf "%.3f", a / b}')
  RS=$(awk -v a="$S" -v b="$MEMCPY" 'BEGIN {printf "%.3f", a / b}')
  printf ' %-9s %12s %14s %12s %11s %13s %15s\n' $as "$F" "$S" "$MEMCPY" "$PREAD" "$RF" "$RS"
  FR=""; [ $as = bfloat16 ] && FR=$(rate $as fresh)
  echo "$MACHINE,$DATE,$REV,$THREADS,$NK,$GB,$as,$F,$S,$MEMCPY,$PREAD,$RF,$RS,$CRC,$FIMPL,$FCRC,$FR" >> "$CSV"
done
FR=$(rate bfloat16 fresh)
echo "# bfloat16 fused into a destination allocated fresh each time (as the pipeline's key shard; its page faults timed): $FR GB/s, $(awk -v a="$FR" -v b="$MEMCPY" 'BEGIN {printf "%.3f", a / b}') of memcpy"
echo "# float32: widened on the host (the CPU engine's reads; twice the bytes written); bfloat16: kept as stored (the GPU's)"
echo "# wrote $CSV"
