// SPDX-License-Identifier: Apache-2.0
// The engine with server.enable_dsn (RFC 3461): EHLO, MAIL and RCPT reply by reply, what the
// envelope and the hooks keep, and aiosmtpd's replies with the switch off.
#include "proto/engine.hpp"
#include "proto/engine_helpers.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace asiosmtpd::proto {
namespace {

settings dsn_settings(bool on = true)
{
    settings s = base_settings();
    s.enable_dsn = on;
    return s;
}

// A greeted EHLO session.
struct session {
    explicit session(const settings& s) : e(s)
    {
        e.start();
        e.receive("EHLO c.example\r\n");
        take(e);
    }
    std::string send(std::string_view line)
    {
        e.receive(std::string(line) + "\r\n");
        while (e.pending_hook() != nullptr) e.hook_done({});
        return take(e);
    }
    engine e;
};

TEST(engine_dsn, ehlo_offers_dsn_only_when_on)
{
    for (const bool on : {false, true}) {
        const settings s = dsn_settings(on);
        engine e(s);
        e.start();
        take(e);
        e.receive("EHLO c.example\r\n");
        EXPECT_EQ(take(e), on ? "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-DSN\r\n250 HELP\r\n"
                              : "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n");
    }
}

TEST(engine_dsn, off_keeps_aiosmtpd_555)
{
    const settings s = dsn_settings(false);
    session c(s);
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=HDRS"),
              "555 MAIL FROM parameters not recognized or not implemented\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> ENVID=x"),
              "555 MAIL FROM parameters not recognized or not implemented\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example>"), "250 OK\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=NEVER"),
              "555 RCPT TO parameters not recognized or not implemented\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> ORCPT=rfc822;c@d.example"),
              "555 RCPT TO parameters not recognized or not implemented\r\n");
    // Off: the values are upper-cased as aiosmtpd does with every parameter.
    EXPECT_EQ(c.send("RSET"), "250 OK\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> SIZE=10"), "250 OK\r\n");
    EXPECT_EQ(c.e.current_envelope().mail_options, std::vector<std::string>{"SIZE=10"});
}

TEST(engine_dsn, mail_parameters)
{
    const settings s = dsn_settings();
    session c(s);
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=FULL ENVID=Q+2Bq SIZE=10"), "250 OK\r\n");
    // ENVID keeps its case (xtext); the keyword and RET are upper-cased as every parameter.
    EXPECT_EQ(c.e.current_envelope().mail_options, (std::vector<std::string>{"RET=FULL", "ENVID=Q+2Bq", "SIZE=10"}));
    EXPECT_EQ(c.send("RSET"), "250 OK\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<> ret=hdrs envid=abc"), "250 OK\r\n");
    EXPECT_EQ(c.e.current_envelope().mail_options, (std::vector<std::string>{"RET=HDRS", "ENVID=abc"}));
}

TEST(engine_dsn, mail_refusals)
{
    const settings s = dsn_settings();
    session c(s);
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=NONE"), "501 Bad RET parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET"), "501 Bad RET parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=FULL RET=FULL"), "501 Bad RET parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> ENVID=a=b"), "501 Bad ENVID parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> ENVID=a+0D"), "501 Bad ENVID parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> ENVID=a ENVID=a"), "501 Bad ENVID parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> ENVID=" + std::string(101, 'x')), "501 Bad ENVID parameter syntax\r\n");
    // aiosmtpd's own checks come first, and other parameters stay unknown.
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=NONE BODY=9BIT"),
              "501 Error: BODY can only be one of 7BIT, 8BITMIME\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=NONE SIZE=x"),
              "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=FULL NOTIFY=NEVER"),
              "555 MAIL FROM parameters not recognized or not implemented\r\n");
    EXPECT_FALSE(c.e.in_transaction());
    // The longest valid ENVID fits the line (RFC 3461 §4).
    const std::string longest =
        "MAIL FROM:<" + std::string(500, 'a') + "@b.example> RET=HDRS ENVID=" + std::string(100, 'x');
    EXPECT_GT(longest.size(), 548u);
    EXPECT_EQ(c.send(longest), "250 OK\r\n");
}

