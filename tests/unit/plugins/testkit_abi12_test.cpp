// SPDX-License-Identifier: Apache-2.0
// The test kit's ABI 1.2 parts: DATA_CHUNK through the kit (the bundled sink, the scripted
// fixture's chunk hooks with their running CRC-32, refusals, timeouts, STREAMED versus the whole
// message), and the reply validation the kit shares with the server (plugin.h set_reply and
// complete()): codes 200..599, no CR/NUL/control bytes but HT, lines of at most 506 bytes,
// 64 KiB of text; a refused set_reply() turns the verdict into 451 4.3.0; complete() with a
// verdict or reply the server cannot use answers E_INVALID and ends the call at once.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string sink = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/sink.so";
const std::string debugging = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/debugging.so";
const std::string scripted = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so";
const std::string internal = "451 4.3.0 Error: internal";

// zlib's CRC-32, as the scripted fixture computes {digest}.
std::string crc_hex(std::string_view bytes)
{
    std::uint32_t c = 0xffffffffu;
    for (const char ch : bytes) {
        c ^= static_cast<unsigned char>(ch);
        for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xedb88320u ^ (c >> 1) : c >> 1;
    }
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(c ^ 0xffffffffu));
    return buf;
}

// `lines` CRLF lines of `width` bytes, every third one starting with a dot (unstuffed).
std::string message(std::size_t lines, std::size_t width = 100)
{
    std::string out;
    for (std::size_t i = 0; i < lines; ++i)
        out += (i % 3 == 0 ? "." : "x") + std::string(width - 3, static_cast<char>('a' + i % 26)) + "\r\n";
    return out;
}

tk::node hooks(std::initializer_list<std::pair<std::string, tk::node>> entries)
{
    return tk::node::map({{"hooks", tk::node::map(entries)}});
}

// The log lines of the kit that contain `tag`, without the "info plugin=... session=N " part.
std::vector<std::string> tagged(const tk::host& h, const std::string& tag)
{
    std::vector<std::string> out;
    for (const std::string& line : h.logs()) {
        const std::size_t at = line.find(tag + " ");
        if (at != std::string::npos) out.push_back(line.substr(at + tag.size() + 1));
    }
    return out;
}

const char* chunk_fmt = " chunk {chunks} size={chunk} last={last} total={message_size} digest={digest}";
const char* data_fmt = " data streamed={streamed} size={size} total={message_size} chunks={chunks} digest={digest} "
                       "content={content_digest}";

std::string chunk_line(std::size_t n, std::size_t size, bool last, std::size_t total, const std::string& digest)
{
    return "chunk " + std::to_string(n) + " size=" + std::to_string(size) + " last=" + (last ? "1" : "0") +
           " total=" + std::to_string(total) + " digest=" + digest;
}

std::string data_line(bool streamed, std::size_t size, std::size_t total, std::size_t chunks, const std::string& digest,
                      const std::string& content)
{
    return "data streamed=" + std::string(streamed ? "1" : "0") + " size=" + std::to_string(size) +
           " total=" + std::to_string(total) + " chunks=" + std::to_string(chunks) + " digest=" + digest +
           " content=" + content;
}

// ---- DATA_CHUNK ------------------------------------------------------------------------------

TEST(testkit_streaming, sink_takes_the_message_in_pieces)
{
    tk::host h;
    h.load(sink);
    EXPECT_EQ(h.hook_count(ASIOSMTPD_HOOK_DATA_CHUNK), 1u);
    EXPECT_EQ(h.hook_count(ASIOSMTPD_HOOK_DATA), 1u);
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, message(3000)), "250 OK");  // 300 KB: 5 pieces
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, ""), "250 OK");             // one empty, last piece
}

