// SPDX-License-Identifier: Apache-2.0
/*
 * other_major: what a plugin of a future ABI 2 looks like to this host: its entry symbol
 * carries the other major (asiosmtpd_plugin_entry_v2), so lookup fails with a clear message.
 */
#include <stddef.h>

__attribute__((visibility("default"))) const void* asiosmtpd_plugin_entry_v2(void);

const void* asiosmtpd_plugin_entry_v2(void) { return NULL; }