TEST(engine_dsn, rcpt_parameters)
{
    settings s = dsn_settings();
    s.hook_mask = hook_bit(hook_kind::rcpt);
    session c(s);
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example>"), "250 OK\r\n");
    c.e.receive("RCPT TO:<c@d.example> NOTIFY=success,failure ORCPT=rfc822;C@D.example\r\n");
    const hook_request* h = c.e.pending_hook();
    ASSERT_NE(h, nullptr);
    ASSERT_EQ(h->kind, hook_kind::rcpt);
    // The RCPT hook gets them (plugins: address_args::params), ORCPT's value in its case.
    EXPECT_EQ(std::vector<std::string>(h->params.begin(), h->params.end()),
              (std::vector<std::string>{"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;C@D.example"}));
    c.e.hook_done({});
    EXPECT_EQ(take(c.e), "250 OK\r\n");
    EXPECT_EQ(c.send("RCPT TO:<e@f.example>"), "250 OK\r\n");
    EXPECT_EQ(c.send("RCPT TO:<g@h.example> NOTIFY=NEVER"), "250 OK\r\n");
    const envelope& env = c.e.current_envelope();
    ASSERT_EQ(env.rcpt_tos.size(), 3u);
    ASSERT_EQ(env.rcpt_options.size(), 3u);
    EXPECT_EQ(env.rcpt_options[0], (std::vector<std::string>{"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;C@D.example"}));
    EXPECT_TRUE(env.rcpt_options[1].empty());
    EXPECT_EQ(env.rcpt_options[2], std::vector<std::string>{"NOTIFY=NEVER"});
    // A refused recipient keeps no parameters.
    c.e.receive("RCPT TO:<x@y.example> NOTIFY=DELAY\r\n");
    c.e.hook_done(hook_result{verdict::reject, 550, "5.1.1 no", {}, {}, {}});
    EXPECT_EQ(take(c.e), "550 5.1.1 no\r\n");
    EXPECT_EQ(c.e.current_envelope().rcpt_options.size(), 3u);
    EXPECT_EQ(c.send("RSET"), "250 OK\r\n");
    EXPECT_TRUE(c.e.current_envelope().rcpt_options.empty());
}

TEST(engine_dsn, rcpt_without_parameters_keeps_no_options)
{
    const settings s = dsn_settings();
    session c(s);
    c.send("MAIL FROM:<a@b.example>");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example>"), "250 OK\r\n");
    EXPECT_TRUE(c.e.current_envelope().rcpt_options.empty());
}

TEST(engine_dsn, rcpt_refusals)
{
    const settings s = dsn_settings();
    session c(s);
    c.send("MAIL FROM:<a@b.example>");
    const std::string bad_notify = "501 Error: Bad NOTIFY parameter syntax\r\n";
    const std::string bad_orcpt = "501 Error: Bad ORCPT parameter syntax\r\n";
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=NEVER,SUCCESS"), bad_notify);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=SOMETIMES"), bad_notify);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY"), bad_notify);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=DELAY NOTIFY=DELAY"), bad_notify);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> ORCPT=c@d.example"), bad_orcpt);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> ORCPT=rfc822;"), bad_orcpt);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> ORCPT=rfc822;a=b"), bad_orcpt);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> ORCPT=rfc822;a ORCPT=rfc822;a"), bad_orcpt);
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> ORCPT=rfc822;" + std::string(494, 'a')), bad_orcpt);
    // Other RCPT parameters are still unknown (aiosmtpd's 555), MAIL's DSN ones too.
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=NEVER FOO=1"),
              "555 RCPT TO parameters not recognized or not implemented\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> RET=FULL"), "555 RCPT TO parameters not recognized or not implemented\r\n");
    EXPECT_TRUE(c.e.current_envelope().rcpt_tos.empty());
    // The longest valid ORCPT, with NOTIFY, fits the line.
    const std::string longest = "RCPT TO:<" + std::string(450, 'c') +
                                "@d.example> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;" + std::string(493, 'a');
    EXPECT_GT(longest.size(), 1001u);
    EXPECT_EQ(c.send(longest), "250 OK\r\n");
}

TEST(engine_dsn, helo_session_takes_no_parameters)
{
    const settings s = dsn_settings();
    engine e(s);
    e.start();
    e.receive("HELO c.example\r\nMAIL FROM:<a@b.example> RET=FULL\r\nMAIL FROM:<a@b.example>\r\n"
              "RCPT TO:<c@d.example> NOTIFY=NEVER\r\n");
    EXPECT_EQ(take(e), "220 mx.test asiosmtpd test\r\n250 mx.test\r\n501 Syntax: MAIL FROM: <address>\r\n250 OK\r\n"
                       "501 Syntax: RCPT TO: <address>\r\n");
}

TEST(engine_dsn, lines_longer_than_dsn_allows_are_refused)
{
    const settings s = dsn_settings();
    session c(s);
    c.send("MAIL FROM:<a@b.example>");
    // 512 + 536: one byte more is too long.
    const std::string rcpt = "RCPT TO:<c@d.example> ORCPT=rfc822;" + std::string(1048 - 35 + 1, 'a');
    ASSERT_EQ(rcpt.size(), 1049u);
    EXPECT_EQ(c.send(rcpt), "500 Command line too long\r\n");
    EXPECT_EQ(c.send("NOOP"), "250 OK\r\n");
}

TEST(engine_dsn, with_enhanced_status_codes)
{
    settings s = dsn_settings();
    s.enable_enhanced_status_codes = true;
    session c(s);
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=NONE"), "501 5.5.4 Bad RET parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> ENVID=+"), "501 5.5.4 Bad ENVID parameter syntax\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> ENVID=x"), "250 2.1.0 OK\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=X"), "501 5.5.4 Error: Bad NOTIFY parameter syntax\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> ORCPT=x"), "501 5.5.4 Error: Bad ORCPT parameter syntax\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=FAILURE"), "250 2.1.5 OK\r\n");
}

}  // namespace
}  // namespace asiosmtpd::proto
