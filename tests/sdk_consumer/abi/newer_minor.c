// SPDX-License-Identifier: Apache-2.0
/*
 * newer_minor: declares that it needs a host ABI minor one above the current header's. The
 * host must refuse it ("needs plugin ABI 1.N, this host has 1.M") without calling create().
 */
#include <asiosmtpd/plugin.h>

#include <stddef.h>

static asiosmtpd_status create(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg,
                               void** out_instance, asiosmtpd_errbuf* err)
{
    (void)host;
    (void)ctx;
    (void)reg;
    (void)err;
    *out_instance = NULL;
    return ASIOSMTPD_E_UNSUPPORTED; /* never called by a correct host */
}

static void destroy(void* instance) { (void)instance; }

static const asiosmtpd_plugin_descriptor descriptor = {
    sizeof(asiosmtpd_plugin_descriptor),
    ASIOSMTPD_ABI_MAJOR,
    ASIOSMTPD_ABI_MINOR + 1u,
    0,
    "newer_minor",
    "1.0.0",
    "needs a newer host",
    create,
    destroy,
};

const asiosmtpd_plugin_descriptor* asiosmtpd_plugin_entry_v1(void) { return &descriptor; }
