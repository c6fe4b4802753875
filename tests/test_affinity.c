/* test_affinity.c — the CPUs a rank may run on (base/affinity.h): CPU lists as the kernel writes
 * them, the CPUs this process's cgroup and the online CPUs allow, and the per-rank slices a
 * widened rank takes (disjoint, covering, balanced, whole cores first, one package per rank where
 * the ranks divide the packages). */
#define _GNU_SOURCE
#include "base/affinity.h"
#include "tests/testing.h"
#include <string.h>
#include <sys/stat.h>

static char tmp[] = "/tmp/fa_affinity_XXXXXX";

static void put_file(const char *rel, const char *text) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, rel);
    for (char *p = path + strlen(tmp) + 1; (p = strchr(p, '/')); p++) {   /* its folders */
        *p = 0;
        mkdir(path, 0755);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    if (f) fputs(text, f), fclose(f);
}

/* the cpuset a fake /proc/self/cgroup and mountinfo lead to ("" when none is found) */
static const char *fake_cgroup(const char *cgroup, const char *mountinfo, char *out) {
    char cg[512], mi[512];
    put_file("cgroup", cgroup);
    put_file("mountinfo", mountinfo);
    snprintf(cg, sizeof cg, "%s/cgroup", tmp);
    snprintf(mi, sizeof mi, "%s/mountinfo", tmp);
    cpu_set_t s;
    out[0] = 0;
    if (fa_cgroup_cpus(cg, mi, &s) == 0)
        for (int c = 0, k = 0; c < CPU_SETSIZE; c++)
            if (CPU_ISSET(c, &s)) k += sprintf(out + k, "%s%d", k ? "," : "", c);
    return out;
}

/* cgroup v2 and v1 trees under a temporary folder, as the kernel lays them out */
static void cgroups(void) {
    if (!mkdtemp(tmp)) { check(0, "mkdtemp"); return; }
    char got[4096], mi[1024];
    /* v2: the job's cgroup has cpuset on, its task's leaf not (the parent's file counts) */
    snprintf(mi, sizeof mi, "30 1 0:26 / %s/v2 rw,nosuid shared:4 - cgroup2 cgroup2 rw\n", tmp);
    put_file("v2/cpuset.cpus.effective", "0-15\n");
    put_file("v2/slurm/job_7/cpuset.cpus.effective", "2-3,6\n");
    put_file("v2/slurm/job_7/task_0/cgroup.procs", "1\n");
    check(!strcmp(fake_cgroup("0::/slurm/job_7/task_0\n", mi, got), "2,3,6"),
          "cgroup v2, cpuset on the job's cgroup: 2,3,6 (got '%s')", got);
    check(!strcmp(fake_cgroup("0::/\n", mi, got), "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15"),
          "cgroup v2 root: 0-15 (got '%s')", got);
    /* v1: the cpuset hierarchy among others; a container's mount whose root is its own cgroup */
    snprintf(mi, sizeof mi, "34 31 0:31 /docker/abc %s/v1 rw,relatime - cgroup cgroup rw,cpuset\n"
                            "41 31 0:38 / %s/v2 rw,relatime - cgroup2 cgroup2 rw\n", tmp, tmp);
    put_file("v1/cpuset.effective_cpus", "4-5\n");
    check(!strcmp(fake_cgroup("4:memory:/docker/abc\n3:cpuset,cpu:/docker/abc\n0::/\n", mi, got),
                  "4,5"), "cgroup v1 in a container: 4,5 (got '%s')", got);
    /* no cpuset controller anywhere: none (the online CPUs then count) */
    snprintf(mi, sizeof mi, "35 31 0:32 / %s/mem rw - cgroup cgroup rw,memory\n", tmp);
    check(!strcmp(fake_cgroup("4:memory:/\n", mi, got), ""), "no cpuset hierarchy: none (got '%s')", got);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0) printf("INFO  could not remove %s\n", tmp);
}

