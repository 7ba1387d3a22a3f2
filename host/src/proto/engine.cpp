// SPDX-License-Identifier: Apache-2.0
#include "proto/engine.hpp"

#include "proto/address.hpp"
#include "proto/dsn.hpp"
#include "proto/enhanced_codes.hpp"
#include "proto/network.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

namespace asiosmtpd::proto {
namespace {

constexpr std::string_view crlf = "\r\n";

bool is_ascii(std::string_view s) noexcept
{
    // Eight bytes at a time: DATA lines go through here with decode_data.
    const char* p = s.data();
    std::size_t n = s.size();
    std::uint64_t high = 0;
    for (; n >= 8; p += 8, n -= 8) {
        std::uint64_t word;
        std::memcpy(&word, p, sizeof word);
        high |= word;
    }
    for (; n > 0; ++p, --n) high |= static_cast<unsigned char>(*p);
    return (high & 0x8080808080808080ull) == 0;
}

// Python's bytes.strip(): ASCII whitespace only.
constexpr bool is_py_space(char c) noexcept
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

std::string_view strip(std::string_view s) noexcept
{
    while (!s.empty() && is_py_space(s.front())) s.remove_prefix(1);
    while (!s.empty() && is_py_space(s.back())) s.remove_suffix(1);
    return s;
}

// Python's str whitespace (str.strip(), str.split()), which aiosmtpd applies to the decoded
// argument after FROM:/TO: and to the parameter text: ASCII whitespace plus \x1c-\x1f, and
// with SMTPUTF8 (UTF-8 decoding) the Unicode spaces too. Returns the byte length of the
// whitespace character at s[i], or 0.
std::size_t py_str_space(std::string_view s, std::size_t i, bool utf8) noexcept
{
    const auto b = [&](std::size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
    const unsigned c = b(0);
    if (is_py_space(static_cast<char>(c)) || (c >= 0x1c && c <= 0x1f)) return 1;
    if (!utf8 || c < 0xc2) return 0;
    if (c == 0xc2 && (b(1) == 0x85 || b(1) == 0xa0)) return 2;  // U+0085 U+00A0
    if (c == 0xe1 && b(1) == 0x9a && b(2) == 0x80) return 3;    // U+1680
    if (c == 0xe2 && b(1) == 0x80 && ((b(2) >= 0x80 && b(2) <= 0x8a) || b(2) == 0xa8 || b(2) == 0xa9 || b(2) == 0xaf))
        return 3;                                             // U+2000-200A 2028 2029 202F
    if (c == 0xe2 && b(1) == 0x81 && b(2) == 0x9f) return 3;  // U+205F
    if (c == 0xe3 && b(1) == 0x80 && b(2) == 0x80) return 3;  // U+3000
    return 0;
}

std::string_view strip_str(std::string_view s, bool utf8) noexcept
{
    while (std::size_t n = py_str_space(s, 0, utf8)) s.remove_prefix(n);
    for (;;) {
        // Find whether a whitespace character ends exactly at the end (1 to 3 bytes).
        std::size_t cut = 0;
        for (std::size_t len = 1; len <= 3 && len <= s.size() && cut == 0; ++len)
            if (py_str_space(s, s.size() - len, utf8) == len) cut = len;
        if (cut == 0) return s;
        s.remove_suffix(cut);
    }
}

constexpr char ascii_upper(char c) noexcept { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }

void upper_into(std::string& out, std::string_view s)
{
    out.assign(s);
    for (char& c : out) c = ascii_upper(c);
}

bool iequals_prefix(std::string_view s, std::string_view prefix) noexcept
{
    if (s.size() < prefix.size()) return false;
    for (std::size_t i = 0; i < prefix.size(); ++i)
        if (ascii_upper(s[i]) != prefix[i]) return false;
    return true;
}

bool is_alnum_token(std::string_view s) noexcept
{
    if (s.empty()) return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    });
}

bool all_digits(std::string_view s) noexcept
{
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// decimal string > limit, without overflow
bool exceeds(std::string_view digits, std::uint64_t limit) noexcept
{
    while (digits.size() > 1 && digits.front() == '0') digits.remove_prefix(1);
    if (digits.size() > 19) return true;
    std::uint64_t v = 0;
    for (char c : digits) v = v * 10 + static_cast<std::uint64_t>(c - '0');
    return v > limit;
}

// A control character: C0 (NUL, TAB, CR, LF, ...) or DEL; bytes >= 0x80 (UTF-8) are not. RFC 5321
// §4.1.2 has none of them in a path (atext, qtextSMTP and quoted-pairSMTP are printable ASCII,
// RFC 6531 adds UTF-8) or in an esmtp-value (%d33-60 / %d62-126). TAB included: outside a quoted
// string whitespace only separates, inside one only SP is allowed.
// Python's parser keeps them (a CR or NUL inside a quoted string, an atom, an RFC 2047 word), and
// aiosmtpd stores them, so that a plugin writing the envelope into a header or a line (maildir's
// X-MailFrom, mbox's "From " line, an upstream's RCPT TO) could be made to write two. Refused
// in the parsed address and parameters rather than in the raw argument: whitespace between them
// (TAB, Python's \x1c-\x1f, a CR in mid-line) separates and stays allowed, and what an encoded
// word decodes to (=0D) is only visible after parsing.
constexpr bool is_control(char c) noexcept
{
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
}

bool has_control(std::string_view s) noexcept { return std::any_of(s.begin(), s.end(), is_control); }

// DSN: ENVID and ORCPT values are xtext, where case matters (an ENVID is opaque, an ORCPT an
// address): `upper` (the token upper-cased) gets the value of `raw` back for those keys.
void keep_dsn_case(std::string& upper, std::string_view raw)
{
    const auto eq = upper.find('=');
    if (eq != std::string::npos && dsn::keeps_case(std::string_view(upper).substr(0, eq)))
        upper.replace(eq + 1, std::string::npos, raw.substr(eq + 1));
}

// An ESMTP parameter as aiosmtpd's _getparams() sees it: KEY, or KEY=VALUE.
struct esmtp_param {
    std::string_view key;
    std::string_view value;
    bool has_value = false;
};

// Split upper-cased parameter text on whitespace into `tokens`; then validate them as
// RFC 1869 parameters (aiosmtpd _getparams). Duplicate keys: the last one wins. A parameter
// with a control character is a syntax error, whatever its key (aiosmtpd: SIZE=1\x01 fails
// SIZE's digit check with the same 501, X=\x01 is an unknown parameter, 555). None of the
// parameters known today could carry one past its own check; this keeps it so for any added
// later whose value is free text (DSN's ENVID, ORCPT), before a hook or the envelope sees it.
bool parse_params(std::string_view rest, bool utf8, std::vector<std::string>& tokens, std::vector<esmtp_param>& params,
                  bool dsn = false)
{
    tokens.clear();
    params.clear();
    std::size_t i = 0;
    while (i < rest.size()) {
        while (std::size_t n = py_str_space(rest, i, utf8)) i += n;
        const std::size_t start = i;
        while (i < rest.size() && py_str_space(rest, i, utf8) == 0) ++i;
        if (i > start) {
            std::string& t = tokens.emplace_back(rest.substr(start, i - start));
            for (char& c : t) c = ascii_upper(c);
            if (dsn) keep_dsn_case(t, rest.substr(start, i - start));
        }
    }
    for (const std::string& t : tokens) {
        const std::string_view tv = t;
        if (has_control(tv)) return false;
        const auto eq = tv.find('=');
        esmtp_param p;
        p.key = tv.substr(0, eq);
        if (eq != std::string_view::npos) {
            p.value = tv.substr(eq + 1);
            p.has_value = true;
            if (p.value.empty()) return false;
        }
        if (!is_alnum_token(p.key)) return false;
        auto same = std::find_if(params.begin(), params.end(), [&](const esmtp_param& q) { return q.key == p.key; });
        if (same != params.end()) *same = p;
        else params.push_back(p);
    }
    return true;
}

// DSN (RFC 3461): the refusal for the DSN parameters of MAIL (or RCPT) among `tokens`, or
// empty when they are valid; then they leave `params` (they are known parameters).
std::string_view take_dsn_params(const std::vector<std::string>& tokens, std::vector<esmtp_param>& params, bool rcpt)
{
    using dsn::problem;
    switch (rcpt ? dsn::check_rcpt(tokens) : dsn::check_mail(tokens)) {
    case problem::none: break;
    case problem::bad_ret: return replies::dsn_bad_ret;
    case problem::bad_envid: return replies::dsn_bad_envid;
    case problem::bad_notify: return replies::dsn_bad_notify;
    case problem::bad_orcpt: return replies::dsn_bad_orcpt;
    }
    std::erase_if(params, [&](const esmtp_param& p) {
        return rcpt ? (p.key == "NOTIFY" || p.key == "ORCPT") : (p.key == "RET" || p.key == "ENVID");
    });
    return {};
}

std::optional<esmtp_param> take_param(std::vector<esmtp_param>& params, std::string_view key)
{
    auto it = std::find_if(params.begin(), params.end(), [&](const esmtp_param& p) { return p.key == key; });
    if (it == params.end()) return std::nullopt;
    esmtp_param p = *it;
    params.erase(it);
    return p;
}

// RFC 4648 base64, strict as Python's b64decode(validate=True): the alphabet only, correct
// padding, no blanks. RFC 4954 §4: a lone "=" is an empty response (docs/behaviour.md).
std::optional<std::string> base64_decode(std::string_view in)
{
    if (in == "=") return std::string{};
    if (in.size() % 4 != 0) return std::nullopt;
    const auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    std::string out;
    out.reserve(in.size() / 4 * 3);
    for (std::size_t i = 0; i < in.size(); i += 4) {
        const bool last = i + 4 == in.size();
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = in[i + static_cast<std::size_t>(k)];
            if (c == '=' && last && k >= 2) {
                ++pad;
                v[k] = 0;
                continue;
            }
            if (pad > 0) return std::nullopt;  // data after padding
            v[k] = value(c);
            if (v[k] < 0) return std::nullopt;
        }
        const unsigned n = (static_cast<unsigned>(v[0]) << 18) | (static_cast<unsigned>(v[1]) << 12) |
                           (static_cast<unsigned>(v[2]) << 6) | static_cast<unsigned>(v[3]);
        out.push_back(static_cast<char>((n >> 16) & 0xff));
        if (pad < 2) out.push_back(static_cast<char>((n >> 8) & 0xff));
        if (pad < 1) out.push_back(static_cast<char>(n & 0xff));
    }
    return out;
}

std::string base64_encode(std::string_view in)
{
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    for (std::size_t i = 0; i < in.size(); i += 3) {
        const auto byte = [&](std::size_t k) { return i + k < in.size() ? static_cast<unsigned char>(in[i + k]) : 0u; };
        const unsigned n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        out.push_back(alphabet[(n >> 18) & 63]);
        out.push_back(alphabet[(n >> 12) & 63]);
        out.push_back(i + 1 < in.size() ? alphabet[(n >> 6) & 63] : '=');
        out.push_back(i + 2 < in.size() ? alphabet[n & 63] : '=');
    }
    return out;
}

// XCLIENT attribute values are xtext (RFC 3461 §4): "+" and two hex digits stand for a byte,
// every other byte is printable ASCII. Upper- and lower-case hex alike, as Postfix reads them.
// A value that decodes to a control character is refused (it would reach logs and headers).
std::optional<std::string> xclient_unquote(std::string_view in)
{
    const auto hex = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    std::string out;
    for (std::size_t i = 0; i < in.size(); ++i) {
        const char c = in[i];
        if (c < '!' || c > '~') return std::nullopt;
        if (c != '+') {
            out.push_back(c);
            continue;
        }
        if (i + 2 >= in.size()) return std::nullopt;
        const int hi = hex(in[i + 1]);
        const int lo = hex(in[i + 2]);
        if (hi < 0 || lo < 0) return std::nullopt;
        const char b = static_cast<char>(hi * 16 + lo);
        if (is_control(b)) return std::nullopt;
        out.push_back(b);
        i += 2;
    }
    return out;
}

// A host name as Postfix's valid_hostname(): dot-separated labels of letters, digits, '-' and
// '_', none empty or longer than 63, not starting or ending with '-'; at most 255 in all; not
// all digits in the last label (that is an address).
bool is_hostname(std::string_view s) noexcept
{
    if (s.empty() || s.size() > 255) return false;
    std::size_t start = 0;
    for (;;) {
        const std::size_t dot = s.find('.', start);
        const std::string_view label = s.substr(start, dot == std::string_view::npos ? dot : dot - start);
        if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
        for (char c : label)
            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
                return false;
        if (dot == std::string_view::npos) return !all_digits(label);
        start = dot + 1;
    }
}

bool iequals(std::string_view a, std::string_view b) noexcept { return a.size() == b.size() && iequals_prefix(a, b); }

// What a reply may show of a value the client sent: printable ASCII, the rest '?'.
std::string printable(std::string_view s)
{
    std::string out(s.substr(0, 255));
    for (char& c : out)
        if (c < ' ' || c > '~') c = '?';
    return out;
}

}  // namespace

