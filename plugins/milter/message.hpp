// SPDX-License-Identifier: Apache-2.0
// The message as a milter sees it: header fields one by one (name, value; a folded field's
// lines joined with "\n", as Postfix and Sendmail send them), the end of the headers, then the
// body in chunks of at most 65535 bytes, exactly as received (CRLF). The message arrives in
// pieces (DATA_CHUNK); this splitter keeps at most one unfinished header field (capped) and one
// body chunk, so memory stays bounded whatever the message's size. Header-only, std only.
#ifndef ASIOSMTPD_PLUGINS_MILTER_MESSAGE_HPP
#define ASIOSMTPD_PLUGINS_MILTER_MESSAGE_HPP

#include "protocol.hpp"

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::plugins::milter {

struct message_event {
    enum class kind { header, eoh, body } what = kind::header;
    std::string name;  ///< header: the field name (without the colon)
    std::string data;  ///< header: the value; body: the chunk
};

class message_splitter {
public:
    /// `leading_space`: the milter negotiated SMFIP_HDR_LEADSPC (values keep the space after
    /// the colon); otherwise one space after the colon is dropped, as Sendmail does.
    /// `field_limit`: bytes kept of one header line and of one field; the rest of a longer one is
    /// dropped.
    explicit message_splitter(bool leading_space = false, std::size_t field_limit = 1u << 20,
                              std::size_t chunk = body_chunk_size)
        : leading_space_(leading_space),
          field_limit_(field_limit),
          chunk_(chunk)
    {}

    /// The next piece of the message; appends what it completes to `out`.
    void feed(std::string_view piece, std::vector<message_event>& out)
    {
        std::size_t pos = 0;
        while (in_headers_ && pos < piece.size()) {
            const std::size_t nl = piece.find('\n', pos);
            if (nl == std::string_view::npos) {
                keep(line_, piece.substr(pos));
                return;
            }
            keep(line_, piece.substr(pos, nl + 1 - pos));
            pos = nl + 1;
            header_line(out);
        }
        if (pos < piece.size()) body(piece.substr(pos), out);
    }

    /// The end of the message: what is left (a last field, the end of headers, a last chunk).
    void finish(std::vector<message_event>& out)
    {
        if (in_headers_ && !line_.empty()) header_line(out);
        if (in_headers_) end_headers(out);
        if (!chunk_buf_.empty()) {
            out.push_back({message_event::kind::body, {}, std::move(chunk_buf_)});
            chunk_buf_.clear();
        }
    }

    bool in_headers() const noexcept { return in_headers_; }
    /// Whether a header field longer than field_limit was cut.
    bool truncated() const noexcept { return truncated_; }

private:
    // Appends to the unfinished line, at most field_limit bytes of it (the line end is kept).
    void keep(std::string& into, std::string_view bytes)
    {
        const std::size_t room = field_limit_ > into.size() ? field_limit_ - into.size() : 0;
        if (bytes.size() > room) {
            truncated_ = true;
            const bool nl = !bytes.empty() && bytes.back() == '\n';
            into.append(bytes.substr(0, room));
            if (nl && (into.empty() || into.back() != '\n')) into += '\n';
            return;
        }
        into.append(bytes);
    }

    static bool is_name_char(char ch) noexcept
    {
        const auto u = static_cast<unsigned char>(ch);
        return u > 0x20 && u < 0x7F && ch != ':';
    }

    // A header name, then optional blanks, then ':'. Returns the colon's position or npos.
    static std::size_t header_colon(std::string_view line) noexcept
    {
        std::size_t i = 0;
        while (i < line.size() && is_name_char(line[i])) ++i;
        if (i == 0) return std::string_view::npos;
        while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
        return i < line.size() && line[i] == ':' ? i : std::string_view::npos;
    }

    // line_ holds one whole line (with its line end, unless the message ended first).
    void header_line(std::vector<message_event>& out)
    {
        std::string_view text = line_;
        if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
        if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
        if (text.empty()) {  // the empty line: headers end, the body follows it
            line_.clear();
            end_headers(out);
            return;
        }
        if ((text.front() == ' ' || text.front() == '\t') && have_field_) {
            if (field_.size() + 1 + text.size() > field_limit_) {
                truncated_ = true;  // the rest of an overlong field is dropped
                line_.clear();
                return;
            }
            field_ += '\n';
            field_.append(text);
            line_.clear();
            return;
        }
        if (header_colon(text) == std::string_view::npos) {
            // Not a header: the headers end without an empty line; this line is the body's first.
            std::string first = std::move(line_);
            line_.clear();
            end_headers(out);
            body(first, out);
            return;
        }
        flush_field(out);
        field_.assign(text);
        have_field_ = true;
        line_.clear();
    }

    void flush_field(std::vector<message_event>& out)
    {
        if (!have_field_) return;
        std::string_view f = field_;
        const std::size_t colon = header_colon(f);
        std::string_view name = f.substr(0, colon);
        while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
        std::string_view value = f.substr(colon + 1);
        if (!leading_space_ && !value.empty() && value.front() == ' ') value.remove_prefix(1);
        out.push_back({message_event::kind::header, std::string(name), std::string(value)});
        field_.clear();
        have_field_ = false;
    }

    void end_headers(std::vector<message_event>& out)
    {
        flush_field(out);
        out.push_back({message_event::kind::eoh, {}, {}});
        in_headers_ = false;
    }

    void body(std::string_view bytes, std::vector<message_event>& out)
    {
        while (!bytes.empty()) {
            const std::size_t room = chunk_ - chunk_buf_.size();
            const std::size_t n = bytes.size() < room ? bytes.size() : room;
            chunk_buf_.append(bytes.substr(0, n));
            bytes.remove_prefix(n);
            if (chunk_buf_.size() == chunk_) {
                out.push_back({message_event::kind::body, {}, std::move(chunk_buf_)});
                chunk_buf_.clear();
            }
        }
    }

    bool leading_space_;
    std::size_t field_limit_;
    std::size_t chunk_;
    bool in_headers_ = true;
    bool have_field_ = false;
    bool truncated_ = false;
    std::string line_;   // an unfinished header line
    std::string field_;  // the header field being collected (continuation lines joined by "\n")
    std::string chunk_buf_;
};

}  // namespace asiosmtpd::plugins::milter

#endif  // ASIOSMTPD_PLUGINS_MILTER_MESSAGE_HPP
