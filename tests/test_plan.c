/* test_plan.c — the planner's backend decisions that need no device (runner/plan.c,
 * plan_backend_job): a job the CUDA engine cannot serve (a head dim other than 64 or 128) runs
 * on the CPU under --backend auto and is refused under --backend cuda, whatever the machine;
 * Taylor mode keeps any head dim on CUDA; masks beyond causal are refused for taylor and
 * --compare and kept for both engines. The GPU is played by *be = cuda on entry. */
#include "runner/plan.h"
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
    rc = decide(BACKEND_AUTO, MODE_EXACT, 80, &plain, 0, &be);
    check(rc == 0 && be == BACKEND_CPU, "auto, D 80: the CPU engine runs it");
    rc = decide(BACKEND_CUDA, MODE_EXACT, 96, &plain, 0, &be);
    check(rc != 0 && strstr(fa_errmsg(), "head dims 64 and 128, not 96"), "cuda, D 96: refused: %s", fa_errmsg());
    rc = decide(BACKEND_CUDA, MODE_TAYLOR, 96, &plain, 0, &be);
    check(rc == 0 && be == BACKEND_CUDA, "cuda, taylor, D 96: CUDA (the Taylor engine takes any D)");
    rc = decide(BACKEND_AUTO, MODE_TAYLOR, 64, &win, 0, &be);
    check(rc != 0 && strstr(fa_errmsg(), "--mode taylor computes full or causal"), "taylor with a window: refused");
    rc = decide(BACKEND_AUTO, MODE_EXACT, 64, &win, 1, &be);
    check(rc != 0 && strstr(fa_errmsg(), "drop --compare"), "--compare with a window: refused");
    return tests_done();
}
