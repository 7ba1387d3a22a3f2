// SPDX-License-Identifier: Apache-2.0
#include "proto/replies.hpp"

namespace asiosmtpd::proto::replies {
namespace {
std::string join(std::initializer_list<std::string_view> parts)
{
    std::string s;
    std::size_t n = 0;
    for (auto p : parts) n += p.size();
    s.reserve(n);
    for (auto p : parts) s.append(p);
    return s;
}
}  // namespace

std::string greeting(std::string_view hostname, std::string_view ident) { return join({"220 ", hostname, " ", ident}); }
std::string helo_ok(std::string_view hostname) { return join({"250 ", hostname}); }
// aiosmtpd echoes the upper-cased verb raw, control characters included (as aiosmtpd does).
std::string unknown_command(std::string_view verb)
{
    return join({"500 Error: command \"", verb, "\" not recognized"});
}
std::string call_limit_hit(std::string_view verb) { return join({"421 4.7.0 ", verb, " sent too many times"}); }
// aiosmtpd echoes the argument raw. Here a control byte but HT in it (a CR, a NUL: VRFY refuses
// addresses with them) is sent as '?': RFC 5321's textstring has none, and plugin replies are
// held to the same rule (reply_rules.hpp).
std::string could_not_vrfy(std::string_view arg)
{
    std::string s = join({"502 Could not VRFY ", arg});
    for (char& c : s) {
        const auto u = static_cast<unsigned char>(c);
        if ((u < 0x20 && c != '\t') || u == 0x7f) c = '?';
    }
    return s;
}
std::string timeout_exceeded(std::string_view hostname)
{
    return join({"421 4.4.2 ", hostname, " Error: timeout exceeded"});
}
std::string closing(std::string_view hostname)
{
    return join({"421 4.7.0 ", hostname, " Service not available, closing transmission channel"});
}
std::string too_many_connections(std::string_view hostname)
{
    return join({"421 4.7.0 ", hostname, " Error: too many connections"});
}
std::string shutting_down(std::string_view hostname)
{
    return join({"421 4.3.2 ", hostname, " Service shutting down"});
}
std::string too_many_auth_failures(std::string_view hostname)
{
    return join({"421 4.7.0 ", hostname, " Error: too many failed authentication attempts"});
}

std::string bdat_chunk_ok(std::uint64_t octets)
{
    return join({"250 2.0.0 Ok: ", std::to_string(octets), " octets received"});
}

}  // namespace asiosmtpd::proto::replies
