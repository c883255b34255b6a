/* Observes: attempts to undo the cage, one per variant: "tsc" (prctl PR_SET_TSC ENABLE, then rdtsc), "cpuid" (arch_prctl ARCH_SET_CPUID 1, then cpuid), "seccomp" (prctl PR_SET_SECCOMP allow-all filter), "seccomp_syscall" (seccomp(2) the same), "personality" (personality(0): ASLR back on), "ptrace" (PTRACE_TRACEME), "ptrace_attach" (fork + PTRACE_ATTACH to the child), "unshare" (unshare CLONE_NEWUSER). Variant "fork" is not an escape attempt: it checks that a forked child (no exec) still has rdtsc, cpuid, time and getrandom virtualised (cage: handled, expected deterministic). Natively each succeeds. Cage: refused (prctl, arch_prctl) or policy-violation (syscalls not in the policy); nothing after the attempt is printed. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <sched.h>
#include <stddef.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/personality.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef ARCH_GET_CPUID
#define ARCH_GET_CPUID 0x1011
#define ARCH_SET_CPUID 0x1012
#endif

static void report(const char *what, long r) {
    printf("%s ret %ld errno %d (%s)\n", what, r, r < 0 ? errno : 0, r < 0 ? strerror(errno) : "ok");
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *v = argc > 1 ? argv[1] : "none";
    printf("variant %s\n", v);
    fflush(stdout);
    if (!strcmp(v, "tsc")) {
        int mode = -1;
        prctl(PR_GET_TSC, &mode, 0, 0, 0);
        printf("tsc_mode_before %d\n", mode);
        fflush(stdout);
        report("prctl_PR_SET_TSC_ENABLE", prctl(PR_SET_TSC, PR_TSC_ENABLE, 0, 0, 0));
        uint32_t lo, hi;
        __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
        printf("rdtsc %llu\n", ((unsigned long long)hi << 32) | lo);
    } else if (!strcmp(v, "cpuid")) {
        long g = syscall(SYS_arch_prctl, ARCH_GET_CPUID, 0);
        printf("arch_get_cpuid %ld\n", g);
        fflush(stdout);
        report("arch_prctl_ARCH_SET_CPUID_1", syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1));
        uint32_t r[4];
        __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(0x80000002), "c"(0));
        char b[17]; memcpy(b, r, 16); b[16] = 0;
        printf("brand_part %s\n", b);
    } else if (!strcmp(v, "seccomp") || !strcmp(v, "seccomp_syscall")) {
        struct sock_filter f[] = { BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW) };
        struct sock_fprog prog = { 1, f };
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        if (!strcmp(v, "seccomp")) report("prctl_PR_SET_SECCOMP", prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0));
        else report("seccomp_SET_MODE_FILTER", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog));
    } else if (!strcmp(v, "personality")) {
        long cur = personality(0xffffffff);
        printf("personality_current 0x%lx\n", cur);
        fflush(stdout);
        report("personality_0", personality(0));
    } else if (!strcmp(v, "ptrace")) {
        report("ptrace_TRACEME", ptrace(PTRACE_TRACEME, 0, 0, 0));
    } else if (!strcmp(v, "ptrace_attach")) {
        pid_t p = fork();
        if (p == 0) { pause(); _exit(0); }
        long r = ptrace(PTRACE_ATTACH, p, 0, 0);
        report("ptrace_ATTACH_child", r);
        kill(p, SIGKILL);
        waitpid(p, NULL, 0);
    } else if (!strcmp(v, "unshare")) {
        report("unshare_CLONE_NEWUSER", unshare(CLONE_NEWUSER));
    } else if (!strcmp(v, "fork")) {
        pid_t p = fork();
        const char *who = p == 0 ? "child" : "parent";
        uint32_t lo, hi, r[4];
        __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
        __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(0x80000002), "c"(0));
        char b[17]; memcpy(b, r, 16); b[16] = 0;
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        unsigned char rnd[8]; syscall(SYS_getrandom, rnd, 8, 0);
        char line[256];
        int len = snprintf(line, sizeof line, "%s rdtsc %llu brand_part %s time %lld.%09ld random %02x%02x%02x%02x%02x%02x%02x%02x\n", who,
                 ((unsigned long long)hi << 32) | lo, b, (long long)ts.tv_sec, ts.tv_nsec,
                 rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
        if (p == 0) { write(1, line, len); _exit(0); }
        waitpid(p, NULL, 0);
        write(1, line, len);
    } else {
        printf("variants: tsc cpuid seccomp seccomp_syscall personality ptrace ptrace_attach unshare fork\n");
    }
    return 0;
}
