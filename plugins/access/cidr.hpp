// SPDX-License-Identifier: Apache-2.0
// cidr: IP addresses and networks for the access plugin (reject_networks, relay_networks, the
// limits' exemptions) and the key a client is counted under: the IPv4 address, or the /64 of
// an IPv6 address (one host often owns a whole /64). Pure functions over inet_pton/inet_ntop;
// no DNS, no sockets. An IPv4-mapped IPv6 address (::ffff:192.0.2.1) is its IPv4 address.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::plugins::access {

/// An IPv4 (first 4 bytes used) or IPv6 address.
struct ip_address {
    bool v6 = false;
    std::array<std::uint8_t, 16> bytes{};

    std::size_t bits() const noexcept { return v6 ? 128 : 32; }
    bool operator==(const ip_address& o) const noexcept { return v6 == o.v6 && bytes == o.bytes; }
};

/// "192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1" (→ IPv4), "[2001:db8::1]"; a zone index
/// ("fe80::1%eth0") is ignored. nullopt for anything else (host names are not addresses).
inline std::optional<ip_address> parse_ip(std::string_view text)
{
    if (text.size() >= 2 && text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
    if (const auto pct = text.find('%'); pct != std::string_view::npos && text.find(':') != std::string_view::npos)
        text = text.substr(0, pct);
    if (text.empty() || text.size() > INET6_ADDRSTRLEN) return std::nullopt;
    const std::string s(text);
    ip_address a;
    if (::inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) return a;
    if (::inet_pton(AF_INET6, s.c_str(), a.bytes.data()) != 1) return std::nullopt;
    static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    bool is_mapped = true;
    for (std::size_t i = 0; i < 12; ++i) is_mapped = is_mapped && a.bytes[i] == mapped[i];
    if (is_mapped) {
        ip_address v4;
        for (std::size_t i = 0; i < 4; ++i) v4.bytes[i] = a.bytes[12 + i];
        return v4;
    }
    a.v6 = true;
    return a;
}

/// The usual text form ("192.0.2.1", "2001:db8::1").
inline std::string to_string(const ip_address& a)
{
    char buf[INET6_ADDRSTRLEN] = {};
    if (::inet_ntop(a.v6 ? AF_INET6 : AF_INET, a.bytes.data(), buf, sizeof buf) == nullptr) return "?";
    return buf;
}

/// A network: the first `prefix` bits of `base` (the rest are zero).
struct network {
    ip_address base;
    std::size_t prefix = 0;

    bool contains(const ip_address& a) const noexcept
    {
        if (a.v6 != base.v6) return false;
        std::size_t bits = prefix;
        for (std::size_t i = 0; bits > 0; ++i, bits = bits >= 8 ? bits - 8 : 0) {
            const auto mask = static_cast<std::uint8_t>(bits >= 8 ? 0xff : (0xff << (8 - bits)) & 0xff);
            if ((a.bytes[i] & mask) != base.bytes[i]) return false;
        }
        return true;
    }
    /// Every address of its family (0.0.0.0/0, ::/0).
    bool everyone() const noexcept { return prefix == 0; }
};

inline std::string to_string(const network& n) { return to_string(n.base) + "/" + std::to_string(n.prefix); }

/// "10.0.0.0/8", "2001:db8::/32", or an address alone (/32, /128). On failure: nullopt and
/// `why` says what is wrong. Host bits set below the prefix ("10.1.2.3/8") are refused: such
/// an entry is a typo more often than not, and it would match more than it reads.
inline std::optional<network> parse_network(std::string_view text, std::string& why)
{
    const auto slash = text.find('/');
    const auto address = parse_ip(text.substr(0, slash));
    if (!address) {
        why = "not an IP address or network";
        return std::nullopt;
    }
    network n;
    n.base = *address;
    n.prefix = address->bits();
    if (slash != std::string_view::npos) {
        const std::string_view digits = text.substr(slash + 1);
        std::size_t value = 0;
        bool ok = !digits.empty() && digits.size() <= 3;
        for (const char c : digits) {
            ok = ok && c >= '0' && c <= '9';
            if (ok) value = value * 10 + static_cast<std::size_t>(c - '0');
        }
        if (!ok || value > address->bits()) {
            why = "prefix length must be 0.." + std::to_string(address->bits());
            return std::nullopt;
        }
        n.prefix = value;
    }
    // An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) is refused rather than guessed at.
    if (!n.base.v6 && text.substr(0, slash).find(':') != std::string_view::npos && slash != std::string_view::npos) {
        why = "write IPv4 networks as IPv4 (10.0.0.0/8), not IPv4-mapped IPv6";
        return std::nullopt;
    }
    network masked = n;
    for (std::size_t i = 0; i < 16; ++i) {
        const std::size_t first_bit = i * 8;
        if (first_bit >= n.prefix) masked.base.bytes[i] = 0;
        else if (first_bit + 8 > n.prefix)
            masked.base.bytes[i] =
                static_cast<std::uint8_t>(n.base.bytes[i] & ((0xff << (8 - (n.prefix - first_bit))) & 0xff));
    }
    if (!(masked.base == n.base)) {
        why = "has host bits set below the prefix (did you mean " + to_string(masked) + "?)";
        return std::nullopt;
    }
    return n;
}

/// A list of networks; contains() is true when any of them does.
class network_list {
public:
    void add(const network& n) { items_.push_back(n); }
    bool contains(const ip_address& a) const noexcept
    {
        for (const network& n : items_)
            if (n.contains(a)) return true;
        return false;
    }
    /// The first entry that matches every address of a family, or nullptr.
    const network* everyone() const noexcept
    {
        for (const network& n : items_)
            if (n.everyone()) return &n;
        return nullptr;
    }
    bool empty() const noexcept { return items_.empty(); }
    std::size_t size() const noexcept { return items_.size(); }

private:
    std::vector<network> items_;
};

/// What a client is counted under: "192.0.2.1" for IPv4, "2001:db8:1:2::/64" for IPv6.
inline std::string client_key(const ip_address& a)
{
    if (!a.v6) return to_string(a);
    network n;
    n.base = a;
    n.prefix = 64;
    for (std::size_t i = 8; i < 16; ++i) n.base.bytes[i] = 0;
    return to_string(n);
}

}  // namespace asiosmtpd::plugins::access
