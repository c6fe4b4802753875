/* taylor_engine.h — the Taylor mode (--mode taylor) for the pipeline: engine_create's MODE_TAYLOR
 * branch (dist/engines.c) calls taylor_engine_create; its row counts reach the runner through the
 * pipeline's stats (pipeline_stats.taylor). */
#pragma once
#include <stdint.h>
#include "dist/pipeline.h"

/* CPU (plan->tiling.threads; tiling.br = query rows per tile, 0: 64) or CUDA engine of the Taylor
 * mode, chunks of plan->chunk rows; its collectives (key mean, non-causal state) and merges run
 * over comm. Returns -1 with fa_seterr when it cannot start (no GPU). */
int taylor_engine_create(const run_plan *plan, MPI_Comm comm, int device, int64_t kv_rows,
                         pipe_engine *e);
