// SPDX-License-Identifier: Apache-2.0
/* bench/floor/floor.c - the least an SMTP sink can do, as a yardstick (bench/README.md, "The floor").
 *
 * Not a server anyone should run: it answers just enough SMTP for smtp-source (220, 250 to
 * every command, 354 to DATA, 250 after the final dot, 221 to QUIT) and does nothing else. No
 * parsing beyond the verb's first letters, no limits, no timeouts, no plugin, no logging. It
 * exists so the benchmark can show how much of a server's CPU per message any server must
 * spend on this machine (the kernel's TCP, wake-ups, the scheduler) and how fast this client
 * can go at all, measured in the same run as the real peers.
 *
 * Its I/O is the cheapest shape an event loop can have: one epoll_wait for many ready
 * connections, edge-triggered, one read per readiness when the read comes back short, one write per
 * reply, 1 MiB reads while a message body arrives.
 *
 * usage: floor HOST:PORT      (127.0.0.1 only is what the benchmark uses)
 */
#define _GNU_SOURCE
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

enum { BIG = 1 << 20, LINE_MAX_KEPT = 4096, EVENTS = 256 };

struct conn {
    int fd;
    int in_data;   /* between 354 and the final dot */
    unsigned tail; /* data: how much of "\r\n.\r\n" the previous read ended with */
    size_t used;   /* command mode: bytes of an unfinished line kept in line[] */
    char line[LINE_MAX_KEPT];
};

static char buf[BIG];

static void die(const char* what)
{
    perror(what);
    exit(2);
}

static void reply(struct conn* c, const char* text)
{
    size_t n = strlen(text);
    /* Replies are tiny and the client reads them before sending more: a short write would mean
     * a client that does not read, which smtp-source is not. Treat it as the end. */
    if (send(c->fd, text, n, MSG_NOSIGNAL) != (ssize_t)n) shutdown(c->fd, SHUT_RDWR);
}

/* Advances the end-of-data matcher over p[0..n); returns the offset just past the final dot's
 * CRLF, or -1 when the message goes on. */
static long find_end(struct conn* c, const char* p, size_t n)
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

static void command(struct conn* c, const char* l, size_t n)
{
    char v0 = n > 0 ? (char)(l[0] | 0x20) : 0, v1 = n > 1 ? (char)(l[1] | 0x20) : 0;
    if (v0 == 'e' || v0 == 'h') reply(c, "250-floor\r\n250 8BITMIME\r\n");
    else if (v0 == 'd' && v1 == 'a') {
        reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
        c->in_data = 1;
        c->tail = 2; /* the DATA line's CRLF counts: an empty body is just ".\r\n" */
    } else if (v0 == 'q') {
        reply(c, "221 Bye\r\n");
        shutdown(c->fd, SHUT_RDWR);
    } else reply(c, "250 OK\r\n");
}

/* Consumes p[0..n): commands line by line, bodies by the end matcher. */
static void consume(struct conn* c, const char* p, size_t n)
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
        if (c->used + take > sizeof c->line) { /* not smtp-source; drop the connection */
            shutdown(c->fd, SHUT_RDWR);
            return;
        }
        memcpy(c->line + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (lf) {
            command(c, c->line, c->used);
            c->used = 0;
        }
    }
}

int main(int argc, char** argv)
{
    if (argc != 2 || !strchr(argv[1], ':')) {
        fprintf(stderr, "usage: floor HOST:PORT\n");
        return 2;
    }
    char host[64];
    const char* colon = strrchr(argv[1], ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - argv[1]), argv[1]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "floor: %s is not an IPv4 address\n", host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("socket");
    if (bind(ls, (struct sockaddr*)&sa, sizeof sa) < 0 || listen(ls, 4096) < 0) die("bind/listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0) die("epoll_ctl");

    struct epoll_event events[EVENTS];
    for (;;) {
        int k = epoll_wait(ep, events, EVENTS, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; ++i) {
            struct conn* c = events[i].data.ptr;
            if (!c) { /* the listener: take everything that is waiting */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = c};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                        close(fd);
                        free(c);
                        continue;
                    }
                    reply(c, "220 floor ESMTP\r\n");
                }
                continue;
            }
            /* Edge-triggered: read until a short read (the socket is then drained for this
             * edge; more data makes a new one), or until EOF/error. */
            for (;;) {
                ssize_t n = recv(c->fd, buf, sizeof buf, 0);
                if (n > 0) {
                    consume(c, buf, (size_t)n);
                    if ((size_t)n < sizeof buf) break;
                    continue;
                }
                if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
                close(c->fd); /* EOF or error: closing removes it from the epoll set */
                free(c);
                break;
            }
        }
    }
}