/* slices of `allowed` for n ranks: disjoint, together `allowed`, sizes within one */
static void slices_partition(const cpu_set_t *allowed, const int64_t *key, int n, const char *what) {
    cpu_set_t seen, s;
    CPU_ZERO(&seen);
    int lo = CPU_SETSIZE, hi = 0, overlap = 0;
    for (int r = 0; r < n; r++) {
        if (key) fa_cpus_slice_keyed(allowed, key, r, n, &s);
        else fa_cpus_slice(allowed, r, n, &s);
        cpu_set_t both;
        CPU_AND(&both, &seen, &s);
        overlap += CPU_COUNT(&both);
        CPU_OR(&seen, &seen, &s);
        int c = CPU_COUNT(&s);
        lo = c < lo ? c : lo;
        hi = c > hi ? c : hi;
    }
    check(!overlap && CPU_EQUAL(&seen, allowed) && hi - lo <= 1,
          "%s, %d ranks: slices disjoint (%d shared), cover the %d CPUs, %d-%d each", what, n,
          overlap, CPU_COUNT(allowed), lo, hi);
}

int main(void) {
    cpu_set_t s, want;
    check(fa_cpulist_parse("0-3,8,10-11\n", &s) == 0 && CPU_COUNT(&s) == 7 && CPU_ISSET(8, &s) &&
          CPU_ISSET(11, &s) && !CPU_ISSET(9, &s), "list 0-3,8,10-11: 7 CPUs");
    check(fa_cpulist_parse("5", &s) == 0 && CPU_COUNT(&s) == 1 && CPU_ISSET(5, &s), "list 5");
    const char *bad[] = {"", "a", "3-1", "1,,2", "1-", "-2", "1 2"};
    for (unsigned i = 0; i < sizeof bad / sizeof *bad; i++)
        check(fa_cpulist_parse(bad[i], &s) == -1, "list '%s' refused", bad[i]);

    cgroups();

    /* this machine: the allowed set holds this process's own mask and only online CPUs */
    const char *from = NULL;
    int n = fa_cpus_allowed(&s, &from);
    cpu_set_t mine, online, part;
    sched_getaffinity(0, sizeof mine, &mine);
    CPU_AND(&part, &mine, &s);
    FILE *f = fopen("/sys/devices/system/cpu/online", "r");
    char line[4096] = "";
    int have_online = f && fgets(line, sizeof line, f) && fa_cpulist_parse(line, &online) == 0;
    if (f) fclose(f);
    check(n == CPU_COUNT(&s) && n >= 1 && CPU_EQUAL(&part, &mine) && from &&
          (!strcmp(from, "cgroup cpuset") || !strcmp(from, "online CPUs")),
          "allowed: %d CPUs (%s), this process's %d among them", n, from, CPU_COUNT(&mine));
    if (have_online) {
        CPU_AND(&part, &s, &online);
        check(CPU_EQUAL(&part, &s), "allowed CPUs are online (%s)", strtok(line, "\n"));
    }
    for (int r = 1; r <= 4; r++) slices_partition(&s, NULL, r, "this machine's topology");

    /* a node of 2 packages x 4 cores x 2 hardware threads, numbered as Linux does: CPUs 0-7 the
     * cores' first threads (0-3 package 0), 8-15 their siblings (8-11 package 0) */
    int64_t key[CPU_SETSIZE];
    CPU_ZERO(&s);
    for (int c = 0; c < CPU_SETSIZE; c++) key[c] = c;
    for (int c = 0; c < 16; c++) {
        int core = c % 8, pkg = core / 4;
        key[c] = ((int64_t)pkg << 32) | core;
        CPU_SET(c, &s);
    }
    for (int r = 1; r <= 16; r++) slices_partition(&s, key, r, "2x4x2 node");
    fa_cpus_slice_keyed(&s, key, 0, 2, &part);
    fa_cpulist_parse("0-3,8-11", &want);
    check(CPU_EQUAL(&part, &want), "2 ranks: rank 0 takes package 0, both threads of its 4 cores");
    fa_cpus_slice_keyed(&s, key, 3, 4, &part);
    fa_cpulist_parse("6-7,14-15", &want);
    check(CPU_EQUAL(&part, &want), "4 ranks: rank 3 takes package 1's last 2 cores, with siblings");
    /* a cpuset that leaves holes (a Slurm job's CPUs): slices only ever hold allowed CPUs */
    fa_cpulist_parse("2-5,12-13", &s);
    slices_partition(&s, key, 2, "cpuset 2-5,12-13");
    fa_cpus_slice_keyed(&s, key, 1, 2, &part);
    fa_cpulist_parse("5,12-13", &want);
    check(CPU_EQUAL(&part, &want), "cpuset 2-5,12-13, rank 1 of 2: 5,12-13 (3 of the 6, in topology order)");
    return tests_done();
}
