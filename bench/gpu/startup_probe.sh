#!/bin/bash
# startup_probe.sh — where a GPU job's start goes (issue 22): a small CUDA job (8K tokens, bf16)
# started alone and under `mpirun -np 1`, ROUNDS times each, under variants of the environment:
# as fa_long sets it up (default: the CUDA context made from the start, hwloc's GPU plugins off,
# pml ob1), the context after MPI_Init (FA_GPU_WARMUP=late), hwloc's plugins on
# (HWLOC_COMPONENTS set), nothing set before MPI_Init (FA_MPI_ENV=0), btl self,vader named. Prints a
# '#'-headed table of the report's time line (process, mpi_init, plan, engine, whole) per
# variant, best whole of ROUNDS, and the versions that matter.
set -uo pipefail
cd "$(dirname "$0")/../.."
FA=${FA_LONG:-./fa_long}; ROUNDS=${ROUNDS:-3}; BE=${BACKEND:-cuda}
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
R=""; [ "$(id -u)" = 0 ] && R="--allow-run-as-root"
PY=/usr/bin/python3
echo "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
echo "# $(mpirun --version 2>&1 | head -1); hwloc $(hwloc-info --version 2>/dev/null | head -1); plugins: $(ls /usr/lib/x86_64-linux-gnu/hwloc/ 2>/dev/null | tr '\n' ' ')"
echo "# ompi_info cuda: $(ompi_info --parsable --all 2>/dev/null | grep -i 'mpi_built_with_cuda_support:value' | head -1)"
"$FA" gen -o "$T/in.h5" -n ${N:-8K} --heads 32 --kv-heads 8 -d 128 --dtype bfloat16 -f > /dev/null
printf '# %-34s %-7s %8s %8s %8s %8s %8s %8s\n' variant start process mpi_init gpu_init plan engine whole
for v in default late plugins mpienv0 mpienv0+late btl; do
  for how in alone mpirun; do
    best=""
    for r in $(seq "$ROUNDS"); do
      envs=(FA_PROBE=1)
      case $v in *late*) envs+=(FA_GPU_WARMUP=late) ;; esac
      case $v in plugins) envs+=(HWLOC_COMPONENTS=linux) ;; esac   # set: hwloc's own plugins
      case $v in mpienv0*) envs+=(FA_MPI_ENV=0) ;; esac
      case $v in btl) envs+=(OMPI_MCA_btl=self,vader) ;; esac
      if [ $how = alone ]; then env "${envs[@]}" "$FA" -i "$T/in.h5" -o "$T/o.h5" -f --backend $BE -q --report "$T/r.json"
      else xs=(); for e in "${envs[@]}"; do xs+=(-x "${e%%=*}"); done
           env "${envs[@]}" mpirun $R -np 1 "${xs[@]}" "$FA" -i "$T/in.h5" -o "$T/o.h5" -f --backend $BE -q --report "$T/r.json"; fi
      line=$($PY -c "
import json; j=json.load(open('$T/r.json')); t=j['whole']['timeline_s']
print('%.3f %.3f %.3f %.3f %.3f %.3f' % (t['process'], t['mpi_init'], t['gpu_init'], t['plan'], t['engine'], j['elapsed_s']))")
      w=${line##* }
      if [ -z "$best" ] || awk "BEGIN{exit !($w < ${best##* })}"; then best=$line; fi
    done
    printf '  %-34s %-7s %8s %8s %8s %8s %8s %8s\n' "$v" $how $best
  done
done