engine::engine(const settings& s) : settings_(s), unknown_budget_(s.unknown_command_budget) {}

// --------------------------------------------------------------------------------------------
// The command table: every built-in verb, in one place
// --------------------------------------------------------------------------------------------

namespace {
constexpr std::uint8_t before_starttls = 1;  // allowed before STARTTLS with require_starttls (RFC 3207 §4)
constexpr std::uint8_t smtp_only = 2;        // not in LMTP (RFC 2033 §4.1: LHLO instead)
constexpr std::uint8_t lmtp_only = 4;        // only in LMTP; elsewhere an unknown verb
constexpr std::uint8_t chunking_only = 8;    // only with enable_chunking; elsewhere an unknown verb
}  // namespace

struct engine::command_spec {
    std::string_view verb;
    std::uint8_t flags;
    void (engine::*handle)(std::string_view arg, bool has_arg);
    std::string_view help;           // "HELP <verb>" syntax; empty: not listed (aiosmtpd)
    std::string_view help_extended;  // appended in ESMTP sessions
};

std::span<const engine::command_spec> engine::command_table() noexcept
{
    // aiosmtpd's smtp_<VERB> methods, with their HELP texts; ALLOWED_BEFORE_STARTTLS, plus LHLO.
    static constexpr command_spec table[] = {
        {"HELO", smtp_only, &engine::on_helo, "HELO hostname", ""},
        {"EHLO", smtp_only | before_starttls, &engine::on_ehlo, "EHLO hostname", ""},
        {"LHLO", lmtp_only | before_starttls, &engine::on_ehlo, "LHLO hostname", ""},
        {"MAIL", 0, &engine::on_mail, "MAIL FROM: <address>", " [SP <mail-parameters>]"},
        {"RCPT", 0, &engine::on_rcpt, "RCPT TO: <address>", " [SP <mail-parameters>]"},
        {"DATA", 0, &engine::on_data, "DATA", ""},
        {"BDAT", chunking_only, &engine::on_bdat, "BDAT <size> [LAST]", ""},
        {"RSET", 0, &engine::on_rset, "RSET", ""},
        {"NOOP", before_starttls, &engine::on_noop, "NOOP [ignored]", ""},
        {"QUIT", before_starttls, &engine::on_quit, "QUIT", ""},
        {"VRFY", 0, &engine::on_vrfy, "VRFY <address>", ""},
        {"HELP", 0, &engine::on_help, "HELP [command]", ""},
        {"EXPN", 0, &engine::on_expn, "", ""},
        {"AUTH", 0, &engine::on_auth, "AUTH <mechanism>", ""},
        {"STARTTLS", before_starttls, &engine::on_starttls, "STARTTLS", ""},
        // Postfix's XCLIENT (not in aiosmtpd): unknown unless server.xclient_networks is set. A
        // front end may use it before STARTTLS: it is trusted by its address.
        {"XCLIENT", before_starttls, &engine::on_xclient, "", ""},
    };
    return table;
}

const engine::command_spec* engine::find_command(std::string_view verb) noexcept
{
    for (const command_spec& c : command_table())
        if (c.verb == verb) return &c;
    return nullptr;
}

// Whether this session knows the verb at all (HELP lists it, the handler runs).
bool engine::offered(const command_spec& c) const noexcept
{
    if ((c.flags & smtp_only) && settings_.lmtp) return false;
    if ((c.flags & lmtp_only) && !settings_.lmtp) return false;
    if ((c.flags & chunking_only) && !settings_.enable_chunking) return false;
    return c.handle != &engine::on_starttls || settings_.starttls_available;
}

// --------------------------------------------------------------------------------------------
// Input and the main loop
// --------------------------------------------------------------------------------------------

void engine::start()
{
    phase_ = phase::greeting;
    if (has_hook(hook_kind::connect)) {
        ask(hook_kind::connect);
        return;
    }
    send_greeting();
    pump();
}

void engine::receive(std::string_view bytes)
{
    if (closed_) return;
    const auto room = prepare(bytes.size());
    std::memcpy(room.data(), bytes.data(), bytes.size());
    commit(bytes.size());
}

