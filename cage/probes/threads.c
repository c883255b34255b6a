/* Observes: thread scheduling -- threads racing on an unlocked counter (lost updates, interleaving), and with "sync" eight threads taking turns through a mutex, condition variables, a barrier, sleeps, timed waits, yields and stdio (the order they get the lock, what time each sees), "exit" the main thread leaving first, "deadlock" two threads waiting for each other, "io" an event loop thread waiting in epoll_wait and poll for what another thread writes to an eventfd and a pipe (and a poll timing out), "wait" the main thread waiting (waitpid, waitid) for two children that end only once another thread has fed their pipes, "pipe" one write of 300,000 bytes to a pipe another thread of the process reads, "socket" the same through one send on a stream socket pair, "vector" through one writev of three pieces to a pipe, "low-stack" a write of 10,000 bytes and a ppoll made with the stack pointer at 64 (the supervisor cannot put a try's arguments below it, and the calls run as they are). Cage: handled (threads serialised at system call entries, futexes and sleeps answered by the supervisor on the process's logical clock); "deadlock" is refused "threads". */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define N 20000000L
static volatile long counter;
static volatile int pos;
static char order[256];

static void *racer(void *arg) {
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

static int race(void) {
    pthread_t a, b;
    char ia = 'A', ib = 'B';
    int ra = pthread_create(&a, NULL, racer, &ia);
    int rb = pthread_create(&b, NULL, racer, &ib);
    printf("pthread_create %d %d\n", ra, rb);
    if (ra == 0) pthread_join(a, NULL);
    if (rb == 0) pthread_join(b, NULL);
    order[pos < 200 ? pos : 200] = 0;
    printf("counter %ld expected %ld\n", counter, 2 * N);
    printf("interleaving %s\n", order);
    return 0;
}

#define THREADS 8
#define ROUNDS 40
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t turn_changed = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t barrier;
static int turn;
static char trace[THREADS * ROUNDS * 2 + 1];
static int traced;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *worker(void *arg) {
    int id = (int)(long)arg;
    pthread_barrier_wait(&barrier);
    // Free for all: whoever gets the lock appends itself (the order is
    // the scheduler's).
    for (int i = 0; i < ROUNDS; i++) {
        pthread_mutex_lock(&lock);
        if (traced < (int)sizeof trace - 1) trace[traced++] = 'a' + id;
        pthread_mutex_unlock(&lock);
        if (i % 7 == id % 7) sched_yield();
        if (i % 11 == 0) usleep(100 * (id + 1));
    }
    // In turn, through a condition variable with a timed wait.
    pthread_mutex_lock(&lock);
    int timeouts = 0;
    while (turn != id) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_nsec += 1000000;
        if (deadline.tv_nsec >= 1000000000) { deadline.tv_sec++; deadline.tv_nsec -= 1000000000; }
        if (pthread_cond_timedwait(&turn_changed, &lock, &deadline) == ETIMEDOUT) timeouts++;
    }
    printf("thread %d turn at %.6f after %d timeouts\n", id, now(), timeouts);
    fflush(stdout);
    turn++;
    pthread_cond_broadcast(&turn_changed);
    pthread_mutex_unlock(&lock);
    return (void *)(long)(id * id);
}

static int sync_threads(void) {
    pthread_t threads[THREADS];
    pthread_barrier_init(&barrier, NULL, THREADS);
    double start = now();
    for (long i = 0; i < THREADS; i++) pthread_create(&threads[i], NULL, worker, (void *)i);
    long sum = 0;
    for (int i = 0; i < THREADS; i++) {
        void *result;
        pthread_join(threads[i], &result);
        sum += (long)result;
    }
    trace[traced] = 0;
    printf("lock order %s\n", trace);
    printf("joined sum %ld elapsed %.6f\n", sum, now() - start);
    return 0;
}

static void *late(void *arg) {
    (void)arg;
    usleep(2000);
    printf("the last thread ends the process at %.6f\n", now());
    fflush(stdout);
    return NULL;
}

static int main_exits_first(void) {
    pthread_t thread;
    pthread_create(&thread, NULL, late, NULL);
    printf("main thread leaves at %.6f\n", now());
    fflush(stdout);
    pthread_exit(NULL);
}

static pthread_mutex_t first = PTHREAD_MUTEX_INITIALIZER, second = PTHREAD_MUTEX_INITIALIZER;

static pthread_barrier_t both_hold_one;

