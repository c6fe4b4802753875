/* fa_long.h — fa_long as a C library (libfa_long.so / libfa_long.a; pkg-config fa_long).
 *
 * Exact attention o = softmax(scale q kᵀ + mask) v (or its first-order Taylor approximation,
 * mode FA_MODE_TAYLOR) on buffers in memory, computed by the fa_long command's own pipeline
 * (dist/pipeline.c: query chunks, the engine, the merges across ranks) with the buffers as its
 * source and sink instead of HDF5 files: on the same inputs, chunk, tile and threads, o and lse
 * are bit for bit the command's (CPU engine; the CUDA engine is not in the library yet).
 *   fa_attention       one process, the CPU engine (OpenMP threads);
 *   fa_attention_mpi   across an MPI communicator: every rank passes all the queries and its own
 *                      shard of the keys (a contiguous run of key positions), and gets o and lse
 *                      merged exactly over every rank's keys (the command's merges: each chunk's
 *                      partial softmax states reduced in fp32 while the next chunk computes).
 * Shapes (the command's letters): q [B, Nq, H, D], k and v [B, Nk, Hkv, D], H a multiple of Hkv
 * (GQA, MQA), D <= 256; layout FA_LAYOUT_BHND is torch's [B, H, N, D] for q, k, v and o alike.
 * Inputs float32, float16, bfloat16 (uint16 bit patterns) or float64, finite (a NaN or Inf is
 * an FA_EINVAL naming its index, as the command refuses it); o in the layout given and in
 * o_dtype (float32 by default, or float16/bfloat16, rounded to nearest even as the command
 * writes them), lse [B, H, Nq] float32 (natural log; -inf for a row that sees no key, whose o
 * is 0).
 * Masks as the command's (README "Masks"): bottom-right causal, windows (flash-attn's
 * window_size), packed documents (cu_seqlens offsets), softcap, ALiBi slopes.
 *
 * Errors: a non-zero FA_E* return, and fa_long_error() says what in one line (the argument, what
 * was expected; one buffer for the process, the last error). A bad argument or input, and memory
 * the call cannot get (FA_ENOMEM: its buffers, the engine's states), never end the caller's
 * process: the call frees what it took and returns, on every rank of fa_attention_mpi alike.
 * Left ending the process with one line, as the command does: across several ranks, a failure
 * one rank meets alone in the middle of the run (the other ranks would wait for it), and the CPU
 * engine's per-thread tile scratch (a few hundred KiB a thread). Compile with mpicc (the MPI
 * function's communicator), link with `pkg-config --libs fa_long`.
 *
 * MPI: the pipeline runs on a duplicate of the communicator (fa_attention: of MPI_COMM_SELF).
 * fa_attention initializes MPI itself when the caller has not (MPI_Init_thread, FUNNELED; Open
 * MPI as a process of its own, without a singleton daemon) and finalizes it at exit; the
 * process's environment is given back as it was before MPI_Init (Open MPI adds its variables,
 * which would break an mpirun started later from the same process); a process that finalized
 * MPI already gets FA_EMPI. Call the library
 * from the thread that initialized MPI (or with MPI_THREAD_SERIALIZED or better).
 *
 * API versions: 2 appended mode, o_dtype, chunk, tile_rows and tile_keys to fa_attn_desc and
 * made o a void pointer (its type is o_dtype); a program built against version 1 must be
 * compiled again (fa_attn_desc_init fills the larger struct). 3 added the return code FA_ENOMEM
 * (nothing else changed: a program built against version 2 runs as it is). */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FA_LONG_API_VERSION 3

typedef enum { FA_LAYOUT_BNHD = 0, FA_LAYOUT_BHND = 1 } fa_long_layout;
/* element types: the values of the command's own (float32, float16, bfloat16, float64) */
typedef enum { FA_ELEM_F32 = 0, FA_ELEM_F16 = 1, FA_ELEM_BF16 = 2, FA_ELEM_F64 = 3 } fa_elem;

/* exact attention, or the first-order Taylor approximation (the command's --mode taylor: full
 * or causal attention only, Nq == Nk under causal not required) */
typedef enum { FA_MODE_EXACT = 0, FA_MODE_TAYLOR = 1 } fa_long_mode;

/* FA_EINVAL: a bad argument or input; FA_EMPI: MPI not usable (finalized already, or a call of
 * its failed); FA_ENOMEM (since API version 3): out of memory, nothing of the call left
 * allocated; a later call may succeed */
enum { FA_OK = 0, FA_EINVAL = 2, FA_EMPI = 3, FA_ENOMEM = 4 };

typedef struct {
    int64_t batch, nq, nk, heads, kv_heads, head_dim;
    fa_long_layout layout;       /* of q, k, v and o (default bnhd) */
    fa_elem dtype;               /* of q, k and v (default float32) */
    double scale;                /* 0: 1/sqrt(head_dim) */
    int causal;                  /* bottom-right: query i sees keys j <= i + Nk - Nq */
    int64_t window_left, window_right;   /* -1 unbounded (the default); causal means right 0 */
    double softcap;              /* > 0: scores become softcap * tanh(s / softcap) */
    const float *alibi_slopes;   /* [heads], or NULL */
    int64_t ndocs;               /* packed documents per batch element (0: none) */
    int64_t doc_rows;            /* rows of the offset tables: 1 (every batch element) or batch */
    const int64_t *cu_seqlens_q; /* [doc_rows][ndocs+1], 0 .. nq, never decreasing */
    const int64_t *cu_seqlens_k; /* [doc_rows][ndocs+1], 0 .. nk */
    int threads;                 /* OpenMP threads (0: the process's setting) */
    /* since API version 2 */
    fa_long_mode mode;           /* FA_MODE_EXACT (the default) or FA_MODE_TAYLOR */
    fa_elem o_dtype;             /* o's element type: FA_ELEM_F32 (the default), F16 or BF16 */
    int64_t chunk;               /* query rows per chunk (0: min(nq, 4096)): the command's --chunk */
    int tile_rows, tile_keys;    /* the CPU engine's tile (0: its own): the command's --tile */
} fa_attn_desc;

/* Fills the defaults: full attention, exact, bnhd, float32 in and out, scale 1/sqrt(D), no
 * window, no documents, chunk and tile the library's own. */
void fa_attn_desc_init(fa_attn_desc *d);
/* sizeof(fa_attn_desc) as the library was built (for bindings that lay the struct out again). */
size_t fa_attn_desc_sizeof(void);

/* One process, CPU engine. q [B,Nq,H,D], k, v [B,Nk,Hkv,D] in d->layout and d->dtype; o of q's
 * shape in d->layout and d->o_dtype; lse [B,H,Nq] or NULL. */
int fa_attention(const fa_attn_desc *d, const void *q, const void *k, const void *v, void *o,
                 float *lse);

/* COLLECTIVE over comm (every rank the same desc). Rank r passes all of q and the keys
 * [k_start, k_start + k_rows) of every batch element: k and v of shape [B, k_rows, Hkv, D] (or
 * [B, Hkv, k_rows, D] for bhnd); the runs of all ranks cover [0, Nk) without overlap (checked).
 * o and lse (may be NULL) are written on rank `root`, or on every rank when root < 0. */
int fa_attention_mpi(MPI_Comm comm, const fa_attn_desc *d, const void *q, const void *k,
                     const void *v, int64_t k_start, int64_t k_rows, void *o, float *lse,
                     int root);

const char *fa_long_error(void);     /* the last error's one line ("" after success) */
const char *fa_long_version(void);   /* "fa_long 0.1.0" */

#ifdef __cplusplus
}
#endif
