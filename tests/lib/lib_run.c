/* lib_run.c — runs the library on arrays in files, for tests/test_library.py (which builds it with
 * mpicc against build/libfa_long.so and starts it under mpirun):
 *
 *   lib_run DIR key=value...
 *
 * DIR holds q.bin, k.bin, v.bin: the whole tensors' raw bytes in the descriptor's layout and
 * dtype (and slopes.bin float32 [heads] with alibi=1, cu_q.bin and cu_k.bin int64 with ndocs=N).
 * Keys: the fa_attn_desc fields of the same names (batch nq nk heads kv_heads head_dim layout
 * dtype scale causal window_left window_right softcap ndocs doc_rows threads mode o_dtype chunk
 * tile_rows tile_keys), alibi=0|1, root=R (fa_attention_mpi's root; -1 every rank), api=mpi|one
 * (fa_attention_mpi over MPI_COMM_WORLD, or fa_attention on each rank alone). Rank r holds the
 * keys [r*nk/P, (r+1)*nk/P) (the command's contiguous shard). Every rank that receives o writes
 * DIR/o<r>.bin and DIR/lse<r>.bin. A failed call prints "rank r: rc N: <the library's line>" on
 * stderr and exits with N.
 * oom_rank=R oom_margin=BYTES: a first call with rank R's address space limited (RLIMIT_AS) to
 * what it maps plus BYTES, which prints "rank r: first call rc N: <line>" on every rank; then,
 * the limit lifted, the call as above. */
#include "fa_long.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* the process's address space (VmSize), bytes */
static long long vm_size(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %lld", &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024;
}

static void *slurp(const char *dir, const char *name, size_t *len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(*len ? *len : 1);
    if (fread(p, 1, *len, f) != *len) { perror(path); exit(1); }
    fclose(f);
    return p;
}

static void spit(const char *dir, const char *name, int r, const void *p, size_t len) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s%d.bin", dir, name, r);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, len, f) != len) { perror(path); exit(1); }
    fclose(f);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int me, np;
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &np);
    const char *dir = argv[1];
    fa_attn_desc d;
    fa_attn_desc_init(&d);
    int root = -1, alibi = 0, one = 0, oom_rank = -1;
    long long oom_margin = 0;
    for (int i = 2; i < argc; i++) {
        char key[64];
        double x;
        if (sscanf(argv[i], "%63[^=]=%lf", key, &x) != 2) {
            if (!strcmp(argv[i], "api=one")) { one = 1; continue; }
            if (!strcmp(argv[i], "api=mpi")) continue;
            fprintf(stderr, "lib_run: bad argument %s\n", argv[i]);
            return 1;
        }
#define SET(f) if (!strcmp(key, #f)) { d.f = (__typeof__(d.f))x; continue; }
        SET(batch) SET(nq) SET(nk) SET(heads) SET(kv_heads) SET(head_dim) SET(layout) SET(dtype)
        SET(scale) SET(causal) SET(window_left) SET(window_right) SET(softcap) SET(ndocs)
        SET(doc_rows) SET(threads) SET(mode) SET(o_dtype) SET(chunk) SET(tile_rows) SET(tile_keys)
        if (!strcmp(key, "root")) { root = (int)x; continue; }
        if (!strcmp(key, "alibi")) { alibi = (int)x; continue; }
        if (!strcmp(key, "oom_rank")) { oom_rank = (int)x; continue; }
        if (!strcmp(key, "oom_margin")) { oom_margin = (long long)x; continue; }
        fprintf(stderr, "lib_run: unknown key %s\n", key);
        return 1;
    }
    const size_t es = d.dtype == FA_ELEM_F32 ? 4 : d.dtype == FA_ELEM_F64 ? 8 : 2;
    const size_t os = d.o_dtype == FA_ELEM_F32 ? 4 : 2;
    size_t lq, lk, lv, len;
    char *q = slurp(dir, "q.bin", &lq), *k = slurp(dir, "k.bin", &lk), *v = slurp(dir, "v.bin", &lv);
    if (alibi) d.alibi_slopes = slurp(dir, "slopes.bin", &len);
    if (d.ndocs > 0) {
        d.cu_seqlens_q = slurp(dir, "cu_q.bin", &len);
        d.cu_seqlens_k = slurp(dir, "cu_k.bin", &len);
    }
    /* this rank's keys: rows [lo, hi) of every batch element, in the layout */
    const int64_t lo = one ? 0 : d.nk * me / np, hi = one ? d.nk : d.nk * (me + 1) / np, n = hi - lo;
    const int64_t B = d.batch, Hkv = d.kv_heads, D = d.head_dim, N = d.nk;
    char *ks = malloc((size_t)(B * Hkv * (n ? n : 1) * D) * es), *vs = malloc((size_t)(B * Hkv * (n ? n : 1) * D) * es);
    for (int64_t b = 0; b < B; b++)
        for (int64_t g = 0; g < Hkv; g++)
            for (int64_t j = 0; j < n; j++) {
                const int64_t src = d.layout == FA_LAYOUT_BHND ? ((b * Hkv + g) * N + lo + j) * D
                                                               : ((b * N + lo + j) * Hkv + g) * D;
                const int64_t dst = d.layout == FA_LAYOUT_BHND ? ((b * Hkv + g) * n + j) * D
                                                               : ((b * n + j) * Hkv + g) * D;
                memcpy(ks + dst * es, k + src * es, (size_t)D * es);
                memcpy(vs + dst * es, v + src * es, (size_t)D * es);
            }
    const size_t no = (size_t)(B * d.nq * d.heads * D), nl = (size_t)(B * d.heads * d.nq);
    void *o = malloc(no * os);
    float *lse = malloc(nl * sizeof(float));
    struct rlimit was;
    getrlimit(RLIMIT_AS, &was);
    if (oom_rank >= 0) {
        if (me == oom_rank) {
            struct rlimit low = {(rlim_t)(vm_size() + oom_margin), was.rlim_max};
            if (setrlimit(RLIMIT_AS, &low)) { perror("setrlimit"); return 1; }
        }
        int rc = one ? fa_attention(&d, q, k, v, o, lse)
                     : fa_attention_mpi(MPI_COMM_WORLD, &d, q, ks, vs, lo, n, o, lse, root);
        fprintf(stderr, "rank %d: first call rc %d: %s\n", me, rc, fa_long_error());
        if (me == oom_rank) setrlimit(RLIMIT_AS, &was);
    }
    int rc = one ? fa_attention(&d, q, k, v, o, lse)
                 : fa_attention_mpi(MPI_COMM_WORLD, &d, q, ks, vs, lo, n, o, lse, root);
    if (rc) {
        fprintf(stderr, "rank %d: rc %d: %s\n", me, rc, fa_long_error());
        MPI_Finalize();
        return rc;
    }
    if (one || root < 0 || me == root) {
        spit(dir, "o", me, o, no * os);
        spit(dir, "lse", me, lse, nl * sizeof(float));
    }
    MPI_Finalize();
    return 0;
}
