// SPDX-License-Identifier: Apache-2.0
// The bundled sink plugin through the SDK test kit (the server's engine, no sockets): it
// accepts and discards every message and refuses any configuration.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string plugin = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/sink.so";

TEST(sink, accepts_every_message)
{
    tk::host h;
    h.load(plugin);
    EXPECT_EQ(h.hook_count(ASIOSMTPD_HOOK_DATA), 1u);
    auto s = h.open();
    EXPECT_EQ(s.greeting(), "220 mx.test.example asiosmtpd-testkit");
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example", "e@f.example"}, "Subject: x\r\n\r\nhi\r\n"), "250 OK");
    EXPECT_EQ(s.cmd("MAIL FROM:<>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    EXPECT_EQ(s.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    EXPECT_EQ(s.cmd("..dot-stuffed"), "");
    EXPECT_EQ(s.cmd("."), "250 OK");
    EXPECT_EQ(s.cmd("QUIT"), "221 Bye");
    EXPECT_TRUE(s.closed());
}

TEST(sink, an_accepting_sink_ends_the_data_chain)
{
    tk::host h;
    h.load(plugin);
    h.load(std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/debugging.so");
    auto s = h.open();
    testing::internal::CaptureStdout();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "x\r\n"), "250 OK");
    EXPECT_EQ(testing::internal::GetCapturedStdout(), "");  // debugging never saw it
}

TEST(sink, refuses_configuration)
{
    tk::host h;
    const std::string why = h.refusal(plugin, tk::node::map({{"x", 1}}));
    EXPECT_NE(why.find("refused its configuration: sink takes no configuration"), std::string::npos) << why;
    EXPECT_EQ(h.refusal(plugin, tk::node::map({})), "");
}

}  // namespace
