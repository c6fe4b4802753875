/* agree.h — the one rank-agreement collective every floor uses: a status that one rank found is
 * made every rank's, with that rank's message. (Its own header because it needs mpi.h, which the
 * CUDA sources that include base/common.h do not see.) */
#pragma once
#include <stdint.h>
#include <mpi.h>

/* COLLECTIVE over comm. Returns 0 when st == 0 on every rank; otherwise -1 on every rank, with
 * the message (fa_seterr) of the failing rank of smallest key, and its kind (fa_errkind), copied
 * to every rank. key < 0
 * means the rank's own number: the lowest failing rank's message wins. */
int fa_agree(MPI_Comm comm, int st, int64_t key);

/* Seconds this process has waited in agreements and in the barriers and collectives that exist
 * only to wait for the other ranks (the report's "sync" phase, kept out of read and write). */
extern _Thread_local double fa_sync_s;   /* each thread its own (the I/O thread's tasks) */
