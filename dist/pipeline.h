/* pipeline.h — the chunked merge pipeline: every rank computes, per query chunk, a partial result
 * over its own keys; chunk c's partials are merged (MPI_Ireduce with the record operator, landing
 * on the rank that writes those rows) while chunk c+1 computes. */
#pragma once
#include <stdint.h>
#include <mpi.h>
#include <signal.h>
#include "io/h5io.h"
#include "kernels/attn.h"
#include "dist/gpu_comm.h"
#include "dist/plan.h"
#include "dist/pipe_io.h"
#include "dist/shard.h"
#include "base/progress.h"

struct pipeline_stats;

/* What the pipeline needs of an engine (dist/engines.c, dist/taylor_engine.c build them): one
 * contract for every engine, slot-based. Chunk i runs in slot i % merges_in_flight: compute_chunk folds the
 * rank's keys into the slot's state (it may return before the device is done), merge_start
 * merges the slot's state across ranks onto the rows' owner (COLLECTIVE: every rank starts the
 * same slots in the same order), merge_wait waits for it, and the owner's fetch gives the rows'
 * o [n][H][D] and lse [n][H] in fp32. Engines whose states reach the host merge through
 * host_merge (dist/merge.h: MPI_Ireduce of records); the CUDA engine with NCCL, or alone, on the
 * device. A record is rec_len floats per (query row, head): what a merge moves. */
typedef struct pipe_engine {
    const char *compute;        /* what it computes in: "float32", "bfloat16", ... (the output's
                                   compute attribute, through pipeline_stats.compute) */
    int rec_len;
    /* the overflow policy: 1 where a row that sees a key must come out finite from finite
     * inputs, so a non-finite one means float32 overflowed and the job fails (the exact
     * engines; the pipeline checks it unless --allow-nonfinite); 0 where the engine finalizes
     * such rows by a policy of its own (Taylor: fallback rows, counted in the stats) */
    int overflow_is_error;
    /* 1 where kv_ready copies out what it needs of the rows it is handed before it returns, and
     * never reads the segments' k and v (the GPU job engine: to the device, or into its pinned
     * blocks). The pipeline then reads streamed keys into a ring of a few blocks, reused, instead
     * of a shard of every key (the plan's key_ring). 0: the engine reads the keys where the
     * segments say, until the next batch element's (the CPU engines: the shard) */
    int copies_keys;
    void *ctx;
    /* the rank's keys for a new batch element (segments stay valid until the next call),
     * every row of them in memory */
    int (*load_kv)(void *ctx, const attn_kv_segment *segs, int nsegs);
    /* Streamed keys (the plan's stream_keys; engines without them take load_kv): kv_begin gives
     * the segments before any of their rows is read (their k and v NULL where keys come through
     * a ring); kv_ready says that rows [row0, row0 + n) of the segments, taken in their order,
     * are now in memory at k and v ([n][Hkv][D] each, in the segments' types; the rows of
     * several segments follow each other there). It is called with rows in order, each call
     * starting where the last ended (n may be 0), the last ending at the segments' total. Once
     * it returns, an engine that copies_keys may find k and v overwritten. A chunk computed
     * while they arrive takes several compute_chunk calls: keys ATTN_KEYS_FIRST, then MORE after
     * each kv_ready, then LAST once every row is ready (kernels/attn.h); a chunk computed after
     * that takes one call, ALL. */
    int (*kv_begin)(void *ctx, const attn_kv_segment *segs, int nsegs);
    int (*kv_ready)(void *ctx, int64_t row0, int64_t n, const void *k, const void *v);
    /* chunk q into slot `slot` (whose last merge has been waited for); the queries may be
     * reused once it returns */
    int (*compute_chunk)(void *ctx, int slot, const attn_queries *q);
    int (*merge_start)(void *ctx, int slot, int64_t nrows, int root);
    int (*merge_wait)(void *ctx, int slot);
    /* o in the plan's o_xfer type (float32, or o's file type when the engine converts) */
    int (*fetch)(void *ctx, int slot, int64_t nrows, void *o, float *lse);
    /* adds the engine's own measurements (device time, bytes) to the stats at the end */
    void (*stats)(void *ctx, struct pipeline_stats *st);
    void (*destroy)(void *ctx);
} pipe_engine;

/* Builds the engine of the plan's mode and backend (dist/engines.c). Returns -1 with fa_seterr
 * when it cannot start. comm: the ranks the merges run over (the pipeline's); device: the CUDA
 * device of this rank; kv_rows: keys this rank holds; nccl_comm: the NCCL communicator of all
 * ranks, or NULL (taken where the plan's merge is nccl; the engines follow plan->merge and -1
 * where they cannot). */
int engine_create(const run_plan *plan, MPI_Comm comm, int device, int64_t kv_rows,
                  void *nccl_comm, pipe_engine *e);
void engine_free(pipe_engine *e);
/* Whether the engine engine_create builds for this plan copies the key rows it is handed
 * (pipe_engine.copies_keys): the planner's question, before the engine exists. */
int engine_copies_keys(const run_plan *plan);
/* engine_create's signature: pipeline_run_engine takes another maker (the tests' mock engines) */
typedef int (*pipe_engine_maker)(const run_plan *plan, MPI_Comm comm, int device, int64_t kv_rows,
                                 void *nccl_comm, pipe_engine *e);

