// SPDX-License-Identifier: Apache-2.0
// What a plugin may register (commands, EHLO keywords, AUTH mechanisms): the rules the server's
// registrar (host_api.cpp) and the isolation child's (isolation/child_main.cpp) both apply, so
// that a plugin is refused the same way in process and isolated.
#pragma once

#include <algorithm>
#include <iterator>
#include <string>
#include <string_view>

namespace asiosmtpd::plugin::rules {

/// ASCII upper case (verbs and mechanism names compare that way).
inline std::string upper(std::string_view s)
{
    std::string u(s);
    for (char& c : u)
        if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
    return u;
}

/// A command verb: 1-32 of [A-Za-z0-9-].
inline bool valid_verb(std::string_view v) noexcept
{
    return !v.empty() && v.size() <= 32 && std::all_of(v.begin(), v.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    });
}

/// The engine's own commands, which no plugin can register (`verb` in upper case).
inline bool builtin_verb(std::string_view verb) noexcept
{
    constexpr std::string_view builtin[] = {"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "RSET",
                                            "NOOP", "QUIT", "VRFY", "HELP", "EXPN", "AUTH", "STARTTLS"};
    return std::find(std::begin(builtin), std::end(builtin), verb) != std::end(builtin);
}

/// A command's HELP text: one line.
inline bool valid_help(std::string_view help) noexcept { return help.find_first_of("\r\n") == std::string_view::npos; }

/// An EHLO keyword line: 1-500 characters, one line.
inline bool valid_ehlo_keyword(std::string_view line) noexcept
{
    return !line.empty() && line.size() <= 500 && line.find_first_of("\r\n") == std::string_view::npos;
}

/// An AUTH mechanism name (RFC 4954 §3 / aiosmtpd): [A-Za-z0-9_-]+, at most 20 characters
/// (RFC 4422 SASL names).
inline bool valid_mechanism(std::string_view n) noexcept
{
    return !n.empty() && n.size() <= 20 && std::all_of(n.begin(), n.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    });
}

/// PLAIN and LOGIN are the server's own (`name` in upper case).
inline bool builtin_mechanism(std::string_view name) noexcept { return name == "PLAIN" || name == "LOGIN"; }

}  // namespace asiosmtpd::plugin::rules
