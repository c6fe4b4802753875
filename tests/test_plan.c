/* test_plan.c — the planner's decisions that need no device (runner/plan.c):
 * - plan_backend_job: a job the CUDA engine cannot serve (a head dim that is not a multiple of 8 up
 *   to 256) runs on the CPU under --backend auto and is refused under --backend cuda, whatever the
 *   machine; every other head dim stays on CUDA;
 *   Taylor mode keeps any head dim on CUDA; masks beyond causal are refused for taylor and
 *   --compare and kept for both engines. The GPU is played by *be = cuda on entry.
 * - plan_merge: the merge path from the backend, the mode, the ranks, --no-nccl and the GPUs'
 *   outcome (a gpu_comm played by hand: NCCL up, or down with its reason), said the same way
 *   by plan_merge_describe and plan_json; the engines refuse a plan whose merge they cannot run
 *   instead of choosing another.
 * - plan_rows_make: the writer of each chunk and this rank's keys, made once in the plan.
 * - keys through a ring: only the exact CUDA engine copies the key rows it is handed
 *   (engine_copies_keys, which the planner asks for plan.key_ring), and FA_KEY_RING takes 0 or
 *   3 to 64 blocks. */
#include "runner/plan.h"
#include "dist/pipeline.h"
#include "base/common.h"
#include "tests/testing.h"
#include <string.h>

static int decide(fa_backend asked, fa_mode mode, int64_t d, const attn_mask *m, int compare,
                  fa_backend *be) {
    fa_job job;
    memset(&job, 0, sizeof job);
    job.backend = asked;
    job.mode = mode;
    job.compare = compare;
    fa_shape s = {1, 100, 100, 4, 2, d, FA_F32, FA_F32, FA_F32};
    *be = BACKEND_CUDA;
    fa_clearerr();
    return plan_backend_job(&job, &s, m, be);
}

/* The merge the planner takes for a job, and how it says it. */
static const char *merge_of(fa_backend be, fa_mode mode, int nranks, int no_nccl,
                            const gpu_comm *gc, run_plan *p, char *buf) {
    memset(p, 0, sizeof *p);
    plan_merge(be, mode, nranks, no_nccl, gc, p);
    return plan_merge_describe(p, buf, 256);
}

static void merge_cases(void) {
    gpu_comm up = {.nccl = 1, .why = "", .size = 2}, shared = {.shared = 1, .why = "some GPU serves several ranks", .size = 2};
    run_plan p;
    char d[256];
    merge_of(BACKEND_CPU, MODE_EXACT, 3, 0, NULL, &p, d);
    check(p.merge == MERGE_MPI && !strcmp(d, "mpi (cpu backend)") && p.src[PS_MERGE] == SRC_DEFAULT,
          "cpu backend, 3 ranks: %s", d);
    merge_of(BACKEND_CPU, MODE_EXACT, 2, 1, NULL, &p, d);
    check(p.merge == MERGE_MPI && !strcmp(d, "mpi (cpu backend)"), "cpu backend, --no-nccl: %s", d);
    merge_of(BACKEND_CUDA, MODE_EXACT, 2, 0, &up, &p, d);
    check(p.merge == MERGE_NCCL && !strcmp(d, "nccl (default)") && p.src[PS_MERGE] == SRC_DEFAULT,
          "cuda, 2 ranks, NCCL up: %s", d);
    merge_of(BACKEND_CUDA, MODE_EXACT, 2, 1, &up, &p, d);
    check(p.merge == MERGE_MPI && !strcmp(d, "mpi (--no-nccl)") && p.src[PS_MERGE] == SRC_OPTION,
          "cuda, 2 ranks, --no-nccl: %s", d);
    merge_of(BACKEND_CUDA, MODE_EXACT, 2, 0, &shared, &p, d);
    check(p.merge == MERGE_MPI && !strcmp(d, "mpi (NCCL could not start: some GPU serves several ranks)") &&
          p.src[PS_MERGE] == SRC_MEASURED, "cuda, 2 ranks, NCCL down: %s", d);
    merge_of(BACKEND_CUDA, MODE_TAYLOR, 2, 0, &up, &p, d);
    check(p.merge == MERGE_MPI && !strcmp(d, "mpi (taylor mode)"), "cuda, taylor, NCCL up: %s", d);
    merge_of(BACKEND_CUDA, MODE_EXACT, 1, 0, &shared, &p, d);
    check(p.merge == MERGE_NONE && !strcmp(d, "none (one rank)"), "cuda, one rank: %s", d);

    /* the plan attribute says the same: value, source and reason */
    merge_of(BACKEND_CUDA, MODE_EXACT, 2, 1, &up, &p, d);
    p.compute_name = "bfloat16";
    p.backend = BACKEND_CUDA;
    char js[4096];
    plan_json(&p, js, sizeof js);
    check(strstr(js, "\"merge\": {\"value\": \"mpi\", \"from\": \"option\", \"why\": \"--no-nccl\"}") != NULL,
          "plan_json: the merge with its source and reason");

    /* the engines run the plan's merge or refuse it: they do not pick another */
    pipe_engine e;
    merge_of(BACKEND_CPU, MODE_EXACT, 2, 0, NULL, &p, d);
    p.backend = BACKEND_CPU;
    p.merge = MERGE_NCCL;
    fa_clearerr();
    check(engine_create(&p, MPI_COMM_NULL, 0, 0, NULL, &e) != 0 && strstr(fa_errmsg(), "merges through MPI"),
          "the CPU engine refuses a merge through NCCL: %s", fa_errmsg());
    p.backend = BACKEND_CUDA;
    p.mode = MODE_TAYLOR;
    fa_clearerr();
    check(engine_create(&p, MPI_COMM_NULL, 0, 0, NULL, &e) != 0 && strstr(fa_errmsg(), "merges through MPI"),
          "the Taylor engine refuses a merge through NCCL: %s", fa_errmsg());
    p.mode = MODE_EXACT;
    fa_clearerr();
    check(engine_create(&p, MPI_COMM_NULL, 0, 0, NULL, &e) != 0 && strstr(fa_errmsg(), "not up"),
          "the CUDA engine refuses a merge through NCCL without a communicator: %s", fa_errmsg());
}

