// SPDX-License-Identifier: Apache-2.0
/* plugin.h compiles on its own as C99 with -pedantic-errors (and every warning as error). */
#include <asiosmtpd/plugin.h>

int asiosmtpd_header_c99_check(void);
int asiosmtpd_header_c99_check(void)
{
    asiosmtpd_session_info info;
    info.struct_size = sizeof info;
    return ASIOSMTPD_HAS(&info, asiosmtpd_session_info, authenticated) ? 0 : 1;
}
