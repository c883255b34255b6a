/* Observes: wall/monotonic/CPU time through raw syscalls (clock_gettime for every clock id, clock_getres, gettimeofday, time). Cage: handled -- answered from the per-process logical clock (2000-01-01T00:00:00Z, +1 us per reading), resolution fixed at 1 ns. Variant "vsyscall" calls the legacy vsyscall page (gettimeofday at 0xffffffffff600000, time at 0xffffffffff600400), which the kernel emulates on the page fault rather than through a syscall instruction. Variant "times" sleeps 11 ms (so that native runs cannot share one 10 ms tick) and calls times(2) (CPU ticks and elapsed ticks since boot; answered in the cage from the logical clock), "rusage" reaps a CPU-burning child with wait4 and its usage, then calls getrusage for itself and its children (answered in the cage: no usage, all zeros), "end" sleeps for the longest time nanosleep takes and then reads the clocks (natively it never wakes; in the cage the logical clock goes to its end, where it stops, and the supervisor panicked on an overflow before). */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/resource.h>

#include "clocks.h"

typedef long (*vgtod_t)(struct timeval *, void *);
typedef long (*vtime_t)(time_t *);

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "vsyscall")) {
        printf("variant vsyscall\n");
        fflush(stdout);
        struct timeval tv = {0, 0};
        long r = ((vgtod_t)0xffffffffff600000UL)(&tv, NULL);
        printf("vsyscall_gettimeofday ret %ld %lld.%06ld\n", r, (long long)tv.tv_sec, (long)tv.tv_usec);
        fflush(stdout);
        time_t t = 0;
        long rt = ((vtime_t)0xffffffffff600400UL)(&t);
        printf("vsyscall_time ret %ld arg %lld\n", rt, (long long)t);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "times")) {
        printf("variant times\n");
        fflush(stdout);
        struct tms t;
        /* More than one 10 ms tick, so that natively no two runs in a row
           can read the same count (the runs take about 1 ms each). */
        struct timespec pause = {0, 11000000};
        nanosleep(&pause, NULL);
        long r = syscall(SYS_times, &t);
        printf("times ret %ld utime %ld stime %ld cutime %ld cstime %ld\n", r, (long)t.tms_utime, (long)t.tms_stime,
               (long)t.tms_cutime, (long)t.tms_cstime);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "end")) {
        printf("variant end\n");
        fflush(stdout);
        struct timespec longest = {0x7fffffffffffffffL, 999999999}, wall, monotonic;
        long slept = syscall(SYS_nanosleep, &longest, NULL);
        long r = syscall(SYS_clock_gettime, CLOCK_REALTIME, &wall);
        long m = syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &monotonic);
        struct timeval tv;
        long g = syscall(SYS_gettimeofday, &tv, NULL);
        long t = syscall(SYS_time, NULL);
        printf("slept %ld realtime %ld %lld.%09ld monotonic %ld %lld.%09ld gettimeofday %ld %lld.%06ld time %ld\n", slept,
               r, (long long)wall.tv_sec, wall.tv_nsec, m, (long long)monotonic.tv_sec, monotonic.tv_nsec, g,
               (long long)tv.tv_sec, (long)tv.tv_usec, t);
        return 0;
    }
    if (argc > 1 && !strcmp(argv[1], "rusage")) {
        printf("variant rusage\n");
        fflush(stdout);
        /* A child that burns CPU, so that its usage (through wait4 and
           RUSAGE_CHILDREN) differs natively from run to run. */
        pid_t child = fork();
        if (child == 0) {
            volatile unsigned long spin = 0;
            for (unsigned long i = 0; i < 20000000; i++) spin += i;
            _exit(0);
        }
        struct rusage ru;
        int status = 0;
        long w = syscall(SYS_wait4, child, &status, 0, &ru);
        printf("wait4 reaped %d status %d utime %ld.%06ld stime %ld.%06ld maxrss %ld minflt %ld nvcsw %ld nivcsw %ld\n",
               w == child, status, (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec, (long)ru.ru_stime.tv_sec,
               (long)ru.ru_stime.tv_usec, ru.ru_maxrss, ru.ru_minflt, ru.ru_nvcsw, ru.ru_nivcsw);
        int who[] = {RUSAGE_SELF, RUSAGE_CHILDREN};
        for (int i = 0; i < 2; i++) {
            long r = syscall(SYS_getrusage, who[i], &ru);
            printf("getrusage %s ret %ld utime %ld.%06ld stime %ld.%06ld maxrss %ld minflt %ld nvcsw %ld nivcsw %ld\n",
                   i ? "children" : "self", r, (long)ru.ru_utime.tv_sec, (long)ru.ru_utime.tv_usec,
                   (long)ru.ru_stime.tv_sec, (long)ru.ru_stime.tv_usec, ru.ru_maxrss, ru.ru_minflt, ru.ru_nvcsw,
                   ru.ru_nivcsw);
        }
        return 0;
    }
    for (unsigned i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
        struct timespec ts = {0, 0};
        long r = syscall(SYS_clock_gettime, clocks[i].id, &ts);
        printf("clock_gettime %s ret %ld errno %d %lld.%09ld\n", clocks[i].name, r, r ? errno : 0,
               (long long)ts.tv_sec, ts.tv_nsec);
    }
    for (unsigned i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
        struct timespec ts = {0, 0};
        long r = syscall(SYS_clock_getres, clocks[i].id, &ts);
        printf("clock_getres %s ret %ld errno %d %lld.%09ld\n", clocks[i].name, r, r ? errno : 0,
               (long long)ts.tv_sec, ts.tv_nsec);
    }
    struct timeval tv = {0, 0};
    long r = syscall(SYS_gettimeofday, &tv, NULL);
    printf("gettimeofday ret %ld %lld.%06ld\n", r, (long long)tv.tv_sec, (long)tv.tv_usec);
    time_t t = 0;
    long rt = syscall(SYS_time, &t);
    printf("time ret %ld arg %lld\n", rt, (long long)t);
    /* two consecutive readings: the difference is the host's speed natively */
    struct timespec a, b;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &a);
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &b);
    printf("monotonic_delta_ns %lld\n",
           (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
    /* nanosleep: natively takes real time; in the cage it returns at once and the clock moves on */
    struct timespec req = {0, 5000000}, s0, s1;
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &s0);
    long rn = syscall(SYS_nanosleep, &req, NULL);
    syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &s1);
    printf("nanosleep_5ms ret %ld elapsed_ns %lld\n", rn,
           (long long)(s1.tv_sec - s0.tv_sec) * 1000000000LL + (s1.tv_nsec - s0.tv_nsec));
    return 0;
}
