// SPDX-License-Identifier: Apache-2.0
// The bundled debugging plugin through the test kit: the aiosmtpd Debugging format on the
// configured stream, and the verdict left to the rest of the chain.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <string>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string plugin = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/debugging.so";

TEST(debugging, prints_the_message_and_leaves_the_verdict_to_the_chain)
{
    tk::host h;
    h.load(plugin);
    auto s = h.open("127.0.0.1", 40000);
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n250 HELP");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example> SIZE=100 body=8bitmime"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    testing::internal::CaptureStdout();
    EXPECT_EQ(s.data("Subject: hi\r\n\r\nbody\r\n"), "250 OK");  // CONTINUE: the host's default
    EXPECT_EQ(testing::internal::GetCapturedStdout(), "---------- MESSAGE FOLLOWS ----------\n"
                                                      "mail options: ['SIZE=100', 'BODY=8BITMIME']\n"
                                                      "\n"
                                                      "Subject: hi\n"
                                                      "X-Peer: ('127.0.0.1', 40000)\n"
                                                      "\n"
                                                      "body\n"
                                                      "------------ END MESSAGE ------------\n");
}

TEST(debugging, writes_to_stderr_when_asked)
{
    tk::host h;
    h.load(plugin, tk::node::map({{"stream", "stderr"}}));
    auto s = h.open("::1", 2525);
    testing::internal::CaptureStderr();
    testing::internal::CaptureStdout();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: x\r\n\r\nbody\r\n"), "250 OK");
    EXPECT_EQ(testing::internal::GetCapturedStdout(), "");
    const std::string err = testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("X-Peer: ('::1', 2525, 0, 0)"), std::string::npos) << err;
}

TEST(debugging, refuses_bad_configuration)
{
    tk::host h;
    EXPECT_NE(h.refusal(plugin, tk::node::map({{"stream", "printer"}})).find("config.stream: must be stdout or stderr"),
              std::string::npos);
    EXPECT_NE(h.refusal(plugin, tk::node::map({{"color", true}})).find("config.color: unknown key (known: stream)"),
              std::string::npos);
    EXPECT_NE(h.refusal(plugin, tk::node("stdout")).find("config must be a map"), std::string::npos);
}

}  // namespace
