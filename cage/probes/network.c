/* Observes: the network -- a loopback TCP server and client in one process (ephemeral ports chosen by the kernel), a connect to 1.1.1.1:53 with 1 s timeout, the interface list (getifaddrs). Cage: handled -- network namespace with only loopback (external connect fails at once with ENETUNREACH); ephemeral ports (bind to port 0, connect unbound) are the process's own sequence, bound by the supervisor. Variant "udp": a datagram from an unbound UDP socket (sendto names the receiver), and the sender's port as the receiver sees it; "udp_sendmsg" the same with sendmsg naming the receiver. Variant "unix": Unix stream and datagram sockets bound to paths longer than an IPv6 address, connecting, accepting, sending (handled: nothing of the host in them; the supervisor panicked on their long local addresses before). Variant "pass_fd": a pipe's write end passed over a Unix socket pair with sendmsg (SCM_RIGHTS, no address) and written through by the receiver (cage: every sendmsg stops at the supervisor; one without an address runs as it is). Variant "fixed" binds server and client to fixed ports 40000/40001 and prints only the loopback part. Variant "timestamp": a loopback UDP datagram received with SO_TIMESTAMPNS (kernel receive time in a control message), ioctl SIOCGSTAMP, and getsockopt TCP_INFO on a loopback TCP connection (RTT and timing fields); the cage refuses SO_TIMESTAMP* and TCP_INFO ("time"). Variant "stamp": a loopback datagram received plainly, then ioctl SIOCGSTAMPNS; the cage refuses the ioctl ("time"); "stamp_high" passes the request with junk in its upper 32 bits, which the kernel ignores, and is refused the same. */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <poll.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <linux/sockios.h>
#include <netinet/tcp.h>
#include <time.h>

static void addr(const char *label, struct sockaddr_in *a) {
    char b[64];
    inet_ntop(AF_INET, &a->sin_addr, b, sizeof b);
    printf("%s %s:%u\n", label, b, ntohs(a->sin_port));
}

#include <stdlib.h>

/* A UDP socket bound to a loopback port the kernel picks; its address in *a. */
static int loopback_udp(struct sockaddr_in *a) {
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(u, (struct sockaddr *)a, sizeof *a);
    socklen_t sl = sizeof *a;
    getsockname(u, (struct sockaddr *)a, &sl);
    return u;
}

static int timestamps(void) {
    printf("variant timestamp\n");
    struct sockaddr_in a;
    int u = loopback_udp(&a);
    int one = 1;
    int r = setsockopt(u, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    printf("setsockopt_SO_TIMESTAMPNS ret %d errno %d\n", r, r ? errno : 0);
    fflush(stdout);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    sendto(s, "ping", 4, 0, (struct sockaddr *)&a, sizeof a);
    char data[16], ctl[256];
    struct iovec iov = {data, sizeof data};
    struct msghdr m = {0};
    m.msg_iov = &iov; m.msg_iovlen = 1; m.msg_control = ctl; m.msg_controllen = sizeof ctl;
    long n = recvmsg(u, &m, 0);
    printf("recvmsg ret %ld\n", n);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
            struct timespec ts; memcpy(&ts, CMSG_DATA(c), sizeof ts);
            printf("cmsg_SO_TIMESTAMPNS %lld.%09ld\n", (long long)ts.tv_sec, ts.tv_nsec);
        } else printf("cmsg level %d type %d\n", c->cmsg_level, c->cmsg_type);
    }
    fflush(stdout);
    struct timeval tv = {0, 0};
    r = ioctl(u, SIOCGSTAMP, &tv);
    printf("ioctl_SIOCGSTAMP ret %d errno %d %lld.%06ld\n", r, r ? errno : 0, (long long)tv.tv_sec, (long)tv.tv_usec);
    fflush(stdout);
    /* TCP_INFO */
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET; sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(srv, (struct sockaddr *)&sa, sizeof sa);
    listen(srv, 1);
    socklen_t sl = sizeof sa; getsockname(srv, (struct sockaddr *)&sa, &sl);
    int cli = socket(AF_INET, SOCK_STREAM, 0);
    connect(cli, (struct sockaddr *)&sa, sizeof sa);
    int acc = accept(srv, NULL, NULL);
    write(cli, "x", 1); char b; read(acc, &b, 1);
    struct tcp_info ti; socklen_t tl = sizeof ti;
    memset(&ti, 0, sizeof ti);
    r = getsockopt(cli, IPPROTO_TCP, TCP_INFO, &ti, &tl);
    printf("tcp_info ret %d rtt %u rttvar %u last_data_sent %u last_data_recv %u last_ack_recv %u\n", r,
           ti.tcpi_rtt, ti.tcpi_rttvar, ti.tcpi_last_data_sent, ti.tcpi_last_data_recv, ti.tcpi_last_ack_recv);
    return 0;
}

