/* Observes: how far a syscall-free busy loop gets before a limit ends it (host speed). Cage: the run is ended by --limit wall-ms (limit-exceeded wall-ms; by design a failure, not a root to agree on); the loop makes no syscalls, so the events limit cannot stop it. */
#include <stdio.h>

int main(void) {
    printf("start\n");
    fflush(stdout);
    volatile unsigned long x = 0;
    for (;;) x++;
    return 0;
}
