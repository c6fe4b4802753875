/* merge.h — merging partial attention results across ranks with MPI.
 *
 * A chunk's partial state is n*H records {m, l, o[D]} (kernels/attn.h). One MPI datatype holds one
 * record; one user-defined, commutative MPI_Op merges records (attn_rec_merge: fp32, never NaN
 * from a shard that saw no key). So a chunk's merge is a single MPI_Ireduce (or MPI_Iallreduce) of
 * plain memory, whatever the input element type. */
#pragma once
#include <mpi.h>

typedef struct {
    MPI_Datatype rec;   /* D+2 contiguous floats */
    MPI_Op op;          /* record merge */
    int d;
} rec_merge;

void rec_merge_init(rec_merge *m, int d);
void rec_merge_free(rec_merge *m);
