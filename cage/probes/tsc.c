/* Observes: the time-stamp counter via RDTSC and RDTSCP (incl. TSC_AUX, which Linux sets to the CPU/node number). Cage: handled -- PR_SET_TSC(PR_TSC_SIGSEGV), the fault answered from the logical clock (3 ticks/ns), TSC_AUX = 0. */
#include <stdio.h>
#include <stdint.h>

static inline uint64_t rdtsc(void) {
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((uint64_t)hi << 32) | lo;
}
static inline uint64_t rdtscp(uint32_t *aux) {
    uint32_t lo, hi, c;
    __asm__ volatile("rdtscp" : "=a"(lo), "=d"(hi), "=c"(c));
    *aux = c;
    return ((uint64_t)hi << 32) | lo;
}

int main(void) {
    uint64_t prev = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t t = rdtsc();
        printf("rdtsc %d %llu delta %llu\n", i, (unsigned long long)t, (unsigned long long)(i ? t - prev : 0));
        prev = t;
    }
    for (int i = 0; i < 4; i++) {
        uint32_t aux = 0xffffffff;
        uint64_t t = rdtscp(&aux);
        printf("rdtscp %d %llu aux 0x%x cpu %u node %u\n", i, (unsigned long long)t, aux, aux & 0xfff, aux >> 12);
    }
    return 0;
}
