// SPDX-License-Identifier: Apache-2.0
// engine: BDAT (RFC 3030 CHUNKING, with BINARYMIME), behind settings::enable_chunking.
//
// A chunk's octets are message data as they come: no dot-stuffing, no line rules, any byte. They
// go where DATA's unstuffed lines go (envelope_.content, the DATA_CHUNK pieces, the size limit,
// the DATA hook after the LAST chunk), so that plugins see a message the same whichever command
// carried it. Every chunk of a BDAT whose size could be read is read to its end, also when the
// command is refused, so that its octets are never taken for commands; each chunk's reply comes
// after its octets (RFC 3030 §2). The choices where the RFC leaves room are Postfix's
// (docs/behaviour.md).
#include "proto/engine.hpp"

#include <algorithm>
#include <charconv>

namespace asiosmtpd::proto {
namespace {

struct bdat_command {
    bool size_known = false;  // the chunk's size could be read: it can be skipped
    bool valid = false;       // "<size> [LAST]" exactly (LAST in any case)
    std::uint64_t size = 0;
    bool last = false;
};

constexpr bool is_blank(char c) noexcept { return c == ' ' || c == '\t'; }

// RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CRLF, chunk-size = 1*DIGIT,
// end-marker = "LAST". Words are separated by blanks, as aiosmtpd splits arguments.
bdat_command parse_bdat(std::string_view arg) noexcept
{
    std::string_view words[3];
    std::size_t count = 0;
    for (std::size_t i = 0; i < arg.size();) {
        while (i < arg.size() && is_blank(arg[i])) ++i;
        const std::size_t start = i;
        while (i < arg.size() && !is_blank(arg[i])) ++i;
        if (i == start) break;
        if (count == 3) return {};
        words[count++] = arg.substr(start, i - start);
    }
    bdat_command c;
    std::string_view digits = words[0];
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
        return c;
    while (digits.size() > 1 && digits.front() == '0') digits.remove_prefix(1);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), c.size);
    if (ec != std::errc() || end != digits.data() + digits.size()) return c;  // beyond 2^64: unreadable
    c.size_known = true;
    const std::string_view marker = words[1];
    c.last = marker.size() == 4 && std::equal(marker.begin(), marker.end(), "LAST", [](char a, char b) {
                 return (a >= 'a' && a <= 'z' ? static_cast<char>(a - 'a' + 'A') : a) == b;
             });
    c.valid = count == 1 || (count == 2 && c.last);
    return c;
}

// Everything after the verb, as handle_command() gives it.
std::string_view argument_of(std::string_view line) noexcept
{
    const auto space = line.find(' ');
    return space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
}

bool is_ascii(std::string_view s) noexcept
{
    return std::none_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

}  // namespace

void engine::on_bdat(std::string_view arg, bool)
{
    const bdat_command c = parse_bdat(arg);
    if (!c.size_known) {
        // Where the chunk ends is unknown: whatever follows could be message data.
        reply(replies::bdat_unreadable);
        return close("malformed BDAT");
    }
    // The checks of DATA (aiosmtpd's order), each answered after the chunk.
    std::string_view refusal;
    if (host_name_.empty()) refusal = replies::need_helo;
    else if (settings_.auth_required && !authenticated_) refusal = replies::auth_required;
    else if (bdat_failed()) refusal = replies::bdat_after_error;
    else if (envelope_.rcpt_tos.empty()) refusal = replies::need_rcpt;
    else if (!c.valid) refusal = replies::syntax_bdat;
    start_chunk(c.size, c.last, refusal);
}

// After the BDAT command line ran (handle_line): true when its reply waits for its chunk.
bool engine::after_bdat(std::string_view line, std::size_t reply_start)
{
    if (!settings_.enable_chunking || closed_ || waiting_) return false;
    if (phase_ == phase::bdat) {
        bdat_line_.set().assign(line);
        return true;
    }
    // Refused before on_bdat() ran (require_starttls, a STARTTLS veto, a refused connection, a
    // line too long): its octets follow all the same. The reply goes after them.
    if (phase_ != phase::command || out_.size() <= reply_start + 2) return false;
    const bdat_command c = parse_bdat(argument_of(line));
    if (!c.size_known) return false;
    bdat_line_.set().assign(line);
    const std::string refusal = out_.substr(reply_start, out_.size() - reply_start - 2);  // without CRLF
    out_.resize(reply_start);
    start_chunk(c.size, c.last, refusal);
    return true;
}