std::span<char> engine::prepare(std::size_t min)
{
    if (in_.size() - end_ < min) {
        // Make room: drop what was consumed first, then grow (zero-filling only the growth).
        if (pos_ > 0) {
            std::memmove(in_.data(), in_.data() + pos_, end_ - pos_);
            end_ -= pos_;
            scan_ -= pos_;
            pos_ = 0;
        }
        if (in_.size() - end_ < min) in_.resize(std::max(end_ + min, in_.size() * 2));
    }
    return {in_.data() + end_, in_.size() - end_};
}

bool engine::release_buffer(std::size_t keep) noexcept
{
    // Only between commands: inside DATA the next bytes are due at once and the (large)
    // buffer would be allocated again for each read.
    if (pos_ != end_ || reading_data() || bdat_open()) return false;
    pos_ = scan_ = end_ = 0;
    if (in_.capacity() > keep) std::string().swap(in_);
    return true;
}

void engine::feed(std::string_view bytes)
{
    if (closed_) return;
    if (pos_ != end_) {
        // Something is buffered (an incomplete line, most likely): complete it there, up to the
        // next LF; the rest is read in place once nothing is left over.
        const std::size_t lf = bytes.find('\n');
        const std::size_t first = lf == std::string_view::npos ? bytes.size() : lf + 1;
        receive(bytes.substr(0, first));
        bytes.remove_prefix(first);
        if (bytes.empty() || closed_) return;
        if (pos_ != end_) return receive(bytes);
    }
    fed_ = bytes.data();
    pos_ = scan_ = 0;
    end_ = bytes.size();
    pump();
    if (pos_ != end_) {
        const std::size_t left = end_ - pos_;
        if (in_.size() < left) in_.resize(left);
        std::memcpy(in_.data(), fed_ + pos_, left);
        scan_ -= pos_;
        end_ = left;
        pos_ = 0;
    }
    fed_ = nullptr;
}

void engine::commit(std::size_t n)
{
    end_ = std::min(end_ + n, in_.size());
    if (closed_) return;
    pump();
}

void engine::pump()
{
    // Waiting for the TLS handshake: nothing that arrives in plaintext now may ever be read
    // as a command (RFC 3207 §4.2); the session does not read then, but never buffer it anyway.
    if (phase_ == phase::tls) pos_ = scan_ = end_;
    while (!waiting_ && !closed_) {
        bool progressed = false;
        if (phase_ == phase::command) progressed = step_command();
        else if (phase_ == phase::data) progressed = step_data();
        else if (phase_ == phase::auth) progressed = step_auth();
        else if (phase_ == phase::bdat) progressed = step_bdat();
        if (!progressed) break;
    }
    // Everything consumed: the buffer starts over. It keeps its capacity (one buffer per
    // session), unless a large transfer grew it: then an idle session gives it back.
    if (pos_ == end_) {
        pos_ = scan_ = end_ = 0;
        if (in_.size() > 64 * 1024 && !reading_data()) {
            in_.clear();
            in_.shrink_to_fit();
        }
    }
}

// The next LF-terminated line (command or AUTH answer), without its LF. aiosmtpd reads these
// with a stream limit: a longer line is skipped up to its LF without being buffered, and
// reported once as too long. Empty optional: more bytes are needed.
std::optional<engine::line_read> engine::next_line(std::size_t limit)
{
    const std::string_view buf(input() + pos_, end_ - pos_);
    const auto lf = buf.find('\n', scan_ - pos_);
    if (lf == std::string_view::npos) {
        if (discarding_line_ || buf.size() > limit) {
            discarding_line_ = true;
            pos_ = scan_ = end_;
        } else {
            scan_ = end_;
        }
        return std::nullopt;
    }
    pos_ += lf + 1;
    scan_ = pos_;
    const bool too_long = discarding_line_ || lf > limit;
    discarding_line_ = false;
    return line_read{buf.substr(0, lf), too_long};
}

bool engine::step_command()
{
    // aiosmtpd's 1001-byte stream limit (line_length_limit), or more for a larger
    // command_size_limit: "Command line too long" either way.
    const auto line =
        next_line(std::max(settings_.data_line_limit,
                           settings_.command_size_limit + 38 + (settings_.enable_dsn ? dsn::rcpt_line_allowance : 0)));
    if (!line) return false;
    ++progress_;
    if (line->too_long) {
        verb_.clear();  // not a command anyone can name (enhanced_code_for)
        reply(replies::line_too_long);
    } else {
        handle_line(line->text);
    }
    return true;
}

// One command line: its reply, and the refusals the host logs.
void engine::handle_line(std::string_view line)
{
    // Bare LF ends a command line (aiosmtpd); then every trailing CR and LF is stripped.
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.remove_suffix(1);
    const std::size_t reply_start = out_.size();
    verb_.clear();
    handle_command(line);
    if (verb_ == "AUTH") return;                                   // failed AUTHs have a log line of their own
    if (verb_ == "BDAT" && after_bdat(line, reply_start)) return;  // answered after its chunk
    if (waiting_) hooked_line_.assign(line);                       // the reply comes with hook_done()
    else note_refusal(line, reply_start);
}

// aiosmtpd 1.4: the pre-dispatch checks, in order; the first match wins.
void engine::handle_command(std::string_view line)
{
    if (line.empty()) return reply(replies::bad_syntax);

    const auto space = line.find(' ');
    const std::string_view raw_verb = line.substr(0, space);
    if (!is_ascii(raw_verb)) return reply(replies::bad_syntax);
    std::string_view arg;
    bool has_arg = false;
    if (space != std::string_view::npos && space + 1 < line.size()) {
        has_arg = true;  // aiosmtpd: "VERB " alone is arg=None, "VERB  " is arg=""
        arg = strip(line.substr(space + 1));
    }
    if (!settings_.enable_smtputf8 && !is_ascii(arg)) return reply(replies::strict_ascii);
    upper_into(verb_, raw_verb);
    if (!drain_reply_.get().empty() && !in_transaction() && verb_ != "QUIT") {
        reply(drain_reply_.get());
        return close("shutdown");
    }
    if (line.size() > command_limit(verb_)) return reply(replies::line_too_long);
    if (tls_vetoed_ && verb_ != "QUIT") return reply(replies::lack_of_security);

    // RFC 3207 §4: before STARTTLS only these verbs (aiosmtpd ALLOWED_BEFORE_STARTTLS; LHLO added,
    // docs/behaviour.md).
    const command_spec* const spec = find_command(verb_);
    if (settings_.require_starttls && !tls_active_ &&
        !(spec != nullptr && (spec->flags & before_starttls) != 0 &&
          ((spec->flags & lmtp_only) == 0 || settings_.lmtp)))
        return reply(replies::need_starttls);

    if (settings_.call_limit_enabled) {
        auto it = calls_.find(verb_);
        if (it == calls_.end()) {
            const auto limit = settings_.call_limits.find(verb_);
            it =
                calls_
                    .emplace(verb_, limit == settings_.call_limits.end() ? settings_.call_limit_default : limit->second)
                    .first;
        }
        if (it->second < 1) {
            reply(replies::call_limit_hit(verb_));
            return close("command call limit");
        }
        --it->second;
    }
    dispatch(spec, verb_, arg, has_arg);
}

// If the reply that starts at out_[reply_start] is a 4xx or 5xx, list the command and its
// first line (the host logs them).
void engine::note_refusal(std::string_view command, std::size_t reply_start)
{
    if (out_.size() <= reply_start || (out_[reply_start] != '4' && out_[reply_start] != '5')) return;
    const std::size_t end = out_.find('\r', reply_start);
    refusals_.push_back({std::string(command), out_.substr(reply_start, end - reply_start),
                         in_transaction() ? transaction_number_ : 0});
}

void engine::dispatch(const command_spec* spec, std::string_view verb, std::string_view arg, bool has_arg)
{
    if (connect_rejected_ && verb != "QUIT") return reply(replies::only_quit);
    if (spec != nullptr && (spec->flags & chunking_only) && !settings_.enable_chunking) spec = nullptr;
    if (spec != nullptr) {
        // RFC 2033 §4.1: LMTP has LHLO instead; aiosmtpd answers HELO and EHLO as unknown
        // without using the unknown-command budget.
        if ((spec->flags & smtp_only) && settings_.lmtp) return reply(replies::unknown_command(verb));
        if (!(spec->flags & lmtp_only) || settings_.lmtp) return (this->*spec->handle)(arg, has_arg);
    }
    for (std::size_t i = 0; i < settings_.commands.size(); ++i)
        if (settings_.commands[i].verb == verb) return on_custom(i, verb, arg, has_arg);
    on_unknown(verb, arg, has_arg);
}

// --------------------------------------------------------------------------------------------
// Hooks
// --------------------------------------------------------------------------------------------

