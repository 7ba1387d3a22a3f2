// SPDX-License-Identifier: Apache-2.0
// holder: opens N SMTP connections to 127.0.0.1:PORT and holds them, for the idle100k scenario
// (bench/README.md, "100,000 connections"). Python holds 10,000 sockets fine but not 100,000
// (memory, and its per-socket cost in the client's CPU). The client ends are spread over the
// source addresses 127.0.0.2 .. 127.0.0.(1+A): one loopback address has about 28,000
// ephemeral ports (ip_local_port_range), and IP_BIND_ADDRESS_NO_PORT leaves the port to
// connect(), which then only needs the 4-tuple to be unique.
//
// It opens at most B connections at a time (connect sent, greeting not yet read), counts one
// as held when its 220 greeting arrived, and then, with all of them open, times P new clients
// one after the other from 127.0.0.1: connect, greeting, EHLO, QUIT (each until the 221).
// It prints one JSON line and waits for its stdin to close before closing everything.
//
//   holder PORT N [-B batch] [-A addresses] [-P probes]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char first_error[160];
static long errors;

static void failed(const char* what)
{
    ++errors;
    if (first_error[0]) return;
    const size_t n = strnlen(what, sizeof first_error - 1);
    memcpy(first_error, what, n);
    first_error[n] = 0;
}

// Reads until a line that ends a reply with `code` (or any final line): 0 if it had `code`.
static int expect(int fd, const char* code, double deadline)
{
    char buf[4096];
    size_t have = 0;
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        const int ms = (int)((deadline - now()) * 1000);
        if (ms <= 0 || poll(&p, 1, ms) <= 0) return -1;
        const ssize_t n = recv(fd, buf + have, sizeof buf - 1 - have, 0);
        if (n <= 0) return -1;
        have += (size_t)n;
        buf[have] = 0;
        // The last complete line: "ddd " ends the reply.
        char* line = buf;
        for (char* nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1)
            if (nl - line >= 4 && line[3] == ' ') return strncmp(line, code, 3) == 0 ? 0 : -1;
        if (have >= sizeof buf - 1) return -1;
    }
}

// One new client with everything open: greeting, EHLO, QUIT. Milliseconds, or -1.
static double probe(int port)
{
    const double t0 = now();
    const double deadline = t0 + 10;
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    double ms = -1;
    if (connect(fd, (struct sockaddr*)&to, sizeof to) == 0 && expect(fd, "220", deadline) == 0 &&
        send(fd, "EHLO probe.bench\r\n", 18, MSG_NOSIGNAL) == 18 && expect(fd, "250", deadline) == 0 &&
        send(fd, "QUIT\r\n", 6, MSG_NOSIGNAL) == 6 && expect(fd, "221", deadline) == 0)
        ms = (now() - t0) * 1000;
    close(fd);
    return ms;
}

static int cmp(const void* a, const void* b)
{
    const double x = *(const double*)a, y = *(const double*)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char** argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: holder PORT N [-B batch] [-A addresses] [-P probes]\n");
        return 2;
    }
    const int port = atoi(argv[1]);
    const long n = atol(argv[2]);
    long batch = 1000;
    int addresses = 8;
    int probes = 20;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-B")) batch = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "-A")) addresses = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-P")) probes = atoi(argv[i + 1]);
    }
    if (addresses < 1 || addresses > 250) addresses = 8;
    if (probes > 1000) probes = 1000;

    // A descriptor per connection, and some for the probes.
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    const rlim_t want = (rlim_t)n + 200;
    if (rl.rlim_cur < want) {
        if (rl.rlim_max < want) rl.rlim_max = want;  // root may raise it; else the next call fails
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            fprintf(stderr, "holder: cannot raise RLIMIT_NOFILE to %lu: %s\n", (unsigned long)want, strerror(errno));
            return 1;
        }
    }

    const int ep = epoll_create1(EPOLL_CLOEXEC);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    long opened = 0, held = 0, pending = 0;
    const double t0 = now();
    double last_progress = t0;
    struct epoll_event events[256];
    while ((opened < n || pending > 0) && now() - last_progress < 30) {
        while (opened < n && pending < batch) {
            ++opened;
            const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                failed(strerror(errno));
                continue;
            }
            const int on = 1;
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &on, sizeof on);
            struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = 0};
            from.sin_addr.s_addr = htonl(INADDR_LOOPBACK + 1 + (unsigned)(opened % addresses));  // 127.0.0.2..
            if (bind(fd, (struct sockaddr*)&from, sizeof from) != 0 ||
                (connect(fd, (struct sockaddr*)&to, sizeof to) != 0 && errno != EINPROGRESS)) {
                failed(strerror(errno));
                close(fd);
                continue;
            }
            struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            ++pending;
        }
        const int k = epoll_wait(ep, events, 256, 1000);
        for (int i = 0; i < k; ++i) {
            const int fd = events[i].data.fd;
            char buf[512];
            const ssize_t r = recv(fd, buf, sizeof buf - 1, 0);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            --pending;
            last_progress = now();
            if (r > 3 && memcmp(buf, "220", 3) == 0 && memchr(buf, '\n', (size_t)r)) {
                ++held;  // kept open, no longer watched (an idle client)
                continue;
            }
            if (r <= 0) failed(r == 0 ? "closed before greeting" : strerror(errno));
            else {
                buf[r] = 0;
                buf[strcspn(buf, "\r\n")] = 0;
                failed(buf);
            }
            close(fd);
        }
    }
    const double elapsed = now() - t0;
    if (pending > 0) {
        errors += pending;
        if (!first_error[0]) snprintf(first_error, sizeof first_error, "no greeting within 30 s");
    }

    double samples[1000];
    int ok = 0;
    for (int i = 0; i < probes; ++i) {
        const double ms = probe(port);
        if (ms >= 0) samples[ok++] = ms;
    }
    qsort(samples, (size_t)ok, sizeof samples[0], cmp);
    char* esc = first_error;
    for (; *esc; ++esc)
        if (*esc == '"' || *esc == '\\' || (unsigned char)*esc < 0x20) *esc = '?';
    printf("{\"held\": %ld, \"errors\": %ld, \"first_error\": \"%s\", \"elapsed\": %.3f, \"rate\": %.0f,"
           " \"probes\": %d, \"probe_ok\": %d, \"probe_p50_ms\": %.2f, \"probe_max_ms\": %.2f}\n",
           held, errors, first_error, elapsed, held / (elapsed > 0 ? elapsed : 1), probes, ok,
           ok ? samples[ok / 2] : -1.0, ok ? samples[ok - 1] : -1.0);
    fflush(stdout);
    char sink[256];
    while (read(0, sink, sizeof sink) > 0) {}
    return 0;  // the kernel closes every connection
}