void engine::start_chunk(std::uint64_t size, bool last, std::string_view refusal)
{
    bdat_remaining_ = size;
    bdat_size_ = size;
    bdat_last_ = last;
    if (refusal.empty()) bdat_refusal_.reset();
    else bdat_refusal_.set().assign(refusal);
    phase_ = phase::bdat;
    if (!refusal.empty()) return;
    if (!bdat_open()) {
        begin_message();
        bdat_serial_ = envelope_serial_;
    }
    // Postfix: a chunk that would take the message over the limit is refused as a whole (and
    // read, and dropped); what came before stays within the limit.
    if (settings_.data_size_limit != 0 &&
        size > settings_.data_size_limit - std::min(data_bytes_, settings_.data_size_limit))
        data_error_ = data_error::too_much;
}

// A chunk's octets, as they arrive. The message's bytes as DATA's lines would give them after
// unstuffing, with the same DATA_CHUNK pieces (the same backpressure, the same memory bound).
bool engine::step_bdat()
{
    if (bdat_remaining_ == 0) {
        end_of_chunk();
        return true;
    }
    const bool dropped = !bdat_refusal_.get().empty() || data_error_ != data_error::none;
    const bool streams = !dropped && has_hook(hook_kind::data_chunk);
    const std::size_t piece_size = std::max<std::size_t>(settings_.data_chunk_size, 1);
    const std::size_t held = envelope_.content.size() - chunk_from_;
    if (streams && held >= piece_size) {
        ask_chunk(false);  // a piece is due before more is taken (the trace field can fill one)
        return true;
    }
    std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(end_ - pos_, bdat_remaining_));
    // Pieces of data_chunk_size: the engine holds no more of the message than with DATA.
    if (streams) take = std::min(take, piece_size - held);
    if (take == 0) return false;
    const std::string_view piece(input() + pos_, take);
    pos_ += take;
    scan_ = pos_;
    bdat_remaining_ -= take;
    if (dropped) return true;
    data_bytes_ += take;
    data_unstuffed_ += take;
    if (settings_.decode_data && !settings_.enable_smtputf8 && !data_non_ascii_ && !is_ascii(piece))
        data_non_ascii_ = true;
    if (!keeps_content()) return true;
    envelope_.content.append(piece);
    if (streams && envelope_.content.size() - chunk_from_ >= piece_size) ask_chunk(false);
    return true;
}

// The chunk's last octet is in: its reply.
void engine::end_of_chunk()
{
    ++progress_;
    phase_ = phase::command;
    const std::size_t at = out_.size();
    if (!bdat_refusal_.get().empty()) {
        reply(bdat_refusal_.get());
        note_refusal(bdat_line_.get(), at);
        bdat_refusal_.reset();
        if (bdat_open()) fail_bdat_message(at);                             // a malformed BDAT in mid-message
        else if (bdat_last_ && bdat_failed()) bdat_failed_serial_ = ~0ull;  // the failed message's end
        return;
    }
    if (data_error_ == data_error::too_much) {
        reply(replies::too_much_data);
        return fail_bdat_message(at);
    }
    if (chunk_refusal_.get().verdict != verdict::none) {
        // A DATA_CHUNK hook refused the message: this chunk's reply (LAST: the message's, one per
        // recipient in LMTP).
        const hook_result r = std::exchange(chunk_refusal_.set(), hook_result{});
        if (bdat_last_) return deliver_data_reply(r);
        reply_for(r, {});
        return fail_bdat_message(at);
    }
    if (!bdat_last_) return reply(replies::bdat_chunk_ok(bdat_size_));
    // The last piece (possibly empty: the hooks learn the message is complete), then DATA.
    if (has_hook(hook_kind::data_chunk)) return ask_chunk(true);
    finish_data();
}

// The message is refused at this chunk (its reply starts at out_[reply_start]): logged and ended
// as DATA's are. Before LAST, the chunks still to come are discarded (RFC 3030 §2).
void engine::fail_bdat_message(std::size_t reply_start)
{
    if (envelope_.content.capacity() > settings_.data_chunk_size) std::string().swap(envelope_.content);
    else envelope_.content.clear();
    data_error_ = data_error::none;
    summarize(reply_start);
    reset_envelope(transaction_end::how::refused, {}, reply_start);
    if (!bdat_last_) bdat_failed_serial_ = envelope_serial_;
}

// DATA in a transaction that BDAT began, or for a BODY=BINARYMIME message: 503 (RFC 3030 §2, §3).
bool engine::bdat_refuses_data()
{
    if (!settings_.enable_chunking) return false;
    if (bdat_open()) {
        reply(replies::data_after_bdat);
        return true;
    }
    const auto& options = envelope_.mail_options;
    if (std::find(options.begin(), options.end(), "BODY=BINARYMIME") != options.end()) {
        reply(replies::binarymime_needs_bdat);
        return true;
    }
    return false;
}

}  // namespace asiosmtpd::proto
