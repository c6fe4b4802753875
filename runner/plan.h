/* plan.h — the planner: the one place where a run's settings are decided (dist/plan.h holds
 * what it decides). It reads the environment (plan_env_read: every FA_* variable fa_long knows,
 * once, validated), then, collectively and before any data moves, combines the command line, the
 * input's shape, the tune cache (or a tuning run, with --tune), the cost model and the machine
 * into the run plan. Nothing below the runner reads the environment or keeps a decision. */
#pragma once
#include <stdint.h>
#include "dist/plan.h"
#include "dist/gpu_comm.h"
#include "runner/job.h"
#include "base/common.h"          /* fa_binding */

/* The environment, read once (the only getenv calls besides main's). *_set: the variable was
 * given (its value then wins over the default, and the plan says "environment"). */
typedef struct {
    q_read_mode q_read;            int q_read_set;          /* FA_Q_READ */
    double checkpoint_s;           int checkpoint_set;      /* FA_CHECKPOINT_SECONDS */
    double progress_s;             int progress_set;        /* FA_PROGRESS_INTERVAL */
    int64_t io_cap_bytes;          int io_cap_set;          /* FA_IO_CAP_BYTES */
    int io_thread;                 int io_thread_set;       /* FA_IO_THREAD=0|1 */
    int direct_read;               int direct_read_set;     /* FA_DIRECT_READ=0|1 */
    int fused_read;                int fused_read_set;      /* FA_FUSED_READ=0|1 */
    int typed;                     int typed_set;           /* FA_TYPED_TRANSFERS=0|1 */
    int stream_keys;               int stream_keys_set;     /* FA_STREAM_KEYS=0|1 */
    int64_t key_read_rows;         /* FA_KEY_READ_ROWS (0: not set) */
    int key_ring;                  int key_ring_set;        /* FA_KEY_RING=0|N (N >= 3) */
    int64_t page_block_rows;       /* FA_PAGE_BLOCK_ROWS (0: not set) */
    int page_ring;                 /* FA_PAGE_RING (0: not set) */
    int64_t page_max_resident;     /* FA_PAGE_MAX_RESIDENT (-1: not set) */
    int cpu_blas;                  int cpu_blas_set;        /* FA_CPU_PRODUCTS=blas|builtin */
    const char *stop_file;         /* FA_STOP_FILE: where a stopped run says so, or NULL */
    const char *tune_cache;        /* FA_TUNE_CACHE, or NULL */
    const char *home;              /* HOME, or NULL */
} plan_env;

/* Reads and checks the environment; -1 with fa_seterr naming the variable on a bad value. Not
 * collective (every rank reads its own environment; mpirun gives them the same). */
int plan_env_read(plan_env *env);

/* How the launcher bound this process, from its environment (Open MPI's OMPI_MCA_* variables,
 * Slurm's SLURM_CPU_BIND*): its default binding, one asked for, or none. main passes it to
 * fa_threads_setup (base/common.h), which widens a default binding to the rank's share of the
 * node and keeps an explicit one. Local. */
void plan_binding_read(fa_binding *b);

/* Before MPI_Init: where every rank of the job is on one node (started directly, or mpirun's
 * OMPI_MCA_orte_num_nodes = 1, or srun's SLURM_STEP_NUM_NODES = 1), Open MPI's point-to-point
 * layer is ob1 (its shared-memory and self transports) unless the environment names one
 * (OMPI_MCA_pml), and a process started alone skips the daemon singleton MPI starts
 * (OMPI_MCA_ess_singleton_isolated): MPI_Init then takes ~0.03 s instead of 0.2-0.5 s, most of
 * it the probing of UCX and the OFI MTL. Several nodes keep Open MPI's choice (UCX over
 * InfiniBand). hwloc's GPU and display plugins are left out of the topology MPI_Init loads
 * (HWLOC_COMPONENTS; each starts the GPU driver). FA_MPI_ENV=0 sets nothing. Returns one phrase
 * for the report. Local; sets environment variables only where they are not set. */
const char *plan_mpi_env(void);

/* The tune cache file: --tune-cache, else FA_TUNE_CACHE, else ~/.cache/fa_long/tune.txt. */
const char *plan_tune_cache_path(const char *opt, const plan_env *env, char *buf, int len);

