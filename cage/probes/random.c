/* Observes: kernel randomness -- getrandom (flags 0, GRND_NONBLOCK, GRND_RANDOM, GRND_INSECURE), /dev/urandom, /dev/random, aliases (a /tmp symlink, /dev/./urandom, /proc/self/fd/N), and AT_RANDOM. Cage: handled -- getrandom from a per-process ChaCha20 stream keyed by the seed; /dev/urandom and /dev/random read an endless seeded stream per open file (every open, under any alias, reads new bytes; a shared descriptor goes on through its stream); AT_RANDOM rewritten at exec. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/auxv.h>
#include <sys/syscall.h>

#ifndef GRND_INSECURE
#define GRND_INSECURE 0x0004
#endif

static void hex(const char *label, const unsigned char *b, long n) {
    printf("%s", label);
    if (n > 0) { printf(" "); for (long i = 0; i < n; i++) printf("%02x", b[i]); }
    printf("\n");
}

static void readpath(const char *label, const char *path) {
    unsigned char b[16];
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("%s %s open_errno %d\n", label, path, errno); return; }
    long n = read(fd, b, sizeof b);
    char l[128];
    snprintf(l, sizeof l, "%s %s n %ld", label, path, n);
    hex(l, b, n);
    close(fd);
}

int main(void) {
    static const struct { unsigned f; const char *n; } fl[] = {
        {0, "0"}, {GRND_NONBLOCK, "NONBLOCK"}, {GRND_RANDOM, "RANDOM"},
        {GRND_RANDOM | GRND_NONBLOCK, "RANDOM|NONBLOCK"}, {GRND_INSECURE, "INSECURE"},
    };
    for (unsigned i = 0; i < sizeof fl / sizeof fl[0]; i++) {
        unsigned char b[16];
        memset(b, 0, sizeof b);
        long r = syscall(SYS_getrandom, b, sizeof b, fl[i].f);
        char l[128];
        snprintf(l, sizeof l, "getrandom %s ret %ld errno %d", fl[i].n, r, r < 0 ? errno : 0);
        hex(l, b, r);
    }
    unsigned char big[300];
    long r = getrandom(big, sizeof big, 0); /* libc wrapper, > 256 bytes */
    char l[64];
    snprintf(l, sizeof l, "getrandom_libc300 ret %ld first16", r);
    hex(l, big, 16);
    readpath("read", "/dev/urandom");
    readpath("read", "/dev/urandom"); /* second open */
    readpath("read", "/dev/random");
    /* two reads on one descriptor */
    int fd = open("/dev/urandom", O_RDONLY);
    if (fd >= 0) {
        unsigned char b[8];
        long n1 = read(fd, b, 8); hex("same_fd read1", b, n1);
        long n2 = read(fd, b, 8); hex("same_fd read2", b, n2);
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        readpath("alias_procfd", p);
        /* pread at an offset far away */
        long n3 = pread(fd, b, 8, 70000); printf("same_fd pread@70000 ret %ld errno %d\n", n3, n3 < 0 ? errno : 0);
        if (n3 > 0) hex("same_fd pread@70000", b, n3);
        close(fd);
    }
    unlink("/tmp/urandom-link");
    if (symlink("/dev/urandom", "/tmp/urandom-link") == 0) readpath("alias_symlink", "/tmp/urandom-link");
    else printf("alias_symlink symlink_errno %d\n", errno);
    readpath("alias_dotdir", "/dev/./urandom");
    readpath("alias_procroot", "/proc/self/root/dev/urandom");
    int dfd = open("/dev", O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        int f2 = openat(dfd, "urandom", O_RDONLY);
        if (f2 >= 0) { unsigned char b[16]; long n = read(f2, b, 16); hex("alias_openat_dirfd /dev urandom", b, n); close(f2); }
        else printf("alias_openat_dirfd errno %d\n", errno);
        close(dfd);
    }
    readpath("alias_dotdot", "/dev/../dev/urandom");
    /* a hard link would need the same filesystem; report whether it works */
    unlink("/tmp/urandom-hard");
    if (link("/dev/urandom", "/tmp/urandom-hard") == 0) readpath("alias_hardlink", "/tmp/urandom-hard");
    else printf("alias_hardlink link_errno %d\n", errno);
    const unsigned char *ar = (const unsigned char *)getauxval(AT_RANDOM);
    if (ar) hex("AT_RANDOM", ar, 16); else printf("AT_RANDOM none\n");
    unlink("/tmp/urandom-link");
    unlink("/tmp/urandom-hard");
    return 0;
}
