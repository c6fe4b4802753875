/* io_worker.h — one rank's I/O thread: the pipeline hands it the HDF5 reads and writes (and the
 * collectives they make) as tasks, which it runs one at a time in the order they were submitted,
 * while the rank's own thread computes and merges. Every HDF5 call of a run goes through it, so
 * the library is only ever entered from one thread; every rank submits the same tasks in the same
 * order, so the tasks' collectives match across ranks. The collectives a task makes must use
 * communicators of their own (the HDF5 handles' duplicates, the pipeline's I/O communicator):
 * never one the rank's thread uses at the same time.
 *
 * Once a task fails (returns -1 with fa_seterr), the tasks after it are not run: they fail with
 * its message. A task's failure must be agreed across ranks (the HDF5 layer's collective calls
 * are), so every rank skips the same tasks.
 *
 * Without a thread (io_worker_start with threads == 0, or MPI below MPI_THREAD_MULTIPLE) a task
 * runs at once inside io_submit: the same code path, in series. */
#pragma once
#include <stdint.h>

typedef struct io_worker io_worker;
typedef int (*io_task_fn)(void *arg);

/* Starts the thread (threaded != 0) with omp_threads OpenMP threads for the tasks' own parallel
 * loops (conversion, scans); threaded == 0: tasks run inline. Never fails (fa_fail). */
io_worker *io_worker_start(int threaded, int omp_threads);
/* Queues fn(arg) (arg must stay valid until the task is waited for); returns its ticket. Blocks
 * while the queue is full. */
int64_t io_submit(io_worker *w, io_task_fn fn, void *arg);
/* Waits until task `ticket` (and so every task before it) has run; returns its status: 0, or -1
 * with its message set (fa_seterr) in the calling thread. *waited (optional) += the seconds this
 * call blocked. */
int io_wait(io_worker *w, int64_t ticket, double *waited);
/* Waits for every submitted task; returns the first failure's status (0 if none). */
int io_drain(io_worker *w, double *waited);
/* Drains and stops the thread; frees w. */
void io_worker_stop(io_worker *w);
/* Whether w runs its tasks on a thread of its own. */
int io_worker_threaded(const io_worker *w);
