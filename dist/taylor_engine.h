/* taylor_engine.h — the Taylor mode (--mode taylor) for the pipeline: engine_create's MODE_TAYLOR
 * branch (dist/engines.c) calls taylor_engine_create; the runner reads the row counts afterwards. */
#pragma once
#include <stdint.h>
#include "dist/pipeline.h"

/* Rows this process finalized since the last taylor_engine_create, by kind (kernels/taylor.h). */
typedef struct {
    int64_t rows;        /* (row, head) records finalized */
    int64_t fallback;    /* denominator <= TAYLOR_DEN_FLOOR * N_i (or not finite): o = mean of v */
    int64_t zeroed;      /* o not finite even then: o = 0 */
    int64_t empty;       /* no key visible: o = 0, lse = -inf */
} taylor_row_counts_t;

/* CPU (plan->tiling.threads; tiling.br = query rows per tile, 0: 64) or CUDA engine of the Taylor
 * mode, chunks of plan->chunk rows. Returns -1 with fa_seterr when it cannot start (no GPU). */
int taylor_engine_create(const run_plan *plan, MPI_Comm comm, int device, int64_t kv_rows,
                         pipe_engine *e);
void taylor_engine_counts(taylor_row_counts_t *out);
