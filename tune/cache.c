/* cache.c — see cache.h. */
#include "tune/cache.h"
#include <omp.h>
#include "base/common.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

const char *cm_cache_path(const char *opt, const char *env_fa_tune_cache, const char *env_home,
                          char *buf, int len) {
    if (opt && *opt) snprintf(buf, (size_t)len, "%s", opt);
    else if (env_fa_tune_cache && *env_fa_tune_cache) snprintf(buf, (size_t)len, "%s", env_fa_tune_cache);
    else snprintf(buf, (size_t)len, "%s/.cache/fa_long/tune.txt", env_home && *env_home ? env_home : ".");
    return buf;
}

const char *cm_dtype_name(int dtype) {
    return dtype < 0 ? "float32" : dtype == 1 ? "float16" : "bfloat16";
}

void cm_cache_key(const char *device, const cm_job *j, char *buf, int len) {
    snprintf(buf, (size_t)len, "%s | d=%d dtype=%s causal=%d gqa=%d", device, j->d,
             cm_dtype_name(j->dtype), j->causal ? 1 : 0, j->h / (j->hkv > 0 ? j->hkv : 1));
}

void cm_job_machine_key(const cm_job *j, cm_machine *m, char *key, int len) {
    memset(m, 0, sizeof *m);
    m->threads = j->threads > 0 ? j->threads : omp_get_max_threads();
    cm_device_name(j->gpu, m->threads, m->device, sizeof m->device);
    cm_cache_key(m->device, j, key, len);
}

static void trim(char *s) {
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r')) *--e = 0;
    char *b = s;
    while (*b == ' ' || *b == '\t') b++;
    if (b != s) memmove(s, b, strlen(b) + 1);
}

static int parse_ll(const char *v, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

/* One entry's key = value line into c; -1 on a bad value or unknown key. */
static int entry_field(cm_choice *c, const char *k, const char *v) {
    long long x;
    if (!strcmp(k, "measured_s") || !strcmp(k, "predicted_s")) {
        char *end;
        double d = strtod(v, &end);
        if (end == v || *end || !(d >= 0) || !isfinite(d)) return -1;
        if (k[0] == 'm') c->measured_s = d;
        else c->t_total = d;
        return 0;
    }
    if (!strcmp(k, "date") || !strcmp(k, "critical")) return 0;
#define FIELD(name, lo, hi) if (!strcmp(k, #name)) { if (parse_ll(v, lo, hi, &x)) return -1; c->name = x; return 0; }
    FIELD(br, 1, 4096) FIELD(bc, 8, 65536) FIELD(threads, 1, 4096) FIELD(chunk, 1, 1LL << 40)
    FIELD(variant, 0, 4) FIELD(block_rows, 0, 1LL << 40) FIELD(ring, 0, 16)
#undef FIELD
    /* merges in flight: "window" in the files of version 1 */
    if (!strcmp(k, "merges_in_flight") || !strcmp(k, "window")) {
        if (parse_ll(v, 1, 64, &x)) return -1;
        c->merges_in_flight = (int)x;
        return 0;
    }
    return -1;
}

static int machine_field(cm_machine *m, const char *k, const char *v) {
    if (!strcmp(k, "date")) return 0;
    char *end;
    double d = strtod(v, &end);
    if (end == v || *end || !(d >= 0) || !isfinite(d)) return -1;
    if (!strcmp(k, "cpu_gflops")) m->cpu_gflops = d;
    else if (!strcmp(k, "cpu_eff")) m->cpu_eff = d;
    else if (!strcmp(k, "mem_gbps")) m->mem_gbps = d;
    else if (!strcmp(k, "l2_gbps")) m->l2_gbps = d;
    else if (!strcmp(k, "l3_gbps")) m->l3_gbps = d;
    else if (!strcmp(k, "link_gbps")) m->link_gbps = d;
    else if (!strncmp(k, "gpu_tflops_v", 12) && k[12] >= '0' && k[12] <= '4' && !k[13])
        m->gpu_tflops[k[12] - '0'] = d;
    else if (!strcmp(k, "net_gbps")) m->net_gbps = d;
    else if (!strcmp(k, "threads")) m->threads = (int)d;
    else return -1;
    return 0;
}

/* Reads the file; for key (an entry) or "machine <device>" fills c or m. Returns 1 found,
 * 0 not found, -1 file ignored (warned). */
static int cache_machine(const char *path, const char *device, cm_machine *m);
static int cache_read(const char *path, const char *key, const char *device, cm_choice *c,
                      cm_machine *m, int warn) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1024], sect[1024] = "", mkey[256];
    snprintf(mkey, sizeof mkey, "machine %s", device);
    int version = -1, found = 0, in_target = 0, other_dev = 0, lineno = 0, bad = 0;
    const char *why = NULL;
    cm_choice tmp;
    memset(&tmp, 0, sizeof tmp);
    const char *tail = strchr(key ? key : "", '|');
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) { why = "line too long"; bad = 1; break; }
        trim(line);
        if (!line[0] || line[0] == '#') continue;
        if (line[0] == '[') {
            if (version != CM_CACHE_VERSION) { why = version < 0 ? "no version line" : "foreign version"; bad = 1; break; }
            char *e = strchr(line, ']');
            if (!e || e[1]) { why = "malformed section"; bad = 1; break; }
            *e = 0;
            snprintf(sect, sizeof sect, "%s", line + 1);
            trim(sect);
            in_target = (key && !strcmp(sect, key)) ? 1 : (m && !strcmp(sect, mkey)) ? 2 : 0;
            if (in_target == 1) { memset(&tmp, 0, sizeof tmp); found = 1; }
            const char *st = strchr(sect, '|');
            if (!in_target && tail && st && !strcmp(st, tail)) other_dev = 1;
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq) { why = "line without '='"; bad = 1; break; }
        *eq = 0;
        char *k = line, *v = eq + 1;
        trim(k);
        trim(v);
        if (!sect[0]) {
            if (!strcmp(k, "version")) {
                long long x;
                version = parse_ll(v, 0, 1000000, &x) ? -2 : (int)x;
                if (version == 1) version = CM_CACHE_VERSION;   /* read as it is (entry_field) */
                if (version != CM_CACHE_VERSION) { why = "foreign version"; bad = 1; break; }
            }
            continue;
        }
        if (in_target == 1 && entry_field(&tmp, k, v)) { why = "bad value in the entry"; bad = 1; break; }
        if (in_target == 2 && m && machine_field(m, k, v)) { why = "bad machine figure"; bad = 1; break; }
    }
    fclose(f);
    if (!bad && version != CM_CACHE_VERSION) { why = version == -1 ? "no version line (empty or truncated)" : "foreign version"; bad = 1; }
    if (!bad && found && (tmp.chunk <= 0 || tmp.merges_in_flight <= 0 || (!tmp.br != !tmp.bc))) {
        why = "incomplete entry (truncated?)";
        bad = 1;
    }
    if (bad) {
        if (warn) fa_warn("tune cache %s ignored: %s (line %d); using the model's choice", path, why, lineno);
        return -1;
    }
    if (found) {
        tmp.source = "cache";
        *c = tmp;
        return 1;
    }
    if (key && other_dev && warn)
        fa_warn("tune cache %s: entries for this job are for other devices, not '%s'; ignored", path, device);
    return 0;
}

