// SPDX-License-Identifier: Apache-2.0
/*
 * hello: an asiosmtpd plugin in C99 that adds the SMTP command HELLO and the EHLO keyword
 * XHELLO. It shows the whole C ABI life cycle: the entry symbol and descriptor, create()
 * reading the config and registering, a command handler setting its reply, destroy().
 *
 *   C: HELLO            S: 250 Hello, world
 *   C: HELLO Alice      S: 250 Hello, Alice
 *
 * Config (optional):  {greeting: Howdy}   ->  250 Howdy, Alice
 */
#include <asiosmtpd/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct hello {
    const asiosmtpd_host_api* host; /* valid until destroy() returns */
    asiosmtpd_ctx* ctx;
    char greeting[64];
} hello;

static asiosmtpd_str cstr(const char* s)
{
    asiosmtpd_str r;
    r.data = s;
    r.size = strlen(s);
    return r;
}

static void set_error(asiosmtpd_errbuf* err, const char* text)
{
    if (err != NULL && err->buf != NULL && err->cap > 0) snprintf(err->buf, err->cap, "%s", text);
}

/* HELLO [name]: a registered command's handler gets asiosmtpd_command_args. */
static asiosmtpd_verdict on_hello(void* instance, asiosmtpd_call* call, const void* args)
{
    const hello* self = (const hello*)instance;
    const asiosmtpd_command_args* a = (const asiosmtpd_command_args*)args;
    char reply[200];
    int n;
    if (a->has_argument)
        n = snprintf(reply, sizeof reply, "%s, %.*s", self->greeting,
                     (int)(a->argument.size > 100 ? 100 : a->argument.size), a->argument.data);
    else n = snprintf(reply, sizeof reply, "%s, world", self->greeting);
    if (n < 0) return ASIOSMTPD_TEMPFAIL; /* the host answers 451 4.7.1 */
    /* The reply text is copied by the host; the class (2xx) fits ACCEPT. */
    if (self->host->set_reply(call, 250, cstr(reply)) != ASIOSMTPD_OK) return ASIOSMTPD_TEMPFAIL;
    self->host->log(self->ctx, call, ASIOSMTPD_LOG_DEBUG, cstr("said hello"));
    return ASIOSMTPD_ACCEPT;
}

static asiosmtpd_status create(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg,
                               void** out_instance, asiosmtpd_errbuf* err)
{
    hello* self;
    const asiosmtpd_cfg *root, *greeting;
    asiosmtpd_command_desc cmd;
    asiosmtpd_status st;

    *out_instance = NULL;
    if (host->abi_major != ASIOSMTPD_ABI_MAJOR) {
        set_error(err, "host plugin ABI major mismatch");
        return ASIOSMTPD_E_UNSUPPORTED;
    }
    self = (hello*)calloc(1, sizeof *self);
    if (self == NULL) {
        set_error(err, "out of memory");
        return ASIOSMTPD_E_INVALID;
    }
    self->host = host;
    self->ctx = ctx;
    strcpy(self->greeting, "Hello");

    /* Config nodes are valid only during create(): copy what you keep. */
    root = host->cfg_root(reg);
    if (host->cfg_kind(root) == ASIOSMTPD_CFG_MAP) {
        greeting = host->cfg_get(root, cstr("greeting"));
        if (greeting != NULL) {
            asiosmtpd_str g = host->cfg_scalar(greeting);
            if (host->cfg_kind(greeting) != ASIOSMTPD_CFG_SCALAR || g.size == 0 || g.size >= sizeof self->greeting) {
                set_error(err, "greeting: expected a string of 1..63 characters");
                free(self);
                return ASIOSMTPD_E_INVALID;
            }
            memcpy(self->greeting, g.data, g.size);
            self->greeting[g.size] = '\0';
        }
    } else if (host->cfg_kind(root) != ASIOSMTPD_CFG_NULL) {
        set_error(err, "config must be a map ({greeting: Hello})");
        free(self);
        return ASIOSMTPD_E_INVALID;
    }

    memset(&cmd, 0, sizeof cmd);
    cmd.struct_size = sizeof cmd;
    cmd.verb = cstr("HELLO");
    cmd.help = cstr("HELLO [name]");
    cmd.flags = 0;
    cmd.handler = on_hello;
    st = host->register_command(reg, &cmd);
    if (st == ASIOSMTPD_OK) st = host->register_ehlo_keyword(reg, cstr("XHELLO"));
    if (st != ASIOSMTPD_OK) {
        set_error(err, "cannot register HELLO (taken by another plugin?)");
        free(self);
        return st;
    }
    *out_instance = self;
    return ASIOSMTPD_OK;
}

static void destroy(void* instance) { free(instance); }

static const asiosmtpd_plugin_descriptor descriptor = {
    sizeof(asiosmtpd_plugin_descriptor),
    ASIOSMTPD_ABI_MAJOR,
    0,                        /* the lowest host ABI minor this plugin needs: 1.0 */
    ASIOSMTPD_PF_THREAD_SAFE, /* no shared mutable state */
    "hello",
    "1.0.0",
    "the HELLO command and the XHELLO EHLO keyword",
    create,
    destroy,
};

/* The one exported symbol (the version script hides everything else). */
ASIOSMTPD_EXPORT const asiosmtpd_plugin_descriptor* asiosmtpd_plugin_entry_v1(void) { return &descriptor; }
