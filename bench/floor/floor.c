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

#include "floor.h"

enum { BIG = 1 << 20 };

static char buf[BIG];

static void reply(struct floor_conn* c, const char* text)
{
    size_t n = strlen(text);
    /* Replies are tiny and the client reads them before sending more: a short write would mean
     * a client that does not read, which smtp-source is not. Treat it as the end. */
    if (send(c->fd, text, n, MSG_NOSIGNAL) != (ssize_t)n) shutdown(c->fd, SHUT_RDWR);
}

static int command(struct floor_conn* c, const char* l, size_t n)
{
    char v0 = n > 0 ? (char)(l[0] | 0x20) : 0, v1 = n > 1 ? (char)(l[1] | 0x20) : 0;
    if (v0 == 'e' || v0 == 'h') reply(c, "250-floor\r\n250 8BITMIME\r\n");
    else if (v0 == 'd' && v1 == 'a') {
        reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
        start_data(c);
    } else if (v0 == 'q') {
        reply(c, "221 Bye\r\n");
        shutdown(c->fd, SHUT_RDWR);
    } else reply(c, "250 OK\r\n");
    return 0;
}

int main(int argc, char** argv)
{
    struct sockaddr_in sa;
    int ep = floor_start(argc, 2, argv, 1, "usage: floor HOST:PORT", &sa);
    int ls = listen_on(ep, &sa, NULL);
    struct epoll_event events[EVENTS];
    for (;;) {
        int k = wait_ready(ep, events);
        for (int i = 0; i < k; ++i) {
            struct floor_conn* c = events[i].data.ptr;
            if (!c) { /* the listener: take everything that is waiting */
                while ((c = accept_conn(ep, ls, EPOLLIN | EPOLLRDHUP | EPOLLET, sizeof *c)))
                    reply(c, "220 floor ESMTP\r\n");
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
