// SPDX-License-Identifier: Apache-2.0
// The engine with server.enable_enhanced_status_codes (RFC 2034): every reply it sends, reply
// by reply, with its RFC 3463 code (docs/behaviour.md lists them). With the switch off the
// replies are aiosmtpd's: the transcripts and the other engine tests run with it off.
#include "proto/engine.hpp"
#include "proto/engine_helpers.hpp"
#include "proto/enhanced_codes.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace asiosmtpd::proto {
namespace {

settings codes_on()
{
    settings s = base_settings();
    s.enable_enhanced_status_codes = true;
    return s;
}

// Starts a session (its greeting checked) and answers every hook with `hooks`.
struct session {
    explicit session(const settings& s, hook_result hooks = {}) : e(s), answer(std::move(hooks))
    {
        e.start();
        while (e.pending_hook() != nullptr) e.hook_done(answer);
        greeting = take(e);
    }
    std::string send(std::string_view bytes)
    {
        e.receive(bytes);
        while (e.pending_hook() != nullptr) e.hook_done(answer);
        return take(e);
    }
    engine e;
    hook_result answer;
    std::string greeting;
};

TEST(enhanced_codes, recognises_a_code)
{
    EXPECT_TRUE(has_enhanced_code("250 2.1.0 Ok"));
    EXPECT_TRUE(has_enhanced_code("550-5.7.1 no"));
    EXPECT_TRUE(has_enhanced_code("550 5.7.1"));
    EXPECT_TRUE(has_enhanced_code("556 5.1.10 x"));
    EXPECT_FALSE(has_enhanced_code("550 4.7.1 wrong class"));
    EXPECT_FALSE(has_enhanced_code("250 OK"));
    EXPECT_FALSE(has_enhanced_code("250 2.1 x"));
    EXPECT_FALSE(has_enhanced_code("250 2.1.0x"));
    EXPECT_FALSE(has_enhanced_code("250 2.1234.0 x"));
    EXPECT_FALSE(has_enhanced_code("250 "));
}

TEST(enhanced_codes, ehlo_advertises_and_greeting_helo_ehlo_get_none)
{
    const settings s = codes_on();
    session c(s);
    EXPECT_EQ(c.greeting, "220 mx.test asiosmtpd test\r\n");  // RFC 2034 §3
    EXPECT_EQ(c.send("EHLO c.example\r\n"),
              "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n");
    EXPECT_EQ(c.send("HELO c.example\r\n"), "250 mx.test\r\n");
    EXPECT_EQ(c.send("HELO\r\n"), "501 Syntax: HELO hostname\r\n");
    EXPECT_EQ(c.send("EHLO\r\n"), "501 Syntax: EHLO hostname\r\n");
}

TEST(enhanced_codes, off_is_aiosmtpd)
{
    settings s = codes_on();
    s.enable_enhanced_status_codes = false;
    session c(s);
    EXPECT_EQ(
        c.send("EHLO c.example\r\nNOOP\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nQUIT\r\n"),
        "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n250 OK\r\n250 OK\r\n250 OK\r\n221 Bye\r\n");
}

TEST(enhanced_codes, line_checks_and_unknown_commands)
{
    settings s = codes_on();
    s.command_size_limit = 64;
    session c(s);
    EXPECT_EQ(c.send("\r\n"), "500 5.5.2 Error: bad syntax\r\n");
    EXPECT_EQ(c.send("\x80X\r\n"), "500 5.5.2 Error: bad syntax\r\n");
    EXPECT_EQ(c.send("NOOP \xc3\xa9\r\n"), "500 5.5.2 Error: strict ASCII mode\r\n");
    EXPECT_EQ(c.send("NOOP " + std::string(70, 'x') + "\r\n"), "500 5.5.2 Command line too long\r\n");
    EXPECT_EQ(c.send(std::string(1100, 'x') + "\r\n"), "500 5.5.2 Command line too long\r\n");
    EXPECT_EQ(c.send("FOO\r\n"), "500 5.5.2 Error: command \"FOO\" not recognized\r\n");
    EXPECT_EQ(c.send("BAR\r\nBAZ\r\nQUX\r\n"), "500 5.5.2 Error: command \"BAR\" not recognized\r\n"
                                               "500 5.5.2 Error: command \"BAZ\" not recognized\r\n"
                                               "500 5.5.2 Error: command \"QUX\" not recognized\r\n");
    EXPECT_EQ(c.send("XYZ\r\n"), "502 5.5.1 Too many unrecognized commands, goodbye.\r\n");
    EXPECT_TRUE(c.e.close_requested());
}

TEST(enhanced_codes, simple_commands)
{
    const settings s = codes_on();
    session c(s);
    EXPECT_EQ(c.send("NOOP\r\n"), "250 2.0.0 OK\r\n");
    EXPECT_EQ(c.send("RSET\r\n"), "250 2.0.0 OK\r\n");
    EXPECT_EQ(c.send("RSET x\r\n"), "501 5.5.4 Syntax: RSET\r\n");
    EXPECT_EQ(c.send("VRFY\r\n"), "501 5.5.4 Syntax: VRFY <address>\r\n");
    EXPECT_EQ(c.send("VRFY a@b.example\r\n"),
              "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
    EXPECT_EQ(c.send("VRFY @@\r\n"), "502 5.1.3 Could not VRFY @@\r\n");
    EXPECT_EQ(c.send("EXPN x\r\n"), "502 5.5.1 EXPN not implemented\r\n");
    EXPECT_EQ(c.send("HELP\r\n"),
              "250 2.0.0 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n");
    EXPECT_EQ(c.send("HELP noop\r\n"), "250 2.0.0 Syntax: NOOP [ignored]\r\n");
    EXPECT_EQ(c.send("HELP FOO\r\n"),
              "501 5.5.4 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n");
    EXPECT_EQ(c.send("STARTTLS\r\n"), "454 4.7.0 TLS not available\r\n");
    EXPECT_EQ(c.send("STARTTLS x\r\n"), "501 5.5.4 Syntax: STARTTLS\r\n");
    EXPECT_EQ(c.send("QUIT x\r\n"), "501 5.5.4 Syntax: QUIT\r\n");
    EXPECT_EQ(c.send("QUIT\r\n"), "221 2.0.0 Bye\r\n");
}

TEST(enhanced_codes, transaction)
{
    settings s = codes_on();
    s.data_size_limit = 100;
    session c(s);
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example>\r\n"), "503 5.5.1 Error: send HELO first\r\n");
    EXPECT_EQ(c.send("RCPT TO:<a@b.example>\r\n"), "503 5.5.1 Error: send HELO first\r\n");
    EXPECT_EQ(c.send("DATA\r\n"), "503 5.5.1 Error: send HELO first\r\n");
    c.send("HELO c.example\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> SIZE=1\r\n"), "501 5.5.4 Syntax: MAIL FROM: <address>\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example>\r\n"), "503 5.5.1 Error: need MAIL command\r\n");
    c.send("EHLO c.example\r\n");
    EXPECT_EQ(c.send("MAIL TO:<a@b.example>\r\n"), "501 5.5.4 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n");
    EXPECT_EQ(c.send("MAIL FROM:a@\r\n"), "553 5.1.3 Error: malformed address\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> BODY=9BIT\r\n"),
              "501 5.5.4 Error: BODY can only be one of 7BIT, 8BITMIME\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> SMTPUTF8=1\r\n"), "501 5.5.4 Error: SMTPUTF8 takes no arguments\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> SMTPUTF8\r\n"), "501 5.5.4 Error: SMTPUTF8 disabled\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> SIZE=101\r\n"),
              "552 5.3.4 Error: message size exceeds fixed maximum message size\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example> RET=FULL\r\n"),
              "555 5.5.4 MAIL FROM parameters not recognized or not implemented\r\n");
    EXPECT_EQ(c.send("DATA\r\n"), "503 5.5.1 Error: need RCPT command\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example>\r\n"), "250 2.1.0 OK\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example>\r\n"), "503 5.5.1 Error: nested MAIL command\r\n");
    EXPECT_EQ(c.send("DATA\r\n"), "503 5.5.1 Error: need RCPT command\r\n");
    EXPECT_EQ(c.send("RCPT TO:c@d.example\r\n"), "250 2.1.5 OK\r\n");
    EXPECT_EQ(c.send("RCPT FROM:<c@d.example>\r\n"), "501 5.5.4 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n");
    EXPECT_EQ(c.send("RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"),
              "555 5.5.4 RCPT TO parameters not recognized or not implemented\r\n");
    EXPECT_EQ(c.send("DATA x\r\n"), "501 5.5.4 Syntax: DATA\r\n");
    EXPECT_EQ(c.send("DATA\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n");  // 3xx: none
    EXPECT_EQ(c.send("Subject: x\r\n\r\nhi\r\n.\r\n"), "250 2.0.0 OK\r\n");
    // The message errors, after the final dot.
    c.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
    EXPECT_EQ(c.send(std::string(120, 'x') + "\r\n.\r\n"), "552 5.3.4 Error: Too much mail data\r\n");
    s.data_size_limit = 0;
    session d(s);
    d.send("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
    EXPECT_EQ(d.send(std::string(1200, 'x') + "\r\n.\r\n"), "500 5.5.2 Line too long (see RFC5321 4.5.3.1.6)\r\n");
}

TEST(enhanced_codes, strict_ascii_message)
{
    settings s = codes_on();
    s.decode_data = true;
    session c(s);
    c.send("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
    EXPECT_EQ(c.send("caf\xc3\xa9\r\n.\r\n"), "500 5.6.0 Error: strict ASCII mode\r\n");
}

TEST(enhanced_codes, starttls)
{
    settings s = codes_on();
    s.starttls_available = true;
    s.require_starttls = true;
    session c(s);
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example>\r\n"), "530 5.7.0 Must issue a STARTTLS command first\r\n");
    EXPECT_EQ(c.send("STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
    c.e.tls_established();
    EXPECT_EQ(c.send("STARTTLS\r\n"), "503 5.5.1 Error: TLS already active\r\n");

    // The host refuses the handshake: the 220 it had queued (with its code) is taken back.
    session d(s);
    d.e.receive("STARTTLS\r\n");
    ASSERT_TRUE(d.e.tls_requested());
    d.e.refuse_tls("454 4.7.0 TLS not available due to temporary reason");
    EXPECT_EQ(take(d.e), "454 4.7.0 TLS not available due to temporary reason\r\n");

    // A STARTTLS hook vetoed the TLS session.
    s.hook_mask = hook_bit(hook_kind::starttls);
    session v(s, make(verdict::reject));
    v.send("STARTTLS\r\n");
    v.e.tls_established();
    while (v.e.pending_hook() != nullptr) v.e.hook_done(make(verdict::reject));
    EXPECT_EQ(v.send("NOOP\r\n"), "554 5.7.0 Command refused due to lack of security\r\n");
}

TEST(enhanced_codes, auth)
{
    settings s = codes_on();
    s.auth_require_tls = false;
    s.hook_mask = hook_bit(hook_kind::auth_check);
    session c(s, make(verdict::accept));
    EXPECT_EQ(c.send("AUTH PLAIN\r\n"), "503 5.5.1 Error: send EHLO first\r\n");
    c.send("HELO c.example\r\n");
    EXPECT_EQ(c.send("AUTH PLAIN\r\n"), "500 5.5.1 Error: command 'AUTH' not recognized\r\n");
    c.send("EHLO c.example\r\n");
    EXPECT_EQ(c.send("AUTH\r\n"), "501 5.5.4 Not enough value\r\n");
    EXPECT_EQ(c.send("AUTH A B C\r\n"), "501 5.5.4 Too many values\r\n");
    EXPECT_EQ(c.send("AUTH FOO\r\n"), "504 5.5.4 Unrecognized authentication type\r\n");
    EXPECT_EQ(c.send("AUTH PLAIN\r\n"), "334 \r\n");
    EXPECT_EQ(c.send("*\r\n"), "501 5.7.0 Auth aborted\r\n");
    EXPECT_EQ(c.send("AUTH PLAIN AHVzZXIAcGFzcw==\r\n"), "235 2.7.0 Authentication successful\r\n");
    EXPECT_EQ(c.send("AUTH PLAIN\r\n"), "503 5.5.1 Already authenticated\r\n");

    settings r = codes_on();
    r.auth_required = true;
    session q(r);
    EXPECT_EQ(q.send("EHLO c.example\r\nMAIL FROM:<a@b.example>\r\n").substr(0, 4), "250-");
    EXPECT_EQ(q.send("HELP\r\n"), "530 5.7.0 Authentication required\r\n");
    EXPECT_EQ(q.send("AUTH LOGIN\r\n"), "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
}

TEST(enhanced_codes, plugin_replies_are_left_alone)
{
    settings s = codes_on();
    s.hook_mask = hook_bit(hook_kind::mail) | hook_bit(hook_kind::rcpt) | hook_bit(hook_kind::noop) |
                  hook_bit(hook_kind::unknown);
    engine e(s);
    e.start();
    e.receive("EHLO c.example\r\n");
    take(e);
    const auto answer = [&](std::string_view line, hook_result r) {
        e.receive(line);
        e.hook_done(std::move(r));
        return take(e);
    };
    // A plugin's reply without a code gets none; one with a code keeps it.
    EXPECT_EQ(answer("MAIL FROM:<a@b.example>\r\n", make(verdict::reject, 550, "not you")), "550 not you\r\n");
    EXPECT_EQ(answer("MAIL FROM:<a@b.example>\r\n", make(verdict::reject, 553, "5.7.1 not you")),
              "553 5.7.1 not you\r\n");
    EXPECT_EQ(answer("MAIL FROM:<a@b.example>\r\n", make(verdict::accept, 250, "fine")), "250 fine\r\n");
    EXPECT_EQ(answer("RCPT TO:<c@d.example>\r\n", make(verdict::tempfail)), "451 4.7.1 Try again later\r\n");
    EXPECT_EQ(answer("RCPT TO:<c@d.example>\r\n", make(verdict::reject)), "550 5.7.1 Rejected\r\n");
    EXPECT_EQ(answer("RCPT TO:<c@d.example>\r\n", make(verdict::error)), "451 4.3.0 Error: internal\r\n");
    EXPECT_EQ(answer("RCPT TO:<c@d.example>\r\n", make(verdict::none)), "250 2.1.5 OK\r\n");
    EXPECT_EQ(answer("NOOP\r\n", make(verdict::accept)), "250 2.0.0 OK\r\n");
    EXPECT_EQ(answer("XFOO\r\n", make(verdict::accept)), "250 2.0.0 OK\r\n");
    EXPECT_EQ(answer("XFOO\r\n", make(verdict::none)), "500 5.5.2 Error: command \"XFOO\" not recognized\r\n");
}

TEST(enhanced_codes, lmtp)
{
    settings s = codes_on();
    s.lmtp = true;
    session c(s);
    EXPECT_EQ(c.send("LHLO c.example\r\n"),
              "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 HELP\r\n");
    EXPECT_EQ(c.send("HELO c.example\r\n"), "500 Error: command \"HELO\" not recognized\r\n");  // a reply to HELO
    EXPECT_EQ(c.send("LHLO\r\n"), "501 Syntax: EHLO hostname\r\n");
    EXPECT_EQ(c.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nRCPT TO:<e@f.example>\r\nDATA\r\n"),
              "250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    EXPECT_EQ(c.send("hi\r\n.\r\n"), "250 2.0.0 OK\r\n250 2.0.0 OK\r\n");
}

TEST(enhanced_codes, closing_replies_keep_theirs)
{
    settings s = codes_on();
    s.call_limit_enabled = true;
    s.call_limit_default = 1;
    session c(s);
    EXPECT_EQ(c.send("NOOP\r\nNOOP\r\n"), "250 2.0.0 OK\r\n421 4.7.0 NOOP sent too many times\r\n");
    const settings on = codes_on();
    session t(on);
    t.e.timed_out();
    EXPECT_EQ(take(t.e), "421 4.4.2 mx.test Error: timeout exceeded\r\n");
}

TEST(enhanced_codes, every_fixed_reply_has_its_own_code)
{
    // The replies the engine sends from replies.hpp without a code: each has one of its own in
    // the table (not the X.0.0 of a reply nobody listed).
    const std::string_view fixed[] = {
        replies::bye,
        replies::ready_to_start_tls,
        replies::cannot_vrfy,
        replies::tls_not_available,
        replies::bad_syntax,
        replies::line_too_long,
        replies::data_line_too_long,
        replies::auth_not_recognized,
        replies::syntax_quit,
        replies::syntax_rset,
        replies::syntax_data,
        replies::syntax_starttls,
        replies::syntax_vrfy,
        replies::syntax_mail,
        replies::syntax_mail_esmtp,
        replies::syntax_rcpt,
        replies::syntax_rcpt_esmtp,
        replies::bad_body,
        replies::smtputf8_no_args,
        replies::smtputf8_disabled,
        replies::auth_not_enough,
        replies::auth_too_many,
        replies::expn_not_implemented,
        replies::need_helo,
        replies::need_ehlo,
        replies::nested_mail,
        replies::need_mail,
        replies::need_rcpt,
        replies::already_authenticated,
        replies::need_starttls,
        replies::lack_of_security,
        replies::size_exceeded,
        replies::too_much_data,
        replies::mail_params_unknown,
        replies::rcpt_params_unknown,
        replies::dsn_bad_ret,
        replies::dsn_bad_envid,
        replies::dsn_bad_notify,
        replies::dsn_bad_orcpt,
        replies::strict_ascii,
    };
    for (const std::string_view line : fixed) {
        const std::string_view code = enhanced_code(line, "NOOP");
        ASSERT_FALSE(code.empty()) << line;
        if (line[0] != '2') {  // 2.0.0 is a success's own code
            EXPECT_NE(code.substr(1), ".0.0") << line;
        }
        EXPECT_EQ(code[0], line[0]) << line;
    }
    EXPECT_EQ(enhanced_code(replies::ok, "MAIL"), "2.1.0");
    EXPECT_EQ(enhanced_code(replies::ok, "RCPT"), "2.1.5");
    EXPECT_EQ(enhanced_code(replies::ok, "DATA"), "2.0.0");
    // Unlisted: X.0.0; 3xx and replies to HELO/EHLO/LHLO: none; with a code already: none.
    EXPECT_EQ(enhanced_code("554 something new", "BDAT"), "5.0.0");
    EXPECT_EQ(enhanced_code("354 go ahead", "DATA"), "");
    EXPECT_EQ(enhanced_code("250 OK", "HELO"), "");
    EXPECT_EQ(enhanced_code("501 Syntax: EHLO hostname", "LHLO"), "");
    EXPECT_EQ(enhanced_code("550 5.7.1 Rejected", "MAIL"), "");
}

}  // namespace
}  // namespace asiosmtpd::proto
