// SPDX-License-Identifier: Apache-2.0
// bdat_fuzz: the engine's BDAT state machine (RFC 3030, settings::enable_chunking) against
// generated conversations: BDAT chunks (payloads from the input, or made of command lines),
// LAST, BDAT 0, a bad end marker, an unreadable size, MAIL (also BODY=BINARYMIME), RCPT, RSET,
// DATA, EHLO/LHLO, NOOP; each command's bytes split at points the control bytes choose,
// DATA_CHUNK and DATA hooks answered with verdicts they choose.
//
// Input layout (tests/fuzz/README.md):
//   byte 0   settings flags: 0x01 LMTP, 0x02 data_size_limit 64, 0x04 a DATA_CHUNK hook,
//            0x08 a DATA hook, 0x10 streaming (data_whole_message false), 0x20 pieces of 16,
//            0x40 a Received prefix, 0x80 require_starttls (everything but NOOP/EHLO refused)
//   byte 1   n = number of control bytes, taken from the end of the input
//   then     operations: an op byte, and for chunks a size byte and the payload's bytes
//
// Checked after every operation, besides no crash or sanitizer report: the replies are whole
// lines; each command got exactly its replies (one; DATA's 354 and the final one; LMTP's last
// chunk one per recipient) - so a chunk's octets were never taken for commands; nothing stays
// buffered and no chunk is half-read; every DATA_CHUNK piece and the DATA hook's content are
// exactly the octets of the chunks the engine accepted (after the Received prefix); the
// message's size is theirs.
#include "fuzz_check.hpp"
#include "fuzz_input.hpp"
#include "proto/engine.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace {

using namespace asiosmtpd::proto;
using asiosmtpd::fuzz::byte_reader;
using asiosmtpd::fuzz::controls;

constexpr std::string_view prefix = "Received: from fuzz\r\n";

settings make_settings(std::uint8_t f)
{
    settings s;
    s.hostname = "mx.fuzz";
    s.ident = "asiosmtpd fuzz";
    s.enable_chunking = true;
    s.lmtp = (f & 0x01) != 0;
    if ((f & 0x02) != 0) s.data_size_limit = 64;
    if ((f & 0x04) != 0) s.hook_mask |= hook_bit(hook_kind::data_chunk);
    if ((f & 0x08) != 0) s.hook_mask |= hook_bit(hook_kind::data);
    s.data_whole_message = (f & 0x10) == 0;
    s.data_chunk_size = (f & 0x20) != 0 ? 16 : 64 * 1024;
    s.starttls_available = s.require_starttls = (f & 0x80) != 0;
    return s;
}

// Complete replies in `out` (a reply ends with a line "DDD text" or "DDD"); checks the lines.
std::size_t count_replies(std::string_view out)
{
    std::size_t n = 0;
    while (!out.empty()) {
        const auto end = out.find("\r\n");
        ASIOSMTPD_FUZZ_CHECK(end != std::string_view::npos, "replies are whole lines");
        const std::string_view line = out.substr(0, end);
        out.remove_prefix(end + 2);
        ASIOSMTPD_FUZZ_CHECK(line.size() >= 3 && line.find('\n') == std::string_view::npos, "a reply line");
        ASIOSMTPD_FUZZ_CHECK(line[0] >= '2' && line[0] <= '5', "reply code class 2-5");
        if (line.size() == 3 || line[3] != '-') ++n;
    }
    return n;
}

class conversation {
public:
    conversation(const settings& s, bool prefixed, byte_reader& in, controls& ctl) : s_(s), e_(s), in_(in), ctl_(ctl)
    {
        // The engine puts the prefix on top when it keeps the message (a DATA_CHUNK hook, or
        // a DATA hook that takes the whole message).
        const bool keeps = has(hook_kind::data_chunk) || (has(hook_kind::data) && s.data_whole_message);
        if (keeps && prefixed) {
            with_prefix_ = true;
            e_.set_message_prefix([] { return std::string(prefix); });
        }
    }

    void run()
    {
        e_.start();
        ASIOSMTPD_FUZZ_CHECK(take() == 1, "the greeting");
        while (!e_.close_requested() && !in_.done()) step(in_.byte());
    }

private:
    [[nodiscard]] bool has(hook_kind k) const noexcept { return (s_.hook_mask & hook_bit(k)) != 0; }