TEST(testkit_streaming, pieces_make_up_the_message_and_data_is_streamed)
{
    tk::host h;
    h.data_chunk_size = 1000;
    h.load(scripted, hooks({{"DATA_CHUNK", tk::node::map({{"log", std::string("S1") + chunk_fmt}})},
                            {"DATA", tk::node::map({{"log", std::string("S1") + data_fmt},
                                                    {"verdict", "accept"},
                                                    {"code", 250},
                                                    {"text", "2.0.0 {chunks} pieces, {digest}"}})}}));
    auto s = h.open();
    const std::string m = message(25);  // 2500 bytes: 1000, 1000, then 500 as the last piece
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 2.0.0 3 pieces, " + crc_hex(m));
    EXPECT_EQ(tagged(h, "S1"), (std::vector<std::string>{
                                   chunk_line(1, 1000, false, 1000, crc_hex(m.substr(0, 1000))),
                                   chunk_line(2, 1000, false, 2000, crc_hex(m.substr(0, 2000))),
                                   chunk_line(3, 500, true, 2500, crc_hex(m)),
                                   data_line(true, 0, 2500, 3, crc_hex(m), crc_hex("")),
                               }));

    // A whole number of pieces ends with an empty last one (the server does the same), and the
    // next transaction starts from nothing: its slot is new.
    const std::string two = message(20);
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, two), "250 2.0.0 3 pieces, " + crc_hex(two));
    const auto lines = tagged(h, "S1");
    ASSERT_EQ(lines.size(), 8u);
    EXPECT_EQ(lines[6], chunk_line(3, 0, true, 2000, crc_hex(two)));

    // By hand: cmd() lines are dot-stuffed on the wire and unstuffed for the plugin.
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), "250 OK");
    EXPECT_EQ(s.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    EXPECT_EQ(s.cmd("..one dot"), "");
    EXPECT_EQ(s.cmd("."), "250 2.0.0 1 pieces, " + crc_hex(".one dot\r\n"));
}

TEST(testkit_streaming, a_data_hook_without_pieces_gets_everyone_the_whole_message)
{
    const std::string m = message(25);
    for (const bool with_debugging : {false, true}) {
        tk::host h;
        h.data_chunk_size = 1000;
        h.load(scripted, hooks({{"DATA_CHUNK", tk::node::map({{"log", std::string("S1") + chunk_fmt}})},
                                {"DATA", tk::node::map({{"log", std::string("S1") + data_fmt}})}}));
        if (with_debugging) h.load(debugging);
        else h.load(scripted, hooks({{"DATA", tk::node::map({{"log", std::string("S2") + data_fmt}})}}));
        h.load(sink);
        auto s = h.open();
        testing::internal::CaptureStdout();
        EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, m), "250 OK");
        const std::string out = testing::internal::GetCapturedStdout();
        const auto lines = tagged(h, "S1");
        ASSERT_EQ(lines.size(), 4u);
        EXPECT_EQ(lines[3], data_line(false, 2500, 2500, 3, crc_hex(m), crc_hex(m)));
        if (with_debugging) EXPECT_NE(out.find("---------- MESSAGE FOLLOWS ----------"), std::string::npos) << out;
        else
            EXPECT_EQ(tagged(h, "S2"),
                      std::vector<std::string>{data_line(false, 2500, 2500, 0, "00000000", crc_hex(m))});
    }
}

TEST(testkit_streaming, a_refused_piece_answers_the_message)
{
    tk::host h;
    h.data_chunk_size = 1000;
    h.load(scripted, hooks({{"DATA_CHUNK", tk::node::map({{"log", "S1 chunk {chunks}"},
                                                          {"verdict", "reject"},
                                                          {"code", 554},
                                                          {"text", "5.6.0 refused at piece {chunks}"},
                                                          {"from_chunk", 2}})},
                            {"DATA", tk::node::map({{"log", "S1 data ran"}})}}));
    h.load(sink);
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, message(50)), "554 5.6.0 refused at piece 2");
    EXPECT_EQ(tagged(h, "S1"), (std::vector<std::string>{"chunk 1", "chunk 2"}));  // no more, no DATA
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "short\r\n"), "250 OK");  // a new slot: piece 1
    EXPECT_EQ(tagged(h, "S1"), (std::vector<std::string>{"chunk 1", "chunk 2", "chunk 1", "data ran"}));
}

