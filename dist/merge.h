/* merge.h — merging partial attention results across ranks with MPI.
 *
 * A chunk's partial state is n*H records {m, l, o[D]} (kernels/attn.h). One MPI datatype holds one
 * record; one user-defined, commutative MPI_Op merges records (attn_rec_merge: fp32, never NaN
 * from a shard that saw no key). So a chunk's merge is a single MPI_Ireduce (or MPI_Iallreduce) of
 * plain memory, whatever the input element type. */
#pragma once
#include <mpi.h>
#include <stdint.h>

typedef struct {
    MPI_Datatype rec;   /* D+2 contiguous floats */
    MPI_Op op;          /* record merge */
    int d;
} rec_merge;

/* 0, or -1 with the line where MPI cannot make them (a library call; the command fa_fail()s) */
int rec_merge_init(rec_merge *m, int d);
void rec_merge_free(rec_merge *m);

/* The MPI side of a chunk's merge for every engine whose chunk states reach the host (the CPU
 * engines, the CUDA engines without NCCL): one record buffer per pipeline slot, one MPI_Ireduce
 * in flight per slot landing on the rows' owner, and the owner's finalize (rec -> o[D], lse).
 * The engines build their slot calls (pipeline.h: compute, merge_start, merge_wait, fetch) on it. */
typedef struct {
    MPI_Comm comm;
    int rank, slots, heads, d, rec_len;
    MPI_Datatype type;
    MPI_Op op;
    float **rec;             /* [slots] max_rows * heads records */
    MPI_Request *req;        /* [slots] */
    float (*finalize)(void *ctx, const float *rec, float *o);   /* thread-safe; returns lse */
    void *ctx;
} host_merge;

/* 0, or -1 out of memory in a library call (fa_try_*: nothing left allocated; host_merge_free
 * may still be called) */
int host_merge_init(host_merge *m, MPI_Comm comm, int slots, int64_t max_rows, int heads, int d,
                    int rec_len, MPI_Datatype type, MPI_Op op,
                    float (*finalize)(void *ctx, const float *rec, float *o), void *ctx);
void host_merge_free(host_merge *m);
/* COLLECTIVE (every rank, the same slots in the same order): merges the slot's nrows*heads
 * records across ranks into root's buffer (in place there). */
void host_merge_start(host_merge *m, int slot, int64_t nrows, int root);
/* Lets MPI move the merges in flight (the CPU engines call it between work items). */
void host_merge_progress(void *m);
void host_merge_wait(host_merge *m, int slot);
/* On root, after the wait: the slot's rows finalized, o [nrows][heads][d] and lse [nrows][heads]. */
void host_merge_fetch(host_merge *m, int slot, int64_t nrows, float *o, float *lse);

/* The pipeline's slot calls (pipe_engine.merge_start, merge_wait, fetch) for an engine whose
 * context begins with its host_merge. */
int host_merge_slot_start(void *ctx, int slot, int64_t nrows, int root);
int host_merge_slot_wait(void *ctx, int slot);
int host_merge_slot_fetch(void *ctx, int slot, int64_t nrows, void *o, float *lse);   /* o: float32 */
