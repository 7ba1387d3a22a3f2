// SPDX-License-Identifier: Apache-2.0
// noop-milter: a milter that filters nothing, for bench/ (the "milter" scenarios).
//
//   noop-milter [-r] [-s] inet:PORT@127.0.0.1
//
// It takes every event the MTA sends (connect, HELO, MAIL, RCPT, DATA, each header, end of
// headers, the body) and lets everything through: ACCEPT at end of message, nothing changed.
// By default it negotiates every SMFIP_NR_* flag the MTA offers, as a filter that never
// objects before the end of the message should: the MTA then writes those events without
// waiting for a reply, and a message costs one round trip to the milter (end of message).
// -r: asks for no NR_* flag and answers CONTINUE to every event (a round trip per event, as
// milters that do not negotiate the flags cost).
// -s: exits as soon as its standard input reaches its end: the benchmark holds a pipe to it, so
// the milter goes with the benchmark however that ends (libmilter itself stops on SIGTERM, SIGINT
// and SIGHUP, but only at its next poll, up to 5 s later).
// Built with libmilter (Debian libmilter-dev) by bench/bench.py.
#include <libmilter/mfapi.h>

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NR_ALL                                                                                                         \
    (SMFIP_NR_CONN | SMFIP_NR_HELO | SMFIP_NR_MAIL | SMFIP_NR_RCPT | SMFIP_NR_DATA | SMFIP_NR_UNKN | SMFIP_NR_EOH |    \
     SMFIP_NR_BODY | SMFIP_NR_HDR)

static unsigned long wanted = NR_ALL;

// The protocol flags agreed at negotiation travel in the context's private pointer (no allocation).
static sfsistat reply(SMFICTX* ctx, unsigned long nr_flag)
{
    uintptr_t agreed = (uintptr_t)smfi_getpriv(ctx);
    return (agreed & nr_flag) != 0 ? SMFIS_NOREPLY : SMFIS_CONTINUE;
}

static sfsistat on_negotiate(SMFICTX* ctx, unsigned long actions, unsigned long steps, unsigned long f2,
                             unsigned long f3, unsigned long* pactions, unsigned long* psteps, unsigned long* pf2,
                             unsigned long* pf3)
{
    (void)actions;
    (void)f2;
    (void)f3;
    unsigned long agreed = steps & wanted;
    *pactions = 0;  // no changes to the message, ever
    *psteps = agreed;
    *pf2 = 0;
    *pf3 = 0;
    smfi_setpriv(ctx, (void*)(uintptr_t)agreed);
    return SMFIS_CONTINUE;
}

static sfsistat on_connect(SMFICTX* ctx, char* host, _SOCK_ADDR* addr)
{
    (void)host;
    (void)addr;
    return reply(ctx, SMFIP_NR_CONN);
}

static sfsistat on_helo(SMFICTX* ctx, char* name)
{
    (void)name;
    return reply(ctx, SMFIP_NR_HELO);
}

static sfsistat on_mail(SMFICTX* ctx, char** argv)
{
    (void)argv;
    return reply(ctx, SMFIP_NR_MAIL);
}

static sfsistat on_rcpt(SMFICTX* ctx, char** argv)
{
    (void)argv;
    return reply(ctx, SMFIP_NR_RCPT);
}

static sfsistat on_data(SMFICTX* ctx) { return reply(ctx, SMFIP_NR_DATA); }

static sfsistat on_header(SMFICTX* ctx, char* name, char* value)
{
    (void)name;
    (void)value;
    return reply(ctx, SMFIP_NR_HDR);
}

static sfsistat on_eoh(SMFICTX* ctx) { return reply(ctx, SMFIP_NR_EOH); }

static sfsistat on_body(SMFICTX* ctx, unsigned char* chunk, size_t len)
{
    (void)chunk;
    (void)len;
    return reply(ctx, SMFIP_NR_BODY);
}

static sfsistat on_unknown(SMFICTX* ctx, const char* cmd)
{
    (void)cmd;
    return reply(ctx, SMFIP_NR_UNKN);
}

static sfsistat on_eom(SMFICTX* ctx)
{
    (void)ctx;
    return SMFIS_ACCEPT;
}

static sfsistat on_abort(SMFICTX* ctx)
{
    (void)ctx;
    return SMFIS_CONTINUE;
}

static sfsistat on_close(SMFICTX* ctx)
{
    smfi_setpriv(ctx, NULL);
    return SMFIS_CONTINUE;
}

static void* watch_stdin(void* arg)
{
    (void)arg;
    char buf[256];
    while (read(STDIN_FILENO, buf, sizeof buf) > 0) {}
    _exit(0);  // nothing to save: every session only ever gets ACCEPT
}

int main(int argc, char** argv)
{
    int opt;
    int until_eof = 0;
    while ((opt = getopt(argc, argv, "rs")) != -1) {
        if (opt == 'r') {
            wanted = 0;
        } else if (opt == 's') {
            until_eof = 1;
        } else {
            optind = argc + 1;
            break;
        }
    }
    if (optind + 1 != argc) {
        fprintf(stderr, "usage: %s [-r] [-s] inet:PORT@127.0.0.1\n", argv[0]);
        return 2;
    }
    struct smfiDesc desc;
    memset(&desc, 0, sizeof desc);
    desc.xxfi_name = "noop-milter";
    desc.xxfi_version = SMFI_VERSION;
    desc.xxfi_flags = SMFIF_NONE;
    desc.xxfi_connect = on_connect;
    desc.xxfi_helo = on_helo;
    desc.xxfi_envfrom = on_mail;
    desc.xxfi_envrcpt = on_rcpt;
    desc.xxfi_header = on_header;
    desc.xxfi_eoh = on_eoh;
    desc.xxfi_body = on_body;
    desc.xxfi_eom = on_eom;
    desc.xxfi_abort = on_abort;
    desc.xxfi_close = on_close;
    desc.xxfi_unknown = on_unknown;
    desc.xxfi_data = on_data;
    desc.xxfi_negotiate = on_negotiate;
    if (smfi_setconn(argv[optind]) == MI_FAILURE || smfi_setbacklog(1024) == MI_FAILURE ||
        smfi_register(desc) == MI_FAILURE) {
        fprintf(stderr, "noop-milter: cannot set up %s\n", argv[optind]);
        return 1;
    }
    if (smfi_opensocket(true) == MI_FAILURE) {
        fprintf(stderr, "noop-milter: cannot listen on %s\n", argv[optind]);
        return 1;
    }
    pthread_t watcher;
    if (until_eof && pthread_create(&watcher, NULL, watch_stdin, NULL) != 0) {
        fprintf(stderr, "noop-milter: cannot start the stdin watcher\n");
        return 1;
    }
    fprintf(stderr, "noop-milter: listening on %s (%s)\n", argv[optind],
            wanted ? "no replies but end of message" : "a reply to every event");
    return smfi_main() == MI_SUCCESS ? 0 : 1;
}