TEST(testkit_streaming, a_closing_verdict_on_a_piece_closes)
{
    tk::host h;
    h.data_chunk_size = 1000;
    h.load(scripted,
           hooks({{"DATA_CHUNK",
                   tk::node::map({{"verdict", "tempfail_close"}, {"code", 421}, {"text", "4.3.2 closing"}})}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, message(50)), "421 4.3.2 closing");
    EXPECT_TRUE(s.closed());
}

TEST(testkit_streaming, pieces_completed_later_and_never)
{
    tk::host h;
    h.data_chunk_size = 1000;
    h.hook_timeout = std::chrono::milliseconds(300);
    h.load(scripted, hooks({{"DATA_CHUNK", tk::node::map({{"delay_ms", 5}, {"log", "S1 chunk {chunks}"}})}}));
    h.load(scripted, hooks({{"DATA_CHUNK", tk::node::map({{"verdict", "pending_never"}, {"from_chunk", 3}})},
                            {"DATA", tk::node::map({{"log", "S2 data ran"}})}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, message(15)), "250 OK");  // two pieces
    EXPECT_TRUE(h.logged("S2 data ran"));
    const auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, message(50)), internal);
    EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(300));
    EXPECT_TRUE(h.logged("event=plugin_error hook=DATA_CHUNK reason=\"did not complete within 300 ms\""));
    EXPECT_EQ(tagged(h, "S1"), (std::vector<std::string>{"chunk 1", "chunk 2", "chunk 1", "chunk 2", "chunk 3"}));
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
}

TEST(testkit_streaming, strict_ascii_is_answered_after_the_pieces)
{
    tk::host h;
    h.decode_data = true;
    h.load(scripted, hooks({{"DATA_CHUNK", tk::node::map({{"log", "S1 chunk {chunks} last={last}"}})},
                            {"DATA", tk::node::map({{"log", "S1 data ran"}})}}));
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "caf\xc3\xa9\r\n"), "500 Error: strict ASCII mode");
    EXPECT_EQ(tagged(h, "S1"), std::vector<std::string>{"chunk 1 last=1"});  // the pieces, then no DATA
}

// ---- reply validation (the server's rules) -----------------------------------------------------

// A raw C-ABI probe: NOOP <case> runs one case and records what the host answered.
struct probe_state {
    const asiosmtpd_host_api* api = nullptr;
    std::vector<asiosmtpd_status> statuses;
    asiosmtpd_token token = 0;
};
probe_state probe;

asiosmtpd_str s_(std::string_view v) { return {v.data(), v.size()}; }

