#!/bin/bash
# tests/bitident.sh [BASE_REV] — proves a change of structure left the outputs unchanged: builds
# fa_long at BASE_REV (default: main's first parent, HEAD~1) in a temporary worktree, runs a fixed
# set of jobs with both binaries on the same inputs, and compares o, lse and the attributes that
# record decisions (chunk, shard, backend, compute, mode, causal, scale, ranks, taylor counts)
# bit for bit. Exit 1 on any difference.
#
#   CPU jobs: 1, 2, 3 ranks; causal and not; GQA and MQA; float32 and bfloat16 inputs; Nq != Nk;
#             the default chunk and an explicit one; --shard zigzag; --mode taylor.
#   GPU jobs (when nvidia-smi sees a GPU and the build has CUDA): resident, paged (--device-mem),
#             2 ranks sharing the GPU, Taylor on CUDA.
# Both binaries run with the same environment: OMP_NUM_THREADS=2, an empty tune cache, the same
# FA_* variables (none), so any difference is the change's.
#
#   bash tests/bitident.sh 926b06d            # against the revision before the change
#   bash tests/bitident.sh base.tar           # against `git archive REV` (a copy without .git,
#                                             # such as a lent GPU machine's)
#   KEEP=1 bash tests/bitident.sh             # keep the temporary folder
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-HEAD~1}
T=$(mktemp -d)
[ "${KEEP:-0}" = 1 ] || trap 'git worktree remove --force "$T/base" >/dev/null 2>&1 || true; rm -rf "$T"' EXIT
echo "== building $BASE in $T/base"
if [ -f "$BASE" ]; then
  mkdir -p "$T/base" && tar -xf "$BASE" -C "$T/base"
else
  git worktree add -q --detach "$T/base" "$BASE"
fi
make -C "$T/base" -j"$(nproc)" fa_long > "$T/base_build.log" 2>&1 || { tail -20 "$T/base_build.log"; exit 1; }
make -j"$(nproc)" fa_long > "$T/new_build.log" 2>&1 || { tail -20 "$T/new_build.log"; exit 1; }
OLD=$T/base/fa_long
NEW=./fa_long
export OMP_NUM_THREADS=2 FA_TUNE_CACHE=$T/no_tune_cache.txt   # none: the model decides, silently
PY=/usr/bin/python3
$PY -c 'import h5py, numpy' 2>/dev/null || PY=python3          # a GPU node's python may be elsewhere
R=""; [ "$(id -u)" = 0 ] && R="--allow-run-as-root"
MPI="mpirun $R --oversubscribe --bind-to none -x OMP_NUM_THREADS -x FA_TUNE_CACHE"

$NEW gen -o "$T/a.h5" -b 2 --nq 301 --nk 419 --heads 6 --kv-heads 2 -d 40 --seed 11 -f >/dev/null
$NEW gen -o "$T/b.h5" -n 1000 --heads 4 --kv-heads 1 -d 64 --dtype bfloat16 --seed 12 -f >/dev/null
$NEW gen -o "$T/c.h5" --nq 700 --nk 257 --heads 8 --kv-heads 8 -d 128 --seed 13 -f >/dev/null

C="--backend cpu"
JOBS=(
  "1|a|$C"
  "1|a|$C --causal --lse"
  "2|a|$C --causal --lse"
  "3|a|$C --lse"
  "3|a|$C --causal --lse --chunk 77"
  "2|b|$C --causal --lse --shard zigzag"
  "3|b|$C --causal"
  "1|c|$C --causal --lse"
  "2|c|$C --lse --chunk 100"
  "1|a|$C --mode taylor --causal --lse"
  "3|a|$C --mode taylor --lse"
  "2|b|$C --mode taylor --causal"
)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && $NEW --version | grep -q 'CUDA: yes'; then
  JOBS+=(
    "1|b|--backend cuda --causal --lse"
    "1|c|--backend cuda --lse"
    "1|b|--backend cuda --causal --lse --device-mem 160M"
    "2|b|--backend cuda --causal --lse"
    "2|c|--backend cuda --lse --chunk 256"
    "1|a|--backend cuda --mode taylor --causal --lse"
  )
else
  JOBS+=("1|b|--causal --lse")          # --backend auto: the CPU here
fi

compare() {   # A B LABEL
  $PY - "$1" "$2" "$3" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
bad = []
for name in ("o", "lse"):
    if (name in a) != (name in b):
        bad.append(f"{name} present in one only")
    elif name in a:
        x, y = a[name][...], b[name][...]
        if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
            n = int((x.view(np.uint8) != y.view(np.uint8)).sum()) if x.shape == y.shape and x.dtype == y.dtype else -1
            bad.append(f"{name} differs ({n} bytes)")
keys = ("chunk", "shard", "backend", "compute", "mode", "causal", "scale", "ranks",
        "taylor_fallback_rows", "taylor_zeroed_rows", "chunks_done")
for k in keys:
    va, vb = a.attrs.get(k), b.attrs.get(k)
    if (va is None) != (vb is None) or (va is not None and np.asarray(va).tolist() != np.asarray(vb).tolist()):
        bad.append(f"attribute {k}: {va!r} vs {vb!r}")
print(f"{'same' if not bad else 'DIFFERENT'}  {sys.argv[3]}" + ("" if not bad else ": " + "; ".join(bad)))
sys.exit(1 if bad else 0)
PY
}

fail=0
i=0
for j in "${JOBS[@]}"; do
  IFS='|' read -r np inp args <<< "$j"
  i=$((i + 1))
  for who in old new; do
    bin=$OLD; [ $who = new ] && bin=$NEW
    # shellcheck disable=SC2086
    $MPI -np "$np" "$bin" --input "$T/$inp.h5" --output "$T/$i.$who.h5" $args --force --quiet \
      > "$T/$i.$who.log" 2>&1 || { echo "FAIL  job $i ($who): $np ranks $inp $args"; cat "$T/$i.$who.log"; fail=1; continue 2; }
  done
  compare "$T/$i.old.h5" "$T/$i.new.h5" "job $i: $np rank(s), input $inp, $args" || fail=1
done
[ $fail = 0 ] && echo "tests/bitident.sh: all ${#JOBS[@]} jobs bit-identical to $BASE" \
              || echo "tests/bitident.sh: DIFFERENCES against $BASE"
exit $fail
