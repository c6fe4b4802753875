/* paging.c — see paging.h. */
#include "kernels/paging.h"
#include "base/common.h"
#include <math.h>

/* Resident and block boundaries fall on multiples of ALIGN keys, so they coincide with the
 * kernel's key tiles: a paged run folds the same tiles in the same order as a resident one. */
#define ALIGN 256
static int64_t round_down(int64_t x, int64_t a) { return x / a * a; }
static int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

int kv_plan_make(kv_plan *p) {
    const int64_t e = p->elem, D = p->d, H = p->h, Hkv = p->hkv;
    /* per chunk slot: queries (compute type), records {m, l, o[D]}, row maxima, final o and lse
     * (fp32); one fp32 staging buffer for uploads */
    int64_t slot = p->chunk_rows * H * (D * e + (D + 2) * 4 + 4 + D * 4 + 4);
    p->fixed_bytes = p->slots * slot + p->chunk_rows * H * D * 4 + ((int64_t)64 << 20);
    int64_t avail = p->budget > 0 ? p->budget : p->device_free - ((int64_t)1 << 30);
    const int64_t per_key = 2 * Hkv * D * e;                 /* K and V^T of one key */
    p->block_rows = p->block_rows > 0 ? p->block_rows : 32768;
    if (p->block_rows > p->kv_rows) p->block_rows = p->kv_rows;
    p->block_rows = round_up(p->block_rows > 0 ? p->block_rows : 1, ALIGN);
    p->ring = p->ring > 0 ? p->ring : 3;
    p->block_bytes = p->block_rows * per_key;
    int capped = p->max_resident >= 0 && p->max_resident < p->kv_rows;
    if (!capped && p->fixed_bytes + p->kv_rows * per_key <= avail) {   /* everything fits */
        p->resident_rows = p->kv_rows;
        p->paged_rows = 0;
        p->ring_bytes = 0;
        return 0;
    }
    /* page: shrink blocks until a ring of them fits beside the chunk buffers */
    while (p->block_rows > ALIGN && p->fixed_bytes + p->ring * p->block_rows * per_key > avail)
        p->block_rows = round_up(p->block_rows / 2, ALIGN);
    p->block_bytes = p->block_rows * per_key;
    p->ring_bytes = p->ring * p->block_bytes;
    if (p->fixed_bytes + p->ring_bytes > avail)
        return fa_seterr("device memory budget %.2f GiB is below the %.2f GiB this rank needs for "
                         "%lld-row chunks and a ring of key blocks (lower --chunk or raise "
                         "--device-mem)", avail / 1073741824.0,
                         (p->fixed_bytes + p->ring_bytes) / 1073741824.0, (long long)p->chunk_rows);
    int64_t res = (avail - p->fixed_bytes - p->ring_bytes) / per_key;
    if (capped && res > p->max_resident) res = p->max_resident;
    p->resident_rows = round_down(res < p->kv_rows ? res : p->kv_rows, ALIGN);
    if (p->resident_rows < 0) p->resident_rows = 0;
    p->paged_rows = p->kv_rows - p->resident_rows;
    return 0;
}

int64_t kv_plan_min_rows(int h, int hkv, int elem, double kernel_tflops, double link_gbps,
                         double margin) {
    if (!(link_gbps > 0) || !(kernel_tflops > 0)) return 256;
    double rows = margin * (double)hkv * elem * kernel_tflops * 1e12 / (2.0 * h * link_gbps * 1e9);
    int64_t r = (int64_t)ceil(rows / 256.0) * 256;
    return r < 256 ? 256 : r;
}
