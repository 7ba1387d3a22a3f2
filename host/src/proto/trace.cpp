// SPDX-License-Identifier: Apache-2.0
// The Received: header field (trace.hpp).
#include "proto/trace.hpp"

#include <cstdio>

namespace asiosmtpd::proto {

namespace {

// RFC 5322 §3.3 date-time, in UTC: "Mon, 07 Dec 2026 19:30:00 +0000".
std::string date_time(std::time_t when)
{
    static constexpr const char* days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static constexpr const char* months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                             "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    std::tm tm{};
    gmtime_r(&when, &tm);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7], tm.tm_mday,
                  months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

// A token that cannot break the field: printable ASCII without the syntax of comments and
// domain literals.
std::string safe(std::string_view s, std::size_t max)
{
    std::string out;
    for (const char c : s.substr(0, max)) {
        const bool ok = c > ' ' && c < 127 && c != '(' && c != ')' && c != '[' && c != ']' && c != '\\';
        out.push_back(ok ? c : '?');
    }
    return out.empty() ? std::string("?") : out;
}

}  // namespace

std::string transaction_id(std::uint64_t session, std::uint64_t n)
{
    static const auto started = static_cast<unsigned long long>(std::time(nullptr));
    char buf[80];
    std::snprintf(buf, sizeof buf, "%llX.%llX.%llu", started, static_cast<unsigned long long>(session),
                  static_cast<unsigned long long>(n));
    return buf;
}

std::string received_field(const trace_info& t)
{
    std::string with = t.lmtp ? "LMTP" : t.esmtp ? "ESMTP" : "SMTP";
    if (!t.lmtp && !t.esmtp && (!t.tls_version.empty() || t.authenticated)) with = "ESMTP";  // RFC 3848 has no SMTPS
    if (!t.tls_version.empty()) with += "S";
    if (t.authenticated) with += "A";
    // TCP-info (RFC 5321 §4.4): "(name [address])"; a UNIX socket client has no address: its socket.
    std::string r = "Received: from " + safe(t.helo, 255) + " (";
    if (t.peer_address.starts_with("unix:")) r += safe(t.peer_address, 120);
    else r += (t.peer_name.empty() ? "" : safe(t.peer_name, 255) + " ") + "[" + safe(t.peer_address, 64) + "]";
    r += ")\r\n";
    if (!t.tls_version.empty())
        r += "\t(using " + safe(t.tls_version, 32) + " with cipher " + safe(t.tls_cipher, 64) + ")\r\n";
    r += "\tby " + safe(t.hostname, 255) + " (asiosmtpd) with " + with + " id " + safe(t.id, 64);
    if (!t.single_rcpt.empty()) r += "\r\n\tfor <" + safe(t.single_rcpt, 512) + ">";
    r += "; " + date_time(t.when) + "\r\n";
    return r;
}

}  // namespace asiosmtpd::proto
