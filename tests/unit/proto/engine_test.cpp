// SPDX-License-Identifier: Apache-2.0
// The engine with hooks: what it asks, when it waits, and how verdicts become replies.
// (Hook-less conversations are in tests/transcripts/, replayed by transcript_test.cpp.)
#include "proto/engine.hpp"
#include "proto/engine_helpers.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace asiosmtpd::proto {
namespace {

TEST(engine, greeting_without_connect_hook)
{
    const settings s = base_settings();
    engine e(s);
    e.start();
    EXPECT_EQ(take(e), "220 mx.test asiosmtpd test\r\n");
    EXPECT_EQ(e.pending_hook(), nullptr);
}

TEST(engine, connect_hook_runs_before_greeting_and_early_input_waits)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::connect);
    engine e(s);
    e.start();
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->kind, hook_kind::connect);
    e.receive("NOOP\r\n");  // sent before the greeting: kept (aiosmtpd §2.1)
    EXPECT_EQ(take(e), "");
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "220 mx.test asiosmtpd test\r\n250 OK\r\n");
}

TEST(engine, connect_reject_serves_only_quit)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::connect);
    engine e(s);
    e.start();
    e.hook_done(make(verdict::reject, 554, "5.7.1 go away"));
    EXPECT_EQ(take(e), "554 5.7.1 go away\r\n");
    e.receive("EHLO x\r\nQUIT\r\n");
    EXPECT_EQ(take(e), "503 5.5.1 Error: connection rejected, send QUIT\r\n221 Bye\r\n");
    EXPECT_TRUE(e.close_requested());
}

TEST(engine, connect_tempfail_closes_with_421)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::connect);
    engine e(s);
    e.start();
    e.hook_done(make(verdict::tempfail));
    EXPECT_EQ(take(e), "421 4.7.0 mx.test Service not available, closing transmission channel\r\n");
    EXPECT_TRUE(e.close_requested());
}

TEST(engine, mail_hook_sees_address_and_params_and_reject_keeps_no_state)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::mail);
    engine e(s);
    e.start();
    take(e);
    e.receive("EHLO c\r\nMAIL FROM:<a@b.c> SIZE=10 body=8bitmime\r\nRCPT TO:<d@e.f>\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    const hook_request& r = *e.pending_hook();
    EXPECT_EQ(r.kind, hook_kind::mail);
    EXPECT_EQ(r.argument, "a@b.c");
    ASSERT_EQ(r.params.size(), 2u);
    EXPECT_EQ(r.params[0], "SIZE=10");
    EXPECT_EQ(r.params[1], "BODY=8BITMIME");
    // RCPT waits behind the hook: replies stay in order.
    EXPECT_EQ(take(e), "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n");
    e.hook_done(make(verdict::reject, 550, "5.7.1 not you"));
    EXPECT_EQ(take(e), "550 5.7.1 not you\r\n503 Error: need MAIL command\r\n");
    EXPECT_TRUE(e.current_envelope().mail_from.empty());
}

TEST(engine, accept_with_multiline_reply)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::mail);
    engine e(s);
    e.start();
    take(e);
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\n");
    e.hook_done(make(verdict::accept, 250, "first\nsecond"));
    EXPECT_EQ(take(e), "250 mx.test\r\n250-first\r\n250 second\r\n");
    EXPECT_EQ(e.current_envelope().mail_from, "a@b.c");
    EXPECT_EQ(e.current_envelope().mail_options, std::vector<std::string>{});
}

TEST(engine, rcpt_default_reject_and_tempfail_texts)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::rcpt);
    engine e(s);
    e.start();
    take(e);
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<x@y.z>\r\n");
    e.hook_done(make(verdict::reject));
    e.receive("RCPT TO:<x@y.z>\r\n");
    e.hook_done(make(verdict::tempfail));
    e.receive("RCPT TO:<ok@y.z>\r\n");
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "250 mx.test\r\n250 OK\r\n550 5.7.1 Rejected\r\n451 4.7.1 Try again later\r\n250 OK\r\n");
    EXPECT_EQ(e.current_envelope().rcpt_tos, std::vector<std::string>{"ok@y.z"});
}

