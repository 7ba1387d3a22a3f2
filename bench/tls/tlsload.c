// SPDX-License-Identifier: Apache-2.0
/* bench/tls/tlsload.c - an SMTP load client over TLS, for the benchmark's TLS scenarios
 * (bench/README.md, "TLS"). Postfix's smtp-source speaks no TLS; this does what it does
 * (MAIL, RCPT, DATA, a body, no pipelining; a new connection per message or many messages per
 * connection; c sessions at once) over STARTTLS or implicit TLS, TLS 1.2 or 1.3, with or
 * without session resumption, and reports handshakes and messages per second as JSON. With
 * -m plain it does the same without TLS (EHLO, then the messages): the plaintext cost of the
 * same conversation with the same client, which the TLS scenarios' cost is read against.
 *
 * One process, one epoll loop, edge-triggered, non-blocking sockets; OpenSSL with its
 * defaults (read-ahead off: every read drains a record; the certificate is not verified, the
 * handshake's signature is). With -R every connection offers the newest session ticket
 * the session's earlier connection received (each of the c sessions is a client with its own
 * TLS session cache).
 *
 * usage: tlsload [-m starttls|implicit|plain] [-v 1.2|1.3] [-R] [-c SESSIONS] [-n MESSAGES]
 *                [-d PER_CONNECTION] [-l BYTES] [-t SECONDS] [-I CONNECTIONS [-B BATCH]] HOST:PORT
 *   -d 1 (default): a new connection per message; -d 0: every message on the session's one
 *   connection (smtp-source -d). -I N: idle mode: open N sessions (TLS up, EHLO answered),
 *   print {"held":...,"errors":...} and hold them until stdin closes (bench.py's idle test).
 * Output (load mode), one JSON line: msgs, conns, handshakes, offered (sessions offered for
 * resumption), resumed, elapsed (s), msgs_per_s, handshakes_per_s, and the version, cipher and
 * key exchange group of the first handshake. Exit 1 with the reason on stderr at the first error.
 * The server's CPU is bench.py's to measure (/proc of the server).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum step {
    CONNECTING,
    GREETING, /* 220: in plaintext (STARTTLS) or over TLS (implicit) */
    EHLO_PLAIN,
    STARTTLS,
    HANDSHAKE,
    EHLO_TLS,
    MAIL,
    RCPT,
    DATA,
    BODY,
    QUIT,
    IDLE,
    DEAD,
};

struct conn {
    int fd;
    SSL* ssl;
    enum step step;
    int msgs;        /* messages on this connection */
    int claimed;     /* its first message was counted in `started` when it opened */
    const char* out; /* what is being sent */
    size_t out_len, out_off;
    size_t in_len;
    char in[4096];
};

static struct {
    int implicit, plain, resume, version, sessions, per_conn, idle, batch;
    long total, length;
    double seconds;
    struct sockaddr_in addr;
} opt = {.version = TLS1_3_VERSION,
         .sessions = 1,
         .per_conn = 1,
         .batch = 100,
         .total = 100,
         .length = 1024,
         .seconds = 300};

static SSL_CTX* ctx;
static SSL_SESSION** saved; /* per session (slot): the newest ticket its connections received */
static int ep;
static long started, done_msgs, conns, handshakes, offered, resumed, idle_held, idle_errors;
static char first_error[200];
static char version[32], cipher[64], group[32];
static char* body;
static size_t body_len;

