/* test_paging.c — the paging plan (kernels/paging.c) and the chunk-size model, without a GPU:
 * everything resident when it fits; otherwise resident + paged = all keys, the ring and the chunk
 * buffers within the budget, boundaries on 256-key multiples; a budget too small is refused;
 * the model's minimum chunk hides the copies. */
#include "kernels/paging.h"
#include "base/common.h"
#include "tests/testing.h"
#include <stdio.h>


static kv_plan base(int64_t kv_rows, int64_t budget) {
    kv_plan p = {.kv_rows = kv_rows, .h = 32, .hkv = 8, .d = 128, .elem = 2, .chunk_rows = 8192,
                 .slots = 3, .budget = budget, .device_free = (int64_t)79 << 30, .max_resident = -1};
    return p;
}

int main(void) {
    const int64_t per_key = 2 * 8 * 128 * 2, GiB = (int64_t)1 << 30;
    kv_plan p = base(262144, 0);
    CHECK(kv_plan_make(&p) == 0 && p.resident_rows == 262144 && p.paged_rows == 0 && p.ring_bytes == 0,
          "256K keys fit an 80 GB card: all resident (%lld paged)", (long long)p.paged_rows);
    /* a budget of 1/8 of the keys' bytes plus the chunk buffers */
    for (int64_t n = 262144; n <= ((int64_t)4 << 20); n *= 4) {
        p = base(n, 0);
        kv_plan_make(&p);
        int64_t fixed = p.fixed_bytes;
        p = base(n, fixed + n * per_key / 8);
        int rc = kv_plan_make(&p);
        CHECK(rc == 0, "n=%lld budget 1/8: %s", (long long)n, fa_errmsg());
        CHECK(p.resident_rows + p.paged_rows == n && p.paged_rows > 0, "n=%lld: %lld + %lld keys",
              (long long)n, (long long)p.resident_rows, (long long)p.paged_rows);
        CHECK(p.fixed_bytes + p.ring_bytes + p.resident_rows * per_key <= p.budget,
              "n=%lld: plan within the budget", (long long)n);
        CHECK(p.resident_rows % 256 == 0 && p.block_rows % 256 == 0 && p.block_bytes == p.block_rows * per_key,
              "n=%lld: boundaries on 256 keys (res %lld, block %lld)", (long long)n,
              (long long)p.resident_rows, (long long)p.block_rows);
        CHECK(p.ring == 3 && p.ring_bytes == 3 * p.block_bytes, "n=%lld: ring of 3", (long long)n);
    }
    p = base(1 << 20, 100 << 20);
    CHECK(kv_plan_make(&p) == -1, "100 MB cannot hold 8K-row chunk buffers: refused");
    p = base(1 << 20, 0);
    p.max_resident = 0;
    p.ring = 1;
    p.block_rows = 1000;
    CHECK(kv_plan_make(&p) == 0 && p.resident_rows == 0 && p.paged_rows == 1 << 20 &&
          p.block_rows == 1024 && p.ring_bytes == p.block_bytes,
          "everything paged through one block (res %lld, block %lld)", (long long)p.resident_rows,
          (long long)p.block_rows);
    (void)GiB;
    /* the model: H100-like figures, 8 of 32 heads: break-even at Hkv*e*R/(2*H*BW) rows */
    int64_t r = kv_plan_min_rows(32, 8, 2, 600, 50, 1.0);
    CHECK(r >= 3000 && r <= 3072 + 255, "break-even rows %lld (about 3000)", (long long)r);
    CHECK(kv_plan_min_rows(32, 8, 2, 600, 50, 1.5) >= r * 3 / 2, "margin scales the rows");
    CHECK(kv_plan_min_rows(32, 32, 2, 600, 50, 1.0) > r, "MHA streams more bytes per flop: more rows");
    CHECK(kv_plan_min_rows(32, 8, 2, 600, 0, 1.0) == 256, "no link figure: minimum chunk");
    return tests_done();
}
