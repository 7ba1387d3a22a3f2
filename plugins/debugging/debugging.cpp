// SPDX-License-Identifier: Apache-2.0
// debugging: prints every message to stdout or stderr exactly as aiosmtpd's Debugging handler
// (aiosmtpd/handlers.py, 1.4.3) does, and leaves the verdict to the rest of the chain.
//
//   ---------- MESSAGE FOLLOWS ----------
//   mail options: ['SIZE=100', 'BODY=8BITMIME']      (only when MAIL had parameters,
//                                                    then an empty line)
//   Subject: hi                                       (the content, line by line)
//   X-Peer: ('127.0.0.1', 40000)                      (before the first empty line)
//
//   body
//   ------------ END MESSAGE ------------
//
// Lines are split as Python's bytes.splitlines() (CRLF, LF or a bare CR) and decoded as
// bytes.decode("utf-8", "replace") (one U+FFFD per maximal invalid subsequence); the output is
// UTF-8 with LF line ends. Each message is one write and flush while holding the stream's
// lock, so messages of concurrent sessions never interleave. Config: `stream: stdout|stderr`.
#include <asiosmtpd/plugin.hpp>

#include <net/if.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;

constexpr std::string_view replacement_char = "\xEF\xBF\xBD";  // U+FFFD in UTF-8

// Decodes one code point of UTF-8 at s[i] as CPython's decoder does (Unicode 3.9 "maximal
// subpart" practice, Table 3-7 well-formed sequences). Returns the code point and sets `len`
// to the bytes consumed; returns -1 for an ill-formed subsequence of `len` bytes.
std::int32_t decode_one(std::string_view s, std::size_t i, std::size_t& len)
{
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char b0 = byte(i);
    len = 1;
    if (b0 < 0x80) return b0;
    std::size_t need = 0;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    std::int32_t cp = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
        if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;  // no overlong forms
        if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
    } else {
        return -1;  // 80..C1, F5..FF never start a sequence
    }
    for (std::size_t k = 1; k <= need; ++k) {
        if (i + k >= s.size()) return -1;
        const unsigned char b = byte(i + k);
        const unsigned char first_lo = k == 1 ? lo : 0x80;
        const unsigned char first_hi = k == 1 ? hi : 0xBF;
        if (b < first_lo || b > first_hi) return -1;
        cp = (cp << 6) | (b & 0x3F);
        len = k + 1;
    }
    return cp;
}

// bytes.decode("utf-8", "replace"), re-encoded as UTF-8: valid sequences are copied and each
// ill-formed subsequence becomes one U+FFFD.
void append_lenient_utf8(std::string& out, std::string_view s)
{
    std::size_t i = 0;
    while (i < s.size()) {
        std::size_t len = 0;
        if (decode_one(s, i, len) < 0) out += replacement_char;
        else out.append(s.substr(i, len));
        i += len;
    }
}

// Python's str.isprintable() for non-ASCII code points, for the characters that can plausibly
// reach us: controls, separators, format characters, surrogates, private use, noncharacters.
// (Unassigned code points, which Python also escapes, are printed as they are.)
bool python_printable(std::int32_t cp)
{
    struct range {
        std::int32_t first, last;
    };
    static constexpr range not_printable[] = {
        {0x0080, 0x00A0},   {0x00AD, 0x00AD},    {0x0600, 0x0605},   {0x061C, 0x061C},   {0x06DD, 0x06DD},
        {0x070F, 0x070F},   {0x0890, 0x0891},    {0x08E2, 0x08E2},   {0x1680, 0x1680},   {0x180E, 0x180E},
        {0x2000, 0x200F},   {0x2028, 0x202F},    {0x205F, 0x2064},   {0x2066, 0x206F},   {0x3000, 0x3000},
        {0xD800, 0xF8FF},   {0xFEFF, 0xFEFF},    {0xFFF9, 0xFFFB},   {0xFFFE, 0xFFFF},   {0x110BD, 0x110BD},
        {0x110CD, 0x110CD}, {0x13430, 0x1343F},  {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A}, {0xE0001, 0xE0001},
        {0xE0020, 0xE007F}, {0xF0000, 0x10FFFF},
    };
    for (const range& r : not_printable)
        if (cp >= r.first && cp <= r.last) return false;
    return true;
}

void append_hex(std::string& out, const char* prefix, std::uint32_t v, int digits)
{
    static constexpr char hex[] = "0123456789abcdef";
    out += prefix;
    for (int d = digits - 1; d >= 0; --d) out += hex[(v >> (4 * d)) & 0xF];
}

