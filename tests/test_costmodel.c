/* test_costmodel.c — the cost model and the tune cache (tune/model.c, tune/cache.c), without a GPU:
 *   - the cache round-trips; corrupt, truncated (at every byte), foreign-version, bad-value and
 *     other-device files are ignored (lookup finds nothing), never a crash; a store keeps the
 *     other entries and replaces its own; version 1 files (merges in flight as `window`) read
 *     and are kept beside a new entry; another dtype's entry is found for a run without its own;
 *   - property: over many random job shapes and device budgets, every candidate the model
 *     offers is valid (CPU tiles within L2; GPU plans within the budget, variant within shared
 *     memory, at least 2 chunks per rank with several ranks), and the best is never predicted
 *     slower than the fixed defaults;
 *   - the model's terms move the right way (N^2 scaling, causal about half, paging and merge
 *     named critical when the link or network is made slow). */
#include "tune/cache.h"
#include "tune/model.h"
#include "kernels/paging.h"
#include "base/common.h"
#include "tests/testing.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* a fixed-seed sequence: the same random jobs every run */
static uint64_t jobs_rng = 12345;
static uint64_t next(void) { jobs_rng ^= jobs_rng << 13; jobs_rng ^= jobs_rng >> 7; jobs_rng ^= jobs_rng << 17; return jobs_rng; }
static int64_t pick(const int64_t *a, int n) { return a[next() % (uint64_t)n]; }

static void write_file(const char *path, const char *text, size_t len) {
    FILE *f = fopen(path, "wb");
    fwrite(text, 1, len, f);
    fclose(f);
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*len + 1);
    *len = fread(b, 1, *len, f);
    b[*len] = 0;
    fclose(f);
    return b;
}

