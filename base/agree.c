/* agree.c — see agree.h. */
#include "base/agree.h"
#include "base/common.h"
#include <limits.h>
#include <stdio.h>

_Thread_local double fa_sync_s = 0;

int fa_agree(MPI_Comm comm, int st, int64_t key) {
    struct { long v; int r; } in, out;
    MPI_Comm_rank(comm, &in.r);
    in.v = st ? (long)(key < 0 ? in.r : key) : LONG_MAX;
    const double t0 = MPI_Wtime();
    MPI_Allreduce(&in, &out, 1, MPI_LONG_INT, MPI_MINLOC, comm);
    fa_sync_s += MPI_Wtime() - t0;
    if (out.v == LONG_MAX) return 0;
    struct { int kind; char msg[1024]; } e;   /* the line and its kind (FA_ERR_*) */
    e.kind = fa_errkind();
    snprintf(e.msg, sizeof e.msg, "%s", fa_errmsg());
    MPI_Bcast(&e, sizeof e, MPI_BYTE, out.r, comm);
    fa_seterr("%s", e.msg);
    return fa_set_errkind(e.kind);
}
