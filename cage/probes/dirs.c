/* Observes: directory order and stat fields -- 30 files created in /tmp in a fixed shuffled order, listed by readdir and raw getdents64 (buffers 64, 512, 32768; lines "gdBUF CALL name d_ino d_off d_type"; for 512 one line of names per call), and stat of a written file, /in/probe, /usr/bin/ls and /proc (dev, ino, nlink, mode, size, blocks, blksize, a/m/ctime; /proc's link count counts the host's processes). Cage: getdents64 in name order across all its calls, whatever the buffer size ("getdentsN order sorted"), offsets the index of the next entry; device numbers virtual, inode numbers virtual outside the cage's tmpfs, times the kernel stamped during the run at the epoch. Variant "listing" prints only the listings (no stat). Variant "fds": fstat of stdin/stdout/stderr, a new pipe and a socket (pipefs/sockfs inode numbers, times) and readlink of /proc/self/fd/N (cage: virtual). Variant "statfs": statfs of /, /usr, /tmp, /in, /out, /dev/null (free blocks and inodes of host filesystems, a random fsid; cage: counts only for its own tmpfs mounts, fsid 0). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/statfs.h>
#include <sys/socket.h>

struct linux_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static const char *DIR_PATH = "/tmp/probe-dirs";

static void statp(const char *label, const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) { printf("stat %s %s errno %d\n", label, path, errno); return; }
    printf("stat %s dev 0x%llx ino %llu nlink %lu mode 0%o uid %u gid %u size %lld blocks %lld blksize %ld\n",
           label, (unsigned long long)st.st_dev, (unsigned long long)st.st_ino, (unsigned long)st.st_nlink,
           st.st_mode, st.st_uid, st.st_gid, (long long)st.st_size, (long long)st.st_blocks, (long)st.st_blksize);
    printf("stat %s atime %lld.%09ld mtime %lld.%09ld ctime %lld.%09ld\n", label,
           (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
           (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
}

static void raw(int bufsize) {
    int fd = open(DIR_PATH, O_RDONLY | O_DIRECTORY);
    if (fd < 0) { printf("getdents%d open errno %d\n", bufsize, errno); return; }
    char *buf = malloc(bufsize);
    int call = 0, sorted = 1;
    char last[256] = "";
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, bufsize);
        if (n <= 0) { printf("getdents%d call %d ret %ld\n", bufsize, call, n); break; }
        for (long off = 0; off < n; off += ((struct linux_dirent64 *)(buf + off))->d_reclen) {
            const char *name = ((struct linux_dirent64 *)(buf + off))->d_name;
            if (strcmp(last, name) > 0) sorted = 0;
            snprintf(last, sizeof last, "%s", name);
        }
        if (bufsize == 512) { /* names only, one line per call, to keep the output small */
            printf("gd512 %d", call);
            for (long off = 0; off < n; off += ((struct linux_dirent64 *)(buf + off))->d_reclen)
                printf(" %s", ((struct linux_dirent64 *)(buf + off))->d_name);
            printf("\n");
            call++;
            continue;
        }
        for (long off = 0; off < n;) {
            struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
            printf("gd%d %d %s %llu %lld %u\n", bufsize, call, d->d_name,
                   d->d_ino, d->d_off, d->d_type);
            off += d->d_reclen;
        }
        call++;
    }
    printf("getdents%d order %s\n", bufsize, sorted ? "sorted" : "unsorted");
    free(buf);
    close(fd);
}

static void fstatfd(const char *label, int fd) {
    struct stat st;
    char l[64], p[64];
    ssize_t n;
    if (fstat(fd, &st) != 0) { printf("fstat %s errno %d\n", label, errno); return; }
    printf("fstat %s dev 0x%llx ino %llu mode 0%o rdev 0x%llx atime %lld.%09ld mtime %lld.%09ld ctime %lld.%09ld\n", label,
           (unsigned long long)st.st_dev, (unsigned long long)st.st_ino, st.st_mode, (unsigned long long)st.st_rdev,
           (long long)st.st_atim.tv_sec, st.st_atim.tv_nsec, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
           (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
    snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
    n = readlink(p, l, sizeof l - 1);
    l[n > 0 ? n : 0] = 0;
    printf("readlink %s %s\n", label, l);
}

static void statfsp(const char *path) {
    struct statfs s;
    if (statfs(path, &s) != 0) { printf("statfs %s errno %d\n", path, errno); return; }
    printf("statfs %s type 0x%lx bsize %ld blocks %llu bfree %llu bavail %llu files %llu ffree %llu fsid %08x%08x\n", path,
           (long)s.f_type, (long)s.f_bsize, (unsigned long long)s.f_blocks, (unsigned long long)s.f_bfree,
           (unsigned long long)s.f_bavail, (unsigned long long)s.f_files, (unsigned long long)s.f_ffree,
           (unsigned)s.f_fsid.__val[0], (unsigned)s.f_fsid.__val[1]);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "fds") == 0) {
        fstatfd("stdin", 0); fstatfd("stdout", 1); fstatfd("stderr", 2);
        int pf[2];
        if (pipe(pf) == 0) fstatfd("pipe", pf[0]);
        int so = socket(AF_UNIX, SOCK_STREAM, 0);
        if (so >= 0) fstatfd("socket", so);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "statfs") == 0) {
        statfsp("/"); statfsp("/usr"); statfsp("/tmp"); statfsp("/in"); statfsp("/out"); statfsp("/dev/null");
        return 0;
    }
    int listing_only = argc > 1 && strcmp(argv[1], "listing") == 0;
    /* fixed permutation of 0..29 */
    static const int order[30] = {17, 3, 28, 9, 0, 22, 14, 5, 26, 11, 1, 19, 7, 24, 13,
                                  29, 2, 16, 8, 21, 12, 27, 4, 18, 10, 25, 6, 15, 23, 20};
    mkdir(DIR_PATH, 0755);
    char path[256];
    for (int i = 0; i < 30; i++) {
        snprintf(path, sizeof path, "%s/f%02d", DIR_PATH, order[i]);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) { dprintf(fd, "file %d\n", order[i]); close(fd); }
    }
    DIR *d = opendir(DIR_PATH);
    if (d) {
        printf("readdir");
        struct dirent *e;
        while ((e = readdir(d))) printf(" %s", e->d_name);
        printf("\n");
        closedir(d);
    }
    fflush(stdout);
    raw(64);
    raw(512);
    raw(32768);
    snprintf(path, sizeof path, "%s/f00", DIR_PATH);
    if (!listing_only) {
    statp("written", path);
    statp("tmpdir", DIR_PATH);
    statp("input", "/in/probe");
    statp("self_exe", "/proc/self/exe");
    statp("rootfs", "/usr/bin/ls");
    statp("proc", "/proc");
    }
    for (int i = 0; i < 30; i++) { snprintf(path, sizeof path, "%s/f%02d", DIR_PATH, i); unlink(path); }
    rmdir(DIR_PATH);
    return 0;
}
