/* affinity.c — see affinity.h. Reads only /proc and /sys; no environment. */
#define _GNU_SOURCE
#include "base/affinity.h"
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int fa_cpulist_parse(const char *s, cpu_set_t *set) {
    CPU_ZERO(set);
    int any = 0;
    while (s && *s && *s != '\n') {
        char *end;
        long a = strtol(s, &end, 10), b = a;
        if (end == s || a < 0) return -1;
        s = end;
        if (*s == '-') {
            b = strtol(s + 1, &end, 10);
            if (end == s + 1 || b < a) return -1;
            s = end;
        }
        for (long c = a; c <= b && c < CPU_SETSIZE; c++) CPU_SET((int)c, set), any = 1;
        if (*s == ',') s++;
        else if (*s && *s != '\n') return -1;
    }
    return any ? 0 : -1;
}

/* the first line of a small file, without its newline; -1 when unreadable or empty */
static int read_line(const char *path, char *buf, int len) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int ok = fgets(buf, len, f) != NULL;
    fclose(f);
    if (!ok) return -1;
    buf[strcspn(buf, "\n")] = 0;
    return buf[0] ? 0 : -1;
}

/* whether the comma-separated list `opts` holds `word` */
static int has_word(const char *opts, const char *word) {
    size_t n = strlen(word);
    for (const char *p = opts; p && *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !strncmp(p, word, n)) return 1;
        p += k + (p[k] == ',');
    }
    return 0;
}

/* Under v1, the hierarchy that holds the cpuset controller; under v2, the unified one. The
 * cgroup's folder is the mount point plus its path below the mount's root; a cgroup without the
 * file (v2: cpuset not enabled there) takes its parent's. */
int fa_cgroup_cpus(const char *cgroup_file, const char *mountinfo_file, cpu_set_t *set) {
    char line[4096], v1[2048] = "", v2[2048] = "";
    int has_v1 = 0, has_v2 = 0;
    FILE *f = fopen(cgroup_file, "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f)) {     /* "ID:CONTROLLERS:PATH" */
        line[strcspn(line, "\n")] = 0;
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = *c2 = 0;
        if (has_word(c1 + 1, "cpuset")) snprintf(v1, sizeof v1, "%s", c2 + 1), has_v1 = 1;
        else if (!strcmp(line, "0") && c2 == c1 + 1) snprintf(v2, sizeof v2, "%s", c2 + 1), has_v2 = 1;
    }
    fclose(f);
    if (!has_v1 && !has_v2) return -1;
    char m1[2048] = "", r1[2048] = "", m2[2048] = "", r2[2048] = "";
    if (!(f = fopen(mountinfo_file, "r"))) return -1;
    while (fgets(line, sizeof line, f)) {     /* "ID PARENT MAJ:MIN ROOT MOUNT OPTS... - TYPE SRC SUPER" */
        char root[2048], mnt[2048], type[64], super[1024] = "";
        const char *dash = strstr(line, " - ");
        if (!dash || sscanf(line, "%*s %*s %*s %2047s %2047s", root, mnt) != 2 ||
            sscanf(dash + 3, "%63s %*s %1023s", type, super) < 1)
            continue;
        if (!strcmp(type, "cgroup") && has_word(super, "cpuset") && !m1[0])
            snprintf(m1, sizeof m1, "%s", mnt), snprintf(r1, sizeof r1, "%s", root);
        else if (!strcmp(type, "cgroup2") && !m2[0])
            snprintf(m2, sizeof m2, "%s", mnt), snprintf(r2, sizeof r2, "%s", root);
    }
    fclose(f);
    const int v = has_v1 && m1[0] ? 1 : has_v2 && m2[0] ? 2 : 0;
    if (!v) return -1;
    const char *mnt = v == 1 ? m1 : m2, *root = v == 1 ? r1 : r2, *path = v == 1 ? v1 : v2;
    const char *file = v == 1 ? "cpuset.effective_cpus" : "cpuset.cpus.effective";
    size_t rl = strlen(root);
    if (strcmp(root, "/") && !strncmp(path, root, rl) && (path[rl] == '/' || !path[rl])) path += rl;
    char dir[4096], fn[4200], buf[4096];
    snprintf(dir, sizeof dir, "%s%s", mnt, path);
    const size_t top = strlen(mnt);
    for (;;) {
        size_t n = strlen(dir);
        while (n > top && dir[n - 1] == '/') dir[--n] = 0;
        snprintf(fn, sizeof fn, "%s/%s", dir, file);
        if (read_line(fn, buf, sizeof buf) == 0 && fa_cpulist_parse(buf, set) == 0) return 0;
        char *slash = strrchr(dir, '/');
        if (n <= top || !slash || (size_t)(slash - dir) < top) return -1;
        *slash = 0;
    }
}

int fa_cpus_allowed(cpu_set_t *set, const char **from) {
    cpu_set_t online, cg;
    char buf[4096];
    if (read_line("/sys/devices/system/cpu/online", buf, sizeof buf) || fa_cpulist_parse(buf, &online)) {
        CPU_ZERO(&online);
        for (long c = 0; c < sysconf(_SC_NPROCESSORS_ONLN) && c < CPU_SETSIZE; c++) CPU_SET((int)c, &online);
    }
    *set = online;
    *from = "online CPUs";
    if (fa_cgroup_cpus("/proc/self/cgroup", "/proc/self/mountinfo", &cg) == 0) {
        CPU_AND(&cg, &cg, &online);
        if (CPU_COUNT(&cg) > 0) *set = cg, *from = "cgroup cpuset";
    }
    return CPU_COUNT(set);
}

static int cmp_key_cpu(const void *a, const void *b) {   /* rows (key, cpu): by key, then CPU */
    const int64_t *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0]) - (x[0] < y[0]) : (x[1] > y[1]) - (x[1] < y[1]);
}

void fa_cpus_slice_keyed(const cpu_set_t *allowed, const int64_t *key, int r, int n,
                         cpu_set_t *slice) {
    /* (key, cpu) pairs sorted, then rank r takes positions [r·m/n, (r+1)·m/n) */
    int64_t order[CPU_SETSIZE][2];
    int m = 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, allowed)) order[m][0] = key[c], order[m][1] = c, m++;
    qsort(order, (size_t)m, sizeof order[0], cmp_key_cpu);
    CPU_ZERO(slice);
    const int64_t lo = (int64_t)r * m / n, hi = (int64_t)(r + 1) * m / n;
    for (int64_t i = lo; i < hi; i++) CPU_SET((int)order[i][1], slice);
}

void fa_cpus_slice(const cpu_set_t *allowed, int r, int n, cpu_set_t *slice) {
    int64_t key[CPU_SETSIZE];
    for (int c = 0; c < CPU_SETSIZE; c++) {
        key[c] = c;
        if (!CPU_ISSET(c, allowed)) continue;
        char fn[128], buf[64];
        long pkg = 0, core = c;
        snprintf(fn, sizeof fn, "/sys/devices/system/cpu/cpu%d/topology/physical_package_id", c);
        if (read_line(fn, buf, sizeof buf) == 0) pkg = strtol(buf, NULL, 10);
        snprintf(fn, sizeof fn, "/sys/devices/system/cpu/cpu%d/topology/core_id", c);
        if (read_line(fn, buf, sizeof buf) == 0) core = strtol(buf, NULL, 10);
        if (pkg < 0) pkg = 0;
        if (core < 0) core = c;
        key[c] = ((int64_t)pkg << 32) | ((int64_t)core & 0xffffffff);
    }
    fa_cpus_slice_keyed(allowed, key, r, n, slice);
}
