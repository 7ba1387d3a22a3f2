// SPDX-License-Identifier: Apache-2.0
// policy: Postfix's SMTP access policy delegation protocol, without any I/O. A request is
// "name=value" lines, the first "request=smtpd_access_policy", ended by an empty line; the
// answer is "action=<what to do>" and an empty line (Postfix's SMTPD_POLICY_README). Here:
// the request's attributes and their encoding, a bounded reader of the answer, the action as a
// verdict with its reply (Postfix's check_table_result rules: default texts, enhanced status
// codes, the class digit taken from the reply code), and the `address` and `stages` syntax.
// Pure functions; C++17 (the plugin's standard). Unit tests: tests/unit/plugins/policy_test.cpp.
#ifndef ASIOSMTPD_PLUGINS_POLICY_PROTOCOL_HPP
#define ASIOSMTPD_PLUGINS_POLICY_PROTOCOL_HPP

#include <asiosmtpd/reply_rules.hpp>

#include <arpa/inet.h>
#include <sys/un.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::plugins::policy {

// ------------------------------------------------------------------------------------------
// The request
// ------------------------------------------------------------------------------------------

/// What one request tells the policy server. Postfix's attributes; what asiosmtpd cannot know
/// stays empty (or 0 for a number), as the protocol allows.
struct request {
    std::string protocol_state;          ///< CONNECT, HELO, EHLO, MAIL, RCPT, END-OF-MESSAGE, VRFY
    std::string protocol_name = "SMTP";  ///< ESMTP after EHLO/LHLO
    std::string helo_name;
    std::string queue_id;               ///< none: asiosmtpd has no queue
    std::string sender;                 ///< without <>; empty for the null sender
    std::string recipient;              ///< RCPT; END-OF-MESSAGE with exactly one recipient
    std::uint64_t recipient_count = 0;  ///< END-OF-MESSAGE only (Postfix: DATA and later)
    std::string client_address;
    std::string client_port;
    std::string client_name = "unknown";          ///< Postfix's word for "no verified name"
    std::string reverse_client_name = "unknown";  ///< (asiosmtpd does no reverse lookups)
    std::string server_address;
    std::string server_port;
    std::string instance;  ///< the same for every request of one transaction
    std::string sasl_method;
    std::string sasl_username;
    std::string sasl_sender;
    std::uint64_t size = 0;     ///< MAIL's SIZE=; at END-OF-MESSAGE the message's size
    std::string ccert_subject;  ///< only for a verified client certificate: never here
    std::string ccert_issuer;
    std::string ccert_fingerprint;
    std::string ccert_pubkey_fingerprint;
    std::string encryption_protocol;  ///< "TLSv1.3"; empty without TLS
    std::string encryption_cipher;
    unsigned encryption_keysize = 0;
    std::string etrn_domain;  ///< always sent (empty): postgrey then answers 4.2.0
    std::string stress;
    std::string policy_context;  ///< the plugin's `policy_context`
};

/// An attribute value as it may go on the wire: Postfix forbids NUL and newline in a value;
/// CR goes too (a server reading "\r\n" lines would cut there). Each such byte becomes '?'.
inline std::string wire_value(std::string_view v)
{
    std::string out(v);
    for (char& ch : out)
        if (ch == '\0' || ch == '\n' || ch == '\r') ch = '?';
    return out;
}

/// The request's lines, in Postfix's order, ending with the empty line.
inline std::string encode(const request& r)
{
    const std::pair<const char*, std::string> attrs[] = {
        {"request", "smtpd_access_policy"},
        {"protocol_state", r.protocol_state},
        {"protocol_name", r.protocol_name},
        {"helo_name", r.helo_name},
        {"queue_id", r.queue_id},
        {"sender", r.sender},
        {"recipient", r.recipient},
        {"recipient_count", std::to_string(r.recipient_count)},
        {"client_address", r.client_address},
        {"client_name", r.client_name},
        {"reverse_client_name", r.reverse_client_name},
        {"instance", r.instance},
        {"sasl_method", r.sasl_method},
        {"sasl_username", r.sasl_username},
        {"sasl_sender", r.sasl_sender},
        {"size", std::to_string(r.size)},
        {"ccert_subject", r.ccert_subject},
        {"ccert_issuer", r.ccert_issuer},
        {"ccert_fingerprint", r.ccert_fingerprint},
        {"encryption_protocol", r.encryption_protocol},
        {"encryption_cipher", r.encryption_cipher},
        {"encryption_keysize", std::to_string(r.encryption_keysize)},
        {"etrn_domain", r.etrn_domain},
        {"stress", r.stress},
        {"ccert_pubkey_fingerprint", r.ccert_pubkey_fingerprint},
        {"client_port", r.client_port},
        {"policy_context", r.policy_context},
        {"server_address", r.server_address},
        {"server_port", r.server_port},
    };
    std::string out;
    out.reserve(512);
    for (const auto& [name, value] : attrs) out.append(name).append("=").append(wire_value(value)).append("\n");
    out += '\n';
    return out;
}

