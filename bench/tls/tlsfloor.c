// SPDX-License-Identifier: Apache-2.0
/* bench/tls/tlsfloor.c - the TLS floor: the least an SMTP sink over TLS can do, as a yardstick
 * (bench/README.md, "TLS"). What bench/floor/floor.c is to the plaintext scenarios: it answers
 * just what bench/tls/tlsload.c sends (220, EHLO with STARTTLS, 220 to STARTTLS then the
 * handshake, 250 to every command, 354 to DATA, 250 after the final dot, 221) on a STARTTLS
 * port and on an implicit-TLS port, and does nothing else: no parsing beyond the verb's first
 * letters, no limits, no timeouts, no logging.
 *
 * Its TLS is OpenSSL with the settings any server here has (the same certificate, TLS 1.2 and
 * 1.3, session tickets on, OpenSSL's default ciphers and groups) and the cheapest I/O: one
 * epoll_wait for all ready connections, edge-triggered, OpenSSL reading and writing the socket
 * itself with read-ahead (one recv per readiness when the records fit), one SSL_write per
 * reply. It keeps OpenSSL's record buffers for the connection's life (no
 * SSL_MODE_RELEASE_BUFFERS: no allocation per record), the cheapest choice for CPU.
 *
 * usage: tlsfloor CERT KEY HOST:STARTTLS_PORT IMPLICIT_PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

enum { BIG = 1 << 16, LINE_MAX_KEPT = 4096, EVENTS = 256 };

struct listener {
    int is_conn; /* 0: tells a listener from a connection behind epoll's pointer */
    int fd;
    int implicit;
};

struct conn {
    int is_conn; /* 1 */
    int fd;
    SSL* ssl;
    int handshaking;
    int greet_after_tls; /* implicit TLS: the greeting comes once the handshake is done */
    int in_data;         /* between 354 and the final dot */
    unsigned tail;       /* data: how much of "\r\n.\r\n" the previous read ended with */
    size_t used;         /* command mode: bytes of an unfinished line kept in line[] */
    char line[LINE_MAX_KEPT];
};

static char buf[BIG];
static SSL_CTX* ctx;

static void die(const char* what)
{
    perror(what);
    exit(2);
}

static void drop(struct conn* c)
{
    if (c->ssl) SSL_free(c->ssl);
    close(c->fd); /* closing removes it from the epoll set */
    free(c);
}

/* Replies are tiny and the client reads them before it sends more: a short write would mean
 * a client that does not read, which tlsload is not. Treat it as the end. */
static void reply(struct conn* c, const char* text)
{
    size_t n = strlen(text), w = 0;
    if (c->ssl && !c->handshaking) {
        if (SSL_write_ex(c->ssl, text, n, &w) != 1 || w != n) shutdown(c->fd, SHUT_RDWR);
    } else if (send(c->fd, text, n, MSG_NOSIGNAL) != (ssize_t)n) {
        shutdown(c->fd, SHUT_RDWR);
    }
}

static void start_tls(struct conn* c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) die("SSL_new");
    SSL_set_accept_state(c->ssl);
    c->handshaking = 1;
}

static long find_end(struct conn* c, const char* p, size_t n)
{
    static const char end[] = "\r\n.\r\n";
    for (size_t i = 0; i < n; ++i) {
        if (c->tail == 0) {
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

/* One command line. Returns 1 when the rest of the read must be dropped (STARTTLS). */
static int command(struct conn* c, const char* l, size_t n)
{
    char v0 = n > 0 ? (char)(l[0] | 0x20) : 0, v1 = n > 1 ? (char)(l[1] | 0x20) : 0;
    if (v0 == 'e' || v0 == 'h') {
        reply(c, c->ssl ? "250-floor\r\n250 8BITMIME\r\n" : "250-floor\r\n250 STARTTLS\r\n");
    } else if (v0 == 'd' && v1 == 'a') {
        reply(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
        c->in_data = 1;
        c->tail = 2;
    } else if (v0 == 's' && v1 == 't' && !c->ssl) {
        reply(c, "220 Ready to start TLS\r\n");
        start_tls(c);
        return 1; /* plaintext after STARTTLS is never read */
    } else if (v0 == 'q') {
        reply(c, "221 Bye\r\n");
        if (c->ssl) SSL_shutdown(c->ssl);
        shutdown(c->fd, SHUT_RDWR);
    } else {
        reply(c, "250 OK\r\n");
    }
    return 0;
}

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
        if (c->used + take > sizeof c->line) {
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

/* Edge-triggered: on until the socket (or OpenSSL) would block. Returns 0 when c is gone. */
static int serve(struct conn* c)
{
    for (;;) {
        if (c->handshaking) {
            int r = SSL_do_handshake(c->ssl);
            if (r != 1) {
                int e = SSL_get_error(c->ssl, r);
                ERR_clear_error();
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 1;
                drop(c);
                return 0;
            }
            c->handshaking = 0;
            SSL_set_read_ahead(c->ssl, 1);
            if (c->greet_after_tls) {
                c->greet_after_tls = 0;
                reply(c, "220 floor ESMTP\r\n");
            }
            continue;
        }
        if (c->ssl) {
            size_t n = 0;
            if (SSL_read_ex(c->ssl, buf, sizeof buf, &n) == 1) {
                consume(c, buf, n);
                continue;
            }
            int e = SSL_get_error(c->ssl, 0);
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 1;
            drop(c);
            return 0;
        }
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n > 0) {
            consume(c, buf, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
        drop(c);
        return 0;
    }
}

static struct listener* listen_on(int ep, struct sockaddr_in sa, int implicit)
{
    struct listener* l = calloc(1, sizeof *l);
    int one = 1;
    l->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    l->implicit = implicit;
    if (l->fd < 0 || setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) die("socket");
    if (bind(l->fd, (struct sockaddr*)&sa, sizeof sa) < 0 || listen(l->fd, 4096) < 0) die("bind/listen");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, l->fd, &ev) < 0) die("epoll_ctl");
    return l;
}

int main(int argc, char** argv)
{
    if (argc != 5 || !strchr(argv[3], ':')) {
        fprintf(stderr, "usage: tlsfloor CERT KEY HOST:STARTTLS_PORT IMPLICIT_PORT\n");
        return 2;
    }
    char host[64];
    const char* colon = strrchr(argv[3], ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - argv[3]), argv[3]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "tlsfloor: %s is not an IPv4 address\n", host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 2;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char*)"tlsfloor", 8);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    listen_on(ep, sa, 0);
    sa.sin_port = htons((unsigned short)atoi(argv[4]));
    listen_on(ep, sa, 1);

    int one = 1;
    struct epoll_event events[EVENTS];
    for (;;) {
        int k = epoll_wait(ep, events, EVENTS, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < k; ++i) {
            struct conn* c = events[i].data.ptr;
            if (c->is_conn) {
                serve(c);
                continue;
            }
            struct listener* l = events[i].data.ptr;
            for (;;) {
                int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) break;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                c = calloc(1, sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->is_conn = 1;
                c->fd = fd;
                struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                    close(fd);
                    free(c);
                    continue;
                }
                if (l->implicit) {
                    start_tls(c);
                    c->greet_after_tls = 1;
                    serve(c);
                } else {
                    reply(c, "220 floor ESMTP\r\n");
                }
            }
        }
    }
}
