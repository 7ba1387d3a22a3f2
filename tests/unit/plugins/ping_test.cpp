// SPDX-License-Identifier: Apache-2.0
// The bundled ping plugin (the SDK example) through the test kit: PING answers 259 Pong,
// with or without HELO and with an argument, and HELP lists it.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string plugin = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/ping.so";

TEST(ping, registers_the_command)
{
    tk::host h;
    h.load(plugin);
    EXPECT_EQ(h.commands(), std::vector<std::string>{"PING"});
    EXPECT_TRUE(h.ehlo_keywords().empty());
}

TEST(ping, answers_pong)
{
    tk::host h;
    h.load(plugin);
    auto s = h.open();
    EXPECT_EQ(s.cmd("PING"), "259 Pong");  // no HELO needed
    EXPECT_EQ(s.cmd("ping with an argument"), "259 Pong");
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250 HELP");
    EXPECT_EQ(s.cmd("PING"), "259 Pong");
    EXPECT_EQ(s.cmd("HELP PING"), "250 Syntax: PING");
    EXPECT_EQ(s.cmd("HELP"), "250 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP PING QUIT RCPT RSET VRFY");
    EXPECT_EQ(s.cmd("PONG"), "500 Error: command \"PONG\" not recognized");
}

TEST(ping, a_second_ping_plugin_conflicts)
{
    tk::host h;
    h.load(plugin);
    const std::string why = h.refusal(plugin);
    EXPECT_NE(why.find("register_command(PING): host refused (E_CONFLICT)"), std::string::npos) << why;
}

TEST(ping, refuses_configuration)
{
    tk::host h;
    EXPECT_NE(h.refusal(plugin, tk::node::map({{"reply", "Pang"}})).find("ping takes no configuration"),
              std::string::npos);
}

}  // namespace