    void step(std::uint8_t op)
    {
        const bool bit = (op & 0x80) != 0;
        switch (op % 13) {
        case 0:
        case 1:
        case 2: return chunk(false, false);
        case 3:
        case 4: return chunk(true, false);
        case 5: return command(bit ? "MAIL FROM:<a@b> BODY=BINARYMIME" : "MAIL FROM:<a@b>");
        case 6: return command("RCPT TO:<c@d>");
        case 7: command("RSET"); return end_message();
        case 8: return data();
        case 9: command(s_.lmtp ? "LHLO c" : "EHLO c"); return end_message();
        case 10: return chunk(bit, true);
        case 11: return command("NOOP");
        default:
            // An unreadable size: 521 and the connection closes (the STARTTLS gate answers first).
            send(bit ? "BDAT\r\nNOOP\r\n" : "BDAT 1x\r\nNOOP\r\n");
            if (s_.require_starttls) ASIOSMTPD_FUZZ_CHECK(take() == 2, "refused, then NOOP");
            else
                ASIOSMTPD_FUZZ_CHECK(take() == 1 && last_code_ == 521 && e_.close_requested(),
                                     "unreadable BDAT closes");
            return;
        }
    }

    void command(std::string_view line)
    {
        send(std::string(line) + "\r\n");
        ASIOSMTPD_FUZZ_CHECK(take() == 1, "one reply per command");
    }

    // The replies to a message's end: one, or in LMTP one per recipient.
    void check_final(std::size_t n, std::size_t rcpts) const
    {
        if (s_.lmtp) ASIOSMTPD_FUZZ_CHECK(n == 1 || n == rcpts, "LMTP: one reply, or one per recipient");
        else ASIOSMTPD_FUZZ_CHECK(n == 1, "one reply to the message");
    }

    void data()
    {
        send("DATA\r\n");
        ASIOSMTPD_FUZZ_CHECK(take() == 1, "one reply to DATA");
        if (last_reply_.find("DATA after BDAT") != std::string::npos) return;  // the BDAT message goes on
        end_message();
        if (last_code_ != 354) return;
        const std::size_t rcpts = e_.current_envelope().rcpt_tos.size();
        expected_ = "line\r\n";
        send("line\r\n.\r\n");
        check_final(take(), rcpts);
        end_message();
    }

    // BDAT <size> [LAST] (bad: a bad end marker) and its octets: from the input, or command
    // lines that must stay data.
    void chunk(bool last, bool bad)
    {
        const std::size_t size = in_.byte();
        std::string payload;
        if ((ctl_.next(0) & 0x10) != 0) {
            static constexpr std::string_view lines = "QUIT\r\nRSET\r\nBDAT 3 LAST\r\nDATA\r\n.\r\n";
            while (payload.size() < size) payload += lines;
            payload.resize(size);
        } else {
            for (std::size_t i = 0; i < size; ++i) payload.push_back(static_cast<char>(in_.byte()));
        }
        std::string line = "BDAT " + std::to_string(size);
        if (bad) line += last ? " LAST LAST" : " LATER";
        else if (last) line += (ctl_.next(0) & 0x20) != 0 ? " last" : " LAST";
        const std::size_t rcpts = e_.current_envelope().rcpt_tos.size();
        expected_ = message_ + payload;
        send(line + "\r\n" + payload);
        const std::size_t n = take();
        if (!e_.close_requested())
            ASIOSMTPD_FUZZ_CHECK(!e_.reading_data() && e_.buffered() == 0, "the chunk is read to its end");
        else ASIOSMTPD_FUZZ_CHECK(closes_, "a chunk closes the session only when a hook says so");
        if (!bad && !last && last_code_ / 100 == 2) {
            ASIOSMTPD_FUZZ_CHECK(n == 1, "one reply to a chunk");
            ASIOSMTPD_FUZZ_CHECK(last_reply_ == "250 2.0.0 Ok: " + std::to_string(size) + " octets received",
                                 "a chunk's 250");
            message_ = expected_;
            return;
        }
        if (!bad && last) check_final(n, rcpts);
        else ASIOSMTPD_FUZZ_CHECK(n == 1, "one reply to a refused chunk");
        if (!bad && last && seen_whole_)
            ASIOSMTPD_FUZZ_CHECK(whole_ == expected_, "the message is the octets of the accepted chunks");
        // The message ended, or was refused (a refused chunk never leaves one open).
        end_message();
    }

    void end_message()
    {
        message_.clear();
        streamed_.clear();
        seen_whole_ = false;
    }

