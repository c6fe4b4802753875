/* merge.c — the MPI datatype and reduction operator for partial attention records. */
#include "dist/merge.h"
#include "kernels/attn.h"
#include "base/common.h"
#include <stdint.h>
#include <stdlib.h>

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

int rec_merge_init(rec_merge *m, int d) {
    m->d = d;
    m->rec = MPI_DATATYPE_NULL;
    m->op = MPI_OP_NULL;
    if (MPI_Type_contiguous(d + 2, MPI_FLOAT, &m->rec) != MPI_SUCCESS ||
        MPI_Type_commit(&m->rec) != MPI_SUCCESS ||
        MPI_Op_create(rec_merge_fn, 1, &m->op) != MPI_SUCCESS) {
        if (!fa_library_call) fa_fail("cannot create the MPI record type and merge operator");
        fa_seterr("fa_long: cannot create the MPI record type and merge operator");
        return fa_set_errkind(FA_ERR_MPI);
    }
    return 0;
}

void rec_merge_free(rec_merge *m) {
    if (m->op != MPI_OP_NULL) MPI_Op_free(&m->op);
    if (m->rec != MPI_DATATYPE_NULL) MPI_Type_free(&m->rec);
}

int host_merge_init(host_merge *m, MPI_Comm comm, int slots, int64_t max_rows, int heads, int d,
                    int rec_len, MPI_Datatype type, MPI_Op op,
                    float (*finalize)(void *ctx, const float *rec, float *o), void *ctx) {
    *m = (host_merge){.comm = comm, .slots = slots, .heads = heads, .d = d, .rec_len = rec_len,
                      .type = type, .op = op, .finalize = finalize, .ctx = ctx};
    MPI_Comm_rank(comm, &m->rank);
    m->rec = fa_try_calloc((size_t)slots, sizeof(float *), "record slots");
    m->req = fa_try_calloc((size_t)slots, sizeof(MPI_Request), "merge requests");
    int ok = m->rec && m->req;
    for (int w = 0; ok && w < slots; w++) m->req[w] = MPI_REQUEST_NULL;
    for (int w = 0; ok && w < slots; w++)
        ok = (m->rec[w] = fa_try_aligned_alloc((size_t)(max_rows * heads * rec_len) * sizeof(float),
                                               "partials")) != NULL;
    if (ok) return 0;
    for (int w = 0; m->rec && w < slots; w++) free(m->rec[w]);   /* a library call out of
                                                                    memory: nothing stays */
    free(m->rec);
    free(m->req);
    m->rec = NULL;
    m->req = NULL;
    return -1;
}

void host_merge_free(host_merge *m) {
    if (!m->rec) return;
    MPI_Waitall(m->slots, m->req, MPI_STATUSES_IGNORE);   /* after an error: the ones in flight */
    for (int w = 0; w < m->slots; w++) free(m->rec[w]);
    free(m->rec);
    free(m->req);
    m->rec = NULL;
}

void host_merge_start(host_merge *m, int slot, int64_t nrows, int root) {
    void *sendbuf = root == m->rank ? MPI_IN_PLACE : m->rec[slot];
    MPI_Ireduce(sendbuf, m->rec[slot], (int)(nrows * m->heads), m->type, m->op, root, m->comm,
                &m->req[slot]);
}

void host_merge_progress(void *arg) {
    host_merge *m = arg;
    int flag;
    MPI_Testall(m->slots, m->req, &flag, MPI_STATUSES_IGNORE);
}

void host_merge_wait(host_merge *m, int slot) { MPI_Wait(&m->req[slot], MPI_STATUS_IGNORE); }

void host_merge_fetch(host_merge *m, int slot, int64_t nrows, float *o, float *lse) {
    const float *rec = m->rec[slot];
    const int64_t n = nrows * m->heads, R = m->rec_len, D = m->d;
#pragma omp parallel for schedule(static) if (n >= 4096)
    for (int64_t r = 0; r < n; r++) lse[r] = m->finalize(m->ctx, rec + r * R, o + r * D);
}

int host_merge_slot_start(void *ctx, int slot, int64_t nrows, int root) {
    host_merge_start(ctx, slot, nrows, root);
    return 0;
}
int host_merge_slot_wait(void *ctx, int slot) {
    host_merge_wait(ctx, slot);
    return 0;
}
int host_merge_slot_fetch(void *ctx, int slot, int64_t nrows, void *o, float *lse) {
    host_merge_fetch(ctx, slot, nrows, o, lse);
    return 0;
}
