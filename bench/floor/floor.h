// SPDX-License-Identifier: Apache-2.0
/* bench/floor/floor.h - what the two floors share (floor/floor.c, tls/tlsfloor.c): the SMTP they
 * answer (line by line until DATA, then a search for the final dot, nothing parsed beyond the
 * verb's first letters), the listening socket and the start of main().
 *
 * A connection is a struct floor_conn, first member of the including file's own struct if it
 * needs more. That file defines the two functions the answers go through:
 *   static void reply(struct floor_conn* c, const char* text);    one reply, one write
 *   static int command(struct floor_conn* c, const char* line, size_t n);   a whole line (CRLF
 *       included); non-zero: drop the rest of the read (STARTTLS)
 */
#ifndef BENCH_FLOOR_H
#define BENCH_FLOOR_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { LINE_MAX_KEPT = 4096, EVENTS = 256 };

struct floor_conn {
    int fd;
    int in_data;   /* between 354 and the final dot */
    unsigned tail; /* data: how much of "\r\n.\r\n" the previous read ended with */
    size_t used;   /* command mode: bytes of an unfinished line kept in line[] */
    char line[LINE_MAX_KEPT];
};

static void reply(struct floor_conn* c, const char* text);
static int command(struct floor_conn* c, const char* line, size_t n);

static void die(const char* what)
{
    perror(what);
    exit(2);
}

/* DATA: after its 354, the final dot is looked for from here (the DATA line's CRLF counts: an
 * empty body is just ".\r\n"). */
static void start_data(struct floor_conn* c)
{
    c->in_data = 1;
    c->tail = 2;
}

/* Advances the end-of-data matcher over p[0..n); returns the offset just past the final dot's
 * CRLF, or -1 when the message goes on. */
static long find_end(struct floor_conn* c, const char* p, size_t n)
{
    static const char end[] = "\r\n.\r\n";
    for (size_t i = 0; i < n; ++i) {
        if (c->tail == 0) {
            /* Skip fast to the next CR: the common case in a body is a long run of text. */
            const char* cr = memchr(p + i, '\r', n - i);
            if (!cr) return -1;
            i = (size_t)(cr - p);
        }
        if (p[i] == end[c->tail]) {
            if (++c->tail == 5) return (long)i + 1;
        } else {
            c->tail = p[i] == '\r' ? 1 : 0;
        }
    }
    return -1;
}

/* Consumes p[0..n): commands line by line, bodies by the end matcher. */
static void consume(struct floor_conn* c, const char* p, size_t n)
{
    while (n > 0) {
        if (c->in_data) {
            long end = find_end(c, p, n);
            if (end < 0) return;
            c->in_data = 0;
            c->tail = 0;
            reply(c, "250 OK: queued\r\n");
            p += end;
            n -= (size_t)end;
            continue;
        }
        const char* lf = memchr(p, '\n', n);
        size_t take = lf ? (size_t)(lf - p) + 1 : n;
        if (c->used + take > sizeof c->line) { /* not the benchmark's client; drop the connection */
            shutdown(c->fd, SHUT_RDWR);
            return;
        }
        memcpy(c->line + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (lf) {
            int stop = command(c, c->line, c->used);
            c->used = 0;
            if (stop) return;
        }
    }
}

/* "HOST:PORT" (an IPv4 address) into sa; exits with the usage on anything else. */
static void parse_host_port(const char* arg, struct sockaddr_in* sa, const char* usage)
{
    char host[64];
    const char* colon = strrchr(arg, ':');
    if (!colon) {
        fprintf(stderr, "%s\n", usage);
        exit(2);
    }
    snprintf(host, sizeof host, "%.*s", (int)(colon - arg), arg);
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        fprintf(stderr, "%s is not an IPv4 address\n", host);
        exit(2);
    }
}

/* main()'s start: argc must be `want`, argv[addr] is HOST:PORT (into sa), SIGPIPE is ignored.
 * Returns an epoll set. */
static int floor_start(int argc, int want, char** argv, int addr, const char* usage, struct sockaddr_in* sa)
{
    if (argc != want) {
        fprintf(stderr, "%s\n", usage);
        exit(2);
    }
    parse_host_port(argv[addr], sa, usage);
    signal(SIGPIPE, SIG_IGN);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    return ep;
}

/* The next ready descriptors, up to EVENTS (an interrupted wait is retried). */
static int wait_ready(int ep, struct epoll_event* events)
{
    for (;;) {
        int k = epoll_wait(ep, events, EVENTS, -1);
        if (k >= 0) return k;
        if (errno != EINTR) die("epoll_wait");
    }
}

/* A non-blocking listening socket on sa, in the epoll set `ep` (level-triggered) with `tag`. */
static int listen_on(int ep, const struct sockaddr_in* sa, void* tag)
{
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("socket");
    if (bind(fd, (const struct sockaddr*)sa, sizeof *sa) < 0 || listen(fd, 4096) < 0) die("bind/listen");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    return fd;
}

/* The next connection waiting on the listening socket lfd: non-blocking, TCP_NODELAY, in the epoll
 * set with `events`, `size` bytes (the including file's struct) zeroed but for fd. NULL once none is waiting; one that cannot
 * be set up is closed and skipped. */
static struct floor_conn* accept_conn(int ep, int lfd, unsigned events, size_t size)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return NULL;
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct floor_conn* c = calloc(1, size);
        if (c) {
            c->fd = fd;
            struct epoll_event ev = {.events = events, .data.ptr = c};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0) return c;
            free(c);
        }
        close(fd);
    }
}

#endif
