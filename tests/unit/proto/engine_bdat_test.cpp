// SPDX-License-Identifier: Apache-2.0
// BDAT (RFC 3030 CHUNKING and BINARYMIME, server.enable_chunking), reply by reply: chunks are
// binary message data (no dot-stuffing, no line rules), each BDAT is answered after its octets,
// refused chunks are read and dropped (never taken for commands), the size limit, the failed
// message's later chunks, DATA mixed in, LMTP, DATA_CHUNK streaming and the DATA hook.
#include "proto/engine.hpp"
#include "proto/engine_helpers.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace asiosmtpd::proto {
namespace {

settings chunking(std::uint32_t hooks = 0)
{
    settings s = base_settings();
    s.enable_chunking = true;
    s.hook_mask = hooks;
    return s;
}

// In a transaction with one recipient (greeted first, once); the replies so far are dropped.
void open_transaction(engine& e, std::string_view mail = "MAIL FROM:<a@b>")
{
    if (e.helo_name().empty()) {
        e.start();
        e.receive("EHLO c\r\n");
    }
    e.receive(std::string(mail) + "\r\nRCPT TO:<c@d>\r\n");
    take(e);
}

std::string bdat(std::string_view chunk, bool last = false)
{
    return "BDAT " + std::to_string(chunk.size()) + (last ? " LAST" : "") + "\r\n" + std::string(chunk);
}

TEST(engine_bdat, ehlo_offers_chunking_and_binarymime_only_when_enabled)
{
    settings off = chunking();
    off.enable_chunking = false;
    engine plain(off);
    plain.start();
    plain.receive("EHLO c\r\nBDAT 5 LAST\r\n");
    EXPECT_EQ(take(plain), "220 mx.test asiosmtpd test\r\n250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                           "250 HELP\r\n500 Error: command \"BDAT\" not recognized\r\n");

    const settings s = chunking();
    engine e(s);
    e.start();
    e.receive("EHLO c\r\nHELP\r\nHELP BDAT\r\n");
    EXPECT_EQ(take(e), "220 mx.test asiosmtpd test\r\n250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                       "250-BINARYMIME\r\n250-CHUNKING\r\n250 HELP\r\n"
                       "250 Supported commands: AUTH BDAT DATA EHLO HELO HELP MAIL NOOP QUIT RCPT RSET VRFY\r\n"
                       "250 Syntax: BDAT <size> [LAST]\r\n");

    settings decoded = chunking();
    decoded.decode_data = true;  // no 8BITMIME, so no BINARYMIME either
    engine d(decoded);
    d.start();
    d.receive("EHLO c\r\n");
    EXPECT_EQ(take(d), "220 mx.test asiosmtpd test\r\n250-mx.test\r\n250-SIZE 33554432\r\n250-CHUNKING\r\n"
                       "250 HELP\r\n");
}

TEST(engine_bdat, chunks_are_binary_and_the_message_is_their_concatenation)
{
    const settings s = chunking(hook_bit(hook_kind::data));
    engine e(s);
    open_transaction(e);
    // Lines that DATA would unstuff or end at, a bare LF, a NUL, a 2000-byte line: all data.
    const std::string one = "Subject: x\r\n\r\n.\r\n..dots\r\nbare\nlf\r";
    const std::string two = std::string("\0\xff", 2) + std::string(2000, 'y') + "\r\n.\r\n";
    e.receive(bdat(one) + bdat(two));
    EXPECT_EQ(take(e), "250 2.0.0 Ok: " + std::to_string(one.size()) +
                           " octets received\r\n250 2.0.0 Ok: " + std::to_string(two.size()) + " octets received\r\n");
    EXPECT_TRUE(e.in_transaction());
    e.receive("BDAT 0 LAST\r\n");
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(r->kind, hook_kind::data);
    EXPECT_EQ(r->content, one + two);
    EXPECT_EQ(r->content_size, one.size() + two.size());
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "250 OK\r\n");
    EXPECT_FALSE(e.in_transaction());
    const auto t = e.take_transaction();
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->size, one.size() + two.size());
    EXPECT_EQ(t->code, 250);
}