TEST(engine, plugin_error_is_451_internal_and_session_goes_on)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::noop);
    engine e(s);
    e.start();
    take(e);
    e.receive("NOOP\r\nNOOP hi\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_FALSE(e.pending_hook()->has_argument);
    e.hook_done(make(verdict::error));
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_TRUE(e.pending_hook()->has_argument);
    EXPECT_EQ(e.pending_hook()->argument, "hi");
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "451 4.3.0 Error: internal\r\n250 OK\r\n");
    EXPECT_FALSE(e.close_requested());
}

TEST(engine, data_hook_gets_unstuffed_content_and_envelope_resets)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::data);
    engine e(s);
    e.start();
    take(e);
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nSubject: "
              "x\r\n\r\n..dot\r\nbare\nlf\r\n.\r\nNOOP\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->kind, hook_kind::data);
    EXPECT_EQ(e.pending_hook()->content, "Subject: x\r\n\r\n.dot\r\nbare\nlf\r\n");
    EXPECT_EQ(e.current_envelope().rcpt_tos.size(), 1u);
    e.hook_done(make(verdict::accept));
    EXPECT_EQ(take(e),
              "250 mx.test\r\n250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n250 OK\r\n");
    EXPECT_TRUE(e.current_envelope().mail_from.empty());
    EXPECT_EQ(e.transactions(), 1u);
}

TEST(engine, data_tempfail_close_replies_then_closes)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::data);
    engine e(s);
    e.start();
    take(e);
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n");
    e.hook_done(make(verdict::tempfail_close, 421, "4.3.0 queue full"));
    const std::string out = take(e);
    EXPECT_NE(out.find("354 End data"), std::string::npos);
    EXPECT_TRUE(out.ends_with("421 4.3.0 queue full\r\n"));
    EXPECT_TRUE(e.close_requested());
}

TEST(engine, lmtp_answers_once_per_recipient_after_data)
{
    settings s = base_settings();
    s.lmtp = true;
    engine e(s);
    e.start();
    take(e);
    e.receive("LHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<1@e.f>\r\nRCPT TO:<2@e.f>\r\nDATA\r\nhi\r\n.\r\n");
    const std::string out = take(e);
    EXPECT_TRUE(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n250 OK\r\n")) << out;
}

TEST(engine, lmtp_per_recipient_replies_and_a_plugin_error)
{
    settings s = base_settings();
    s.lmtp = true;
    s.hook_mask = hook_bit(hook_kind::data);
    const auto transaction = [&](hook_result r) {
        engine e(s);
        e.start();
        take(e);
        e.receive("LHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<1@e.f>\r\nRCPT TO:<2@e.f>\r\nDATA\r\nhi\r\n.\r\n");
        take(e);
        e.hook_done(std::move(r));
        return take(e);
    };
    hook_result split = make(verdict::accept);
    split.rcpt_replies = {{550, "5.1.1 no"}};
    EXPECT_EQ(transaction(split), "550 5.1.1 no\r\n250 OK\r\n");
    // A plugin error (a refused reply, a timeout, ...) answers every recipient 451, whatever
    // per-recipient replies the failed call left (plugin.h set_rcpt_reply).
    hook_result failed = make(verdict::error);
    failed.rcpt_replies = {{250, "2.0.0 first"}, {550, "5.1.1 no"}};
    EXPECT_EQ(transaction(failed), "451 4.3.0 Error: internal\r\n451 4.3.0 Error: internal\r\n");
}

TEST(engine, custom_command_ping)
{
    settings s = base_settings();
    s.commands.push_back({"PING", "PING", false});
    s.hook_mask = hook_bit(hook_kind::command);
    engine e(s);
    e.start();
    take(e);
    e.receive("ping\r\nHELP\r\nHELP PING\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->kind, hook_kind::command);
    EXPECT_EQ(e.pending_hook()->command_index, 0u);
    EXPECT_EQ(e.pending_hook()->verb, "PING");
    e.hook_done(make(verdict::accept, 259, "Pong"));
    EXPECT_EQ(take(e), "259 Pong\r\n"
                       "250 Supported commands: AUTH DATA EHLO HELO HELP MAIL NOOP PING QUIT RCPT RSET VRFY\r\n"
                       "250 Syntax: PING\r\n");
}

TEST(engine, custom_command_needing_helo)
{
    settings s = base_settings();
    s.commands.push_back({"XSTAT", "", true});
    s.hook_mask = hook_bit(hook_kind::command);
    engine e(s);
    e.start();
    take(e);
    e.receive("XSTAT\r\n");
    EXPECT_EQ(take(e), "503 Error: send HELO first\r\n");
}

TEST(engine, unknown_hook_accepting_does_not_use_the_budget)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::unknown);
    engine e(s);
    e.start();
    take(e);
    for (int i = 0; i < 6; ++i) {
        e.receive("XYZZY magic\r\n");
        ASSERT_NE(e.pending_hook(), nullptr);
        EXPECT_EQ(e.pending_hook()->verb, "XYZZY");
        EXPECT_EQ(e.pending_hook()->argument, "magic");
        e.hook_done(make(verdict::accept, 250, "Nothing happens"));
    }
    EXPECT_FALSE(e.close_requested());
    e.receive("B1\r\n");
    e.hook_done(make(verdict::none));
    EXPECT_TRUE(take(e).ends_with("500 Error: command \"B1\" not recognized\r\n"));
}

