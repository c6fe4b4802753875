/* h5gen.h — writing input files (q, k, v) in fa_long's format; used by `fa_long gen`. */
#pragma once
#include <stdint.h>
#include "io/h5io.h"

/* Fills dst [n, heads, D] (fp32) with rows [r0, r0+n) of batch element b of dataset `name`. */
typedef void (*fa_fill_fn)(void *arg, const char *name, int64_t b, int64_t r0, int64_t n,
                           int64_t heads, int64_t d, float *dst);

/* Serial, one process. Writes q [B,Nq,H,D], k and v [B,Nk,Hkv,D] of element type t, slab by slab
 * (a few MB at a time, so any size fits in memory), under a temporary name renamed at the end;
 * in layout FA_BHND as [B,H,Nq,D] and [B,Hkv,Nk,D] (the same values: fill still gives rows).
 * A layout other than FA_LAYOUT_AUTO is recorded in each dataset's attribute 'layout'.
 * Returns -1 with fa_seterr on failure (exists without force, unwritable). */
int h5_write_inputs(const char *path, int force, const fa_shape *s, fa_dtype t, fa_layout layout,
                    fa_fill_fn fill, void *arg);

/* Serial, one process, on a finished file: sets (creates or replaces) a root attribute. */
int h5_set_attr_str(const char *path, const char *name, const char *value);
int h5_set_attr_double(const char *path, const char *name, double value);
int h5_set_attr_doubles(const char *path, const char *name, const double *v, int64_t n);