static void die(const char* fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tlsload: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A connection failed: in load mode the run is over; in idle mode it is counted. */
static void fail(struct conn* c, const char* fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    unsigned long e = ERR_get_error();
    if (e) {
        char ossl[120];
        ERR_error_string_n(e, ossl, sizeof ossl);
        size_t l = strlen(why);
        snprintf(why + l, sizeof why - l, " (%s)", ossl);
    }
    ERR_clear_error();
    if (!opt.idle) die("%s", why);
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", why);
    idle_errors++;
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->step = DEAD;
}

static struct conn* slots;
static int slot_count;

/* A ticket arrived: the newest one of this session (slot) replaces the one before. OpenSSL's
 * TLS 1.3 tickets resume once: a ticket offered twice makes a full handshake. */
static int new_session(SSL* ssl, SSL_SESSION* s)
{
    struct conn* c = SSL_get_app_data(ssl);
    SSL_SESSION** keep = &saved[c - slots];
    if (*keep) SSL_SESSION_free(*keep);
    *keep = s;
    return 1; /* we keep the reference */
}

static void send_text(struct conn* c, const char* text, size_t n, enum step next)
{
    c->out = text;
    c->out_len = n;
    c->out_off = 0;
    c->step = next;
}

#define SEND(c, lit, next) send_text((c), (lit), sizeof(lit) - 1, (next))

static void open_conn(struct conn* c)
{
    memset(c, 0, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    conns++;
    c->step = CONNECTING;
    if (started < opt.total) { /* a connection is opened for a message (none in idle mode) */
        started++;
        c->claimed = 1;
    }
    if (connect(c->fd, (struct sockaddr*)&opt.addr, sizeof opt.addr) < 0 && errno != EINPROGRESS) {
        fail(c, "connect: %s", strerror(errno));
        return;
    }
    /* Added once connect() started: the first edge is the connection's (EPOLLOUT or an error). */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
}

static void start_tls(struct conn* c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) die("SSL_new/SSL_set_fd failed");
    SSL_set_connect_state(c->ssl);
    SSL_set_app_data(c->ssl, c);
    if (opt.resume && saved[c - slots]) {
        SSL_set_session(c->ssl, saved[c - slots]);
        offered++;
    }
    c->step = HANDSHAKE;
}

/* The next message on this connection, or QUIT. */
static void next_message(struct conn* c)
{
    if (c->claimed || (started < opt.total && (opt.per_conn == 0 || c->msgs < opt.per_conn))) {
        if (!c->claimed) started++;
        c->claimed = 0;
        SEND(c, "MAIL FROM:<sender@bench.local>\r\n", MAIL);
    } else {
        SEND(c, "QUIT\r\n", QUIT);
    }
}

static void finish_conn(struct conn* c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* our close_notify, as Postfix's client sends it; no wait */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    close(c->fd);
    c->step = DEAD;
    if (started < opt.total) open_conn(c); /* this session's next connection */
}

/* A whole reply arrived with this code: the next step. */
static void advance(struct conn* c, int code)
{
    static const int expect[] = {[GREETING] = 220, [EHLO_PLAIN] = 250, [STARTTLS] = 220, [EHLO_TLS] = 250, [MAIL] = 250,
                                 [RCPT] = 250,     [DATA] = 354,       [BODY] = 250,     [QUIT] = 221};
    if (code != expect[c->step]) {
        fail(c, "unexpected reply %d in step %d: %.60s", code, (int)c->step, c->in);
        return;
    }
    switch (c->step) {
    case GREETING:
        if (c->ssl) SEND(c, "EHLO bench.local\r\n", EHLO_TLS);
        else SEND(c, "EHLO bench.local\r\n", EHLO_PLAIN);
        break;
    case EHLO_PLAIN:
        if (!opt.plain) SEND(c, "STARTTLS\r\n", STARTTLS);
        else if (opt.idle) {
            c->step = IDLE;
            idle_held++;
        } else {
            next_message(c);
        }
        break;
    case STARTTLS: start_tls(c); break;
    case EHLO_TLS:
        if (opt.idle) {
            c->step = IDLE;
            idle_held++;
        } else {
            next_message(c);
        }
        break;
    case MAIL: SEND(c, "RCPT TO:<rcpt@bench.local>\r\n", RCPT); break;
    case RCPT: SEND(c, "DATA\r\n", DATA); break;
    case DATA: send_text(c, body, body_len, BODY); break;
    case BODY:
        done_msgs++;
        c->msgs++;
        next_message(c);
        break;
    case QUIT: finish_conn(c); break;
    default: break;
    }
}

/* The length of the first whole reply in c->in (its last line "ddd text"), or 0. */
static size_t whole_reply(struct conn* c)
{
    size_t start = 0;
    for (;;) {
        char* nl = memchr(c->in + start, '\n', c->in_len - start);
        if (!nl) return 0;
        size_t end = (size_t)(nl - c->in) + 1;
        if (end - start < 4 || c->in[start + 3] != '-') return end;
        start = end;
    }
}

static void handshake_done(struct conn* c)
{
    handshakes++;
    if (SSL_session_reused(c->ssl)) resumed++;
    if (!version[0]) {
        snprintf(version, sizeof version, "%s", SSL_get_version(c->ssl));
        snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(c->ssl));
        int nid = SSL_get_negotiated_group(c->ssl);
        const char* g = nid ? OBJ_nid2sn(nid) : NULL;
        snprintf(group, sizeof group, "%s", g ? g : "?");
    }
}