TEST(engine_bdat, chunk_octets_that_look_like_commands_are_data_at_every_split)
{
    // The chunks hold whole SMTP commands; pipelined after them, real ones.
    const std::string evil = "QUIT\r\nRSET\r\nMAIL FROM:<x@y>\r\n";
    const std::string wire = bdat(evil) + bdat("BDAT 3 LAST\r\nabc", true) + "NOOP\r\n";
    for (const std::size_t step : {1u, 2u, 5u, 13u, 4096u}) {
        const settings s = chunking(hook_bit(hook_kind::data));
        engine e(s);
        open_transaction(e);
        std::size_t at = 0;
        std::string out;
        while (at < wire.size() && !e.pending_hook()) {
            const std::size_t n = std::min(step, wire.size() - at);
            e.receive(std::string_view(wire).substr(at, n));
            at += n;
        }
        const hook_request* r = e.pending_hook();
        ASSERT_NE(r, nullptr) << "step " << step;
        EXPECT_EQ(r->content, evil + "BDAT 3 LAST\r\nabc") << "step " << step;
        e.hook_done(make(verdict::none));
        if (at < wire.size()) e.receive(std::string_view(wire).substr(at));
        EXPECT_EQ(take(e), "250 2.0.0 Ok: " + std::to_string(evil.size()) + " octets received\r\n250 OK\r\n250 OK\r\n")
            << "step " << step;
        EXPECT_FALSE(e.close_requested());
    }
}

TEST(engine_bdat, pipelined_after_a_data_message_with_every_hook_waiting)
{
    // DATA, then a BDAT transaction, all in one write, while MAIL, RCPT and DATA hooks each wait
    // for their plugin (the proxy plugin's case), at every split.
    const std::string wire = "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<one@d>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\n"
                             "MAIL FROM:<a@b>\r\nRCPT TO:<two@d>\r\n" +
                             bdat("Sub") + bdat("ject: x\r\n\r\n.dot\r\n", true) + "QUIT\r\n";
    for (const std::size_t step : {1u, 2u, 3u, 7u, 16u, 4096u}) {
        const settings s = chunking(hook_bit(hook_kind::mail) | hook_bit(hook_kind::rcpt) | hook_bit(hook_kind::data));
        engine e(s);
        e.start();
        std::vector<std::string> messages;
        std::size_t at = 0;
        for (int guard = 0; guard < 10000 && !e.close_requested(); ++guard) {
            if (const hook_request* r = e.pending_hook()) {
                if (r->kind == hook_kind::data) messages.emplace_back(r->content);
                e.hook_done(make(verdict::none));
                continue;
            }
            if (at == wire.size()) break;
            const std::size_t n = std::min(step, wire.size() - at);
            e.receive(std::string_view(wire).substr(at, n));
            at += n;
        }
        ASSERT_EQ(messages.size(), 2u) << step;
        EXPECT_EQ(messages[0], "Subject: x\r\n\r\n.dot\r\n") << step;
        EXPECT_EQ(messages[1], messages[0]) << step;
        EXPECT_TRUE(e.close_requested()) << step;
        EXPECT_NE(take(e).find("250 OK\r\n250 2.0.0 Ok: 3 octets received\r\n250 OK\r\n221 Bye\r\n"), std::string::npos)
            << step;
    }
}

TEST(engine_bdat, bdat_zero_last_and_an_empty_message)
{
    const settings s = chunking(hook_bit(hook_kind::data));
    engine e(s);
    open_transaction(e);
    e.receive("BDAT 0 LAST\r\n");
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    EXPECT_TRUE(r->content.empty());
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "250 OK\r\n");
    // "BDAT 0" before LAST is an empty chunk, not an error; LAST in lower case is LAST.
    open_transaction(e, "MAIL FROM:<>");
    e.receive("BDAT 0\r\nBDAT 2 last\r\nhi");
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->content, "hi");
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "250 2.0.0 Ok: 0 octets received\r\n250 OK\r\n");
}