int cm_cache_lookup(const char *path, const char *key, const char *device, cm_choice *c, int warn) {
    return cache_read(path, key, device, c, NULL, warn) == 1;
}

/* "cpu MODEL x8 | tail" -> the thread count 8 and the device's length before " x8"; 0 when the
 * device has no thread count (GPUs). */
static int key_threads(const char *key, int *pre) {
    const char *bar = strchr(key, '|');
    if (!bar) return 0;
    const char *x = NULL;
    for (const char *p = key; p < bar; p++)
        if (p[0] == ' ' && p[1] == 'x' && p[2] >= '0' && p[2] <= '9') x = p;
    if (!x) return 0;
    *pre = (int)(x - key);
    return atoi(x + 2);
}

/* The next section name of f into sect (without the brackets); 0 at the end of the file. */
static int next_section(FILE *f, char *sect, int len) {
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        trim(line);
        char *e = strchr(line, ']');
        if (line[0] != '[' || !e) continue;
        *e = 0;
        snprintf(sect, (size_t)len, "%s", line + 1);
        return 1;
    }
    return 0;
}

int cm_cache_nearest(const char *path, const char *key, char *near, int len) {
    int pre = 0, want = key_threads(key, &pre);
    if (want <= 0 || cache_read(path, NULL, "", NULL, NULL, 0) < 0) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    const char *tail = strchr(key, '|');
    char sect[1024];
    double best = INFINITY;
    int found = 0;
    while (next_section(f, sect, sizeof sect)) {
        int spre = 0, have = key_threads(sect, &spre);
        const char *st = strchr(sect, '|');
        if (have <= 0 || have == want || spre != pre || strncmp(sect, key, (size_t)pre) || !st ||
            strcmp(st, tail))
            continue;
        double d = fabs(log((double)have / want)) + (have < want ? 1e-9 : 0);   /* ties: more */
        if (d < best) {
            best = d;
            snprintf(near, (size_t)len, "%s", sect);
            found = 1;
        }
    }
    fclose(f);
    return found;
}

/* key split around its dtype: the length before " dtype=" and where the text after the type
 * starts; 0 when the key has no dtype. */
