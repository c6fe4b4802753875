#!/bin/bash
# run_fa_long.sh — what every sbatch script in jobs/ runs inside its allocation (sourced, so the
# scripts stay a page of resource lines each). It launches fa_long on all tasks of the job,
# forwards Slurm's warning signal to it, and requeues the job when fa_long stopped early.
#
# fa_long's options: the arguments after the script's name on the sbatch line, as they are
# (sbatch passes them to the script, which passes them on as "$@": spaces and commas stay inside
# an argument), e.g.
#   sbatch jobs/fa_long_cpu.sbatch --input "$PWD/my data/in.h5" --output "$PWD/out.h5" \
#          --window-size 255,0 --lse
# Variables (set with sbatch --export=ALL,NAME=value,... or in the environment):
#   INPUT, OUTPUT   the HDF5 files (required unless the arguments give --input and --output)
#   FA_ARGS         further fa_long options, e.g. "--causal --lse --chunk 2K", split into words
#                   as the shell splits them: quotes ('...' or "...") and backslashes keep spaces
#                   and commas inside one word; nothing is expanded. They come before the
#                   arguments, which win where both give an option
#   FA_HOME         the fa_long checkout (default: the folder above this file; the sbatch
#                   scripts find it from the path they were submitted as, from any folder)
#   FA_LONG         the binary (default: $FA_HOME/fa_long)
#   LAUNCHER        mpirun (default) or srun (srun --mpi=pmix)
#   CHECK_ROWS      rows re-checked in fp64 after the run (default 16; 0 skips)
#   FA_NO_REQUEUE=1 exit 75 instead of requeueing after an early stop
#   OMP_NUM_THREADS threads a rank (default: --cpus-per-task, else the CPUs Slurm gave the node
#                   divided among the node's ranks)
#
#   OMPI_MCA_odls_base_sigkill_timeout  see below (default here 15)
#
# Preemption: the scripts ask for SIGUSR1 before the time limit (#SBATCH --signal=B:USR1@...);
# `scancel --signal=USR1 --batch JOBID` sends the same at any time. The trap below passes it to
# the launcher, which passes it to every rank: fa_long finishes the chunks in flight, keeps every
# finished chunk in OUTPUT's partial file (.OUTPUT.partial) and exits with status 75. The job is
# then requeued, and the requeued run, the same command with --resume, continues from there.
#
# SIGTERM and SIGINT (a plain scancel, the time limit, Ctrl-C) stop fa_long the same way. Slurm
# sends TERM to every process of the job at once (this script, mpirun, the ranks) and KILL
# KillWait seconds later (default 30). mpirun cannot forward TERM: it aborts the job instead
# (SIGCONT to the ranks, odls_base_sigkill_timeout seconds, TERM, as long again, KILL) and exits
# non-zero whatever the ranks return. So this script raises that timeout to 15 s (mpirun's KILL
# then comes after Slurm's default KillWait), passes the stop on to mpirun (USR1) and to the
# local ranks itself, and takes the outcome from fa_long: after a stop rank 0 writes
# FA_STOP_FILE (a file beside OUTPUT) once the partial file is closed on every rank. The script
# then exits 75, or requeues the job where Slurm allows it (a job being cancelled or timed out
# cannot be requeued: submit the same script again, it continues from the partial file).
set -u
# FA_ARGS into words (xargs: quotes and backslashes as the shell takes them, no expansion)
fa_args=()
if [ -n "${FA_ARGS:-}" ]; then
    mapfile -d '' -t fa_args < <(printf '%s' "$FA_ARGS" | xargs -r printf '%s\0' 2>/dev/null)
    if ! wait $!; then
        echo "fa_long job: FA_ARGS=$FA_ARGS: a quote is not closed; expected words as the shell" \
             "takes them (e.g. FA_ARGS=\"--window-size 255,0 --q '/my layer/q'\")" >&2
        exit 2
    fi