/// The key size of a TLS cipher, from its name (OpenSSL's or the IANA one), for
/// encryption_keysize; 0 when the name does not say.
inline unsigned cipher_bits(std::string_view cipher) noexcept
{
    const auto has = [&](std::string_view s) { return cipher.find(s) != std::string_view::npos; };
    if (has("AES_256") || has("AES256") || has("CHACHA20") || has("CAMELLIA256") || has("ARIA256")) return 256;
    if (has("AES_128") || has("AES128") || has("CAMELLIA128") || has("ARIA128")) return 128;
    return 0;
}

// ------------------------------------------------------------------------------------------
// The answer
// ------------------------------------------------------------------------------------------

/// Reads one answer from the bytes as they arrive: "name=value" lines up to an empty line,
/// "\n" or "\r\n". The first `action` counts, other attributes are ignored (the protocol lets
/// servers add some). Bounded: a line of more than max_line bytes, more than max_lines lines or
/// max_total bytes is garbage, as is a line without '=' or an answer without `action`.
class response_reader {
public:
    static constexpr std::size_t max_line = 4096;
    static constexpr std::size_t max_lines = 64;
    static constexpr std::size_t max_total = 16384;

    enum class state { more, done, bad };

    /// Takes the next bytes; `more` asks for further bytes. Bytes after the empty line are
    /// not consumed (extra() tells: a server that says more than it was asked is not reused).
    state feed(std::string_view bytes)
    {
        if (state_ != state::more) {
            if (!bytes.empty()) extra_ = true;
            return state_;
        }
        for (std::size_t i = 0; i < bytes.size(); ++i) {
            const char ch = bytes[i];
            if (++total_ > max_total) return fail("answer longer than " + std::to_string(max_total) + " bytes");
            if (ch != '\n') {
                if (line_.size() >= max_line)
                    return fail("answer line longer than " + std::to_string(max_line) + " bytes");
                line_ += ch;
                continue;
            }
            if (!line_.empty() && line_.back() == '\r') line_.pop_back();
            if (line_.empty()) {
                if (i + 1 < bytes.size()) extra_ = true;
                if (!has_action_) return fail(lines_ == 0 ? "empty answer" : "answer without action=");
                state_ = state::done;
                return state_;
            }
            if (++lines_ > max_lines) return fail("answer of more than " + std::to_string(max_lines) + " lines");
            const std::size_t eq = line_.find('=');
            if (eq == std::string::npos || eq == 0) return fail("a line that is not name=value: " + shown(line_));
            if (!has_action_ && line_.compare(0, eq, "action") == 0) {
                action_ = line_.substr(eq + 1);
                has_action_ = true;
            }
            line_.clear();
        }
        return state_;
    }

    /// True once any byte came (a reused connection that fails before: probably closed idle).
    bool started() const noexcept { return total_ > 0; }
    bool extra() const noexcept { return extra_; }
    const std::string& action() const noexcept { return action_; }
    const std::string& error() const noexcept { return error_; }

private:
    state fail(std::string why)
    {
        error_ = std::move(why);
        state_ = state::bad;
        return state_;
    }
    static std::string shown(std::string_view s)
    {
        std::string out(s.substr(0, 60));
        for (char& ch : out)
            if (static_cast<unsigned char>(ch) < 0x20 || static_cast<unsigned char>(ch) == 0x7f) ch = '?';
        if (s.size() > 60) out += "...";
        return out;
    }

    state state_ = state::more;
    std::string line_;
    std::string action_;
    std::string error_;
    std::size_t total_ = 0;
    std::size_t lines_ = 0;
    bool has_action_ = false;
    bool extra_ = false;
};

// ------------------------------------------------------------------------------------------
// The action
// ------------------------------------------------------------------------------------------

/// What an action asks for.
enum class kind {
    dunno,           ///< no opinion: the next plugin decides
    accept,          ///< OK: accepted, the chain stops here
    reject,          ///< 5xx
    tempfail,        ///< 4xx
    reject_close,    ///< 521: 5xx, then the connection is closed
    tempfail_close,  ///< 421: 4xx, then the connection is closed
    unknown,         ///< not an action this client knows: the plugin's default_action applies
};

