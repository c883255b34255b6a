/* Observes: CPU identity via CPUID (leaves 0, 1 incl. EBX initial APIC id, 7, 0xb x2APIC id, brand string 0x80000002-4) and the kernel's auxv words AT_HWCAP, AT_HWCAP2, AT_PLATFORM, AT_MINSIGSTKSZ. Cage: CPUID handled by CPUID faulting (virtual baseline x86-64, brand "DockLock virtual CPU"); HWCAP/HWCAP2 and AT_MINSIGSTKSZ rewritten (16384); AT_PLATFORM left (x86_64 on every x86-64 host). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/auxv.h>

static void cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
    __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

#ifndef AT_MINSIGSTKSZ
#define AT_MINSIGSTKSZ 51
#endif

int main(void) {
    uint32_t r[4];
    cpuid(0, 0, r);
    char vendor[13];
    memcpy(vendor, &r[1], 4); memcpy(vendor + 4, &r[3], 4); memcpy(vendor + 8, &r[2], 4); vendor[12] = 0;
    printf("leaf0 max 0x%x vendor %s\n", r[0], vendor);
    uint32_t maxleaf = r[0];
    cpuid(1, 0, r);
    printf("leaf1 eax 0x%08x ebx 0x%08x ecx 0x%08x edx 0x%08x apic_id %u\n", r[0], r[1], r[2], r[3], r[1] >> 24);
    if (maxleaf >= 7) {
        cpuid(7, 0, r);
        printf("leaf7.0 eax 0x%08x ebx 0x%08x ecx 0x%08x edx 0x%08x\n", r[0], r[1], r[2], r[3]);
    } else printf("leaf7 absent\n");
    if (maxleaf >= 0xb) {
        for (uint32_t s = 0; s < 2; s++) {
            cpuid(0xb, s, r);
            printf("leafb.%u eax 0x%08x ebx 0x%08x ecx 0x%08x edx(x2apic) 0x%08x\n", s, r[0], r[1], r[2], r[3]);
        }
    } else printf("leafb absent\n");
    cpuid(0x80000000, 0, r);
    printf("ext max 0x%x\n", r[0]);
    if (r[0] >= 0x80000004) {
        char brand[49];
        for (uint32_t l = 0; l < 3; l++) { cpuid(0x80000002 + l, 0, r); memcpy(brand + 16 * l, r, 16); }
        brand[48] = 0;
        printf("brand %s\n", brand);
    } else printf("brand absent\n");
    printf("AT_HWCAP 0x%lx\n", getauxval(AT_HWCAP));
    printf("AT_HWCAP2 0x%lx\n", getauxval(AT_HWCAP2));
    const char *plat = (const char *)getauxval(AT_PLATFORM);
    printf("AT_PLATFORM %s\n", plat ? plat : "(none)");
    printf("AT_MINSIGSTKSZ %lu\n", getauxval(AT_MINSIGSTKSZ));
    return 0;
}
