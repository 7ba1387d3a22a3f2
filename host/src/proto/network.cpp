// SPDX-License-Identifier: Apache-2.0
#include "proto/network.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

namespace asiosmtpd::proto {

std::optional<ip_address> parse_ip(std::string_view text)
{
    if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
    char buf[INET6_ADDRSTRLEN] = {};
    std::memcpy(buf, text.data(), text.size());
    ip_address a;
    if (text.find(':') == std::string_view::npos) {
        in_addr v4{};
        if (::inet_pton(AF_INET, buf, &v4) != 1) return std::nullopt;
        a.bytes[10] = a.bytes[11] = 0xff;
        std::memcpy(a.bytes.data() + 12, &v4, 4);
        a.v4 = true;
        return a;
    }
    in6_addr v6{};
    if (::inet_pton(AF_INET6, buf, &v6) != 1) return std::nullopt;
    std::memcpy(a.bytes.data(), &v6, 16);
    static constexpr std::uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    a.v4 = std::equal(std::begin(mapped), std::end(mapped), a.bytes.begin());
    return a;
}

std::string to_string(const ip_address& a)
{
    char buf[INET6_ADDRSTRLEN] = {};
    if (a.v4) {
        in_addr v4{};
        std::memcpy(&v4, a.bytes.data() + 12, 4);
        ::inet_ntop(AF_INET, &v4, buf, sizeof buf);
    } else {
        in6_addr v6{};
        std::memcpy(&v6, a.bytes.data(), 16);
        ::inet_ntop(AF_INET6, &v6, buf, sizeof buf);
    }
    return buf;
}

std::optional<ip_network> parse_network(std::string_view text, std::string& why)
{
    const auto slash = text.find('/');
    const auto address = parse_ip(text.substr(0, slash));
    if (!address) {
        why = "expected an IP address or a network (CIDR, e.g. 10.0.0.0/8 or 2001:db8::/32)";
        return std::nullopt;
    }
    ip_network n{*address, 128};
    if (slash != std::string_view::npos) {
        const std::string_view bits = text.substr(slash + 1);
        unsigned p = 0;
        const auto [end, ec] = std::from_chars(bits.data(), bits.data() + bits.size(), p);
        const unsigned max = address->v4 ? 32 : 128;
        if (bits.empty() || ec != std::errc() || end != bits.data() + bits.size() || p > max) {
            why = "the prefix length after '/' must be 0 to " + std::to_string(max);
            return std::nullopt;
        }
        n.prefix = address->v4 ? 96 + p : p;
    }
    return n;
}

bool contains(const ip_network& n, const ip_address& a) noexcept
{
    unsigned left = n.prefix;
    for (std::size_t i = 0; i < 16 && left > 0; ++i) {
        const unsigned take = std::min(left, 8u);
        const auto mask = static_cast<std::uint8_t>(0xff00u >> take);
        if ((n.base.bytes[i] & mask) != (a.bytes[i] & mask)) return false;
        left -= take;
    }
    return true;
}

bool contains(const std::vector<ip_network>& nets, std::string_view address) noexcept
{
    if (nets.empty()) return false;
    const auto a = parse_ip(address.substr(0, 5) == "unix:" ? std::string_view("127.0.0.1") : address);
    return a && std::any_of(nets.begin(), nets.end(), [&](const ip_network& n) { return contains(n, *a); });
}

}  // namespace asiosmtpd::proto
