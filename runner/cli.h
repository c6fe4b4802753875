/* cli.h — the command line: `fa_long [run options]`, `fa_long gen|check|tune ...`. */
#pragma once
#include <getopt.h>
#include <stddef.h>
#include "runner/job.h"

/* fa_seterr for the unknown option `arg` ("--casual", "--chnk=64") of a command whose getopt table
 * is opts: "<who>unknown option '--casual' (did you mean --causal? see <help>)"; who is "" or
 * "gen: ". Returns -1. */
int cli_unknown_option(const char *who, const char *arg, const struct option *opts,
                       const char *help);

/* Parses the run options into *job. Returns 0, 1 when --help/--version was handled (exit 0), or
 * -1 with fa_seterr on a usage error. */
int cli_parse_run(int argc, char **argv, fa_job *job);
/* A --layout/--out-layout value (bnhd, bhnd) into *out; -1 with fa_seterr naming the option opt
 * of command `who` ("" or "gen: "). */
int cli_parse_layout(const char *who, const char *opt, const char *s, fa_layout *out);
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
    char mask[256];          /* the output's mask: "causal", "non-causal", "window 128,0, ..." */
} check_result;
int check_sampled(const char *in, const char *out, int64_t nrows, double tol, uint64_t seed,
                  check_result *r);
void check_print(const check_result *r, const char *out);

int cmd_run(int argc, char **argv);     /* runner/run.c */
int cmd_gen(int argc, char **argv);     /* runner/gen.c */
int cmd_check(int argc, char **argv);   /* runner/check.c */
int cmd_tune(int argc, char **argv);    /* runner/tune.c */