static void *take_second_then_first(void *arg) {
    (void)arg;
    pthread_mutex_lock(&second);
    pthread_barrier_wait(&both_hold_one);
    pthread_mutex_lock(&first);
    return NULL;
}

static int deadlock(void) {
    pthread_t thread;
    /* A barrier, not a sleep: each thread surely holds one lock before it
       asks for the other, natively too, however loaded the host. */
    pthread_barrier_init(&both_hold_one, NULL, 2);
    pthread_mutex_lock(&first);
    pthread_create(&thread, NULL, take_second_then_first, NULL);
    pthread_barrier_wait(&both_hold_one);
    printf("both locks taken; each thread now waits for the other\n");
    fflush(stdout);
    pthread_mutex_lock(&second);
    printf("not reached\n");
    return 0;
}

static int wake_fd, pipe_fds[2];

static void *event_loop(void *arg) {
    (void)arg;
    int epoll = epoll_create1(0);
    struct epoll_event interest = {.events = EPOLLIN, .data.u32 = 7};
    epoll_ctl(epoll, EPOLL_CTL_ADD, wake_fd, &interest);
    for (int round = 0; round < 3; round++) {
        struct epoll_event ready;
        int n = epoll_wait(epoll, &ready, 1, -1);
        unsigned long long value = 0;
        if (read(wake_fd, &value, sizeof value) < 0) value = 0;
        printf("epoll round %d ready %d data %u value %llu at %.6f\n", round, n, ready.data.u32, value, now());
        fflush(stdout);
    }
    struct pollfd reader = {pipe_fds[0], POLLIN, 0};
    int n = poll(&reader, 1, 5);
    printf("poll 5 ms ready %d at %.6f\n", n, now());
    n = poll(&reader, 1, -1);
    char byte = 0;
    if (read(pipe_fds[0], &byte, 1) < 0) byte = '?';
    printf("poll ready %d read %c at %.6f\n", n, byte, now());
    fflush(stdout);
    return NULL;
}

static int io(void) {
    wake_fd = eventfd(0, 0);
    if (pipe(pipe_fds)) return 1;
    pthread_t loop;
    pthread_create(&loop, NULL, event_loop, NULL);
    for (unsigned long long i = 1; i <= 3; i++) {
        usleep(300);
        if (write(wake_fd, &i, sizeof i) < 0) return 1;
    }
    usleep(20000);
    if (write(pipe_fds[1], "x", 1) < 0) return 1;
    pthread_join(loop, NULL);
    printf("io done at %.6f\n", now());
    return 0;
}

/* Each child counts what it reads from its pipe until the end, and ends
   with that count; a thread of the parent feeds both pipes while the
   main thread waits for the children, so the waits can end only if the
   feeder runs meanwhile. */
static int feeds[2][2];

static void *feeder(void *arg) {
    (void)arg;
    for (int round = 0; round < 3; round++) {
        usleep(500);
        for (int child = 0; child < 2; child++)
            if (write(feeds[child][1], "abcd", (size_t)(child + 2)) < 0) return NULL;
    }
    printf("fed at %.6f\n", now());
    fflush(stdout);
    close(feeds[0][1]);
    close(feeds[1][1]);
    return NULL;
}

static int wait_for_children(void) {
    pid_t children[2];
    for (int child = 0; child < 2; child++) {
        if (pipe(feeds[child])) return 1;
        children[child] = fork();
        if (children[child] == 0) {
            close(feeds[child][1]);
            if (child == 1) close(feeds[0][1]);
            char buffer[64];
            int count = 0;
            ssize_t n;
            while ((n = read(feeds[child][0], buffer, sizeof buffer)) > 0) count += (int)n;
            _exit(count);
        }
        close(feeds[child][0]);
    }
    pthread_t thread;
    pthread_create(&thread, NULL, feeder, NULL);
    int status = 0;
    pid_t reaped = waitpid(children[0], &status, 0);
    printf("waitpid reaped %d exit %d at %.6f\n", reaped == children[0], WEXITSTATUS(status), now());
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int r = waitid(P_PID, (id_t)children[1], &info, WEXITED);
    printf("waitid ret %d reaped %d exit %d at %.6f\n", r, info.si_pid == children[1], info.si_status, now());
    pthread_join(thread, NULL);
    return 0;
}

/* One thread writes 300,000 bytes to a pipe (or sends them on a stream
   socket, or writes them to a pipe in three pieces) in one call while
   another thread of the process reads them: the write can end only if the
   reader runs meanwhile. */