void engine::ask(hook_kind k, std::string_view arg, bool has_arg)
{
    if (arg.data() != request_arg_.data()) request_arg_.assign(arg);
    request_ = hook_request{};
    request_.kind = k;
    request_.argument = request_arg_;
    request_.has_argument = has_arg;
    request_.verb = request_verb_;
    waiting_ = true;
}

void engine::decide(hook_kind k, std::string_view arg, bool has_arg, std::span<const std::string> params)
{
    if (has_hook(k)) {
        ask(k, arg, has_arg);
        request_.params = params;
        return;
    }
    if (arg.data() != request_arg_.data()) request_arg_.assign(arg);
    request_.kind = k;
    finish_hook(hook_result{});
}

void engine::hook_done(hook_result result)
{
    if (!waiting_) return;
    waiting_ = false;
    const std::size_t reply_start = out_.size();
    finish_hook(result);
    switch (request_.kind) {  // the hooks that answer a command line (not DATA, AUTH, CONNECT)
    case hook_kind::helo:
    case hook_kind::ehlo:
    case hook_kind::mail:
    case hook_kind::rcpt:
    case hook_kind::rset:
    case hook_kind::noop:
    case hook_kind::quit:
    case hook_kind::vrfy:
    case hook_kind::unknown:
    case hook_kind::command: note_refusal(hooked_line_, reply_start); break;
    case hook_kind::connect:
        if (request_.xclient) note_refusal(hooked_line_, reply_start);  // the new client refused
        break;
    default: break;
    }
    if (!waiting_) pump();
}

void engine::finish_hook(const hook_result& r)
{
    const std::string_view arg = request_arg_;
    switch (request_.kind) {
    case hook_kind::connect:
        switch (r.verdict) {
        case verdict::none: send_greeting(); break;
        case verdict::accept: r.code ? reply_plugin(r) : send_greeting(); break;
        case verdict::reject:
            r.code ? reply_plugin(r) : reply(replies::default_reject_connect);
            connect_rejected_ = true;
            break;
        case verdict::tempfail:
        case verdict::tempfail_close:
        case verdict::reject_close:
            r.code ? reply_plugin(r) : reply(replies::closing(settings_.hostname));
            close("connect hook");
            return;
        case verdict::error:
        case verdict::challenge:
            reply(replies::closing(settings_.hostname));
            close("plugin error");
            return;
        }
        phase_ = phase::command;
        return;
    case hook_kind::helo:
        if (reply_for(r, replies::helo_ok(settings_.hostname))) host_name_.assign(arg);
        return;
    case hook_kind::ehlo:
        if (r.verdict == verdict::none || (r.verdict == verdict::accept && r.code == 0)) {
            host_name_.assign(arg);
            send_ehlo_lines();
        } else if (reply_for(r, {})) {
            host_name_.assign(arg);
        }
        return;
    case hook_kind::mail:
        if (reply_for(r, replies::ok)) {
            ++transaction_number_;
            envelope_.mail_from.assign(arg);
            envelope_.mail_options.insert(envelope_.mail_options.end(), request_params_.begin(), request_params_.end());
        }
        return;
    case hook_kind::rcpt:
        if (reply_for(r, replies::ok)) {
            envelope_.rcpt_tos.emplace_back(arg);
            if (!request_params_.empty()) {  // DSN: NOTIFY, ORCPT (an index per recipient)
                envelope_.rcpt_options.resize(envelope_.rcpt_tos.size());
                envelope_.rcpt_options.back() = request_params_;
            }
        }
        return;
    case hook_kind::data: deliver_data_reply(r); return;
    case hook_kind::data_chunk:
        if (r.verdict != verdict::none && r.verdict != verdict::accept && r.verdict != verdict::challenge) {
            // Refused (or the plugin failed): the rest of the message is read and dropped, and
            // this reply answers the final dot.
            chunk_refusal_.set() = r;
            if (!request_.last_chunk) data_error_ = data_error::refused;
        } else if (!settings_.data_whole_message || !has_hook(hook_kind::data)) {
            envelope_.content.clear();  // streaming: the engine keeps one chunk at most
            chunk_from_ = 0;
        } else {
            chunk_from_ = envelope_.content.size();
        }
        if (!request_.last_chunk) return;
        if (chunk_refusal_.get().verdict != verdict::none)
            return deliver_data_reply(std::exchange(chunk_refusal_.set(), hook_result{}));
        return finish_data();
    case hook_kind::rset:
    case hook_kind::noop: reply_for(r, replies::ok); return;
    case hook_kind::quit:
        reply_for(r, replies::bye);
        close("quit");
        return;
    case hook_kind::vrfy: reply_for(r, replies::cannot_vrfy); return;
    case hook_kind::unknown:
        if (r.verdict == verdict::none) {
            // No plugin knows the verb: aiosmtpd's unknown-command budget.
            if (--unknown_budget_ == 0) {
                reply(replies::too_many_unknown);
                return close("too many unrecognized commands");
            }
            return reply(replies::unknown_command(request_verb_));
        }
        reply_for(r, replies::ok);  // ACCEPT without a reply: 250 OK, never an empty line
        return;
    case hook_kind::command: reply_for(r, replies::ok); return;
    case hook_kind::proxy:
    case hook_kind::session_close:
    case hook_kind::txn_end: return;  // the session's business
    case hook_kind::auth_check:
    case hook_kind::auth_mechanism:
        switch (r.verdict) {
        case verdict::accept:
            return auth_success(r,
                                request_.kind == hook_kind::auth_check ? request_secret_.get()[1] : std::string_view{});
        case verdict::none:
        case verdict::reject: return auth_failure(r);
        case verdict::challenge:
            if (request_.kind == hook_kind::auth_mechanism) {
                reply("334 " + base64_encode(r.challenge));
                ++auth_step_;
                phase_ = phase::auth;
                return;
            }
            auth_end();
            return reply(replies::internal_error);
        case verdict::tempfail: auth_end(); return r.code ? reply_plugin(r) : reply(replies::auth_tempfail);
        case verdict::reject_close:
        case verdict::tempfail_close:
        case verdict::error:
            auth_end();
            reply_for(r, {});
            return;
        }
        return;
    case hook_kind::starttls:
        // aiosmtpd's handle_STARTTLS: no reply now; a refusal answers every later command
        // but QUIT with 554.
        if (r.verdict == verdict::reject_close || r.verdict == verdict::tempfail_close) {
            if (r.code) reply_plugin(r);
            close("closed by plugin");
        } else if (r.verdict != verdict::none && r.verdict != verdict::accept) {
            tls_vetoed_ = true;
        }
        return;
    }
}

bool engine::reply_for(const hook_result& r, std::string_view default_reply)
{
    switch (r.verdict) {
    case verdict::none: reply(default_reply); return true;
    case verdict::accept: r.code ? reply_plugin(r) : reply(default_reply); return true;
    case verdict::reject: r.code ? reply_plugin(r) : reply(replies::default_reject); return false;
    case verdict::tempfail: r.code ? reply_plugin(r) : reply(replies::default_tempfail); return false;
    case verdict::reject_close:
        r.code ? reply_plugin(r) : reply(replies::default_reject);
        close("closed by plugin");
        return false;
    case verdict::tempfail_close:
        r.code ? reply_plugin(r) : reply(replies::closing(settings_.hostname));
        close("closed by plugin");
        return false;
    case verdict::error:
    case verdict::challenge:  // only meaningful for AUTH mechanisms
        reply(replies::internal_error);
        return false;
    }
    return false;
}

// --------------------------------------------------------------------------------------------
// Commands (aiosmtpd 1.4)
// --------------------------------------------------------------------------------------------

bool engine::need_helo()
{
    if (!host_name_.empty()) return false;
    reply(replies::need_helo);
    return true;
}

bool engine::need_auth()
{
    if (!settings_.auth_required || authenticated_) return false;
    reply(replies::auth_required);
    return true;
}

void engine::on_helo(std::string_view arg, bool)
{
    if (arg.empty()) return reply(replies::syntax_helo);
    reset_envelope(transaction_end::how::aborted, "helo");
    extended_smtp_ = false;
    decide(hook_kind::helo, arg, true);
}

void engine::on_ehlo(std::string_view arg, bool)
{
    if (arg.empty()) return reply(replies::syntax_ehlo);
    reset_envelope(transaction_end::how::aborted, "ehlo");
    extended_smtp_ = true;
    decide(hook_kind::ehlo, arg, true);
}

