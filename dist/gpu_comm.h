/* gpu_comm.h — binding ranks to GPUs and the NCCL communicator the GPU merge runs on.
 *
 * Rank r of a node drives the node's GPU (local rank mod GPUs), bound once. When every GPU serves
 * one rank and the build has NCCL, the ranks bootstrap NCCL over MPI (rank 0's unique id,
 * broadcast) and merge on the device. When some GPU serves several ranks (NCCL refuses two ranks
 * on one GPU: "Duplicate GPU detected"), detected by comparing device UUIDs across each node, or
 * without NCCL, the communicator stays down and `why` says so. Which merge the job runs is the
 * planner's decision (runner/plan.h: plan_merge), which takes this outcome as an input. */
#pragma once
#include <mpi.h>

typedef struct {
    int device;          /* CUDA device this rank drives */
    int local_rank, local_size;
    int shared;          /* some GPU of the job serves several ranks */
    int nccl;            /* NCCL communicator up */
    const char *why;     /* why it is not up ("" when it is): not asked for, one rank, some GPU
                            serves several ranks, no NCCL in this build */
    void *comm;          /* ncclComm_t */
    int rank, size;
} gpu_comm;

/* COLLECTIVE. want_nccl 0: NCCL is not started. Returns 0, or -1 with fa_seterr (same on all)
 * when the NCCL bootstrap fails (ncclGetUniqueId on rank 0, ncclCommInitRank on any rank): the
 * lowest failing rank's line. A rank that NCCL leaves blocked inside ncclCommInitRank cannot
 * report; a rank that cannot select its CUDA device fa_fail()s. */
int gpu_comm_init(MPI_Comm comm, int want_nccl, gpu_comm *g);
void gpu_comm_free(gpu_comm *g);
