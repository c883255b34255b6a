/* Observes: instructions that cannot be trapped -- RDRAND, RDSEED (hardware randomness) and RDPID (CPU number) -- used only where CPUID advertises them; variant "blind" executes them without asking CPUID. Cage: default variant handled (the virtual CPUID hides them, so it prints "absent"); "blind" is a known hole (host values show through). */
#include <stdio.h>
#include <stdint.h>
#include <string.h>

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

int main(int argc, char **argv) {
    int blind = argc > 1 && strcmp(argv[1], "blind") == 0;
    uint32_t r[4];
    cpuid(0, 0, r);
    uint32_t maxleaf = r[0];
    cpuid(1, 0, r);
    int has_rdrand = (r[2] >> 30) & 1;
    int has_rdseed = 0, has_rdpid = 0;
    if (maxleaf >= 7) {
        cpuid(7, 0, r);
        has_rdseed = (r[1] >> 18) & 1;
        has_rdpid = (r[2] >> 22) & 1;
    }
    printf("cpuid_says rdrand %d rdseed %d rdpid %d\n", has_rdrand, has_rdseed, has_rdpid);
    if (blind) has_rdrand = has_rdseed = has_rdpid = 1;
    /* Two draws of a random-number instruction, with its carry flag. */
#define DRAW(insn)                                                               \
    for (int i = 0; i < 2; i++) {                                                \
        uint64_t v; unsigned char ok;                                            \
        __asm__ volatile(insn " %0; setc %1" : "=r"(v), "=qm"(ok));              \
        printf("%s %d ok %u 0x%016llx\n", insn, i, ok, (unsigned long long)v);   \
    }
    if (has_rdrand) { DRAW("rdrand") } else printf("rdrand absent\n");
    if (has_rdseed) { DRAW("rdseed") } else printf("rdseed absent\n");
    if (has_rdpid) {
        uint64_t v;
        /* A CPU without RDPID faults here (SIGILL, "blind"): what came before must show. */
        fflush(stdout);
        __asm__ volatile("rdpid %0" : "=r"(v));
        printf("rdpid 0x%llx\n", (unsigned long long)v);
    } else printf("rdpid absent\n");
    return 0;
}