// §3.3: the keyword lines, in aiosmtpd's order.
void engine::send_ehlo_lines()
{
    out_.append("250-").append(settings_.hostname).append(crlf);
    if (settings_.data_size_limit != 0)
        out_.append("250-SIZE ").append(std::to_string(settings_.data_size_limit)).append(crlf);
    if (!settings_.decode_data) out_.append("250-8BITMIME\r\n");
    if (settings_.enable_chunking)
        out_.append(settings_.decode_data ? "250-CHUNKING\r\n" : "250-BINARYMIME\r\n250-CHUNKING\r\n");
    if (settings_.enable_smtputf8) out_.append("250-SMTPUTF8\r\n");
    if (settings_.starttls_available && !tls_active_) out_.append("250-STARTTLS\r\n");
    if (!settings_.auth_require_tls || tls_active_) {
        // Sorted by code point, as aiosmtpd; never a trailing space (docs/behaviour.md).
        std::vector<std::string_view> mechanisms{"LOGIN", "PLAIN"};
        for (const auto& m : settings_.auth_mechanisms) mechanisms.push_back(m);
        std::sort(mechanisms.begin(), mechanisms.end());
        out_.append("250-AUTH");
        for (auto m : mechanisms) out_.append(" ").append(m);
        out_.append(crlf);
    }
    if (settings_.enable_enhanced_status_codes) out_.append("250-ENHANCEDSTATUSCODES\r\n");  // RFC 2034
    if (settings_.enable_dsn) out_.append("250-DSN\r\n");                                    // RFC 3461
    if (settings_.advertise_pipelining) out_.append("250-PIPELINING\r\n");
    if (settings_.xclient && xclient_allowed_)
        out_.append("250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n");
    for (const std::string& k : settings_.ehlo_keywords) out_.append("250-").append(k).append(crlf);
    out_.append("250 HELP\r\n");
}

void engine::on_mail(std::string_view arg, bool has_arg)
{
    // §3.10, the exact check order.
    if (need_helo() || need_auth()) return;
    const std::string_view syntax = extended_smtp_ ? replies::syntax_mail_esmtp : replies::syntax_mail;
    if (!has_arg || !iequals_prefix(arg, "FROM:")) return reply(syntax);
    const auto parsed = parse_address(strip_str(arg.substr(5), settings_.enable_smtputf8), settings_.enable_smtputf8);
    // A control character in the address (see is_control) counts as malformed: the same reply,
    // at the same point of the check order.
    if (parsed.state == address_result::status::malformed || has_control(parsed.address))
        return reply(replies::malformed_address);
    if (parsed.state == address_result::status::empty) return reply(syntax);
    if (!extended_smtp_ && !parsed.rest.empty()) return reply(syntax);
    if (!envelope_.mail_from.empty()) return reply(replies::nested_mail);

    std::vector<esmtp_param> params;
    if (!parse_params(parsed.rest, settings_.enable_smtputf8, request_params_, params, settings_.enable_dsn))
        return reply(syntax);
    if (!settings_.decode_data) {
        // RFC 6152: BODY=7BIT or 8BITMIME only when 8BITMIME is advertised; RFC 3030 §3:
        // BINARYMIME with CHUNKING.
        if (auto body = take_param(params, "BODY"))
            if (!body->has_value || (body->value != "7BIT" && body->value != "8BITMIME" &&
                                     !(settings_.enable_chunking && body->value == "BINARYMIME")))
                return reply(settings_.enable_chunking ? replies::bad_body_chunking : replies::bad_body);
    }
    const auto utf8 = take_param(params, "SMTPUTF8");
    if (utf8 && utf8->has_value) return reply(replies::smtputf8_no_args);
    if (utf8 && !settings_.enable_smtputf8) return reply(replies::smtputf8_disabled);
    if (const auto size = take_param(params, "SIZE")) {
        // RFC 1870 §6.
        if (!size->has_value || !all_digits(size->value)) return reply(syntax);
        if (settings_.data_size_limit != 0 && exceeds(size->value, settings_.data_size_limit))
            return reply(replies::size_exceeded);
    }
    if (settings_.enable_dsn)
        if (const auto bad = take_dsn_params(request_params_, params, false); !bad.empty()) return reply(bad);
    if (!params.empty()) return reply(replies::mail_params_unknown);
    envelope_.smtp_utf8 = utf8.has_value();

    decide(hook_kind::mail, parsed.address, true, request_params_);
}

void engine::on_rcpt(std::string_view arg, bool has_arg)
{
    // §3.12
    if (need_helo() || need_auth()) return;
    if (envelope_.mail_from.empty()) return reply(replies::need_mail);
    const std::string_view syntax = extended_smtp_ ? replies::syntax_rcpt_esmtp : replies::syntax_rcpt;
    if (!has_arg || !iequals_prefix(arg, "TO:")) return reply(syntax);
    const auto parsed = parse_address(strip_str(arg.substr(3), settings_.enable_smtputf8), settings_.enable_smtputf8);
    if (parsed.state == address_result::status::malformed || has_control(parsed.address))
        return reply(replies::malformed_address);
    if (parsed.state == address_result::status::empty) return reply(syntax);
    if (!extended_smtp_ && !parsed.rest.empty()) return reply(syntax);
    std::vector<esmtp_param> params;
    if (!parse_params(parsed.rest, settings_.enable_smtputf8, request_params_, params, settings_.enable_dsn))
        return reply(syntax);
    if (settings_.enable_dsn)
        if (const auto bad = take_dsn_params(request_params_, params, true); !bad.empty()) return reply(bad);
    // aiosmtpd recognises no RCPT parameter (no DSN).
    if (!params.empty()) return reply(replies::rcpt_params_unknown);

    decide(hook_kind::rcpt, parsed.address, true, request_params_);
}

void engine::on_data(std::string_view arg, bool)
{
    // §3.13
    if (need_helo() || need_auth()) return;
    if (envelope_.rcpt_tos.empty()) return reply(replies::need_rcpt);
    if (bdat_refuses_data()) return;
    if (!arg.empty()) return reply(replies::syntax_data);
    reply(replies::start_data);
    phase_ = phase::data;
    begin_message();
}

// A message begins (DATA's 354, or the first BDAT chunk): the reader's state, and the trace
// field on top.
void engine::begin_message()
{
    data_error_ = data_error::none;
    data_bytes_ = 0;
    data_unstuffed_ = 0;
    data_non_ascii_ = false;
    chunk_from_ = 0;
    chunk_refusal_.reset();
    partial_line_ = 0;
    envelope_.content.clear();
    if (message_prefix_ && keeps_content()) {
        envelope_.content = message_prefix_();
        data_unstuffed_ = envelope_.content.size();
    }
    if (has_hook(hook_kind::data) && settings_.data_whole_message) {
        // The client declared the size (RFC 1870): one allocation instead of doubling copies.
        for (const std::string& p : envelope_.mail_options) {
            std::uint64_t declared = 0;
            if (!p.starts_with("SIZE=")) continue;
            const auto [end, ec] = std::from_chars(p.data() + 5, p.data() + p.size(), declared);
            if (ec == std::errc() && end == p.data() + p.size() &&
                (settings_.data_size_limit == 0 || declared <= settings_.data_size_limit) && declared <= (1ull << 32))
                envelope_.content.reserve(static_cast<std::size_t>(declared));
        }
    }
}

// The DATA reader. RFC 5321 §4.1.1.4: only CRLF.CRLF ends the message; bare LF and bare CR are
// data (CVE-2024-27305, "SMTP smuggling": `\n.\r\n` and `\n.\n` never end it). Lines longer
// than data_line_limit (CRLF and a stuffed dot included) and totals over data_size_limit are
// errors reported only after the final dot (aiosmtpd); excess bytes are dropped as they come.
bool engine::step_data()
{
    const std::string_view buf(input() + pos_, end_ - pos_);
    std::size_t lf = buf.find('\n', scan_ - pos_);
    while (lf != std::string_view::npos && (lf == 0 || buf[lf - 1] != '\r')) lf = buf.find('\n', lf + 1);
    if (lf == std::string_view::npos) {
        if (partial_line_ + buf.size() > settings_.data_line_limit) {
            // Too long already: drop what we have, except a CR that may start the CRLF.
            const std::size_t drop = buf.size() - (buf.back() == '\r' ? 1 : 0);
            if (data_error_ == data_error::none) data_error_ = data_error::too_long;
            data_bytes_ += drop;
            partial_line_ += drop;
            pos_ += drop;
            scan_ = pos_;
        } else {
            scan_ = end_;
        }
        return false;
    }
    const std::string_view line = buf.substr(0, lf + 1);
    pos_ += lf + 1;
    scan_ = pos_;
    const bool line_start = partial_line_ == 0;
    const std::size_t length = partial_line_ + line.size();
    partial_line_ = 0;
    if (line_start && line == ".\r\n") {
        end_of_data();
        return true;
    }
    data_bytes_ += line.size();
    if (data_error_ == data_error::none) {
        if (length > settings_.data_line_limit) data_error_ = data_error::too_long;
        else if (settings_.data_size_limit != 0 && data_bytes_ > settings_.data_size_limit)
            data_error_ = data_error::too_much;
    }
    if (data_error_ != data_error::none) {
        if (envelope_.content.capacity() > settings_.data_chunk_size) std::string().swap(envelope_.content);
        else envelope_.content.clear();
        return true;
    }
    // RFC 5321 §4.5.2: remove the transparency dot.
    const std::string_view text = line_start && line.front() == '.' ? line.substr(1) : line;
    data_unstuffed_ += text.size();
    // aiosmtpd decode_data without SMTPUTF8 is strict ASCII (checked line by line, so that a
    // streamed message needs no second pass).
    if (settings_.decode_data && !settings_.enable_smtputf8 && !data_non_ascii_ && !is_ascii(text))
        data_non_ascii_ = true;
    if (!keeps_content()) return true;
    envelope_.content.append(text);
    // Streaming: hand over a chunk once enough has arrived; reading waits for the hook.
    if (has_hook(hook_kind::data_chunk) && envelope_.content.size() - chunk_from_ >= settings_.data_chunk_size)
        ask_chunk(false);
    return true;
}