    void send(const std::string& bytes)
    {
        std::size_t at = 0;
        while (at < bytes.size() && !e_.close_requested()) {
            answer_hooks();
            const std::uint8_t c = ctl_.next(0);
            std::size_t n = c & 0x3f;
            if (n == 0) n = bytes.size() - at;
            n = std::min(n, bytes.size() - at);
            const std::string_view part(bytes.data() + at, n);
            at += n;
            if ((c & 0x40) != 0) {
                auto room = e_.prepare(part.size());
                std::copy(part.begin(), part.end(), room.begin());
                e_.commit(part.size());
            } else {
                e_.receive(part);
            }
        }
        answer_hooks();
    }

    std::string strip(std::string content) const
    {
        if (with_prefix_) {
            ASIOSMTPD_FUZZ_CHECK(content.compare(0, prefix.size(), prefix) == 0, "the Received prefix on top");
            content.erase(0, prefix.size());
        }
        return content;
    }

    void answer_hooks()
    {
        const std::size_t top = with_prefix_ ? prefix.size() : 0;
        while (const hook_request* h = e_.pending_hook()) {
            ASIOSMTPD_FUZZ_CHECK(h->kind == hook_kind::data_chunk || h->kind == hook_kind::data, "only message hooks");
            if (h->kind == hook_kind::data_chunk) {
                streamed_ += h->content;
                ASIOSMTPD_FUZZ_CHECK(h->content_size == streamed_.size(), "a piece's message_size");
                if (s_.data_chunk_size == 16 && !h->last_chunk)
                    ASIOSMTPD_FUZZ_CHECK(h->content.size() >= 16, "pieces of data_chunk_size but the last");
                const std::string so_far = strip(streamed_);
                ASIOSMTPD_FUZZ_CHECK(expected_.compare(0, so_far.size(), so_far) == 0,
                                     "the pieces are the message's octets");
                if (h->last_chunk) {
                    seen_whole_ = true;
                    whole_ = so_far;
                }
            } else {
                if (!h->streamed) {
                    whole_ = strip(std::string(h->content));
                    seen_whole_ = true;
                    ASIOSMTPD_FUZZ_CHECK(h->content_size == h->content.size(), "the DATA hook's message_size");
                } else {
                    ASIOSMTPD_FUZZ_CHECK(h->content.empty(), "a streamed DATA hook has no content");
                    ASIOSMTPD_FUZZ_CHECK(h->content_size == expected_.size() + (has(hook_kind::data_chunk) ? top : 0),
                                         "the streamed DATA hook's message_size");
                }
            }
            const std::uint8_t v = ctl_.next(0);
            hook_result r;
            r.verdict = static_cast<verdict>(v % 7 == 6 ? 0 : v % 7);  // no AUTH challenges here
            if ((v & 0x80) != 0 && r.verdict == verdict::reject) r.code = 554;
            if (r.verdict == verdict::reject_close || r.verdict == verdict::tempfail_close) closes_ = true;
            e_.hook_done(r);
        }
    }

    // The replies since the last call; remembers the last one's code and line.
    std::size_t take()
    {
        const std::string out = e_.output();
        e_.clear_output();
        const std::size_t n = count_replies(out);
        last_reply_.clear();
        last_code_ = 0;
        if (!out.empty()) {
            const std::size_t start = out.size() > 2 ? out.rfind("\r\n", out.size() - 3) : std::string::npos;
            const std::size_t from = start == std::string::npos ? 0 : start + 2;
            last_reply_ = out.substr(from, out.size() - 2 - from);
            last_code_ = (last_reply_[0] - '0') * 100 + (last_reply_[1] - '0') * 10 + (last_reply_[2] - '0');
        }
        return n;
    }

    const settings& s_;
    engine e_;
    byte_reader& in_;
    controls& ctl_;
    bool with_prefix_ = false;
    bool closes_ = false;      // a hook asked to close
    std::string message_;      // the octets of the chunks accepted for the open message
    std::string expected_;     // the message as it stands with the chunk being sent
    std::string streamed_;     // DATA_CHUNK pieces of the current message (prefix included)
    bool seen_whole_ = false;  // the whole message was seen (DATA hook content or last piece)
    std::string whole_;        // what it was (without the prefix)
    int last_code_ = 0;
    std::string last_reply_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    byte_reader in(data, size);
    const std::uint8_t flags = in.byte();
    const std::size_t ncontrols = in.byte();
    controls ctl(in.take_back(ncontrols));
    const settings s = make_settings(flags);
    conversation c(s, (flags & 0x40) != 0, in, ctl);
    c.run();
    return 0;
}
