/* Observes: time through libc (clock_gettime/gettimeofday/time, natively via the vDSO without a syscall) plus localtime/gmtime/strftime (TZ). Cage: handled -- vDSO hidden and unmapped so libc falls back to the traced syscalls; TZ=UTC. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/time.h>
#include <sys/auxv.h>

#include "clocks.h"

int main(void) {
    printf("auxv_sysinfo_ehdr 0x%lx\n", getauxval(AT_SYSINFO_EHDR));
    for (unsigned i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
        struct timespec ts = {0, 0};
        int r = clock_gettime(clocks[i].id, &ts);
        printf("clock_gettime %s ret %d %lld.%09ld\n", clocks[i].name, r, (long long)ts.tv_sec, ts.tv_nsec);
    }
    for (unsigned i = 0; i < sizeof clocks / sizeof clocks[0]; i++) {
        struct timespec ts = {0, 0};
        int r = clock_getres(clocks[i].id, &ts);
        printf("clock_getres %s ret %d %lld.%09ld\n", clocks[i].name, r, (long long)ts.tv_sec, ts.tv_nsec);
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    printf("gettimeofday %lld.%06ld\n", (long long)tv.tv_sec, (long)tv.tv_usec);
    time_t t = time(NULL);
    printf("time %lld\n", (long long)t);
    const char *tz = getenv("TZ");
    printf("env_TZ %s\n", tz ? tz : "(unset)");
    struct tm lt, gt;
    localtime_r(&t, &lt);
    gmtime_r(&t, &gt);
    char buf[128];
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S %Z %z", &lt);
    printf("localtime %s isdst %d\n", buf, lt.tm_isdst);
    strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S %Z %z", &gt);
    printf("gmtime %s\n", buf);
    printf("tzname %s %s timezone %ld daylight %d\n", tzname[0], tzname[1], timezone, daylight);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("monotonic_delta_ns %lld\n",
           (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
    clock_t c = clock();
    printf("clock %ld\n", (long)c);
    return 0;
}
