/* gpu_comm.c — see gpu_comm.h. */
#include "dist/gpu_comm.h"
#include "kernels/gpu.h"
#include "kernels/gpu_job.h"
#include "base/common.h"
#include "base/agree.h"
#include <stdlib.h>
#include <string.h>
#ifdef FA_HAVE_NCCL
#include "kernels/cuda/checks.h"
#endif

/* Whether two ranks of this node drive the same GPU (by UUID, so CUDA_VISIBLE_DEVICES that
 * renumber devices per rank are seen through). */
static int node_shares_gpu(MPI_Comm node, int device) {
    unsigned char mine[16] = {0};
    if (gpu_uuid(device, mine)) memset(mine, 0xff, sizeof mine);
    int n;
    MPI_Comm_size(node, &n);
    unsigned char *all = fa_malloc((size_t)n * 16, "GPU ids");
    MPI_Allgather(mine, 16, MPI_BYTE, all, 16, MPI_BYTE, node);
    int dup = 0;
    for (int a = 0; a < n && !dup; a++)
        for (int b = a + 1; b < n && !dup; b++) dup = !memcmp(all + 16 * a, all + 16 * b, 16);
    free(all);
    return dup;
}

int gpu_comm_init(MPI_Comm comm, int want_nccl, gpu_comm *g) {
    memset(g, 0, sizeof *g);
    MPI_Comm_rank(comm, &g->rank);
    MPI_Comm_size(comm, &g->size);
    MPI_Comm node;
    MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, g->rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &g->local_rank);
    MPI_Comm_size(node, &g->local_size);
    int ndev = gpu_count();
    g->device = ndev > 0 ? g->local_rank % ndev : 0;
    int shared = ndev > 0 ? node_shares_gpu(node, g->device) : 0;
    MPI_Comm_free(&node);
    MPI_Allreduce(MPI_IN_PLACE, &shared, 1, MPI_INT, MPI_MAX, comm);
    g->shared = shared;
#ifdef FA_HAVE_NCCL
    int nccl_ok = want_nccl && !shared && g->size > 1;
#else
    int nccl_ok = 0;
#endif
    g->why = nccl_ok ? "" : !want_nccl ? "not asked for" : g->size < 2 ? "one rank"
           : shared ? "some GPU serves several ranks (NCCL refuses two ranks on one GPU)"
           : "this build has no NCCL";
    if (!nccl_ok) return 0;
#ifdef FA_HAVE_NCCL
    setenv("NCCL_NVLS_ENABLE", "0", 1);    /* never NVLink multicast (see README) */
    /* the bootstrap's failures are agreed, so every rank returns -1 with the same line instead of
     * waiting in the broadcast or in ncclCommInitRank for a rank that is not coming */
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r;
    int st = 0;
    if (g->rank == 0 && (r = ncclGetUniqueId(&id)) != ncclSuccess)
        st = fa_seterr("NCCL: ncclGetUniqueId failed on rank 0: %s (--no-nccl merges through MPI)", ncclGetErrorString(r));
    if (fa_agree(comm, st, -1)) return -1;
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm);
    if (cudaSetDevice(g->device) != cudaSuccess) fa_fail("cannot use CUDA device %d", g->device);
    ncclComm_t c = NULL;
    if ((r = ncclCommInitRank(&c, g->size, id, g->rank)) != ncclSuccess)
        st = fa_seterr("NCCL: ncclCommInitRank of %d ranks failed on rank %d: %s (--no-nccl merges through MPI)", g->size,
                       g->rank, ncclGetErrorString(r));
    if (fa_agree(comm, st, -1)) {
        if (!st) ncclCommAbort(c);    /* this rank's end of a communicator that another rank lacks */
        return -1;
    }
    g->comm = c;
    g->nccl = 1;
    fa_log(2, "fa_long: NCCL communicator of %d ranks up; merging on the GPUs", g->size);
#endif
    return 0;
}

void gpu_comm_free(gpu_comm *g) {
#ifdef FA_HAVE_NCCL
    if (g->nccl && g->comm) ncclCommDestroy((ncclComm_t)g->comm);
#endif
    g->comm = NULL;
    g->nccl = 0;
}