void engine::ask_chunk(bool last)
{
    ask(hook_kind::data_chunk);
    request_.content = std::string_view(envelope_.content).substr(chunk_from_);
    request_.last_chunk = last;
    request_.content_size = data_unstuffed_;
}

// Record what became of the transaction whose reply starts at out_[reply_start].
void engine::summarize(std::size_t reply_start)
{
    transaction_summary t;
    t.mail_from = envelope_.mail_from;
    t.rcpts = envelope_.rcpt_tos.size();
    t.rcpt_tos = std::move(envelope_.rcpt_tos);  // the envelope is reset right after
    t.size = data_bytes_;
    t.transaction = transaction_number_;
    if (out_.size() >= reply_start + 3) {
        for (std::size_t i = 0; i < 3; ++i)
            t.code = static_cast<std::uint16_t>(t.code * 10 + (out_[reply_start + i] - '0'));
    }
    finished_ = std::move(t);
}

void engine::end_of_data()
{
    ++progress_;
    phase_ = phase::command;
    if (data_error_ == data_error::too_long || data_error_ == data_error::too_much) {
        const bool too_long = data_error_ == data_error::too_long;
        const std::size_t at = out_.size();
        reply(too_long ? replies::data_line_too_long : replies::too_much_data);
        summarize(at);
        reset_envelope(transaction_end::how::refused, {}, at);
        return;
    }
    if (chunk_refusal_.get().verdict != verdict::none) {
        // A data_chunk hook refused the message; the rest was read and dropped.
        deliver_data_reply(std::exchange(chunk_refusal_.set(), hook_result{}));
        return;
    }
    // The last piece (possibly empty: the hooks learn the message is complete).
    if (has_hook(hook_kind::data_chunk)) return ask_chunk(true);
    finish_data();
}

// The whole message is in (and every data_chunk hook has seen it): the DATA hook, or the reply.
void engine::finish_data()
{
    // aiosmtpd decode_data without SMTPUTF8 is strict ASCII; the envelope is kept (as aiosmtpd does).
    if (data_non_ascii_) {
        data_non_ascii_ = false;
        envelope_.content.clear();
        // The envelope is kept (aiosmtpd), but this message is over: the transaction's plugin
        // state (slots) goes, after TXN_END, so that a following DATA starts afresh.
        const std::size_t at = out_.size();
        reply(replies::strict_ascii);
        note_transaction_end(transaction_end::how::refused, {}, at);
        ++envelope_serial_;
        return;
    }
    if (has_hook(hook_kind::data)) {
        ask(hook_kind::data);
        request_.streamed = !settings_.data_whole_message;
        request_.content = request_.streamed ? std::string_view() : std::string_view(envelope_.content);
        request_.content_size = data_unstuffed_;
        return;
    }
    deliver_data_reply(hook_result{});
}

void engine::deliver_data_reply(const hook_result& r)
{
    // LMTP (RFC 2033 §4.2): one reply per accepted recipient, in order (docs/behaviour.md).
    const std::size_t replies_due = settings_.lmtp ? std::max<std::size_t>(envelope_.rcpt_tos.size(), 1) : 1;
    const bool closes = r.verdict == verdict::reject_close || r.verdict == verdict::tempfail_close;
    hook_result each = r;
    if (closes) each.verdict = r.verdict == verdict::reject_close ? verdict::reject : verdict::tempfail;
    bool accepted = false;
    const std::size_t at = out_.size();
    for (std::size_t i = 0; i < replies_due; ++i) {
        // LMTP: a plugin may answer for one recipient (RFC 2033 §4.2), unless it failed: then
        // every recipient gets the 451 (plugin.h set_rcpt_reply), never a reply it left behind.
        if (settings_.lmtp && r.verdict != verdict::error && i < r.rcpt_replies.size() &&
            r.rcpt_replies[i].first != 0) {
            const hook_result one{verdict::accept, r.rcpt_replies[i].first, r.rcpt_replies[i].second, {}, {}, {}};
            reply_plugin(one);
            accepted = accepted || one.code / 100 == 2;
            continue;
        }
        accepted = reply_for(each, replies::ok) || accepted;
    }
    if (accepted) ++transactions_;
    summarize(at);
    reset_envelope(accepted ? transaction_end::how::accepted : transaction_end::how::refused, {}, at);
    if (closes) close("closed by plugin");
}

void engine::on_rset(std::string_view arg, bool)
{
    if (!arg.empty()) return reply(replies::syntax_rset);
    reset_envelope(transaction_end::how::aborted, "rset");
    decide(hook_kind::rset);
}

void engine::on_noop(std::string_view arg, bool has_arg)
{
    request_verb_ = "NOOP";
    decide(hook_kind::noop, arg, has_arg);
}

void engine::on_quit(std::string_view arg, bool)
{
    if (!arg.empty()) return reply(replies::syntax_quit);
    decide(hook_kind::quit);
}

void engine::on_vrfy(std::string_view arg, bool)
{
    if (need_auth()) return;
    if (arg.empty()) return reply(replies::syntax_vrfy);
    const auto parsed = parse_address(arg, settings_.enable_smtputf8);
    // aiosmtpd: only a parse failure is "Could not VRFY"; an empty address (VRFY "") goes on.
    // An address with a control character is answered as unparsable too, so the VRFY hook
    // never gets one (aiosmtpd: 252).
    if (parsed.state == address_result::status::malformed || has_control(parsed.address))
        return reply(replies::could_not_vrfy(arg));
    decide(hook_kind::vrfy, parsed.address, true);
}

std::string engine::help_list() const
{
    std::vector<std::string_view> verbs;
    for (const command_spec& c : command_table())
        if (!c.help.empty() && offered(c)) verbs.push_back(c.verb);
    for (const auto& c : settings_.commands)
        if (!c.help.empty()) verbs.push_back(c.verb);
    std::sort(verbs.begin(), verbs.end());
    std::string list;
    for (auto v : verbs) {
        if (!list.empty()) list.push_back(' ');
        list.append(v);
    }
    return list;
}

void engine::on_expn(std::string_view, bool) { reply(replies::expn_not_implemented); }

void engine::on_help(std::string_view arg, bool)
{
    if (need_auth()) return;
    if (!arg.empty()) {
        std::string wanted;
        upper_into(wanted, arg);
        if (const command_spec* c = find_command(wanted); c != nullptr && !c->help.empty() && offered(*c)) {
            std::string line = "250 Syntax: ";
            line.append(c->help);
            if (extended_smtp_) line.append(c->help_extended);
            return reply(line);
        }
        for (const auto& c : settings_.commands)
            if (c.verb == wanted && !c.help.empty()) return reply("250 Syntax: " + c.help);
        return reply("501 Supported commands: " + help_list());
    }
    reply("250 Supported commands: " + help_list());
}

