// SPDX-License-Identifier: Apache-2.0
// XCLIENT (Postfix's XCLIENT_README, server.xclient_networks): who may use it, its replies and
// check order, the attributes it gives, and the session starting over with a new greeting.
#include "proto/engine.hpp"
#include "proto/engine_helpers.hpp"
#include "proto/network.hpp"

#include <gtest/gtest.h>

#include <string>

namespace asiosmtpd::proto {
namespace {

settings xclient_settings(bool on = true)
{
    settings s = base_settings();
    s.xclient = on;
    return s;
}

// The host's part after an accepted XCLIENT: the CONNECT request (the session applies the
// attributes, runs the CONNECT chain) and its outcome.
void finish_connect(engine& e, hook_result r = {})
{
    ASSERT_NE(e.pending_hook(), nullptr);
    ASSERT_EQ(e.pending_hook()->kind, hook_kind::connect);
    ASSERT_TRUE(e.pending_hook()->xclient);
    e.hook_done(std::move(r));
}

constexpr std::string_view greeting = "220 mx.test asiosmtpd test\r\n";

TEST(engine_xclient, unknown_verb_when_not_configured)
{
    const settings s = xclient_settings(false);
    engine e(s);
    e.allow_xclient(true);  // the host never does without networks; the setting decides
    e.start();
    take(e);
    e.receive("EHLO c\r\n");
    EXPECT_EQ(take(e).find("XCLIENT"), std::string::npos);
    e.receive("XCLIENT ADDR=192.0.2.1\r\n");
    EXPECT_EQ(take(e), "500 Error: command \"XCLIENT\" not recognized\r\n");
}

TEST(engine_xclient, advertised_only_to_allowed_clients)
{
    const settings s = xclient_settings();
    engine e(s);
    e.start();
    take(e);
    e.receive("EHLO c\r\n");
    EXPECT_EQ(take(e).find("XCLIENT"), std::string::npos);
    e.allow_xclient(true);
    e.receive("EHLO c\r\n");
    EXPECT_NE(take(e).find("250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n250 HELP\r\n"),
              std::string::npos);
}

TEST(engine_xclient, refusals_in_postfix_order)
{
    const settings s = xclient_settings();
    engine e(s);
    e.start();
    take(e);
    e.receive("XCLIENT\r\n");
    EXPECT_EQ(take(e), "501 5.5.4 Syntax: XCLIENT attribute=value...\r\n");
    e.receive("XCLIENT ADDR=192.0.2.1\r\n");
    EXPECT_EQ(take(e), "550 5.7.0 Error: insufficient authorization\r\n");
    e.allow_xclient(true);
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\nXCLIENT ADDR=192.0.2.1\r\nRSET\r\n");
    EXPECT_EQ(take(e), "250 mx.test\r\n250 OK\r\n503 5.5.1 Error: MAIL transaction in progress\r\n250 OK\r\n");
    const auto refusals = e.take_refusals();
    ASSERT_EQ(refusals.size(), 3u);
    EXPECT_EQ(refusals[2].command, "XCLIENT ADDR=192.0.2.1");
}

TEST(engine_xclient, bad_syntax_replies)
{
    const settings s = xclient_settings();
    engine e(s);
    e.allow_xclient(true);
    e.start();
    take(e);
    const std::pair<std::string, std::string> cases[] = {
        {"XCLIENT ADDR", "501 5.5.4 Error: attribute=value expected"},
        {"XCLIENT ADDR=", "501 5.5.4 Error: attribute=value expected"},
        {"XCLIENT =1", "501 5.5.4 Error: attribute=value expected"},
        {"XCLIENT ADDR=300.1.1.1", "501 5.5.4 Bad ADDR syntax: 300.1.1.1"},
        {"XCLIENT ADDR=IPV6:192.0.2.1", "501 5.5.4 Bad ADDR syntax: IPV6:192.0.2.1"},
        {"XCLIENT addr=host.example", "501 5.5.4 Bad ADDR syntax: host.example"},
        {"XCLIENT PORT=65536", "501 5.5.4 Bad PORT syntax: 65536"},
        {"XCLIENT PORT=-1", "501 5.5.4 Bad PORT syntax: -1"},
        {"XCLIENT DESTPORT=x", "501 5.5.4 Bad DESTPORT syntax: x"},
        {"XCLIENT NAME=bad..name", "501 5.5.4 Bad NAME syntax: bad..name"},
        {"XCLIENT NAME=192.0.2.1", "501 5.5.4 Bad NAME syntax: 192.0.2.1"},
        {"XCLIENT PROTO=HTTP", "501 5.5.4 Bad PROTO syntax: HTTP"},
        {"XCLIENT NAME=a+2", "501 5.5.4 Bad NAME syntax: a+2"},
        {"XCLIENT NAME=a+ZZb", "501 5.5.4 Bad NAME syntax: a+ZZb"},
        {"XCLIENT LOGIN=a+0Db", "501 5.5.4 Bad LOGIN syntax: a+0Db"},  // a CR, encoded
        {"XCLIENT COLOR=blue", "501 5.5.4 Bad XCLIENT attribute name: COLOR"},
        {"XCLIENT HELO=" + std::string(256, 'a'), "501 5.5.4 Error: attribute value too long"},
    };
    for (const auto& [command, expected] : cases) {
        e.receive(command + "\r\n");
        EXPECT_EQ(take(e), expected + "\r\n") << command;
        EXPECT_EQ(e.pending_hook(), nullptr) << command;
    }
    // Nothing was applied: the session goes on as it was.
    e.receive("NOOP\r\n");
    EXPECT_EQ(take(e), "250 OK\r\n");
}

TEST(engine_xclient, accepted_attributes_and_new_greeting)
{
    const settings s = xclient_settings();
    engine e(s);
    e.allow_xclient(true);
    e.start();
    take(e);
    e.receive("EHLO proxy.example\r\n");
    take(e);
    e.receive("XCLIENT NAME=spike.porcupine.org ADDR=IPv6:2001:DB8::1 PORT=4242 login=wietse+40example "
              "DESTADDR=198.51.100.7 DESTPORT=25\r\nEHLO spike\r\n");
    EXPECT_EQ(take(e), "");  // the host applies the client first
    const xclient_attributes& x = e.xclient();
    EXPECT_EQ(x.name, "spike.porcupine.org");
    EXPECT_EQ(x.addr, "2001:db8::1");
    EXPECT_EQ(x.port, 4242);
    EXPECT_EQ(x.login, "wietse@example");
    EXPECT_EQ(x.destaddr, "198.51.100.7");
    EXPECT_EQ(x.destport, 25);
    EXPECT_FALSE(x.helo.has_value());
    // Reset as a new connection, with LOGIN's identity.
    EXPECT_EQ(e.helo_name(), "");
    EXPECT_FALSE(e.extended_smtp());
    EXPECT_TRUE(e.authenticated());
    EXPECT_EQ(e.auth_login(), "wietse@example");
    finish_connect(e);
    const std::string out = take(e);
    EXPECT_TRUE(out.starts_with(std::string(greeting) + "250-mx.test\r\n")) << out;
    EXPECT_EQ(e.helo_name(), "spike");
}

TEST(engine_xclient, helo_and_proto_survive_the_reset_and_unavailable_values)
{
    const settings s = xclient_settings();
    engine e(s);
    e.allow_xclient(true);
    e.start();
    take(e);
    e.receive("XCLIENT ADDR=192.0.2.1 NAME=[TEMPUNAVAIL] HELO=a<b>(c) PROTO=esmtp\r\n");
    finish_connect(e);
    EXPECT_EQ(take(e), greeting);
    EXPECT_EQ(e.xclient().name, "");
    EXPECT_EQ(e.helo_name(), "a?b??c?");
    EXPECT_TRUE(e.extended_smtp());
    EXPECT_FALSE(e.authenticated());
    // No new HELO needed; ESMTP parameters allowed.
    e.receive("MAIL FROM:<a@b.c> SIZE=10\r\n");
    EXPECT_EQ(take(e), "250 OK\r\n");
    e.receive("RSET\r\n");
    take(e);
    // A second XCLIENT keeps ADDR, resets HELO (not given this time); [UNAVAILABLE] clears.
    e.receive("XCLIENT PORT=[UNAVAILABLE] LOGIN=[unavailable]\r\n");
    finish_connect(e);
    EXPECT_EQ(take(e), greeting);
    EXPECT_EQ(e.xclient().addr, "192.0.2.1");
    EXPECT_EQ(e.xclient().port, 0);
    EXPECT_EQ(e.helo_name(), "");
    EXPECT_FALSE(e.extended_smtp());
    e.receive("MAIL FROM:<a@b.c>\r\n");
    EXPECT_EQ(take(e), "503 Error: send HELO first\r\n");
}

TEST(engine_xclient, connect_refusal_after_xclient)
{
    settings s = xclient_settings();
    s.hook_mask = hook_bit(hook_kind::connect);
    engine e(s);
    e.allow_xclient(true);
    e.start();
    e.hook_done({});
    take(e);
    e.receive("XCLIENT ADDR=203.0.113.9\r\n");
    finish_connect(e, hook_result{verdict::reject, 554, "5.7.1 Client host [203.0.113.9] rejected", {}, {}, {}});
    EXPECT_EQ(take(e), "554 5.7.1 Client host [203.0.113.9] rejected\r\n");
    const auto refusals = e.take_refusals();
    ASSERT_EQ(refusals.size(), 1u);
    EXPECT_EQ(refusals[0].command, "XCLIENT ADDR=203.0.113.9");
    e.receive("EHLO c\r\n");
    EXPECT_EQ(take(e), "503 5.5.1 Error: connection rejected, send QUIT\r\n");
}

TEST(engine_xclient, before_starttls_when_required)
{
    settings s = xclient_settings();
    s.starttls_available = true;
    s.require_starttls = true;
    engine e(s);
    e.allow_xclient(true);
    e.start();
    take(e);
    e.receive("XCLIENT ADDR=192.0.2.1\r\n");
    finish_connect(e);
    EXPECT_EQ(take(e), greeting);
}

TEST(network, parse_and_contains)
{
    std::string why;
    const auto v4 = parse_network("10.0.0.0/8", why);
    ASSERT_TRUE(v4);
    EXPECT_TRUE(contains(*v4, *parse_ip("10.1.2.3")));
    EXPECT_TRUE(contains(*v4, *parse_ip("::ffff:10.1.2.3")));
    EXPECT_FALSE(contains(*v4, *parse_ip("11.0.0.1")));
    const auto one = parse_network("127.0.0.1", why);
    ASSERT_TRUE(one);
    EXPECT_TRUE(contains(*one, *parse_ip("127.0.0.1")));
    EXPECT_FALSE(contains(*one, *parse_ip("127.0.0.2")));
    const auto v6 = parse_network("2001:db8::/33", why);
    ASSERT_TRUE(v6);
    EXPECT_TRUE(contains(*v6, *parse_ip("2001:db8:7fff::1")));
    EXPECT_FALSE(contains(*v6, *parse_ip("2001:db8:8000::1")));
    EXPECT_FALSE(parse_network("10.0.0.0/33", why));
    EXPECT_FALSE(parse_network("10.0.0.0/", why));
    EXPECT_FALSE(parse_network("example.org", why));
    // A client on a UNIX listener is local: 127.0.0.1, as Postfix's smtpd sees it.
    EXPECT_FALSE(contains(std::vector<ip_network>{*v4}, "unix:/run/x.sock"));
    EXPECT_TRUE(contains(std::vector<ip_network>{*one}, "unix:/run/x.sock"));
    EXPECT_FALSE(contains(std::vector<ip_network>{*one}, "unix"));
    EXPECT_FALSE(contains(std::vector<ip_network>{}, "unix:/run/x.sock"));
    EXPECT_EQ(to_string(*parse_ip("2001:DB8:0:0::1")), "2001:db8::1");
    EXPECT_EQ(to_string(*parse_ip("::ffff:192.0.2.1")), "192.0.2.1");
}

}  // namespace
}  // namespace asiosmtpd::proto

namespace asiosmtpd::proto {
namespace {

// Shutdown (docs/behaviour.md): a transaction in progress goes on; outside one, QUIT gets its
// 221 and anything else the host's 421, then the session closes.
TEST(engine_drain, transaction_finishes_then_quit_is_221_other_421)
{
    const settings s = xclient_settings(false);
    engine e(s);
    e.start();
    take(e);
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n");
    take(e);
    e.drain("421 4.3.2 mx.test Service shutting down");
    e.receive("DATA\r\nx\r\n.\r\nQUIT\r\n");
    EXPECT_EQ(take(e), "354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n221 Bye\r\n");
    EXPECT_EQ(e.close_reason(), "quit");

    engine other(s);
    other.start();
    take(other);
    other.drain("421 4.3.2 mx.test Service shutting down");
    other.receive("NOOP\r\nQUIT\r\n");
    EXPECT_EQ(take(other), "421 4.3.2 mx.test Service shutting down\r\n");
    EXPECT_TRUE(other.close_requested());
    EXPECT_EQ(other.close_reason(), "shutdown");
}

}  // namespace
}  // namespace asiosmtpd::proto
