// SPDX-License-Identifier: Apache-2.0
// network: IP addresses and CIDR networks as the host matches them (server.xclient_networks)
// and as XCLIENT gives them. Standard library and inet_pton/inet_ntop only.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::proto {

/// An IPv4 or IPv6 address; IPv4 is kept as IPv4-mapped IPv6 (::ffff:a.b.c.d), so that a
/// client on a dual-stack listener matches an IPv4 network.
struct ip_address {
    std::array<std::uint8_t, 16> bytes{};
    bool v4 = false;
};

/// "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"; nullopt for anything else (no brackets,
/// no zone, no port).
std::optional<ip_address> parse_ip(std::string_view text);
/// The canonical text: dotted quad for IPv4 (and IPv4-mapped), RFC 5952 for IPv6.
std::string to_string(const ip_address& a);

/// A CIDR network: "10.0.0.0/8", "2001:db8::/32", or one address ("127.0.0.1" = /32).
struct ip_network {
    ip_address base;
    unsigned prefix = 0;  ///< over the 128-bit form (an IPv4 /8 is /104)
};

/// nullopt and `why` set when `text` is not a network.
std::optional<ip_network> parse_network(std::string_view text, std::string& why);
[[nodiscard]] bool contains(const ip_network& n, const ip_address& a) noexcept;
/// Whether a session's peer is in `nets` (server.xclient_networks). `address` as sessions keep
/// it: an IP address, or "unix:<path>" for a client on a UNIX listener, which counts as
/// 127.0.0.1 (a local client: Postfix's smtpd says so of any client not on the Internet, and
/// its smtpd_authorized_xclient_hosts match it so); anything else is in no network.
[[nodiscard]] bool contains(const std::vector<ip_network>& nets, std::string_view address) noexcept;

}  // namespace asiosmtpd::proto