static void test_cache(void) {
    char path[256];
    snprintf(path, sizeof path, "/tmp/fa_test_costmodel_%d/sub/tune.txt", (int)getpid());
    cm_machine m;
    memset(&m, 0, sizeof m);
    m.threads = 2;
    snprintf(m.device, sizeof m.device, "cpu Test CPU x2");
    cm_machine_defaults(&m, 0);
    cm_job j = {.nq = 4096, .nk = 4096, .h = 8, .hkv = 2, .d = 64, .causal = 1, .elem = 4,
                .nranks = 1, .dtype = -1};
    char key[512], key2[512], other[512];
    cm_cache_key(m.device, &j, key, sizeof key);
    cm_job j2 = j;
    j2.d = 128;
    cm_cache_key(m.device, &j2, key2, sizeof key2);
    cm_cache_key("cpu Other CPU x2", &j, other, sizeof other);
    CHECK(strstr(key, "d=64") && strstr(key, "causal=1") && strstr(key, "gqa=4") &&
          strstr(key, "float32"), "key names D, causal, GQA, dtype: %s", key);

    cm_choice c = {.br = 16, .bc = 256, .threads = 2, .chunk = 2048, .merges_in_flight = 3,
                   .measured_s = 0.125, .t_total = 0.13, .critical = "compute"}, r;
    CHECK(cm_cache_lookup(path, key, m.device, &r, 0) == 0, "missing file: nothing found");
    CHECK(cm_cache_store(path, key, &c, &m) == 0, "store creates the folders: %s", fa_errmsg());
    memset(&r, 0, sizeof r);
    CHECK(cm_cache_lookup(path, key, m.device, &r, 0) == 1 && r.br == 16 && r.bc == 256 &&
          r.chunk == 2048 && r.merges_in_flight == 3 && r.threads == 2 && fabs(r.measured_s - 0.125) < 1e-6 &&
          !strcmp(r.source, "cache"), "round trip (br %d bc %d chunk %lld)", r.br, r.bc,
          (long long)r.chunk);
    cm_machine mm;
    memset(&mm, 0, sizeof mm);
    m.cpu_gflops = 123.45;
    CHECK(cm_cache_store(path, key, &c, &m) == 0 && cm_cache_machine(path, m.device, &mm) == 1 &&
          fabs(mm.cpu_gflops - 123.45) < 0.01 && fabs(mm.cpu_eff - m.cpu_eff) < 1e-3 && mm.threads == 2,
          "machine figures round trip (%.2f GFLOP/s)", mm.cpu_gflops);
    memset(&mm, 0, sizeof mm);
    CHECK(cm_cache_machine(path, "cpu Other CPU x2", &mm) == 0 && mm.cpu_gflops == 0,
          "no machine figures for another device");
    CHECK(cm_cache_lookup(path, key2, m.device, &r, 0) == 0, "another D: not found");
    CHECK(cm_cache_lookup(path, other, "cpu Other CPU x2", &r, 0) == 0, "another device: not found");
    /* a second entry keeps the first; storing the first again replaces it */
    cm_choice c2 = c;
    c2.br = 8;
    c2.chunk = 512;
    CHECK(cm_cache_store(path, key2, &c2, &m) == 0, "second store");
    c.bc = 64;
    CHECK(cm_cache_store(path, key, &c, &m) == 0, "replace");
    CHECK(cm_cache_lookup(path, key2, m.device, &r, 0) == 1 && r.br == 8 && r.chunk == 512,
          "second entry kept");
    CHECK(cm_cache_lookup(path, key, m.device, &r, 0) == 1 && r.bc == 64, "first entry replaced");
    size_t len = 0;
    char *good = read_all(path, &len);
    int sections = 0;
    for (char *p = good; (p = strstr(p, "\n[")); p++) sections++;
    CHECK(sections == 3, "one machine section and two entries (%d sections)", sections);

    /* truncated at every byte: never a crash; whatever is found is the stored entry */
    int found_partial = 0, wrong = 0;
    for (size_t cut = 0; cut < len; cut++) {
        write_file(path, good, cut);
        memset(&r, 0, sizeof r);
        if (cm_cache_lookup(path, key, m.device, &r, 0) == 1) {
            found_partial++;
            if (r.br != 16 || r.bc != 64 || r.chunk != 2048 || r.merges_in_flight != 3) wrong++;
        }
    }
    CHECK(wrong == 0, "%d truncations gave a different entry", wrong);
    CHECK(found_partial < (int)len, "truncations that cut the entry are not found");
    /* corrupt: random bytes, garbage lines, foreign version, bad values */
    char junk[600];
    for (int t = 0; t < 50; t++) {
        for (size_t i = 0; i < sizeof junk; i++) junk[i] = (char)(next() & 0xFF);
        write_file(path, junk, sizeof junk);
        CHECK(cm_cache_lookup(path, key, m.device, &r, 0) == 0, "random bytes %d: nothing found", t);
    }
    const char *bad[] = {
        "version = 3\n[%s]\nbr = 16\nbc = 64\nchunk = 2048\nmerges_in_flight = 3\n", /* foreign */
        "[%s]\nbr = 16\nbc = 64\nchunk = 2048\nwindow = 3\n",                   /* no version */
        "version = 1\n[%s]\nbr = -5\nbc = 64\nchunk = 2048\nwindow = 3\n",
        "version = 1\n[%s]\nbr = abc\nbc = 64\nchunk = 2048\nwindow = 3\n",
        "version = 1\n[%s]\nbr = 16\nbc = 64\nchunk = 99999999999999999999\nwindow = 3\n",
        "version = 1\n[%s]\nbr = 16\nbc = 64\nchunk = 2048\nwindow = 0\n",
        "version = 1\n[%s]\nbr = 16\nbc = 64\nchunk = 2048\nwindow = 3\nnonsense line\n",
        "version = 1\n[%s\nbr = 16\nbc = 64\nchunk = 2048\nwindow = 3\n",
        "version = 1\n[%s]\nbr = 16\nbc = 64\nchunk = 2048\nwindow = 3\nvariant = 9\n",
        "version = 1\n[%s]\nbr = 16\nchunk = 2048\nwindow = 3\n",                /* bc missing */
        "version = 2\n[%s]\nbr = 16\nbc = 64\nchunk = 2048\nmerges_in_flight = 65\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[1024];
        int n = snprintf(text, sizeof text, bad[i], key);
        write_file(path, text, (size_t)n);
        CHECK(cm_cache_lookup(path, key, m.device, &r, 0) == 0, "bad file %zu: nothing found", i);
    }
    /* version 1 (merges in flight written `window`) reads as it is; version 2 says
     * merges_in_flight, and a store keeps the other entries of a version 1 file */
    const char *old_new[] = {"version = 1\n[%s]\nbr = 16\nbc = 64\nchunk = 2048\nwindow = 5\n",
                             "version = 2\n[%s]\nbr = 16\nbc = 64\nchunk = 2048\nmerges_in_flight = 5\n"};
    for (int i = 0; i < 2; i++) {
        char text[1024];
        int n = snprintf(text, sizeof text, old_new[i], key2);
        write_file(path, text, (size_t)n);
        memset(&r, 0, sizeof r);
        CHECK(cm_cache_lookup(path, key2, m.device, &r, 0) == 1 && r.merges_in_flight == 5 && r.chunk == 2048,
              "version %d entry read: %d merges in flight", i + 1, r.merges_in_flight);
    }
    {
        char text[1024];
        int n = snprintf(text, sizeof text, old_new[0], key2);
        write_file(path, text, (size_t)n);
    }
    CHECK(cm_cache_store(path, key, &c, &m) == 0 && cm_cache_lookup(path, key2, m.device, &r, 0) == 1 &&
          r.merges_in_flight == 5 && cm_cache_lookup(path, key, m.device, &r, 0) == 1, "store beside a version 1 entry");
    char *now = read_all(path, &len);
    CHECK(strstr(now, "version = 2\n") && strstr(now, "merges_in_flight = 3\n"),
          "stored as version 2 with merges_in_flight");
    free(now);
    /* another dtype's entry for the same device and job (cm_cache_other_dtype) */
    {
        cm_job jb = j;
        jb.dtype = 0;                     /* bfloat16 */
        char keyb[512], found[512] = "";
        cm_cache_key(m.device, &jb, keyb, sizeof keyb);
        char text[1024];
        int n = snprintf(text, sizeof text, old_new[1], keyb);
        write_file(path, text, (size_t)n);
        CHECK(cm_cache_other_dtype(path, key, found, sizeof found) == 1 && !strcmp(found, keyb),
              "another dtype's entry found: [%s]", found);
        CHECK(cm_cache_other_dtype(path, key2, found, sizeof found) == 0, "none for another D");
        CHECK(cm_cache_other_dtype(path, keyb, found, sizeof found) == 0, "not its own entry");
    }
    /* a store over a corrupt file starts it clean */
    write_file(path, junk, sizeof junk);
    CHECK(cm_cache_store(path, key, &c, &m) == 0 && cm_cache_lookup(path, key, m.device, &r, 0) == 1,
          "store over a corrupt file");
    free(good);
    unlink(path);
}

