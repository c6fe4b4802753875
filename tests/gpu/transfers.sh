#!/bin/bash
# tests/gpu/transfers.sh — what crosses the host link and when (issue 22 items 3 and 4), on a
# machine with a GPU (tests/gpu/run.sh calls it):
#   - typed transfers: bf16 and fp16 files go to the device as they are stored and o comes back
#     in its file type: the report's host-to-device bytes equal the file's q, k, v bytes and its
#     device-to-host bytes o's bytes plus lse's (resident keys), and the output is bit for bit
#     the one of FA_TYPED_TRANSFERS=0 (widened on the host, as before): the device's rounding is
#     the host's
#   - streamed keys: keys read in blocks (FA_KEY_READ_ROWS) and the first chunk computed on the
#     blocks already there: the report says the first chunk started before the last block was
#     read, and the output is bit for bit the one of FA_STREAM_KEYS=0 (the same kernel pieces),
#     resident and paged (--device-mem), under a window mask, and with 2 ranks sharing the GPU
#   - keys through a ring (FA_KEY_RING, default 3): streamed keys read into a ring of 3 blocks
#     the engine copies out, not a shard of every key: the report says so (blocks read through
#     it, host memory saved), and the output is bit for bit the one of FA_KEY_RING=0 (a shard),
#     resident and paged, and with 2 ranks on zigzag shards (pieces that straddle two blocks)
#   - a NaN in the last key block: one line naming v, exit 2, no output (the ring's reads stop)
#   - fa_long check passes on every output.
set -uo pipefail
cd "$(dirname "$0")/../.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
R=""; [ "$(id -u)" = 0 ] && R="--allow-run-as-root"
MPI="mpirun $R --oversubscribe --bind-to none"
export NCCL_NVLS_ENABLE=0
fail=0

same() {   # same A B LABEL: o and lse bit for bit
    python3 - "$1" "$2" "$3" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
oa, ob = a["o"][...], b["o"][...]
la, lb = a["lse"][...], b["lse"][...]
ok = oa.dtype == ob.dtype and np.array_equal(oa.view(np.uint8), ob.view(np.uint8)) and \
     np.array_equal(la.view(np.uint8), lb.view(np.uint8))
n = int((oa.view(np.uint8) != ob.view(np.uint8)).sum()) if oa.shape == ob.shape else -1
print(f"  {sys.argv[3]}: {'bit-identical' if ok else f'DIFFER ({n} bytes of o)'}")
sys.exit(0 if ok else 1)
PY
}

