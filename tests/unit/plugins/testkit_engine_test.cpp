// SPDX-License-Identifier: Apache-2.0
// The test kit runs the server's engine: what the old, hand-written kit did not check is there
// now, with the server's replies (tests/transcripts/ has the same lines): SIZE, address
// syntax, require_starttls, command_call_limit, the unknown-command budget, pipelined input
// through send(), and settings changed between two commands.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string scripted = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so";

TEST(testkit_engine, size_and_address_syntax)
{
    tk::host h;
    h.data_size_limit = 1000;
    auto s = h.open();
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 1000\n250-8BITMIME\n250 HELP");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example> SIZE=2000"), "552 Error: message size exceeds fixed maximum message size");
    EXPECT_EQ(s.cmd("MAIL FROM:a@"), "553 5.1.3 Error: malformed address");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example> SIZE=10"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    std::string big;
    for (int i = 0; i < 12; ++i) big += std::string(98, 'x') + "\r\n";
    EXPECT_EQ(s.data(big), "552 Error: Too much mail data");
    EXPECT_EQ(s.cmd("DATA"), "503 Error: need RCPT command");  // the envelope was reset
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    EXPECT_EQ(s.data(std::string(1200, 'x') + "\r\n"), "500 Line too long (see RFC5321 4.5.3.1.6)");
}

TEST(testkit_engine, require_starttls)
{
    tk::host h;
    h.starttls_available = true;
    h.require_starttls = true;
    auto s = h.open();
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "530 Must issue a STARTTLS command first");
    EXPECT_EQ(s.cmd("STARTTLS"), "220 Ready to start TLS");
    EXPECT_TRUE(s.tls_active());
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
}

TEST(testkit_engine, command_call_limit_closes)
{
    tk::host h;
    h.call_limit_enabled = true;
    h.call_limit_default = 2;
    auto s = h.open();
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
    EXPECT_EQ(s.cmd("NOOP"), "421 4.7.0 NOOP sent too many times");
    EXPECT_TRUE(s.closed());
    EXPECT_THROW(s.cmd("NOOP"), tk::error);
}

TEST(testkit_engine, pipelined_input_is_answered_in_order_through_the_hooks)
{
    tk::host h;
    h.load(scripted,
           tk::node::map(
               {{"hooks",
                 tk::node::map({{"RCPT", tk::node::map({{"verdict", "reject"}, {"code", 550}, {"text", "no"}})}})}}));
    auto s = h.open();
    EXPECT_EQ(s.send("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nQUIT\r\n"),
              "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250 HELP\n"
              "250 OK\n550 no\n503 Error: need RCPT command\n221 Bye");
    EXPECT_TRUE(s.closed());
}

TEST(testkit_engine, settings_are_read_at_each_command)
{
    tk::host h;
    auto s = h.open();
    EXPECT_EQ(s.cmd("EHLO c.example"), "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250 HELP");
    h.hostname = "other.example";
    h.advertise_pipelining = true;
    EXPECT_EQ(s.cmd("EHLO c.example"), "250-other.example\n250-SIZE 33554432\n250-8BITMIME\n250-PIPELINING\n250 HELP");
}

TEST(testkit_engine, unknown_commands_have_a_budget)
{
    tk::host h;
    auto s = h.open();
    std::string last;
    for (int i = 0; i < 10 && !s.closed(); ++i) last = s.cmd("BOGUS");
    EXPECT_TRUE(s.closed());
    EXPECT_EQ(last, "502 5.5.1 Too many unrecognized commands, goodbye.");
}

}  // namespace
