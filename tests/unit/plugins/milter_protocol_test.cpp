// SPDX-License-Identifier: Apache-2.0
// The milter plugin's protocol codec (plugins/milter/protocol.hpp) and message splitter
// (message.hpp): framing, option negotiation, macros, replies, changes, endpoints, and the
// header/body split of a message that arrives in pieces, wherever it is cut.
#include "milter/message.hpp"
#include "milter/protocol.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace mp = asiosmtpd::plugins::milter;
using namespace std::string_literals;

namespace {

std::string u32(std::uint32_t v)
{
    std::string s;
    mp::put_u32(s, v);
    return s;
}

TEST(MilterProtocol, PacketFraming)
{
    EXPECT_EQ(mp::packet('Q'), "\0\0\0\x01Q"s);
    EXPECT_EQ(mp::packet('B', "abc"), "\0\0\0\x04"
                                      "Babc"s);
    EXPECT_EQ(mp::header("Subject", "hi"), "\0\0\0\x0c"
                                           "LSubject\0hi\0"s);
    EXPECT_EQ(mp::strings('M', {"<a@b>", "SIZE=10"}), "\0\0\0\x0f"
                                                      "M<a@b>\0SIZE=10\0"s);
}

TEST(MilterProtocol, OptnegOffersVersion6AndEverythingWeSupport)
{
    const std::string p = mp::optneg();
    ASSERT_EQ(p.size(), 4u + 1 + 12);
    EXPECT_EQ(p[4], 'O');
    EXPECT_EQ(mp::get_u32(p, 5), 6u);
    EXPECT_EQ(mp::get_u32(p, 9), 0x1FFu);  // ADDHDRS .. SETSYMLIST
    EXPECT_EQ(mp::get_u32(p, 13), mp::our_protocol);
    EXPECT_TRUE(mp::our_protocol & mp::p_nr_hdr);
    EXPECT_TRUE(mp::our_protocol & mp::p_skip);
}

TEST(MilterProtocol, ParseOptneg)
{
    std::string data = u32(6) + u32(mp::act_addhdrs | mp::act_chgbody) + u32(mp::p_nohelo | mp::p_nr_rcpt | (1u << 25));
    data += u32(2) + "{mail_addr} i"s + '\0';  // SETSYMLIST for MAIL
    data += u32(99) + "x"s + '\0';             // an unknown class: ignored
    const mp::negotiated n = mp::parse_optneg(data);
    EXPECT_EQ(n.version, 6u);
    EXPECT_EQ(n.actions, mp::act_addhdrs | mp::act_chgbody);
    EXPECT_EQ(n.protocol, mp::p_nohelo | mp::p_nr_rcpt);  // a step we did not offer is dropped
    ASSERT_TRUE(n.symlists[2]);
    EXPECT_EQ(*n.symlists[2], (std::vector<std::string>{"{mail_addr}", "i"}));
    EXPECT_FALSE(n.symlists[0]);

    EXPECT_THROW(mp::parse_optneg(u32(7) + u32(0) + u32(0)), mp::protocol_error);
    EXPECT_THROW(mp::parse_optneg(u32(6) + u32(1u << 12) + u32(0)), mp::protocol_error);
    EXPECT_THROW(mp::parse_optneg(u32(6) + u32(0)), mp::protocol_error);
    EXPECT_THROW(mp::parse_optneg(u32(6) + u32(0) + u32(0) + u32(1) + "no nul"), mp::protocol_error);
}

TEST(MilterProtocol, Macros)
{
    EXPECT_EQ(mp::macros('C', {}), "");
    EXPECT_EQ(mp::macros('M', {{"i", "Q1"}, {"{mail_addr}", "a@b"}}), "\0\0\0\x17"
                                                                      "DMi\0Q1\0{mail_addr}\0a@b\0"s);
    EXPECT_EQ(mp::split_names("j {daemon_name}  _,auth_type {}"),
              (std::vector<std::string>{"j", "{daemon_name}", "_", "{auth_type}"}));
}

TEST(MilterProtocol, Connect)
{
    EXPECT_EQ(mp::connect("[127.0.0.1]", '4', 25, "127.0.0.1"), "\0\0\0\x1a"
                                                                "C[127.0.0.1]\0"
                                                                "4\0\x19"
                                                                "127.0.0.1\0"s);
    EXPECT_EQ(mp::connect("localhost", 'U', 0, "ignored"), "\0\0\0\x0c"
                                                           "Clocalhost\0U"s);
}

TEST(MilterProtocol, ReaderTakesBytesAsTheyCome)
{
    const std::string stream = mp::packet('c') + mp::packet('h', "X\0y\0"s) + mp::packet('a');
    mp::reader r;
    std::vector<char> got;
    for (char ch : stream) {
        r.feed(std::string_view(&ch, 1));
        while (auto p = r.next()) got.push_back(p->cmd);
    }
    EXPECT_EQ(got, (std::vector<char>{'c', 'h', 'a'}));
    EXPECT_TRUE(r.empty());

    mp::reader zero;
    zero.feed("\0\0\0\0"s);
    EXPECT_THROW(zero.next(), mp::protocol_error);
    mp::reader huge;
    huge.feed("\x7f\0\0\0c"s);
    EXPECT_THROW(huge.next(), mp::protocol_error);
    mp::reader garbage;
    garbage.feed("HTTP/1.1 400 Bad Request\r\n");
    EXPECT_THROW(garbage.next(), mp::protocol_error);
}

TEST(MilterProtocol, ReplyCode)
{
    mp::smtp_reply r = mp::parse_replycode("550 5.7.1 Go away"s + '\0');
    EXPECT_EQ(r.code, 550);
    EXPECT_EQ(r.text, "5.7.1 Go away");
    r = mp::parse_replycode("451-4.7.1 first\r\n451-4.7.1 second\r\n451 4.7.1 100%% sure");
    EXPECT_EQ(r.code, 451);
    EXPECT_EQ(r.text, "4.7.1 first\n4.7.1 second\n4.7.1 100% sure");
    EXPECT_EQ(mp::parse_replycode("554 a % b").text, "a  b");  // a lone '%' goes (Postfix)
    EXPECT_EQ(mp::parse_replycode("550 ").text, "");
    for (const char* bad :
         {"250 OK", "55 short", "550-no final", "550 a\r\n551 b", "550-a\r\n551 b", "550x y", "550-a\n550 b", ""}) {
        EXPECT_THROW(mp::parse_replycode(bad), mp::protocol_error) << bad;
    }
    EXPECT_THROW(mp::parse_replycode("550 a\0b"s), mp::protocol_error);
    EXPECT_EQ(mp::parse_replycode("550 bell\x07tab\there").text, "bell?tab\there");
}

TEST(MilterProtocol, Modifications)
{
    mp::modification m = mp::parse_modification('h', "X-Added\0value\0"s);
    EXPECT_EQ(m.name, "X-Added");
    EXPECT_EQ(m.value, "value");
    m = mp::parse_modification('i', u32(0) + "DKIM-Signature\0v=1\0"s);
    EXPECT_EQ(m.index, 0u);
    EXPECT_EQ(m.name, "DKIM-Signature");
    m = mp::parse_modification('m', u32(2) + "X-Twice\0\0"s);
    EXPECT_EQ(m.index, 2u);
    EXPECT_EQ(m.value, "");
    m = mp::parse_modification('e', "<new@example.org>\0SIZE=1 BODY=8BITMIME\0"s);
    EXPECT_EQ(mp::bare_address(m.name), "new@example.org");
    EXPECT_EQ(mp::split_args(m.value), (std::vector<std::string>{"SIZE=1", "BODY=8BITMIME"}));
    m = mp::parse_modification('e', "<>\0"s);
    EXPECT_EQ(mp::bare_address(m.name), "<>");
    EXPECT_EQ(m.value, "");
    m = mp::parse_modification('2', "<x@y>\0NOTIFY=NEVER\0"s);
    EXPECT_EQ(m.value, "NOTIFY=NEVER");
    m = mp::parse_modification('+', "x@y\0"s);
    EXPECT_EQ(mp::bare_address(m.name), "x@y");
    m = mp::parse_modification('b', "new body\r\n");
    EXPECT_EQ(m.value, "new body\r\n");
    m = mp::parse_modification('q', "held\0"s);
    EXPECT_EQ(m.value, "held");

    EXPECT_THROW(mp::parse_modification('h', "no nul"), mp::protocol_error);
    EXPECT_THROW(mp::parse_modification('h', "\0value\0"s), mp::protocol_error);  // no name
    EXPECT_THROW(mp::parse_modification('m', "ab"), mp::protocol_error);          // short index
    EXPECT_THROW(mp::parse_modification('-', "a\0b\0"s), mp::protocol_error);     // extra bytes
    EXPECT_THROW(mp::parse_modification('Z', ""), mp::protocol_error);
}

TEST(MilterProtocol, Endpoints)
{
    mp::endpoint e = mp::parse_endpoint("inet:127.0.0.1:8891");
    EXPECT_EQ(e.type, mp::endpoint::kind::inet);
    EXPECT_EQ(e.host, "127.0.0.1");
    EXPECT_EQ(e.port, 8891);
    e = mp::parse_endpoint("inet:8891@localhost");
    EXPECT_EQ(e.host, "localhost");
    EXPECT_EQ(e.port, 8891);
    e = mp::parse_endpoint("inet6:[::1]:11332");
    EXPECT_EQ(e.type, mp::endpoint::kind::inet6);
    EXPECT_EQ(e.host, "::1");
    EXPECT_EQ(e.port, 11332);
    e = mp::parse_endpoint("inet6:2001:db8::1:25");
    EXPECT_EQ(e.host, "2001:db8::1");
    EXPECT_EQ(e.port, 25);
    e = mp::parse_endpoint("unix:/run/opendkim/opendkim.sock");
    EXPECT_EQ(e.type, mp::endpoint::kind::unix_socket);
    EXPECT_EQ(e.path, "/run/opendkim/opendkim.sock");
    for (const char* bad : {"127.0.0.1:8891", "tcp:1.2.3.4:5", "inet:host", "inet:host:0", "inet:host:65536",
                            "inet:host:8x", "inet::25", "inet:::1:25", "unix:", "inet6:[::1]25"}) {
        EXPECT_THROW(mp::parse_endpoint(bad), std::invalid_argument) << bad;
    }
    EXPECT_THROW(mp::parse_endpoint("unix:/" + std::string(200, 'x')), std::invalid_argument);
}

// The events of a message as text, for comparisons: "H name=value", "EOH", "B <bytes>".
std::vector<std::string> split_all(std::string_view message, const std::vector<std::size_t>& cuts, bool leadspc = false,
                                   std::size_t chunk = mp::body_chunk_size)
{
    mp::message_splitter s(leadspc, 1u << 20, chunk);
    std::vector<mp::message_event> events;
    std::size_t from = 0;
    for (std::size_t cut : cuts) {
        s.feed(message.substr(from, cut - from), events);
        from = cut;
    }
    s.feed(message.substr(from), events);
    s.finish(events);
    std::vector<std::string> out;
    std::string body;
    for (const auto& e : events) {
        switch (e.what) {
        case mp::message_event::kind::header: out.push_back("H " + e.name + "=" + e.data); break;
        case mp::message_event::kind::eoh: out.push_back("EOH"); break;
        case mp::message_event::kind::body: body += e.data; break;
        }
    }
    out.push_back("B " + body);
    return out;
}

TEST(MilterMessage, HeadersAndBody)
{
    const std::string msg =
        "Subject: hello\r\nX-Folded: one\r\n\ttwo\r\n  three\r\nX-Tab:\tvalue\r\nX-Space :  two spaces\r\n"
        "\r\nbody line\r\n\r\nmore\r\n";
    const std::vector<std::string> expected = {"H Subject=hello",
                                               "H X-Folded=one\n\ttwo\n  three",
                                               "H X-Tab=\tvalue",
                                               "H X-Space= two spaces",
                                               "EOH",
                                               "B body line\r\n\r\nmore\r\n"};
    EXPECT_EQ(split_all(msg, {}), expected);
    // Wherever the pieces are cut, the same events.
    for (std::size_t a = 0; a <= msg.size(); ++a) {
        for (std::size_t b = a; b <= msg.size(); b += 7) ASSERT_EQ(split_all(msg, {a, b}), expected) << a << " " << b;
    }
    // With SMFIP_HDR_LEADSPC the space after the colon stays.
    EXPECT_EQ(split_all("Subject: hello\r\n\r\n", {}, true),
              (std::vector<std::string>{"H Subject= hello", "EOH", "B "}));
}

TEST(MilterMessage, OddShapes)
{
    EXPECT_EQ(split_all("", {}), (std::vector<std::string>{"EOH", "B "}));
    EXPECT_EQ(split_all("Subject: only\r\n", {}), (std::vector<std::string>{"H Subject=only", "EOH", "B "}));
    EXPECT_EQ(split_all("Subject: no eol", {}), (std::vector<std::string>{"H Subject=no eol", "EOH", "B "}));
    // The first line that is not a header ends the headers and is the body's first line.
    EXPECT_EQ(split_all("Subject: x\r\nnot a header\r\nrest\r\n", {}),
              (std::vector<std::string>{"H Subject=x", "EOH", "B not a header\r\nrest\r\n"}));
    EXPECT_EQ(split_all(" leading continuation\r\n\r\nb", {}),
              (std::vector<std::string>{"EOH", "B  leading continuation\r\n\r\nb"}));
    EXPECT_EQ(split_all("A: 1\nB: 2\n\nbare lf\n", {}),
              (std::vector<std::string>{"H A=1", "H B=2", "EOH", "B bare lf\n"}));
}

TEST(MilterMessage, BodyChunksAreAtMostTheChunkSize)
{
    const std::string body(100, 'x');
    mp::message_splitter s(false, 1u << 20, 30);
    std::vector<mp::message_event> events;
    s.feed("S: 1\r\n\r\n" + body.substr(0, 45), events);
    s.feed(body.substr(45), events);
    s.finish(events);
    std::vector<std::size_t> sizes;
    for (const auto& e : events)
        if (e.what == mp::message_event::kind::body) sizes.push_back(e.data.size());
    EXPECT_EQ(sizes, (std::vector<std::size_t>{30, 30, 30, 10}));
}

TEST(MilterMessage, AnOverlongFieldIsCut)
{
    mp::message_splitter s(false, 64);
    std::vector<mp::message_event> events;
    std::string msg =
        "X-Long: " + std::string(1000, 'a') + "\r\n\t" + std::string(1000, 'b') + "\r\nNext: 1\r\n\r\nbody";
    for (char ch : msg) s.feed(std::string_view(&ch, 1), events);
    s.finish(events);
    ASSERT_GE(events.size(), 3u);
    EXPECT_TRUE(s.truncated());
    EXPECT_EQ(events[0].name, "X-Long");
    EXPECT_LE(events[0].data.size(), 64u);
    EXPECT_EQ(events[1].name, "Next");
    EXPECT_EQ(events.back().data, "body");
}

}  // namespace