bytes_ok() {   # bytes_ok REPORT IN.h5 LABEL: h2d = the file's q, k, v bytes; d2h = o + lse
    python3 - "$1" "$2" "$3" <<'PY'
import sys, json, h5py
r = json.load(open(sys.argv[1]))
with h5py.File(sys.argv[2], "r") as f:
    # the stored element size (h5py reads fa_long's bfloat16 type back as float32)
    file_bytes = sum(f[n].size * f[n].id.get_type().get_size() for n in ("q", "k", "v"))
    B, Nq, H, D = f["q"].shape
    esize = f["q"].id.get_type().get_size()   # o is written in q's type
h2d, d2h = r["bytes"]["host_to_device"], r["bytes"]["device_to_host"]
want_d2h = B * Nq * H * (D * esize + 4)
ok = h2d == file_bytes and d2h == want_d2h and r["plan"]["typed_transfers"]["value"] == 1
print(f"  {sys.argv[3]}: host to device {h2d:.0f} bytes, file q/k/v {file_bytes} bytes; device to "
      f"host {d2h:.0f}, o + lse {want_d2h}  {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
}

lead_ok() {   # lead_ok REPORT BLOCKS LABEL: streamed in BLOCKS blocks, compute before the last
    python3 - "$1" "$2" "$3" <<'PY'
import sys, json
r = json.load(open(sys.argv[1]))
k = r["keys"]
ok = k["streamed"] and k["blocks"] == int(sys.argv[2]) and k["first_compute_lead_s"] > 0
print(f"  {sys.argv[3]}: keys streamed in {k['blocks']} blocks, the first chunk started "
      f"{k['first_compute_lead_s'] * 1e3:.1f} ms before the last block was read  {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
}

ring_ok() {   # ring_ok REPORT BLOCKS LABEL: BLOCKS blocks read through a ring of 3
    python3 - "$1" "$2" "$3" <<'PY'
import sys, json
r = json.load(open(sys.argv[1]))
k = r["keys"]
ok = k["into"] == "ring" and k["ring_blocks"] == 3 and k["ring_reads"] == int(sys.argv[2]) and \
     k["ring_bytes_read"] == k["shard_bytes"] and k["host_bytes_saved"] == k["shard_bytes"] - k["ring_bytes"] > 0
print(f"  {sys.argv[3]}: {k['ring_reads']} blocks through a ring of {k['ring_blocks']} ({k['ring_bytes'] / 1e6:.1f} MB) "
      f"instead of a {k['shard_bytes'] / 1e6:.1f} MB shard  {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
}

run() {   # run LABEL ENV... -- ARGS...: ./fa_long with env settings; failure noted
    local label=$1; shift
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    env "${envs[@]}" ./fa_long "$@" -f -q || { echo "FAIL: $label (rc $?)"; fail=1; return 1; }
}

check() {   # check IN OUT LABEL [ARGS]
    ./fa_long check -i "$1" -o "$2" --rows 48 > "$T/chk.txt" 2>&1 && grep -q PASS "$T/chk.txt" \
        && echo "  $3: fa_long check PASS" || { cat "$T/chk.txt"; echo "FAIL: check $3"; fail=1; }
}

# 24K queries over 40K keys (H 16, Hkv 4, D 128): keys in 10 blocks of 4096 rows (NQ, NK,
# ROWS, BACKEND=cpu with FA_STREAM_KEYS=1 try the script itself on a machine without a GPU)
NQ=${NQ:-24000} NK=${NK:-40000} ROWS=${ROWS:-4096} BACKEND=${BACKEND:-cuda}
NBLK=$(( (NK + ROWS - 1) / ROWS ))
for dt in bfloat16 float16; do
    echo "== $dt file, 1 rank"
    ./fa_long gen -o "$T/in_$dt.h5" --nq $NQ --nk $NK --heads 16 --kv-heads 4 -d 128 --dtype $dt --seed $$ -f >/dev/null || exit 1
    IN=$T/in_$dt.h5
    for causal in "" "--causal"; do
        tag=${causal:-full}
        run "$dt $tag streamed" FA_KEY_READ_ROWS=$ROWS -- -i "$IN" -o "$T/s.h5" --backend $BACKEND --lse $causal --report "$T/s.json" || continue
        run "$dt $tag keys whole" FA_KEY_READ_ROWS=$ROWS FA_STREAM_KEYS=0 -- -i "$IN" -o "$T/w.h5" --backend $BACKEND --lse $causal || continue
        run "$dt $tag streamed into a shard" FA_KEY_READ_ROWS=$ROWS FA_KEY_RING=0 -- -i "$IN" -o "$T/k.h5" --backend $BACKEND --lse $causal || continue
        run "$dt $tag widened on the host" FA_KEY_READ_ROWS=$ROWS FA_TYPED_TRANSFERS=0 -- -i "$IN" -o "$T/u.h5" --backend $BACKEND --lse $causal || continue
        bytes_ok "$T/s.json" "$IN" "$dt $tag typed transfers" || fail=1
        lead_ok "$T/s.json" $NBLK "$dt $tag" || fail=1
        ring_ok "$T/s.json" $NBLK "$dt $tag" || fail=1
        same "$T/s.h5" "$T/w.h5" "$dt $tag streamed vs keys whole" || fail=1
        same "$T/s.h5" "$T/k.h5" "$dt $tag ring vs shard" || fail=1
        same "$T/s.h5" "$T/u.h5" "$dt $tag typed vs widened on the host" || fail=1
        check "$IN" "$T/s.h5" "$dt $tag"
    done
done

IN=$T/in_bfloat16.h5
echo "== paged keys (--device-mem), streamed vs whole"
run "paged streamed" FA_KEY_READ_ROWS=$ROWS -- -i "$IN" -o "$T/ps.h5" --backend $BACKEND --lse --causal --chunk $((NQ / 24)) --merges-in-flight 3 --device-mem 200M --report "$T/ps.json" \
    && run "paged whole" FA_KEY_READ_ROWS=$ROWS FA_STREAM_KEYS=0 -- -i "$IN" -o "$T/pw.h5" --backend $BACKEND --lse --causal --chunk $((NQ / 24)) --merges-in-flight 3 --device-mem 200M \
    && { python3 -c "import json,sys; r=json.load(open('$T/ps.json')); p=r['plan']['keys_paged_rank0']['value']; print(f'  paged keys on rank 0: {p}'); sys.exit(0 if p > 0 else 1)" || { echo "FAIL: nothing paged under the budget"; fail=1; }; \
         same "$T/ps.h5" "$T/pw.h5" "paged: streamed vs keys whole" || fail=1; check "$IN" "$T/ps.h5" "paged"; \
         ring_ok "$T/ps.json" $NBLK "paged" || fail=1; }
run "paged streamed into a shard" FA_KEY_READ_ROWS=$ROWS FA_KEY_RING=0 -- -i "$IN" -o "$T/pk.h5" --backend $BACKEND --lse --causal --chunk $((NQ / 24)) --merges-in-flight 3 --device-mem 200M \
    && { same "$T/ps.h5" "$T/pk.h5" "paged: ring vs shard" || fail=1; }

echo "== window mask, streamed vs whole"
run "window streamed" FA_KEY_READ_ROWS=$ROWS -- -i "$IN" -o "$T/ws.h5" --backend $BACKEND --lse --window-size 3000,0 \
    && run "window whole" FA_KEY_READ_ROWS=$ROWS FA_STREAM_KEYS=0 -- -i "$IN" -o "$T/ww.h5" --backend $BACKEND --lse --window-size 3000,0 \
    && { same "$T/ws.h5" "$T/ww.h5" "window: streamed vs keys whole" || fail=1; check "$IN" "$T/ws.h5" "window"; }

echo "== 2 ranks sharing the GPU (MPI merge), streamed vs whole"
FA_KEY_READ_ROWS=$ROWS $MPI -np 2 -x FA_KEY_READ_ROWS ./fa_long -i "$IN" -o "$T/r2s.h5" --backend $BACKEND --lse --causal -f -q \
    && FA_KEY_READ_ROWS=$ROWS FA_STREAM_KEYS=0 $MPI -np 2 -x FA_KEY_READ_ROWS -x FA_STREAM_KEYS ./fa_long -i "$IN" -o "$T/r2w.h5" --backend $BACKEND --lse --causal -f -q \
    && { same "$T/r2s.h5" "$T/r2w.h5" "2 ranks: streamed vs keys whole" || fail=1; check "$IN" "$T/r2s.h5" "2 ranks"; } \
    || { echo "FAIL: 2-rank runs"; fail=1; }
# zigzag shards (2 runs a rank of NK/4 keys): resident pieces of ROWS rows from each run's start
# straddle the read blocks, which count the rank's rows; a ring of 3 against the shard
FA_KEY_READ_ROWS=$ROWS FA_KEY_RING=0 $MPI -np 2 -x FA_KEY_READ_ROWS -x FA_KEY_RING ./fa_long -i "$IN" -o "$T/r2k.h5" --backend $BACKEND --lse --causal -f -q \
    && { same "$T/r2s.h5" "$T/r2k.h5" "2 ranks, zigzag: ring vs shard" || fail=1; } \
    || { echo "FAIL: 2-rank runs into a shard"; fail=1; }

echo "== a NaN in the last key block, read into the ring while the first chunk computes"
python3 - "$T/in_float16.h5" "$T/nan.h5" <<'PY'
import shutil, sys, h5py, numpy as np
shutil.copy(sys.argv[1], sys.argv[2])
with h5py.File(sys.argv[2], "a") as f:
    f["v"][0, f["v"].shape[1] - 5, 0, 3] = np.nan
PY
FA_KEY_READ_ROWS=$ROWS ./fa_long -i "$T/nan.h5" -o "$T/nan_out.h5" --backend $BACKEND -f 2> "$T/nan.txt"
rc=$?
lines=$(grep -c '^fa_long:' "$T/nan.txt")
if [ $rc = 2 ] && [ "$lines" = 1 ] && grep -q "'v'" "$T/nan.txt" && [ ! -e "$T/nan_out.h5" ]; then
    echo "  NaN in a late block: exit 2, one line: $(grep '^fa_long:' "$T/nan.txt")"
else
    cat "$T/nan.txt"; echo "FAIL: NaN in a late key block (rc $rc, $lines lines)"; fail=1
fi

[ $fail = 0 ] && echo "tests/gpu/transfers.sh: all passed" || echo "tests/gpu/transfers.sh: FAILURES"
exit $fail