/// Something to log besides the verdict.
enum class note {
    none,
    info,         ///< INFO text
    warn,         ///< WARN text
    prepend,      ///< PREPEND header: value (needs message editing: logged, not applied)
    unsupported,  ///< HOLD, DISCARD, FILTER, REDIRECT, BCC, HANGUP: logged, treated as DUNNO
    ignored,      ///< DEFER_IF_REJECT: means nothing within one restriction (see decide())
};

struct decision {
    kind what = kind::unknown;
    std::uint16_t code = 0;  ///< for the refusing kinds
    std::string text;        ///< the reply text, enhanced status code first: "5.7.1 Access denied"
    std::string name;        ///< for the log: "reject", "defer_if_permit", "ok", "450", ...
    note extra = note::none;
    std::string note_text;  ///< INFO/WARN text, the PREPEND header, the unsupported action
    bool refuses() const noexcept { return what != kind::dunno && what != kind::accept && what != kind::unknown; }
};

/// The longest prefix of `s` of at most `n` bytes that does not end inside a UTF-8 sequence
/// (text that is not UTF-8 is cut at n).
inline std::size_t utf8_prefix(std::string_view s, std::size_t n) noexcept
{
    if (s.size() <= n) return s.size();
    const auto continuation = [&](std::size_t i) { return (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80; };
    std::size_t cut = n;
    for (int back = 0; back < 3 && cut > 0 && continuation(cut); ++back) --cut;
    return continuation(cut) ? n : cut;
}

/// A reply line from the server's text: control bytes (LF and DEL included, HT excepted)
/// become '?', and the line is cut to what the host takes (506 bytes) on a UTF-8 boundary.
inline std::string reply_line(std::string_view s)
{
    std::string out(s.substr(0, utf8_prefix(s, sdk::max_reply_line)));
    for (char& ch : out)
        if (ch == '\n' || sdk::reply_byte_forbidden(static_cast<unsigned char>(ch))) ch = '?';
    return out;
}

/// RFC 3463 status code at the start of `text` ("4.2.0 ...", class 2, 4 or 5, then 1-3 and
/// 1-3 digits, then a space, a tab or the end), as Postfix's dsn_split finds it: its length, or 0.
inline std::size_t enhanced_code_length(std::string_view text) noexcept
{
    const auto digits = [&](std::size_t at, std::size_t& end) {
        std::size_t i = at;
        while (i < text.size() && i - at < 4 && text[i] >= '0' && text[i] <= '9') ++i;
        if (i == at || i - at > 3) return false;
        end = i;
        return true;
    };
    if (text.size() < 5 || (text[0] != '2' && text[0] != '4' && text[0] != '5') || text[1] != '.') return 0;
    std::size_t end = 0;
    if (!digits(2, end) || end >= text.size() || text[end] != '.') return 0;
    if (!digits(end + 1, end)) return 0;
    if (end < text.size() && text[end] != ' ' && text[end] != '\t') return 0;
    return end;
}

/// The reply text for `code`: the enhanced code the server gave (its class digit set to the
/// reply code's, as Postfix does) or `default_status`, then the server's text or
/// `default_text`; one line within the host's limits.
inline std::string reply_text(std::uint16_t code, std::string_view server_text, std::string_view default_status,
                              std::string_view default_text)
{
    std::string status(default_status);
    const std::size_t n = enhanced_code_length(server_text);
    if (n != 0) {
        status.assign(server_text.substr(0, n));
        server_text.remove_prefix(n);
        while (!server_text.empty() && (server_text.front() == ' ' || server_text.front() == '\t'))
            server_text.remove_prefix(1);
    }
    status[0] = static_cast<char>('0' + code / 100);
    return reply_line(status + " " + std::string(server_text.empty() ? default_text : server_text));
}

/// The action as Postfix's check_table_result() reads it: the keyword (any case) up to the
/// first space or tab, then optional text. Within a single restriction (which the plugin is):
///  - DUNNO, INFO, WARN, PREPEND (not applied yet), DEFER_IF_REJECT and the actions that
///    route or keep mail (HOLD, DISCARD, FILTER, REDIRECT, BCC; HANGUP) → dunno;
///  - OK, RELAY, or all digits ("an all-numerical result is treated as OK") → accept;
///  - REJECT [text] → 550 5.7.1 (default text "Access denied");
///  - DEFER [text] → 450 4.7.1 ("Access denied"); DEFER_IF_PERMIT [text] → 450 4.7.1
///    ("Service unavailable"): no later restriction is known to refuse, so the request is
///    deferred;
///  - "4NN text" / "5NN text" → that code with that text (default status 4.7.1 / 5.7.1);
///    421 and 521 close the connection after the reply;
///  - anything else → unknown.
/// A status code at the start of a text is kept, its class digit set to the reply code's.
inline decision decide(std::string_view action)
{
    while (!action.empty() && (action.back() == ' ' || action.back() == '\t')) action.remove_suffix(1);
    while (!action.empty() && (action.front() == ' ' || action.front() == '\t')) action.remove_prefix(1);
    std::size_t cmd_len = 0;
    while (cmd_len < action.size() && action[cmd_len] != ' ' && action[cmd_len] != '\t') ++cmd_len;
    std::string cmd(action.substr(0, cmd_len));
    std::string_view text = action.substr(cmd_len);
    while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
    for (char& ch : cmd)
        if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
    std::string lower = cmd;
    for (char& ch : lower)
        if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');

    decision d;
    d.name = lower;
    const auto refuse = [&](kind k, std::uint16_t code, std::string_view status, std::string_view fallback) {
        d.what = k;
        d.code = code;
        d.text = reply_text(code, text, status, fallback);
        return d;
    };
    const auto dunno = [&](note n) {
        d.what = kind::dunno;
        d.extra = n;
        d.note_text = reply_line(text);
        return d;
    };
    if (cmd == "DUNNO") return dunno(note::none);
    if (cmd == "REJECT") return refuse(kind::reject, 550, "5.7.1", "Access denied");
    if (cmd == "DEFER") return refuse(kind::tempfail, 450, "4.7.1", "Access denied");
    if (cmd == "DEFER_IF_PERMIT") return refuse(kind::tempfail, 450, "4.7.1", "Service unavailable");
    if (cmd == "DEFER_IF_REJECT") return dunno(note::ignored);
    if (cmd == "INFO") return dunno(note::info);
    if (cmd == "WARN") return dunno(note::warn);
    if (cmd == "PREPEND") return dunno(note::prepend);
    if (cmd == "HOLD" || cmd == "DISCARD" || cmd == "FILTER" || cmd == "REDIRECT" || cmd == "BCC" || cmd == "HANGUP") {
        dunno(note::unsupported);
        d.note_text = reply_line(action);
        return d;
    }
    const bool all_digits = !action.empty() && action.find_first_not_of("0123456789") == std::string_view::npos;
    if (all_digits) {
        d.what = kind::accept;
        return d;
    }
    const bool numeric = cmd_len == 3 && (cmd[0] == '4' || cmd[0] == '5') && cmd[1] >= '0' && cmd[1] <= '9' &&
                         cmd[2] >= '0' && cmd[2] <= '9' && !text.empty();
    if (numeric) {
        const auto code = static_cast<std::uint16_t>((cmd[0] - '0') * 100 + (cmd[1] - '0') * 10 + (cmd[2] - '0'));
        const bool four = cmd[0] == '4';
        const kind k = code == 421   ? kind::tempfail_close
                       : code == 521 ? kind::reject_close
                       : four        ? kind::tempfail
                                     : kind::reject;
        return refuse(k, code, four ? "4.7.1" : "5.7.1", "Access denied");
    }
    if (cmd == "OK" || cmd == "RELAY") {
        d.what = kind::accept;
        return d;
    }
    d.what = kind::unknown;
    d.note_text = reply_line(action);
    return d;
}

/// What happens when the server cannot be asked (down, too slow, garbage, unknown action).
enum class fallback { dunno, defer, reject };

inline decision fallback_decision(fallback f)
{
    decision d;
    switch (f) {
    case fallback::dunno:
        d.what = kind::dunno;
        d.name = "dunno";
        break;
    case fallback::defer:
        // Postfix's smtpd_policy_service_default_action.
        d.what = kind::tempfail;
        d.code = 451;
        d.text = "4.3.5 Server configuration problem";
        d.name = "defer";
        break;
    case fallback::reject:
        d.what = kind::reject;
        d.code = 550;
        d.text = "5.7.1 Access denied";
        d.name = "reject";
        break;
    }
    return d;
}

// ------------------------------------------------------------------------------------------
// Configuration syntax
// ------------------------------------------------------------------------------------------

/// Where the policy server listens.
struct endpoint {
    bool unix_socket = false;
    std::string host;  ///< an IP literal (inet)
    std::uint16_t port = 0;
    std::string path;  ///< unix
    bool ipv6 = false;
    std::string text() const
    {
        if (unix_socket) return "unix:" + path;
        return ipv6 ? "inet:[" + host + "]:" + std::to_string(port) : "inet:" + host + ":" + std::to_string(port);
    }
};

/// Postfix's syntax: "inet:HOST:PORT" (HOST an IPv4 address, "localhost", or "[IPv6]"),
/// "inet6:[IPv6]:PORT" and "unix:PATH" (a relative PATH is taken from `config_dir`). Throws
/// std::invalid_argument with the reason (the caller names the key).
inline endpoint parse_endpoint(std::string_view text, std::string_view config_dir)
{
    endpoint e;
    const auto bad = [&](const std::string& why) {
        return std::invalid_argument("\"" + std::string(text) + "\": " + why +
                                     " (inet:127.0.0.1:10023, inet6:[::1]:10023 or unix:/path/to/socket)");
    };
    if (text.rfind("unix:", 0) == 0) {
        std::string path(text.substr(5));
        if (path.empty()) throw bad("no socket path");
        if (path.front() != '/' && !config_dir.empty()) path = std::string(config_dir) + "/" + path;
        if (path.size() >= sizeof(sockaddr_un{}.sun_path))
            throw bad("the socket path is longer than " + std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) +
                      " bytes");
        if (path.find('\0') != std::string::npos) throw bad("NUL in the socket path");
        e.unix_socket = true;
        e.path = std::move(path);
        return e;
    }
    std::string_view rest;
    bool want6 = false;
    if (text.rfind("inet:", 0) == 0) rest = text.substr(5);
    else if (text.rfind("inet6:", 0) == 0) {
        rest = text.substr(6);
        want6 = true;
    } else {
        throw bad("unknown kind of address");
    }
    std::string_view host;
    std::string_view port;
    if (!rest.empty() && rest.front() == '[') {
        const std::size_t close = rest.find(']');
        if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':')
            throw bad("expected [IPv6]:PORT");
        host = rest.substr(1, close - 1);
        port = rest.substr(close + 2);
        e.ipv6 = true;
    } else {
        const std::size_t colon = rest.rfind(':');
        if (colon == std::string_view::npos) throw bad("no port");
        host = rest.substr(0, colon);
        port = rest.substr(colon + 1);
        if (host.find(':') != std::string_view::npos) throw bad("write an IPv6 address in brackets");
    }
    if (port.empty() || port.size() > 5 || port.find_first_not_of("0123456789") != std::string_view::npos)
        throw bad("the port must be a number");
    const unsigned long p = std::stoul(std::string(port));
    if (p < 1 || p > 65535) throw bad("the port must be between 1 and 65535");
    e.port = static_cast<std::uint16_t>(p);
    std::string h(host);
    if (!e.ipv6 && h == "localhost") h = "127.0.0.1";
    unsigned char buf[16];
    if (e.ipv6) {
        if (::inet_pton(AF_INET6, h.c_str(), buf) != 1) throw bad("\"" + h + "\" is not an IPv6 address");
    } else {
        if (want6) throw bad("inet6 needs an address in brackets");
        if (::inet_pton(AF_INET, h.c_str(), buf) != 1)
            throw bad("the host must be an IP address (the policy server is reached without DNS)");
    }
    e.host = std::move(h);
    return e;
}

/// A protocol stage the plugin can ask at, by its config name.
enum class stage { connect, helo, mail, rcpt, data, vrfy };

struct stage_name {
    std::string_view name;
    stage value;
};
inline constexpr stage_name stage_names[] = {
    {"connect", stage::connect}, {"helo", stage::helo}, {"mail", stage::mail},
    {"rcpt", stage::rcpt},       {"data", stage::data}, {"vrfy", stage::vrfy},
};

/// The stage called `name`, or throws std::invalid_argument listing the known ones.
inline stage parse_stage(std::string_view name)
{
    for (const stage_name& s : stage_names)
        if (s.name == name) return s.value;
    std::string known;
    for (const stage_name& s : stage_names) known += (known.empty() ? "" : ", ") + std::string(s.name);
    throw std::invalid_argument("unknown stage '" + std::string(name.substr(0, 40)) + "' (known: " + known + ")");
}

inline std::string_view stage_config_name(stage s) noexcept
{
    for (const stage_name& n : stage_names)
        if (n.value == s) return n.name;
    return "?";
}

}  // namespace asiosmtpd::plugins::policy

#endif
