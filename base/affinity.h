/* affinity.h — the CPUs a rank may run on. What the node lets this process use (its cgroup's
 * cpuset, else the online CPUs), a disjoint slice of them for each rank of a node, and how the
 * launcher set the affinity the process started with (the runner reads that from the launcher's
 * environment: runner/plan.c, plan_binding_read; fa_binding in common.h). fa_threads_setup
 * (common.h) puts them together: a rank that the launcher's default binding confined to fewer
 * CPUs than its share of the node gets its slice back before any OpenMP thread exists. */
#pragma once
#ifndef _GNU_SOURCE
#define _GNU_SOURCE            /* cpu_set_t */
#endif
#include <sched.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "0-3,8,10-11" into *set (cleared first); -1 when malformed or empty. */
int fa_cpulist_parse(const char *s, cpu_set_t *set);
/* The node's CPUs this process may use: its cgroup's cpuset (cpuset.cpus.effective under cgroup
 * v2, cpuset.effective_cpus under v1, from /proc/self/cgroup and /proc/self/mountinfo) within
 * the online CPUs, else the online CPUs. Returns how many; *from says which ("cgroup cpuset" or
 * "online CPUs"). */
int fa_cpus_allowed(cpu_set_t *set, const char **from);
/* The cpuset of a process's cgroup, from its cgroup file and mount table (/proc/self/cgroup and
 * /proc/self/mountinfo for this process; other files in tests); -1 when there is none. */
int fa_cgroup_cpus(const char *cgroup_file, const char *mountinfo_file, cpu_set_t *set);
/* Rank r of n ranks on a node: its own contiguous slice of `allowed` (sizes differ by at most
 * one, the slices of 0..n-1 disjoint and together all of `allowed`), in the order of key[cpu]
 * (ascending; key has CPU_SETSIZE entries). */
void fa_cpus_slice_keyed(const cpu_set_t *allowed, const int64_t *key, int r, int n,
                         cpu_set_t *slice);
/* The same in the node's topology order (package, core, CPU number; sysfs): a slice holds whole
 * cores, with their hardware threads, and stays within a package where it can. */
void fa_cpus_slice(const cpu_set_t *allowed, int r, int n, cpu_set_t *slice);

#ifdef __cplusplus
}
#endif