void engine::on_auth(std::string_view arg, bool)
{
    // aiosmtpd 1.4, the check order. AUTH is not subject to auth_required.
    if (host_name_.empty()) return reply(replies::need_ehlo);
    if (!extended_smtp_) return reply(replies::auth_not_recognized);
    if (settings_.auth_require_tls && !tls_active_) return reply(replies::encryption_required);
    if (authenticated_) return reply(replies::already_authenticated);
    if (arg.empty()) return reply(replies::auth_not_enough);
    std::string_view words[2];
    std::size_t count = 0;
    for (std::size_t i = 0; i < arg.size();) {
        while (i < arg.size() && is_py_space(arg[i])) ++i;
        const std::size_t start = i;
        while (i < arg.size() && !is_py_space(arg[i])) ++i;
        if (i == start) continue;
        if (count == 2) return reply(replies::auth_too_many);
        words[count++] = arg.substr(start, i - start);
    }
    // Mechanism names are case-insensitive (RFC 4954 §4; docs/behaviour.md).
    std::string mechanism;
    upper_into(mechanism, words[0]);
    // The mechanism is known before its initial response is decoded (aiosmtpd looks it up
    // first: an unknown one with a response that is not base64 is still 504).
    const auto& plugins = settings_.auth_mechanisms;
    const auto it = std::find(plugins.begin(), plugins.end(), mechanism);
    if (mechanism != "PLAIN" && mechanism != "LOGIN" && it == plugins.end()) return reply(replies::unknown_mechanism);
    std::optional<std::string> initial;
    if (count == 2) {
        initial = base64_decode(words[1]);
        if (!initial) return reply(replies::auth_bad_base64);
    }
    auth_step_ = 0;
    if (mechanism == "PLAIN") {
        auth_kind_ = auth_kind::plain;
        if (initial) return auth_response(*initial);
        reply(replies::auth_empty_challenge);
        phase_ = phase::auth;
        return;
    }
    if (mechanism == "LOGIN") {
        auth_kind_ = auth_kind::login;
        if (initial) {
            auth_user_.set() = std::move(*initial);
            auth_step_ = 1;
            reply(replies::auth_password_challenge);
        } else {
            reply(replies::auth_username_challenge);
        }
        phase_ = phase::auth;
        return;
    }
    auth_kind_ = auth_kind::plugin;
    auth_plugin_ = static_cast<std::size_t>(it - plugins.begin());
    if (initial) return auth_plugin_step(std::string_view(*initial));
    auth_plugin_step(std::nullopt);
}

// One line of the AUTH exchange (a response to a 334 challenge). aiosmtpd reads it with the
// 1001-byte stream limit, not the command limits and not the call budgets.
bool engine::step_auth()
{
    const auto line = next_line(settings_.data_line_limit);
    if (!line) return false;
    ++progress_;
    phase_ = phase::command;
    if (line->too_long) {
        auth_end();
        reply(replies::auth_line_too_long);
        return true;
    }
    const std::string_view answer = strip(line->text);
    if (answer == "*") {
        auth_end();
        reply(replies::auth_aborted);
        return true;
    }
    const auto decoded = base64_decode(answer);
    if (!decoded) {
        auth_end();
        reply(replies::auth_bad_base64);
        return true;
    }
    if (auth_kind_ == auth_kind::plugin) auth_plugin_step(std::string_view(*decoded));
    else auth_response(*decoded);
    return true;
}

// A decoded answer for the built-in mechanisms.
void engine::auth_response(std::string_view data)
{
    if (auth_kind_ == auth_kind::plain) {
        // RFC 4616: authzid NUL authcid NUL passwd, exactly.
        const auto first = data.find('\0');
        const auto second = first == std::string_view::npos ? first : data.find('\0', first + 1);
        if (second == std::string_view::npos || data.find('\0', second + 1) != std::string_view::npos) {
            auth_end();
            return reply(replies::auth_cannot_split);
        }
        return auth_credentials("PLAIN", data.substr(0, first), data.substr(first + 1, second - first - 1),
                                data.substr(second + 1));
    }
    // LOGIN
    if (auth_step_ == 0) {
        auth_user_.set().assign(data);
        auth_step_ = 1;
        reply(replies::auth_password_challenge);
        phase_ = phase::auth;
        return;
    }
    const std::string user = std::move(auth_user_.set());
    auth_credentials("LOGIN", {}, user, data);
}

void engine::auth_credentials(std::string_view mechanism, std::string_view authzid, std::string_view login,
                              std::string_view password)
{
    std::array<std::string, 3>& secret = request_secret_.set();
    secret[0].assign(authzid);
    secret[1].assign(login);
    secret[2].assign(password);
    auth_user_.reset();
    ask(hook_kind::auth_check, mechanism, true);
    request_.authzid = secret[0];
    request_.login = secret[1];
    request_.password = secret[2];
    // Without an AUTH_CHECK plugin nobody can vouch for the credentials: 535 (aiosmtpd
    // without an authenticator).
    if (!has_hook(hook_kind::auth_check)) {
        waiting_ = false;
        finish_hook(hook_result{});
    }
}

void engine::auth_plugin_step(std::optional<std::string_view> response)
{
    request_verb_ = settings_.auth_mechanisms[auth_plugin_];
    ask(hook_kind::auth_mechanism, response.value_or(std::string_view{}), response.has_value());
    request_.command_index = auth_plugin_;
    request_.step = auth_step_;
}

void engine::auth_success(const hook_result& r, std::string_view login)
{
    authenticated_ = true;
    auth_login_.assign(r.identity.empty() ? login : std::string_view(r.identity));
    r.code ? reply_plugin(r) : reply(replies::auth_ok);
    auth_end();
}

void engine::auth_failure(const hook_result& r)
{
    if (request_.kind == hook_kind::auth_check) {
        failed_auth_mechanism_.set().assign(request_arg_);
        failed_auth_login_.set().assign(request_secret_.get()[1]);
    } else {
        failed_auth_mechanism_.set().assign(request_verb_);
        failed_auth_login_.set().assign(r.identity);
    }
    // docs/behaviour.md: a rejected credential is always answered.
    r.code ? reply_plugin(r) : reply(replies::auth_failed);
    auth_end();
    auth_failed_ = true;
    ++auth_failures_;
    if (settings_.auth_max_failures != 0 && auth_failures_ >= settings_.auth_max_failures) {
        reply(replies::too_many_auth_failures(settings_.hostname));
        close("too many failed authentication attempts");
    }
}

void engine::auth_end() noexcept
{
    auth_kind_ = auth_kind::none;
    auth_step_ = 0;
    auth_user_.reset();
    request_secret_.reset();
    if (phase_ == phase::auth) phase_ = phase::command;
}

void engine::on_starttls(std::string_view arg, bool)
{
    // RFC 3207 §4, and aiosmtpd 1.4's check order.
    if (!arg.empty()) return reply(replies::syntax_starttls);
    if (tls_active_) return reply(replies::tls_already_active);
    if (!settings_.starttls_available) return reply(replies::tls_not_available);
    reply(replies::ready_to_start_tls);
    // RFC 3207 §4.2 / CVE-2011-0411: anything the client pipelined after STARTTLS came in
    // plaintext and must never be read as if it came through TLS.
    pos_ = scan_ = end_;
    phase_ = phase::tls;
}

void engine::refuse_tls(std::string_view line)
{
    if (phase_ != phase::tls) return;
    const std::string_view code = enhanced_code_for(replies::ready_to_start_tls);
    const std::size_t ready = replies::ready_to_start_tls.size() + (code.empty() ? 0 : code.size() + 1) + crlf.size();
    if (out_.size() >= ready) {
        std::string_view tail = std::string_view(out_).substr(out_.size() - ready);
        tail.remove_suffix(crlf.size());
        if (tail.starts_with("220 ") && tail.ends_with(replies::ready_to_start_tls.substr(4)))
            out_.resize(out_.size() - ready);
    }
    phase_ = phase::command;
    reply(line);
}

void engine::tls_established()
{
    if (phase_ != phase::tls) return;
    pos_ = scan_ = end_ = 0;
    // RFC 3207 §4.2: forget what the client said before; it must greet again.
    host_name_.clear();
    extended_smtp_ = false;
    authenticated_ = false;
    auth_login_.clear();
    reset_envelope(transaction_end::how::aborted, "starttls");
    tls_active_ = true;
    phase_ = phase::command;
    if (has_hook(hook_kind::starttls)) ask(hook_kind::starttls);
}

