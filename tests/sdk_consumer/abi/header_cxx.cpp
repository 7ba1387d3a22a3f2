// SPDX-License-Identifier: Apache-2.0
// The C++ SDK headers (plugin.h, plugin.hpp, reply_rules.hpp, worker_pool.hpp, testkit.hpp)
// compile on their own as C++ with -pedantic-errors (C++17 and C++20 targets build this file;
// every warning is an error in the dev preset).
#include <asiosmtpd/plugin.h>
#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/reply_rules.hpp>
#include <asiosmtpd/worker_pool.hpp>
#include <asiosmtpd/testkit.hpp>

#include <string>

// Every member of the pool, compiled for a job type as plugins have them.
template class asiosmtpd::sdk::worker_pool<std::string>;

int asiosmtpd_header_cxx_check();
int asiosmtpd_header_cxx_check()
{
    asiosmtpd_session_info info{};
    info.struct_size = sizeof info;
    return ASIOSMTPD_HAS(&info, asiosmtpd_session_info, authenticated) ? 0 : 1;
}