TEST(engine_bdat, sequence_errors_skip_the_chunk_and_answer_503)
{
    const settings s = chunking();
    engine e(s);
    e.start();
    take(e);
    // Before HELO, without MAIL, without RCPT: refused, and the octets are never commands.
    e.receive("BDAT 6\r\nQUIT\r\nEHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nMAIL FROM:<a@b>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    EXPECT_EQ(take(e), "503 Error: send HELO first\r\n250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n"
                       "250-BINARYMIME\r\n250-CHUNKING\r\n250 HELP\r\n503 Error: need RCPT command\r\n250 OK\r\n"
                       "503 Error: need RCPT command\r\n250 OK\r\n");
    EXPECT_FALSE(e.close_requested());
    EXPECT_TRUE(e.in_transaction());  // as DATA's 503: the transaction stays
    const auto refused = e.take_refusals();
    ASSERT_EQ(refused.size(), 3u);
    EXPECT_EQ(refused[0].command, "BDAT 6");
    EXPECT_EQ(refused[0].reply, "503 Error: send HELO first");
    EXPECT_EQ(refused[2].command, "BDAT 6 LAST");
}

TEST(engine_bdat, auth_required_is_checked_as_for_data)
{
    settings s = chunking();
    s.auth_required = true;
    engine e(s);
    e.start();
    e.receive("EHLO c\r\nBDAT 4 LAST\r\nQUIT");
    EXPECT_NE(take(e).find("\r\n530 5.7.0 Authentication required\r\n"), std::string::npos);
    EXPECT_FALSE(e.close_requested());
}

TEST(engine_bdat, a_malformed_size_closes_a_malformed_marker_skips_the_chunk)
{
    for (const char* line : {"BDAT", "BDAT x", "BDAT -1", "BDAT 1x LAST", "BDAT 99999999999999999999999", "BDAT +5"}) {
        const settings s = chunking();
        engine e(s);
        open_transaction(e);
        e.receive(std::string(line) + "\r\nNOOP\r\n");
        EXPECT_EQ(take(e), "521 5.5.4 Syntax: BDAT <size> [LAST]\r\n") << line;
        EXPECT_TRUE(e.close_requested()) << line;
    }
    // Leading zeros are a size like any other.
    {
        const settings s = chunking();
        engine e(s);
        open_transaction(e);
        e.receive("BDAT 000000000000000000000000003\r\nabcNOOP\r\n");
        EXPECT_EQ(take(e), "250 2.0.0 Ok: 3 octets received\r\n250 OK\r\n");
    }
    // The size is known: the chunk is skipped, the message fails (a BDAT message was open).
    const settings s = chunking();
    engine e(s);
    open_transaction(e);
    e.receive(bdat("abc") + "BDAT 4 LASTX\r\nQUITBDAT 3 LAST FOO\r\nxyzNOOP\r\n");
    EXPECT_EQ(take(e), "250 2.0.0 Ok: 3 octets received\r\n501 5.5.4 Syntax: BDAT <size> [LAST]\r\n"
                       "503 5.5.1 Error: chunk discarded after an earlier BDAT error\r\n250 OK\r\n");
    EXPECT_FALSE(e.close_requested());
    EXPECT_FALSE(e.in_transaction());
}

TEST(engine_bdat, over_the_size_limit_552_and_the_failed_messages_later_chunks_are_discarded)
{
    settings s = chunking(hook_bit(hook_kind::data) | hook_bit(hook_kind::txn_end));
    s.data_size_limit = 100;
    engine e(s);
    open_transaction(e);
    const std::string sixty(60, 'x');
    // 60 fits, 60 more would not: 552 for that chunk; the next chunks (pipelined) get 503
    // until LAST; then the session goes on (a new transaction).
    e.receive(bdat(sixty) + bdat(sixty) + bdat("RSET\r\n") + bdat("QUIT\r\n", true) +
              "BDAT 2 LAST\r\nzzMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" + bdat(std::string(100, 'y'), true));
    EXPECT_EQ(take(e), "250 2.0.0 Ok: 60 octets received\r\n552 Error: Too much mail data\r\n"
                       "503 5.5.1 Error: chunk discarded after an earlier BDAT error\r\n"
                       "503 5.5.1 Error: chunk discarded after an earlier BDAT error\r\n"
                       "503 Error: need RCPT command\r\n250 OK\r\n250 OK\r\n");
    const auto t = e.take_transaction();
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->code, 552);
    EXPECT_EQ(t->size, 60u);  // what was taken
    const auto ends = e.take_transaction_ends();
    ASSERT_EQ(ends.size(), 1u);
    EXPECT_EQ(ends[0].outcome, transaction_end::how::refused);
    EXPECT_EQ(ends[0].code, 552);
    // Exactly at the limit is fine.
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->content.size(), 100u);
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "250 OK\r\n");
}

