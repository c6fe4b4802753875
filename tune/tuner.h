/* tuner.h — timing configurations on the real engine and picking the fastest (what `fa_long
 * tune` and a run's --tune do). Prints to stdout (`#` lines and `result key=value` lines) when
 * verbose; stores nothing (tune/cache.h does). */
#pragma once
#include "tune/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Measures the machine figures into m when not there (CPU peak, bandwidths and the engine's
 * efficiency, calibrated; GPU: the flash variants' rates, the host link, shared memory, free
 * memory), times the `top` best candidates of the model (and the fixed defaults) on the real
 * engine, best of `reps`, and returns the fastest in best (source "measured", measured_s set).
 * Returns 0 or -1 (fa_seterr). */
int cm_tune_job(const cm_job *j, cm_machine *m, int top, int reps, int verbose, cm_choice *best);
/* Times one configuration on the real engine: the whole job (one rank's share: keys / nranks)
 * in chunks as the pipeline calls it, on random inputs; best of reps (noise on a shared
 * machine only slows runs down), seconds. CPU only. */
double cm_time_cpu(const cm_job *j, const cm_choice *c, int reps);
/* A GPU configuration's time: its chunks on the device (cm_gpu_time_variant on one chunk, or
 * cm_gpu_time_paged when keys page) times the chunks, plus the model's exposed merge; seconds,
 * -1 when it cannot be timed. memo_ok: reuse an earlier timing of the same configuration in
 * this process (0: time again). */
double cm_time_gpu(const cm_job *j, const cm_machine *m, const cm_choice *c, int reps, int memo_ok);
/* One `result kind=KIND br= bc= ... t_merge_all=` line on stdout. */
/* The tune table: a '#'-headed line of column names, then one row per configuration. */
void cm_print_header(void);
void cm_print_result(const char *kind, const cm_choice *c);

#ifdef __cplusplus
}
#endif