/* COLLECTIVE over MPI_COMM_WORLD. The backend the job runs on (--backend, else CUDA when every
 * rank sees a GPU); -1 with fa_seterr when --backend cuda cannot be served. */
int plan_backend(const fa_job *job, fa_backend *out);

/* The job's mask (kernels/mask.h) with the tables it points to: --causal, --window-size,
 * --softcap, --alibi and the input's document offsets and slopes. */
typedef struct {
    attn_mask mask;
    h5_mask_tables t;             /* as read from the input (rank 0) or received (the others) */
    float *slopes;                /* the standard ALiBi slopes, when the input has none */
} plan_mask;

/* COLLECTIVE over MPI_COMM_WORLD, once the input's shape is known: rank 0 reads the mask
 * tables, every rank gets them. -1 with fa_seterr (every rank) on a bad table. */
int plan_mask_make(const fa_job *job, const fa_shape *s, plan_mask *pm);
void plan_mask_free(plan_mask *pm);
/* What the engines can serve of the job: --mode taylor and --compare take full and causal
 * attention only (-1 with a line saying what to drop); the CPU and CUDA engines take every
 * mask; the exact CUDA engine takes head dims that are multiples of 8 up to 256 (flash.h): any
 * other under --backend auto runs
 * on the CPU with one line saying so (*be becomes cpu), under --backend cuda is refused (-1).
 * Local, the same result on every rank (same job, same shape, same tables). */
int plan_backend_job(const fa_job *job, const fa_shape *s, const attn_mask *m, fa_backend *be);

/* COLLECTIVE over MPI_COMM_WORLD. --tune (exact mode): when the tune cache has no entry for the
 * job, rank 0 tunes it (tune/tuner.c) and stores the winner, which plan_make then reads from the
 * cache as every later run does. Run by cmd_run before plan_make; returns 0. */
int plan_tune(const fa_job *job, const plan_env *env, const fa_shape *s, fa_backend backend);

/* COLLECTIVE over MPI_COMM_WORLD, after the input is open and, on GPUs, the ranks are bound to
 * their devices (gc; NULL for the CPU). resume_chunk > 0: the chunk of the partial output being
 * resumed (when --chunk is not given). Fills *p, its rows (the HDF5 output's writer, this rank's
 * keys: plan_free releases them) and its merge (plan_merge); -1 with fa_seterr (the same on
 * every rank) when the job cannot be planned (keys that do not fit the device budget, say);
 * plan_free then too. */
int plan_make(const fa_job *job, const plan_env *env, const fa_shape *s, fa_backend backend,
              const gpu_comm *gc, int64_t resume_chunk, const attn_mask *mask, run_plan *p);
void plan_free(run_plan *p);

/* Whether the GPUs bring NCCL up (gpu_comm_init's want_nccl): not under --no-nccl. */
int plan_nccl_wanted(const fa_job *job);

/* The merge path (p->merge, its reason p->merge_why and source p->src[PS_MERGE]), decided
 * once the GPUs are up: gc's outcome (NCCL up, or why not; NULL without GPUs) is an input.
 * The CPU backend and Taylor mode merge through MPI; one GPU rank merges nothing; --no-nccl
 * takes MPI; else NCCL where it came up, MPI with gc's reason where it did not. Local, the
 * same on every rank (gpu_comm_init agrees its outcome). plan_make calls it; the engines and
 * the pipeline read its result. */
void plan_merge(fa_backend backend, fa_mode mode, int nranks, int no_nccl, const gpu_comm *gc,
                run_plan *p);
/* "nccl (default)", "mpi (--no-nccl)", ...: the merge as --verbose, the plan attribute and the
 * report say it (name and reason). */
const char *plan_merge_describe(const run_plan *p, char *buf, int len);

/* Rank 0, to stderr with --verbose: the plan, a line per group of settings, each value with its
 * source. */
void plan_print(const run_plan *p);
/* The plan as one JSON object {"chunk": {"value": 1024, "from": "model"}, ...} into buf (the
 * report's "plan" and the output's "plan" attribute). */
void plan_json(const run_plan *p, char *buf, int len);