/* A loopback datagram received plainly, then its receive time asked for
   with ioctl: the request alone, without SO_TIMESTAMP* first. */
static int stamp_ioctl(int high) {
    printf("variant stamp%s\n", high ? "_high" : "");
    struct sockaddr_in a;
    int u = loopback_udp(&a);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    sendto(s, "ping", 4, 0, (struct sockaddr *)&a, sizeof a);
    char data[16];
    printf("recv ret %ld\n", (long)recv(u, data, sizeof data, 0));
    fflush(stdout);
    struct timespec ts = {0, 0};
    /* The kernel reads the request as a 32-bit int: junk above it must
       not get the call past the filter. */
    unsigned long request = SIOCGSTAMPNS | (high ? 0xdead000000000000UL : 0);
    int r = (int)syscall(SYS_ioctl, u, request, &ts);
    printf("ioctl_SIOCGSTAMPNS ret %d %lld.%09ld\n", r, (long long)ts.tv_sec, ts.tv_nsec);
    return 0;
}

static int udp(int through_sendmsg) {
    int receiver = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in at = {0};
    at.sin_family = AF_INET;
    at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(receiver, (struct sockaddr *)&at, sizeof at)) return 1;
    socklen_t length = sizeof at;
    getsockname(receiver, (struct sockaddr *)&at, &length);
    addr("udp_receiver", &at);
    int sender = socket(AF_INET, SOCK_DGRAM, 0);
    for (int i = 0; i < 2; i++) {
        long sent;
        if (through_sendmsg) {
            struct iovec data = {"datagram", 8};
            struct msghdr message = {.msg_name = &at, .msg_namelen = sizeof at, .msg_iov = &data, .msg_iovlen = 1};
            sent = sendmsg(sender, &message, 0);
        } else {
            sent = sendto(sender, "datagram", 8, 0, (struct sockaddr *)&at, sizeof at);
        }
        struct sockaddr_in from = {0};
        socklen_t from_length = sizeof from;
        char buf[16] = {0};
        long got = recvfrom(receiver, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &from_length);
        printf("udp sent %ld got %ld %s\n", sent, got, buf);
        addr("udp_from", &from);
    }
    return 0;
}

/* A pipe's write end passed over a Unix socket pair with sendmsg
   (SCM_RIGHTS, no address): the receiver writes through it. */
