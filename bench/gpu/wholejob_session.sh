#!/bin/bash
# wholejob_session.sh — the issue 22 targets on a GPU machine in one step of bench/gpu_session.sh:
# the base revision's binary built beside (BASE_TGZ, a `git archive` of it, into /tmp/fa_base,
# kept there while the machine stays warm), then bench/wholejob.sh BACKEND=cuda for the 256K jobs
# and the decode-like job (MODES, ROUNDS) and the 1M causal job (C1M_MODES, one round).
#   BASE_TGZ (default .device_carry/base.tgz), BASE_REV (its revision), REV (this tree's)
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_TGZ=${BASE_TGZ:-.device_carry/base.tgz}
if [ ! -x /tmp/fa_base/fa_long ]; then
  mkdir -p /tmp/fa_base && tar xzf "$BASE_TGZ" -C /tmp/fa_base
  make -C /tmp/fa_base -j"$(nproc)" fa_long > /tmp/fa_base_build.log 2>&1 || { tail -20 /tmp/fa_base_build.log; exit 1; }
fi
export BACKEND=cuda BASE_FA=/tmp/fa_base/fa_long VERBOSE_ONCE=1
SHAPES="${SHAPES:-n256k:1:262144:262144:32:8:128:0:bfloat16 c256k:1:262144:262144:32:8:128:1:bfloat16 decode:1:16:1048576:32:8:128:0:bfloat16}" \
  MODES="${MODES:-new mpirun1 base torch}" ROUNDS=${ROUNDS:-2} bash bench/wholejob.sh
[ -n "${C1M_MODES-new base torch}" ] || exit 0
SHAPES="c1m:1:1048576:1048576:32:8:128:1:bfloat16" MODES="${C1M_MODES:-new base torch}" ROUNDS=1 bash bench/wholejob.sh