TEST(engine_bdat, a_single_chunk_over_the_limit_at_any_split)
{
    settings s = chunking();
    s.data_size_limit = 10;
    const std::string wire = bdat(std::string(11, '.'), true) + "NOOP\r\n";
    for (const std::size_t step : {1u, 3u, 4096u}) {
        engine e(s);
        open_transaction(e);
        for (std::size_t at = 0; at < wire.size(); at += step) e.receive(std::string_view(wire).substr(at, step));
        EXPECT_EQ(take(e), "552 Error: Too much mail data\r\n250 OK\r\n") << step;
        EXPECT_FALSE(e.in_transaction());
        // LAST ended the failed message: BDAT is back to "need RCPT".
        e.receive("BDAT 1\r\nx");
        EXPECT_EQ(take(e), "503 Error: need RCPT command\r\n");
    }
}

TEST(engine_bdat, rset_and_mail_end_the_failed_state)
{
    settings s = chunking();
    s.data_size_limit = 5;
    engine e(s);
    open_transaction(e);
    e.receive(bdat("123456") + "RSET\r\n" + bdat("x"));
    EXPECT_EQ(take(e), "552 Error: Too much mail data\r\n250 OK\r\n503 Error: need RCPT command\r\n");
    e.receive("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" + bdat("123456") + "MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" +
              bdat("x", true));
    EXPECT_EQ(take(e), "250 OK\r\n250 OK\r\n552 Error: Too much mail data\r\n250 OK\r\n250 OK\r\n250 OK\r\n");
}

TEST(engine_bdat, data_after_bdat_and_data_with_binarymime_get_503)
{
    const settings s = chunking();
    engine e(s);
    open_transaction(e);
    e.receive(bdat("abc") + "DATA\r\n" + bdat("def", true));
    EXPECT_EQ(take(e), "250 2.0.0 Ok: 3 octets received\r\n503 5.5.1 Error: DATA after BDAT\r\n250 OK\r\n");
    const auto t = e.take_transaction();
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->size, 6u);

    // BODY=BINARYMIME: BDAT only (RFC 3030 §3).
    open_transaction(e, "MAIL FROM:<a@b> BODY=BINARYMIME");
    e.receive("DATA\r\n" + bdat(std::string("\0\x01\x02", 3), true));
    EXPECT_EQ(take(e), "503 5.5.1 Error: BODY=BINARYMIME requires BDAT\r\n250 OK\r\n");
    // DATA in a later transaction of the same session is fine.
    e.receive("MAIL FROM:<a@b> BODY=8BITMIME\r\nRCPT TO:<c@d>\r\nDATA\r\n\xe9t\xe9\r\n.\r\n");
    EXPECT_EQ(take(e), "250 OK\r\n250 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n250 OK\r\n");
}

TEST(engine_bdat, body_binarymime_only_with_chunking)
{
    settings off = chunking();
    off.enable_chunking = false;
    engine plain(off);
    plain.start();
    plain.receive("EHLO c\r\nMAIL FROM:<a@b> BODY=BINARYMIME\r\n");
    EXPECT_NE(take(plain).find("\r\n501 Error: BODY can only be one of 7BIT, 8BITMIME\r\n"), std::string::npos);

    const settings s = chunking(hook_bit(hook_kind::mail));
    engine e(s);
    e.start();
    e.receive("EHLO c\r\nMAIL FROM:<a@b> BODY=binarymime\r\n");
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(r->params.size(), 1u);
    EXPECT_EQ(r->params[0], "BODY=BINARYMIME");
    e.hook_done(make(verdict::none));
    e.receive("RSET\r\nMAIL FROM:<a@b> BODY=HUGEMIME\r\n");
    EXPECT_NE(take(e).find("250 OK\r\n250 OK\r\n501 Error: BODY can only be one of 7BIT, 8BITMIME, BINARYMIME\r\n"),
              std::string::npos);
}