/* Moves the connection on as far as its socket lets it. */
static void drive(struct conn* c, unsigned events)
{
    for (;;) {
        switch (c->step) {
        case DEAD:
        case IDLE: return;
        case CONNECTING: {
            if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                fail(c, "connect: %s", strerror(err));
                return;
            }
            if (opt.implicit) start_tls(c);
            else c->step = GREETING;
            continue;
        }
        case HANDSHAKE: {
            int r = SSL_do_handshake(c->ssl);
            if (r == 1) {
                handshake_done(c);
                if (opt.implicit) c->step = GREETING;
                else SEND(c, "EHLO bench.local\r\n", EHLO_TLS);
                continue;
            }
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
            fail(c, "TLS handshake failed (SSL error %d, errno %s)", e, strerror(errno));
            return;
        }
        default: break;
        }
        if (c->out_off < c->out_len) {
            const char* p = c->out + c->out_off;
            size_t left = c->out_len - c->out_off;
            if (c->ssl) {
                size_t n = 0;
                if (SSL_write_ex(c->ssl, p, left, &n) != 1) {
                    int e = SSL_get_error(c->ssl, 0);
                    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
                    fail(c, "TLS write failed (SSL error %d)", e);
                    return;
                }
                c->out_off += n;
            } else {
                ssize_t n = send(c->fd, p, left, MSG_NOSIGNAL);
                if (n < 0) {
                    if (errno == EAGAIN || errno == EINTR) return;
                    fail(c, "send: %s", strerror(errno));
                    return;
                }
                c->out_off += (size_t)n;
            }
            continue;
        }
        size_t whole = whole_reply(c);
        if (whole) {
            int code = atoi(c->in);
            advance(c, code);
            /* DEAD: done; CONNECTING: this session's next connection, its edge is to come. */
            if (c->step == DEAD || c->step == CONNECTING || c->step == IDLE) return;
            memmove(c->in, c->in + whole, c->in_len - whole);
            c->in_len -= whole;
            continue;
        }
        if (c->in_len == sizeof c->in) {
            fail(c, "reply too long");
            return;
        }
        char* p = c->in + c->in_len;
        size_t room = sizeof c->in - c->in_len;
        if (c->ssl) {
            size_t n = 0;
            if (SSL_read_ex(c->ssl, p, room, &n) != 1) {
                int e = SSL_get_error(c->ssl, 0);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
                fail(c, "TLS read failed (SSL error %d) in step %d", e, (int)c->step);
                return;
            }
            c->in_len += n;
        } else {
            ssize_t n = recv(c->fd, p, room, 0);
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
            if (n <= 0) {
                fail(c, "connection closed in step %d: %s", (int)c->step, n < 0 ? strerror(errno) : "EOF");
                return;
            }
            c->in_len += (size_t)n;
        }
    }
}

static void make_body(void)
{
    const char* head = "From: <sender@bench.local>\r\nTo: <rcpt@bench.local>\r\nSubject: tlsload\r\n\r\n";
    size_t cap = (size_t)opt.length + 200;
    body = malloc(cap);
    if (!body) die("out of memory");
    size_t n = (size_t)snprintf(body, cap, "%s", head);
    while (n + 80 <= (size_t)opt.length) {
        memset(body + n, 'X', 78);
        memcpy(body + n + 78, "\r\n", 2);
        n += 80;
    }
    memcpy(body + n, ".\r\n", 3);
    body_len = n + 3;
}

static void loop_until(int (*finished)(void), double deadline, struct conn* all, int count)
{
    (void)all;
    (void)count;
    struct epoll_event events[256];
    while (!finished()) {
        int ms = (int)((deadline - now()) * 1000);
        if (ms <= 0) die("gave up after %.0f s (%ld of %ld messages done)", opt.seconds, done_msgs, opt.total);
        int k = epoll_wait(ep, events, 256, ms < 1000 ? ms : 1000);
        if (k < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < k; ++i) drive(events[i].data.ptr, events[i].events);
    }
}

static int load_finished(void)
{
    for (int i = 0; i < slot_count; ++i)
        if (slots[i].step != DEAD) return 0;
    return 1;
}

static int batch_from, batch_to;
static int batch_finished(void)
{
    for (int i = batch_from; i < batch_to; ++i)
        if (slots[i].step != DEAD && slots[i].step != IDLE) return 0;
    return 1;
}

