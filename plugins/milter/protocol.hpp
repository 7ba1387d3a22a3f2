// SPDX-License-Identifier: Apache-2.0
// The Sendmail milter protocol, version 6, as the MTA side speaks it: packet framing (a 32-bit
// big-endian length, a command byte, its data), the commands we send, the replies a milter
// sends back, option negotiation and macro packets. Pure functions over bytes, no sockets: the
// plugin (milter.cpp) moves the bytes, tests/unit/plugins/milter_protocol_test.cpp checks them.
// Header-only, standard library only.
#ifndef ASIOSMTPD_PLUGINS_MILTER_PROTOCOL_HPP
#define ASIOSMTPD_PLUGINS_MILTER_PROTOCOL_HPP

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::plugins::milter {

// Commands, MTA to milter.
inline constexpr char cmd_abort = 'A';
inline constexpr char cmd_body = 'B';
inline constexpr char cmd_connect = 'C';
inline constexpr char cmd_macro = 'D';
inline constexpr char cmd_eob = 'E';
inline constexpr char cmd_helo = 'H';
inline constexpr char cmd_header = 'L';
inline constexpr char cmd_mail = 'M';
inline constexpr char cmd_eoh = 'N';
inline constexpr char cmd_optneg = 'O';
inline constexpr char cmd_quit = 'Q';
inline constexpr char cmd_rcpt = 'R';
inline constexpr char cmd_data = 'T';
inline constexpr char cmd_unknown = 'U';

// Replies, milter to MTA.
inline constexpr char rep_addrcpt = '+';
inline constexpr char rep_delrcpt = '-';
inline constexpr char rep_addrcpt_par = '2';
inline constexpr char rep_shutdown = '4';
inline constexpr char rep_accept = 'a';
inline constexpr char rep_replbody = 'b';
inline constexpr char rep_continue = 'c';
inline constexpr char rep_discard = 'd';
inline constexpr char rep_chgfrom = 'e';
inline constexpr char rep_conn_fail = 'f';
inline constexpr char rep_addheader = 'h';
inline constexpr char rep_insheader = 'i';
inline constexpr char rep_setsymlist = 'l';
inline constexpr char rep_chgheader = 'm';
inline constexpr char rep_progress = 'p';
inline constexpr char rep_quarantine = 'q';
inline constexpr char rep_reject = 'r';
inline constexpr char rep_skip = 's';
inline constexpr char rep_tempfail = 't';
inline constexpr char rep_replycode = 'y';

// Actions the milter may take at end of message (SMFIF_*).
inline constexpr std::uint32_t act_addhdrs = 1u << 0;
inline constexpr std::uint32_t act_chgbody = 1u << 1;
inline constexpr std::uint32_t act_addrcpt = 1u << 2;
inline constexpr std::uint32_t act_delrcpt = 1u << 3;
inline constexpr std::uint32_t act_chghdrs = 1u << 4;
inline constexpr std::uint32_t act_quarantine = 1u << 5;
inline constexpr std::uint32_t act_chgfrom = 1u << 6;
inline constexpr std::uint32_t act_addrcpt_par = 1u << 7;
inline constexpr std::uint32_t act_setsymlist = 1u << 8;
/// Everything this client carries out.
inline constexpr std::uint32_t our_actions = act_addhdrs | act_chgbody | act_addrcpt | act_delrcpt | act_chghdrs |
                                             act_quarantine | act_chgfrom | act_addrcpt_par | act_setsymlist;

// Protocol steps (SMFIP_*): steps the milter does not want, replies it will not send.
inline constexpr std::uint32_t p_noconnect = 1u << 0;
inline constexpr std::uint32_t p_nohelo = 1u << 1;
inline constexpr std::uint32_t p_nomail = 1u << 2;
inline constexpr std::uint32_t p_norcpt = 1u << 3;
inline constexpr std::uint32_t p_nobody = 1u << 4;
inline constexpr std::uint32_t p_nohdrs = 1u << 5;
inline constexpr std::uint32_t p_noeoh = 1u << 6;
inline constexpr std::uint32_t p_nr_hdr = 1u << 7;
inline constexpr std::uint32_t p_nounknown = 1u << 8;
inline constexpr std::uint32_t p_nodata = 1u << 9;
inline constexpr std::uint32_t p_skip = 1u << 10;
inline constexpr std::uint32_t p_rcpt_rej = 1u << 11;
inline constexpr std::uint32_t p_nr_conn = 1u << 12;
inline constexpr std::uint32_t p_nr_helo = 1u << 13;
inline constexpr std::uint32_t p_nr_mail = 1u << 14;
inline constexpr std::uint32_t p_nr_rcpt = 1u << 15;
inline constexpr std::uint32_t p_nr_data = 1u << 16;
inline constexpr std::uint32_t p_nr_unkn = 1u << 17;
inline constexpr std::uint32_t p_nr_eoh = 1u << 18;
inline constexpr std::uint32_t p_nr_body = 1u << 19;
inline constexpr std::uint32_t p_hdr_leadspc = 1u << 20;
/// What we offer: every step may be skipped, every no-reply flag, SKIP, header values with
/// their leading space, and RCPT_REJ (offered because some milters insist on it; a recipient
/// refused before the milter's turn is never sent to it).
inline constexpr std::uint32_t our_protocol = p_noconnect | p_nohelo | p_nomail | p_norcpt | p_nobody | p_nohdrs |
                                              p_noeoh | p_nr_hdr | p_nounknown | p_nodata | p_skip | p_rcpt_rej |
                                              p_nr_conn | p_nr_helo | p_nr_mail | p_nr_rcpt | p_nr_data | p_nr_unkn |
                                              p_nr_eoh | p_nr_body | p_hdr_leadspc;

inline constexpr std::uint32_t protocol_version = 6;

/// Body chunks are at most this long (Postfix's and libmilter's chunk size).
inline constexpr std::size_t body_chunk_size = 65535;
/// A reply packet longer than this is a protocol error (libmilter sends at most 1 MiB).
inline constexpr std::size_t max_packet = (1u << 20) + 64;

/// Macro classes (SMFIM_*): which event a macro list belongs to.
enum class stage : std::uint32_t {
    connect = 0,
    helo = 1,
    mail = 2,
    rcpt = 3,
    data = 4,
    eom = 5,  ///< end of message: sent with body chunks and end of body
    eoh = 6,  ///< end of headers: sent with each header and end of headers
};
inline constexpr std::size_t stage_count = 7;

/// The milter did something the protocol does not allow (or we cannot take).
struct protocol_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------------------------------
// Encoding
// ------------------------------------------------------------------------------------------

inline void put_u32(std::string& out, std::uint32_t v)
{
    out += static_cast<char>((v >> 24) & 0xFF);
    out += static_cast<char>((v >> 16) & 0xFF);
    out += static_cast<char>((v >> 8) & 0xFF);
    out += static_cast<char>(v & 0xFF);
}

inline std::uint32_t get_u32(std::string_view s, std::size_t at = 0)
{
    return (std::uint32_t{static_cast<unsigned char>(s[at])} << 24) |
           (std::uint32_t{static_cast<unsigned char>(s[at + 1])} << 16) |
           (std::uint32_t{static_cast<unsigned char>(s[at + 2])} << 8) |
           std::uint32_t{static_cast<unsigned char>(s[at + 3])};
}

/// Appends one packet: length (command byte + data), command, data.
inline void append_packet(std::string& out, char cmd, std::string_view data)
{
    put_u32(out, static_cast<std::uint32_t>(data.size() + 1));
    out += cmd;
    out.append(data);
}

inline std::string packet(char cmd, std::string_view data = {})
{
    std::string out;
    out.reserve(data.size() + 5);
    append_packet(out, cmd, data);
    return out;
}

/// A NUL-terminated string as the protocol carries it. A NUL inside `s` would end it early:
/// callers pass text without NUL (what the server hands over never has one); cut at one.
inline void append_cstr(std::string& out, std::string_view s)
{
    const std::size_t nul = s.find('\0');
    out.append(s.substr(0, nul));
    out += '\0';
}

/// SMFIC_OPTNEG: version, actions, protocol steps.
inline std::string optneg(std::uint32_t version = protocol_version, std::uint32_t actions = our_actions,
                          std::uint32_t protocol = our_protocol)
{
    std::string data;
    put_u32(data, version);
    put_u32(data, actions);
    put_u32(data, protocol);
    return packet(cmd_optneg, data);
}

/// SMFIC_MACRO for the command `for_cmd`: name/value pairs. Empty when there are none.
inline std::string macros(char for_cmd, const std::vector<std::pair<std::string, std::string>>& pairs)
{
    if (pairs.empty()) return {};
    std::string data(1, for_cmd);
    for (const auto& [name, value] : pairs) {
        append_cstr(data, name);
        append_cstr(data, value);
    }
    return packet(cmd_macro, data);
}

/// The protocol family byte of SMFIC_CONNECT.
inline constexpr char family_unknown = 'U';
inline constexpr char family_unix = 'L';
inline constexpr char family_inet = '4';
inline constexpr char family_inet6 = '6';

/// SMFIC_CONNECT: host name, family, port (network order), address. Family 'U' carries only
/// the host name.
inline std::string connect(std::string_view hostname, char family, std::uint16_t port, std::string_view address)
{
    std::string data;
    append_cstr(data, hostname);
    data += family;
    if (family != family_unknown) {
        data += static_cast<char>((port >> 8) & 0xFF);
        data += static_cast<char>(port & 0xFF);
        append_cstr(data, address);
    }
    return packet(cmd_connect, data);
}

/// A command whose data is one string (HELO) or several (MAIL and RCPT: the address in angle
/// brackets, then the ESMTP parameters).
inline std::string strings(char cmd, const std::vector<std::string>& args)
{
    std::string data;
    for (const std::string& a : args) append_cstr(data, a);
    return packet(cmd, data);
}

inline std::string header(std::string_view name, std::string_view value)
{
    std::string data;
    append_cstr(data, name);
    append_cstr(data, value);
    return packet(cmd_header, data);
}

// ------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------

struct reply_packet {
    char cmd = 0;
    std::string data;
};

/// Takes bytes as they come and hands out whole packets.
class reader {
public:
    void feed(std::string_view bytes) { buf_.append(bytes); }

    /// The next whole packet, or nullopt when more bytes are needed. Throws protocol_error
    /// on a length of 0 or over max_packet.
    std::optional<reply_packet> next()
    {
        if (buf_.size() - pos_ < 4) return std::nullopt;
        const std::uint32_t len = get_u32(buf_, pos_);
        if (len < 1) throw protocol_error("bad packet length 0");
        if (len > max_packet) throw protocol_error("unreasonable packet length " + std::to_string(len));
        if (buf_.size() - pos_ < 4 + std::size_t{len}) return std::nullopt;
        reply_packet p;
        p.cmd = buf_[pos_ + 4];
        p.data.assign(buf_, pos_ + 5, len - 1);
        pos_ += 4 + std::size_t{len};
        if (pos_ == buf_.size()) {
            buf_.clear();
            pos_ = 0;
        } else if (pos_ > 65536) {
            buf_.erase(0, pos_);
            pos_ = 0;
        }
        return p;
    }

    bool empty() const noexcept { return pos_ == buf_.size(); }
    void clear() noexcept
    {
        buf_.clear();
        pos_ = 0;
    }

private:
    std::string buf_;
    std::size_t pos_ = 0;
};

/// Reads the fields of a packet's data one after the other; every read checks the length.
class fields {
public:
    explicit fields(std::string_view data, const char* what) : data_(data), what_(what) {}

    std::uint32_t u32()
    {
        if (data_.size() - pos_ < 4) throw protocol_error(std::string(what_) + ": packet too short");
        const std::uint32_t v = get_u32(data_, pos_);
        pos_ += 4;
        return v;
    }
    std::string cstr()
    {
        const std::size_t nul = data_.find('\0', pos_);
        if (nul == std::string_view::npos)
            throw protocol_error(std::string(what_) + ": string without its terminating NUL");
        std::string s(data_.substr(pos_, nul - pos_));
        pos_ = nul + 1;
        return s;
    }
    std::string_view rest()
    {
        std::string_view r = data_.substr(pos_);
        pos_ = data_.size();
        return r;
    }
    bool done() const noexcept { return pos_ == data_.size(); }
    void expect_done() const
    {
        if (!done())
            throw protocol_error(std::string(what_) + ": " + std::to_string(data_.size() - pos_) + " bytes too many");
    }

private:
    std::string_view data_;
    std::size_t pos_ = 0;
    const char* what_;
};

/// The milter's answer to SMFIC_OPTNEG.
struct negotiated {
    std::uint32_t version = protocol_version;
    std::uint32_t actions = 0;
    std::uint32_t protocol = 0;
    /// SETSYMLIST: the macro names the milter wants per stage (replacing ours), when it gave some.
    std::array<std::optional<std::vector<std::string>>, stage_count> symlists;
};

/// Splits a macro list ("i {auth_type} j") into names; a name of more than one character
/// gets braces ("{auth_type}"), a single character stays bare ("i"), as Sendmail sends them.
inline std::vector<std::string> split_names(std::string_view list)
{
    std::vector<std::string> out;
    std::size_t i = 0;
    while (i < list.size()) {
        while (i < list.size() && (list[i] == ' ' || list[i] == ',' || list[i] == '\t')) ++i;
        std::size_t end = i;
        while (end < list.size() && list[end] != ' ' && list[end] != ',' && list[end] != '\t') ++end;
        if (end > i) {
            std::string_view n = list.substr(i, end - i);
            if (n.size() >= 2 && n.front() == '{' && n.back() == '}') n = n.substr(1, n.size() - 2);
            if (!n.empty()) out.push_back(n.size() == 1 ? std::string(n) : "{" + std::string(n) + "}");
        }
        i = end;
    }
    return out;
}

/// Parses the OPTNEG reply and checks it against what we offered: a version above ours, or an
/// action we did not offer, is a protocol_error (as Postfix). Steps we did not offer are
/// dropped (libmilter asks only for what was offered).
inline negotiated parse_optneg(std::string_view data, std::uint32_t offered_actions = our_actions,
                               std::uint32_t offered_protocol = our_protocol)
{
    fields f(data, "option negotiation");
    negotiated n;
    n.version = f.u32();
    n.actions = f.u32();
    n.protocol = f.u32();
    if (n.version < 2 || n.version > protocol_version)
        throw protocol_error("option negotiation: protocol version " + std::to_string(n.version) +
                             " (this client speaks 2 to 6)");
    if ((n.actions & offered_actions) != n.actions)
        throw protocol_error("option negotiation: the milter wants actions 0x" +
                             [](std::uint32_t v) {
                                 static constexpr char hex[] = "0123456789abcdef";
                                 std::string s;
                                 for (int shift = 28; shift >= 0; shift -= 4) s += hex[(v >> shift) & 0xF];
                                 return s;
                             }(n.actions & ~offered_actions) +
                             " this client does not offer");
    n.protocol &= offered_protocol;
    while (!f.done()) {
        const std::uint32_t which = f.u32();
        const std::string list = f.cstr();
        if (which < stage_count) n.symlists[which] = split_names(list);
        // An unknown class is ignored (as Postfix).
    }
    return n;
}

/// The SMTP reply a milter gave with SMFIR_REPLYCODE, as the server answers it.
struct smtp_reply {
    std::uint16_t code = 0;
    std::string text;  ///< the lines' texts, '\n' between them (what set_reply takes)
};

/// A line of milter text as our reply may carry it: control bytes (but HT) become '?', at most
/// 500 bytes (cut on a UTF-8 boundary).
inline std::string clean_line(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    for (char ch : s) {
        const auto u = static_cast<unsigned char>(ch);
        out += (u < 0x20 && u != '\t') || u == 0x7F ? '?' : ch;
    }
    if (out.size() > 500) {
        std::size_t cut = 500;
        while (cut > 0 && (static_cast<unsigned char>(out[cut]) & 0xC0) == 0x80) --cut;
        out.resize(cut);
    }
    return out;
}

/// Parses SMFIR_REPLYCODE data: one or more lines "ddd-text" CRLF ... "ddd text", the code 4xx
/// or 5xx and the same on every line, an optional trailing NUL. Sendmail's "%%" becomes "%" and
/// a lone '%' goes (libmilter's format-string escaping, undone as Postfix does). Throws
/// protocol_error on anything else.
inline smtp_reply parse_replycode(std::string_view data)
{
    if (!data.empty() && data.back() == '\0') data.remove_suffix(1);
    if (data.find('\0') != std::string_view::npos) throw protocol_error("reply code: NUL inside the text");
    smtp_reply r;
    std::size_t pos = 0;
    for (;;) {
        std::size_t eol = data.find("\r\n", pos);
        const bool last = eol == std::string_view::npos;
        const std::string_view line = data.substr(pos, last ? std::string_view::npos : eol - pos);
        if (line.size() < 4 || (line[0] != '4' && line[0] != '5') || line[1] < '0' || line[1] > '9' || line[2] < '0' ||
            line[2] > '9' || line[3] != (last ? ' ' : '-') || line.find_first_of("\r\n") != std::string_view::npos)
            throw protocol_error("malformed reply code \"" + clean_line(data.substr(0, 80)) + "\"");
        const auto code = static_cast<std::uint16_t>((line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0'));
        if (r.code != 0 && code != r.code) throw protocol_error("reply code: lines with different codes");
        r.code = code;
        std::string text;
        const std::string_view t = line.substr(4);
        for (std::size_t i = 0; i < t.size(); ++i) {
            if (t[i] != '%') {
                text += t[i];
                continue;
            }
            if (i + 1 < t.size() && t[i + 1] == '%') {
                text += '%';
                ++i;
            }
        }
        if (!r.text.empty() || pos > 0) r.text += '\n';
        r.text += clean_line(text);
        if (last) break;
        pos = eol + 2;
    }
    return r;
}

/// One change the milter asks for at end of message.
struct modification {
    char what = 0;            ///< rep_addheader, rep_insheader, rep_chgheader, rep_replbody, ...
    std::uint32_t index = 0;  ///< INSHEADER: position (0 = top); CHGHEADER: occurrence (from 1)
    std::string name;         ///< header name, or address (CHGFROM, ADDRCPT*, DELRCPT)
    std::string value;        ///< header value, body piece, or ESMTP arguments (CHGFROM, ADDRCPT_PAR)
};

/// Parses a modification reply's data. Throws protocol_error when it is malformed.
inline modification parse_modification(char cmd, std::string_view data)
{
    modification m;
    m.what = cmd;
    switch (cmd) {
    case rep_addheader: {
        fields f(data, "add header");
        m.name = f.cstr();
        m.value = f.cstr();
        f.expect_done();
        break;
    }
    case rep_insheader:
    case rep_chgheader: {
        fields f(data, cmd == rep_insheader ? "insert header" : "change header");
        m.index = f.u32();
        m.name = f.cstr();
        m.value = f.cstr();
        f.expect_done();
        break;
    }
    case rep_replbody: m.value.assign(data); break;
    case rep_chgfrom:
    case rep_addrcpt_par: {
        fields f(data, cmd == rep_chgfrom ? "change sender" : "add recipient");
        m.name = f.cstr();
        if (!f.done()) m.value = f.cstr();
        f.expect_done();
        break;
    }
    case rep_addrcpt:
    case rep_delrcpt: {
        fields f(data, cmd == rep_addrcpt ? "add recipient" : "delete recipient");
        m.name = f.cstr();
        f.expect_done();
        break;
    }
    case rep_quarantine: {
        // The reason, NUL-terminated (some send it without the NUL).
        std::string_view r = data;
        if (!r.empty() && r.back() == '\0') r.remove_suffix(1);
        m.value = clean_line(r.substr(0, r.find('\0')));
        break;
    }
    default: throw protocol_error(std::string("unknown modification '") + clean_line(std::string(1, cmd)) + "'");
    }
    if ((cmd == rep_addheader || cmd == rep_insheader || cmd == rep_chgheader) && m.name.empty())
        throw protocol_error("header change without a header name");
    return m;
}

/// An envelope address as a milter gives it ("<a@b>", "a@b", "<>") as the server's editing
/// takes it: without angle brackets, "<>" for the null sender.
inline std::string bare_address(std::string_view a)
{
    while (!a.empty() && (a.front() == ' ' || a.front() == '\t')) a.remove_prefix(1);
    while (!a.empty() && (a.back() == ' ' || a.back() == '\t')) a.remove_suffix(1);
    if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
    if (a.empty()) return "<>";
    return std::string(a);
}

/// ESMTP arguments as a milter gives them ("SIZE=10 BODY=8BITMIME") as a list.
inline std::vector<std::string> split_args(std::string_view args)
{
    std::vector<std::string> out;
    std::size_t i = 0;
    while (i < args.size()) {
        while (i < args.size() && (args[i] == ' ' || args[i] == '\t')) ++i;
        std::size_t end = i;
        while (end < args.size() && args[end] != ' ' && args[end] != '\t') ++end;
        if (end > i) out.emplace_back(args.substr(i, end - i));
        i = end;
    }
    return out;
}

// ------------------------------------------------------------------------------------------
// Endpoints
// ------------------------------------------------------------------------------------------

/// Where the milter listens: inet:HOST:PORT (also Sendmail's inet:PORT@HOST), inet6:[ADDR]:PORT
/// or inet6:ADDR:PORT, unix:/path (also local:/path).
struct endpoint {
    enum class kind { inet, inet6, unix_socket } type = kind::inet;
    std::string host;  ///< inet/inet6: a name or address literal (no brackets)
    std::uint16_t port = 0;
    std::string path;  ///< unix
};

/// Parses an address; std::invalid_argument with the reason otherwise.
inline endpoint parse_endpoint(std::string_view s)
{
    const std::size_t colon = s.find(':');
    if (colon == std::string_view::npos)
        throw std::invalid_argument("expected inet:HOST:PORT, inet6:[ADDR]:PORT or unix:/path");
    const std::string_view scheme = s.substr(0, colon);
    std::string_view rest = s.substr(colon + 1);
    endpoint e;
    if (scheme == "unix" || scheme == "local") {
        if (rest.empty()) throw std::invalid_argument("unix: needs a socket path");
        if (rest.size() > 107) throw std::invalid_argument("unix: the socket path is longer than 107 bytes");
        if (rest.find('\0') != std::string_view::npos) throw std::invalid_argument("unix: NUL in the path");
        e.type = endpoint::kind::unix_socket;
        e.path = std::string(rest);
        return e;
    }
    if (scheme != "inet" && scheme != "inet6")
        throw std::invalid_argument("unknown transport \"" + std::string(scheme) + "\" (inet, inet6 or unix)");
    e.type = scheme == "inet" ? endpoint::kind::inet : endpoint::kind::inet6;
    std::string_view host, port;
    if (const std::size_t at = rest.find('@'); at != std::string_view::npos) {  // Sendmail: PORT@HOST
        port = rest.substr(0, at);
        host = rest.substr(at + 1);
    } else if (!rest.empty() && rest.front() == '[') {
        const std::size_t close = rest.find(']');
        if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
            throw std::invalid_argument("expected [ADDRESS]:PORT");
        host = rest.substr(1, close - 1);
        port = rest.substr(close + 2);
    } else {
        const std::size_t last = rest.rfind(':');
        if (last == std::string_view::npos) throw std::invalid_argument("missing :PORT");
        host = rest.substr(0, last);
        port = rest.substr(last + 1);
    }
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host.empty()) throw std::invalid_argument("missing host");
    if (e.type == endpoint::kind::inet && host.find(':') != std::string_view::npos)
        throw std::invalid_argument("an IPv6 address needs inet6:");
    unsigned long p = 0;
    if (port.empty() || port.size() > 5) throw std::invalid_argument("bad port \"" + std::string(port) + "\"");
    for (char ch : port) {
        if (ch < '0' || ch > '9') throw std::invalid_argument("bad port \"" + std::string(port) + "\"");
        p = p * 10 + static_cast<unsigned long>(ch - '0');
    }
    if (p == 0 || p > 65535) throw std::invalid_argument("port " + std::string(port) + " out of range 1..65535");
    e.host = std::string(host);
    e.port = static_cast<std::uint16_t>(p);
    return e;
}

}  // namespace asiosmtpd::plugins::milter

#endif  // ASIOSMTPD_PLUGINS_MILTER_PROTOCOL_HPP