static int key_dtype(const char *key, size_t *pre, const char **rest) {
    const char *d = strstr(key, " dtype=");
    if (!d) return 0;
    *pre = (size_t)(d - key);
    *rest = d + strcspn(d + 1, " ") + 1;
    return 1;
}

int cm_cache_other_dtype(const char *path, const char *key, char *other, int len) {
    size_t pre, spre;
    const char *rest, *srest;
    if (!key_dtype(key, &pre, &rest) || cache_read(path, NULL, "", NULL, NULL, 0) < 0) return 0;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char sect[1024];
    int found = 0;
    while (!found && next_section(f, sect, sizeof sect))
        if (strcmp(sect, key) && key_dtype(sect, &spre, &srest) && spre == pre &&
            !strncmp(sect, key, pre) && !strcmp(srest, rest)) {
            snprintf(other, (size_t)len, "%s", sect);
            found = 1;
        }
    fclose(f);
    return found;
}

int cm_cache_machine(const char *path, const char *device, cm_machine *m) {
    return cache_machine(path, device, m);
}

static int cache_machine(const char *path, const char *device, cm_machine *m) {
    cm_machine t = *m;
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char line[1024], want[256];
    snprintf(want, sizeof want, "[machine %s]", device);
    int hit = 0;
    while (fgets(line, sizeof line, f)) { trim(line); if (!strcmp(line, want)) { hit = 1; break; } }
    fclose(f);
    if (!hit) return 0;
    if (cache_read(path, NULL, device, NULL, &t, 0) < 0) return 0;
    *m = t;
    return 1;
}

static int mkdirs(const char *path) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(buf, 0755) && errno != EEXIST) return -1;
            *p = '/';
        }
    return 0;
}

/* Copies the file's sections except `skip1` and `skip2` (whole sections) to out. A file that does
 * not parse (wrong version) is not copied: the new file starts clean. */
static void copy_other_sections(const char *path, FILE *out, const char *skip1, const char *skip2) {
    if (cache_read(path, NULL, "", NULL, NULL, 0) < 0) return;
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[1024], t[1024];
    int keep = 0;
    while (fgets(line, sizeof line, f)) {
        snprintf(t, sizeof t, "%s", line);
        trim(t);
        if (t[0] == '[') {
            char *e = strchr(t, ']');
            if (e) *e = 0;
            char *s = t + 1;
            trim(s);
            keep = strcmp(s, skip1) && strcmp(s, skip2);
        }
        if (keep) fputs(line, out);
    }
    fclose(f);
}

int cm_cache_store(const char *path, const char *key, const cm_choice *c, const cm_machine *m) {
    if (mkdirs(path)) return fa_seterr("tune cache %s: cannot create its folder", path);
    char tmp[4200], mkey[256], date[32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    snprintf(mkey, sizeof mkey, "machine %s", m->device);
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    FILE *f = fopen(tmp, "w");
    if (!f) return fa_seterr("tune cache %s: cannot write %s", path, tmp);
    fprintf(f, "# fa_long tune cache: written by `fa_long tune`, read by every run (README: Tuning)\n");
    fprintf(f, "version = %d\n", CM_CACHE_VERSION);
    copy_other_sections(path, f, key, mkey);
    fprintf(f, "[%s]\n", mkey);
    fprintf(f, "date = %s\nthreads = %d\ncpu_gflops = %.2f\ncpu_eff = %.4f\nmem_gbps = %.2f\n", date,
            m->threads, m->cpu_gflops, m->cpu_eff, m->mem_gbps);
    fprintf(f, "l2_gbps = %.2f\nl3_gbps = %.2f\n", m->l2_gbps, m->l3_gbps);
    fprintf(f, "link_gbps = %.2f\nnet_gbps = %.2f\n", m->link_gbps, m->net_gbps);
    for (int v = 0; v <= 4; v++)
        if (m->gpu_tflops[v] > 0) fprintf(f, "gpu_tflops_v%d = %.2f\n", v, m->gpu_tflops[v]);
    fprintf(f, "[%s]\n", key);
    fprintf(f, "date = %s\n", date);
    if (c->br) fprintf(f, "br = %d\nbc = %d\nthreads = %d\n", c->br, c->bc, c->threads);
    fprintf(f, "chunk = %lld\nmerges_in_flight = %d\n", (long long)c->chunk, c->merges_in_flight);
    if (m->gpu) fprintf(f, "variant = %d\nblock_rows = %lld\nring = %d\n", c->variant,
                        (long long)c->block_rows, c->ring);
    fprintf(f, "measured_s = %.6f\npredicted_s = %.6f\ncritical = %s\n", c->measured_s,
            isfinite(c->t_total) ? c->t_total : 0.0, c->critical ? c->critical : "compute");
    int bad = ferror(f);
    bad |= fclose(f);
    if (bad || rename(tmp, path)) {
        unlink(tmp);
        return fa_seterr("tune cache %s: write failed", path);
    }
    return 0;
}
