/* Observes: process ids (getpid, getppid), fork child pids, and which child wait() reaps first. Cage: pids handled (fresh PID namespace, workload is PID 2, children numbered in creation order); reap order is a hole (not controlled). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

static void say(const char *s) { write(1, s, strlen(s)); }

int main(void) {
    char buf[128];
    printf("getpid %d\n", (int)getpid());
    printf("getppid %d\n", (int)getppid());
    fflush(stdout);
    pid_t kids[4];
    for (int i = 0; i < 4; i++) {
        fflush(stdout);
        pid_t p = fork();
        if (p == 0) {
            /* a little uneven work so natural finishing order varies */
            volatile unsigned long x = 0;
            for (unsigned long k = 0; k < (unsigned long)(4 - i) * 200000UL; k++) x += k;
            snprintf(buf, sizeof buf, "child %d pid %d ppid %d\n", i, (int)getpid(), (int)getppid());
            say(buf);
            _exit(10 + i);
        }
        kids[i] = p;
        snprintf(buf, sizeof buf, "forked %d pid %d\n", i, (int)p);
        say(buf);
    }
    for (int i = 0; i < 4; i++) {
        int st = 0;
        pid_t w = wait(&st);
        int idx = -1;
        for (int j = 0; j < 4; j++) if (kids[j] == w) idx = j;
        snprintf(buf, sizeof buf, "reaped %d pid %d child %d exit %d\n", i, (int)w, idx,
                 WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        say(buf);
    }
    return 0;
}
