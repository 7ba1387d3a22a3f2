// SPDX-License-Identifier: Apache-2.0
// DATA in chunks (issue 8, aiosmtpd #293): data_chunk hooks see the unstuffed message as it
// arrives, the engine keeps at most one chunk when no DATA hook needs the whole message, and
// a chunk hook's refusal answers the final dot.
#include "proto/engine.hpp"
#include "proto/engine_helpers.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace asiosmtpd::proto {
namespace {

settings streaming_settings(bool whole = false)
{
    settings s = base_settings();
    s.hook_mask = hook_bit(hook_kind::data_chunk) | hook_bit(hook_kind::data);
    s.data_whole_message = whole;
    s.data_chunk_size = 100;
    return s;
}

// Up to "354": the engine then waits for the body.
void open_transaction(engine& e)
{
    e.start();
    e.receive("EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n");
    take(e);
}

// 30 lines of 20 bytes, every third one dot-stuffed: 600 bytes on the wire.
std::string body_on_wire()
{
    std::string body;
    for (int i = 0; i < 30; ++i)
        body += (i % 3 == 0 ? ".." : "xx") + std::string(16, static_cast<char>('a' + i % 26)) + "\r\n";
    return body;
}

std::string unstuffed(const std::string& wire)
{
    std::string out;
    std::size_t at = 0;
    while (at < wire.size()) {
        const std::size_t lf = wire.find('\n', at);
        std::string line = wire.substr(at, lf - at + 1);
        if (line.front() == '.') line.erase(0, 1);
        out += line;
        at = lf + 1;
    }
    return out;
}

TEST(engine_streaming, chunks_concatenate_to_the_unstuffed_message_at_every_split)
{
    const std::string wire = body_on_wire();
    const std::string message = unstuffed(wire);
    for (const std::size_t step : {1u, 7u, 64u, 1000u}) {
        const settings s = streaming_settings();
        engine e(s);
        open_transaction(e);
        const auto chunks = feed(e, wire + ".\r\n", step);
        std::string joined;
        for (const auto& c : chunks) joined += c;
        EXPECT_EQ(joined, message) << "step " << step;
        ASSERT_GE(chunks.size(), 6u) << "step " << step;  // 560 bytes in chunks of >= 100
        for (std::size_t i = 0; i + 1 < chunks.size(); ++i) EXPECT_GE(chunks[i].size(), 100u);
        // Streaming: the DATA hook gets no content, only the size.
        const hook_request* r = e.pending_hook();
        ASSERT_NE(r, nullptr);
        ASSERT_EQ(r->kind, hook_kind::data);
        EXPECT_TRUE(r->streamed);
        EXPECT_TRUE(r->content.empty());
        EXPECT_EQ(r->content_size, message.size());
        e.hook_done(make(verdict::none));
        EXPECT_EQ(take(e), "250 OK\r\n");
    }
}

TEST(engine_streaming, the_last_chunk_is_flagged_and_may_be_empty)
{
    const settings s = streaming_settings();
    engine e(s);
    open_transaction(e);
    e.receive(std::string(98, 'x') + "\r\n");  // exactly one chunk
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_FALSE(e.pending_hook()->last_chunk);
    EXPECT_EQ(e.pending_hook()->content.size(), 100u);
    e.hook_done(make(verdict::none));
    e.receive(".\r\n");
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->kind, hook_kind::data_chunk);
    EXPECT_TRUE(r->last_chunk);
    EXPECT_TRUE(r->content.empty());
    EXPECT_EQ(r->content_size, 100u);
    e.hook_done(make(verdict::none));
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_EQ(e.pending_hook()->kind, hook_kind::data);
}

TEST(engine_streaming, input_waits_while_a_chunk_hook_runs)
{
    const settings s = streaming_settings();
    engine e(s);
    open_transaction(e);
    e.receive(std::string(150, 'y') + "\r\n" + ".\r\nNOOP\r\n");
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->kind, hook_kind::data_chunk);
    EXPECT_EQ(e.buffered(), 9u);  // ".\r\nNOOP\r\n" waits behind the hook (backpressure)
    EXPECT_EQ(take(e), "");
    e.hook_done(make(verdict::none));
    ASSERT_NE(e.pending_hook(), nullptr);
    EXPECT_TRUE(e.pending_hook()->last_chunk);
    e.hook_done(make(verdict::none));
    e.hook_done(make(verdict::accept, 250, "2.0.0 stored"));
    EXPECT_EQ(take(e), "250 2.0.0 stored\r\n250 OK\r\n");
}

