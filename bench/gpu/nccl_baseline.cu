/* nccl_baseline.cu — the NCCL baseline for the scaling run (issue 6): on every GPU of this node,
 * one process (ncclCommInitAll), the two collectives of fa_long's device merge with the merge's
 * own sizes, timed with CUDA events:
 *   Reduce(sum, fp32) of one chunk's records   n·H·(D+2)·4 bytes   (n = 8192, H = 32, D = 128: 136 MB)
 *   AllReduce(max, fp32) of its row maxima      n·H·4 bytes         (1 MB)
 * and, as the reference every NCCL user knows, AllReduce(sum) of the records' size.
 * Prints one line per collective: bytes, median time of `reps`, algorithm bandwidth (bytes / time)
 * and bus bandwidth (NCCL's convention: x 2(P-1)/P for all-reduce, x 1 for reduce).
 *
 *   nvcc -O2 -o build/bench/nccl_baseline bench/gpu/nccl_baseline.cu -lnccl
 *   NCCL_NVLS_ENABLE=0 build/bench/nccl_baseline [n H D reps]                               */
#include <cuda_runtime.h>
#include <nccl.h>
#include <algorithm>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "nccl_baseline: %s: %s\n", #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define NK(x) do { ncclResult_t r_ = (x); if (r_ != ncclSuccess) { fprintf(stderr, "nccl_baseline: %s: %s\n", #x, ncclGetErrorString(r_)); exit(1); } } while (0)

enum { REDUCE, ALLREDUCE_MAX, ALLREDUCE_SUM };

static double run(int kind, size_t count, int ng, const std::vector<ncclComm_t> &comms,
                  const std::vector<cudaStream_t> &st, const std::vector<float *> &buf, int reps) {
    std::vector<float> ms;
    cudaEvent_t a, b;
    CK(cudaSetDevice(0));
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int r = -1; r < reps; r++) {                 /* r = -1: warm-up */
        for (int g = 0; g < ng; g++) { CK(cudaSetDevice(g)); CK(cudaStreamSynchronize(st[g])); }
        CK(cudaSetDevice(0));
        CK(cudaEventRecord(a, st[0]));
        NK(ncclGroupStart());
        for (int g = 0; g < ng; g++) {
            if (kind == REDUCE) NK(ncclReduce(buf[g], buf[g], count, ncclFloat, ncclSum, 0, comms[g], st[g]));
            else NK(ncclAllReduce(buf[g], buf[g], count, ncclFloat, kind == ALLREDUCE_MAX ? ncclMax : ncclSum, comms[g], st[g]));
        }
        NK(ncclGroupEnd());
        for (int g = 1; g < ng; g++) { CK(cudaSetDevice(g)); CK(cudaStreamSynchronize(st[g])); }
        CK(cudaSetDevice(0));
        CK(cudaEventRecord(b, st[0]));
        CK(cudaEventSynchronize(b));
        float t = 0;
        CK(cudaEventElapsedTime(&t, a, b));
        if (r >= 0) ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2] * 1e-3;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 8192, h = argc > 2 ? atol(argv[2]) : 32, d = argc > 3 ? atol(argv[3]) : 128;
    int reps = argc > 4 ? atoi(argv[4]) : 20;
    int ng = 0;
    CK(cudaGetDeviceCount(&ng));
    if (ng < 2) { fprintf(stderr, "nccl_baseline: %d GPU(s); a collective needs at least 2\n", ng); return 2; }
    const size_t rec = (size_t)n * h * (d + 2), mx = (size_t)n * h;
    std::vector<ncclComm_t> comms(ng);
    std::vector<int> devs(ng);
    for (int g = 0; g < ng; g++) devs[g] = g;
    NK(ncclCommInitAll(comms.data(), ng, devs.data()));
    std::vector<cudaStream_t> st(ng);
    std::vector<float *> buf(ng);
    for (int g = 0; g < ng; g++) {
        CK(cudaSetDevice(g));
        CK(cudaStreamCreate(&st[g]));
        CK(cudaMalloc(&buf[g], rec * sizeof(float)));
        CK(cudaMemset(buf[g], 0, rec * sizeof(float)));
    }
    cudaDeviceProp pr;
    CK(cudaGetDeviceProperties(&pr, 0));
    int ver = 0;
    NK(ncclGetVersion(&ver));
    printf("# nccl_baseline: %d x %s, NCCL %d, n=%ld H=%ld D=%ld, median of %d\n", ng, pr.name, ver, n, h, d, reps);
    printf("collective,gpus,bytes,time_s,algbw_gbps,busbw_gbps\n");
    const struct { int kind; size_t count; const char *name; } cases[3] = {
        {REDUCE, rec, "reduce_sum_records"}, {ALLREDUCE_MAX, mx, "allreduce_max_rowmax"},
        {ALLREDUCE_SUM, rec, "allreduce_sum_records"}};
    for (int c = 0; c < 3; c++) {
        double t = run(cases[c].kind, cases[c].count, ng, comms, st, buf, reps);
        double bytes = (double)cases[c].count * 4, alg = bytes / t / 1e9;
        double bus = cases[c].kind == REDUCE ? alg : alg * 2.0 * (ng - 1) / ng;
        printf("%s,%d,%.0f,%.6f,%.1f,%.1f\n", cases[c].name, ng, bytes, t, alg, bus);
    }
    for (int g = 0; g < ng; g++) { ncclCommDestroy(comms[g]); cudaSetDevice(g); cudaFree(buf[g]); }
    return 0;
}
