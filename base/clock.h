/* clock.h — where a run's whole time starts: the process's own start, as the kernel recorded it,
 * on fa_now()'s clock (base/common.h), and what main() measured before the run (MPI_Init). */
#pragma once

typedef struct {
    double process;     /* the process's start, in fa_now() seconds (0: never set) */
    double main;        /* main()'s first line, the same clock */
    double mpi_init_s;  /* MPI_Init's time (main sets it) */
    const char *mpi_transport;   /* what MPI_Init was told of its transport (plan_mpi_env) */
    const char *from;   /* "process" (the kernel's start time) or "main" (where that is unknown
                           or implausible, see clock.c) */
} fa_start_clock;
extern fa_start_clock fa_start;

/* main()'s first call: fills fa_start.process, .main and .from. Local, no MPI. */
void fa_start_clock_init(void);