asiosmtpd_verdict probe_noop(void*, asiosmtpd_call* c, const void* raw)
{
    const auto* a = static_cast<const asiosmtpd_command_args*>(raw);
    const std::string_view which(a->argument.data, a->argument.size);
    const asiosmtpd_host_api& api = *probe.api;
    auto& st = probe.statuses;
    st.clear();
    const auto reply = [&](std::uint16_t code, std::string_view text) {
        st.push_back(api.set_reply(c, code, s_(text)));
    };
    const auto suspended = [&](asiosmtpd_verdict v, std::uint16_t code, std::string_view text) {
        asiosmtpd_token t = 0;
        st.push_back(api.suspend(c, &t));
        probe.token = t;
        st.push_back(api.complete(t, v, code, s_(text)));
        st.push_back(api.complete(t, ASIOSMTPD_ACCEPT, 250, s_("second")));  // always E_GONE or OK
        return ASIOSMTPD_PENDING;
    };
    if (which == "codes") {
        reply(199, "x");
        reply(600, "x");
        reply(0, "x");
        reply(200, "x");
        reply(599, "5.0.0 last");
        return ASIOSMTPD_REJECT;  // the last good reply stands
    }
    if (which == "bytes") {
        reply(250, "a\rb");
        reply(250, std::string_view("a\0b", 3));
        reply(250, "a\x01"
                   "b");
        reply(250, "a\x7f"
                   "b");
        reply(250, "a\x1b"
                   "b");
        reply(250, "tab\there and caf\xc3\xa9 \xff");
        return ASIOSMTPD_ACCEPT;
    }
    if (which == "lengths") {
        reply(250, std::string(507, 'x'));
        reply(250, std::string(506, 'y') + "\n" + std::string(507, 'z'));
        std::string big;
        while (big.size() < 65536) big += std::string(499, 'w') + "\n";
        big.resize(65536);
        reply(250, big + "w");
        reply(250, big);
        return ASIOSMTPD_ACCEPT;
    }
    if (which == "refused") {
        reply(600, "six hundred");
        return ASIOSMTPD_REJECT;
    }
    if (which == "refused-continue") {
        reply(250, "a\rb");
        return ASIOSMTPD_CONTINUE;
    }
    if (which == "refused-then-good") {
        reply(250, "a\rb");
        reply(252, "2.0.0 second try");
        return ASIOSMTPD_ACCEPT;
    }
    if (which == "refused-then-pending") {
        reply(700, "x");
        return suspended(ASIOSMTPD_ACCEPT, 250, "2.0.0 the completion decides");
    }
    if (which == "complete-42") return suspended(42, 0, "");
    if (which == "complete-code") return suspended(ASIOSMTPD_ACCEPT, 99, "x");
    if (which == "complete-class") return suspended(ASIOSMTPD_REJECT, 250, "2.0.0 not a refusal");
    if (which == "complete-cr") return suspended(ASIOSMTPD_REJECT, 550, "x\r\n250 fake");
    if (which == "complete-challenge") return suspended(ASIOSMTPD_AUTH_CHALLENGE, 0, "x");
    if (which == "complete-continue-bad") return suspended(ASIOSMTPD_CONTINUE, 600, "x");
    if (which == "complete-zero") return suspended(ASIOSMTPD_REJECT, 0, "ignored");
    if (which == "complete-pending") {
        asiosmtpd_token t = 0;
        st.push_back(api.suspend(c, &t));
        probe.token = t;
        st.push_back(api.complete(t, ASIOSMTPD_PENDING, 0, s_("")));        // E_INVALID, token kept
        st.push_back(api.complete(t + 1000, ASIOSMTPD_ACCEPT, 0, s_("")));  // never given: E_INVALID
        st.push_back(api.complete(0, ASIOSMTPD_ACCEPT, 0, s_("")));         // E_INVALID
        st.push_back(api.complete(t, ASIOSMTPD_ACCEPT, 250, s_("2.0.0 after all")));
        st.push_back(api.complete(t, 42, 600, s_("x")));  // finished: E_GONE first
        return ASIOSMTPD_PENDING;
    }
    if (which == "rcpt") {
        st.push_back(api.set_rcpt_reply(c, 0, 250, s_("x")));
        return ASIOSMTPD_CONTINUE;
    }
    return ASIOSMTPD_CONTINUE;
}

// In DATA: set_rcpt_reply follows the one-line rules.
asiosmtpd_verdict probe_data(void*, asiosmtpd_call* c, const void*)
{
    const asiosmtpd_host_api& api = *probe.api;
    auto& st = probe.statuses;
    st.clear();
    st.push_back(api.set_rcpt_reply(c, 0, 250, s_("a\nb")));
    st.push_back(api.set_rcpt_reply(c, 0, 250, s_("a\tb\x01")));
    st.push_back(api.set_rcpt_reply(c, 0, 250, s_(std::string(507, 'x'))));
    st.push_back(api.set_rcpt_reply(c, 0, 199, s_("x")));
    st.push_back(api.set_rcpt_reply(c, 0, 250, s_(std::string(506, 'x'))));
    return ASIOSMTPD_CONTINUE;
}