TEST(engine_streaming, a_refused_chunk_answers_the_final_dot_and_the_rest_is_dropped)
{
    const settings s = streaming_settings();
    engine e(s);
    open_transaction(e);
    const std::string wire = body_on_wire();
    e.receive(wire.substr(0, 200));
    ASSERT_NE(e.pending_hook(), nullptr);
    e.hook_done(make(verdict::reject, 554, "5.6.0 bad content"));
    e.receive(wire.substr(200));
    EXPECT_EQ(e.pending_hook(), nullptr);  // no more chunks, no DATA hook
    EXPECT_EQ(take(e), "");
    e.receive(".\r\nRSET\r\n");
    EXPECT_EQ(take(e), "554 5.6.0 bad content\r\n250 OK\r\n");
    const auto t = e.take_transaction();
    ASSERT_TRUE(t.has_value());
    EXPECT_EQ(t->code, 554);
}

TEST(engine_streaming, a_failing_chunk_hook_gives_451_and_the_close_verdicts_close)
{
    {
        const settings s = streaming_settings();
        engine e(s);
        open_transaction(e);
        e.receive(std::string(120, 'z') + "\r\n.\r\n");
        e.hook_done(make(verdict::error));
        EXPECT_EQ(take(e), "451 4.3.0 Error: internal\r\n");
        EXPECT_FALSE(e.close_requested());
    }
    {
        const settings s = streaming_settings();
        engine e(s);
        open_transaction(e);
        e.receive("short\r\n.\r\n");
        ASSERT_NE(e.pending_hook(), nullptr);
        EXPECT_TRUE(e.pending_hook()->last_chunk);
        e.hook_done(make(verdict::tempfail_close, 421, "4.3.2 going away"));
        EXPECT_EQ(take(e), "421 4.3.2 going away\r\n");
        EXPECT_TRUE(e.close_requested());
    }
}

TEST(engine_streaming, whole_message_kept_when_a_data_hook_needs_it)
{
    const settings s = streaming_settings(true);
    engine e(s);
    open_transaction(e);
    const std::string wire = body_on_wire();
    const auto chunks = feed(e, wire + ".\r\n", 50);
    std::string joined;
    for (const auto& c : chunks) joined += c;
    EXPECT_EQ(joined, unstuffed(wire));  // chunks are the new part only
    const hook_request* r = e.pending_hook();
    ASSERT_NE(r, nullptr);
    ASSERT_EQ(r->kind, hook_kind::data);
    EXPECT_FALSE(r->streamed);
    EXPECT_EQ(r->content, unstuffed(wire));
}

TEST(engine_streaming, too_big_message_stops_the_chunks_and_gets_552)
{
    settings s = streaming_settings();
    s.data_size_limit = 250;
    engine e(s);
    open_transaction(e);
    const auto chunks = feed(e, body_on_wire() + ".\r\n", 1000);
    EXPECT_EQ(chunks.size(), 2u);  // 200 of 250 bytes in chunks, then the limit
    EXPECT_EQ(e.pending_hook(), nullptr);
    EXPECT_EQ(take(e), "552 Error: Too much mail data\r\n");
}

TEST(engine_streaming, no_hook_keeps_no_content)
{
    settings s = streaming_settings();
    s.hook_mask = 0;
    engine e(s);
    open_transaction(e);
    e.receive(body_on_wire());
    EXPECT_TRUE(e.current_envelope().content.empty());
    e.receive(".\r\n");
    EXPECT_EQ(take(e), "250 OK\r\n");
}

TEST(engine_streaming, decode_data_strict_ascii_is_checked_while_streaming)
{
    settings s = streaming_settings();
    s.decode_data = true;
    engine e(s);
    open_transaction(e);
    const auto chunks = feed(e, "caf\xc3\xa9\r\n.\r\n", 1000);
    EXPECT_EQ(chunks.size(), 1u);
    EXPECT_EQ(e.pending_hook(), nullptr);  // no DATA hook for a message aiosmtpd refuses
    EXPECT_EQ(take(e), "500 Error: strict ASCII mode\r\n");
}

}  // namespace
}  // namespace asiosmtpd::proto
