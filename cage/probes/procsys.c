/* Observes: /proc and /sys contents. Variant "self": a process's own cmdline, comm, maps, limits (allowed in the cage). "host": /proc/uptime, cpuinfo, meminfo, self/status, loadavg (cage: the first three are the cage's own; refused "host state in /proc" at self/status). "machine": /proc/cpuinfo, meminfo, stat, uptime, loadavg (cage: fixed files of the cage's machine bound over the host's: the virtual CPU, the memory limit, no load, booted at the epoch). "sys": /sys/class/net listing and /sys/devices/system/cpu/online (cage: a minimal /sys with only the CPU lists: one CPU). Variant "allowed": the /proc listing, net/dev, sys/kernel/hostname, cap_last_cap, filesystems (allowed; cap_last_cap and filesystems are host kernel configuration: a hole across kernels). Variant "task": lists /proc/self/task and reads task/TID/stat, status, schedstat (task is on the allowlist). Variants "uuid" (/proc/sys/kernel/random/uuid) and "boot_id" (/proc/sys/kernel/random/boot_id) read kernel randomness/identity through /proc (cage: refused). Variant "mounts": /proc/self/mounts (host: the devtmpfs size, i.e. host memory, and the host disk name; cage: refused). Variants "uptime", "cpuinfo", "meminfo", "status", "loadavg", "stat", "filesystems", "cap_last_cap" open one file each. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dirent.h>

/* print at most maxlines lines of a file, NULs shown as '|' */
static void dumpfile(const char *path, int maxlines) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("%s open_errno %d\n", path, errno); fflush(stdout); return; }
    char buf[8192];
    long n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) { printf("%s read_errno %d\n", path, errno); fflush(stdout); return; }
    buf[n] = 0;
    for (long i = 0; i < n; i++) if (buf[i] == 0) buf[i] = '|';
    int lines = 0;
    char *save, *ln = strtok_r(buf, "\n", &save);
    while (ln && lines < maxlines) { printf("%s %s\n", path, ln); ln = strtok_r(NULL, "\n", &save); lines++; }
    printf("%s bytes %ld\n", path, n);
    fflush(stdout);
}

static void listdir(const char *path) {
    DIR *d = opendir(path);
    if (!d) { printf("%s opendir_errno %d\n", path, errno); fflush(stdout); return; }
    printf("%s", path);
    struct dirent *e;
    int k = 0;
    while ((e = readdir(d)) && k++ < 60) printf(" %s", e->d_name);
    if (e) printf(" ...");
    printf("\n");
    closedir(d);
    fflush(stdout);
}

int main(int argc, char **argv) {
    const char *v = argc > 1 ? argv[1] : "self";
    printf("variant %s\n", v);
    fflush(stdout);
    if (!strcmp(v, "self")) {
        dumpfile("/proc/self/cmdline", 4);
        dumpfile("/proc/self/comm", 4);
        dumpfile("/proc/self/limits", 20);
        dumpfile("/proc/self/maps", 20);
    } else if (!strcmp(v, "host")) {
        dumpfile("/proc/uptime", 2);
        dumpfile("/proc/cpuinfo", 8);
        dumpfile("/proc/meminfo", 4);
        dumpfile("/proc/self/status", 12);
        dumpfile("/proc/loadavg", 2);
    } else if (!strcmp(v, "machine")) {
        dumpfile("/proc/cpuinfo", 30);
        dumpfile("/proc/meminfo", 4);
        dumpfile("/proc/stat", 6);
        dumpfile("/proc/uptime", 2);
        dumpfile("/proc/loadavg", 2);
    } else if (!strcmp(v, "sys")) {
        listdir("/sys/class/net");
        dumpfile("/sys/devices/system/cpu/online", 2);
    } else if (!strcmp(v, "uptime")) dumpfile("/proc/uptime", 2);
    else if (!strcmp(v, "cpuinfo")) dumpfile("/proc/cpuinfo", 8);
    else if (!strcmp(v, "meminfo")) dumpfile("/proc/meminfo", 4);
    else if (!strcmp(v, "status")) dumpfile("/proc/self/status", 12);
    else if (!strcmp(v, "loadavg")) dumpfile("/proc/loadavg", 2);
    else if (!strcmp(v, "stat")) dumpfile("/proc/stat", 3);
    else if (!strcmp(v, "filesystems")) dumpfile("/proc/filesystems", 40);
    else if (!strcmp(v, "cap_last_cap")) dumpfile("/proc/sys/kernel/cap_last_cap", 2);
    else if (!strcmp(v, "mounts")) dumpfile("/proc/self/mounts", 20);
    else if (!strcmp(v, "uuid")) dumpfile("/proc/sys/kernel/random/uuid", 2);
    else if (!strcmp(v, "boot_id")) dumpfile("/proc/sys/kernel/random/boot_id", 2);
    else if (!strcmp(v, "task")) {
        listdir("/proc/self/task");
        char p[128];
        int tid = getpid();
        snprintf(p, sizeof p, "/proc/self/task/%d/stat", tid); dumpfile(p, 2);
        snprintf(p, sizeof p, "/proc/self/task/%d/schedstat", tid); dumpfile(p, 2);
        snprintf(p, sizeof p, "/proc/self/task/%d/status", tid); dumpfile(p, 12);
    }
    else if (!strcmp(v, "allowed")) {
        listdir("/proc");
        dumpfile("/proc/net/dev", 6);
        dumpfile("/proc/sys/kernel/hostname", 2);
        dumpfile("/proc/sys/kernel/cap_last_cap", 2);
        dumpfile("/proc/filesystems", 40);
    }
    else printf("unknown variant\n");
    return 0;
}
