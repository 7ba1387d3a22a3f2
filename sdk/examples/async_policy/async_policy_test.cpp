// SPDX-License-Identifier: Apache-2.0
// Unit test of async_policy through the SDK test kit: the server's own engine and hook chain
// drive a scripted SMTP conversation into the plugin (no server process, no sockets) and wait
// for its completions.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

namespace tk = asiosmtpd::testkit;

namespace {

tk::node policy_config() { return tk::node::map({{"deny", tk::node::list({"spam.example"})}, {"delay_ms", 5}}); }

TEST(async_policy, refuses_denied_domains_from_the_worker_thread)
{
    tk::host h;
    h.load(PLUGIN_FILE, policy_config());
    auto s = h.open();
    EXPECT_EQ(s.cmd("EHLO client.example").substr(0, 4), "250-");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<x@spam.example>"), "550 5.7.1 x@spam.example: recipient domain refused");
    EXPECT_EQ(s.cmd("RCPT TO:<y@ok.example>"), "250 OK");
    EXPECT_EQ(s.data("Subject: t\r\n\r\nhi\r\n"), "250 OK");
}

TEST(async_policy, rejects_unknown_config_keys)
{
    tk::host h;
    // The full key, and the closest known one for a typo.
    const std::string why = h.refusal(PLUGIN_FILE, tk::node::map({{"dealy_ms", 5}}));
    EXPECT_NE(why.find("config.dealy_ms: unknown key (did you mean 'delay_ms'?)"), std::string::npos) << why;
}

}  // namespace