asiosmtpd_status probe_create(const asiosmtpd_host_api* api, asiosmtpd_ctx*, asiosmtpd_registrar* reg, void** out,
                              asiosmtpd_errbuf*)
{
    probe.api = api;
    api->register_hook(reg, ASIOSMTPD_HOOK_NOOP, &probe_noop);
    api->register_hook(reg, ASIOSMTPD_HOOK_DATA, &probe_data);
    *out = &probe;
    return ASIOSMTPD_OK;
}

void probe_destroy(void*) {}

const asiosmtpd_plugin_descriptor* probe_entry()
{
    static const asiosmtpd_plugin_descriptor d = {
        sizeof d, ASIOSMTPD_ABI_MAJOR, 0, 0, "probe", "1.0", "reply probe", &probe_create, &probe_destroy};
    return &d;
}

using statuses = std::vector<asiosmtpd_status>;
constexpr asiosmtpd_status ok = ASIOSMTPD_OK;
constexpr asiosmtpd_status invalid = ASIOSMTPD_E_INVALID;
constexpr asiosmtpd_status gone = ASIOSMTPD_E_GONE;

class testkit_replies : public testing::Test {
protected:
    void SetUp() override
    {
        probe = probe_state{};
        h.add(&probe_entry);
    }
    bool error_logged(const std::string& reason) const
    {
        return h.logged("event=plugin_error hook=NOOP reason=\"" + reason + "\"");
    }
    tk::host h;
};

TEST_F(testkit_replies, codes_200_to_599)
{
    auto s = h.open();
    EXPECT_EQ(s.cmd("NOOP codes"), "599 5.0.0 last");
    EXPECT_EQ(probe.statuses, (statuses{invalid, invalid, invalid, ok, ok}));
}

TEST_F(testkit_replies, no_cr_nul_or_control_bytes_but_ht)
{
    auto s = h.open();
    EXPECT_EQ(s.cmd("NOOP bytes"), "250 tab\there and caf\xc3\xa9 \xff");
    EXPECT_EQ(probe.statuses, (statuses{invalid, invalid, invalid, invalid, invalid, ok}));
}

TEST_F(testkit_replies, lines_of_506_bytes_and_64_kib_in_all)
{
    auto s = h.open();
    const std::string r = s.cmd("NOOP lengths");
    EXPECT_EQ(probe.statuses, (statuses{invalid, invalid, invalid, ok}));
    EXPECT_EQ(r.substr(0, 8), "250-wwww");
}

TEST_F(testkit_replies, a_refused_reply_makes_the_verdict_a_plugin_error)
{
    auto s = h.open();
    EXPECT_EQ(s.cmd("NOOP refused"), internal);  // not the REJECT's default 550
    EXPECT_TRUE(error_logged("set_reply() refused: reply code 600 is outside 200..599"));
    EXPECT_EQ(s.cmd("NOOP refused-continue"), internal);  // CONTINUE too (as the server)
    EXPECT_TRUE(error_logged("set_reply() refused: reply text has CR at byte 1"));
    EXPECT_EQ(s.cmd("NOOP refused-then-good"), "252 2.0.0 second try");
    EXPECT_EQ(probe.statuses, (statuses{invalid, ok}));
    // Suspended: the completion decides, the refused reply before it no longer counts.
    EXPECT_EQ(s.cmd("NOOP refused-then-pending"), "250 2.0.0 the completion decides");
    EXPECT_EQ(probe.statuses, (statuses{invalid, ok, ok, gone}));
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
}

