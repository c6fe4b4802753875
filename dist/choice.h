/* choice.h — TEMPORARY, to be replaced by the run plan: the configuration a run uses, asked for
 * by dist/pipeline.c and dist/engines.c where they need it. The integrator deletes this file (and
 * choice.c) when the planner in runner/ decides once and passes the plan down. */
#pragma once
#include "tune/model.h"
#include "io/h5io.h"
#include "runner/job.h"

/* COLLECTIVE when MPI is up, on the first call: rank 0 runs the tuner first when --tune is given
 * and the cache has no entry for the job (tune/tuner.h, stored in the cache), then decides
 * (tune/choose.h: cache, else model, else defaults); every rank gets its answer, so chunk sizes
 * agree across ranks. Later calls return the same answer. Never fails. */
const cm_choice *cm_run_choice(const fa_job *job, const fa_shape *s, int nranks, int gpu);
