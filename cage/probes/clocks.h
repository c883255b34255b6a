/* Every clock id the time probes read, with its name (shared by
   time_syscall.c and time_libc.c). */
#include <time.h>

#ifndef CLOCK_TAI
#define CLOCK_TAI 11
#endif

static const struct { int id; const char *name; } clocks[] = {
    {CLOCK_REALTIME, "REALTIME"}, {CLOCK_MONOTONIC, "MONOTONIC"},
    {CLOCK_PROCESS_CPUTIME_ID, "PROCESS_CPUTIME_ID"}, {CLOCK_THREAD_CPUTIME_ID, "THREAD_CPUTIME_ID"},
    {CLOCK_MONOTONIC_RAW, "MONOTONIC_RAW"}, {CLOCK_REALTIME_COARSE, "REALTIME_COARSE"},
    {CLOCK_MONOTONIC_COARSE, "MONOTONIC_COARSE"}, {CLOCK_BOOTTIME, "BOOTTIME"}, {CLOCK_TAI, "TAI"},
};