/* The writer of each chunk and the rank's keys: the plan's, made once. */
static void rows_cases(void) {
    run_plan p;
    memset(&p, 0, sizeof p);
    p.s = (fa_shape){1, 100, 1000, 4, 2, 32, FA_F32, FA_F32, FA_F32};
    p.nranks = 3;
    p.layout = SHARD_STRIPED;
    p.stripe = 64;
    plan_rows_make(&p, 1, -1);
    kv_shard want;
    shard_plan(1000, 3, 1, SHARD_STRIPED, 64, &want);
    int same = p.rows_planned && p.shard.n == want.n && p.shard.total == want.total;
    for (int i = 0; same && i < want.n; i++)
        same = p.shard.r[i].start == want.r[i].start && p.shard.r[i].n == want.r[i].n;
    check(same && want.n > 1, "rank 1's keys: the layout's shard (%d ranges, %lld keys)", p.shard.n,
          (long long)p.shard.total);
    int owners = 1;
    for (int64_t i = 0; i < 10; i++) owners &= plan_chunk_writer(&p, i) == (int)(i % 3);
    check(owners, "writer -1 (parallel HDF5): chunk i written by rank i mod 3");
    plan_rows_free(&p);
    shard_free(&want);
    check(!p.rows_planned && p.shard.r == NULL, "plan_rows_free releases the shard");
    p.own_keys = 1;
    p.own_k_start = 300;
    p.own_k_rows = 250;
    plan_rows_make(&p, 2, 2);
    check(p.shard.n == 1 && p.shard.r[0].start == 300 && p.shard.r[0].n == 250 && p.shard.total == 250,
          "own keys (the library's): the caller's one run");
    owners = 1;
    for (int64_t i = 0; i < 10; i++) owners &= plan_chunk_writer(&p, i) == 2;
    check(owners, "writer 2 (a memory sink's root): every chunk written by rank 2");
    plan_rows_free(&p);
}

