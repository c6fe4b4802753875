/* plan.h — the run plan: every setting of one run, decided once, before any data moves, by the
 * planner (runner/plan.c: the one file where a run setting is decided), the same on every rank
 * except where marked "this rank". The pipeline (dist/pipeline.c) and the engines (dist/engines.c,
 * dist/taylor_engine.c) take a plan and read nothing else: no environment, no tune cache, no
 * static decision. `--verbose` prints it with where each value came from (plan_print), and the
 * report and the output's attributes record it.
 *
 * A new run setting: a field here, its decision (and its source) in runner/plan.c, its line in
 * plan_print, and its use below. */
#pragma once
#include <stdint.h>
#include "io/h5io.h"
#include "dist/shard.h"
#include "kernels/attn.h"
#include "kernels/gpu.h"
#include "kernels/paging.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { BACKEND_AUTO = 0, BACKEND_CPU = 1, BACKEND_CUDA = 2 } fa_backend;
/* exact softmax attention, or the first-order Taylor approximation (ViTALiTy) */
typedef enum { MODE_EXACT = 0, MODE_TAYLOR = 1 } fa_mode;
/* how ranks get each query chunk: the node's first rank reads it into shared memory (node), every
 * rank reads it (rank), or each reads a slice and the slices are shared (shared) */
typedef enum { Q_READ_NODE = 0, Q_READ_RANK = 1, Q_READ_SHARED = 2 } q_read_mode;

const char *fa_backend_name(fa_backend b);
const char *fa_mode_name(fa_mode m);
const char *q_read_name(q_read_mode m);

/* How the ranks' chunk states are merged: through MPI from host memory (the CPU and Taylor
 * engines; the exact CUDA engine where NCCL is not up), through NCCL on the GPUs, or not at all
 * (one GPU rank: its states are finalized on its device). */
typedef enum { MERGE_MPI = 0, MERGE_NCCL = 1, MERGE_NONE = 2 } merge_path;
const char *merge_path_name(merge_path m);   /* "mpi", "nccl", "none" */

/* Where a value came from, for --verbose and the report. */
typedef enum {
    SRC_DEFAULT = 0, SRC_OPTION, SRC_ENV, SRC_CACHE, SRC_MODEL, SRC_TUNED, SRC_PARTIAL, SRC_INPUT,
    SRC_MEASURED
} plan_source;
const char *plan_source_name(plan_source s);

/* The fields whose source is kept (plan.src[...]). */
enum {
    PS_BACKEND, PS_COMPUTE, PS_SCALE, PS_CHUNK, PS_MERGES_IN_FLIGHT, PS_LAYOUT, PS_TILE, PS_THREADS,
    PS_PRODUCTS, PS_VARIANT, PS_BLOCKS, PS_BUDGET, PS_MERGE, PS_Q_READ, PS_CHECKPOINT,
    PS_PROGRESS, PS_IO_CAP, PS_IO_THREAD, PS_DIRECT, PS_TYPED, PS_STREAM, PS_KEY_RING, PS_COUNT
};