TEST(engine_bdat, lmtp_answers_per_recipient_after_last_only)
{
    settings s = chunking(hook_bit(hook_kind::data));
    s.lmtp = true;
    engine e(s);
    e.start();
    e.receive("LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<one@d>\r\nRCPT TO:<two@d>\r\n" + bdat("Subject: x\r\n\r\n") +
              bdat("body\r\n", true));
    take(e);
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->content, "Subject: x\r\n\r\nbody\r\n");
    hook_result res = make(verdict::accept);
    res.rcpt_replies = {{250, "2.0.0 <one@d> delivered"}, {550, "5.1.1 <two@d> unknown"}};
    e.hook_done(res);
    EXPECT_EQ(take(e), "250 2.0.0 <one@d> delivered\r\n550 5.1.1 <two@d> unknown\r\n");
}

TEST(engine_bdat, lmtp_a_chunk_over_the_limit_before_last_is_one_reply)
{
    settings s = chunking();
    s.lmtp = true;
    s.data_size_limit = 4;
    engine e(s);
    e.start();
    e.receive("LHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<one@d>\r\nRCPT TO:<two@d>\r\n");
    take(e);
    e.receive(bdat("12345") + bdat("6", true));
    EXPECT_EQ(take(e),
              "552 Error: Too much mail data\r\n503 5.5.1 Error: chunk discarded after an earlier BDAT error\r\n");
    e.receive(bdat("x", true));
    EXPECT_EQ(take(e), "503 Error: need RCPT command\r\n");
}

TEST(engine_bdat, data_chunk_hooks_get_the_same_pieces_as_for_data)
{
    // The same message by DATA (dot-stuffed on the wire) and by BDAT in uneven chunks: the
    // same DATA_CHUNK pieces, the same streamed DATA hook.
    std::string message;
    for (int i = 0; i < 40; ++i)
        message += (i % 4 == 0 ? "." : "x") + std::string(17, static_cast<char>('a' + i % 26)) + "\r\n";
    std::string stuffed;
    for (std::size_t at = 0; at < message.size(); at += 20) {
        const std::string line = message.substr(at, 20);
        stuffed += (line[0] == '.' ? "." : "") + line;
    }
    settings s = chunking(hook_bit(hook_kind::data_chunk) | hook_bit(hook_kind::data));
    s.data_whole_message = false;
    s.data_chunk_size = 100;

    std::vector<std::string> by_data;
    std::uint64_t data_size = 0;
    {
        engine e(s);
        open_transaction(e);
        e.receive("DATA\r\n");
        take(e);
        by_data = feed(e, stuffed + ".\r\n", 7);
        ASSERT_NE(e.pending_hook(), nullptr);
        data_size = e.pending_hook()->content_size;
    }
    for (const std::size_t step : {1u, 9u, 4096u}) {
        engine e(s);
        open_transaction(e);
        const std::string wire = bdat(message.substr(0, 3)) + bdat(message.substr(3, 250)) +
                                 bdat(message.substr(253, 1)) + bdat(message.substr(254), true);
        const auto by_bdat = feed(e, wire, step);
        EXPECT_EQ(by_bdat, by_data) << step;
        const hook_request* r = e.pending_hook();
        ASSERT_NE(r, nullptr);
        ASSERT_EQ(r->kind, hook_kind::data);
        EXPECT_TRUE(r->streamed);
        EXPECT_EQ(r->content_size, data_size);
        e.hook_done(make(verdict::none));
        EXPECT_EQ(take(e), "250 2.0.0 Ok: 3 octets received\r\n250 2.0.0 Ok: 250 octets received\r\n"
                           "250 2.0.0 Ok: 1 octets received\r\n250 OK\r\n");
    }
}