static void key_ring_cases(void) {
    run_plan p;
    memset(&p, 0, sizeof p);
    const struct { fa_mode mode; fa_backend be; int copies; const char *what; } e[] = {
        {MODE_EXACT, BACKEND_CUDA, 1, "the exact CUDA engine"},
        {MODE_EXACT, BACKEND_CPU, 0, "the exact CPU engine"},
        {MODE_TAYLOR, BACKEND_CUDA, 0, "the Taylor CUDA engine"},
        {MODE_TAYLOR, BACKEND_CPU, 0, "the Taylor CPU engine"}};
    for (int i = 0; i < 4; i++) {
        p.mode = e[i].mode;
        p.backend = e[i].be;
        check(engine_copies_keys(&p) == e[i].copies, "%s %s the key rows it is handed", e[i].what,
              e[i].copies ? "copies" : "does not copy");
    }
    const struct { const char *v; int ok, ring; } env[] = {
        {"", 1, -1}, {"0", 1, 0}, {"3", 1, 3}, {"64", 1, 64}, {"2", 0, 0}, {"65", 0, 0}, {"3x", 0, 0}};
    for (int i = 0; i < 7; i++) {
        plan_env pe;
        setenv("FA_KEY_RING", env[i].v, 1);
        fa_clearerr();
        const int rc = plan_env_read(&pe);
        if (env[i].ok)
            check(rc == 0 && pe.key_ring_set == (env[i].ring >= 0) && (env[i].ring < 0 || pe.key_ring == env[i].ring),
                  "FA_KEY_RING='%s': %s", env[i].v, env[i].ring < 0 ? "not set" : "taken");
        else
            check(rc != 0 && strstr(fa_errmsg(), "FA_KEY_RING=") && strstr(fa_errmsg(), "expected 0"),
                  "FA_KEY_RING='%s': refused (%s)", env[i].v, fa_errmsg());
    }
    unsetenv("FA_KEY_RING");
}

int main(void) {
    fa_verbosity = 0;
    attn_mask plain = mask_plain(100, 100, 1), win = plain;
    win.left = 16;
    fa_backend be;
    int rc;
    rc = decide(BACKEND_AUTO, MODE_EXACT, 128, &plain, 0, &be);
    check(rc == 0 && be == BACKEND_CUDA, "auto, D 128: CUDA");
    rc = decide(BACKEND_AUTO, MODE_EXACT, 64, &win, 0, &be);
    check(rc == 0 && be == BACKEND_CUDA, "auto, D 64, window: CUDA");
    /* every multiple of 8 up to 256 on CUDA (instances 64, 80, 96, 128, 192, 256 and the dims between
     * them padded); others to the CPU under auto, refused under --backend cuda */
    static const int64_t cuda_dims[] = {8, 40, 72, 80, 96, 104, 136, 192, 200, 256};
    for (size_t i = 0; i < sizeof cuda_dims / sizeof *cuda_dims; i++) {
        rc = decide(BACKEND_AUTO, MODE_EXACT, cuda_dims[i], &plain, 0, &be);
        check(rc == 0 && be == BACKEND_CUDA, "auto, D %lld: CUDA", (long long)cuda_dims[i]);
        rc = decide(BACKEND_CUDA, MODE_EXACT, cuda_dims[i], &win, 0, &be);
        check(rc == 0 && be == BACKEND_CUDA, "cuda, D %lld, window: CUDA", (long long)cuda_dims[i]);
    }
    static const int64_t cpu_dims[] = {4, 36, 100, 264, 512};
    for (size_t i = 0; i < sizeof cpu_dims / sizeof *cpu_dims; i++) {
        rc = decide(BACKEND_AUTO, MODE_EXACT, cpu_dims[i], &plain, 0, &be);
        check(rc == 0 && be == BACKEND_CPU, "auto, D %lld: the CPU engine runs it", (long long)cpu_dims[i]);
        rc = decide(BACKEND_CUDA, MODE_EXACT, cpu_dims[i], &plain, 0, &be);
        char want[64];
        snprintf(want, sizeof want, "multiples of 8 up to 256, not %lld", (long long)cpu_dims[i]);
        check(rc != 0 && strstr(fa_errmsg(), want), "cuda, D %lld: refused: %s", (long long)cpu_dims[i], fa_errmsg());
    }
    rc = decide(BACKEND_CUDA, MODE_TAYLOR, 100, &plain, 0, &be);
    check(rc == 0 && be == BACKEND_CUDA, "cuda, taylor, D 100: CUDA (the Taylor engine takes any D)");
    rc = decide(BACKEND_AUTO, MODE_TAYLOR, 64, &win, 0, &be);
    check(rc != 0 && strstr(fa_errmsg(), "--mode taylor computes full or causal"), "taylor with a window: refused");
    rc = decide(BACKEND_AUTO, MODE_EXACT, 64, &win, 1, &be);
    check(rc != 0 && strstr(fa_errmsg(), "drop --compare"), "--compare with a window: refused");
    merge_cases();
    rows_cases();
    key_ring_cases();
    return tests_done();
}