typedef struct {
    /* the job */
    fa_shape s;
    const char *input, *output;  /* paths, for messages (the job's strings) */
    fa_mode mode;
    fa_backend backend;          /* cpu or cuda (never auto) */
    fa_compute compute;          /* GPU compute type of the exact engine */
    const char *compute_name;    /* what the engine computes in: "float32", "bfloat16", "float16" */
    int causal, lse, allow_nonfinite;   /* causal: the mask's right side is 0 */
    attn_mask mask;              /* which pairs are visible, what is added to scores (its tables
                                  * belong to the caller's plan_mask, runner/plan.h) */
    double scale;                /* resolved: --scale or 1/sqrt(D) */
    fa_dtype o_type;             /* o's element type: --out-dtype, else q's (float32 for float64) */
    int nranks;
    /* the pipeline */
    int64_t chunk;               /* query rows per chunk */
    int merges_in_flight;        /* chunks whose merge may be in flight (the pipeline's
                                    slots: chunk i in slot i % merges_in_flight) */
    shard_layout layout;
    int64_t stripe;              /* keys per stripe (striped layout; 0 automatic) */
    /* this rank: where the caller holds its keys already (the library's fa_attention_mpi), its
     * shard is the one run [own_k_start, own_k_start + own_k_rows) instead of the layout's */
    int own_keys;
    int64_t own_k_start, own_k_rows;
    /* who writes each chunk and which keys this rank holds, decided once (plan_rows_make) */
    int rows_planned;            /* writer and shard are filled */
    int writer;                  /* the rank that writes every chunk's rows (serial HDF5: 0; the
                                    library: the rank that receives o), or -1: chunk i's rows on
                                    rank i mod nranks (parallel HDF5: each rank its own) */
    kv_shard shard;              /* this rank: its keys (the layout's, or the caller's run) */
    q_read_mode q_read;
    double checkpoint_s;         /* seconds between checkpoints of the partial output (<= 0 never) */
    double progress_interval_s;  /* seconds between progress lines in a batch log */
    int64_t io_cap_bytes;        /* bytes per rank per HDF5 transfer */
    int io_thread;               /* reads and writes on an I/O thread beside compute (needs
                                    MPI_THREAD_MULTIPLE); else in series, on the rank's thread */
    int io_omp_threads;          /* OpenMP threads of the I/O thread's conversion loops */
    int direct_read;             /* contiguous datasets read with pread, not H5Dread (h5io.h) */
    int fused_read;              /* direct reads hashed and scanned run by run (h5io.h) */
    /* what crosses between the file and the engine: q, k, v in in_type[] (float32, or the
     * file's float16/bfloat16 as it is, for an engine that converts on the device: the exact CUDA
     * engine), o in o_xfer (float32, or o_type itself) */
    int typed;                   /* in_type/o_xfer keep the file's 16-bit types */
    fa_dtype in_type[3], o_xfer;
    /* streamed keys: a batch element's keys are read in blocks of key_read_rows rows (the
     * rank's rows in order), each handed to the engine as it arrives, and its first chunk
     * computes on the blocks already there; else in one read before any compute. The exact CUDA
     * engine also splits its resident keys into pieces of this many rows (one kernel launch
     * each), streamed or not, so both give the same bits */
    int stream_keys;
    int64_t key_read_rows;
    /* streamed keys for an engine that copies the rows it is handed (pipe_engine.copies_keys:
     * the exact CUDA engine): each block is read into a ring of key_ring blocks of key_read_rows
     * rows, allocated once and reused (block j + key_ring is read once the engine has taken
     * block j), instead of into a shard of the rank's every key; 0: the shard */
    int key_ring;
    /* the CPU engine */
    cpu_tiling tiling;           /* br x bc, threads, tile products */
    /* the GPU engine */
    int variant;                 /* flash kernel variant (0: auto) */
    /* the merge, decided once the GPUs are up (runner/plan.h: plan_merge); the engines and the
     * pipeline read it, --verbose, the plan attribute and the report say it with its reason */
    merge_path merge;
    char merge_why[128];         /* "default", "--no-nccl", "cpu backend", "NCCL could not start: ..." */
    int64_t device_mem;          /* --device-mem budget per rank (0: what the device has free) */
    kv_plan kv;                  /* this rank: its keys resident and paged (GPU, exact mode) */
    double link_gbps, kernel_tflops;   /* the paging model's figures (chunk sizing) */
    /* the choice's prediction, for the report (0 when none) */
    double predicted_s;
    char critical[16];           /* the model's critical resource, or "" */
    plan_source src[PS_COUNT];
} run_plan;

/* The plan's rows (dist/shard.c): the writer (the sink's: pipe_io.h's pipe_sink.writer) and
 * this rank's keys (rank in the pipeline's communicator), from the plan's layout, stripe and
 * own keys; plan_rows_free releases the shard. */
void plan_rows_make(run_plan *p, int rank, int writer);
void plan_rows_free(run_plan *p);

/* The rank that writes chunk i's rows (and that the chunk's merge lands on). */
static inline int plan_chunk_writer(const run_plan *p, int64_t i) {
    return p->writer >= 0 ? p->writer : (int)(i % p->nranks);
}

#ifdef __cplusplus
}
#endif