TEST(engine_bdat, a_data_chunk_hook_that_waits_stops_the_reading)
{
    settings s = chunking(hook_bit(hook_kind::data_chunk));
    s.data_chunk_size = 10;
    engine e(s);
    open_transaction(e);
    e.receive(bdat(std::string(35, 'm'), true) + "NOOP\r\n");
    // One piece at a time; the rest waits in the buffer (backpressure).
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->content.size(), 10u);
    EXPECT_EQ(e.buffered(), 25u + 6u);
    EXPECT_TRUE(e.reading_data());
    e.hook_done(make(verdict::none));
    EXPECT_EQ(e.pending_hook()->content.size(), 10u);
    e.hook_done(make(verdict::none));
    e.hook_done(make(verdict::none));
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_TRUE(e.pending_hook()->last_chunk);
    EXPECT_EQ(e.pending_hook()->content.size(), 5u);
    e.hook_done(make(verdict::none));
    EXPECT_EQ(take(e), "250 OK\r\n250 OK\r\n");
}

TEST(engine_bdat, a_data_chunk_refusal_answers_the_chunk_and_fails_the_message)
{
    settings s = chunking(hook_bit(hook_kind::data_chunk) | hook_bit(hook_kind::data));
    s.data_chunk_size = 10;
    s.data_whole_message = false;
    engine e(s);
    open_transaction(e);
    // The first piece (10 of the 15 octets) is refused: the rest of the chunk is dropped, the
    // chunk gets the refusal, the pipelined chunks 503, and no DATA hook runs.
    e.receive(bdat(std::string(15, 'a')) + bdat("RSET\r\n", true));
    ASSERT_NE(e.pending_hook(), nullptr);
    e.hook_done(make(verdict::reject, 554, "5.7.1 no thanks"));
    EXPECT_EQ(e.pending_hook(), nullptr);
    EXPECT_EQ(take(e), "554 5.7.1 no thanks\r\n503 5.5.1 Error: chunk discarded after an earlier BDAT error\r\n");
    const auto t = e.take_transaction();
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->code, 554);

    // A refusal of the LAST piece answers the LAST chunk.
    open_transaction(e);
    e.receive(bdat("abc", true));
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_TRUE(e.pending_hook()->last_chunk);
    e.hook_done(make(verdict::tempfail));
    EXPECT_EQ(take(e), "451 4.7.1 Try again later\r\n");
}

TEST(engine_bdat, the_received_field_tops_a_bdat_message)
{
    const settings s = chunking(hook_bit(hook_kind::data));
    engine e(s);
    e.set_message_prefix([] { return std::string("Received: from c\r\n"); });
    open_transaction(e);
    e.receive(bdat("Subject: x\r\n") + bdat("\r\nhi\r\n", true));
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->content, "Received: from c\r\nSubject: x\r\n\r\nhi\r\n");
    e.hook_done(make(verdict::none));
    const auto t = e.take_transaction();
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->size, 18u);  // the trace field does not count
}

TEST(engine_bdat, a_bdat_refused_before_it_runs_still_has_its_chunk_skipped)
{
    // require_starttls answers 530 before the command runs; the chunk follows all the same.
    settings s = chunking();
    s.starttls_available = true;
    s.require_starttls = true;
    engine e(s);
    e.start();
    take(e);
    e.receive("BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    EXPECT_EQ(take(e), "530 Must issue a STARTTLS command first\r\n250 OK\r\n");
    EXPECT_FALSE(e.close_requested());
    const auto refused = e.take_refusals();
    ASSERT_EQ(refused.size(), 1u);
    EXPECT_EQ(refused[0].command, "BDAT 6 LAST");
}

TEST(engine_bdat, the_message_in_progress_is_not_idle_and_quit_ends_it)
{
    const settings s = chunking(hook_bit(hook_kind::txn_end));
    engine e(s);
    open_transaction(e);
    e.receive("BDAT 10\r\nabc");
    EXPECT_TRUE(e.reading_data());
    EXPECT_FALSE(e.idle());
    e.receive("defghij");
    EXPECT_FALSE(e.reading_data());
    EXPECT_FALSE(e.idle());  // between chunks, in the transaction
    e.receive("QUIT\r\n");
    EXPECT_EQ(take(e), "250 2.0.0 Ok: 10 octets received\r\n221 Bye\r\n");
    e.end_session("quit");
    const auto ends = e.take_transaction_ends();
    ASSERT_EQ(ends.size(), 1u);
    EXPECT_EQ(ends[0].outcome, transaction_end::how::aborted);
}

}  // namespace
}  // namespace asiosmtpd::proto
