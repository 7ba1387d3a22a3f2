// SPDX-License-Identifier: Apache-2.0
// The PROXY protocol header parser (aiosmtpd 1.4-§6.3, HAProxy's spec).
#include "proxy/parser.hpp"

#include <gtest/gtest.h>

#include <string>

namespace asiosmtpd::proxy {
namespace {

using status = result::status;

std::string v2(unsigned char ver_cmd, unsigned char fam_proto, const std::string& body)
{
    std::string h("\r\n\r\n\0\r\nQUIT\n", 12);
    h.push_back(static_cast<char>(ver_cmd));
    h.push_back(static_cast<char>(fam_proto));
    h.push_back(static_cast<char>(body.size() >> 8));
    h.push_back(static_cast<char>(body.size() & 0xff));
    return h + body;
}

TEST(proxy_v1, tcp4_and_the_bytes_after_it_are_not_read)
{
    const std::string wire = "PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\nEHLO x\r\n";
    const result r = parse(wire);
    ASSERT_EQ(r.state, status::done) << r.error;
    EXPECT_EQ(r.length, wire.find("EHLO"));
    EXPECT_EQ(r.value.version, 1);
    EXPECT_EQ(r.value.family, 1);
    EXPECT_EQ(r.value.src_address, "192.0.2.1");
    EXPECT_EQ(r.value.dst_address, "198.51.100.2");
    EXPECT_EQ(r.value.src_port, 40000);
    EXPECT_EQ(r.value.dst_port, 25);
    EXPECT_TRUE(r.value.has_client());
}

TEST(proxy_v1, tcp6_and_unknown)
{
    const result r = parse("PROXY TCP6 2001:db8::1 ::1 1 65535\r\n");
    ASSERT_EQ(r.state, status::done) << r.error;
    EXPECT_EQ(r.value.src_address, "2001:db8::1");
    EXPECT_EQ(r.value.family, 2);
    const result u = parse("PROXY UNKNOWN foo bar\r\n");
    ASSERT_EQ(u.state, status::done);
    EXPECT_FALSE(u.value.has_client());
}

TEST(proxy_v1, waits_for_the_whole_line)
{
    const std::string wire = "PROXY TCP4 192.0.2.1 198.51.100.2 40000 25\r\n";
    for (std::size_t n = 0; n < wire.size(); ++n) {
        const result r = parse(wire.substr(0, n));
        EXPECT_EQ(r.state, status::need_more) << n;
        EXPECT_GT(r.need, n);
    }
}

TEST(proxy_v1, errors_as_aiosmtpd_names_them)
{
    const std::pair<std::string, std::string> cases[] = {
        {"GET / HTTP/1.0\r\n", "PROXY unrecognized signature"},
        {"PROXY1 TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXYv1 wrong signature"},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "PROXYv1 malformed"},
        {"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXYv1 unrecognized family"},
        {"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "PROXYv1 unrecognized protocol"},
        {"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "PROXYv1 unrecognized extraneous data"},
        {"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n", "PROXYv1 address malformed"},
        {"PROXY TCP4 1.2.3.4 ::1 1 2\r\n", "PROXYv1 address not IPv4"},
        {"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "PROXYv1 address not IPv6"},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 01111 2\r\n", "PROXYv1 port malformed"},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 123456 2\r\n", "PROXYv1 src port out of bounds"},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "PROXYv1 dst port out of bounds"},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "PROXYv1 unrecognized extraneous data"},
        {"PROXY TCP4 " + std::string(100, '1') + "\r\n", "PROXYv1 header too long"},
    };
    for (const auto& [wire, error] : cases) {
        const result r = parse(wire);
        EXPECT_EQ(r.state, status::invalid) << wire;
        EXPECT_EQ(r.error, error) << wire;
    }
}

TEST(proxy_v1, exactly_107_bytes_is_accepted)
{
    std::string wire = "PROXY UNKNOWN ";
    wire += std::string(107 - wire.size() - 2, 'x') + "\r\n";
    ASSERT_EQ(wire.size(), 107u);
    EXPECT_EQ(parse(wire).state, status::done);
}

TEST(proxy_v2, inet_with_tlvs)
{
    std::string body = {'\xc0', '\x00', '\x02', '\x01', '\xc6', '\x33', '\x64', '\x02', '\x9c', '\x40', '\x00', '\x19'};
    body += std::string("\x01\x00\x02h2", 5);  // ALPN
    body += std::string("\x05\x00\x03"
                        "abc",
                        6);  // UNIQUE_ID
    const std::string wire = v2(0x21, 0x11, body) + "EHLO";
    const result r = parse(wire);
    ASSERT_EQ(r.state, status::done) << r.error;
    EXPECT_EQ(r.length, wire.size() - 4);
    EXPECT_EQ(r.value.version, 2);
    EXPECT_EQ(r.value.src_address, "192.0.2.1");
    EXPECT_EQ(r.value.dst_address, "198.51.100.2");
    EXPECT_EQ(r.value.src_port, 40000);
    EXPECT_EQ(r.value.dst_port, 25);
    ASSERT_EQ(r.value.tlvs.size(), 2u);
    EXPECT_EQ(r.value.tlvs[0].type, 0x01);
    EXPECT_EQ(r.value.tlvs[0].value, "h2");
    EXPECT_EQ(r.value.tlvs[1].value, "abc");
}

TEST(proxy_v2, inet6_local_and_incomplete)
{
    std::string body(36, '\0');
    body[0] = '\x20';
    body[1] = '\x01';
    body[2] = '\x0d';
    body[3] = '\xb8';
    body[15] = '\x01';
    body[31] = '\x01';
    const result r = parse(v2(0x21, 0x21, body));
    ASSERT_EQ(r.state, status::done) << r.error;
    EXPECT_EQ(r.value.src_address, "2001:db8::1");
    EXPECT_EQ(r.value.dst_address, "::1");
    const result local = parse(v2(0x20, 0x00, ""));
    ASSERT_EQ(local.state, status::done);
    EXPECT_FALSE(local.value.has_client());
    const std::string wire = v2(0x21, 0x21, body);
    EXPECT_EQ(parse(wire.substr(0, 20)).state, status::need_more);
    EXPECT_EQ(parse(wire.substr(0, 20)).need, wire.size());
}

TEST(proxy_v2, errors)
{
    EXPECT_EQ(parse(v2(0x31, 0x11, std::string(12, '\0'))).error, "PROXYv2 illegal version");
    EXPECT_EQ(parse(v2(0x22, 0x11, std::string(12, '\0'))).error, "PROXYv2 unsupported command");
    EXPECT_EQ(parse(v2(0x21, 0x41, std::string(12, '\0'))).error, "PROXYv2 unsupported family");
    EXPECT_EQ(parse(v2(0x21, 0x13, std::string(12, '\0'))).error, "PROXYv2 unsupported protocol");
    EXPECT_EQ(parse(v2(0x21, 0x11, std::string(8, '\0'))).error, "PROXYv2 truncated address");
    std::string bad("\r\n\r\n\0\r\nQUIX\n", 12);
    EXPECT_EQ(parse(bad + std::string(4, '\0')).error, "PROXYv2 wrong signature");
    const result r = parse(v2(0x21, 0x11, std::string(12, '\0') + "\x01\x00"));
    ASSERT_EQ(r.state, status::done);
    EXPECT_TRUE(r.value.tlv_error);
}

}  // namespace
}  // namespace asiosmtpd::proxy
