// SPDX-License-Identifier: Apache-2.0
// The test kit refuses control characters (C0, DEL) in MAIL/RCPT/VRFY addresses and parameters
// as the server does (553 5.1.3, 501, "502 Could not VRFY" with '?' for each control byte), so
// that a plugin tested with it never gets what the server would never hand it
// (tests/unit/proto/engine_control_chars_test.cpp). A TAB between address and parameters
// still separates.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

namespace tk = asiosmtpd::testkit;
using namespace std::string_literals;

TEST(testkit_control_chars, addresses_and_parameters_are_refused_before_any_hook)
{
    // The scripted plugin would answer 550/551/552 if its hooks ran.
    tk::host h;
    h.load(std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so",
           tk::node::map(
               {{"hooks",
                 tk::node::map(
                     {{"MAIL", tk::node::map({{"verdict", "reject"}, {"code", 550}, {"text", "mail hook"}})},
                      {"RCPT", tk::node::map({{"verdict", "reject"}, {"code", 551}, {"text", "rcpt hook"}})},
                      {"VRFY", tk::node::map({{"verdict", "reject"}, {"code", 552}, {"text", "vrfy hook"}})}})}}));
    auto s = h.open();
    s.cmd("EHLO c.example");
    EXPECT_EQ(s.cmd("MAIL FROM:<\"x\rX-RcptTo: ceo@corp.example\"@b.example>"), "553 5.1.3 Error: malformed address");
    EXPECT_EQ(s.cmd("MAIL FROM:<a\0b@c.example>"s), "553 5.1.3 Error: malformed address");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example> SIZE=1\x01"), "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]");
    EXPECT_EQ(s.cmd("VRFY a\rb@c.example"), "502 Could not VRFY a?b@c.example");
    EXPECT_EQ(s.cmd("VRFY a@b.example"), "552 vrfy hook");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>\tSIZE=10"), "550 mail hook");  // a TAB separates
}

TEST(testkit_control_chars, rcpt_is_refused_before_its_hook)
{
    tk::host h;
    h.load(std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so",
           tk::node::map(
               {{"hooks",
                 tk::node::map(
                     {{"RCPT", tk::node::map({{"verdict", "reject"}, {"code", 551}, {"text", "rcpt hook"}})}})}}));
    auto s = h.open();
    s.cmd("EHLO c.example");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<\"y\rX-Spam-Flag: NO\"@b.example>"), "553 5.1.3 Error: malformed address");
    EXPECT_EQ(s.cmd("RCPT TO:<d@e.example> X=\x7f"), "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]");
    EXPECT_EQ(s.cmd("RCPT TO:<d@e.example>"), "551 rcpt hook");
}

}  // namespace
