// SPDX-License-Identifier: Apache-2.0
// proxy: the Received: lines of a message's header section, counted against `max_hops` (RFC 5321
// §6.3: a relay detects a mail loop by counting Received: fields; Postfix refuses more than
// hopcount_limit of them with "554 5.4.6 Too many hops"). Pure function, no I/O; C++17.
// Unit tests: tests/unit/plugins/proxy_test.cpp.
#ifndef ASIOSMTPD_PLUGINS_PROXY_HOPS_HPP
#define ASIOSMTPD_PLUGINS_PROXY_HOPS_HPP

#include <cstddef>
#include <string_view>

namespace asiosmtpd::plugins::proxy_hops {

/// The number of header fields named "Received" (any case; "Received :" too) in the header
/// section of `message`: the lines up to the first empty line, or up to the first line that is
/// neither a field ("name:") nor a continuation (starting with a space or a tab). Lines end in
/// CRLF, LF or CR. Counting stops once it passes `stop_after` (the caller only wants to know
/// whether the limit is passed).
inline std::size_t received_fields(std::string_view message, std::size_t stop_after) noexcept
{
    std::size_t count = 0;
    std::size_t pos = 0;
    bool first = true;
    while (pos < message.size() && count <= stop_after) {
        std::size_t eol = message.find_first_of("\r\n", pos);
        if (eol == std::string_view::npos) eol = message.size();
        const std::string_view line = message.substr(pos, eol - pos);
        pos = eol;
        if (pos < message.size())
            pos += (message[pos] == '\r' && pos + 1 < message.size() && message[pos + 1] == '\n') ? 2u : 1u;
        if (line.empty()) break;
        if (line.front() == ' ' || line.front() == '\t') {
            if (first) break;  // a message cannot start with a continuation
            continue;
        }
        first = false;
        const std::size_t colon = line.find(':');
        if (colon == std::string_view::npos || colon == 0) break;  // not a field: the body begins
        std::string_view name = line.substr(0, colon);
        while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
        bool printable = !name.empty();
        for (const char ch : name) printable = printable && ch > 0x20 && ch < 0x7f;
        if (!printable) break;
        constexpr std::string_view received = "received";
        if (name.size() != received.size()) continue;
        bool same = true;
        for (std::size_t i = 0; i < name.size(); ++i) {
            char ch = name[i];
            if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
            same = same && ch == received[i];
        }
        if (same) ++count;
    }
    return count;
}

}  // namespace asiosmtpd::plugins::proxy_hops

#endif
