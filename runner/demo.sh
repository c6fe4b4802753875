#!/bin/sh
# demo.sh — what `make run` runs: a small causal GQA job end to end (generate an input, run it
# across ranks, check sampled rows against fp64). One rank per GPU when GPUs are present
# (--backend auto picks CUDA), else 2 CPU ranks. Files land in build/demo/.
set -e
cd "$(dirname "$0")/.."
DIR=build/demo
mkdir -p "$DIR"
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
NP=${NP:-$([ "${NGPU:-0}" -gt 0 ] && echo "$NGPU" || echo 2)}
ROOT=""
[ "$(id -u)" = 0 ] && ROOT="--allow-run-as-root"
MPIRUN="mpirun -np $NP --oversubscribe --bind-to none $ROOT"
N=${N:-8192}

echo "== fa_long gen: q [1,$N,8,64], k/v [1,$N,2,64] float32"
./fa_long gen --output "$DIR/in.h5" -b 1 -n "$N" --heads 8 --kv-heads 2 -d 64 --seed 1 --force
echo "== $MPIRUN ./fa_long --input $DIR/in.h5 --output $DIR/out.h5 --causal --lse"
$MPIRUN ./fa_long --input "$DIR/in.h5" --output "$DIR/out.h5" --causal --lse --force
echo "== fa_long check (64 sampled rows against fp64)"
./fa_long check --input "$DIR/in.h5" --output "$DIR/out.h5" --rows 64
h5ls "$DIR/out.h5" 2>/dev/null || true