static void test_valid(void) {
    static const int64_t ns[] = {1000, 2048, 4096, 12345, 65536, 262144, 1 << 20};
    static const int64_t ds[] = {64, 72, 96, 128, 192, 256};
    static const int64_t gq[] = {1, 2, 4, 8};
    static const int64_t hs[] = {8, 16, 32};
    static const int64_t ranks[] = {1, 2, 4, 8};
    cm_choice *cand = malloc(sizeof(cm_choice) * 2048);
    int bad = 0, none = 0, slower = 0, trials = 0, paged = 0;
    for (int t = 0; t < 300; t++) {
        int gpu = t % 2;
        cm_machine m;
        memset(&m, 0, sizeof m);
        m.threads = 1 + (int)(next() % 4);
        snprintf(m.device, sizeof m.device, gpu ? "gpu Test" : "cpu Test");
        m.l2_bytes = (int64_t)256 << (next() % 4) << 10;     /* 256 KiB .. 2 MiB */
        m.smem_per_block = gpu && next() % 3 == 0 ? 100 * 1024 : 227 * 1024;
        cm_machine_defaults(&m, gpu);
        if (gpu) for (int v = 1; v <= 4; v++) m.gpu_tflops[v] = 100.0 + 100.0 * v;
        int64_t h = pick(hs, 3), g = pick(gq, 4);
        if (g > h) g = h;
        cm_job j = {.nq = pick(ns, 7), .h = (int)h, .hkv = (int)(h / g), .d = (int)pick(ds, 6),
                    .causal = (int)(next() % 2), .elem = gpu ? 2 : 4, .nranks = (int)pick(ranks, 4),
                    .gpu = gpu, .dtype = gpu ? 0 : -1};
        j.nk = next() % 4 == 0 ? j.nq * 2 : j.nq;
        if (!gpu && j.nq > 65536) j.nq = j.nk = 65536;     /* keep the CPU search quick */
        if (gpu) {
            /* budgets from unlimited to 1/16 of this rank's K/V (plus room for the buffers) */
            int64_t kv = (j.nk / j.nranks) * 2 * j.hkv * j.d * 2;
            int64_t div = (int64_t)1 << (next() % 5);
            j.budget = next() % 5 == 0 ? 0 : kv / div + ((int64_t)1 << 30);
        }
        int n = cm_candidates(&m, &j, cand, 2048);
        trials++;
        if (n == 0) { none++; continue; }
        for (int i = 0; i < n; i++) {
            cm_choice *c = &cand[i];
            int ok = isfinite(c->t_total) && c->t_total > 0 && c->chunk >= 1 && c->merges_in_flight >= 1;
            if (!gpu) {
                int64_t mp = ((int64_t)c->br * g + 15) / 16 * 16;
                ok &= (c->bc * mp + 2 * j.d * mp + 2 * c->bc * j.d) * 4 <= m.l2_bytes;
                ok &= c->br >= 1 && c->br <= c->chunk && c->threads == m.threads;
            } else {
                kv_plan pl = {.kv_rows = (j.nk + j.nranks - 1) / j.nranks, .h = j.h, .hkv = j.hkv,
                              .d = j.d, .elem = 2, .chunk_rows = c->chunk, .slots = c->merges_in_flight,
                              .budget = j.budget, .device_free = m.device_free,
                              .block_rows = c->block_rows, .ring = c->ring, .max_resident = -1};
                ok &= kv_plan_make(&pl) == 0;
                int64_t avail = j.budget > 0 ? j.budget : m.device_free - ((int64_t)1 << 30);
                ok &= pl.fixed_bytes + pl.ring_bytes + pl.resident_rows * 2 * j.hkv * j.d * 2 <= avail;
                ok &= c->variant >= 0 && c->variant <= 4;
                /* the kernels' blocks (flash_sm80.cuh, flash_sm90.cuh): the instance of d (72 runs in
                 * 80), rows padded to 64 columns, 64-row blocks (sm80) over 192, 64-key tiles (sm90)
                 * over 128, the overlapped variants' 3 stages cut to 2 where they do not fit */
                int v = c->variant ? c->variant : 4;
                int64_t D = j.d == 72 ? 80 : j.d, rl = (D + 63) / 64 * 64, smem;
                if (v == 1) smem = (D > 192 ? 64 : 128) * rl * 2 + 2 * 64 * rl * 2 + 2 * D * 64 * 2;
                else {
                    int64_t bn = D > 128 ? 64 : 128, kv = bn * rl * 2 + D * bn * 2, st = v == 2 ? 2 : 3;
                    if (st == 3 && 128 * rl * 2 + 3 * kv + 80 + 1024 > 227 * 1024) st = 2;
                    smem = 128 * rl * 2 + st * kv + 8 * (1 + 3 * st) + 1024;
                }
                ok &= smem <= m.smem_per_block;
                if (j.d == 256 && v >= 3) ok &= smem == 64 * 1024 + 2 * (32 + 32) * 1024 + 8 * 7 + 1024;
                if (pl.paged_rows > 0 && i == 0) paged++;
            }
            /* several ranks: at least 2 chunks each, unless the smallest chunk size */
            int64_t smallest = gpu ? 2048 : 256;
            if (j.nranks > 1 && c->chunk > smallest && c->chunk < j.nq)
                ok &= (j.nq + c->chunk - 1) / c->chunk >= 2LL * j.nranks;
            if (j.nranks > 1 && c->chunk == j.nq && j.nq > smallest) ok &= j.nranks == 1;
            if (!ok) {
                bad++;
                if (bad < 5) printf("invalid: gpu %d nq %lld h %d hkv %d d %d br %d bc %d chunk %lld v %d\n",
                                    gpu, (long long)j.nq, j.h, j.hkv, j.d, c->br, c->bc,
                                    (long long)c->chunk, c->variant);
            }
        }
        cm_choice def;
        cm_fixed_defaults(&j, m.threads, &def);
        int def_in_space = j.nranks == 1 || def.chunk <= (gpu ? 2048 : 256) ||
                           (j.nq + def.chunk - 1) / def.chunk >= 2LL * j.nranks;
        if (def_in_space && cm_predict(&m, &j, &def) && cand[0].t_total > def.t_total * (1 + 1e-9))
            slower++;
    }
    free(cand);
    CHECK(bad == 0, "%d invalid candidates over %d random jobs", bad, trials);
    CHECK(none < trials / 10, "%d of %d jobs had no valid candidate", none, trials);
    CHECK(slower == 0, "%d jobs where the model's best is predicted slower than the defaults", slower);
    CHECK(paged > 0, "some budgets force paging (%d)", paged);
}

