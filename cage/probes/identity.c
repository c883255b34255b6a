/* Observes: host and process identity -- uname, host/domain name, uids/gids, the environment, cwd, umask, rlimits, locale, sysinfo, CPU count (sched_getaffinity, get_nprocs, sysconf). Cage: handled -- UTS namespace + uname answered, fixed env (TZ=UTC) and cwd /tmp, umask 022, rlimits from the spec, sysinfo/sched_getaffinity answered (one CPU). Variants "nprocs" (get_nprocs), "nprocs_conf" (get_nprocs_conf), "sysconf_onln", "sysconf_conf" (sysconf _SC_NPROCESSORS_ONLN/_CONF) and "phys_pages" (_SC_PHYS_PAGES/_SC_AVPHYS_PAGES) call one each: glibc reads /sys/devices/system/cpu (the cage has a minimal one: one CPU) and would fall back to /proc/stat. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <locale.h>
#include <langinfo.h>
#include <sched.h>
#include <sys/utsname.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>

extern char **environ;

int main(int argc, char **argv) {
    const char *v = argc > 1 ? argv[1] : "default";
    printf("variant %s\n", v);
    /* each of these may open /sys (absent in the cage) and fall back to /proc (refused): one per variant */
    if (!strcmp(v, "nprocs")) { fflush(stdout); printf("get_nprocs %d\n", get_nprocs()); return 0; }
    if (!strcmp(v, "nprocs_conf")) { fflush(stdout); printf("get_nprocs_conf %d\n", get_nprocs_conf()); return 0; }
    if (!strcmp(v, "sysconf_onln")) { fflush(stdout); printf("sysconf_NPROCESSORS_ONLN %ld\n", sysconf(_SC_NPROCESSORS_ONLN)); return 0; }
    if (!strcmp(v, "sysconf_conf")) { fflush(stdout); printf("sysconf_NPROCESSORS_CONF %ld\n", sysconf(_SC_NPROCESSORS_CONF)); return 0; }
    if (!strcmp(v, "phys_pages")) {
        fflush(stdout);
        printf("sysconf_PHYS_PAGES %ld\n", sysconf(_SC_PHYS_PAGES));
        printf("sysconf_AVPHYS_PAGES %ld\n", sysconf(_SC_AVPHYS_PAGES));
        return 0;
    }
    struct utsname u;
    uname(&u);
    printf("uname sysname %s\nuname nodename %s\nuname release %s\nuname version %s\nuname machine %s\nuname domainname %s\n",
           u.sysname, u.nodename, u.release, u.version, u.machine, u.domainname);
    char h[256] = "";
    int r = gethostname(h, sizeof h);
    printf("gethostname ret %d %s\n", r, h);
    char dn[256] = "";
    r = getdomainname(dn, sizeof dn);
    printf("getdomainname ret %d %s\n", r, dn);
    printf("ids uid %u euid %u gid %u egid %u\n", getuid(), geteuid(), getgid(), getegid());
    gid_t groups[64];
    int ng = getgroups(64, groups);
    printf("groups %d", ng);
    for (int i = 0; i < ng; i++) printf(" %u", groups[i]);
    printf("\n");
    int ne = 0;
    for (char **e = environ; *e; e++, ne++) printf("env %s\n", *e);
    printf("env_count %d\n", ne);
    char cwd[4096];
    printf("getcwd %s\n", getcwd(cwd, sizeof cwd) ? cwd : "(error)");
    mode_t m = umask(022);
    umask(m);
    printf("umask 0%03o\n", m);
    static const struct { int r; const char *n; } lim[] = {
        {RLIMIT_CPU, "CPU"}, {RLIMIT_FSIZE, "FSIZE"}, {RLIMIT_DATA, "DATA"}, {RLIMIT_STACK, "STACK"},
        {RLIMIT_CORE, "CORE"}, {RLIMIT_RSS, "RSS"}, {RLIMIT_NPROC, "NPROC"}, {RLIMIT_NOFILE, "NOFILE"},
        {RLIMIT_MEMLOCK, "MEMLOCK"}, {RLIMIT_AS, "AS"}, {RLIMIT_LOCKS, "LOCKS"}, {RLIMIT_SIGPENDING, "SIGPENDING"},
        {RLIMIT_MSGQUEUE, "MSGQUEUE"}, {RLIMIT_NICE, "NICE"}, {RLIMIT_RTPRIO, "RTPRIO"}, {RLIMIT_RTTIME, "RTTIME"},
    };
    for (unsigned i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        struct rlimit rl;
        getrlimit(lim[i].r, &rl);
        printf("rlimit %s %lld %lld\n", lim[i].n, (long long)(rl.rlim_cur == RLIM_INFINITY ? -1 : (long long)rl.rlim_cur),
               (long long)(rl.rlim_max == RLIM_INFINITY ? -1 : (long long)rl.rlim_max));
    }
    const char *loc = setlocale(LC_ALL, "");
    printf("setlocale %s\n", loc ? loc : "(null)");
    printf("codeset %s\n", nl_langinfo(CODESET));
    struct sysinfo si;
    memset(&si, 0, sizeof si);
    r = sysinfo(&si);
    printf("sysinfo ret %d uptime %ld loads %lu %lu %lu totalram %lu freeram %lu sharedram %lu bufferram %lu totalswap %lu freeswap %lu procs %u totalhigh %lu freehigh %lu mem_unit %u\n",
           r, si.uptime, si.loads[0], si.loads[1], si.loads[2], si.totalram, si.freeram, si.sharedram,
           si.bufferram, si.totalswap, si.freeswap, si.procs, si.totalhigh, si.freehigh, si.mem_unit);
    cpu_set_t set;
    CPU_ZERO(&set);
    r = sched_getaffinity(0, sizeof set, &set);
    printf("sched_getaffinity ret %d count %d first", r, CPU_COUNT(&set));
    for (int c = 0; c < CPU_SETSIZE; c++) if (CPU_ISSET(c, &set)) { printf(" %d", c); break; }
    printf("\n");
    printf("sysconf_PAGESIZE %ld CLK_TCK %ld OPEN_MAX %ld CHILD_MAX %ld\n", sysconf(_SC_PAGESIZE),
           sysconf(_SC_CLK_TCK), sysconf(_SC_OPEN_MAX), sysconf(_SC_CHILD_MAX));
    printf("note get_nprocs/sysconf(_SC_NPROCESSORS_*): see variants nprocs, nprocs_conf, sysconf_onln, sysconf_conf\n");
    return 0;
}
