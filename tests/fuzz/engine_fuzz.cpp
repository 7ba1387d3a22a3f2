// SPDX-License-Identifier: Apache-2.0
// engine_fuzz: the SMTP engine against arbitrary client bytes, split at arbitrary points, with
// random settings, random hook chains and random (but host-valid) hook verdicts and replies.
//
// Input layout (tests/fuzz/README.md):
//   byte 0   settings flags A     byte 1   settings flags B
//   byte 2-3 hook mask (bit i: hook_order[i]; bit 14 streaming, bit 15 enable_chunking)
//   byte 4   n = number of control bytes, taken from the end of the input
//   then     the client byte stream; the last n bytes are the controls (used round-robin):
//            each step's action (chunk size, receive()/prepare()+commit(), complete a pending hook
//            or feed more bytes behind it, a timeout, a failed STARTTLS handshake) and each hook's
//            verdict come from them. STARTTLS handshakes otherwise succeed at once.
//
// Checked on every step: no crash or sanitizer report; output is whole reply lines
// ("DDD-..."/"DDD ...", CRLF-terminated, no bare LF, a multi-line reply keeps its code); a
// requested hook is one that has a chain; nothing is answered after close_requested(); without
// a pending hook, unprocessed input stays below the line limit (no unbounded buffering); no
// address or parameter the engine accepted (a MAIL/RCPT/VRFY hook's argument and parameters,
// the envelope's mail_from, rcpt_tos and mail_options) holds a control character (C0 or DEL),
// which a plugin could write into a header or a command line.
#include "fuzz_check.hpp"
#include "fuzz_input.hpp"
#include "proto/dsn.hpp"
#include "proto/engine.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace {

using namespace asiosmtpd::proto;
using asiosmtpd::fuzz::byte_reader;
using asiosmtpd::fuzz::controls;

constexpr std::array hook_order{hook_kind::connect,  hook_kind::helo,      hook_kind::ehlo,    hook_kind::mail,
                                hook_kind::rcpt,     hook_kind::data,      hook_kind::rset,    hook_kind::noop,
                                hook_kind::quit,     hook_kind::vrfy,      hook_kind::unknown, hook_kind::command,
                                hook_kind::starttls, hook_kind::data_chunk};

settings make_settings(std::uint8_t a, std::uint8_t b, std::uint16_t mask)
{
    settings s;
    s.hostname = "mx.fuzz";
    s.ident = "asiosmtpd fuzz";
    s.enable_smtputf8 = (a & 0x01) != 0;
    s.decode_data = (a & 0x02) != 0;
    s.advertise_pipelining = (a & 0x04) != 0;
    s.lmtp = (a & 0x08) != 0;
    s.starttls_available = (a & 0x10) != 0;
    s.require_starttls = (a & 0x20) != 0;
    s.auth_required = (a & 0x40) != 0;
    s.call_limit_enabled = (a & 0x80) != 0;
    if (s.call_limit_enabled) {
        s.call_limits = {{"NOOP", 2}, {"MAIL", 1}};
        s.call_limit_default = 3;
    }
    s.auth_require_tls = (b & 0x01) != 0;
    if ((b & 0x04) != 0) {
        s.commands = {{"PING", "PING [ignored]", false}, {"XSEC", "", true}};
    }
    if ((b & 0x08) != 0) s.ehlo_keywords = {"XFUZZ", "X-ONE two"};
    if ((b & 0x10) != 0) s.data_size_limit = 100;
    if ((b & 0x20) != 0) s.data_size_limit = 0;
    if ((b & 0x40) != 0) s.command_size_limit = 64;
    if ((b & 0x80) != 0) s.data_line_limit = 40;
    for (std::size_t i = 0; i < hook_order.size(); ++i)
        if ((mask & (1u << i)) != 0) s.hook_mask |= hook_bit(hook_order[i]);
    // Bit 14: every DATA hook's plugin also takes chunks, so the message is streamed.
    s.data_whole_message = (mask & (1u << 14)) == 0;
    // Bit 15: DSN (RFC 3461), enhanced status codes (RFC 2034) and CHUNKING (BDAT; fuzz_bdat
    // drives BDAT with well-formed conversations).
    s.enable_dsn = s.enable_enhanced_status_codes = s.enable_chunking = (mask & (1u << 15)) != 0;
    s.data_chunk_size = (b & 0x02) != 0 ? 16 : 64 * 1024;
    // The host registers a command together with its handler: a custom verb always has a chain.
    if (!s.commands.empty()) s.hook_mask |= hook_bit(hook_kind::command);
    return s;
}

