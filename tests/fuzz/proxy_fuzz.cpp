// SPDX-License-Identifier: Apache-2.0
// proxy_fuzz: the PROXY protocol header parser (proxy::parse) against arbitrary bytes, and
// against v1/v2 headers built from the fuzzer's bytes.
//
// Input: byte 0 selects the mode (mod 4), the rest is used by it:
//   0: the bytes as received from a connection (anything: v1, v2, garbage, with data after);
//   1: v1 TCP4 from 12 bytes (source, destination address, source, destination port), then the
//      remaining bytes as data following the header;
//   2: v2 INET6 from 36 bytes (addresses, ports), remaining bytes as TLVs; then the same
//      addresses in the parser's text as a v1 TCP6 header;
//   3: v2 INET from 12 bytes, remaining bytes as TLVs.
//
// Checked on every parse: no crash, sanitizer report or exception; `done` has 0 < length <= the
// input, `raw` is exactly input[0..length], parsing input[0..length] alone gives the same
// result, and every shorter prefix asks for more (need_more, with need beyond the prefix and not
// beyond the header: an incremental reader neither rejects a valid header nor waits past it);
// `need_more` asks for more than it has; `invalid` names a reason; a v1 TCP4/TCP6 header carries
// addresses inet_pton accepts. Modes 1-3 also check that the parsed addresses and ports are the
// ones written into the header.
#include "fuzz_check.hpp"
#include "fuzz_input.hpp"
#include "proxy/parser.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace {

using asiosmtpd::proxy::parse;
using asiosmtpd::proxy::result;
using status = result::status;

bool same(const result& a, const result& b)
{
    if (a.state != b.state || a.need != b.need || a.length != b.length || a.error != b.error) return false;
    const auto& x = a.value;
    const auto& y = b.value;
    if (x.version != y.version || x.command != y.command || x.family != y.family || x.protocol != y.protocol ||
        x.src_address != y.src_address || x.dst_address != y.dst_address || x.src_port != y.src_port ||
        x.dst_port != y.dst_port || x.tlv_error != y.tlv_error || x.raw != y.raw || x.tlvs.size() != y.tlvs.size())
        return false;
    for (std::size_t i = 0; i < x.tlvs.size(); ++i)
        if (x.tlvs[i].type != y.tlvs[i].type || x.tlvs[i].value != y.tlvs[i].value) return false;
    return true;
}

bool valid_address(int family, const std::string& text)
{
    std::array<unsigned char, 16> buf{};
    return inet_pton(family, text.c_str(), buf.data()) == 1;
}

/// proxy::parse(bytes) with every invariant checked.
result checked_parse(std::string_view bytes)
{
    const result r = parse(bytes);
    switch (r.state) {
    case status::need_more: ASIOSMTPD_FUZZ_CHECK(r.need > bytes.size(), "need_more asks for more than it has"); break;
    case status::invalid: ASIOSMTPD_FUZZ_CHECK(!r.error.empty(), "invalid names a reason"); break;
    case status::done: {
        ASIOSMTPD_FUZZ_CHECK(r.length > 0 && r.length <= bytes.size(), "done: length within the input");
        ASIOSMTPD_FUZZ_CHECK(r.value.raw == bytes.substr(0, r.length), "done: raw is the header");
        ASIOSMTPD_FUZZ_CHECK(r.value.version == 1 || r.value.version == 2, "done: a version");
        ASIOSMTPD_FUZZ_CHECK(same(r, parse(bytes.substr(0, r.length))), "done: the header alone parses the same");
        // An incremental reader sees every prefix first: each must ask for more, and for no more
        // than the header (it would wait for bytes the client never sends).
        const auto prefix_needs_more = [&](std::size_t n) {
            const result p = parse(bytes.substr(0, n));
            ASIOSMTPD_FUZZ_CHECK(p.state == status::need_more, "done: a shorter prefix needs more");
            ASIOSMTPD_FUZZ_CHECK(p.need > n && p.need <= r.length, "done: a prefix needs at most the header");
        };
        for (std::size_t n = 0; n < std::min<std::size_t>(r.length, 40); ++n) prefix_needs_more(n);
        prefix_needs_more(r.length / 2);
        prefix_needs_more(r.length - 1);
        if (r.value.version == 1) {
            ASIOSMTPD_FUZZ_CHECK(r.length <= asiosmtpd::proxy::v1_max_length, "v1: at most 107 bytes");
            ASIOSMTPD_FUZZ_CHECK(r.value.raw.size() >= 2 && r.value.raw.substr(r.value.raw.size() - 2) == "\r\n",
                                 "v1: ends in CRLF");
            if (r.value.family == 1 || r.value.family == 2) {
                const int af = r.value.family == 1 ? AF_INET : AF_INET6;
                ASIOSMTPD_FUZZ_CHECK(valid_address(af, r.value.src_address), "v1: source is an address");
                ASIOSMTPD_FUZZ_CHECK(valid_address(af, r.value.dst_address), "v1: destination is an address");
            }
        }
        break;
    }
    }
    return r;
}

std::uint16_t be16(std::string_view b, std::size_t at)
{
    return static_cast<std::uint16_t>((static_cast<unsigned>(static_cast<unsigned char>(b[at])) << 8U) |
                                      static_cast<unsigned char>(b[at + 1]));
}