#define PIPED 300000
static int piped[2];
static char piped_out[PIPED];

static void *drain(void *arg) {
    (void)arg;
    char buffer[1000];
    long total = 0, sum = 0;
    ssize_t n;
    while ((n = read(piped[0], buffer, sizeof buffer)) > 0) {
        for (ssize_t i = 0; i < n; i++) sum += (unsigned char)buffer[i];
        total += n;
    }
    printf("read %ld sum %ld at %.6f\n", total, sum, now());
    return NULL;
}

enum through { PIPE, SOCKET, VECTOR };

static int write_through(enum through how) {
    if (how == SOCKET ? socketpair(AF_UNIX, SOCK_STREAM, 0, piped) : pipe(piped)) return 1;
    for (int i = 0; i < PIPED; i++) piped_out[i] = (char)(i * 7);
    pthread_t reader;
    pthread_create(&reader, NULL, drain, NULL);
    struct iovec pieces[3] = {
        {piped_out, 1000}, {piped_out + 1000, PIPED / 2 - 1000}, {piped_out + PIPED / 2, PIPED / 2}};
    ssize_t n = how == SOCKET   ? send(piped[1], piped_out, PIPED, 0)
                : how == VECTOR ? writev(piped[1], pieces, 3)
                                : write(piped[1], piped_out, PIPED);
    printf("%s %zd at %.6f\n", how == SOCKET ? "sent" : how == VECTOR ? "wrote pieces" : "wrote", n, now());
    fflush(stdout);
    close(piped[1]);
    pthread_join(reader, NULL);
    return 0;
}

/* A thread waits on a gate while the main thread writes 10,000 bytes into
   an empty pipe with its stack pointer at 64, then waits for the pipe
   with ppoll the same way: more than PIPE_BUF bytes into a pipe with room
   is a write the supervisor would make without waiting, and a ppoll with
   a timeout one it would try with a zero timeout, each with arguments it
   puts below the stack; a program may make a call with any stack
   pointer. */
static int gate[2];

static void *wait_at_gate(void *arg) {
    (void)arg;
    char byte;
    return read(gate[0], &byte, 1) == 1 ? NULL : (void *)1;
}

/* System call `number` with five arguments, made with the stack pointer
   at 64 (put back after it). */
static long call_from_a_low_stack(long number, long a, long b, long c, long d, long e) {
    long result;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    __asm__ volatile("mov %%rsp, %%r12\n\t"
                     "mov $64, %%rsp\n\t"
                     "syscall\n\t"
                     "mov %%r12, %%rsp"
                     : "=a"(result)
                     : "a"(number), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
                     : "rcx", "r11", "r12", "memory");
    return result;
}

static int low_stack(void) {
    if (pipe(gate) || pipe(piped)) return 1;
    pthread_t waiter;
    pthread_create(&waiter, NULL, wait_at_gate, NULL);
    memset(piped_out, 'x', 10000);
    long n = call_from_a_low_stack(SYS_write, piped[1], (long)piped_out, 10000, 0, 0);
    struct pollfd readable = {piped[0], POLLIN, 0};
    struct timespec second = {1, 0};
    long ready = call_from_a_low_stack(SYS_ppoll, (long)&readable, 1, (long)&second, 0, 8);
    char back[10000];
    ssize_t got = read(piped[0], back, sizeof back);
    printf("wrote %ld from a low stack, ppoll %ld, read back %zd\n", n, ready, got);
    if (write(gate[1], "x", 1) != 1) return 1;
    pthread_join(waiter, NULL);
    return 0;
}

int main(int argc, char **argv) {
    const char *variant = argc > 1 ? argv[1] : "race";
    printf("start %s\n", variant);
    fflush(stdout);
    if (!strcmp(variant, "sync")) return sync_threads();
    if (!strcmp(variant, "exit")) return main_exits_first();
    if (!strcmp(variant, "deadlock")) return deadlock();
    if (!strcmp(variant, "io")) return io();
    if (!strcmp(variant, "wait")) return wait_for_children();
    if (!strcmp(variant, "pipe")) return write_through(PIPE);
    if (!strcmp(variant, "socket")) return write_through(SOCKET);
    if (!strcmp(variant, "vector")) return write_through(VECTOR);
    if (!strcmp(variant, "low-stack")) return low_stack();
    return race();
}
