// SPDX-License-Identifier: Apache-2.0
/*
 * frozen_v1_0: built against the FROZEN ABI 1.0 header (tests/sdk_consumer/abi/v1.0), never
 * against the current one. The current host must load it and serve it: the command FROZEN
 * answers "250 abi 1.0 session <id> helo <name>", using session_info() with the 1.0-sized
 * struct (the host must write no more than the plugin's struct_size).
 */
#include <asiosmtpd/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if ASIOSMTPD_ABI_MINOR != 0u
#error "frozen_v1_0.c must be compiled against the frozen 1.0 header"
#endif

typedef struct frozen {
    const asiosmtpd_host_api* host;
} frozen;

static asiosmtpd_str cstr(const char* s)
{
    asiosmtpd_str r;
    r.data = s;
    r.size = strlen(s);
    return r;
}

static asiosmtpd_verdict on_frozen(void* instance, asiosmtpd_call* call, const void* args)
{
    const frozen* self = (const frozen*)instance;
    struct {
        asiosmtpd_session_info info;
        unsigned char guard[64]; /* must stay untouched: the host writes at most struct_size */
    } s;
    char reply[160];
    size_t i;
    (void)args;
    memset(&s, 0xAB, sizeof s);
    s.info.struct_size = sizeof s.info;
    if (self->host->session_info(call, &s.info) != ASIOSMTPD_OK || s.info.struct_size > sizeof s.info)
        return ASIOSMTPD_TEMPFAIL;
    for (i = 0; i < sizeof s.guard; ++i)
        if (s.guard[i] != 0xAB) return ASIOSMTPD_TEMPFAIL;
    snprintf(reply, sizeof reply, "abi 1.0 helo %.*s", (int)s.info.helo_name.size, s.info.helo_name.data);
    if (self->host->set_reply(call, 250, cstr(reply)) != ASIOSMTPD_OK) return ASIOSMTPD_TEMPFAIL;
    return ASIOSMTPD_ACCEPT;
}

static asiosmtpd_status create(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg,
                               void** out_instance, asiosmtpd_errbuf* err)
{
    asiosmtpd_command_desc d;
    frozen* self;
    (void)ctx;
    (void)err;
    if (host->abi_major != 1 || !ASIOSMTPD_HAS(host, asiosmtpd_host_api, log)) return ASIOSMTPD_E_UNSUPPORTED;
    self = (frozen*)malloc(sizeof *self);
    if (self == NULL) return ASIOSMTPD_E_INVALID;
    self->host = host;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.verb = cstr("FROZEN");
    d.help = cstr("FROZEN");
    d.handler = on_frozen;
    if (host->register_command(reg, &d) != ASIOSMTPD_OK) {
        free(self);
        return ASIOSMTPD_E_INVALID;
    }
    *out_instance = self;
    return ASIOSMTPD_OK;
}

static void destroy(void* instance) { free(instance); }

static const asiosmtpd_plugin_descriptor descriptor = {
    sizeof(asiosmtpd_plugin_descriptor),       1,      0,       0, "frozen_v1_0", "1.0.0",
    "built against the frozen ABI 1.0 header", create, destroy,
};

const asiosmtpd_plugin_descriptor* asiosmtpd_plugin_entry_v1(void) { return &descriptor; }
