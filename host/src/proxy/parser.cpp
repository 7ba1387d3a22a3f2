// SPDX-License-Identifier: Apache-2.0
#include "proxy/parser.hpp"

#include <algorithm>
#include <array>

namespace asiosmtpd::proxy {
namespace {

constexpr std::string_view v1_signature = "PROXY";
constexpr std::string_view v2_signature{"\r\n\r\n\0\r\nQUIT\n", 12};

result invalid(std::string error)
{
    result r;
    r.state = result::status::invalid;
    r.error = std::move(error);
    return r;
}

result more(std::size_t total)
{
    result r;
    r.need = total;
    return r;
}

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_hex(char c) noexcept { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Decimal without leading zeros ("0" alone is fine), as aiosmtpd requires.
bool plain_decimal(std::string_view s) noexcept
{
    if (s.empty() || !std::all_of(s.begin(), s.end(), is_digit)) return false;
    return s.size() == 1 || s.front() != '0';
}

bool ipv4(std::string_view s) noexcept
{
    int parts = 0;
    while (true) {
        const auto dot = s.find('.');
        const std::string_view part = s.substr(0, dot);
        if (!plain_decimal(part) || part.size() > 3) return false;
        int v = 0;
        for (char c : part) v = v * 10 + (c - '0');
        if (v > 255) return false;
        ++parts;
        if (dot == std::string_view::npos) break;
        s.remove_prefix(dot + 1);
    }
    return parts == 4;
}

// RFC 4291 §2.2 text forms: 8 groups, "::" once, an IPv4 tail allowed.
bool ipv6(std::string_view s) noexcept
{
    if (s.size() < 2) return false;
    int groups = 0;
    bool compressed = false;
    std::size_t i = 0;
    if (s.substr(0, 2) == "::") {
        compressed = true;
        i = 2;
        if (i == s.size()) return true;
    } else if (s.front() == ':') {
        return false;
    }
    while (i < s.size()) {
        const std::size_t start = i;
        while (i < s.size() && is_hex(s[i])) ++i;
        if (i < s.size() && s[i] == '.') {  // IPv4 tail takes two groups
            if (!ipv4(s.substr(start))) return false;
            groups += 2;
            i = s.size();
            break;
        }
        const std::size_t len = i - start;
        if (len == 0 || len > 4) return false;
        ++groups;
        if (i == s.size()) break;
        if (s[i] != ':') return false;
        ++i;
        if (i < s.size() && s[i] == ':') {
            if (compressed) return false;
            compressed = true;
            ++i;
            if (i == s.size()) break;
        } else if (i == s.size()) {
            return false;  // trailing single ':'
        }
    }
    return compressed ? groups < 8 : groups == 8;
}

std::uint16_t be16(std::string_view b, std::size_t at) noexcept
{
    return static_cast<std::uint16_t>((static_cast<unsigned char>(b[at]) << 8) | static_cast<unsigned char>(b[at + 1]));
}

std::string ipv4_text(std::string_view b)
{
    std::string s;
    for (std::size_t i = 0; i < 4; ++i) {
        if (i) s.push_back('.');
        s += std::to_string(static_cast<unsigned char>(b[i]));
    }
    return s;
}

// The canonical RFC 5952 text of 16 bytes (longest run of zero groups as "::").
std::string ipv6_text(std::string_view b)
{
    std::array<unsigned, 8> g{};
    for (std::size_t i = 0; i < 8; ++i) g[i] = be16(b, i * 2);
    int best = -1, best_len = 0;
    for (int i = 0; i < 8;) {
        if (g[static_cast<std::size_t>(i)] != 0) {
            ++i;
            continue;
        }
        int j = i;
        while (j < 8 && g[static_cast<std::size_t>(j)] == 0) ++j;
        if (j - i > best_len && j - i > 1) {
            best = i;
            best_len = j - i;
        }
        i = j;
    }
    static constexpr char hex[] = "0123456789abcdef";
    std::string s;
    for (int i = 0; i < 8; ++i) {
        if (i == best) {
            s += "::";
            i += best_len - 1;
            continue;
        }
        if (!s.empty() && s.back() != ':') s.push_back(':');
        const unsigned v = g[static_cast<std::size_t>(i)];
        bool started = false;
        for (int shift = 12; shift >= 0; shift -= 4) {
            const unsigned d = (v >> shift) & 0xf;
            if (d != 0 || started || shift == 0) {
                s.push_back(hex[d]);
                started = true;
            }
        }
    }
    return s;
}

result parse_v1(std::string_view bytes)
{
    const auto lf = bytes.substr(0, v1_max_length).find('\n');
    if (lf == std::string_view::npos)
        return bytes.size() >= v1_max_length ? invalid("PROXYv1 header too long") : more(bytes.size() + 1);
    const std::string_view line = bytes.substr(0, lf + 1);
    if (line.size() < 2 || line[line.size() - 2] != '\r') return invalid("PROXYv1 malformed");
    std::string_view content = line.substr(5, line.size() - 7);
    if (content.empty() || content.front() != ' ') return invalid("PROXYv1 wrong signature");
    content.remove_prefix(1);

    result r;
    header& h = r.value;
    h.version = 1;
    h.raw.assign(line);
    // Split on single spaces: doubled spaces make empty tokens (aiosmtpd).
    std::vector<std::string_view> tokens;
    for (std::size_t at = 0;;) {
        const auto sp = content.find(' ', at);
        tokens.push_back(content.substr(at, sp == std::string_view::npos ? std::string_view::npos : sp - at));
        if (sp == std::string_view::npos) break;
        at = sp + 1;
    }
    const std::string_view proto = tokens[0];
    if (proto == "UNKNOWN") {
        // Nothing more is checked; the rest (leading space kept) is informational.
        r.state = result::status::done;
        r.length = line.size();
        return r;
    }
    if (proto.empty() || (proto.back() != '4' && proto.back() != '6')) return invalid("PROXYv1 unrecognized family");
    if (proto.substr(0, 3) != "TCP") return invalid("PROXYv1 unrecognized protocol");
    h.family = proto.back() == '4' ? 1 : 2;
    h.protocol = 1;
    if (tokens.size() < 5) return invalid("PROXY exception: missing fields");
    if (tokens.size() > 5) return invalid("PROXYv1 unrecognized extraneous data");
    for (int i = 1; i <= 2; ++i) {
        const std::string_view a = tokens[static_cast<std::size_t>(i)];
        const bool charset =
            !a.empty() && std::all_of(a.begin(), a.end(), [](char c) { return is_hex(c) || c == '.' || c == ':'; });
        const bool v4 = charset && ipv4(a);
        const bool v6 = charset && !v4 && ipv6(a);
        if (!v4 && !v6) return invalid("PROXYv1 address malformed");
        if (h.family == 1 && !v4) return invalid("PROXYv1 address not IPv4");
        if (h.family == 2 && !v6) return invalid("PROXYv1 address not IPv6");
    }
    for (int i = 3; i <= 4; ++i) {
        const std::string_view p = tokens[static_cast<std::size_t>(i)];
        if (!plain_decimal(p)) return invalid("PROXYv1 port malformed");
        if (p.size() > 5 || std::stoul(std::string(p)) > 65535)
            return invalid(i == 3 ? "PROXYv1 src port out of bounds" : "PROXYv1 dst port out of bounds");
    }
    h.src_address.assign(tokens[1]);
    h.dst_address.assign(tokens[2]);
    h.src_port = static_cast<std::uint16_t>(std::stoul(std::string(tokens[3])));
    h.dst_port = static_cast<std::uint16_t>(std::stoul(std::string(tokens[4])));
    r.state = result::status::done;
    r.length = line.size();
    return r;
}

void parse_tlvs(std::string_view rest, header& h)
{
    while (!rest.empty()) {
        if (rest.size() < 3) {
            h.tlv_error = true;
            break;
        }
        const std::size_t len = be16(rest, 1);
        if (rest.size() < 3 + len) {
            h.tlv_error = true;
            break;
        }
        h.tlvs.push_back({static_cast<std::uint8_t>(rest[0]), std::string(rest.substr(3, len))});
        rest.remove_prefix(3 + len);
    }
    if (h.tlv_error) h.tlvs.clear();
}

result parse_v2(std::string_view bytes)
{
    if (bytes.size() < 16) return more(16);
    if (bytes.substr(0, 12) != v2_signature) return invalid("PROXYv2 wrong signature");
    const auto ver_cmd = static_cast<unsigned char>(bytes[12]);
    const auto fam_proto = static_cast<unsigned char>(bytes[13]);
    if ((ver_cmd >> 4) != 2) return invalid("PROXYv2 illegal version");
    if ((ver_cmd & 0xf) > 1) return invalid("PROXYv2 unsupported command");
    if ((fam_proto >> 4) > 3) return invalid("PROXYv2 unsupported family");
    if ((fam_proto & 0xf) > 2) return invalid("PROXYv2 unsupported protocol");
    const std::size_t len = be16(bytes, 14);
    if (bytes.size() < 16 + len) return more(16 + len);

    result r;
    header& h = r.value;
    h.version = 2;
    h.command = ver_cmd & 0xf;
    h.family = fam_proto >> 4;
    h.protocol = fam_proto & 0xf;
    h.raw.assign(bytes.substr(0, 16 + len));
    std::string_view body = bytes.substr(16, len);
    if (h.family != 0 && h.protocol != 0) {
        const std::size_t need = h.family == 1 ? 12 : h.family == 2 ? 36 : 216;
        if (body.size() < need) return invalid("PROXYv2 truncated address");
        if (h.family == 1) {
            h.src_address = ipv4_text(body.substr(0, 4));
            h.dst_address = ipv4_text(body.substr(4, 4));
            h.src_port = be16(body, 8);
            h.dst_port = be16(body, 10);
        } else if (h.family == 2) {
            h.src_address = ipv6_text(body.substr(0, 16));
            h.dst_address = ipv6_text(body.substr(16, 16));
            h.src_port = be16(body, 32);
            h.dst_port = be16(body, 34);
        } else {
            const auto path = [](std::string_view p) { return std::string(p.substr(0, p.find('\0'))); };
            h.src_address = path(body.substr(0, 108));
            h.dst_address = path(body.substr(108, 108));
        }
        body.remove_prefix(need);
    }
    parse_tlvs(body, h);
    r.state = result::status::done;
    r.length = 16 + len;
    return r;
}

}  // namespace

result parse(std::string_view bytes)
{
    const std::size_t n = std::min<std::size_t>(bytes.size(), 5);
    const bool maybe_v1 = bytes.substr(0, n) == v1_signature.substr(0, n);
    const bool maybe_v2 = bytes.substr(0, n) == v2_signature.substr(0, n);
    if (!maybe_v1 && !maybe_v2) return invalid("PROXY unrecognized signature");
    if (bytes.size() < 5) return more(5);
    return maybe_v1 ? parse_v1(bytes) : parse_v2(bytes);
}

}  // namespace asiosmtpd::proxy