TEST(engine, ehlo_hook_can_replace_the_reply_or_add_nothing)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::ehlo);
    s.ehlo_keywords = {"XFOO bar"};
    engine e(s);
    e.start();
    take(e);
    e.receive("EHLO a\r\n");
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-XFOO bar\r\n250 HELP\r\n");
    EXPECT_EQ(e.helo_name(), "a");
    e.receive("EHLO b\r\n");
    e.hook_done(make(verdict::reject, 550, "go away"));
    EXPECT_EQ(take(e), "550 go away\r\n");
    EXPECT_EQ(e.helo_name(), "a");
}

TEST(engine, quit_hook_reply_then_close)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::quit);
    engine e(s);
    e.start();
    take(e);
    e.receive("QUIT\r\nNOOP\r\n");
    e.hook_done(make(verdict::accept, 221, "2.0.0 See you"));
    EXPECT_EQ(take(e), "221 2.0.0 See you\r\n");
    EXPECT_TRUE(e.close_requested());
}

// The host's timeout clock (slowloris): progress() moves only when a whole command line, AUTH
// line or message has been read, never for bytes that leave it incomplete.
TEST(engine, progress_moves_per_whole_line_and_message_not_per_byte)
{
    const settings s = base_settings();
    engine e(s);
    e.start();
    take(e);
    const std::uint64_t start = e.progress();
    for (const char c : std::string("EHLO client.example")) {
        e.receive(std::string_view(&c, 1));
        EXPECT_EQ(e.progress(), start);
    }
    e.receive("\r\n");
    EXPECT_EQ(e.progress(), start + 1);
    e.receive("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n");  // pipelined
    EXPECT_EQ(e.progress(), start + 4);
    EXPECT_TRUE(e.reading_data());
    e.receive("Subject: x\r\n\r\nbody\r\n");
    EXPECT_EQ(e.progress(), start + 4);  // message lines are not units: the rate bounds them
    e.receive(".\r");
    EXPECT_EQ(e.progress(), start + 4);
    e.receive("\n");
    EXPECT_EQ(e.progress(), start + 5);
    EXPECT_FALSE(e.reading_data());
    take(e);
    e.receive("NOOP");
    EXPECT_EQ(e.progress(), start + 5);
    e.receive("\n");  // a bare LF ends a command line too
    EXPECT_EQ(e.progress(), start + 6);
}

