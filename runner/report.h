/* report.h — the job's summary as JSON: configuration, per-phase times (read, compute, merge,
 * write), TFLOP/s, bytes moved, per-rank imbalance, and the check's errors when one ran. Written
 * to --report FILE.json by rank 0 and kept in the output file's `report` attribute. */
#pragma once
#include "dist/pipeline.h"
#include "runner/cli.h"
#include "runner/job.h"

typedef struct {
    char *json;        /* rank 0: the JSON text (malloc'd); other ranks: NULL */
} report;

/* COLLECTIVE: gathers every rank's stats and builds the JSON on rank 0. `check` may be NULL;
 * compare_rel (H values, may be NULL): --compare's per-head relative error against the other mode. */
void report_build(report *r, const fa_job *job, const run_plan *plan, const pipeline_stats *st,
                  const char *compute, double elapsed, const check_result *check,
                  const double *compare_rel);
/* Rank 0: writes the JSON to path (via a temporary file, renamed). -1 with fa_seterr on error. */
int report_write(const report *r, const char *path);
void report_free(report *r);