// repr() of a Python str holding `s` (UTF-8; invalid bytes shown as U+FFFD).
std::string python_repr(std::string_view s)
{
    const bool has_single = s.find('\'') != std::string_view::npos;
    const bool has_double = s.find('"') != std::string_view::npos;
    const char quote = (has_single && !has_double) ? '"' : '\'';
    std::string out(1, quote);
    std::size_t i = 0;
    while (i < s.size()) {
        std::size_t len = 0;
        const std::int32_t cp = decode_one(s, i, len);
        if (cp < 0) {
            out += replacement_char;
        } else if (cp == quote || cp == '\\') {
            out += '\\';
            out += static_cast<char>(cp);
        } else if (cp == '\t') {
            out += "\\t";
        } else if (cp == '\n') {
            out += "\\n";
        } else if (cp == '\r') {
            out += "\\r";
        } else if (cp < 0x20 || cp == 0x7F) {
            append_hex(out, "\\x", static_cast<std::uint32_t>(cp), 2);
        } else if (cp < 0x80 || python_printable(cp)) {
            out.append(s.substr(i, len));
        } else if (cp <= 0xFF) {
            append_hex(out, "\\x", static_cast<std::uint32_t>(cp), 2);
        } else if (cp <= 0xFFFF) {
            append_hex(out, "\\u", static_cast<std::uint32_t>(cp), 4);
        } else {
            append_hex(out, "\\U", static_cast<std::uint32_t>(cp), 8);
        }
        i += len;
    }
    out += quote;
    return out;
}

// repr(session.peer): ('127.0.0.1', 40000) for IPv4; ('::1', 40000, 0, 0) for IPv6, where
// the last two are flowinfo (0 from getpeername on Linux) and scope_id (from "%eth0" or
// "%2" when present).
std::string python_peer_repr(std::string_view address, std::uint16_t port)
{
    std::string out = "(" + python_repr(address) + ", " + std::to_string(port);
    if (address.find(':') != std::string_view::npos) {
        unsigned long scope_id = 0;
        const std::size_t pct = address.find('%');
        if (pct != std::string_view::npos) {
            const std::string zone(address.substr(pct + 1));
            if (!zone.empty() && zone.find_first_not_of("0123456789") == std::string::npos) scope_id = std::stoul(zone);
            else scope_id = if_nametoindex(zone.c_str());
        }
        out += ", 0, " + std::to_string(scope_id);
    }
    out += ")";
    return out;
}

// bytes.splitlines(): separators CRLF, LF and bare CR; no empty item after a final separator.
std::vector<std::string_view> split_lines(std::string_view s)
{
    std::vector<std::string_view> lines;
    std::size_t start = 0;
    while (start < s.size()) {
        const std::size_t eol = s.find_first_of("\r\n", start);
        if (eol == std::string_view::npos) {
            lines.push_back(s.substr(start));
            break;
        }
        lines.push_back(s.substr(start, eol - start));
        start = eol + 1;
        if (s[eol] == '\r' && start < s.size() && s[start] == '\n') ++start;
    }
    return lines;
}

class debugging {
public:
    explicit debugging(sdk::registrar& reg) : stream_(parse_stream(reg.config()))
    {
        reg.on<&debugging::on_data>(sdk::hook::data);
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        const sdk::session_info s = c.session();
        const std::string text = format(c.mail_params(), python_peer_repr(s.peer_address, s.peer_port), args.content());
        if (!write(text) && !write_failed_.exchange(true))
            c.log(sdk::log_level::warn, "debugging: cannot write to the stream; messages are lost");
        return sdk::verdict::continue_;  // an observer: the chain (or the host's 250 OK) decides
    }

private:
    static std::FILE* parse_stream(const sdk::config& cfg)
    {
        if (cfg.is_null()) return stdout;
        // sdk::config_error: the host names the file, the line and the key.
        if (!cfg.is_map()) throw cfg.error("config must be a map (stream: stdout or stderr)");
        cfg.check_keys({"stream"});
        const auto stream = cfg.get("stream");
        if (!stream || stream->is_null()) return stdout;
        if (stream->is_scalar() && stream->scalar() == "stdout") return stdout;
        if (stream->is_scalar() && stream->scalar() == "stderr") return stderr;
        throw stream->error("must be stdout or stderr");
    }

    static std::string format(const std::vector<std::string_view>& mail_params, const std::string& peer,
                              std::string_view content)
    {
        std::string out;
        out.reserve(content.size() + content.size() / 16 + 256);
        out += "---------- MESSAGE FOLLOWS ----------\n";
        if (!mail_params.empty()) {  // print("mail options:", envelope.mail_options); print()
            out += "mail options: [";
            for (std::size_t i = 0; i < mail_params.size(); ++i) {
                if (i) out += ", ";
                out += python_repr(mail_params[i]);
            }
            out += "]\n\n";
        }
        bool in_headers = true;
        for (std::string_view line : split_lines(content)) {
            if (in_headers && line.empty()) {  // the header/body separator
                out += "X-Peer: " + peer + "\n";
                in_headers = false;
            }
            append_lenient_utf8(out, line);
            out += '\n';
        }
        out += "------------ END MESSAGE ------------\n";
        return out;
    }

    // One message, one locked write: the FILE lock is the mutex here, because it also orders
    // us against other instances of this plugin and anything else in the process printing to
    // the same stream.
    bool write(const std::string& text)
    {
        flockfile(stream_);
        const std::size_t n = std::fwrite(text.data(), 1, text.size(), stream_);
        const bool ok = n == text.size() && std::fflush(stream_) == 0;
        if (!ok) std::clearerr(stream_);
        funlockfile(stream_);
        return ok;
    }

    std::FILE* stream_;
    std::atomic<bool> write_failed_{false};
};

}  // namespace

ASIOSMTPD_PLUGIN(debugging, "debugging", "1.0.0", "prints each message as aiosmtpd's Debugging handler",
                 ASIOSMTPD_PF_THREAD_SAFE)
