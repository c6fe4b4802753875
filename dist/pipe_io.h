/* pipe_io.h — where the pipeline's rows come from and where its results go: a source of q, k, v
 * rows and a sink of o and lse rows, each a small table of functions over a context, so that
 * one pipeline (dist/pipeline.c) serves the command (an HDF5 input and output: io/h5in.c and
 * io/h5out.c, wrapped unchanged by pipe_source_h5 and pipe_sink_h5) and the library (buffers in
 * memory: pipe_source_mem, pipe_sink_mem).
 *
 * Rows cross as the I/O layer hands them over: [n, heads, D] (bnhd order), in the element type
 * the plan asks (FA_F32, or a 16-bit source's own type for an engine that converts it; the
 * plan's in_type[] and o_xfer). Checkpoints, the input's identity and the key digests are what
 * --resume needs of a file; memory answers them as no-ops (no identity, zero digests, nothing
 * recorded). */
#pragma once
#include <stdint.h>
#include <mpi.h>
#include "io/h5io.h"

/* q, k, v, in that order (the `which` of the calls below). */
enum { PIPE_Q = 0, PIPE_K = 1, PIPE_V = 2 };

typedef struct pipe_source {
    void *ctx;
    /* COLLECTIVE (every rank the same calls in the same order; on the pipeline's I/O thread
     * where it has one; the agreements on the source's own communicator). h5in_read_rows_as's
     * contract: the rows of `ranges` (key or query positions, in order, concatenated) of batch
     * element b of q, k or v into dst as [sum n, heads, D] in `as`; a rank may pass no ranges.
     * check_finite: a NaN or Inf is an error naming its index (the same status on every rank). */
    int (*read_rows)(void *ctx, int which, int64_t b, const row_range *ranges, int nranges,
                     void *dst, fa_dtype as, int check_finite);
    /* the largest finite |x| of this rank's last checked read of q, k or v (0 before any) */
    float (*last_absmax)(void *ctx, int which);
    /* the input's identity for --resume (size, mtime; memory: 0, 0) */
    void (*identity)(void *ctx, int64_t *size, int64_t *mtime_ns);
    /* this rank's digests of the k and v rows read since the last call, then reset (memory: 0) */
    void (*take_digests)(void *ctx, uint64_t d[3]);
} pipe_source;

typedef struct pipe_sink {
    void *ctx;
    /* which rank writes the rows of chunk i: every chunk's on rank `writer` (serial HDF5: 0; a
     * memory sink: the rank that receives o), or, where writer < 0, chunk i's on rank i mod P
     * (parallel HDF5: each rank writes its own rows) */
    int writer;
    /* COLLECTIVE (a rank with nothing to write passes n = 0): rows [r0, r0+n) of batch element
     * b, o from [n, H, D] in `as` (FA_F32 or o's own type), lse from [n, H] */
    int (*write_rows)(void *ctx, int64_t b, int64_t r0, int64_t n, const void *o, fa_dtype as,
                      const float *lse);
    /* local, after each write: what was written goes on towards the disk (memory: nothing) */
    void (*flush_behind)(void *ctx);
    /* COLLECTIVE: chunks [0, done) made durable (memory: nothing, 0) */
    int (*checkpoint)(void *ctx, int64_t done);
    /* what the output records of the input for --resume (memory: nothing) */
    void (*note_input)(void *ctx, int64_t size, int64_t mtime_ns);
    void (*note_kv)(void *ctx, int64_t b, uint64_t k, uint64_t v);
    /* 1 with b's digests where the output already records them (a resumed partial), else 0 */
    int (*recorded_kv)(void *ctx, int64_t b, uint64_t *k, uint64_t *v);
} pipe_sink;

/* ---- the HDF5 file (the command's): today's h5in/h5out calls ------------------------------- */
/* direct_read, fused_read: the plan's (h5in_direct_reads, h5in_fused_reads). */
void pipe_source_h5(pipe_source *src, h5in *in, int direct_read, int fused_read);
/* writer: pipe_h5_writer() */
void pipe_sink_h5(pipe_sink *snk, h5out *out);
/* The rank that writes an HDF5 output's rows: 0 where this build's HDF5 is serial, else -1
 * (each chunk's owner). The planner's writer for the command (dist/plan.h). */
int pipe_h5_writer(void);

/* ---- memory (the library's) ------------------------------------------------------------------
 * One tensor in host memory: [B, N, heads, D] (bnhd) or [B, heads, N, D] (bhnd) of `type`, whose
 * row j is position row0 + j (a rank's run of keys; 0 for queries). */
typedef struct {
    const void *x;
    fa_dtype type;
    int bhnd;
    int64_t B, N, heads, D, row0;
    int64_t positions;           /* all positions of the tensor's kind (Nq or Nk): the index a
                                    non-finite value is ranked by across ranks */
} pipe_mem_tensor;

typedef struct {
    pipe_mem_tensor t[3];        /* q, k, v */
    const char *who;             /* the messages' caller: "fa_attention" */
    MPI_Comm comm;               /* a duplicate of the pipeline's: the reads' agreements */
    float absmax[3];
} pipe_mem_source;

/* COLLECTIVE over comm (duplicates it). Rows read are converted from the tensor's type into the
 * asked one with io/convert.c's loops (the file path's), checked finite in float32 (a float64
 * value past float32's range is an error, as in a file) with the largest |x| kept. */
void pipe_source_mem(pipe_source *src, pipe_mem_source *m, const pipe_mem_tensor t[3],
                     MPI_Comm comm, const char *who);
void pipe_source_mem_free(pipe_mem_source *m);   /* COLLECTIVE */

typedef struct {
    void *o;                     /* [B, Nq, H, D] (bnhd) or [B, H, Nq, D] (bhnd) of o_type */
    fa_dtype o_type;             /* FA_F32, FA_F16 or FA_BF16 (rounded to nearest even) */
    int bhnd;
    int64_t B, Nq, H, D;
    float *lse;                  /* [B, H, Nq], or NULL */
} pipe_mem_sink;

/* writer: the rank whose buffers receive every row (>= 0). */
void pipe_sink_mem(pipe_sink *snk, pipe_mem_sink *m, int writer);
