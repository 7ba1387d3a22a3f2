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
 * SSL_MODE_RELEASE_BUFFERS: no allocation per record; measured no cheaper than releasing them,
 * bench/README.md, "TLS").
 *
 * usage: tlsfloor CERT KEY HOST:STARTTLS_PORT IMPLICIT_PORT
 */
#define _GNU_SOURCE
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "../floor/floor.h"

enum { BIG = 1 << 16 };

struct conn {
    struct floor_conn base; /* first: what floor.h works on */
    SSL* ssl;
    int handshaking;
    int greet_after_tls; /* implicit TLS: the greeting comes once the handshake is done */
};

static char starttls_tag, implicit_tag; /* their addresses tell the two listeners behind epoll's pointer */
static char buf[BIG];
static SSL_CTX* ctx;

static void drop(struct conn* c)
{
    if (c->ssl) SSL_free(c->ssl);
    close(c->base.fd); /* closing removes it from the epoll set */
    free(c);
}

/* Replies are tiny and the client reads them before it sends more: a short write would mean
 * a client that does not read, which tlsload is not. Treat it as the end. */
static void reply(struct floor_conn* fc, const char* text)
{
    struct conn* c = (struct conn*)fc;
    size_t n = strlen(text), w = 0;
    if (c->ssl && !c->handshaking) {
        if (SSL_write_ex(c->ssl, text, n, &w) != 1 || w != n) shutdown(fc->fd, SHUT_RDWR);
    } else if (send(fc->fd, text, n, MSG_NOSIGNAL) != (ssize_t)n) {
        shutdown(fc->fd, SHUT_RDWR);
    }
}

static void start_tls(struct conn* c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->base.fd) != 1) die("SSL_new");
    SSL_set_accept_state(c->ssl);
    c->handshaking = 1;
}

/* One command line. Returns 1 when the rest of the read must be dropped (STARTTLS). */
static int command(struct floor_conn* fc, const char* l, size_t n)
{
    struct conn* c = (struct conn*)fc;
    char v0 = n > 0 ? (char)(l[0] | 0x20) : 0, v1 = n > 1 ? (char)(l[1] | 0x20) : 0;
    if (v0 == 'e' || v0 == 'h') {
        reply(fc, c->ssl ? "250-floor\r\n250 8BITMIME\r\n" : "250-floor\r\n250 STARTTLS\r\n");
    } else if (v0 == 'd' && v1 == 'a') {
        reply(fc, "354 End data with <CR><LF>.<CR><LF>\r\n");
        start_data(fc);
    } else if (v0 == 's' && v1 == 't' && !c->ssl) {
        reply(fc, "220 Ready to start TLS\r\n");
        start_tls(c);
        return 1; /* plaintext after STARTTLS is never read */
    } else if (v0 == 'q') {
        reply(fc, "221 Bye\r\n");
        if (c->ssl) SSL_shutdown(c->ssl);
        shutdown(fc->fd, SHUT_RDWR);
    } else {
        reply(fc, "250 OK\r\n");
    }
    return 0;
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
                reply(&c->base, "220 floor ESMTP\r\n");
            }
            continue;
        }
        if (c->ssl) {
            size_t n = 0;
            if (SSL_read_ex(c->ssl, buf, sizeof buf, &n) == 1) {
                consume(&c->base, buf, n);
                continue;
            }
            int e = SSL_get_error(c->ssl, 0);
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 1;
            drop(c);
            return 0;
        }
        ssize_t n = recv(c->base.fd, buf, sizeof buf, 0);
        if (n > 0) {
            consume(&c->base, buf, (size_t)n);
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
        drop(c);
        return 0;
    }
}

int main(int argc, char** argv)
{
    struct sockaddr_in sa;
    int ep = floor_start(argc, 5, argv, 3, "usage: tlsfloor CERT KEY HOST:STARTTLS_PORT IMPLICIT_PORT", &sa);
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, argv[1]) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, argv[2], SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 2;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_id_context(ctx, (const unsigned char*)"tlsfloor", 8);

    int starttls = listen_on(ep, &sa, &starttls_tag);
    sa.sin_port = htons((unsigned short)atoi(argv[4]));
    int implicit = listen_on(ep, &sa, &implicit_tag);

    struct epoll_event events[EVENTS];
    for (;;) {
        int k = wait_ready(ep, events);
        for (int i = 0; i < k; ++i) {
            void* tag = events[i].data.ptr;
            if (tag != &starttls_tag && tag != &implicit_tag) {
                serve(tag);
                continue;
            }
            const unsigned want = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
            struct conn* c;
            while ((c = (struct conn*)accept_conn(ep, tag == &implicit_tag ? implicit : starttls, want, sizeof *c))) {
                if (tag == &implicit_tag) {
                    start_tls(c);
                    c->greet_after_tls = 1;
                    serve(c);
                } else {
                    reply(&c->base, "220 floor ESMTP\r\n");
                }
            }
        }
    }
}
