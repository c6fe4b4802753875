/* gpu_job.h — one rank's GPU side of a multi-rank job (kernels/cuda/gpu_job.cu): the rank's keys
 * resident on the device or paged from pinned host memory (kernels/paging.h), one device state per
 * pipeline slot, and the cross-rank merge of a chunk either on the device through NCCL (on a
 * communication stream, ordered by events after the chunk's compute) or through host records
 * for the MPI merge. kernels/cpu/gpu_none.c answers for builds without CUDA. */
#pragma once
#include <stdint.h>
#include "kernels/attn.h"
#include "kernels/gpu.h"
#include "kernels/paging.h"

typedef struct gpu_job gpu_job;

typedef struct {
    int device;
    int h, hkv, d;
    fa_compute ct;
    kv_plan plan;           /* filled by kv_plan_make with this rank's numbers */
    int slots;              /* pipeline slots (chunks in flight) */
    int64_t max_rows;       /* rows per chunk */
    void *nccl_comm;        /* ncclComm_t of all ranks, or NULL: states go to the host (MPI) */
    int nccl_size;          /* ranks of nccl_comm; 1 without it (> 1 only in NCCL builds) */
    int variant;            /* flash kernel variant (FLASH_*; the plan's), 0 = auto */
    const attn_mask *mask;  /* the job's mask (host tables, copied to the device at create);
                             * NULL or plain: the chunks' causal/diag */
    int q_type;             /* q's element type from the host (ATTN_F32, or ATTN_F16 / ATTN_BF16
                             * as the file stores it): sizes the pinned query staging */
    int o_type;             /* o's element type to the host (attn.h: ATTN_F32, or ATTN_F16 /
                             * ATTN_BF16: converted on the device, as the file stores it) */
    int64_t piece_rows;     /* resident keys split into pieces (one kernel launch each) every
                             * this many rows (rounded up to 256) from each segment's start (0:
                             * one piece a segment); streamed keys are launched on piece by
                             * piece as they arrive */
} gpu_job_cfg;

typedef struct {
    double compute_ms;      /* kernel time of all chunks (device events) */
    double comm_ms;         /* NCCL merge time on the communication stream (waits for peers too) */
    double copy_ms;         /* paged-block copy time on the copy stream */
    double exposed_ms;      /* host time blocked on merges after their chunk's compute was done:
                               communication the pipeline did not hide */
    double idle_ms;         /* compute-stream idle time from the first chunk to the last, any cause
                               (host late, copies, merges) */
    double comm_min_ms;     /* the fastest chunk's merge, and its bytes: the bus bandwidth */
    int64_t comm_min_bytes;
    int64_t bytes_h2d, bytes_d2h, bytes_paged, bytes_nccl;
} gpu_job_stats;

int gpu_job_create(const gpu_job_cfg *cfg, gpu_job **out);
/* The rank's key segments of one batch element (host rows of float32, or float16/bfloat16 as
 * the segments say). Resident keys are uploaded and converted on the device; the rest are laid
 * out in the compute type in pinned host blocks. */
int gpu_job_load_kv(gpu_job *g, const attn_kv_segment *segs, int nsegs);
/* The same in steps (streamed keys, dist/pipeline.h): kv_begin takes the segments before their
 * rows are there (their n, pos0 and types; k and v are not read, and may be NULL); kv_ready:
 * rows [row0, row0 + n) of the segments, in their order, are at k and v ([n][hkv][d] each, in
 * the segments' types), row0 where the last call ended. Before it returns, every row is copied
 * out (resident rows through pinned staging to the device, on the copy stream; paged rows into
 * their pinned host block), so k and v may be reused at once; the pieces the rows complete are
 * ready for compute. */
int gpu_job_kv_begin(gpu_job *g, const attn_kv_segment *segs, int nsegs);
int gpu_job_kv_ready(gpu_job *g, int64_t row0, int64_t n, const void *k, const void *v);
/* Enqueues chunk q's compute into slot `slot` (asynchronous; the queries are copied first):
 * over every key (q->keys ATTN_KEYS_ALL), or, while the keys arrive, over the pieces ready so
 * far (FIRST, MORE) and then the rest (LAST). */
int gpu_job_partial(gpu_job *g, int slot, const attn_queries *q);
/* MPI path: waits for the slot's compute and copies its records ([n][H] {m,l,o}) to rec. */
int gpu_job_state_to_host(gpu_job *g, int slot, int64_t n, float *rec);
/* NCCL path: enqueues the merge of the slot's n rows across ranks, landing on rank `root`. */
int gpu_job_merge_start(gpu_job *g, int slot, int64_t n, int root);
/* Waits for the slot's merge (or, with one rank, its compute) to finish. */
int gpu_job_merge_wait(gpu_job *g, int slot);
/* The root of a merged slot (or the only rank): o [n][H][D] (in cfg.o_type) and lse [n][H]
 * (float32) to the host. */
int gpu_job_final_to_host(gpu_job *g, int slot, int64_t n, void *o, float *lse);
void gpu_job_get_stats(gpu_job *g, gpu_job_stats *s);
void gpu_job_destroy(gpu_job *g);

/* Host -> device bandwidth of pinned memory on `device`, GB/s (a 256 MB copy, best of 3);
 * 0 without CUDA. */
double gpu_link_gbps(int device);
/* Free device memory in bytes (0 without CUDA). */
int64_t gpu_free_bytes(int device);
/* 16-byte UUID of `device` into uuid; -1 without CUDA. */
int gpu_uuid(int device, unsigned char uuid[16]);
