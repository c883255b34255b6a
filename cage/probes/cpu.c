/* Observes: which CPU the process runs on -- sched_getcpu() (glibc: the rseq area or the getcpu syscall), syscall(SYS_getcpu), glibc's own rseq registration (cpu_id field), and a fresh rseq registration attempt. Cage: handled -- getcpu answered CPU 0 node 0; rseq returns ENOSYS (so glibc's registration is absent). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <sched.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/rseq.h>

#define PROBE_RSEQ_SIG 0x53053053

static struct rseq probe_rseq __attribute__((aligned(32)));

int main(void) {
    printf("sched_getcpu %d\n", sched_getcpu());
    unsigned cpu = 0xffff, node = 0xffff;
    long r = syscall(SYS_getcpu, &cpu, &node, NULL);
    printf("getcpu ret %ld errno %d cpu %u node %u\n", r, r ? errno : 0, cpu, node);
    printf("glibc_rseq size %u offset %td flags %u\n", __rseq_size, __rseq_offset, __rseq_flags);
    if (__rseq_size > 0) {
        struct rseq *g = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
        printf("glibc_rseq cpu_id_start %u cpu_id %d\n", g->cpu_id_start, (int)g->cpu_id);
    }
    memset(&probe_rseq, 0, sizeof probe_rseq);
    probe_rseq.cpu_id = (uint32_t)RSEQ_CPU_ID_UNINITIALIZED;
    r = syscall(SYS_rseq, &probe_rseq, sizeof probe_rseq, 0, PROBE_RSEQ_SIG);
    printf("rseq_register ret %ld errno %d (%s)\n", r, r ? errno : 0, r ? strerror(errno) : "ok");
    if (r == 0) {
        printf("rseq cpu_id_start %u cpu_id %d\n", probe_rseq.cpu_id_start, (int)probe_rseq.cpu_id);
        sched_yield();
        printf("rseq after_yield cpu_id %d\n", (int)probe_rseq.cpu_id);
        r = syscall(SYS_rseq, &probe_rseq, sizeof probe_rseq, RSEQ_FLAG_UNREGISTER, PROBE_RSEQ_SIG);
        printf("rseq_unregister ret %ld\n", r);
    }
    return 0;
}
