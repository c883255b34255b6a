/* Observes: signal delivery order (synchronous raise/kill, blocked-then-unblocked pending signals); variants "timer" (alarm + pause) and "itimer" (setitimer + pause) observe timer signals, which fire at a host time. Variant "nopending" is the default without sigpending (kept from before rt_sigpending was allowed in the cage). Cage: default variant deterministic (synchronous signals); alarm and setitimer refused ("timers"). */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <sys/time.h>
#include <sys/wait.h>

static volatile int seq[32];
static volatile int nseq;

static void handler(int sig) {
    if (nseq < 32) seq[nseq++] = sig;
}

static void dump(const char *label) {
    printf("%s", label);
    for (int i = 0; i < nseq; i++) printf(" %d", seq[i]);
    printf("\n");
    nseq = 0;
}

int main(int argc, char **argv) {
    const char *v = argc > 1 ? argv[1] : "default";
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    int sigs[] = {SIGUSR1, SIGUSR2, SIGINT, SIGTERM, SIGALRM, SIGRTMIN, SIGRTMIN + 1};
    for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
    printf("variant %s\n", v);
    if (strcmp(v, "timer") == 0) {
        fflush(stdout);
        unsigned prev = alarm(1);
        printf("alarm ret %u\n", prev);
        fflush(stdout);
        pause();
        dump("delivered");
        return 0;
    }
    if (strcmp(v, "itimer") == 0) {
        fflush(stdout);
        struct itimerval it = {{0, 0}, {0, 100000}};
        int r = setitimer(ITIMER_REAL, &it, NULL);
        printf("setitimer ret %d\n", r);
        fflush(stdout);
        pause();
        dump("delivered");
        return 0;
    }
    raise(SIGUSR1);
    kill(getpid(), SIGUSR2);
    dump("sync_delivered");
    sigset_t block, old, pend;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGRTMIN);
    sigaddset(&block, SIGRTMIN + 1);
    sigprocmask(SIG_BLOCK, &block, &old);
    kill(getpid(), SIGTERM);
    raise(SIGUSR2);
    kill(getpid(), SIGRTMIN + 1);
    raise(SIGINT);
    kill(getpid(), SIGRTMIN);
    raise(SIGUSR1);
    kill(getpid(), SIGRTMIN); /* queued twice */
    if (strcmp(v, "nopending") != 0) {
        fflush(stdout);
        sigpending(&pend);
        printf("pending");
        for (int s = 1; s < 65; s++) if (sigismember(&pend, s)) printf(" %d", s);
        printf("\n");
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    dump("unblocked_delivered");
    /* a child signalling its parent */
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) { kill(getppid(), SIGUSR1); _exit(0); }
    int st;
    while (nseq == 0) { if (waitpid(p, &st, WNOHANG) == p) { p = -1; break; } }
    if (p > 0) waitpid(p, &st, 0);
    dump("from_child");
    return 0;
}
