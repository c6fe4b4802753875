/* io_worker.c — the rank's I/O thread (see io_worker.h): a queue of tasks under one mutex, run in
 * order by one pthread; the first failure's message is kept for the tasks skipped after it and
 * for every wait that reaches it. */
#include "dist/io_worker.h"
#include "base/common.h"
#include <omp.h>
#include <pthread.h>
#include <string.h>

#define QCAP 32

struct io_worker {
    int threaded, omp_threads;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t more, done_cv;
    io_task_fn fn[QCAP];
    void *arg[QCAP];
    int64_t submitted, done;     /* tickets [done, submitted) are queued or running */
    int quit;
    int64_t failed_at;           /* the first failed ticket, or -1 */
    char msg[1024];              /* its message */
};

/* Runs ticket t's task (the caller holds no lock); records a failure. */
static void run_task(io_worker *w, io_task_fn fn, void *arg, int64_t t) {
    int skip, rc = 0;
    pthread_mutex_lock(&w->mu);
    skip = w->failed_at >= 0;
    pthread_mutex_unlock(&w->mu);
    if (!skip) rc = fn(arg);
    pthread_mutex_lock(&w->mu);
    if (rc && w->failed_at < 0) {
        w->failed_at = t;
        snprintf(w->msg, sizeof w->msg, "%s", fa_errmsg());
    }
    w->done = t + 1;
    pthread_cond_broadcast(&w->done_cv);
    pthread_mutex_unlock(&w->mu);
}

static void *worker_main(void *p) {
    io_worker *w = p;
    omp_set_num_threads(w->omp_threads > 0 ? w->omp_threads : 1);
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->done == w->submitted && !w->quit) pthread_cond_wait(&w->more, &w->mu);
        if (w->done == w->submitted) break;              /* quit with nothing queued */
        int64_t t = w->done;
        io_task_fn fn = w->fn[t % QCAP];
        void *arg = w->arg[t % QCAP];
        pthread_mutex_unlock(&w->mu);
        run_task(w, fn, arg, t);
        pthread_mutex_lock(&w->mu);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

io_worker *io_worker_start(int threaded, int omp_threads) {
    io_worker *w = fa_calloc(1, sizeof *w, "I/O worker");
    w->threaded = threaded;
    w->omp_threads = omp_threads;
    w->failed_at = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->more, NULL);
    pthread_cond_init(&w->done_cv, NULL);
    if (threaded && pthread_create(&w->thread, NULL, worker_main, w))
        fa_fail("cannot start the I/O thread");
    return w;
}

int io_worker_threaded(const io_worker *w) { return w->threaded; }

int64_t io_submit(io_worker *w, io_task_fn fn, void *arg) {
    pthread_mutex_lock(&w->mu);
    int64_t t = w->submitted;
    if (!w->threaded) {
        w->submitted = t + 1;
        pthread_mutex_unlock(&w->mu);
        run_task(w, fn, arg, t);
        return t;
    }
    while (w->submitted - w->done >= QCAP) pthread_cond_wait(&w->done_cv, &w->mu);
    w->fn[t % QCAP] = fn;
    w->arg[t % QCAP] = arg;
    w->submitted = t + 1;
    pthread_cond_signal(&w->more);
    pthread_mutex_unlock(&w->mu);
    return t;
}

int io_wait(io_worker *w, int64_t ticket, double *waited) {
    double t0 = fa_now();
    pthread_mutex_lock(&w->mu);
    while (w->done <= ticket) pthread_cond_wait(&w->done_cv, &w->mu);
    int rc = w->failed_at >= 0 && w->failed_at <= ticket ? -1 : 0;
    if (rc) fa_seterr("%s", w->msg);
    pthread_mutex_unlock(&w->mu);
    if (waited) *waited += fa_now() - t0;
    return rc;
}

int io_drain(io_worker *w, double *waited) {
    pthread_mutex_lock(&w->mu);
    int64_t last = w->submitted - 1;
    pthread_mutex_unlock(&w->mu);
    return last < 0 ? 0 : io_wait(w, last, waited);
}

void io_worker_stop(io_worker *w) {
    if (!w) return;
    if (w->threaded) {
        pthread_mutex_lock(&w->mu);
        w->quit = 1;
        pthread_cond_signal(&w->more);
        pthread_mutex_unlock(&w->mu);
        pthread_join(w->thread, NULL);
    }
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->more);
    pthread_cond_destroy(&w->done_cv);
    free(w);
}
