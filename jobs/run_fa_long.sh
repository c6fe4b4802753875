#!/bin/bash
# run_fa_long.sh — what every sbatch script in jobs/ runs inside its allocation (sourced, so the
# scripts stay a page of resource lines each). It launches fa_long on all tasks of the job,
# forwards Slurm's warning signal to it, and requeues the job when fa_long stopped early.
#
# Variables (set with sbatch --export=ALL,NAME=value,... or in the environment):
#   INPUT, OUTPUT   the HDF5 files (required)
#   FA_ARGS         further fa_long options, e.g. "--causal --lse --chunk 2K"
#   FA_HOME         the fa_long checkout (default: the folder sbatch was called from)
#   FA_LONG         the binary (default: $FA_HOME/fa_long)
#   LAUNCHER        mpirun (default) or srun (srun --mpi=pmix)
#   CHECK_ROWS      rows re-checked in fp64 after the run (default 16; 0 skips)
#   FA_NO_REQUEUE=1 exit 75 instead of requeueing after an early stop
#
# Preemption: the scripts ask for SIGUSR1 before the time limit (#SBATCH --signal=B:USR1@...);
# `scancel --signal=USR1 --batch JOBID` sends the same at any time. The trap below passes it to
# the launcher, which passes it to every rank: fa_long finishes the chunks in flight, keeps every
# finished chunk in OUTPUT's partial file (.OUTPUT.partial) and exits with status 75. The job is
# then requeued, and the requeued run, the same command with --resume, continues from there.
set -u
: "${INPUT:?set INPUT=the input .h5 (sbatch --export=ALL,INPUT=...,OUTPUT=...)}"
: "${OUTPUT:?set OUTPUT=the output .h5}"
FA_HOME=${FA_HOME:-${SLURM_SUBMIT_DIR:-$(pwd)}}
FA_LONG=${FA_LONG:-$FA_HOME/fa_long}
LAUNCHER=${LAUNCHER:-mpirun}
CHECK_ROWS=${CHECK_ROWS:-16}
# threads a rank: OMP_NUM_THREADS if given, else --cpus-per-task, else fa_long's own share of the
# CPUs Slurm gave the node's ranks (never every core for every rank: that oversubscribes)
if [ -z "${OMP_NUM_THREADS:-}" ] && [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
    export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
fi
xomp=(); [ -n "${OMP_NUM_THREADS:-}" ] && xomp=(-x OMP_NUM_THREADS)
# never let NCCL use NVLink multicast (NVLS): it can take a shared node's GPUs out of service
export NCCL_NVLS_ENABLE=0

if [ "$LAUNCHER" = srun ]; then
    launch=(srun --mpi=pmix --kill-on-bad-exit=1)
else
    root=(); [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
    # one rank per Slurm task; Open MPI reads the allocation from Slurm's environment
    launch=(mpirun "${root[@]}" -np "${SLURM_NTASKS:-1}" --bind-to none "${xomp[@]}" -x NCCL_NVLS_ENABLE)
fi
check=(); [ "$CHECK_ROWS" != 0 ] && check=(--check "$CHECK_ROWS")

echo "fa_long job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}: ${launch[*]}"
# shellcheck disable=SC2086  # FA_ARGS is a list of options
"${launch[@]}" "$FA_LONG" --input "$INPUT" --output "$OUTPUT" --resume "${check[@]}" ${FA_ARGS:-} &
pid=$!
trap 'echo "fa_long job: SIGUSR1: asking fa_long to stop after the chunks in flight"; kill -USR1 $pid 2>/dev/null' USR1
trap 'kill -TERM $pid 2>/dev/null' TERM
while :; do
    wait $pid
    rc=$?
    kill -0 $pid 2>/dev/null || break      # wait returned because a trap ran: wait again
done
if [ $rc = 75 ]; then
    echo "fa_long job: stopped early with its progress kept"
    if [ -n "${SLURM_JOB_ID:-}" ] && [ "${FA_NO_REQUEUE:-0}" != 1 ]; then
        echo "fa_long job: requeueing ${SLURM_JOB_ID}"
        if scontrol requeue "$SLURM_JOB_ID"; then
            # let Slurm end this run as part of the requeue: a script that exits on its own
            # first can leave the job FAILED instead of pending again
            trap 'exit 0' TERM
            sleep 300 & wait $!
            exit 0
        fi
    fi
fi
exit $rc
