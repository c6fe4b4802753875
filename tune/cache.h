/* cache.h — the tune cache: a text file that remembers what `fa_long tune` measured, one section
 * per (device, D, dtype, causal, GQA ratio), plus one [machine DEVICE] section of measured figures:
 *   # fa_long tune cache
 *   version = 2
 *   [machine cpu AMD EPYC 7R13 x2]
 *   cpu_gflops = 120.50
 *   ...
 *   [cpu AMD EPYC 7R13 x2 | d=128 dtype=float32 causal=1 gqa=4]
 *   br = 16
 *   ...
 *   merges_in_flight = 3
 * dtype is the type the engine computes in: float32 on the CPU engine (inputs of every type are
 * converted to it), bfloat16 or float16 on a GPU (--compute).
 * Reading never fails a run: a missing file is silent, anything else that does not parse is
 * ignored with one warning line. Reads no environment (cm_cache_path takes its values). */
#pragma once
#include "tune/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 2: `merges_in_flight` (version 1 called it `window`; its files are read as they are) */
#define CM_CACHE_VERSION 2

/* The file: opt (--tune-cache) when given, else env_fa_tune_cache ($FA_TUNE_CACHE), else
 * env_home/.cache/fa_long/tune.txt ($HOME; "." when unset). Written into buf; returns buf. */
const char *cm_cache_path(const char *opt, const char *env_fa_tune_cache, const char *env_home,
                          char *buf, int len);
/* The name of a cm_job's dtype (the compute type): float32 (-1, the CPU engine's), bfloat16 (0),
 * float16 (1). */
const char *cm_dtype_name(int dtype);
/* The section name of a job on a device: "DEVICE | d=128 dtype=float32 causal=1 gqa=4". */
void cm_cache_key(const char *device, const cm_job *j, char *buf, int len);
/* m zeroed, with this machine's thread count and device name for the job (its GPU, or the CPU
 * and j->threads, else all threads), and the job's cache key in key[len]. */
void cm_job_machine_key(const cm_job *j, cm_machine *m, char *key, int len);
/* Returns 1 and fills c (source "cache") when the file holds a valid entry for key, 0 otherwise.
 * A missing file is silent; a corrupt, truncated or foreign-version file, a bad entry, or entries
 * only for other devices give one warning line (to stderr, when warn) and are ignored. */
int cm_cache_lookup(const char *path, const char *key, const char *device, cm_choice *c, int warn);
/* An entry for the same CPU, job kind and tail of `key` but another thread count: the one whose
 * count is nearest (by ratio; ties: the larger); its section name into near. 1 when found. The
 * device's thread count is a rank's share of its node, which changes with the ranks a node runs. */
int cm_cache_nearest(const char *path, const char *key, char *near, int len);
/* An entry for the same device and job as `key` but another dtype (compute type): the first in
 * the file; its section name into other. 1 when found. */
int cm_cache_other_dtype(const char *path, const char *key, char *other, int len);
/* The machine figures `fa_long tune` stored for device ([machine DEVICE]) into m; 1 when found
 * (m unchanged otherwise). */
int cm_cache_machine(const char *path, const char *device, cm_machine *m);
/* Adds or replaces key's entry and m's [machine] section (written to a temporary file, then
 * renamed). Returns 0 or -1 (fa_seterr). */
int cm_cache_store(const char *path, const char *key, const cm_choice *c, const cm_machine *m);

#ifdef __cplusplus
}
#endif
