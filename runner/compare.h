/* compare.h — the run's mode bookkeeping (runner/compare.c), called from cmd_run (runner/run.c). */
#pragma once
#include "runner/plan.h"
#include "io/h5io.h"
#include "runner/job.h"
#include "dist/pipeline.h"

/* COLLECTIVE, before the output is committed: attribute 'mode' ("exact" or "taylor"); in taylor
 * mode also 'taylor_fallback_rows', 'taylor_zeroed_rows' (st->taylor, the run's engine's counts,
 * summed over ranks), 'taylor_den_floor', and rank 0 prints the fallback count. Returns 0 or -1. */
int mode_attrs(h5out *out, const fa_job *job, const pipeline_stats *st);

/* COLLECTIVE, after the output is committed, with --compare: runs the other mode, writes the
 * per-head relative error as attribute 'compare_rel_err' [H] onto job->output, prints it and
 * hands it back in *rel (H values, malloc'd; for the report). Returns 0, or -1 (the same on every
 * rank) with the message set on rank 0. */
int compare_run(const fa_job *job, const plan_env *env, fa_backend be, const gpu_comm *gc,
                double **rel);
