/* Observes: thread scheduling -- two pthreads racing on an unlocked counter and appending their id to a shared buffer (interleaving, lost updates). Cage: refused "threads" (clone with CLONE_THREAD) until threads can be serialised. */
#define _GNU_SOURCE
#include <stdio.h>
#include <pthread.h>
#include <string.h>

#define N 20000000L
static volatile long counter;
static volatile int pos;
static char order[256];

static void *worker(void *arg) {
    char id = *(char *)arg;
    for (long i = 0; i < N; i++) {
        counter++;
        if ((i & 0x3ffff) == 0) {
            int p = pos;
            if (p < 200) { order[p] = id; pos = p + 1; }
        }
    }
    return NULL;
}

int main(void) {
    printf("start\n");
    fflush(stdout);
    pthread_t a, b;
    char ia = 'A', ib = 'B';
    int ra = pthread_create(&a, NULL, worker, &ia);
    int rb = pthread_create(&b, NULL, worker, &ib);
    printf("pthread_create %d %d\n", ra, rb);
    if (ra == 0) pthread_join(a, NULL);
    if (rb == 0) pthread_join(b, NULL);
    order[pos < 200 ? pos : 200] = 0;
    printf("counter %ld expected %ld\n", counter, 2 * N);
    printf("interleaving %s\n", order);
    return 0;
}
