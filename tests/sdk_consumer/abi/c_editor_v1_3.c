// SPDX-License-Identifier: Apache-2.0
/*
 * c_editor_v1_3: ABI 1.3 from plain C99 (-pedantic-errors): a plugin that declares itself an
 * editor, adds "X-C-Editor: v1.3" at the top of every message and a recipient
 * "archive@example.org" in its DATA hook, and logs each TXN_END as
 * "txn_end outcome=<n> code=<c> rcpts=<n>". It checks that the host has ABI 1.3 (the members
 * it calls) and refuses to load otherwise. No configuration.
 */
#include <asiosmtpd/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct c_editor {
    const asiosmtpd_host_api* host;
    asiosmtpd_ctx* ctx;
} c_editor;

static asiosmtpd_str c_str(const char* s)
{
    asiosmtpd_str r;
    r.data = s;
    r.size = strlen(s);
    return r;
}

static void set_error(asiosmtpd_errbuf* err, const char* text)
{
    size_t n;
    if (err == NULL || err->buf == NULL || err->cap == 0) return;
    n = strlen(text);
    if (n > err->cap - 1) n = err->cap - 1;
    memcpy(err->buf, text, n);
    err->buf[n] = '\0';
}

static asiosmtpd_verdict on_data(void* instance, asiosmtpd_call* call, const void* args)
{
    const c_editor* self = (const c_editor*)instance;
    asiosmtpd_edit e;
    (void)args;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.op = ASIOSMTPD_EDIT_INSERT_HEADER;
    e.name = c_str("X-C-Editor");
    e.value = c_str("v1.3");
    e.index = 0;
    if (self->host->edit_message(call, &e) != ASIOSMTPD_OK) return ASIOSMTPD_TEMPFAIL;
    memset(&e, 0, sizeof e);
    e.struct_size = sizeof e;
    e.op = ASIOSMTPD_EDIT_ADD_RCPT;
    e.name = c_str("archive@example.org");
    if (self->host->edit_message(call, &e) != ASIOSMTPD_OK) return ASIOSMTPD_TEMPFAIL;
    return ASIOSMTPD_CONTINUE;
}

static asiosmtpd_verdict on_txn_end(void* instance, asiosmtpd_call* call, const void* args)
{
    const c_editor* self = (const c_editor*)instance;
    const asiosmtpd_txn_end_args* a = (const asiosmtpd_txn_end_args*)args;
    char line[128];
    if (a == NULL || !ASIOSMTPD_HAS(a, asiosmtpd_txn_end_args, size)) return ASIOSMTPD_CONTINUE;
    sprintf(line, "txn_end outcome=%d code=%u rcpts=%lu", (int)a->outcome, (unsigned)a->code,
            (unsigned long)a->rcpt_count);
    self->host->log(self->ctx, call, ASIOSMTPD_LOG_INFO, c_str(line));
    return ASIOSMTPD_CONTINUE;
}

static asiosmtpd_status create(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg,
                               void** out_instance, asiosmtpd_errbuf* err)
{
    c_editor* self;
    if (host == NULL || reg == NULL || out_instance == NULL) return ASIOSMTPD_E_INVALID;
    *out_instance = NULL;
    if (host->abi_major != ASIOSMTPD_ABI_MAJOR || !ASIOSMTPD_HAS(host, asiosmtpd_host_api, txn_rcpt_param_at)) {
        set_error(err, "needs a host with plugin ABI 1.3");
        return ASIOSMTPD_E_UNSUPPORTED;
    }
    self = (c_editor*)malloc(sizeof *self);
    if (self == NULL) {
        set_error(err, "out of memory");
        return ASIOSMTPD_E_INVALID;
    }
    self->host = host;
    self->ctx = ctx;
    if (host->declare_editor(reg) != ASIOSMTPD_OK ||
        host->register_hook(reg, ASIOSMTPD_HOOK_DATA, on_data) != ASIOSMTPD_OK ||
        host->register_hook(reg, ASIOSMTPD_HOOK_TXN_END, on_txn_end) != ASIOSMTPD_OK) {
        free(self);
        set_error(err, "registration failed");
        return ASIOSMTPD_E_INVALID;
    }
    *out_instance = self;
    return ASIOSMTPD_OK;
}

static void destroy(void* instance) { free(instance); }

static const asiosmtpd_plugin_descriptor descriptor = {
    sizeof(asiosmtpd_plugin_descriptor),
    ASIOSMTPD_ABI_MAJOR,
    3, /* needs 1.3 */
    ASIOSMTPD_PF_THREAD_SAFE,
    "c_editor_v1_3",
    "1.0.0",
    "ABI 1.3 from C: edits every message, logs TXN_END",
    create,
    destroy,
};

const asiosmtpd_plugin_descriptor* asiosmtpd_plugin_entry_v1(void) { return &descriptor; }
