/* Observes (dynamically linked, host /lib): time via libc (vDSO natively), getrandom, addresses of printf (libc mapping) and a stack variable, rdtsc, AT_SYSINFO_EHDR. Cage: handled -- vDSO hidden so libc makes traced syscalls, getrandom seeded, ASLR off, rdtsc faulted; the loader's and libc's files are witnessed by digest. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <time.h>
#include <sys/random.h>
#include <sys/auxv.h>

int main(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    printf("clock_gettime_realtime %lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("clock_gettime_monotonic %lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
    unsigned char b[16];
    long r = getrandom(b, sizeof b, 0);
    printf("getrandom %ld ", r);
    for (int i = 0; i < 16; i++) printf("%02x", b[i]);
    printf("\n");
    int stack_var;
    printf("printf_addr %p\n", (void *)printf);
    printf("stack_addr %p\n", (void *)&stack_var);
    printf("main_addr %p\n", (void *)main);
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    printf("rdtsc %llu\n", ((unsigned long long)hi << 32) | lo);
    printf("auxv_sysinfo_ehdr 0x%lx\n", getauxval(AT_SYSINFO_EHDR));
    printf("auxv_hwcap 0x%lx hwcap2 0x%lx\n", getauxval(AT_HWCAP), getauxval(AT_HWCAP2));
    return 0;
}
