/* Observes: address-space layout (ASLR) -- stack, small/large malloc, anonymous mmap, a global, main, a libc function, the program break, then /proc/self/maps (also device/inode numbers of mapped files); variant "nomaps" prints only the addresses. Cage: handled -- personality(ADDR_NO_RANDOMIZE) before exec; maps is readable (inputs are files in the cage's tmpfs, so the inode column is fixed; the device column comes from a host-wide pool: a hole). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

int global_var = 42;
static int static_bss;

int main(int argc, char **argv) {
    int stack_var = 0;
    void *small = malloc(16);
    void *large = malloc(1 << 20);
    void *anon = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("stack %p\n", (void *)&stack_var);
    printf("malloc_small %p\n", small);
    printf("malloc_large %p\n", large);
    printf("mmap_anon %p\n", anon);
    printf("global %p\n", (void *)&global_var);
    printf("static_bss %p\n", (void *)&static_bss);
    printf("main %p\n", (void *)main);
    printf("libc_memcpy %p\n", (void *)memcpy);
    printf("libc_printf %p\n", (void *)printf);
    printf("sbrk0 %p\n", sbrk(0));
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "nomaps") == 0) return 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) { printf("maps unavailable\n"); return 0; }
    char line[512];
    while (fgets(line, sizeof line, f)) printf("maps %s", line);
    fclose(f);
    return 0;
}
