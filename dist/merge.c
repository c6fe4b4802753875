/* merge.c — the MPI datatype and reduction operator for partial attention records. */
#include "dist/merge.h"
#include "kernels/attn.h"
#include "base/common.h"

/* MPI calls this with whole records (the datatype is one record); D follows from its size. */
static void rec_merge_fn(void *in, void *inout, int *len, MPI_Datatype *dt) {
    int bytes = 0;
    MPI_Type_size(*dt, &bytes);
    int d = bytes / (int)sizeof(float) - 2;
    const float *a = in;
    float *b = inout;
    for (int i = 0; i < *len; i++)
        attn_rec_merge(b + (int64_t)i * (d + 2), a + (int64_t)i * (d + 2), d);
}

void rec_merge_init(rec_merge *m, int d) {
    m->d = d;
    if (MPI_Type_contiguous(d + 2, MPI_FLOAT, &m->rec) != MPI_SUCCESS ||
        MPI_Type_commit(&m->rec) != MPI_SUCCESS ||
        MPI_Op_create(rec_merge_fn, 1, &m->op) != MPI_SUCCESS)
        fa_fail("cannot create the MPI record type and merge operator");
}

void rec_merge_free(rec_merge *m) {
    MPI_Op_free(&m->op);
    MPI_Type_free(&m->rec);
}