static void test_terms(void) {
    cm_machine m;
    memset(&m, 0, sizeof m);
    m.threads = 2;
    cm_machine_defaults(&m, 0);
    cm_job j = {.nq = 4096, .nk = 4096, .h = 8, .hkv = 8, .d = 128, .elem = 4, .nranks = 1, .dtype = -1};
    cm_choice c = {.br = 8, .bc = 128, .threads = 2, .chunk = 1024, .merges_in_flight = 3};
    cm_choice a = c, b = c, cc = c;
    cm_predict(&m, &j, &a);
    cm_job j2 = j;
    j2.nq = j2.nk = 8192;
    cm_predict(&m, &j2, &b);
    CHECK(b.t_total > 3.5 * a.t_total && b.t_total < 4.5 * a.t_total, "2x N: %.3f -> %.3f s", a.t_total, b.t_total);
    cm_job jc = j;
    jc.causal = 1;
    cm_predict(&m, &jc, &cc);
    CHECK(cc.t_total > 0.45 * a.t_total && cc.t_total < 0.65 * a.t_total, "causal %.3f of non-causal", cc.t_total / a.t_total);
    CHECK(!strcmp(a.critical, "compute"), "CPU job: compute critical (%s)", a.critical);
    cm_choice huge = c;
    huge.br = 128;
    huge.bc = 4096;
    CHECK(!cm_predict(&m, &j, &huge) && !strcmp(huge.critical, "invalid"), "tile over L2 refused");
    /* merge: a slow network makes it critical on 4 ranks */
    cm_job jm = j;
    jm.nranks = 4;
    m.net_gbps = 0.01;
    cm_choice mm = c;
    cm_predict(&m, &jm, &mm);
    CHECK(!strcmp(mm.critical, "merge") && mm.t_merge > 0, "slow network: %s critical", mm.critical);
    /* GPU: a tight budget and a slow link make paging critical */
    cm_machine g;
    memset(&g, 0, sizeof g);
    cm_machine_defaults(&g, 1);
    cm_job jg = {.nq = 262144, .nk = 262144, .h = 32, .hkv = 8, .d = 128, .elem = 2, .nranks = 1,
                 .gpu = 1, .dtype = 0};
    cm_choice gc = {.variant = 0, .chunk = 8192, .merges_in_flight = 3};
    cm_predict(&g, &jg, &gc);
    double flops = 4.0 * 128 * 32 * 262144.0 * 262144.0;
    CHECK(gc.t_total > flops / 620e12 && gc.t_total < 1.3 * flops / 620e12,
          "256K on the H100 figures: %.3f s (kernel alone %.3f)", gc.t_total, flops / 620e12);
    CHECK(fabs(gc.t_compute - 1.637) < 0.3, "near the measured 1.637 s compute (%.3f)", gc.t_compute);
    jg.budget = (int64_t)2 << 30;
    g.link_gbps = 1.0;
    cm_choice gp = {.variant = 0, .chunk = 8192, .merges_in_flight = 3};
    CHECK(cm_predict(&g, &jg, &gp) && !strcmp(gp.critical, "paging") && gp.t_page > gp.t_compute,
          "2 GiB budget, 1 GB/s link: paging critical (%s)", gp.critical ? gp.critical : "-");
    /* the fixed defaults under budgets where 8192-row chunks leave no room for key blocks: the
     * chunk halved until the plan fits (never below 2048), a valid configuration that pages */
    static const int64_t budgets[] = {(int64_t)1 << 30, (int64_t)768 << 20, (int64_t)384 << 20};
    for (int b = 0; b < 3; b++) {
        jg.budget = budgets[b];
        cm_choice full = {.variant = 0, .chunk = 8192, .merges_in_flight = 3}, d;
        CHECK(!cm_predict(&g, &jg, &full), "budget %lld MiB: 8192-row chunks do not fit",
              (long long)(budgets[b] >> 20));
        cm_fixed_defaults(&jg, 1, &d);
        CHECK(d.chunk < 8192 && d.chunk >= 2048 && cm_predict(&g, &jg, &d) && d.t_page > 0,
              "budget %lld MiB: defaults chunk %lld fit and page (%s)", (long long)(budgets[b] >> 20),
              (long long)d.chunk, d.critical ? d.critical : "-");
    }
    jg.budget = 0;
    cm_choice d0;
    cm_fixed_defaults(&jg, 1, &d0);
    CHECK(d0.chunk == 8192, "no budget: the defaults keep 8192-row chunks (%lld)", (long long)d0.chunk);
}

