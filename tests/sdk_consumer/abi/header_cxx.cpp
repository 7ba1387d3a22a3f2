// plugin.h, plugin.hpp and testkit.hpp compile on their own as C++ with -pedantic-errors
// (C++17 and C++20 targets build this file; every warning is an error in the dev preset).
#include <asiosmtpd/plugin.h>
#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/testkit.hpp>

int asiosmtpd_header_cxx_check();
int asiosmtpd_header_cxx_check()
{
    asiosmtpd_session_info info{};
    info.struct_size = sizeof info;
    return ASIOSMTPD_HAS(&info, asiosmtpd_session_info, authenticated) ? 0 : 1;
}