std::string dotted(std::string_view four)
{
    std::string s;
    for (std::size_t i = 0; i < 4; ++i) {
        if (i != 0) s.push_back('.');
        s += std::to_string(static_cast<unsigned char>(four[i]));
    }
    return s;
}

std::string v2_header(unsigned char fam_proto, std::string_view body)
{
    std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
    h.push_back(static_cast<char>(0x21));  // version 2, PROXY
    h.push_back(static_cast<char>(fam_proto));
    h.push_back(static_cast<char>((body.size() >> 8U) & 0xFFU));
    h.push_back(static_cast<char>(body.size() & 0xFFU));
    h += body;
    return h;
}

/// A v1 header for the given address texts and ports, followed by `after`; checks that it
/// parses to exactly those.
void check_v1(std::string_view family, const std::string& src, const std::string& dst, std::uint16_t sport,
              std::uint16_t dport, std::string_view after)
{
    const std::string header = "PROXY " + std::string(family) + " " + src + " " + dst + " " + std::to_string(sport) +
                               " " + std::to_string(dport) + "\r\n";
    const std::string wire = header + std::string(after);
    const result r = checked_parse(wire);
    if (header.size() > asiosmtpd::proxy::v1_max_length) {
        ASIOSMTPD_FUZZ_CHECK(r.state == status::invalid, "v1: an overlong header is invalid");
        return;
    }
    ASIOSMTPD_FUZZ_CHECK(r.state == status::done, "v1: a valid header parses");
    ASIOSMTPD_FUZZ_CHECK(r.length == header.size(), "v1: the header's length");
    ASIOSMTPD_FUZZ_CHECK(r.value.src_address == src && r.value.dst_address == dst, "v1: the addresses it says");
    ASIOSMTPD_FUZZ_CHECK(r.value.src_port == sport && r.value.dst_port == dport, "v1: the ports it says");
    ASIOSMTPD_FUZZ_CHECK(r.value.has_client(), "v1: a client");
}

void check_v2_tlvs(const result& r, std::string_view tlv_bytes)
{
    if (r.value.tlv_error) {
        ASIOSMTPD_FUZZ_CHECK(r.value.tlvs.empty(), "v2: malformed TLVs are dropped");
        return;
    }
    std::string again;  // the TLVs written out again are the bytes they came from
    for (const auto& t : r.value.tlvs) {
        again.push_back(static_cast<char>(t.type));
        again.push_back(static_cast<char>((t.value.size() >> 8U) & 0xFFU));
        again.push_back(static_cast<char>(t.value.size() & 0xFFU));
        again += t.value;
    }
    ASIOSMTPD_FUZZ_CHECK(again == tlv_bytes, "v2: the TLVs are the bytes after the addresses");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    asiosmtpd::fuzz::byte_reader in(data, size);
    const unsigned mode = in.byte() % 4U;
    std::string_view rest = in.rest();
    if (mode == 0) {
        checked_parse(rest);
        return 0;
    }
    const std::size_t fields = mode == 2 ? 36 : 12;
    if (rest.size() < fields) {
        checked_parse(rest);
        return 0;
    }
    const std::string_view addr = rest.substr(0, fields);
    const std::string_view more = rest.substr(fields);
    const std::size_t port_at = fields - 4;
    const std::uint16_t sport = be16(addr, port_at);
    const std::uint16_t dport = be16(addr, port_at + 2);
    if (mode == 1) {
        check_v1("TCP4", dotted(addr.substr(0, 4)), dotted(addr.substr(4, 4)), sport, dport, more);
        return 0;
    }
    const std::string_view tlvs = more.substr(0, 0xFFFF - fields);
    const std::string wire = v2_header(mode == 2 ? 0x21 : 0x11, std::string(addr) + std::string(tlvs));
    const result r = checked_parse(wire);
    ASIOSMTPD_FUZZ_CHECK(r.state == status::done && r.length == wire.size(), "v2: a valid header parses");
    ASIOSMTPD_FUZZ_CHECK(r.value.src_port == sport && r.value.dst_port == dport, "v2: the ports it says");
    ASIOSMTPD_FUZZ_CHECK(r.value.has_client(), "v2: a client");
    check_v2_tlvs(r, tlvs);
    if (mode == 3) {
        ASIOSMTPD_FUZZ_CHECK(r.value.src_address == dotted(addr.substr(0, 4)) &&
                                 r.value.dst_address == dotted(addr.substr(4, 4)),
                             "v2: the IPv4 addresses it says");
        check_v1("TCP4", r.value.src_address, r.value.dst_address, sport, dport, {});
        return 0;
    }
    // INET6: the parser's text must name the same 16 bytes, and be accepted by its own v1 parser.
    std::array<unsigned char, 16> src{};
    std::array<unsigned char, 16> dst{};
    ASIOSMTPD_FUZZ_CHECK(inet_pton(AF_INET6, r.value.src_address.c_str(), src.data()) == 1 &&
                             inet_pton(AF_INET6, r.value.dst_address.c_str(), dst.data()) == 1,
                         "v2: IPv6 text is an address");
    ASIOSMTPD_FUZZ_CHECK(std::memcmp(src.data(), addr.data(), 16) == 0 &&
                             std::memcmp(dst.data(), addr.data() + 16, 16) == 0,
                         "v2: the IPv6 addresses it says");
    check_v1("TCP6", r.value.src_address, r.value.dst_address, sport, dport, more.substr(0, 64));
    return 0;
}