TEST_F(testkit_replies, complete_refuses_what_the_server_cannot_use_and_ends_the_call)
{
    h.hook_timeout = std::chrono::milliseconds(5000);
    auto s = h.open();
    const auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(s.cmd("NOOP complete-42"), internal);
    EXPECT_EQ(probe.statuses, (statuses{ok, invalid, gone}));  // ended: a second complete() is E_GONE
    EXPECT_TRUE(error_logged("complete() refused: unknown verdict 42"));
    EXPECT_EQ(s.cmd("NOOP complete-code"), internal);
    EXPECT_TRUE(error_logged("complete() refused: reply code 99 is outside 200..599"));
    EXPECT_EQ(s.cmd("NOOP complete-class"), internal);
    EXPECT_TRUE(error_logged("complete() refused: REJECT with reply code 250"));
    EXPECT_EQ(s.cmd("NOOP complete-cr"), internal);
    EXPECT_TRUE(error_logged("complete() refused: reply text has CR at byte 1"));
    EXPECT_EQ(s.cmd("NOOP complete-challenge"), internal);
    EXPECT_TRUE(error_logged("complete() refused: AUTH_CHALLENGE outside an AUTH mechanism"));
    EXPECT_EQ(s.cmd("NOOP complete-continue-bad"), internal);
    EXPECT_TRUE(error_logged("complete() refused: reply code 600 is outside 200..599"));
    // At once, not after the hook timeout.
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(2000));
    // Code 0 is "no reply": the verdict's default, whatever the text.
    EXPECT_EQ(s.cmd("NOOP complete-zero"), "550 5.7.1 Rejected");
    EXPECT_EQ(probe.statuses, (statuses{ok, ok, gone}));
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
}

TEST_F(testkit_replies, complete_pending_keeps_the_token_and_unknown_tokens_are_invalid)
{
    auto s = h.open();
    EXPECT_EQ(s.cmd("NOOP complete-pending"), "250 2.0.0 after all");
    EXPECT_EQ(probe.statuses, (statuses{ok, invalid, invalid, invalid, ok, gone}));
    EXPECT_EQ(h.api()->complete(probe.token, ASIOSMTPD_ACCEPT, 0, s_("")), gone);
}

TEST_F(testkit_replies, rcpt_replies_are_one_valid_line)
{
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "hi\r\n"), "250 OK");
    EXPECT_EQ(probe.statuses, (statuses{invalid, invalid, invalid, invalid, ok}));
}

TEST(testkit_replies_scripted, a_worker_completing_with_nonsense_ends_the_call_at_once)
{
    tk::host h;
    h.hook_timeout = std::chrono::milliseconds(5000);
    h.load(scripted, hooks({{"NOOP", tk::node::map({{"verdict", "nonsense"}, {"delay_ms", 10}})},
                            {"RSET", tk::node::map({{"verdict", "reject"}, {"code", 250}, {"text", "2.0.0 x"}})},
                            {"VRFY", tk::node::map({{"verdict", "accept"}, {"code", 250}, {"text", "{fill:507}"}})}}));
    auto s = h.open();
    const auto started = std::chrono::steady_clock::now();
    EXPECT_EQ(s.cmd("NOOP"), internal);
    EXPECT_LT(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(2000));
    // The worker logs complete()'s status after it returned, maybe after the reply went out.
    for (int i = 0; i < 200 && !h.logged("scripted: NOOP: complete() returned E_INVALID"); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_TRUE(h.logged("scripted: NOOP: complete() returned E_INVALID"));
    EXPECT_TRUE(h.logged("event=plugin_error hook=NOOP reason=\"complete() refused: unknown verdict 42\""));
    EXPECT_EQ(s.cmd("RSET"), internal);
    EXPECT_TRUE(h.logged("event=plugin_error hook=RSET reason=\"REJECT with reply code 250\""));
    EXPECT_EQ(s.cmd("VRFY someone"), internal);
    EXPECT_TRUE(h.logged("scripted: VRFY: set_reply returned E_INVALID"));
    EXPECT_TRUE(h.logged("reason=\"set_reply() refused: reply line of 507 bytes (at most 506)\""));
}

}  // namespace
