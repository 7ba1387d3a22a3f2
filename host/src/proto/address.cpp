// SPDX-License-Identifier: Apache-2.0
// address: parse_address(), a port of the part of CPython 3.11's email/_header_value_parser.py
// that aiosmtpd's SMTP._getaddr() uses (get_angle_addr / get_addr_spec and what they call, plus
// the AddrSpec/AngleAddr/LocalPart/Domain properties that turn the parse tree into text).
// Why a port and not a fresh RFC 5321 scanner: aiosmtpd's stored address is whatever those
// properties print, including their oddities (the local part is re-serialised and parsed
// again, `\` outside quotes is kept, RFC 2047 encoded words are decoded), and only the same
// algorithm reproduces all of them. The function names below are Python's, so each can be read
// side by side with the original. No exceptions: each step returns how it ended.
#include "proto/address.hpp"

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::proto {
namespace {

// ---------------------------------------------------------------------------------------------
// Character classes (the sets at the top of _header_value_parser.py). All are ASCII, so working
// on UTF-8 bytes instead of Python code points gives the same answers: a byte >= 0x80 is never
// in a set, just as a non-ASCII code point (or a surrogate-escaped byte) is not.

enum char_class : std::uint8_t {
    wsp = 1U << 0U,          ///< WSP: blank and tab
    special = 1U << 1U,      ///< SPECIALS: ()<>@,:;.\"[]
    phrase_end = 1U << 2U,   ///< PHRASE_ENDS: SPECIALS minus . " (
    cfws_leader = 1U << 3U,  ///< CFWS_LEADER: WSP and (
};

constexpr std::array<std::uint8_t, 256> make_char_classes()
{
    std::array<std::uint8_t, 256> table{};
    for (const char c : std::string_view{" \t"}) table[static_cast<unsigned char>(c)] |= wsp | cfws_leader;
    table[static_cast<unsigned char>('(')] |= cfws_leader;
    for (const char c : std::string_view{R"(()<>@,:;.\"[])"}) table[static_cast<unsigned char>(c)] |= special;
    for (const char c : std::string_view{R"()<>@,:;\[])"}) table[static_cast<unsigned char>(c)] |= phrase_end;
    return table;
}

constexpr std::array<std::uint8_t, 256> char_classes = make_char_classes();

constexpr bool has_class(char c, char_class cls) { return (char_classes[static_cast<unsigned char>(c)] & cls) != 0; }

constexpr bool is_wsp(char c) { return has_class(c, wsp); }
constexpr bool is_special(char c) { return has_class(c, special); }
constexpr bool is_phrase_end(char c) { return has_class(c, phrase_end); }
constexpr bool is_cfws_leader(char c) { return has_class(c, cfws_leader); }
/// ATOM_ENDS = SPECIALS | WSP
constexpr bool is_atom_end(char c) { return is_special(c) || is_wsp(c); }
/// DOT_ATOM_ENDS = ATOM_ENDS - "."
constexpr bool is_dot_atom_end(char c) { return c != '.' && is_atom_end(c); }

constexpr bool is_hex_digit(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

constexpr unsigned hex_value(char c)
{
    if (c >= '0' && c <= '9') return static_cast<unsigned>(c - '0');
    if (c >= 'a' && c <= 'f') return static_cast<unsigned>(c - 'a' + 10);
    return static_cast<unsigned>(c - 'A' + 10);
}

constexpr bool is_ascii_alnum(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

constexpr char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

constexpr unsigned char byte_at(std::string_view s, std::size_t i) { return static_cast<unsigned char>(s[i]); }

/// Length of the well-formed UTF-8 sequence for one non-ASCII code point at `pos`, or 0. This is
/// what Python's strict UTF-8 decoder accepts (no overlongs, no surrogates, at most U+10FFFF);
/// the arguments were decoded with surrogateescape, so any other byte >= 0x80 is a lone
/// surrogate to Python, not a character.
std::size_t utf8_char_length(std::string_view s, std::size_t pos)
{
    const auto continuation = [&](std::size_t i, unsigned low = 0x80, unsigned high = 0xBF) {
        return i < s.size() && byte_at(s, i) >= low && byte_at(s, i) <= high;
    };
    const unsigned lead = byte_at(s, pos);
    if (lead >= 0xC2 && lead <= 0xDF) return continuation(pos + 1) ? 2 : 0;
    if (lead >= 0xE0 && lead <= 0xEF) {
        const unsigned low = lead == 0xE0 ? 0xA0 : 0x80;   // no overlongs
        const unsigned high = lead == 0xED ? 0x9F : 0xBF;  // no UTF-16 surrogates
        return continuation(pos + 1, low, high) && continuation(pos + 2) ? 3 : 0;
    }
    if (lead >= 0xF0 && lead <= 0xF4) {
        const unsigned low = lead == 0xF0 ? 0x90 : 0x80;   // no overlongs
        const unsigned high = lead == 0xF4 ? 0x8F : 0xBF;  // nothing above U+10FFFF
        return continuation(pos + 1, low, high) && continuation(pos + 2) && continuation(pos + 3) ? 4 : 0;
    }
    return 0;
}

/// Length of the character at `pos` if Python's str.isspace() holds for it, else 0. Python's
/// lstrip()/split() (used by get_fws, Domain.domain and _getaddr) strip far more than WSP:
/// \n \v \f \r, the ASCII separators \x1c-\x1f, and Unicode spaces such as U+00A0.
std::size_t python_space_length(std::string_view s, std::size_t pos)
{
    const unsigned c = byte_at(s, pos);
    if ((c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20)) return 1;
    if (c < 0x80) return 0;
    const std::size_t length = utf8_char_length(s, pos);
    if (length == 0) return 0;
    const unsigned b1 = byte_at(s, pos + 1);
    if (length == 2) return (c == 0xC2 && (b1 == 0x85 || b1 == 0xA0)) ? 2 : 0;  // U+0085, U+00A0
    if (length != 3) return 0;
    const unsigned b2 = byte_at(s, pos + 2);
    const bool space = (c == 0xE1 && b1 == 0x9A && b2 == 0x80)  // U+1680
                       || (c == 0xE2 && b1 == 0x80 &&
                           (b2 <= 0x8A                              // U+2000..U+200A
                            || b2 == 0xA8                           // U+2028
                            || b2 == 0xA9                           // U+2029
                            || b2 == 0xAF))                         // U+202F
                       || (c == 0xE2 && b1 == 0x81 && b2 == 0x9F)   // U+205F
                       || (c == 0xE3 && b1 == 0x80 && b2 == 0x80);  // U+3000
    return space ? 3 : 0;
}

/// Python's s.lstrip(): how many leading bytes are whitespace.
std::size_t python_space_prefix(std::string_view s)
{
    std::size_t pos = 0;
    while (pos < s.size()) {
        const std::size_t length = python_space_length(s, pos);
        if (length == 0) break;
        pos += length;
    }
    return pos;
}

/// ''.join(s.split()): `s` without any of Python's whitespace (Domain.domain).
std::string python_remove_spaces(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    for (std::size_t pos = 0; pos < s.size();) {
        const std::size_t length = python_space_length(s, pos);
        if (length != 0) {
            pos += length;
            continue;
        }
        out.push_back(s[pos]);
        ++pos;
    }
    return out;
}

// ---------------------------------------------------------------------------------------------
// Python text. aiosmtpd hands the parser a str decoded from the line as UTF-8 with
// surrogateescape: each byte that is not part of a well-formed sequence becomes the lone
// surrogate U+DC00+byte, which is no letter, no blank and no special to any later test. Text is
// kept in that shape here too (UTF-8, those surrogates spelt ED B2 80 .. ED B3 BF), so that an
// escaped 0xC2 0xA0 never passes for U+00A0, and is turned back into bytes at the end.

/// 3 if an escaped byte (surrogate U+DC80..U+DCFF) starts at `pos`, else 0.
std::size_t escaped_byte_length(std::string_view text, std::size_t pos)
{
    const bool escaped = pos + 2 < text.size() && byte_at(text, pos) == 0xED &&
                         (byte_at(text, pos + 1) == 0xB2 || byte_at(text, pos + 1) == 0xB3) &&
                         byte_at(text, pos + 2) >= 0x80 && byte_at(text, pos + 2) <= 0xBF;
    return escaped ? 3 : 0;
}

bool has_escaped_byte(std::string_view text)
{
    for (std::size_t pos = 0; pos < text.size(); ++pos)
        if (escaped_byte_length(text, pos) != 0) return true;
    return false;
}

/// U+DC00 + b (b >= 0x80) in UTF-8.
void append_escaped_byte(std::string& text, unsigned b)
{
    text.push_back(static_cast<char>(0xEDU));
    text.push_back(static_cast<char>(0xB0U | (b >> 6U)));
    text.push_back(static_cast<char>(0x80U | (b & 0x3FU)));
}

/// bytes.decode('utf-8', 'surrogateescape')
std::string decode_utf8_escaped(std::string_view bytes)
{
    std::string text;
    text.reserve(bytes.size());
    for (std::size_t pos = 0; pos < bytes.size();) {
        const unsigned b = byte_at(bytes, pos);
        const std::size_t length = b < 0x80 ? 1 : utf8_char_length(bytes, pos);
        if (length == 0) {
            append_escaped_byte(text, b);
            ++pos;
            continue;
        }
        text += bytes.substr(pos, length);
        pos += length;
    }
    return text;
}

/// bytes.decode('ascii', 'surrogateescape')
std::string decode_ascii_escaped(std::string_view bytes)
{
    std::string text;
    text.reserve(bytes.size());
    for (const char c : bytes) {
        const unsigned b = static_cast<unsigned char>(c);
        if (b < 0x80) text.push_back(c);
        else append_escaped_byte(text, b);
    }
    return text;
}

/// bytes.decode('latin-1'): every byte is the code point of the same number.
std::string decode_latin1(std::string_view bytes)
{
    std::string text;
    text.reserve(bytes.size());
    for (const char c : bytes) {
        const unsigned b = static_cast<unsigned char>(c);
        if (b < 0x80) {
            text.push_back(c);
            continue;
        }
        text.push_back(static_cast<char>(0xC0U | (b >> 6U)));
        text.push_back(static_cast<char>(0x80U | (b & 0x3FU)));
    }
    return text;
}

/// str.encode('utf-8', 'surrogateescape'): the bytes again.
std::string encode_escaped(std::string_view text)
{
    std::string bytes;
    bytes.reserve(text.size());
    for (std::size_t pos = 0; pos < text.size();) {
        if (escaped_byte_length(text, pos) != 0) {
            const unsigned b = ((byte_at(text, pos + 1) & 0x03U) << 6U) | (byte_at(text, pos + 2) & 0x3FU);
            bytes.push_back(static_cast<char>(b));
            pos += 3;
            continue;
        }
        bytes.push_back(text[pos]);
        ++pos;
    }
    return bytes;
}

/// str.encode('ascii', 'surrogateescape'): the bytes, or nothing if a real non-ASCII character
/// is in the way (UnicodeEncodeError).
std::optional<std::string> encode_ascii_escaped(std::string_view text)
{
    std::string bytes;
    bytes.reserve(text.size());
    for (std::size_t pos = 0; pos < text.size();) {
        if (byte_at(text, pos) < 0x80) {
            bytes.push_back(text[pos]);
            ++pos;
            continue;
        }
        if (escaped_byte_length(text, pos) == 0) return std::nullopt;
        bytes += encode_escaped(text.substr(pos, 3));
        pos += 3;
    }
    return bytes;
}

/// quote_string(): the whole text in double quotes, `\` and `"` backslash-escaped.
std::string quote_string(std::string_view s)
{
    std::string out = "\"";
    for (const char c : s) {
        if (c == '\\' || c == '"') out.push_back('\\');
        out.push_back(c);
    }
    out.push_back('"');
    return out;
}

// ---------------------------------------------------------------------------------------------
// The parse tree. Python's nodes are str subclasses (terminals) and list subclasses (token
// lists); what matters downstream is each node's `value` (the normalised text) and its str()
// (a re-serialisation, which get_local_part parses a second time). The kinds below are the
// classes whose value/str differ, plus the token_type names the algorithms test.

enum class token_kind : std::uint8_t {
    // Terminals.
    text,          ///< ValueTerminal (atext, qcontent/dtext ptext, vtext, `[` ...): value = str = text
    dot,           ///< the DOT ValueTerminal (token_type "dot")
    comment_text,  ///< WhiteSpaceTerminal ptext inside a comment: value is one blank
    fws,           ///< WhiteSpaceTerminal "fws": value is one blank, str the blanks
    ew_fws,        ///< EWWhiteSpaceTerminal: blank between two encoded words; value = str = ""
    // Token lists.
    list,                ///< TokenList and subclasses that keep its value/str (atom, dot-atom ...)
    cfws,                ///< CFWSList: value is one blank
    comment,             ///< Comment: value is one blank, str re-escapes `\ ( )`
    bare_quoted_string,  ///< BareQuotedString: value is the unquoted text, str re-quotes it
    encoded_word,        ///< EncodedWord (RFC 2047), holding the decoded text
};

struct token {
    token_kind kind = token_kind::list;
    std::string text;             ///< terminals only
    std::vector<token> children;  ///< token lists only
};

constexpr bool is_list(token_kind kind) { return kind >= token_kind::list; }

token make_terminal(token_kind kind, std::string text) { return token{kind, std::move(text), {}}; }
token make_list(token_kind kind) { return token{kind, {}, {}}; }

/// `token[:0] = [leader]`: Python splices leading CFWS into the token it precedes.
void prepend(token& list, token leader) { list.children.insert(list.children.begin(), std::move(leader)); }

void append_str(const token& t, std::string& out);

/// The `value` property of each class.
void append_value(const token& t, std::string& out)
{
    switch (t.kind) {
    case token_kind::text:
    case token_kind::dot: out += t.text; break;
    case token_kind::comment_text:
    case token_kind::fws:
    case token_kind::cfws:
    case token_kind::comment: out.push_back(' '); break;
    case token_kind::ew_fws: break;
    case token_kind::bare_quoted_string:
        for (const token& child : t.children) append_str(child, out);
        break;
    case token_kind::list:
    case token_kind::encoded_word:
        for (const token& child : t.children) append_value(child, out);
        break;
    }
}

/// str() of each class.
void append_str(const token& t, std::string& out)
{
    switch (t.kind) {
    case token_kind::text:
    case token_kind::dot:
    case token_kind::comment_text:
    case token_kind::fws: out += t.text; break;
    case token_kind::ew_fws: break;
    case token_kind::comment: {
        // Comment.__str__ / Comment.quote: nested comments as they are, other parts escaped.
        out.push_back('(');
        for (const token& child : t.children) {
            if (child.kind == token_kind::comment) {
                append_str(child, out);
                continue;
            }
            std::string inner;
            append_str(child, inner);
            for (const char c : inner) {
                if (c == '\\' || c == '(' || c == ')') out.push_back('\\');
                out.push_back(c);
            }
        }
        out.push_back(')');
        break;
    }
    case token_kind::bare_quoted_string: {
        std::string inner;
        for (const token& child : t.children) append_str(child, inner);
        out += quote_string(inner);
        break;
    }
    case token_kind::list:
    case token_kind::cfws:
    case token_kind::encoded_word:
        for (const token& child : t.children) append_str(child, out);
        break;
    }
}

std::string value_of(const token& t)
{
    std::string out;
    append_value(t, out);
    return out;
}

std::string str_of(const token& t)
{
    std::string out;
    append_str(t, out);
    return out;
}

// ---------------------------------------------------------------------------------------------
// RFC 2047 encoded words, as email/_encoded_words.py decodes them.

/// binascii.a2b_base64(data, strict_mode=...) of CPython 3.11. False where Python raises
/// binascii.Error; `out` then holds garbage.
bool a2b_base64(std::string_view data, bool strict_mode, std::string& out)
{
    constexpr int not_base64 = -1;
    constexpr auto digit_value = [](unsigned char c) {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return not_base64;
    };
    out.clear();
    if (strict_mode && !data.empty() && data.front() == '=') return false;  // leading padding
    int quad_pos = 0;
    unsigned left = 0;
    int pads = 0;
    bool padding_started = false;
    for (std::size_t i = 0; i < data.size(); ++i) {
        const auto c = byte_at(data, i);
        if (c == '=') {
            padding_started = true;
            // Enough padding ends the input; strict mode refuses anything after it.
            if (quad_pos >= 2 && quad_pos + ++pads >= 4) return !(strict_mode && i + 1 < data.size());
            continue;
        }
        const int digit = digit_value(c);
        if (digit == not_base64) {
            if (strict_mode) return false;  // only base64 data is allowed
            continue;
        }
        if (strict_mode && padding_started) return false;  // discontinuous padding
        pads = 0;
        const auto bits = static_cast<unsigned>(digit);
        switch (quad_pos) {
        case 0: left = bits; break;
        case 1:
            out.push_back(static_cast<char>(((left << 2U) | (bits >> 4U)) & 0xFFU));
            left = bits & 0x0FU;
            break;
        case 2:
            out.push_back(static_cast<char>(((left << 4U) | (bits >> 2U)) & 0xFFU));
            left = bits & 0x03U;
            break;
        default:
            out.push_back(static_cast<char>(((left << 6U) | bits) & 0xFFU));
            left = 0;
            break;
        }
        quad_pos = (quad_pos + 1) % 4;
    }
    return quad_pos == 0;  // one extra character, or incorrect padding
}

/// _encoded_words.decode_b(): strict with the padding fixed, then lenient, then lenient with
/// extra padding, and finally the undecoded text itself.
std::string decode_b(std::string_view encoded)
{
    const std::size_t pad_error = encoded.size() % 4;
    const std::string_view missing_padding =
        pad_error == 0 ? std::string_view{} : std::string_view{"==="}.substr(0, 4 - pad_error);
    std::string out;
    if (a2b_base64(std::string{encoded} + std::string{missing_padding}, true, out)) return out;
    if (a2b_base64(encoded, false, out)) return out;
    if (a2b_base64(std::string{encoded} + "==", false, out)) return out;
    return std::string{encoded};
}

/// _encoded_words.decode_q(): `_` is a blank, `=XX` a hex byte, anything else stays.
std::string decode_q(std::string_view encoded)
{
    std::string out;
    out.reserve(encoded.size());
    for (std::size_t i = 0; i < encoded.size(); ++i) {
        const char c = encoded[i];
        if (c == '=' && i + 2 < encoded.size() && is_hex_digit(encoded[i + 1]) && is_hex_digit(encoded[i + 2])) {
            out.push_back(static_cast<char>((hex_value(encoded[i + 1]) << 4U) | hex_value(encoded[i + 2])));
            i += 2;
            continue;
        }
        out.push_back(c == '_' ? ' ' : c);
    }
    return out;
}

/// The codecs whose result we model. Every other charset decodes as ASCII with surrogateescape,
/// which is exactly what Python does for an unknown charset name (LookupError) and for ASCII.
enum class codec : std::uint8_t { utf_8, latin_1, other };

/// The codec Python's registry finds for `charset` (text without escaped bytes). The name is
/// normalised as CPython's _Py_normalize_encoding() does (runs of anything but ASCII
/// alphanumerics and `.` become one `_`, letters lower case) and then looked up like
/// encodings.search_function(): the alias table, the alias table with `.` spelt `_`, then a
/// module of that name (never one whose name has a dot).
codec lookup_codec(std::string_view charset)
{
    std::string name;
    bool punct = false;
    for (const char c : charset) {
        if (is_ascii_alnum(c) || c == '.') {
            if (punct && !name.empty()) name.push_back('_');
            punct = false;
            name.push_back(ascii_lower(c));
        } else {
            punct = true;
        }
    }
    struct alias {
        std::string_view name;
        codec target;
    };
    // encodings.aliases entries for the two codecs (CPython 3.11).
    constexpr std::array<alias, 18> aliases{{
        {"cp65001", codec::utf_8},
        {"u8", codec::utf_8},
        {"utf", codec::utf_8},
        {"utf8", codec::utf_8},
        {"utf8_ucs2", codec::utf_8},
        {"utf8_ucs4", codec::utf_8},
        {"8859", codec::latin_1},
        {"cp819", codec::latin_1},
        {"csisolatin1", codec::latin_1},
        {"ibm819", codec::latin_1},
        {"iso8859", codec::latin_1},
        {"iso8859_1", codec::latin_1},
        {"iso_8859_1", codec::latin_1},
        {"iso_8859_1_1987", codec::latin_1},
        {"iso_ir_100", codec::latin_1},
        {"l1", codec::latin_1},
        {"latin", codec::latin_1},
        {"latin1", codec::latin_1},
    }};
    const auto find_alias = [&](std::string_view n) -> std::optional<codec> {
        for (const alias& a : aliases)
            if (a.name == n) return a.target;
        return std::nullopt;
    };
    std::string underscored = name;
    std::replace(underscored.begin(), underscored.end(), '.', '_');
    if (const auto target = find_alias(name)) return *target;
    if (const auto target = find_alias(underscored)) return *target;
    if (name == "utf_8") return codec::utf_8;
    if (name == "latin_1") return codec::latin_1;
    return codec::other;
}

/// _encoded_words.decode('=?' + word + '?='): the decoded text (in our Python-text form), or
/// nothing where Python raises ValueError/KeyError (get_encoded_word then reports
/// HeaderParseError and the caller reads the word as plain text).
std::optional<std::string> decode_encoded_word(std::string_view word)
{
    // `_, charset, cte, cte_string, _ = ew.split('?')` needs exactly two `?` inside.
    if (std::count(word.begin(), word.end(), '?') != 2) return std::nullopt;
    const std::size_t first = word.find('?');
    const std::size_t second = word.find('?', first + 1);
    const std::string_view charset_and_lang = word.substr(0, first);
    const std::string_view charset = charset_and_lang.substr(0, charset_and_lang.find('*'));
    const std::string_view cte = word.substr(first + 1, second - first - 1);
    // cte_string.encode('ascii', 'surrogateescape') fails on a real non-ASCII character.
    const std::optional<std::string> payload = encode_ascii_escaped(word.substr(second + 1));
    if (!payload) return std::nullopt;
    std::string bytes;
    if (cte.size() == 1 && ascii_lower(cte[0]) == 'q') bytes = decode_q(*payload);
    else if (cte.size() == 1 && ascii_lower(cte[0]) == 'b') bytes = decode_b(*payload);
    else return std::nullopt;  // KeyError: no such transfer encoding
    // bytes.decode(charset). A charset holding an escaped byte cannot be handed to the codec
    // lookup (UnicodeEncodeError, caught: ASCII with surrogateescape); one holding NUL is a
    // ValueError that decode() does not catch.
    if (has_escaped_byte(charset)) return decode_ascii_escaped(bytes);
    if (charset.find('\0') != std::string_view::npos) return std::nullopt;
    switch (lookup_codec(charset)) {
    case codec::utf_8: return decode_utf8_escaped(bytes);  // strict, else surrogateescape: the same text
    case codec::latin_1: return decode_latin1(bytes);
    case codec::other: break;
    }
    // XXX: charsets Python knows besides these (cp1252, iso-8859-15, utf-16 ...) decode here as
    // unknown ones do, each byte >= 0x80 kept as it came.
    return decode_ascii_escaped(bytes);
}

// ---------------------------------------------------------------------------------------------
// The parser.

/// How a parse step ended. Python signals failure with exceptions; these are the two kinds that
/// behave differently.
enum class step : std::uint8_t {
    ok,
    no_match,  ///< HeaderParseError: a caller may catch it and try another alternative
    crash,     ///< any other exception (IndexError, ...): nothing in the parser catches it
};

/// A local part (the LocalPart's only child) and the domain (a Domain token), if any.
struct addr_spec {
    token local_part;
    std::optional<token> domain;
};

/// Comments nest by recursion. Parsing them costs Python one frame per level, so its recursion
/// limit (1000) is out of reach of a 512-octet command line; this bound keeps longer input
/// (direct callers, fuzzers) off our stack.
constexpr int max_comment_depth = 1000;

/// Re-serialising a comment (Comment.__str__ -> quote -> str) costs Python four recursion
/// counts per nesting level, so str() of a local part with comments nested 244 deep raises
/// RecursionError, and aiosmtpd answers `500 Error: (RecursionError) ...`. Measured on the wire
/// (aiosmtpd 1.4.3, Python 3.11, CLI and Controller, MAIL/RCPT/VRFY alike): 243 levels parse,
/// 244 fail. A 500-octet argument can nest that deep, so the limit is reachable.
constexpr int python_str_comment_limit = 244;

/// How deeply comments nest inside `t`.
int comment_nesting(const token& t)
{
    int deepest = 0;
    for (const token& child : t.children) deepest = std::max(deepest, comment_nesting(child));
    return t.kind == token_kind::comment ? deepest + 1 : deepest;
}

class header_parser {
public:
    /// get_angle_addr(); `spec` stays empty for the null path `<>`.
    step get_angle_addr(std::string_view& value, std::optional<addr_spec>& spec);
    step get_addr_spec(std::string_view& value, addr_spec& spec);

private:
    static step get_ptext_to_endchars(std::string_view& value, std::string_view endchars, std::string& ptext);
    static token get_fws(std::string_view& value);
    static step get_encoded_word(std::string_view& value, token& out);
    static step get_qp_ctext(std::string_view& value, token& out);
    static step get_qcontent(std::string_view& value, token& out);
    static step get_atext(std::string_view& value, token& out);
    step get_bare_quoted_string(std::string_view& value, token& out);
    step get_comment(std::string_view& value, token& out);
    step get_cfws(std::string_view& value, token& out);
    step get_quoted_string(std::string_view& value, token& out);
    step get_atom(std::string_view& value, token& out);
    step get_dot_atom_text(std::string_view& value, token& out);
    step get_dot_atom(std::string_view& value, token& out);
    step get_word(std::string_view& value, token& out);
    step get_local_part(std::string_view& value, token& out);
    step get_obs_local_part(std::string_view& value, token& out);
    static step get_dtext(std::string_view& value, token& out);
    step get_domain_literal(std::string_view& value, token& out);
    step get_domain(std::string_view& value, token& out);
    step get_obs_route(std::string_view& value);

    /// Text that get_local_part builds and parses again; views into it outlive the step.
    std::deque<std::string> reparsed_;
    int comment_depth_ = 0;
};

// Every get_* takes the unparsed text by reference and, like its Python original, consumes from
// it only when it returns step::ok (a raised exception leaves the caller's value untouched).

/// _get_ptext_to_endchars(): the run up to the first blank or unescaped end character, with
/// quoted pairs undone. A `\` right before a blank is dropped (Python's quirk: the blank ends the
/// fragment first).
step header_parser::get_ptext_to_endchars(std::string_view& value, std::string_view endchars, std::string& ptext)
{
    const std::size_t fragment = std::min(value.find_first_of(" \t"), value.size());
    if (fragment == 0) return step::crash;  // UnboundLocalError on `pos`
    bool escape = false;
    std::size_t pos = 0;
    for (; pos < fragment; ++pos) {
        const char c = value[pos];
        if (c == '\\') {
            if (!escape) {
                escape = true;
                continue;
            }
            escape = false;
        }
        if (escape) escape = false;
        else if (endchars.find(c) != std::string_view::npos) break;
        ptext.push_back(c);
    }
    value.remove_prefix(pos);
    return step::ok;
}

/// get_fws(): called on a blank; consumes every leading whitespace character (value.lstrip()).
token header_parser::get_fws(std::string_view& value)
{
    const std::size_t length = python_space_prefix(value);
    token fws = make_terminal(token_kind::fws, std::string{value.substr(0, length)});
    value.remove_prefix(length);
    return fws;
}

/// get_encoded_word(): `=?charset?cte?text?=`, decoded, split into vtext and fws.
step header_parser::get_encoded_word(std::string_view& value, token& out)
{
    if (value.substr(0, 2) != "=?") return step::no_match;
    const std::string_view body = value.substr(2);
    const std::size_t end = body.find("?=");
    if (end == std::string_view::npos) return step::no_match;
    std::string_view word = body.substr(0, end);
    std::string_view remainder = body.substr(end + 2);
    // "The ? after the CTE was followed by an encoded word escape (=XX)": the first `?=` was
    // the start of `=XX`, so the word runs to the next `?=`.
    if (remainder.size() > 1 && is_hex_digit(remainder[0]) && is_hex_digit(remainder[1]) &&
        std::count(word.begin(), word.end(), '?') < 2) {
        const std::size_t next = remainder.find("?=");
        if (next == std::string_view::npos) {
            word = body;
            remainder = {};
        } else {
            word = body.substr(0, end + 2 + next);
            remainder = remainder.substr(next + 2);
        }
    }
    const std::optional<std::string> decoded = decode_encoded_word(word);
    if (!decoded) return step::no_match;
    token ew = make_list(token_kind::encoded_word);
    std::string_view text = *decoded;
    while (!text.empty()) {
        if (is_wsp(text.front())) {
            ew.children.push_back(get_fws(text));
            continue;
        }
        const std::size_t chars = std::min(text.find_first_of(" \t"), text.size());
        ew.children.push_back(make_terminal(token_kind::text, std::string{text.substr(0, chars)}));
        text.remove_prefix(chars);
    }
    out = std::move(ew);
    value = remainder;
    return step::ok;
}

step header_parser::get_qp_ctext(std::string_view& value, token& out)
{
    std::string ptext;
    std::string_view v = value;
    if (const step s = get_ptext_to_endchars(v, "()", ptext); s != step::ok) return s;
    out = make_terminal(token_kind::comment_text, std::move(ptext));
    value = v;
    return step::ok;
}

step header_parser::get_qcontent(std::string_view& value, token& out)
{
    std::string ptext;
    std::string_view v = value;
    if (const step s = get_ptext_to_endchars(v, "\"", ptext); s != step::ok) return s;
    out = make_terminal(token_kind::text, std::move(ptext));
    value = v;
    return step::ok;
}

/// get_atext(): the longest run without ATOM_ENDS (any other byte, control or UTF-8, counts).
step header_parser::get_atext(std::string_view& value, token& out)
{
    std::size_t length = 0;
    while (length < value.size() && !is_atom_end(value[length])) ++length;
    if (length == 0) return step::no_match;
    out = make_terminal(token_kind::text, std::string{value.substr(0, length)});
    value.remove_prefix(length);
    return step::ok;
}

step header_parser::get_bare_quoted_string(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (v.empty()) return step::crash;  // value[0]
    if (v.front() != '"') return step::no_match;
    v.remove_prefix(1);
    token bare = make_list(token_kind::bare_quoted_string);
    if (!v.empty() && v.front() == '"') {
        token empty_text;
        if (const step s = get_qcontent(v, empty_text); s != step::ok) return s;
        bare.children.push_back(std::move(empty_text));
    }
    while (!v.empty() && v.front() != '"') {
        token part;
        if (is_wsp(v.front())) {
            part = get_fws(v);
        } else if (v.substr(0, 2) == "=?") {
            step s = get_encoded_word(v, part);
            const bool valid_ew = s == step::ok;
            if (s == step::no_match) s = get_qcontent(v, part);
            if (s != step::ok) return s;
            // Blanks between two encoded words vanish (RFC 2047 §6.2).
            const std::size_t n = bare.children.size();
            if (valid_ew && n > 1) {
                token& previous = bare.children[n - 1];
                const bool is_fws = previous.kind == token_kind::fws || previous.kind == token_kind::ew_fws;
                if (is_fws && bare.children[n - 2].kind == token_kind::encoded_word) previous.kind = token_kind::ew_fws;
            }
        } else if (const step s = get_qcontent(v, part); s != step::ok) {
            return s;
        }
        bare.children.push_back(std::move(part));
    }
    if (!v.empty()) v.remove_prefix(1);  // the closing quote; a missing one is only a defect
    out = std::move(bare);
    value = v;
    return step::ok;
}

step header_parser::get_comment(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (!v.empty() && v.front() != '(') return step::no_match;
    if (comment_depth_ >= max_comment_depth) return step::crash;  // Python: RecursionError
    ++comment_depth_;
    token comment = make_list(token_kind::comment);
    if (!v.empty()) v.remove_prefix(1);
    step s = step::ok;
    while (s == step::ok && !v.empty() && v.front() != ')') {
        token part;
        if (is_wsp(v.front())) part = get_fws(v);
        else if (v.front() == '(') s = get_comment(v, part);
        else s = get_qp_ctext(v, part);
        comment.children.push_back(std::move(part));
    }
    --comment_depth_;
    if (s != step::ok) return s;
    if (!v.empty()) v.remove_prefix(1);  // the closing parenthesis; a missing one is a defect
    out = std::move(comment);
    value = v;
    return step::ok;
}

step header_parser::get_cfws(std::string_view& value, token& out)
{
    std::string_view v = value;
    token cfws = make_list(token_kind::cfws);
    while (!v.empty() && is_cfws_leader(v.front())) {
        token part;
        if (is_wsp(v.front())) part = get_fws(v);
        else if (const step s = get_comment(v, part); s != step::ok) return s;
        cfws.children.push_back(std::move(part));
    }
    out = std::move(cfws);
    value = v;
    return step::ok;
}

step header_parser::get_quoted_string(std::string_view& value, token& out)
{
    std::string_view v = value;
    token quoted = make_list(token_kind::list);
    token part;
    if (!v.empty() && is_cfws_leader(v.front())) {
        if (const step s = get_cfws(v, part); s != step::ok) return s;
        quoted.children.push_back(std::move(part));
    }
    if (const step s = get_bare_quoted_string(v, part); s != step::ok) return s;
    quoted.children.push_back(std::move(part));
    if (!v.empty() && is_cfws_leader(v.front())) {
        if (const step s = get_cfws(v, part); s != step::ok) return s;
        quoted.children.push_back(std::move(part));
    }
    out = std::move(quoted);
    value = v;
    return step::ok;
}

step header_parser::get_atom(std::string_view& value, token& out)
{
    std::string_view v = value;
    token atom = make_list(token_kind::list);
    token part;
    if (!v.empty() && is_cfws_leader(v.front())) {
        if (const step s = get_cfws(v, part); s != step::ok) return s;
        atom.children.push_back(std::move(part));
    }
    if (!v.empty() && is_atom_end(v.front())) return step::no_match;
    step s = v.substr(0, 2) == "=?" ? get_encoded_word(v, part) : step::no_match;
    if (s == step::no_match) s = get_atext(v, part);
    if (s != step::ok) return s;
    atom.children.push_back(std::move(part));
    if (!v.empty() && is_cfws_leader(v.front())) {
        if (s = get_cfws(v, part); s != step::ok) return s;
        atom.children.push_back(std::move(part));
    }
    out = std::move(atom);
    value = v;
    return step::ok;
}

/// get_dot_atom_text(): atext *("." atext); a leading, doubled or trailing dot fails.
step header_parser::get_dot_atom_text(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (v.empty() || is_atom_end(v.front())) return step::no_match;
    token text = make_list(token_kind::list);
    while (!v.empty() && !is_atom_end(v.front())) {
        token atext;
        if (const step s = get_atext(v, atext); s != step::ok) return s;
        text.children.push_back(std::move(atext));
        if (!v.empty() && v.front() == '.') {
            text.children.push_back(make_terminal(token_kind::dot, "."));
            v.remove_prefix(1);
        }
    }
    if (text.children.back().kind == token_kind::dot) return step::no_match;
    out = std::move(text);
    value = v;
    return step::ok;
}

step header_parser::get_dot_atom(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (v.empty()) return step::crash;  // value[0]
    token dot_atom = make_list(token_kind::list);
    token part;
    if (is_cfws_leader(v.front())) {
        if (const step s = get_cfws(v, part); s != step::ok) return s;
        dot_atom.children.push_back(std::move(part));
    }
    step s = v.substr(0, 2) == "=?" ? get_encoded_word(v, part) : step::no_match;
    if (s == step::no_match) s = get_dot_atom_text(v, part);
    if (s != step::ok) return s;
    dot_atom.children.push_back(std::move(part));
    if (!v.empty() && is_cfws_leader(v.front())) {
        if (s = get_cfws(v, part); s != step::ok) return s;
        dot_atom.children.push_back(std::move(part));
    }
    out = std::move(dot_atom);
    value = v;
    return step::ok;
}

/// get_word(): atom or quoted-string, leading CFWS spliced into it.
step header_parser::get_word(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (v.empty()) return step::crash;  // value[0]
    std::optional<token> leader;
    if (is_cfws_leader(v.front())) {
        leader.emplace();
        if (const step s = get_cfws(v, *leader); s != step::ok) return s;
    }
    if (v.empty()) return step::no_match;
    token word;
    if (v.front() == '"') {
        if (const step s = get_quoted_string(v, word); s != step::ok) return s;
    } else if (is_special(v.front())) {
        return step::no_match;
    } else if (const step s = get_atom(v, word); s != step::ok) {
        return s;
    }
    if (leader) prepend(word, std::move(*leader));
    out = std::move(word);
    value = v;
    return step::ok;
}

/// get_local_part(): dot-atom, else word, else (before `.` or `\`) nothing; then, if more local
/// part follows, Python parses str() of what it has plus the rest again as obs-local-part. That
/// second pass is why encoded words and re-quoted strings can change the remainder.
step header_parser::get_local_part(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (v.empty()) return step::crash;  // value[0]
    std::optional<token> leader;
    if (is_cfws_leader(v.front())) {
        leader.emplace();
        if (const step s = get_cfws(v, *leader); s != step::ok) return s;
    }
    if (v.empty()) return step::no_match;
    token part;
    step s = get_dot_atom(v, part);
    if (s == step::no_match) {
        s = get_word(v, part);
        if (s == step::no_match) {
            if (v.front() != '\\' && is_phrase_end(v.front())) return step::no_match;
            part = make_list(token_kind::list);
            s = step::ok;
        }
    }
    if (s != step::ok) return s;
    if (leader) prepend(part, std::move(*leader));
    if (!v.empty() && (v.front() == '\\' || !is_phrase_end(v.front()))) {
        if (comment_nesting(part) >= python_str_comment_limit) return step::crash;
        reparsed_.push_back(str_of(part) + std::string{v});
        std::string_view again = reparsed_.back();
        token obs;
        if (s = get_obs_local_part(again, obs); s != step::ok) return s;
        part = std::move(obs);
        v = again;
    }
    out = std::move(part);
    value = v;
    return step::ok;
}

/// get_obs_local_part(): word *("." word), tolerating stray dots, `\` and CFWS.
step header_parser::get_obs_local_part(std::string_view& value, token& out)
{
    std::string_view v = value;
    token obs = make_list(token_kind::list);
    while (!v.empty() && (v.front() == '\\' || !is_phrase_end(v.front()))) {
        if (v.front() == '.') {
            obs.children.push_back(make_terminal(token_kind::dot, "."));
            v.remove_prefix(1);
            continue;
        }
        if (v.front() == '\\') {
            // A misplaced special: kept as a literal character (later quoted and doubled).
            obs.children.push_back(make_terminal(token_kind::text, "\\"));
            v.remove_prefix(1);
            continue;
        }
        token part;
        step s = get_word(v, part);
        if (s == step::no_match) {
            if (!is_cfws_leader(v.front())) return step::no_match;
            s = get_cfws(v, part);
        }
        if (s != step::ok) return s;
        obs.children.push_back(std::move(part));
    }
    // The defect checks look at obs[0], obs[1], obs[-1] and obs[-2]; a list too short for the
    // index they reach raises IndexError.
    const std::vector<token>& parts = obs.children;
    if (parts.empty()) return step::crash;
    if (parts.front().kind == token_kind::cfws && parts.size() < 2) return step::crash;
    if (parts.back().kind == token_kind::cfws && parts.size() < 2) return step::crash;
    out = std::move(obs);
    value = v;
    return step::ok;
}

step header_parser::get_dtext(std::string_view& value, token& out)
{
    std::string ptext;
    std::string_view v = value;
    if (const step s = get_ptext_to_endchars(v, "[]", ptext); s != step::ok) return s;
    out = make_terminal(token_kind::text, std::move(ptext));
    value = v;
    return step::ok;
}

/// get_domain_literal(): "[" [FWS] dtext [FWS] "]". Where the input ends inside the brackets,
/// Python appends a defect object to the token list, and reading the domain's value later raises
/// AttributeError; in an obs-route the route then fails anyway. Both end in "malformed", so the
/// early end is reported as a crash here.
step header_parser::get_domain_literal(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (v.empty()) return step::crash;  // value[0]
    token literal = make_list(token_kind::list);
    token part;
    if (is_cfws_leader(v.front())) {
        if (const step s = get_cfws(v, part); s != step::ok) return s;
        literal.children.push_back(std::move(part));
    }
    if (v.empty() || v.front() != '[') return step::no_match;
    v.remove_prefix(1);
    if (v.empty()) return step::crash;
    literal.children.push_back(make_terminal(token_kind::text, "["));
    if (is_wsp(v.front())) literal.children.push_back(get_fws(v));
    if (const step s = get_dtext(v, part); s != step::ok) return s;
    literal.children.push_back(std::move(part));
    if (v.empty()) return step::crash;
    if (is_wsp(v.front())) literal.children.push_back(get_fws(v));
    if (v.empty()) return step::crash;
    if (v.front() != ']') return step::no_match;
    literal.children.push_back(make_terminal(token_kind::text, "]"));
    v.remove_prefix(1);
    if (!v.empty() && is_cfws_leader(v.front())) {
        if (const step s = get_cfws(v, part); s != step::ok) return s;
        literal.children.push_back(std::move(part));
    }
    out = std::move(literal);
    value = v;
    return step::ok;
}

/// get_domain(): domain-literal, dot-atom, or atom *("." atom). A domain directly followed by
/// `@` fails (`<a@b@c>`).
step header_parser::get_domain(std::string_view& value, token& out)
{
    std::string_view v = value;
    if (v.empty()) return step::crash;  // value[0]: `MAIL FROM:a@` (an aiosmtpd quirk)
    std::optional<token> leader;
    if (is_cfws_leader(v.front())) {
        leader.emplace();
        if (const step s = get_cfws(v, *leader); s != step::ok) return s;
    }
    if (v.empty()) return step::no_match;
    token domain = make_list(token_kind::list);
    token part;
    if (v.front() == '[') {
        if (const step s = get_domain_literal(v, part); s != step::ok) return s;
        if (leader) prepend(part, std::move(*leader));
        domain.children.push_back(std::move(part));
        out = std::move(domain);
        value = v;
        return step::ok;
    }
    step s = get_dot_atom(v, part);
    if (s == step::no_match) s = get_atom(v, part);
    if (s != step::ok) return s;
    if (!v.empty() && v.front() == '@') return step::no_match;
    if (leader) prepend(part, std::move(*leader));
    domain.children.push_back(std::move(part));
    // obs-domain: the dot-atom stopped at CFWS, more atoms follow after dots.
    while (!v.empty() && v.front() == '.') {
        domain.children.push_back(make_terminal(token_kind::dot, "."));
        v.remove_prefix(1);
        if (s = get_atom(v, part); s != step::ok) return s;
        domain.children.push_back(std::move(part));
    }
    out = std::move(domain);
    value = v;
    return step::ok;
}

step header_parser::get_addr_spec(std::string_view& value, addr_spec& spec)
{
    std::string_view v = value;
    addr_spec parsed;
    if (const step s = get_local_part(v, parsed.local_part); s != step::ok) return s;
    if (!v.empty() && v.front() == '@') {
        v.remove_prefix(1);
        parsed.domain.emplace();
        if (const step s = get_domain(v, *parsed.domain); s != step::ok) return s;
    }
    spec = std::move(parsed);
    value = v;
    return step::ok;
}

/// get_obs_route(): `@x.y,@z.w:` before the addr-spec; the route is parsed and then ignored.
step header_parser::get_obs_route(std::string_view& value)
{
    std::string_view v = value;
    token ignored;
    while (!v.empty() && (v.front() == ',' || is_cfws_leader(v.front()))) {
        if (v.front() == ',') {
            v.remove_prefix(1);
        } else if (const step s = get_cfws(v, ignored); s != step::ok) {
            return s;
        }
    }
    if (v.empty() || v.front() != '@') return step::no_match;
    v.remove_prefix(1);
    if (const step s = get_domain(v, ignored); s != step::ok) return s;
    while (!v.empty() && v.front() == ',') {
        v.remove_prefix(1);
        if (v.empty()) break;
        if (is_cfws_leader(v.front())) {
            if (const step s = get_cfws(v, ignored); s != step::ok) return s;
        }
        if (v.empty()) return step::crash;  // value[0]
        if (v.front() == '@') {
            v.remove_prefix(1);
            if (const step s = get_domain(v, ignored); s != step::ok) return s;
        }
    }
    if (v.empty() || v.front() != ':') return step::no_match;
    v.remove_prefix(1);
    value = v;
    return step::ok;
}

step header_parser::get_angle_addr(std::string_view& value, std::optional<addr_spec>& spec)
{
    std::string_view v = value;
    if (v.empty()) return step::crash;  // value[0]
    token ignored;
    if (is_cfws_leader(v.front())) {
        if (const step s = get_cfws(v, ignored); s != step::ok) return s;
    }
    if (v.empty() || v.front() != '<') return step::no_match;
    v.remove_prefix(1);
    if (v.empty()) return step::crash;  // value[0]: a lone `<`
    if (v.front() == '>') {
        // SMTP's null path. Python returns here, before the trailing CFWS, so the blanks after
        // `<>` stay in the remainder.
        v.remove_prefix(1);
        spec.reset();
        value = v;
        return step::ok;
    }
    addr_spec parsed;
    step s = get_addr_spec(v, parsed);
    if (s == step::no_match) {
        if (s = get_obs_route(v); s != step::ok) return s;
        s = get_addr_spec(v, parsed);
    }
    if (s != step::ok) return s;
    if (!v.empty() && v.front() == '>') v.remove_prefix(1);  // a missing `>` is only a defect
    if (!v.empty() && is_cfws_leader(v.front())) {
        if (s = get_cfws(v, ignored); s != step::ok) return s;
    }
    spec = std::move(parsed);
    value = v;
    return step::ok;
}

// ---------------------------------------------------------------------------------------------
// From the tree to the stored text.

/// One entry of LocalPart.local_part's working list: a token, or a copy of a token list
/// without its first or last element (`TokenList(tok[1:])`, `TokenList(last[:-1])`). Such a
/// copy is a plain TokenList: its token_type is no longer "dot" or "cfws".
struct local_piece {
    const token* tok = nullptr;
    std::size_t first = 0;
    std::size_t last = 0;
    bool sliced = false;
};

/// LocalPart.local_part: the value with CFWS dropped at both ends and around dots (`a . b` is
/// `a.b`, `a (x) b` is `a b`). Nothing when Python's indexing raises IndexError (an empty
/// encoded word right after a dot).
std::optional<std::string> local_part_text(const token& local_part)
{
    static const token dot = make_terminal(token_kind::dot, ".");
    const local_piece start{&dot, 0, 0, false};
    std::vector<local_piece> res{start};
    local_piece last = start;
    bool last_is_list = false;
    const auto visit = [&](const token& tok) {
        if (tok.kind == token_kind::cfws) return true;
        if (last_is_list && tok.kind == token_kind::dot) {
            if (last.first == last.last) return false;  // last[-1]
            if (last.tok->children[last.last - 1].kind == token_kind::cfws)
                res.back() = local_piece{last.tok, last.first, last.last - 1, true};
        }
        const bool is_tl = is_list(tok.kind);
        const bool last_is_dot = !last.sliced && last.tok->kind == token_kind::dot;
        local_piece piece{&tok, 0, tok.children.size(), false};
        if (is_tl && last_is_dot) {
            if (tok.children.empty()) return false;  // tok[0]
            if (tok.children.front().kind == token_kind::cfws) piece = local_piece{&tok, 1, tok.children.size(), true};
        }
        res.push_back(piece);
        last = piece;
        last_is_list = is_tl;
        return true;
    };
    for (const token& child : local_part.children)
        if (!visit(child)) return std::nullopt;
    if (!visit(dot)) return std::nullopt;
    std::string out;
    for (std::size_t i = 1; i + 1 < res.size(); ++i) {
        const local_piece& piece = res[i];
        if (!piece.sliced) {
            append_value(*piece.tok, out);
            continue;
        }
        for (std::size_t c = piece.first; c < piece.last; ++c) append_value(piece.tok->children[c], out);
    }
    return out;
}

/// AddrSpec.addr_spec: the local part, quoted if it has a DOT_ATOM_ENDS character, then
/// `@domain` where there was a domain (comments and all whitespace removed).
std::string addr_spec_text(const addr_spec& spec, const std::string& local_part)
{
    std::string out =
        std::any_of(local_part.begin(), local_part.end(), is_dot_atom_end) ? quote_string(local_part) : local_part;
    if (spec.domain) {
        out.push_back('@');
        out += python_remove_spaces(value_of(*spec.domain));
    }
    return out;
}

bool only_blanks(std::string_view s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t'; });
}

bool has_non_ascii_byte(std::string_view s)
{
    return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

// ---------------------------------------------------------------------------------------------
// The fast path (detail::parse_address_fast): the shapes nearly every client sends, answered
// without building Python's parse tree. Each condition below is one the port above would
// otherwise decide differently; anything outside them goes to the port.

/// RFC 5322 atext: ALPHA DIGIT and !#$%&'*+-/=?^_`{|}~ (all of it outside Python's ATOM_ENDS).
constexpr std::array<bool, 256> make_atext()
{
    std::array<bool, 256> table{};
    for (char c = 'a'; c <= 'z'; ++c) table[static_cast<unsigned char>(c)] = true;
    for (char c = 'A'; c <= 'Z'; ++c) table[static_cast<unsigned char>(c)] = true;
    for (char c = '0'; c <= '9'; ++c) table[static_cast<unsigned char>(c)] = true;
    for (const char c : std::string_view{"!#$%&'*+-/=?^_`{|}~"}) table[static_cast<unsigned char>(c)] = true;
    return table;
}

constexpr std::array<bool, 256> atext_table = make_atext();

constexpr bool is_plain_atext(char c) { return atext_table[static_cast<unsigned char>(c)]; }

/// Length of the dot-atom (atext+ *("." atext+)) at the start of `s`; 0 when there is none or it
/// ends in a dot (`a.`, `a..b`: Python's get_dot_atom_text fails, other rules take over).
std::size_t plain_dot_atom_length(std::string_view s)
{
    std::size_t pos = 0;
    for (;;) {
        const std::size_t start = pos;
        while (pos < s.size() && is_plain_atext(s[pos])) ++pos;
        if (pos == start) return 0;
        if (pos == s.size() || s[pos] != '.') return pos;
        ++pos;
    }
}

/// Length of `local@domain` (both plain dot-atoms) at the start of `s`, or 0.
std::size_t plain_addr_spec_length(std::string_view s)
{
    const std::size_t local = plain_dot_atom_length(s);
    if (local == 0 || local == s.size() || s[local] != '@') return 0;
    const std::size_t domain = plain_dot_atom_length(s.substr(local + 1));
    return domain == 0 ? 0 : local + 1 + domain;
}

constexpr bool is_space_or_tab(char c) { return c == ' ' || c == '\t'; }

/// A byte that may start the parameters after the blanks: printable ASCII and not `(` (a
/// comment: CFWS, which Python drops). Python's other whitespace (\n \v \f \r, \x1c-\x1f) is
/// not printable and so excluded too: get_fws would strip it along with the blanks.
constexpr bool is_plain_parameter_start(char c) { return c > ' ' && c < '\x7f' && c != '('; }

/// All ASCII and no `=?` (an RFC 2047 encoded word start, which Python decodes).
bool plain_ascii(std::string_view s)
{
    unsigned bits = 0;  // OR of all bytes: a loop the compiler vectorises
    for (const char c : s) bits |= static_cast<unsigned char>(c);
    if ((bits & 0x80U) != 0) return false;
    for (std::size_t q = s.find('?'); q != std::string_view::npos; q = s.find('?', q + 1))
        if (q > 0 && s[q - 1] == '=') return false;
    return true;
}

}  // namespace

namespace detail {

bool parse_address_fast(std::string_view arg, address_result& out)
{
    if (arg.empty() || !plain_ascii(arg)) return false;
    std::string_view address;
    std::string_view rest;
    if (arg.front() == '<') {
        if (arg.size() >= 2 && arg[1] == '>') {
            // The null path: Python stops right after `>`, so the rest keeps its blanks.
            out.state = address_result::status::ok;
            out.address = "<>";
            out.rest = std::string{arg.substr(2)};
            return true;
        }
        const std::size_t length = plain_addr_spec_length(arg.substr(1));
        if (length == 0 || 1 + length == arg.size() || arg[1 + length] != '>') return false;
        address = arg.substr(1, length);
        rest = arg.substr(2 + length);
        // After `>`: CFWS (blanks only here) is part of the address.
        while (!rest.empty() && is_space_or_tab(rest.front())) rest.remove_prefix(1);
        if (!rest.empty() && !is_plain_parameter_start(rest.front())) return false;
    } else {
        const std::size_t length = plain_addr_spec_length(arg);
        if (length == 0) return false;
        address = arg.substr(0, length);
        rest = arg.substr(length);
        if (!rest.empty()) {
            // The domain's trailing CFWS, then neither `@` (`a@b @c` fails) nor `.` (obs-domain:
            // `a@b .c` is `a@b.c`).
            if (!is_space_or_tab(rest.front())) return false;
            while (!rest.empty() && is_space_or_tab(rest.front())) rest.remove_prefix(1);
            if (!rest.empty() &&
                (!is_plain_parameter_start(rest.front()) || rest.front() == '@' || rest.front() == '.'))
                return false;
        }
    }
    out.state = address_result::status::ok;
    out.address = std::string{address};
    out.rest = std::string{rest};
    return true;
}

address_result parse_address_full(std::string_view arg, bool smtputf8)
{
    address_result result;
    if (only_blanks(arg)) {
        result.state = address_result::status::empty;
        return result;
    }
    result.state = address_result::status::malformed;
    if (!smtputf8 && has_non_ascii_byte(arg)) return result;

    // What Python parses: the argument as aiosmtpd decoded it (plain ASCII without SMTPUTF8).
    const std::string text = smtputf8 ? decode_utf8_escaped(arg) : std::string{arg};
    header_parser parser;
    std::string_view rest = text;
    std::string address;
    // _getaddr: `arg.lstrip().startswith('<')` picks the grammar, but the parser is handed `arg`
    // itself, where only blanks, tabs and comments may precede the `<`.
    if (std::string_view{text}.substr(python_space_prefix(text)).substr(0, 1) == "<") {
        std::optional<addr_spec> spec;
        if (parser.get_angle_addr(rest, spec) != step::ok) return result;
        if (!spec) {
            address = "<>";
        } else {
            const std::optional<std::string> local_part = local_part_text(spec->local_part);
            if (!local_part) return result;
            // AngleAddr.addr_spec: an empty local part is shown as `""` (`<""@b.c>`).
            const std::string spec_text = addr_spec_text(*spec, *local_part);
            address = local_part->empty() ? "\"\"" + spec_text : spec_text;
        }
    } else {
        addr_spec spec;
        if (parser.get_addr_spec(rest, spec) != step::ok) return result;
        const std::optional<std::string> local_part = local_part_text(spec.local_part);
        if (!local_part) return result;
        address = addr_spec_text(spec, *local_part);
    }
    result.state = address.empty() ? address_result::status::empty : address_result::status::ok;
    result.address = encode_escaped(address);
    result.rest = encode_escaped(rest);
    return result;
}

}  // namespace detail

address_result parse_address(std::string_view arg, bool smtputf8)
{
    address_result result;
    if (detail::parse_address_fast(arg, result)) return result;
    return detail::parse_address_full(arg, smtputf8);
}

}  // namespace asiosmtpd::proto
