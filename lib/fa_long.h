/* fa_long.h — fa_long as a C library (libfa_long.so / libfa_long.a; pkg-config fa_long).
 *
 * Exact attention o = softmax(scale q kᵀ + mask) v, the same computation as the fa_long command
 * (whose runs are built on this library's objects), on buffers in memory:
 *   fa_attention       one process, the CPU engine (OpenMP threads);
 *   fa_attention_mpi   across an MPI communicator: every rank passes all the queries and its own
 *                      shard of the keys (a contiguous run of key positions, as the command's
 *                      contiguous layout), and gets o and lse merged exactly over every rank's
 *                      keys (the partial softmax states merged in fp32 by one MPI reduction).
 * Shapes (the command's letters): q [B, Nq, H, D], k and v [B, Nk, Hkv, D], H a multiple of Hkv
 * (GQA, MQA), D <= 256; layout FA_LAYOUT_BHND is torch's [B, H, N, D] for q, k, v and o alike.
 * Inputs float32, float16, bfloat16 (uint16 bit patterns) or float64; o float32 in the layout
 * given, lse [B, H, Nq] float32 (natural log; -inf for a row that sees no key, whose o is 0).
 * Masks as the command's (README "Masks"): bottom-right causal, windows (flash-attn's
 * window_size), packed documents (cu_seqlens offsets), softcap, ALiBi slopes.
 *
 * Errors: a non-zero FA_E* return, and fa_long_error() says what in one line (the argument, what
 * was expected; one buffer for the process, the last error). Compile with mpicc (the MPI
 * function's communicator), link with `pkg-config --libs fa_long`. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FA_LONG_API_VERSION 1

typedef enum { FA_LAYOUT_BNHD = 0, FA_LAYOUT_BHND = 1 } fa_long_layout;
/* element types: the values of the command's own (float32, float16, bfloat16, float64) */
typedef enum { FA_ELEM_F32 = 0, FA_ELEM_F16 = 1, FA_ELEM_BF16 = 2, FA_ELEM_F64 = 3 } fa_elem;

enum { FA_OK = 0, FA_EINVAL = 2, FA_EMPI = 3 };

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
} fa_attn_desc;

/* Fills the defaults: full attention, bnhd, float32, scale 1/sqrt(D), no window, no documents. */
void fa_attn_desc_init(fa_attn_desc *d);
/* sizeof(fa_attn_desc) as the library was built (for bindings that lay the struct out again). */
size_t fa_attn_desc_sizeof(void);

/* One process, CPU engine. q [B,Nq,H,D], k, v [B,Nk,Hkv,D] in d->layout and d->dtype; o float32
 * of q's shape in d->layout; lse [B,H,Nq] or NULL. */
int fa_attention(const fa_attn_desc *d, const void *q, const void *k, const void *v, float *o,
                 float *lse);

/* COLLECTIVE over comm (every rank the same desc). Rank r passes all of q and the keys
 * [k_start, k_start + k_rows) of every batch element: k and v of shape [B, k_rows, Hkv, D] (or
 * [B, Hkv, k_rows, D] for bhnd); the runs of all ranks cover [0, Nk) without overlap (checked).
 * o and lse (may be NULL) are written on rank `root`, or on every rank when root < 0. */
int fa_attention_mpi(MPI_Comm comm, const fa_attn_desc *d, const void *q, const void *k,
                     const void *v, int64_t k_start, int64_t k_rows, float *o, float *lse,
                     int root);

const char *fa_long_error(void);     /* the last error's one line ("" after success) */
const char *fa_long_version(void);   /* "fa_long 0.1.0" */

#ifdef __cplusplus
}
#endif
