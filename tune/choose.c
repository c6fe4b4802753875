/* choose.c — see choose.h. */
#include "tune/choose.h"
#include "tune/cache.h"
#include "base/common.h"
#include <omp.h>
#include <stdlib.h>
#include <string.h>

/* --verbose: the choice and the predicted time of each term */
static void log_choice(const cm_job *j, const cm_choice *c) {
    if (j->gpu)
        fa_log(2, "fa_long: tune: %s choice: variant %d, chunk %lld rows, %d merges in flight, key blocks %lld "
                  "rows x %d; predicted %.4f s (compute %.4f, paging %.4f, merge exposed %.4f): "
                  "critical resource %s",
               c->source, c->variant, (long long)c->chunk, c->merges_in_flight, (long long)c->block_rows,
               c->ring, c->t_total, c->t_compute, c->t_page, c->t_merge, c->critical);
    else
        fa_log(2, "fa_long: tune: %s choice: tile %dx%d, %d threads, chunk %lld rows, %d merges in flight; "
                  "predicted %.4f s (compute %.4f, memory %.4f, merge exposed %.4f): critical "
                  "resource %s",
               c->source, c->br, c->bc, c->threads, (long long)c->chunk, c->merges_in_flight, c->t_total,
               c->t_compute, c->t_memory, c->t_merge, c->critical);
}

int cm_choose(const cm_job *j, const char *cache_path, int warn, cm_choice *out) {
    cm_choice chosen;
    memset(&chosen, 0, sizeof chosen);
    cm_machine m;
    char key[512];
    cm_job_machine_key(j, &m, key, sizeof key);
    const int have_machine = cm_cache_machine(cache_path, m.device, &m);
    int rejected = 0;                   /* a cache entry the model found invalid for this job */
    cm_machine_defaults(&m, j->gpu);

    /* 1. the cache's entry, when the model finds it valid for this job; for a CPU whose entry was
     * tuned for another share of the node (another thread count a rank), the nearest share's;
     * else the entry of another compute type (dtype) for the same device and job */
    char near[512] = "";
    int hit = cm_cache_lookup(cache_path, key, m.device, &chosen, 0);
    if (!hit && cm_cache_nearest(cache_path, key, near, sizeof near) &&
        cm_cache_lookup(cache_path, near, m.device, &chosen, warn)) {
        hit = 1;
        chosen.threads = m.threads;     /* its tiles and chunk, this rank's own threads */
        fa_log(1, "fa_long: tune cache: no entry for %d threads a rank; using the nearest, [%s] "
                  "(fa_long tune --ranks-per-node N tunes for N ranks a node)", m.threads, near);
    } else if (!hit && cm_cache_other_dtype(cache_path, key, near, sizeof near) &&
               cm_cache_lookup(cache_path, near, m.device, &chosen, warn)) {
        hit = 1;
        fa_log(1, "fa_long: tune cache: no entry for %s compute; using the entry for another type, "
                  "[%s] (fa_long tune --dtype %s tunes for it)", cm_dtype_name(j->dtype), near,
               cm_dtype_name(j->dtype));
    } else if (!hit) {
        hit = cm_cache_lookup(cache_path, key, m.device, &chosen, warn);
    }
    if (hit) {
        if (!chosen.threads) chosen.threads = m.threads;
        if (chosen.chunk > j->nq) chosen.chunk = j->nq;
        if (chosen.br > chosen.chunk) chosen.br = (int)chosen.chunk;
        const double measured = chosen.measured_s;
        cm_choice check = chosen;
        const int ok = cm_predict(&m, j, &check);
        fa_log(2, "fa_long: tune: %s from %s [%s] (measured %.4f s by fa_long tune)%s", "choice",
               cache_path, key, measured, ok ? "" : "; not valid for this job's budget, model instead");
        if (ok) {
            check.source = "cache";
            check.why = "the tune cache's entry for this job";
            check.measured_s = measured;
            log_choice(j, &check);
            *out = check;
            return 0;
        }
        memset(&chosen, 0, sizeof chosen);
        rejected = 1;
    } else {
        fa_log(2, "fa_long: tune: no entry for [%s] in %s: the model's choice (machine figures: %s)",
               key, cache_path, have_machine ? "measured by fa_long tune" : "defaults");
    }

    /* 2. the model's best candidate; 3. nothing valid: the fixed defaults, say so */
    cm_choice *cand = fa_malloc(sizeof(cm_choice) * 2048, "candidates");
    const int n = cm_candidates(&m, j, cand, 2048);
    if (n > 0) {
        chosen = cand[0];
        chosen.why = rejected       ? "the cache's entry is not valid for this job: the model's best"
                   : have_machine ? "the model's best, over the figures fa_long tune measured"
                                  : "the model's best, over default machine figures";
    } else {
        cm_fixed_defaults(j, m.threads, &chosen);
        cm_predict(&m, j, &chosen);
        chosen.source = "defaults";
        chosen.why = "no configuration of the model is valid for this job";
    }
    free(cand);
    log_choice(j, &chosen);
    *out = chosen;
    return 0;
}
