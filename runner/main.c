/* main.c — fa_long's entry: MPI up, dispatch to the subcommand, MPI down.
 *
 *   fa_long --input in.h5 --output out.h5 [options]    exact attention, HDF5 to HDF5
 *   fa_long gen --output in.h5 [shape options]         random inputs in fa_long's format
 *   fa_long check --input in.h5 --output out.h5        fp64 recomputation of sampled rows
 *   fa_long tune [job shape]                            measure and cache the best tiles/chunks
 *
 * A first word that is no command but close to one ("tun", "chek") is refused with a suggestion;
 * any other stray word goes to the run parser, which calls it an unexpected argument.
 *
 * Exit status: 0 success; 1 a check above tolerance or an internal failure; 2 bad usage or bad
 * input (one line on stderr naming the file, dataset and what was expected). */
#define _GNU_SOURCE
#include <mpi.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include "runner/cli.h"
#include "runner/plan.h"
#include "base/clock.h"
#include "base/common.h"
#include "kernels/gpu.h"             /* gpu_warmup_start, gpu_warmup_join */

/* The node-local rank a launcher put in the environment before MPI_Init (Open MPI, MPICH's
 * Hydra, PMI, Slurm's srun); 0 started alone (no launcher at all); -1 when it cannot be told. */
static int env_local_rank(void) {
    static const char *const local[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                        "PMI_LOCAL_RANK", "SLURM_LOCALID"};
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(local[i]);
        if (v && *v) return atoi(v);
    }
    return getenv("PMIX_RANK") || getenv("PMI_RANK") || getenv("OMPI_COMM_WORLD_SIZE") ? -1 : 0;
}

/* Whether a run may take a GPU (its CUDA context is then made beside the start). */
static int may_use_gpu(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "gen") || !strcmp(argv[1], "check"))) return 0;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--backend") && !strcmp(argv[i + 1], "cpu")) return 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--backend=cpu") || !strcmp(argv[i], "--help") ||
            !strcmp(argv[i], "-h") || !strcmp(argv[i], "--version")) return 0;
    return 1;
}

int main(int argc, char **argv) {
    fa_start_clock_init();        /* first: the run's whole time is counted from the process's start */
    /* a run that may take a GPU: its context made by a thread of its own from the start, beside
     * MPI_Init, when the launcher says which device is this rank's and the rank has CPUs to spare
     * (a rank bound to one core gets its share first, after MPI_Init: the context starts then) */
    const int gpu_maybe = may_use_gpu(argc, argv);
    const char *wu = getenv("FA_GPU_WARMUP");      /* early (default), late: after MPI_Init */
    int early = gpu_maybe && !(wu && !strcmp(wu, "late")) ? env_local_rank() : -1;
    if (early >= 0) {
        cpu_set_t cs;
        if (sched_getaffinity(0, sizeof cs, &cs) == 0 && CPU_COUNT(&cs) < 4) early = -1;
    }
    if (early >= 0) gpu_warmup_start(early);
    int provided;
    /* MULTIPLE: the pipeline's I/O thread makes MPI calls (parallel HDF5, barriers) beside the
     * rank's merges; with less the reads and writes run in series (runner/plan.c) */
    fa_start.mpi_transport = plan_mpi_env();   /* before MPI_Init reads its environment */
    const double t_mpi = fa_now();
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    fa_start.mpi_init_s = fa_now() - t_mpi;
    fa_mpi_thread_multiple = provided >= MPI_THREAD_MULTIPLE;
    MPI_Comm_rank(MPI_COMM_WORLD, &fa_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &fa_nranks);
    /* before any OpenMP region: ranks sharing a node share its CPUs unless told otherwise
     * (--threads N, looked for here so that the oversubscription check sees it); a rank that
     * the launcher's default binding left on one core gets its share back first */
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[i + 1]);
        else if (!strncmp(argv[i], "--threads=", 10)) threads = atoi(argv[i] + 10);
    }
    fa_binding launch;              /* how mpirun or srun bound this rank, from their environment */
    plan_binding_read(&launch);
    fa_threads_setup(threads > 0 ? threads : 0, getenv("OMP_NUM_THREADS"), &launch);
    if (gpu_maybe) {              /* the rank's device as the engine will pick it */
        MPI_Comm node;
        int local = 0;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, fa_rank, MPI_INFO_NULL, &node);
        MPI_Comm_rank(node, &local);
        MPI_Comm_free(&node);
        if (early != local) {     /* not started, or on another device than the rank's */
            gpu_warmup_join();
            gpu_warmup_start(local);
        }
    }
    static const char *const commands[] = {"gen", "check", "tune"};
    const char *hit = NULL;
    int rc;
    if (argc > 1 && !strcmp(argv[1], "gen")) rc = cmd_gen(argc - 1, argv + 1);
    else if (argc > 1 && !strcmp(argv[1], "check")) rc = cmd_check(argc - 1, argv + 1);
    else if (argc > 1 && !strcmp(argv[1], "run")) rc = cmd_run(argc - 1, argv + 1);
    else if (argc > 1 && !strcmp(argv[1], "tune")) rc = cmd_tune(argc - 1, argv + 1);
    else if (argc > 1 && argv[1][0] != '-' &&
             (hit = fa_closest(argv[1], strlen(argv[1]), commands, 3))) {
        fa_seterr("unknown command '%s' (did you mean %s? commands: gen, check, tune; or run "
                  "options, see --help)", argv[1], hit);
        rc = fa_report_error();
    } else rc = cmd_run(argc, argv);
    gpu_warmup_join();
    MPI_Finalize();
    return rc;
}
