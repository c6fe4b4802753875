/* choose.h — the configuration a run uses, decided once (by the run plan) from the tune cache
 * and the cost model. A plain function: not collective, no static state, no tuning, no
 * environment (the caller passes the cache's path, tune/cache.h: cm_cache_path). */
#pragma once
#include "tune/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fills out with, in this order:
 *   the cache entry for the job's key (device: cm_device_name of j->gpu and j->threads), checked
 *   against the job by the model (chunk clamped to the queries; an entry the job's budget cannot
 *   hold is passed over)                                            out->source "cache";
 *   else the model's best candidate, over the cache's [machine] figures or the defaults
 *                                                                   out->source "model";
 *   else (no candidate valid) the fixed defaults                    out->source "defaults".
 * out->why says in a few words why that source. Logs the choice and its predicted terms at
 * --verbose (fa_log level 2); a bad cache file gives one warning line when warn. Never fails:
 * returns 0. */
int cm_choose(const cm_job *j, const char *cache_path, int warn, cm_choice *out);

#ifdef __cplusplus
}
#endif