int main(int argc, char** argv)
{
    int o;
    while ((o = getopt(argc, argv, "m:v:Rc:n:d:l:t:I:B:")) != -1) {
        switch (o) {
        case 'm':
            if (!strcmp(optarg, "implicit")) opt.implicit = 1;
            else if (!strcmp(optarg, "plain")) opt.plain = 1;
            else if (strcmp(optarg, "starttls")) die("-m starttls|implicit|plain");
            break;
        case 'v':
            if (!strcmp(optarg, "1.2")) opt.version = TLS1_2_VERSION;
            else if (!strcmp(optarg, "1.3")) opt.version = TLS1_3_VERSION;
            else die("-v 1.2|1.3");
            break;
        case 'R': opt.resume = 1; break;
        case 'c': opt.sessions = atoi(optarg); break;
        case 'n': opt.total = atol(optarg); break;
        case 'd': opt.per_conn = atoi(optarg); break;
        case 'l': opt.length = atol(optarg); break;
        case 't': opt.seconds = atof(optarg); break;
        case 'I': opt.idle = atoi(optarg); break;
        case 'B': opt.batch = atoi(optarg); break;
        default: die("usage: see the comment at the top of bench/tls/tlsload.c");
        }
    }
    if (optind != argc - 1 || !strchr(argv[optind], ':')) die("usage: tlsload [options] HOST:PORT");
    char host[64];
    const char* colon = strrchr(argv[optind], ':');
    snprintf(host, sizeof host, "%.*s", (int)(colon - argv[optind]), argv[optind]);
    opt.addr.sin_family = AF_INET;
    opt.addr.sin_port = htons((unsigned short)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &opt.addr.sin_addr) != 1) die("%s is not an IPv4 address", host);
    if (opt.sessions < 1 || opt.batch < 1 || opt.length < 0) die("bad -c, -B or -l");
    signal(SIGPIPE, SIG_IGN);

    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || SSL_CTX_set_min_proto_version(ctx, opt.version) != 1 ||
        SSL_CTX_set_max_proto_version(ctx, opt.version) != 1)
        die("SSL_CTX setup failed");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    /* Without -R the client still says it takes tickets (OpenSSL's default), as a new client
     * does: the server does its usual work, the tickets are dropped. */
    if (opt.resume) {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, new_session);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    make_body();
    double t0 = now();

    if (opt.idle) {
        slot_count = opt.idle;
        slots = calloc((size_t)slot_count, sizeof *slots);
        saved = calloc((size_t)slot_count, sizeof *saved);
        if (!slots || !saved) die("out of memory");
        opt.total = 0;
        for (batch_from = 0; batch_from < slot_count; batch_from = batch_to) {
            batch_to = batch_from + opt.batch < slot_count ? batch_from + opt.batch : slot_count;
            for (int i = batch_from; i < batch_to; ++i) open_conn(&slots[i]);
            loop_until(batch_finished, now() + 60, slots, slot_count);
        }
        printf("{\"held\": %ld, \"errors\": %ld, \"first_error\": \"%s\", \"elapsed\": %.3f, \"handshakes\": %ld,"
               " \"version\": \"%s\", \"cipher\": \"%s\"}\n",
               idle_held, idle_errors, first_error, now() - t0, handshakes, version, cipher);
        fflush(stdout);
        char buf[256];
        while (read(0, buf, sizeof buf) > 0) {}
        for (int i = 0; i < slot_count; ++i)
            if (slots[i].step != DEAD) close(slots[i].fd);
        return 0;
    }

    slot_count = opt.sessions < opt.total ? opt.sessions : (int)opt.total;
    if (slot_count < 1) slot_count = 1;
    slots = calloc((size_t)slot_count, sizeof *slots);
    saved = calloc((size_t)slot_count, sizeof *saved);
    if (!slots || !saved) die("out of memory");
    for (int i = 0; i < slot_count; ++i) open_conn(&slots[i]);
    loop_until(load_finished, t0 + opt.seconds, slots, slot_count);
    double elapsed = now() - t0;
    printf("{\"msgs\": %ld, \"conns\": %ld, \"handshakes\": %ld, \"offered\": %ld, \"resumed\": %ld,"
           " \"elapsed\": %.6f, \"msgs_per_s\": %.1f, \"handshakes_per_s\": %.1f, \"version\": \"%s\","
           " \"cipher\": \"%s\", \"group\": \"%s\"}\n",
           done_msgs, conns, handshakes, offered, resumed, elapsed, done_msgs / elapsed, handshakes / elapsed, version,
           cipher, group);
    return done_msgs == opt.total ? 0 : 1;
}