// A verdict the host could hand over: plugin::to_result() only lets through codes whose class
// fits the verdict, and host_api set_reply() only texts without CR whose lines fit 506 octets.
hook_result make_result(std::uint8_t c)
{
    hook_result r;
    r.verdict = static_cast<verdict>(c % 7);
    const bool with_reply = (c & 0x08) != 0;
    if (with_reply) {
        const bool alt = (c & 0x40) != 0;
        if (r.verdict == verdict::accept) r.code = alt ? 354 : 250;
        else if (r.verdict == verdict::reject || r.verdict == verdict::reject_close) r.code = alt ? 554 : 550;
        else if (r.verdict == verdict::tempfail || r.verdict == verdict::tempfail_close) r.code = alt ? 421 : 451;
    }
    static constexpr std::array<std::string_view, 4> texts{"", "2.0.0 fuzz ok", "first\nsecond\nthird", "line\n"};
    if (r.code != 0) r.text = texts[(c >> 4) & 3];
    return r;
}

bool has_control(std::string_view s)
{
    return std::any_of(s.begin(), s.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f;
    });
}

// What the engine accepted from MAIL/RCPT/VRFY: free of control characters.
void check_no_control(const hook_request* h, const envelope& env)
{
    if (h && (h->kind == hook_kind::mail || h->kind == hook_kind::rcpt || h->kind == hook_kind::vrfy)) {
        ASIOSMTPD_FUZZ_CHECK(!has_control(h->argument), "no control character in a hook's address");
        for (const std::string& p : h->params)
            ASIOSMTPD_FUZZ_CHECK(!has_control(p), "no control character in a hook's parameter");
    }
    ASIOSMTPD_FUZZ_CHECK(!has_control(env.mail_from), "no control character in the envelope's mail_from");
    for (const std::string& r : env.rcpt_tos)
        ASIOSMTPD_FUZZ_CHECK(!has_control(r), "no control character in the envelope's rcpt_tos");
    for (const std::string& p : env.mail_options)
        ASIOSMTPD_FUZZ_CHECK(!has_control(p), "no control character in the envelope's mail_options");
    for (const auto& params : env.rcpt_options)
        for (const std::string& p : params)
            ASIOSMTPD_FUZZ_CHECK(!has_control(p), "no control character in the envelope's rcpt_options");
}

class checker {
public:
    // Every reply line: three digits, then ' ' or '-' (or nothing), then CRLF; a '-' line is
    // followed by a line with the same code (possibly in a later output() batch).
    void output(std::string_view out)
    {
        if (out.empty()) return;
        ASIOSMTPD_FUZZ_CHECK(out.size() >= 2 && out.substr(out.size() - 2) == "\r\n", "output ends with CRLF");
        while (!out.empty()) {
            const auto end = out.find("\r\n");
            const std::string_view line = out.substr(0, end);
            out.remove_prefix(end + 2);
            ASIOSMTPD_FUZZ_CHECK(line.find('\n') == std::string_view::npos, "no bare LF in a reply line");
            ASIOSMTPD_FUZZ_CHECK(line.size() >= 3, "reply line has a code");
            ASIOSMTPD_FUZZ_CHECK(
                std::all_of(line.begin(), line.begin() + 3, [](char c) { return c >= '0' && c <= '9'; }),
                "reply code is three digits");
            ASIOSMTPD_FUZZ_CHECK(line[0] >= '2' && line[0] <= '5', "reply code class 2-5");
            ASIOSMTPD_FUZZ_CHECK(line.size() == 3 || line[3] == ' ' || line[3] == '-', "separator after the code");
            if (!continued_.empty())
                ASIOSMTPD_FUZZ_CHECK(line.substr(0, 3) == continued_, "a multi-line reply keeps its code");
            continued_ = line.size() > 3 && line[3] == '-' ? std::string(line.substr(0, 3)) : std::string();
        }
    }
    [[nodiscard]] bool in_multiline() const noexcept { return !continued_.empty(); }

private:
    std::string continued_;
};

// ASIOSMTPD_FUZZ_TRACE=1: print every reply batch and hook (to read what a crashing input does).
const bool trace = std::getenv("ASIOSMTPD_FUZZ_TRACE") != nullptr;

void print_escaped(std::string_view prefix, std::string_view text)
{
    std::string o(prefix);
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '\r') o += "\\r";
        else if (c == '\n') o += "\\n\n";
        else if (u < 0x20 || u >= 0x7f) {
            static constexpr char hex[] = "0123456789abcdef";
            o += "\\x";
            o += hex[u >> 4];
            o += hex[u & 15];
        } else o += c;
    }
    std::fprintf(stderr, "%s\n", o.c_str());
}

struct session {
    const settings& s;
    engine e;
    checker check;
    bool was_closed = false;

    explicit session(const settings& st) : s(st), e(st) {}

