/* cli.h — the command line: `fa_long [run options]`, `fa_long gen ...`, `fa_long check ...`. */
#pragma once
#include "runner/job.h"

/* Parses the run options into *job. Returns 0, 1 when --help/--version was handled (exit 0), or
 * -1 with fa_seterr on a usage error. */
int cli_parse_run(int argc, char **argv, fa_job *job);
void cli_print_version(void);

/* fa_long check's measurement, also used by `fa_long --check ROWS` and the report. */
typedef struct {
    int rows, heads, causal, has_lse, nonfinite, pass;
    double scale, tol, abs_err, rel_err, ref_max, lse_err;
    double kappa;            /* conditioning: the largest |scale q.k| of the sampled rows (fp64) */
    double tol_floor;        /* the output and compute types' own floor of the tolerance */
    int tol_given;           /* tol came from --tol */
    fa_dtype otype;
    char compute[32];
} check_result;
int check_sampled(const char *in, const char *out, int64_t nrows, double tol, uint64_t seed,
                  check_result *r);
void check_print(const check_result *r, const char *out);

int cmd_run(int argc, char **argv);     /* runner/run.c */
int cmd_gen(int argc, char **argv);     /* runner/gen.c */
int cmd_check(int argc, char **argv);   /* runner/check.c */
int cmd_tune(int argc, char **argv);    /* runner/tune.c */
