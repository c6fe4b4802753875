/* choice.c — TEMPORARY compatibility entry point, to be replaced by the run plan (see choice.h):
 * the getter the pipeline and the engines call today, kept so the program builds and behaves as
 * before until the planner lands. It only adapts: the job to a cm_job, --tune to the tuner, the
 * decision to tune/choose.c, the answer to every rank. */
#include "dist/choice.h"
#include "tune/cache.h"
#include "tune/choose.h"
#include "tune/tuner.h"
#include "base/common.h"
#include <mpi.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The job as the model sees it (the planner will do this). */
static void job_of(const fa_job *job, const fa_shape *s, int nranks, int gpu, cm_job *j) {
    memset(j, 0, sizeof *j);
    j->nq = s->Nq; j->nk = s->Nk;
    j->h = (int)s->H; j->hkv = (int)s->Hkv; j->d = (int)s->D;
    j->causal = job->causal;
    j->gpu = gpu;
    j->elem = gpu ? 2 : 4;
    j->nranks = nranks > 0 ? nranks : 1;
    j->budget = job->device_mem;
    j->dtype = gpu ? (int)job->compute : -1;
    j->threads = job->threads;
}

/* --tune: when the cache has no entry for the job, tune it and store the winner (the choice
 * that follows then reads it from the cache, as every later run does). */
static void tune_first(const cm_job *j, const char *path, int verbose) {
    cm_machine m;
    memset(&m, 0, sizeof m);
    m.threads = j->threads > 0 ? j->threads : omp_get_max_threads();
    cm_device_name(j->gpu, m.threads, m.device, sizeof m.device);
    char key[512];
    cm_cache_key(m.device, j, key, sizeof key);
    cm_cache_machine(path, m.device, &m);
    cm_machine_defaults(&m, j->gpu);
    cm_choice entry;
    if (cm_cache_lookup(path, key, m.device, &entry, 0)) return;
    fa_log(1, "fa_long: --tune: no entry for [%s] in %s: tuning first", key, path);
    cm_choice best;
    if (cm_tune_job(j, &m, 8, 3, verbose, &best) == 0 && !cm_cache_store(path, key, &best, &m))
        fa_log(1, "fa_long: --tune: stored in %s", path);
    else
        fa_warn("--tune: tuning failed (%s); the model's choice", fa_errmsg());
}

const cm_choice *cm_run_choice(const fa_job *job, const fa_shape *s, int nranks, int gpu) {
    static cm_choice chosen;
    static int done = 0;
    if (done) return &chosen;
    done = 1;
    int mpi_on = 0;
    MPI_Initialized(&mpi_on);
    if (!mpi_on || fa_rank == 0) {
        cm_job j;
        job_of(job, s, nranks, gpu, &j);
        char path[4096];
        cm_cache_path(job->tune_cache, getenv("FA_TUNE_CACHE"), getenv("HOME"), path, sizeof path);
        if (job->tune) tune_first(&j, path, job->verbose);
        cm_choose(&j, path, fa_rank == 0, &chosen);
    }
    if (mpi_on && fa_nranks > 1) {
        /* the strings travel by value: each rank's copy points into its own kept names */
        static char keep[3][96];
        char names[3][96];
        memset(names, 0, sizeof names);
        if (fa_rank == 0) {
            snprintf(names[0], sizeof names[0], "%s", chosen.critical ? chosen.critical : "");
            snprintf(names[1], sizeof names[1], "%s", chosen.source ? chosen.source : "");
            snprintf(names[2], sizeof names[2], "%s", chosen.why ? chosen.why : "");
        }
        MPI_Bcast(&chosen, (int)sizeof chosen, MPI_BYTE, 0, MPI_COMM_WORLD);
        MPI_Bcast(names, (int)sizeof names, MPI_CHAR, 0, MPI_COMM_WORLD);
        memcpy(keep, names, sizeof keep);
        chosen.critical = keep[0];
        chosen.source = keep[1];
        chosen.why = keep[2];
    }
    return &chosen;
}
