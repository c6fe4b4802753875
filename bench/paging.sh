#!/bin/sh
# paging.sh — fa_long's GPU job from HDF5 to HDF5 on one GPU, keys resident or paged (issue 4).
#
#   sh bench/paging.sh [N]      (default N = 262144; run on a GPU machine; builds with make)
#
# For N queries and keys, H = 32, Hkv = 8, D = 128, bf16 file, causal and not:
#   1. resident: the whole job, time split into read / compute / merge (device comm time) /
#      write (the slowest rank's, from --report), TFLOP/s of the compute phase next to the kernel's own figure at
#      256K from bench/results/kernel_<card>.csv (same card, an earlier run: say so)
#   2. --device-mem at 1/8 of the keys' bytes (plus the chunk buffers and the ring): compute time
#      against the resident run's, bytes paged, link GB/s of the paging copies; the output must
#      match the resident one (o within one bf16 ulp at the output's scale, 8e-3: the file's o is
#      bf16, so fp32 rounding-level differences can flip its last bit)
#   3. keys past the budget at 4M: Nk = 4M, Nq = 4096, --device-mem 8G for 16 GB of keys; check
# Rows go to bench/results/paging_<card>.csv
#   n,heads,kv_heads,d,causal,budget_bytes,compute_s,resident_compute_s,paged_bytes,link_gbps
# and the full reports to bench/results/paging_<card>_*.json. The table is printed last.
# SKIP_BIG=1: not the 4M job; ONLY_BIG=1: only the 4M job.
set -eu
cd "$(dirname "$0")/.."
N=${1:-262144}
H=32; HKV=8; D=128; CHUNK=8192; SLOTS=3
T=${TMPDIR:-/tmp}/fa_paging.$$
mkdir -p "$T"
trap 'rm -rf "$T"' EXIT
make -j"$(nproc)" >/dev/null
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | sed 's/NVIDIA //; s/ .*//' | tr 'A-Z' 'a-z')
RES=bench/results
CSV=$RES/paging_$CARD.csv
DATE=$(date -u +%Y-%m-%dT%H:%MZ)
export OMP_NUM_THREADS=$(nproc)

if [ "${ONLY_BIG:-0}" != 1 ]; then
./fa_long gen -o "$T/in.h5" -n "$N" --heads $H --kv-heads $HKV -d $D --dtype bfloat16 --seed 7 -f
# budget = the chunk buffers + a ring of three 32K-key blocks + 1/8 of the keys' bytes
PER_KEY=$((2 * HKV * D * 2))
FIXED=$((SLOTS * CHUNK * H * (D * 2 + (D + 2) * 4 + 4 + D * 4 + 4) + CHUNK * H * D * 4 + 67108864))
RING=$((3 * 32768 * PER_KEY))
BUDGET=$((FIXED + RING + N * PER_KEY / 8))

echo "n,heads,kv_heads,d,causal,budget_bytes,compute_s,resident_compute_s,paged_bytes,link_gbps" > "$T/rows.csv"
for causal in 0 1; do
    c=""; [ $causal = 1 ] && c="--causal"
    ./fa_long -i "$T/in.h5" -o "$T/res.h5" $c --lse --chunk $CHUNK -f --report "$RES/paging_${CARD}_res_c$causal.json"
    ./fa_long -i "$T/in.h5" -o "$T/pg.h5" $c --lse --chunk $CHUNK -f --device-mem $BUDGET \
        --report "$RES/paging_${CARD}_pg_c$causal.json"
    python3 - "$T/res.h5" "$T/pg.h5" "$RES/paging_${CARD}_res_c$causal.json" "$RES/paging_${CARD}_pg_c$causal.json" \
        $N $H $HKV $D $causal $BUDGET >> "$T/rows.csv" <<'PY'
import sys, json, h5py, numpy as np
def o_f32(path):
    """o as float32; a bfloat16 o is read as its bit patterns (HDF5's own conversion of that
    type is a generic soft conversion, minutes at this size) and widened here."""
    d = h5py.File(path, "r")["o"]
    t = d.id.get_type()
    if t.get_class() == h5py.h5t.FLOAT and t.get_size() == 2 and t.get_fields()[4] == 7:
        bits = np.empty(d.shape, np.uint16)
        d.id.read(h5py.h5s.ALL, h5py.h5s.ALL, bits, mtype=t)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return d[...].astype(np.float32)