typedef struct pipeline_stats {
    double t_read, t_compute, t_wait, t_write, t_total;   /* t_read, t_write: the I/O
                                thread's time in them (beside compute when it has a thread) */
    double t_setup;          /* engine and buffers, before the first chunk */
    double t_kv;             /* of t_read: this rank's keys and values, read and loaded */
    int64_t bytes_kv_read;   /* the file bytes of those keys and values */
    int64_t bytes_read, bytes_written;   /* file bytes this rank read (q chunks, k, v) and wrote (o, lse) */
    double read_best_bps, write_best_bps;   /* the fastest of its reads and writes, bytes/s: the
                                               rates the report's floor takes (its own figures) */
    double t_final;          /* merged rows to the host and finalized (o/l, lse) */
    double t_io_exposed;     /* the rank's thread blocked on the I/O thread (reads and writes
                                not hidden behind compute; all of them without the thread) */
    double t_read_exposed, t_write_exposed;   /* of t_io_exposed: on read tasks (which may
                                queue behind a write), and on writes and checkpoints */
    /* the rank's own thread, for the whole job's time line (runner/report.c): */
    double t_compute_host;   /* in compute_chunk and merge_start (t_compute, before an engine
                                puts its device time there) */
    double t_load_kv;        /* handing each batch element's keys to the engine, with the
                                agreements on them (on a GPU: their upload) */
    double t_sync_own;       /* of t_sync, this thread's: the ranks' agreements to stop */
    double t_teardown;       /* the I/O thread stopped, the engine and buffers freed */
    int io_thread;           /* reads and writes ran on an I/O thread beside compute */
    double t_sync;           /* waiting for the other ranks in the reads' and writes' agreements
                                (kept out of t_read, t_kv and t_write) */
    int64_t bytes_reduced;   /* record bytes this rank contributed to merges */
    int64_t bytes_h2d, bytes_d2h;   /* host<->device traffic of a GPU engine */
    int64_t bytes_paged;     /* of which key/value blocks paged from pinned host memory */
    double t_copy;           /* time the paging copies took (copy stream) */
    double t_comm;           /* device merge time (NCCL, communication stream) */
    double t_exposed;        /* host blocked on device merges after their compute: comm not hidden */
    double t_idle;           /* GPU compute-stream idle time between the first and last chunk */
    double t_comm_min;       /* the fastest chunk's device merge, and its bytes */
    int64_t bytes_comm_min;
    int64_t chunks;          /* query chunks processed */
    double work_pairs;       /* visible (query, key) pairs computed by this rank */
    int used_gpu;
    int layout;              /* shard_layout used */
    int merges_in_flight;    /* chunks whose merge was allowed in flight */
    int nccl;                /* merged on the device through NCCL (the plan's merge) */
    int stopped;             /* stopped early on a signal; chunks [0, chunks_done) are written */
    int64_t chunks_done;
    /* the Taylor engine's (row, head) records this rank finalized, by kind (kernels/taylor.h):
     * all of them, the denominator's fallback (o = mean of v), zeroed (o not finite even then),
     * empty (no key visible); the output's taylor_* attributes sum them over ranks */
    struct { int64_t rows, fallback, zeroed, empty; } taylor;
    char compute[16];        /* what the engine computed in (its pipe_engine.compute): the
                                output's compute attribute and the check's tolerance follow it */
    /* streamed keys (plan.stream_keys), the first batch element this run loaded: the blocks
     * its keys came in, and by how long its first chunk's compute started before the last
     * block had been read (> 0: compute ran beside the key reads) */
    int keys_streamed;
    int64_t key_blocks;
    double first_compute_lead_s;
    /* keys through a ring (plan.key_ring): its blocks (0: the keys went to a shard), rows per
     * block and bytes (k and v), the blocks read into it and their bytes (every batch element),
     * and the bytes a shard of this rank's every key would have taken */
    int key_ring;
    int64_t key_ring_rows, key_ring_bytes, key_ring_reads, key_ring_bytes_read, key_shard_bytes;
} pipeline_stats;

/* COLLECTIVE. Runs the planned job from the source `src` to the sink `snk` (an open HDF5 input
 * and output, or buffers: dist/pipe_io.h), from chunk first_chunk on (chunks before it are in
 * the output already: --resume). Chunk i covers rows [r0, r0+chunk) of
 * batch element i / ceil(Nq/chunk). gc: the ranks' GPUs and NCCL communicator (GPU plans), or
 * NULL. Returns 0, or -1 with fa_seterr (the same on every rank) on a user-facing error found
 * while reading (non-finite input) or computing (float32 overflow). */
int pipeline_run(const run_plan *plan, MPI_Comm comm, pipe_source *src, pipe_sink *snk,
                 const gpu_comm *gc, int64_t first_chunk, progress *pg, pipeline_stats *st);
/* The same over the engine `make` builds (pipeline_run: engine_create). */
int pipeline_run_engine(const run_plan *plan, MPI_Comm comm, pipe_source *src, pipe_sink *snk,
                        const gpu_comm *gc, int64_t first_chunk, progress *pg, pipeline_stats *st,
                        pipe_engine_maker make);

/* Set by the runner's SIGUSR1/SIGTERM handler. The pipeline checks it at every group write: once
 * any rank has it, all ranks finish the chunks in flight, write them, and return with
 * st->stopped set and st->chunks_done = the complete prefix of chunks. */
extern volatile sig_atomic_t fa_stop_requested;

/* Floating-point operations of rows [r0, r0+n) of batch element b (b < 0: of every batch
 * element) under mask m: 4 per visible (query, key) pair per unit of D, per head (two products). */
double pipeline_flops(const fa_shape *s, const attn_mask *m, int64_t b, int64_t r0, int64_t n);