// The host logs every refused command (client, command, reply): the engine lists each 4xx/5xx
// answer to a command line, also one a plugin gave later, but not AUTH (logged on its own) or
// the reply to a message (the message line).
TEST(engine, refused_commands_are_listed_with_their_reply)
{
    settings s = base_settings();
    s.auth_require_tls = false;
    s.hook_mask = hook_bit(hook_kind::rcpt);
    engine e(s);
    e.start();
    e.receive("EHLO c\r\nRCPT TO:<x@y>\r\nXYZZY 1\r\nMAIL FROM:<a@>\r\nAUTH PLAIN AGEAYg==\r\n"
              "MAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    e.hook_done(make(verdict::reject, 550, "5.1.1 no such user"));
    e.receive("DATA\r\n");
    std::vector<refusal> r = e.take_refusals();
    ASSERT_EQ(r.size(), 5u);
    EXPECT_EQ(r[0].command, "RCPT TO:<x@y>");
    EXPECT_EQ(r[0].reply, "503 Error: need MAIL command");
    EXPECT_EQ(r[1].command, "XYZZY 1");
    EXPECT_EQ(r[1].reply, "500 Error: command \"XYZZY\" not recognized");
    EXPECT_EQ(r[2].command, "MAIL FROM:<a@>");
    EXPECT_EQ(r[2].reply.substr(0, 3), "553");
    EXPECT_EQ(r[3].command, "RCPT TO:<d@e.f>");  // the plugin's answer, after its hook
    EXPECT_EQ(r[3].reply, "550 5.1.1 no such user");
    EXPECT_EQ(r[4].command, "DATA");
    EXPECT_EQ(r[4].reply, "503 Error: need RCPT command");
    EXPECT_FALSE(e.has_refusals());
}

TEST(engine, progress_counts_auth_response_lines)
{
    settings s = base_settings();
    s.auth_require_tls = false;
    s.hook_mask = hook_bit(hook_kind::auth_check);
    engine e(s);
    e.start();
    e.receive("EHLO c\r\nAUTH LOGIN\r\n");
    take(e);
    const std::uint64_t before = e.progress();
    e.receive("YWxp");
    EXPECT_EQ(e.progress(), before);
    e.receive("Y2U=\r\n");
    EXPECT_EQ(e.progress(), before + 1);
    EXPECT_EQ(take(e), "334 UGFzc3dvcmQ6\r\n");
}

TEST(engine, idle_timeout_sends_421)
{
    const settings s = base_settings();
    engine e(s);
    e.start();
    take(e);
    e.timed_out();
    EXPECT_EQ(take(e), "421 4.4.2 mx.test Error: timeout exceeded\r\n");
    EXPECT_TRUE(e.close_requested());
    e.receive("NOOP\r\n");
    EXPECT_EQ(take(e), "");
}

TEST(engine, zero_copy_receive_path)
{
    const settings s = base_settings();
    engine e(s);
    e.start();
    take(e);
    const std::string input = "NOOP\r\nNOOP\r\n";
    for (char c : input) {
        auto room = e.prepare(16);
        ASSERT_GE(room.size(), 16u);
        room[0] = c;
        e.commit(1);
    }
    EXPECT_EQ(take(e), "250 OK\r\n250 OK\r\n");
}

TEST(engine, large_message_arrives_intact_in_any_chunks)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::data);
    engine e(s);
    e.start();
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    std::string body;
    for (int i = 0; i < 20000; ++i)
        body += (i % 7 == 0 ? ".." : "") + std::string(40, static_cast<char>('a' + i % 26)) + "\r\n";
    std::string expected;
    for (int i = 0; i < 20000; ++i)
        expected += (i % 7 == 0 ? "." : "") + std::string(40, static_cast<char>('a' + i % 26)) + "\r\n";
    const std::string wire = body + ".\r\n";
    for (std::size_t at = 0; at < wire.size(); at += 997) e.receive(std::string_view(wire).substr(at, 997));
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->content.size(), expected.size());
    EXPECT_TRUE(e.pending_hook()->content == expected);
}