oa, ob = o_f32(sys.argv[1]), o_f32(sys.argv[2])
err = float(np.abs(oa - ob).max() / np.abs(oa).max())
assert err <= 8e-3 and np.isfinite(ob).all(), f"paged output differs: {err}"
r, p = (json.load(open(f)) for f in sys.argv[3:5])
n, h, hkv, d, causal, budget = sys.argv[5:11]
print(f"{n},{h},{hkv},{d},{causal},{budget},{p['phases_s']['compute']:.4f},{r['phases_s']['compute']:.4f},"
      f"{p['bytes']['paged']:.0f},{p['paging']['link_gbps']:.2f}")
print(f"paged vs resident: max |o diff| {err:.2e} of scale", file=sys.stderr)
PY
done
cp "$T/rows.csv" "$CSV"

KERNEL=$(awk -F, '$1 == 262144 && $3 == 128 {printf "%s%s=%s", sep, ($4 ? "causal" : "full"), $5; sep=" "}' "$RES/kernel_$CARD.csv" 2>/dev/null || true)
python3 - "$RES" "$CARD" "$DATE" "$KERNEL" <<'PY'
import json, sys
res, card, date, kernel = sys.argv[1:5]
print(f"\n# fa_long GPU job, {card}, {date}: N=262144 (or as given), H=32, Hkv=8, D=128, bf16 file, 1 rank")
print(f"# kernel's own figure at 256K (bench/results/kernel_{card}.csv, an earlier run): {kernel or 'n/a'} TFLOP/s")
print(f"{'job':<22}{'setup s':>8}{'read s':>8}{'(keys)':>8}{'compute s':>10}{'merge s':>9}{'final s':>8}{'write s':>9}{'total s':>9}{'compute TF/s':>13}{'paged GB':>10}{'link GB/s':>10}")
for c in (0, 1):
    for kind in ("res", "pg"):
        r = json.load(open(f"{res}/paging_{card}_{kind}_c{c}.json"))
        ph = r["phases_s"]
        print(f"{('causal ' if c else 'full ') + ('resident' if kind == 'res' else 'paged 1/8'):<22}{ph.get('setup', 0):8.2f}"
              f"{ph['read']:8.2f}{ph.get('read_kv', 0):8.2f}{ph['compute']:10.2f}"
              f"{r['merge']['comm_s']:9.2f}{ph.get('finalize', 0):8.2f}{ph['write']:9.2f}{r['elapsed_s']:9.2f}{r['compute_tflops']:13.1f}"
              f"{r['bytes']['paged'] / 1e9:10.2f}{r['paging']['link_gbps']:10.1f}")
    a = json.load(open(f"{res}/paging_{card}_res_c{c}.json"))["phases_s"]["compute"]
    b = json.load(open(f"{res}/paging_{card}_pg_c{c}.json"))["phases_s"]["compute"]
    print(f"{'':<22}paged/resident compute time: {b / a:.3f}")
PY
fi
[ "${SKIP_BIG:-0}" = 1 ] && exit 0
# keys past the budget: 4M keys (16 GB in bf16) under an 8 GiB budget, 4096 queries
./fa_long gen -o "$T/big.h5" --nq 4096 --nk 4M --heads $H --kv-heads $HKV -d $D --dtype bfloat16 --seed 9 -f
rm -f "$T/in.h5"
./fa_long -i "$T/big.h5" -o "$T/big_out.h5" --causal --lse -f --device-mem 8G --report "$RES/paging_${CARD}_4M.json"
./fa_long check -i "$T/big.h5" -o "$T/big_out.h5" --rows 4 | tee "$RES/paging_${CARD}_4M_check.txt"

python3 - "$RES/paging_${CARD}_4M.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ph = r["phases_s"]
print(f"4M keys, 8 GiB budget: total {r['elapsed_s']:.1f} s (read {ph['read']:.1f}, of which keys {ph.get('read_kv', 0):.1f}), "
      f"compute {ph['compute']:.2f} s, {r['compute_tflops']:.1f} TF/s, paged {r['bytes']['paged'] / 1e9:.1f} GB at "
      f"{r['paging']['link_gbps']:.1f} GB/s")
PY