/* Every head dim the kernels take has GPU candidates on an H100's 227 KiB of shared memory, D 256
 * too (its overlapped variants in 2 stages), and none where a block cannot hold its tiles. */
static void test_head_dims(void) {
    static const int ds[] = {8, 72, 80, 96, 136, 192, 200, 256};
    cm_choice *cand = malloc(sizeof(cm_choice) * 2048);
    for (size_t i = 0; i < sizeof ds / sizeof *ds; i++) {
        cm_machine m;
        memset(&m, 0, sizeof m);
        m.threads = 2;
        snprintf(m.device, sizeof m.device, "gpu Test");
        m.smem_per_block = 227 * 1024;
        cm_machine_defaults(&m, 1);
        for (int v = 1; v <= 4; v++) m.gpu_tflops[v] = 100.0 + 100.0 * v;
        cm_job j = {.nq = 65536, .nk = 65536, .h = 16, .hkv = 4, .d = ds[i], .elem = 2, .nranks = 1, .gpu = 1, .dtype = 0};
        int n = cm_candidates(&m, &j, cand, 2048), v4 = 0;
        for (int k = 0; k < n; k++) v4 |= cand[k].variant == 4 || cand[k].variant == 0;
        CHECK(n > 0 && v4, "D %d on 227 KiB: %d candidates, the pingpong variant among them", ds[i], n);
        m.smem_per_block = 96 * 1024;                      /* no instance over 128 fits */
        n = cm_candidates(&m, &j, cand, 2048);
        if (ds[i] > 128) CHECK(n == 0, "D %d on 96 KiB: no candidate (%d)", ds[i], n);
    }
    free(cand);
}

int main(void) {
    test_cache();
    test_valid();
    test_head_dims();
    test_terms();
    return tests_done();
}