    void drain()
    {
        if (was_closed) ASIOSMTPD_FUZZ_CHECK(e.output().empty(), "nothing is sent after the close was requested");
        if (trace && !e.output().empty()) print_escaped("S: ", e.output());
        check.output(e.output());
        e.clear_output();
        if (e.close_requested()) {
            ASIOSMTPD_FUZZ_CHECK(!check.in_multiline(), "the last reply before a close is complete");
            was_closed = true;
        }
        check_no_control(e.pending_hook(), e.current_envelope());
        if (const hook_request* h = e.pending_hook()) {
            if (trace) print_escaped("hook " + std::to_string(static_cast<int>(h->kind)) + ": ", h->argument);
            ASIOSMTPD_FUZZ_CHECK((s.hook_mask & hook_bit(h->kind)) != 0, "only hooks with a chain are run");
            ASIOSMTPD_FUZZ_CHECK(!e.close_requested(), "no hook after the close");
            if (h->kind == hook_kind::command)
                ASIOSMTPD_FUZZ_CHECK(h->command_index < s.commands.size(), "command index");
            // Touch every view the host would read, so ASan sees a dangling one.
            volatile std::size_t sum = 0;
            for (const char c : h->verb) sum = sum + static_cast<unsigned char>(c);
            for (const char c : h->argument) sum = sum + static_cast<unsigned char>(c);
            for (const std::string& p : h->params) sum = sum + p.size();
            for (const char c : h->content) sum = sum + static_cast<unsigned char>(c);
            (void)sum;
        } else if (!e.close_requested()) {
            // Only a partial line may wait: the command stream limit (aiosmtpd's 1001) or the DATA
            // line limit, whichever is larger, plus the SIZE/SMTPUTF8 extension of MAIL and, with
            // DSN, RFC 3461's room for RCPT's NOTIFY and ORCPT.
            const std::size_t bound =
                std::max(s.data_line_limit, s.command_size_limit + 38 + (s.enable_dsn ? dsn::rcpt_line_allowance : 0)) +
                1;
            if (trace) std::fprintf(stderr, "buffered %zu (bound %zu)\n", e.buffered(), bound);
            ASIOSMTPD_FUZZ_CHECK(e.buffered() <= bound, "unprocessed input is bounded");
        }
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    byte_reader in(data, size);
    const std::uint8_t flags_a = in.byte();
    const std::uint8_t flags_b = in.byte();
    const auto mask = static_cast<std::uint16_t>(in.byte() | (in.byte() << 8));
    const std::size_t ncontrols = in.byte();
    controls ctl(in.take_back(ncontrols));
    const std::string_view stream = in.rest();

    const settings s = make_settings(flags_a, flags_b, mask);
    session t(s);
    t.e.set_tls_active((flags_b & 0x02) != 0);
    t.e.start();
    t.drain();

    std::size_t at = 0;
    // Every step either consumes input or completes a hook, and every hook comes from a consumed
    // line or the connect; the step bound only guards the harness itself.
    for (std::size_t steps = 0; steps < 4 * size + 16; ++steps) {
        if (t.e.close_requested()) break;
        const bool pending = t.e.pending_hook() != nullptr;
        if (at == stream.size() && !pending) break;
        if (t.e.tls_requested()) {
            // The session writes the 220, runs the handshake and reports it; a failed handshake
            // (a control byte of 0xff) closes the connection.
            if (ctl.next(0) == 0xff) break;
            t.e.tls_established();
            t.drain();
            continue;
        }
        const std::uint8_t c = ctl.next(0);
        if (pending && (at == stream.size() || (c & 0x03) != 0x03)) {
            t.e.hook_done(make_result(ctl.next(0)));
            t.drain();
            continue;
        }
        if ((c & 0xfc) == 0xfc && ctl.next(0) == 0xff) {
            // Rare: the idle timer fires (or the host aborts) in the middle of things.
            if ((c & 0x01) != 0) t.e.timed_out();
            else t.e.abort_with("421 4.3.2 mx.fuzz Service shutting down");
            t.drain();
            ASIOSMTPD_FUZZ_CHECK(t.e.close_requested(), "timeout and abort close");
            break;
        }
        // Chunk: 0 = everything left, else 1..63 bytes.
        std::size_t n = (c >> 2) & 0x3f;
        if (n == 0) n = stream.size() - at;
        n = std::min(n, stream.size() - at);
        const std::string_view chunk = stream.substr(at, n);
        at += n;
        if (trace) print_escaped("C: ", chunk);
        if ((c & 0x80) != 0 && (c & 0x40) == 0) {
            auto room = t.e.prepare(chunk.size());
            ASIOSMTPD_FUZZ_CHECK(room.size() >= chunk.size(), "prepare() gives the room asked for");
            std::copy(chunk.begin(), chunk.end(), room.begin());
            t.e.commit(chunk.size());
        } else {
            t.e.receive(chunk);
        }
        t.drain();
    }

    // A session that ends by timeout says so, unless it is already closed.
    if (!t.e.close_requested() && !t.e.pending_hook()) {
        t.e.timed_out();
        t.drain();
        ASIOSMTPD_FUZZ_CHECK(t.e.close_requested(), "timed_out() closes");
    }
    return 0;
}