fi
# the input and output: INPUT, OUTPUT, or the options (FA_ARGS, then the arguments: the last wins,
# as it does for fa_long)
opt_in=; opt_out=; prev=
for a in "${fa_args[@]}" "$@"; do
    case $prev in -i|--input) opt_in=$a ;; -o|--output) opt_out=$a ;; esac
    case $a in --input=*) opt_in=${a#--input=} ;; --output=*) opt_out=${a#--output=} ;; esac
    prev=$a
done
missing=
[ -z "${INPUT:-}$opt_in" ] && missing=input
[ -z "${OUTPUT:-}$opt_out" ] && missing=${missing:+$missing and }output
if [ -n "$missing" ]; then
    echo "fa_long job: no $missing file: give --input IN.h5 --output OUT.h5 after the script's" \
         "name (sbatch SCRIPT --input ... --output ...), or INPUT and OUTPUT (sbatch" \
         "--export=ALL,INPUT=...,OUTPUT=...)" >&2
    exit 2
fi
io=(); [ -n "${INPUT:-}" ] && io+=(--input "$INPUT"); [ -n "${OUTPUT:-}" ] && io+=(--output "$OUTPUT")
OUTPUT=${opt_out:-$OUTPUT}
FA_HOME=${FA_HOME:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
FA_LONG=${FA_LONG:-$FA_HOME/fa_long}
if [ ! -x "$FA_LONG" ]; then
    echo "fa_long job: no fa_long at $FA_LONG (FA_HOME=$FA_HOME): build it (make) or set FA_LONG" >&2
    exit 2
fi
LAUNCHER=${LAUNCHER:-mpirun}
CHECK_ROWS=${CHECK_ROWS:-16}
# CPUs a rank: --cpus-per-task, else the CPUs Slurm gave this node divided among its ranks
# (SLURM_TASKS_PER_NODE: "4", "4(x2)" or "4,3": this node's is the first)
node_tasks=${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-}}
node_tasks=${node_tasks%%[(,]*}
cpus=${SLURM_CPUS_PER_TASK:-}
if [ -z "$cpus" ] && [ -n "${SLURM_CPUS_ON_NODE:-}" ] && [ "${node_tasks:-0}" -gt 0 ]; then
    cpus=$(( SLURM_CPUS_ON_NODE / node_tasks ))
    [ "$cpus" -lt 1 ] && cpus=1
fi
# threads a rank: OMP_NUM_THREADS if given, else those CPUs, else fa_long's own share of the CPUs
# the node's ranks may use (never every core for every rank: that oversubscribes)
if [ -z "${OMP_NUM_THREADS:-}" ] && [ -n "$cpus" ]; then
    export OMP_NUM_THREADS=$cpus
fi
xomp=(); [ -n "${OMP_NUM_THREADS:-}" ] && xomp=(-x OMP_NUM_THREADS)
# never let NCCL use NVLink multicast (NVLS): it can take a shared node's GPUs out of service
export NCCL_NVLS_ENABLE=0

if [ "$LAUNCHER" = srun ]; then
    # a step's tasks get 1 CPU each unless told (srun 22.05 does not take the job's
    # --cpus-per-task): each rank its CPUs
    launch=(srun --mpi=pmix --kill-on-bad-exit=1 ${cpus:+--cpus-per-task=$cpus})
else
    root=(); [ "$(id -u)" = 0 ] && root=(--allow-run-as-root)
    # one rank per Slurm task; Open MPI reads the allocation from Slurm's environment
    # on TERM/INT mpirun gives the ranks this long (twice) before it kills them: see above
    export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-15}
    launch=(mpirun "${root[@]}" -np "${SLURM_NTASKS:-1}" --bind-to none "${xomp[@]}" -x NCCL_NVLS_ENABLE
            -x FA_STOP_FILE)
fi
# where fa_long's rank 0 says it stopped with its progress kept (beside OUTPUT: rank 0 may run
# on another node)
out_dir=$(dirname "$OUTPUT")
export FA_STOP_FILE="$out_dir/.$(basename "$OUTPUT").stopped.${SLURM_JOB_ID:-$$}"
rm -f "$FA_STOP_FILE"
check=(); [ "$CHECK_ROWS" != 0 ] && check=(--check "$CHECK_ROWS")

ranks=${SLURM_NTASKS:-1} threads=${OMP_NUM_THREADS:-}
[ -n "$threads" ] || threads="(a share of the node's CPUs)"
echo "fa_long job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}:" \
     "$ranks rank$([ "$ranks" = 1 ] || echo s) x $threads threads: ${launch[*]}"
"${launch[@]}" "$FA_LONG" "${io[@]}" --resume "${check[@]}" "${fa_args[@]}" "$@" &
pid=$!
stopping=
# TERM, INT or USR1: ask fa_long to stop after the chunks in flight. mpirun forwards USR1 to
# every rank (when mpirun itself got TERM/INT it is aborting and forwards nothing: the local
# ranks get USR1 from here too; elsewhere Slurm signals them)
local_ranks() {   # the fa_long processes mpirun started on this node
    [ "$LAUNCHER" = srun ] && return
    ps -o pid=,comm= --ppid $pid 2>/dev/null |
        awk -v n="$(basename "$FA_LONG" | cut -c1-15)" '$2 == n {print $1}'
}
stop_fa() {
    echo "fa_long job: SIG$1: asking fa_long to stop after the chunks in flight"
    stopping=${stopping:-$1}
    kill -USR1 $pid 2>/dev/null
    for c in $(local_ranks); do kill -USR1 "$c" 2>/dev/null; done
}
trap 'stop_fa USR1' USR1
trap 'stop_fa TERM' TERM
trap 'stop_fa INT' INT
rc=
while :; do
    if [ -z "$stopping" ]; then
        wait $pid; r=$?                     # returns when the launcher ends or a trap ran
    else
        sleep 0.2; r=
    fi
    if ! kill -0 $pid 2>/dev/null; then     # ended: its status (once; 127 if wait had it)
        wait $pid 2>/dev/null; r2=$?
        [ $r2 != 127 ] && r=$r2
        rc=${r:-1}
        break
    fi
    # stopped with its progress kept while mpirun is still aborting (or its ranks wait in
    # MPI_Finalize for it): that is the outcome. Every rank has closed the partial file, so what
    # is left of the launch may go.
    if [ -n "$stopping" ] && [ -s "$FA_STOP_FILE" ]; then
        for _ in $(seq 1 10); do kill -0 $pid 2>/dev/null || break; sleep 0.2; done
        if kill -0 $pid 2>/dev/null; then
            for c in $(local_ranks); do kill -KILL "$c" 2>/dev/null; done
            kill -KILL $pid 2>/dev/null
        fi
        wait $pid 2>/dev/null; rc=$?
        break
    fi
done
if [ -s "$FA_STOP_FILE" ]; then
    read -r _ ndone total partial < "$FA_STOP_FILE"
    echo "fa_long job: fa_long stopped after $ndone of $total chunks, kept in $partial (launcher status $rc)"
    rm -f "$FA_STOP_FILE"
    rc=75
elif [ -n "$stopping" ] && [ "$rc" != 0 ]; then
    echo "fa_long job: fa_long did not stop cleanly (status $rc): the partial output keeps the chunks of its last checkpoint, if any"
fi
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