TEST(engine, over_long_data_line_is_dropped_as_it_arrives)
{
    settings s = base_settings();
    s.data_size_limit = 0;
    engine e(s);
    e.start();
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n");
    take(e);
    const std::string chunk(64 * 1024, 'x');
    for (int i = 0; i < 64; ++i) e.receive(chunk);  // 4 MiB without CRLF
    EXPECT_LT(e.buffered(), 2048u);                 // not buffered
    e.receive("\r\n.\r\n");
    EXPECT_EQ(take(e), "500 Line too long (see RFC5321 4.5.3.1.6)\r\n");
}

}  // namespace
}  // namespace asiosmtpd::proto

namespace asiosmtpd::proto {
namespace {

settings starttls_settings()
{
    settings s = base_settings();
    s.starttls_available = true;
    return s;
}

TEST(engine_starttls, plaintext_pipelined_after_starttls_is_discarded)
{
    // CVE-2011-0411 (Postfix), CVE-2024-34083 (aiosmtpd): commands written together with
    // STARTTLS must never run inside the TLS session.
    const settings s = starttls_settings();
    engine e(s);
    e.start();
    take(e);
    e.receive("EHLO c\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<inject@evil>\r\n");
    EXPECT_EQ(take(e), "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 HELP\r\n"
                       "250 OK\r\n220 Ready to start TLS\r\n");
    EXPECT_TRUE(e.tls_requested());
    EXPECT_EQ(e.buffered(), 0u);
    e.tls_established();
    EXPECT_TRUE(e.tls_active());
    EXPECT_FALSE(e.tls_requested());
    EXPECT_EQ(take(e), "");
    // The session started over: no greeting remembered, no transaction, no STARTTLS offered.
    EXPECT_TRUE(e.helo_name().empty());
    EXPECT_TRUE(e.current_envelope().mail_from.empty());
    e.receive("RCPT TO:<d@e.f>\r\nEHLO c\r\nRCPT TO:<d@e.f>\r\nSTARTTLS\r\n");
    EXPECT_EQ(take(e), "503 Error: send HELO first\r\n"
                       "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-AUTH LOGIN PLAIN\r\n250 HELP\r\n"
                       "503 Error: need MAIL command\r\n"
                       "503 5.5.1 Error: TLS already active\r\n");
}

TEST(engine_starttls, a_refused_handshake_answers_454_and_the_session_goes_on)
{
    // The host cannot start a handshake now (too many in progress): 454 instead of 220, RFC 3207 §4.
    const settings s = starttls_settings();
    engine e(s);
    e.start();
    take(e);
    e.receive("EHLO c\r\nMAIL FROM:<a@b.c>\r\nSTARTTLS\r\nRSET\r\n");
    ASSERT_TRUE(e.tls_requested());
    e.refuse_tls(replies::tls_temporarily_unavailable);
    EXPECT_FALSE(e.tls_requested());
    EXPECT_FALSE(e.tls_active());
    EXPECT_EQ(take(e), "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 HELP\r\n"
                       "250 OK\r\n454 4.7.0 TLS not available due to temporary reason\r\n");
    // The greeting and the transaction are kept; the RSET pipelined after STARTTLS never ran.
    EXPECT_EQ(e.helo_name(), "c");
    EXPECT_EQ(e.current_envelope().mail_from, "a@b.c");
    e.receive("RCPT TO:<d@e.f>\r\nSTARTTLS\r\n");
    EXPECT_TRUE(e.tls_requested());
    e.refuse_tls("454 again");
    e.refuse_tls("454 twice");  // no longer in the TLS phase: nothing
    EXPECT_EQ(take(e), "250 OK\r\n454 again\r\n");
    e.receive("STARTTLS\r\n");
    EXPECT_EQ(take(e), "220 Ready to start TLS\r\n");
    e.tls_established();
    EXPECT_TRUE(e.tls_active());
}

TEST(engine_starttls, unavailable_and_syntax)
{
    const settings s = base_settings();
    engine e(s);
    e.start();
    take(e);
    e.receive("STARTTLS\r\nSTARTTLS x\r\n");
    EXPECT_EQ(take(e), "454 TLS not available\r\n501 Syntax: STARTTLS\r\n");
}

TEST(engine_starttls, implicit_tls_counts_as_tls)
{
    settings s = base_settings();
    s.auth_require_tls = true;
    engine e(s);
    e.set_tls_active(true);
    e.start();
    take(e);
    e.receive("EHLO c\r\nSTARTTLS\r\nAUTH PLAIN\r\n");
    // AUTH is advertised and passes the TLS gate (docs/behaviour.md).
    EXPECT_EQ(take(e), "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-AUTH LOGIN PLAIN\r\n250 HELP\r\n"
                       "503 5.5.1 Error: TLS already active\r\n"
                       "334 \r\n");
}

TEST(engine_starttls, require_starttls_lifts_after_the_handshake)
{
    settings s = starttls_settings();
    s.require_starttls = true;
    engine e(s);
    e.start();
    take(e);
    e.receive("MAIL FROM:<a@b.c>\r\nSTARTTLS\r\n");
    EXPECT_EQ(take(e), "530 Must issue a STARTTLS command first\r\n220 Ready to start TLS\r\n");
    e.tls_established();
    e.receive("HELO c\r\nMAIL FROM:<a@b.c>\r\n");
    EXPECT_EQ(take(e), "250 mx.test\r\n250 OK\r\n");
}

TEST(engine_starttls, a_plugin_refusing_the_tls_session_gets_554_for_all_but_quit)
{
    settings s = starttls_settings();
    s.hook_mask = hook_bit(hook_kind::starttls);
    engine e(s);
    e.start();
    take(e);
    e.receive("STARTTLS\r\n");
    take(e);
    e.tls_established();
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->kind, hook_kind::starttls);
    e.hook_done(make(verdict::reject));
    EXPECT_EQ(take(e), "");  // aiosmtpd: no reply to the handshake itself
    e.receive("EHLO c\r\nNOOP\r\nQUIT\r\n");
    EXPECT_EQ(take(e), "554 Command refused due to lack of security\r\n"
                       "554 Command refused due to lack of security\r\n221 Bye\r\n");
}

}  // namespace
}  // namespace asiosmtpd::proto