static int pass_descriptor(void) {
    int pair[2], pipe_fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) || pipe(pipe_fds)) return 1;
    char control[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec data = {"fd", 2};
    struct msghdr message = {.msg_iov = &data, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *header = CMSG_FIRSTHDR(&message);
    header->cmsg_level = SOL_SOCKET;
    header->cmsg_type = SCM_RIGHTS;
    header->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(header), &pipe_fds[1], sizeof(int));
    long sent = sendmsg(pair[0], &message, 0);
    char got[4] = {0}, received_control[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec into = {got, sizeof got - 1};
    struct msghdr received = {.msg_iov = &into, .msg_iovlen = 1, .msg_control = received_control, .msg_controllen = sizeof received_control};
    long read_bytes = recvmsg(pair[1], &received, 0);
    int passed = -1;
    struct cmsghdr *came = CMSG_FIRSTHDR(&received);
    if (came && came->cmsg_type == SCM_RIGHTS) memcpy(&passed, CMSG_DATA(came), sizeof(int));
    long wrote = passed >= 0 ? write(passed, "through", 7) : -1;
    char back[8] = {0};
    long came_back = read(pipe_fds[0], back, sizeof back - 1);
    printf("sendmsg sent %ld recvmsg got %ld %s passed %s wrote %ld read %ld %s\n", sent, read_bytes, got,
           passed >= 0 ? "yes" : "no", wrote, came_back, back);
    return 0;
}

/* A Unix stream server bound to a path longer than an IPv6 address (the
   supervisor looks at the local address of every socket that listens or
   connects, to tell Internet sockets from others), a client connecting to
   it from a socket bound to a long path too, and a datagram socket pair
   on long paths. */
static int unix_sockets(void) {
    const char *server_path = "/tmp/a-unix-socket-with-a-long-name.server";
    const char *client_path = "/tmp/a-unix-socket-with-a-long-name.client";
    struct sockaddr_un server = {.sun_family = AF_UNIX}, client = {.sun_family = AF_UNIX};
    strcpy(server.sun_path, server_path);
    strcpy(client.sun_path, client_path);
    int listening = socket(AF_UNIX, SOCK_STREAM, 0);
    int bound = bind(listening, (struct sockaddr *)&server, sizeof server);
    int listened = listen(listening, 4);
    int connecting = socket(AF_UNIX, SOCK_STREAM, 0);
    int client_bound = bind(connecting, (struct sockaddr *)&client, sizeof client);
    int connected = connect(connecting, (struct sockaddr *)&server, sizeof server);
    int accepted = accept(listening, NULL, NULL);
    long sent = send(connecting, "over unix", 9, 0);
    char got[16] = {0};
    long received = recv(accepted, got, sizeof got - 1, 0);
    printf("unix stream bind %d listen %d client bind %d connect %d accept %s sent %ld received %ld %s\n", bound,
           listened, client_bound, connected, accepted >= 0 ? "yes" : "no", sent, received, got);
    unlink(client_path);
    unlink(server_path);
    int to = socket(AF_UNIX, SOCK_DGRAM, 0), from = socket(AF_UNIX, SOCK_DGRAM, 0);
    int to_bound = bind(to, (struct sockaddr *)&client, sizeof client);
    int from_bound = bind(from, (struct sockaddr *)&server, sizeof server);
    long dgram = sendto(from, "datagram", 8, 0, (struct sockaddr *)&client, sizeof client);
    struct sockaddr_un sender = {0};
    socklen_t sender_length = sizeof sender;
    memset(got, 0, sizeof got);
    long came = recvfrom(to, got, sizeof got - 1, 0, (struct sockaddr *)&sender, &sender_length);
    printf("unix datagram bind %d %d sendto %ld recvfrom %ld %s from %s\n", to_bound, from_bound, dgram, came, got,
           sender.sun_path);
    unlink(server_path);
    unlink(client_path);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "pass_fd") == 0) return pass_descriptor();
    if (argc > 1 && strcmp(argv[1], "unix") == 0) return unix_sockets();
    if (argc > 1 && strcmp(argv[1], "udp") == 0) return udp(0);
    if (argc > 1 && strcmp(argv[1], "udp_sendmsg") == 0) return udp(1);
    if (argc > 1 && strcmp(argv[1], "timestamp") == 0) return timestamps();
    if (argc > 1 && strcmp(argv[1], "stamp") == 0) return stamp_ioctl(0);
    if (argc > 1 && strcmp(argv[1], "stamp_high") == 0) return stamp_ioctl(1);
    int fixed = argc > 1 && strcmp(argv[1], "fixed") == 0;
    int one = 1;
    int srv = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(fixed ? 40000 : 0);
    setsockopt(srv, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int r = bind(srv, (struct sockaddr *)&sa, sizeof sa);
    printf("bind ret %d errno %d\n", r, r ? errno : 0);
    listen(srv, 4);
    socklen_t sl = sizeof sa;
    getsockname(srv, (struct sockaddr *)&sa, &sl);
    addr("server_listen", &sa);
    int cli = socket(AF_INET, SOCK_STREAM, 0);
    fcntl(cli, F_SETFL, O_NONBLOCK);
    if (fixed) {
        struct sockaddr_in cb = {0};
        cb.sin_family = AF_INET;
        cb.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        cb.sin_port = htons(40001);
        setsockopt(cli, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        r = bind(cli, (struct sockaddr *)&cb, sizeof cb);
        printf("client_bind ret %d errno %d\n", r, r ? errno : 0);
    }
    r = connect(cli, (struct sockaddr *)&sa, sizeof sa);
    printf("client_connect ret %d errno %d\n", r, r ? errno : 0);
    int acc = accept(srv, NULL, NULL);
    printf("accept ok %d\n", acc >= 0);
    struct pollfd pf = {cli, POLLOUT, 0};
    poll(&pf, 1, 1000);
    struct sockaddr_in ca = {0}, pa = {0};
    sl = sizeof ca;
    getsockname(cli, (struct sockaddr *)&ca, &sl);
    addr("client_local", &ca);
    sl = sizeof pa;
    getpeername(acc, (struct sockaddr *)&pa, &sl);
    addr("server_peer", &pa);
    const char msg[] = "hello docklock";
    long w = write(cli, msg, sizeof msg - 1);
    char buf[64] = {0};
    long n = read(acc, buf, sizeof buf - 1);
    printf("exchange wrote %ld read %ld msg %s\n", w, n, n > 0 ? buf : "");
    close(cli); close(acc); close(srv);
    if (fixed) return 0;

    /* external */
    int ext = socket(AF_INET, SOCK_STREAM, 0);
    fcntl(ext, F_SETFL, O_NONBLOCK);
    struct sockaddr_in ea = {0};
    ea.sin_family = AF_INET;
    ea.sin_port = htons(53);
    inet_pton(AF_INET, "1.1.1.1", &ea.sin_addr);
    r = connect(ext, (struct sockaddr *)&ea, sizeof ea);
    int e = r ? errno : 0;
    printf("external_connect ret %d errno %d (%s)\n", r, e, e ? strerror(e) : "ok");
    if (r != 0 && e == EINPROGRESS) {
        struct pollfd ep = {ext, POLLOUT, 0};
        int pr = poll(&ep, 1, 1000);
        int soerr = 0; socklen_t el = sizeof soerr;
        getsockopt(ext, SOL_SOCKET, SO_ERROR, &soerr, &el);
        printf("external_poll ret %d so_error %d (%s)\n", pr, soerr, pr == 0 ? "timeout" : strerror(soerr));
    }
    close(ext);

    struct ifaddrs *ifa = NULL;
    r = getifaddrs(&ifa);
    printf("getifaddrs ret %d\n", r);
    for (struct ifaddrs *i = ifa; i; i = i->ifa_next) {
        char b[INET6_ADDRSTRLEN] = "-";
        int fam = i->ifa_addr ? i->ifa_addr->sa_family : -1;
        if (fam == AF_INET) inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, b, sizeof b);
        else if (fam == AF_INET6) inet_ntop(AF_INET6, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, b, sizeof b);
        printf("if %s family %d flags 0x%x addr %s index %u\n", i->ifa_name, fam, i->ifa_flags, b, if_nametoindex(i->ifa_name));
    }
    if (ifa) freeifaddrs(ifa);
    return 0;
}