// Postfix's XCLIENT (XCLIENT_README), with its replies and check order. Accepted, the session
// starts over as if the client it names had connected: the host makes it the session's peer,
// then the CONNECT hook runs and a new greeting (or the hook's refusal) answers the command.
// HELO, PROTO and LOGIN of this command survive the reset; the other attributes persist until
// changed by a later XCLIENT.
void engine::on_xclient(std::string_view arg, bool has_arg)
{
    if (!settings_.xclient) return on_unknown(verb_, arg, has_arg);
    if (in_transaction()) return reply(replies::xclient_in_transaction);
    if (arg.empty()) return reply(replies::xclient_syntax);
    if (!xclient_allowed_) return reply(replies::xclient_not_authorized);
    xclient_attributes got;
    std::string name;
    for (std::size_t i = 0; i < arg.size();) {
        while (i < arg.size() && is_py_space(arg[i])) ++i;
        const std::size_t start = i;
        while (i < arg.size() && !is_py_space(arg[i])) ++i;
        if (i == start) continue;
        const std::string_view token = arg.substr(start, i - start);
        const auto eq = token.find('=');
        if (eq == std::string_view::npos || eq == 0 || eq + 1 == token.size())
            return reply(replies::xclient_attribute_expected);
        upper_into(name, token.substr(0, eq));
        const std::string_view raw = token.substr(eq + 1);
        if (raw.size() > 255) return reply(replies::xclient_value_too_long);
        const auto value = xclient_unquote(raw);
        if (!value) return reply(replies::xclient_bad_value(name, printable(raw)));
        const bool unavailable = iequals(*value, "[UNAVAILABLE]") || iequals(*value, "[TEMPUNAVAIL]");
        const auto bad = [&] { reply(replies::xclient_bad_value(name, printable(*value))); };
        const auto address = [&](std::optional<std::string>& into) {
            if (unavailable) return into.emplace(), true;
            const bool v6 = iequals_prefix(*value, "IPV6:");  // XCLIENT_README; a bare IPv6 is taken too
            const auto ip = parse_ip(std::string_view(*value).substr(v6 ? 5 : 0));
            if (!ip || (v6 && ip->v4)) return false;
            into = to_string(*ip);
            return true;
        };
        const auto port = [&](std::optional<std::uint16_t>& into) {
            if (unavailable) return into = 0, true;
            if (!all_digits(*value) || value->size() > 5 || exceeds(*value, 65535)) return false;
            into = static_cast<std::uint16_t>(std::stoul(*value));
            return true;
        };
        if (name == "NAME") {
            if (!unavailable && (!is_hostname(*value) || parse_ip(*value))) return bad();
            got.name = unavailable ? std::string() : *value;
        } else if (name == "ADDR") {
            if (!address(got.addr)) return bad();
        } else if (name == "PORT") {
            if (!port(got.port)) return bad();
        } else if (name == "DESTADDR") {
            if (!address(got.destaddr)) return bad();
        } else if (name == "DESTPORT") {
            if (!port(got.destport)) return bad();
        } else if (name == "HELO") {
            std::string helo = unavailable ? std::string() : *value;
            // Postfix censors what could break its Received field.
            for (char& c : helo)
                if (std::string_view("<>()\\\";:@").find(c) != std::string_view::npos) c = '?';
            got.helo = std::move(helo);
        } else if (name == "PROTO") {
            std::string proto;
            upper_into(proto, *value);
            if (proto != "SMTP" && proto != "ESMTP") return bad();
            got.proto = std::move(proto);
        } else if (name == "LOGIN") {
            got.login = unavailable ? std::string() : *value;
        } else {
            return reply(replies::xclient_bad_attribute(printable(token.substr(0, eq))));
        }
    }
    // Accepted: every attribute given replaces the one before; HELO, PROTO and LOGIN are this
    // command's (absent: reset, as a new connection has none).
    xclient_attributes& x = xclient_.set();
    for (auto [from, to] :
         {std::pair{&got.name, &x.name}, std::pair{&got.addr, &x.addr}, std::pair{&got.destaddr, &x.destaddr}})
        if (*from) *to = std::move(*from);
    if (got.port) x.port = got.port;
    if (got.destport) x.destport = got.destport;
    x.helo = std::move(got.helo);
    x.proto = std::move(got.proto);
    x.login = std::move(got.login);
    reset_envelope(transaction_end::how::aborted, "xclient");
    host_name_ = x.helo.value_or(std::string());
    extended_smtp_ = x.proto == "ESMTP";
    auth_login_ = x.login.value_or(std::string());
    authenticated_ = !auth_login_.empty();
    connect_rejected_ = false;
    phase_ = phase::greeting;
    ask(hook_kind::connect);
    request_.xclient = true;
}

void engine::on_unknown(std::string_view verb, std::string_view arg, bool has_arg)
{
    request_verb_.assign(verb);
    decide(hook_kind::unknown, arg, has_arg);
}

void engine::on_custom(std::size_t index, std::string_view verb, std::string_view arg, bool has_arg)
{
    if (settings_.commands[index].needs_helo && need_helo()) return;
    request_verb_.assign(verb);
    ask(hook_kind::command, arg, has_arg);
    request_.command_index = index;
}

// --------------------------------------------------------------------------------------------
// Replies and state
// --------------------------------------------------------------------------------------------

void engine::send_greeting()
{
    // Not reply(): RFC 2034 §3, a greeting never carries an enhanced status code.
    out_.append(replies::greeting(settings_.hostname, settings_.ident)).append(crlf);
    phase_ = phase::command;
}

void engine::reply(std::string_view line)
{
    // RFC 2034 (server.enable_enhanced_status_codes): "ddd text" becomes "ddd x.y.z text".
    if (const std::string_view code = enhanced_code_for(line); !code.empty()) {
        out_.append(line.substr(0, 4)).append(code).append(" ");
        line.remove_prefix(4);
    }
    out_.append(line).append(crlf);
}

std::string_view engine::enhanced_code_for(std::string_view line) const noexcept
{
    if (!settings_.enable_enhanced_status_codes) return {};
    return enhanced_code(line, verb_);
}

// A plugin's reply: "code text" lines; '\n' in the text separates lines of a multi-line reply.
void engine::reply_plugin(const hook_result& r)
{
    const std::string code = std::to_string(r.code);
    std::string_view text = r.text;
    for (;;) {
        const auto nl = text.find('\n');
        out_.append(code);
        if (nl == std::string_view::npos) {
            if (!text.empty()) out_.append(" ").append(text);
            out_.append(crlf);
            return;
        }
        out_.append("-").append(text.substr(0, nl)).append(crlf);
        text.remove_prefix(nl + 1);
    }
}

void engine::timed_out()
{
    if (closed_) return;
    reply(replies::timeout_exceeded(settings_.hostname));
    close("timeout");
}

void engine::abort_with(std::string_view line)
{
    if (closed_) return;
    reply(line);
    close("aborted");
}

void engine::close(std::string_view why) noexcept
{
    close_reason_ = why;
    closed_ = true;
    phase_ = phase::closed;
    waiting_ = false;
}

void engine::end_session(std::string_view reason) noexcept
{
    if (in_transaction()) reset_envelope(transaction_end::how::aborted, reason);
}

// For TXN_END: how the open transaction ended; its message's reply starts at out_[reply_start]
// (npos: no message).
void engine::note_transaction_end(transaction_end::how outcome, std::string_view reason,
                                  std::size_t reply_start) noexcept
{
    if (!has_hook(hook_kind::txn_end) || !in_transaction()) return;
    try {
        transaction_end e;
        e.outcome = outcome;
        e.reason = reason;
        e.mail_from = envelope_.mail_from;
        // summarize() has moved the recipients out already.
        e.rcpts = finished_ && reply_start != std::string::npos ? finished_->rcpts : envelope_.rcpt_tos.size();
        if (reply_start != std::string::npos && reply_start + 3 <= out_.size()) {
            e.size = data_bytes_;  // as the mail log gives it
            const std::size_t eol = out_.find('\r', reply_start);
            e.reply = out_.substr(reply_start, eol == std::string::npos ? std::string::npos : eol - reply_start);
            for (std::size_t i = 0; i < 3; ++i)
                e.code = static_cast<std::uint16_t>(e.code * 10 + (out_[reply_start + i] - '0'));
        }
        txn_ends_.push_back(std::move(e));
    } catch (...) {  // out of memory: this notification is lost, the session goes on
    }
}

void engine::reset_envelope(transaction_end::how outcome, std::string_view reason, std::size_t reply_start) noexcept
{
    note_transaction_end(outcome, reason, reply_start);
    envelope_.clear();
    // A large message's memory goes back: a session between messages holds little.
    if (envelope_.content.capacity() > 1024 * 1024) std::string().swap(envelope_.content);
    ++envelope_serial_;
}

std::size_t engine::command_limit(std::string_view verb) const noexcept
{
    // RFC 3461 §4: room for the DSN parameters of MAIL and RCPT.
    const std::size_t dsn = extended_smtp_ && settings_.enable_dsn ? dsn::line_allowance(verb) : 0;
    if (!extended_smtp_ || verb != "MAIL") return settings_.command_size_limit + dsn;
    // RFC 1870 §3 (+26 for SIZE) and RFC 6531 §3.4 (+10 for SMTPUTF8), once per session
    // (docs/behaviour.md: aiosmtpd grows it with every EHLO).
    return settings_.command_size_limit + (settings_.data_size_limit != 0 ? 26 : 0) +
           (settings_.enable_smtputf8 ? 10 : 0) + dsn;
}

}  // namespace asiosmtpd::proto