namespace asiosmtpd::proto {
namespace {

settings auth_settings()
{
    settings s = base_settings();
    s.auth_require_tls = false;
    s.hook_mask = hook_bit(hook_kind::auth_check) | hook_bit(hook_kind::auth_mechanism);
    s.auth_mechanisms = {"X-TEST"};
    return s;
}

engine& greeted(engine& e)
{
    e.start();
    e.receive("EHLO c\r\n");
    take(e);
    return e;
}

TEST(engine_auth, plain_credentials_go_to_the_check_hook)
{
    const settings s = auth_settings();
    engine e(s);
    greeted(e);
    e.receive("AUTH PLAIN " + std::string("YWRtaW4AYWxpY2UAc2VjcmV0") +
              "\r\nMAIL FROM:<a@b.c>\r\n");  // admin\0alice\0secret
    ASSERT_NE(e.pending_hook(), nullptr);
    const hook_request& r = *e.pending_hook();
    EXPECT_EQ(r.kind, hook_kind::auth_check);
    EXPECT_EQ(r.argument, "PLAIN");
    EXPECT_EQ(r.authzid, "admin");
    EXPECT_EQ(r.login, "alice");
    EXPECT_EQ(r.password, "secret");
    hook_result ok = make(verdict::accept);
    ok.identity = "alice@example.org";
    e.hook_done(ok);
    EXPECT_EQ(take(e), "235 2.7.0 Authentication successful\r\n250 OK\r\n");
    EXPECT_TRUE(e.authenticated());
    EXPECT_EQ(e.auth_login(), "alice@example.org");
}

TEST(engine_auth, login_steps_then_tempfail_and_failure_counting)
{
    settings s = auth_settings();
    s.auth_max_failures = 2;
    engine e(s);
    greeted(e);
    e.receive("AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n");
    EXPECT_EQ(take(e), "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->login, "alice");
    EXPECT_EQ(e.pending_hook()->password, "secret");
    e.hook_done(make(verdict::tempfail));
    EXPECT_EQ(take(e), "454 4.7.0 Temporary authentication failure\r\n");
    EXPECT_FALSE(e.take_auth_failure());  // a tempfail is not a failed credential
    e.receive("AUTH LOGIN YWxpY2U=\r\neA==\r\n");
    e.hook_done(make(verdict::none));  // nobody vouched
    EXPECT_EQ(take(e), "334 UGFzc3dvcmQ6\r\n535 5.7.8 Authentication credentials invalid\r\n");
    EXPECT_TRUE(e.take_auth_failure());
    e.receive("AUTH PLAIN AGEAYg==\r\n");
    e.hook_done(make(verdict::reject));
    EXPECT_EQ(take(e), "535 5.7.8 Authentication credentials invalid\r\n"
                       "421 4.7.0 mx.test Error: too many failed authentication attempts\r\n");
    EXPECT_TRUE(e.close_requested());
}

TEST(engine_auth, plugin_mechanism_challenges)
{
    const settings s = auth_settings();
    engine e(s);
    greeted(e);
    e.receive("AUTH x-test\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->kind, hook_kind::auth_mechanism);
    EXPECT_EQ(e.pending_hook()->verb, "X-TEST");
    EXPECT_FALSE(e.pending_hook()->has_argument);
    EXPECT_EQ(e.pending_hook()->step, 0u);
    hook_result challenge = make(verdict::challenge);
    challenge.challenge = "nonce";
    e.hook_done(challenge);
    EXPECT_EQ(take(e), "334 bm9uY2U=\r\n");
    e.receive("cmVzcG9uc2U=\r\n");
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_TRUE(e.pending_hook()->has_argument);
    EXPECT_EQ(e.pending_hook()->argument, "response");
    EXPECT_EQ(e.pending_hook()->step, 1u);
    hook_result ok = make(verdict::accept);
    ok.identity = "dave";
    e.hook_done(ok);
    EXPECT_EQ(take(e), "235 2.7.0 Authentication successful\r\n");
    EXPECT_EQ(e.auth_login(), "dave");
    e.receive("AUTH PLAIN AGEAYg==\r\n");
    EXPECT_EQ(take(e), "503 Already authenticated\r\n");
}

TEST(engine_auth, a_challenge_from_the_check_hook_is_an_internal_error)
{
    const settings s = auth_settings();
    engine e(s);
    greeted(e);
    e.receive("AUTH PLAIN AGEAYg==\r\nNOOP\r\n");
    e.hook_done(make(verdict::challenge));
    EXPECT_EQ(take(e), "451 4.3.0 Error: internal\r\n250 OK\r\n");
}

TEST(engine_auth, response_line_too_long)
{
    const settings s = auth_settings();
    engine e(s);
    greeted(e);
    e.receive("AUTH PLAIN\r\n" + std::string(5000, 'A') + "\r\nNOOP\r\n");
    EXPECT_EQ(take(e), "334 \r\n500 5.5.6 Authentication Exchange line is too long\r\n250 OK\r\n");
}

}  // namespace
}  // namespace asiosmtpd::proto
