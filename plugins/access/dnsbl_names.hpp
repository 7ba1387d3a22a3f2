// SPDX-License-Identifier: Apache-2.0
// dnsbl_names: the pure parts of a DNSBL lookup (RFC 5782): the name queried for a client in
// a zone, what an A answer means, and the reply text made from a list's TXT record (foreign
// bytes: cleaned so that the server never refuses the reply). No DNS here (dnsbl.hpp).
#pragma once

#include "cidr.hpp"

#include <cstddef>
#include <string>
#include <string_view>

namespace asiosmtpd::plugins::access {

/// "2.0.0.127.zen.example" for 127.0.0.2; IPv6: the 32 nibbles, least significant first
/// (RFC 5782 §2.4).
inline std::string dnsbl_query_name(const ip_address& a, std::string_view zone)
{
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    if (!a.v6) {
        for (std::size_t i = 4; i-- > 0;) out += std::to_string(a.bytes[i]) + ".";
    } else {
        for (std::size_t i = 16; i-- > 0;) {
            out += hex[a.bytes[i] & 0xf];
            out += '.';
            out += hex[a.bytes[i] >> 4];
            out += '.';
        }
    }
    if (!zone.empty() && zone.back() == '.') zone.remove_suffix(1);
    out += zone;
    return out;
}

/// A zone from the config: a domain name of letters, digits, '-', '_' and dots. "" or why not.
inline std::string dnsbl_zone_problem(std::string_view zone)
{
    if (!zone.empty() && zone.back() == '.') zone.remove_suffix(1);
    if (zone.empty() || zone.size() > 200) return "not a DNS zone (1..200 characters)";
    std::size_t label = 0;
    for (const char c : zone) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                        c == '_' || c == '.';
        if (!ok) return "not a DNS zone (letters, digits, '-', '_' and dots)";
        label = c == '.' ? 0 : label + 1;
        if (label > 63) return "a label is longer than 63 characters";
    }
    if (zone.front() == '.' || zone.find("..") != std::string_view::npos) return "not a DNS zone (empty label)";
    return {};
}

/// An A answer that lists the client: 127.0.0.0/24 (RFC 5782 §2.1). Anything else
/// (127.255.255.x is how some lists say "query refused", a hijacking resolver's own address)
/// is not a listing but a lookup that did not work.
inline bool dnsbl_listing(const ip_address& a)
{
    return !a.v6 && a.bytes[0] == 127 && a.bytes[1] == 0 && a.bytes[2] == 0;
}

/// TXT bytes as reply text: control bytes become '?', at most `max` bytes, cut on a UTF-8
/// character boundary, blanks at the ends dropped.
inline std::string dnsbl_clean_text(std::string_view txt, std::size_t max = 300)
{
    std::string out;
    for (const char c : txt) {
        const auto u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u == 0x7f) ? '?' : c;
    }
    if (out.size() > max) {
        std::size_t cut = max;
        while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xc0) == 0x80) --cut;
        out.resize(cut);
    }
    const auto first = out.find_first_not_of(' ');
    if (first == std::string::npos) return {};
    out.erase(0, first);
    out.erase(out.find_last_not_of(' ') + 1);
    return out;
}

/// "5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.example; <text>" (the
/// text part only when the list gave one), the 554 reply to a listed client.
inline std::string dnsbl_reply_text(const ip_address& client, std::string_view zone, std::string_view txt)
{
    std::string out = "5.7.1 Service unavailable; client [" + to_string(client) + "] blocked using ";
    out += zone;
    const std::string clean = dnsbl_clean_text(txt);
    if (!clean.empty()) out += "; " + clean;
    return out;
}

}  // namespace asiosmtpd::plugins::access
