/*
 * asiosmtpd/testkit.hpp - a fake host for unit-testing plugins, without sockets or a server.
 *
 * Header-only C++17, for plugin authors' unit tests (GoogleTest or any other framework; the
 * kit itself throws testkit::error and never depends on a test framework). It loads a plugin
 * (a .so through dlopen, or an entry function linked into the test), calls create() with a
 * config tree you build in code, and drives its hooks through a scripted SMTP conversation:
 *
 *     asiosmtpd::testkit::host h;
 *     h.load("build/ping.so");                      // or h.load(path, node::map({...}))
 *     auto s = h.open();                             // runs CONNECT; s.greeting() is the 220
 *     EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n"
 *                                             "250-8BITMIME\n250 HELP");
 *     EXPECT_EQ(s.cmd("PING"), "259 Pong");
 *     EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: x\r\n\r\nhi\r\n"), "250 OK");
 *
 * What it is: the whole host API of plugin.h, ABI 1.2 (the table's struct_size is the full
 * current table), implemented faithfully where a plugin can observe it (registration frozen
 * after create(), reply validation, verdict/reply class checks, default replies of plugin.h,
 * data slots and their destructors, suspend()/complete() from any thread with a hook timeout,
 * log capture), and the 1.1 additions as the server behaves:
 *  - Replies are checked with the server's rules and reasons: code 200..599, no CR, NUL or
 *    other control byte but HT, lines of at most 506 bytes, 64 KiB of text in all. A refused
 *    set_reply() answers E_INVALID and, unless a later set_reply() succeeds, makes the hook's
 *    verdict (anything but PENDING) a plugin error; complete() with an unknown verdict, a reply
 *    set_reply() would refuse or a class not fitting the verdict answers E_INVALID and ends the
 *    call at once as a plugin error. A refused set_rcpt_reply() / set_rcpt_reply_pending()
 *    (bad index, code or text) counts the same way unless a later call for that recipient
 *    succeeds (then complete() answers E_INVALID too). A plugin error (also: PENDING without
 *    suspend(), a hook timeout, an unknown verdict, a misfitting class) answers "451 4.3.0
 *    Error: internal" (LMTP: to every recipient, without the call's per-recipient replies; at
 *    CONNECT the server's "421 4.7.0 <hostname> Service not available, closing transmission
 *    channel" and the session closes) and logs "warn plugin=<name> session=<id>
 *    event=plugin_error hook=<HOOK> reason="<the server's reason>"".
 *  - CONNECT answers as the server: the 220 greeting, or the plugin's reply; REJECT's default
 *    is "554 5.7.1 Rejected" and then every command but QUIT gets "503 5.5.1 Error: connection
 *    rejected, send QUIT"; TEMPFAIL, TEMPFAIL_CLOSE and REJECT_CLOSE close after their reply
 *    (default the 421 above).
 *  - AUTH: `s.auth("PLAIN", user, password)`, `s.auth("LOGIN", ...)`, or any mechanism with
 *    `s.sasl("X-MECH", {answers...})`; or by hand with cmd("AUTH ...") and base64 lines.
 *    AUTH_CHECK and plugin mechanisms answer 235 / 535 / 454 / "334 <base64 challenge>" like
 *    the server, set_auth_identity() names the session's auth_login, auth_max_failures closes.
 *  - TLS: `s.tls({"TLSv1.3", "TLS_AES_256_GCM_SHA384", subject})` (or cmd("STARTTLS") with
 *    host::starttls_available) pretends a STARTTLS handshake: the session forgets HELO and AUTH
 *    and runs the STARTTLS chain; `h.open_tls(...)` is an implicit-TLS connection.
 *  - PROXY: `h.open(testkit::proxy_header{...})` runs the PROXY chain before CONNECT.
 *  - LMTP: with host::lmtp, LHLO replaces HELO/EHLO and the end of DATA answers one reply per
 *    recipient (set_rcpt_reply / set_rcpt_reply_pending), joined by '\n' (data_replies()).
 *  - DATA flags DECODED/UTF8 from host::decode_data / host::enable_smtputf8; config_dir() is
 *    host::config_dir (default: the current directory).
 *  - DATA_CHUNK (1.2): the message in pieces of host::data_chunk_size (the server's are at
 *    least 64 KiB, cut at line ends), then the rest as the LAST_CHUNK piece (empty when the
 *    message is a whole number of pieces), then DATA: STREAMED without content, unless some
 *    DATA hook's plugin takes no chunks. A refused piece (or a plugin error) answers the
 *    message and DATA does not run; CONTINUE and ACCEPT pass a piece on to the next plugin,
 *    as in the server. With decode_data a non-ASCII message gets its pieces, then
 *    "500 Error: strict ASCII mode" without DATA (the envelope is kept, its slots end).
 * What it is not: the real SMTP engine. Command syntax and sequence checks are simplified
 * (the server's own tests pin the wire behaviour): no address syntax beyond <...> (but an
 * address or parameter with a control character, C0 or DEL, is refused as by the server:
 * 553 5.1.3, 501, "502 Could not VRFY"; so no hook ever sees one), no SIZE or
 * BODY checks, no line or call limits, no require_starttls, no PIPELINING, no unknown-command
 * budget, no auth_failure_delay, no real TLS (tls() only sets what session_info reports), the
 * PROXY header is given as fields rather than parsed. Replies are returned without CRLF,
 * lines of a multi-line reply joined by '\n'; where the server sends two replies at once
 * (LMTP DATA, a 535 followed by the 421 of auth_max_failures) they are joined by '\n' too.
 *
 * Threads: one session is driven from the test's thread; complete() and log() may be called
 * by the plugin from any thread, as with the real host. A suspended hook is waited for (up to
 * host::hook_timeout) inside the cmd() that triggered it.
 */
#ifndef ASIOSMTPD_TESTKIT_HPP
#define ASIOSMTPD_TESTKIT_HPP

#include <asiosmtpd/plugin.h>
#include <asiosmtpd/reply_rules.hpp>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::testkit {

/// A plugin refused to load (bad file, ABI mismatch, create() failed) or the kit was misused.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------------------------------
// node: a config tree, what the YAML `config:` subtree of a plugin entry would be.
//   node()                                  null (no config)
//   node("stdout"), node(5), node(true)     scalars (kept as text, as YAML gives them)
//   node::map({{"stream", "stderr"}})       a map, keys in order
//   node::list({"a.example", "b.example"})  a sequence
// ------------------------------------------------------------------------------------------
class node {
public:
    node() = default;
    node(const char* s) : kind_(ASIOSMTPD_CFG_SCALAR), text_(s ? s : "") {}
    node(std::string s) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::move(s)) {}
    node(std::string_view s) : kind_(ASIOSMTPD_CFG_SCALAR), text_(s) {}
    node(int v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::to_string(v)) {}
    node(long long v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::to_string(v)) {}
    node(double v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::to_string(v)) {}
    node(bool v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(v ? "true" : "false") {}

    static node map(std::initializer_list<std::pair<std::string, node>> entries)
    {
        node n;
        n.kind_ = ASIOSMTPD_CFG_MAP;
        n.children_.assign(entries.begin(), entries.end());
        return n;
    }
    static node list(std::initializer_list<node> items)
    {
        node n;
        n.kind_ = ASIOSMTPD_CFG_SEQUENCE;
        for (const node& i : items)
            n.children_.emplace_back(std::string(), i);
        return n;
    }

    std::int32_t kind() const noexcept { return kind_; }
    const std::string& text() const noexcept { return text_; }
    const std::vector<std::pair<std::string, node>>& children() const noexcept { return children_; }

private:
    std::int32_t kind_ = ASIOSMTPD_CFG_NULL;
    std::string text_;
    std::vector<std::pair<std::string, node>> children_;
};

/// The outcome of one hook chain: what the real host would decide and answer.
struct outcome {
    outcome() = default;
    outcome(asiosmtpd_verdict v, std::uint16_t c = 0, std::string t = {}) : verdict(v), code(c), text(std::move(t)) {}

    asiosmtpd_verdict verdict = ASIOSMTPD_CONTINUE; ///< the verdict that stopped the chain
    std::uint16_t code = 0;                          ///< 0: the plugin set no reply
    std::string text;
    // ---- ABI 1.1 ----
    std::string challenge; ///< AUTH_CHALLENGE: the raw challenge bytes (set_auth_challenge or complete's text)
    std::string identity;  ///< set_auth_identity()
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies; ///< LMTP: per recipient; code 0 = none
    /// The chain ended in a plugin error (unknown verdict, refused reply, timeout, ...): the
    /// server's "451 4.3.0 Error: internal" (verdict TEMPFAIL, code 451 here). At CONNECT the
    /// server answers 421 and closes instead; in DATA no per-recipient reply goes out.
    bool plugin_error = false;
};

/// What tls() / open_tls() pretend the handshake negotiated (session_info's 1.1 fields).
struct tls_params {
    std::string version = "TLSv1.3";
    std::string cipher = "TLS_AES_256_GCM_SHA384";
    std::string peer_subject; ///< a client certificate's subject (RFC 2253); empty: none
};

/// A PROXY protocol header as the server would have parsed it (asiosmtpd_proxy_args).
struct proxy_header {
    std::int32_t version = 2;  ///< 1 or 2
    std::int32_t command = 1;  ///< v2: 0 LOCAL, 1 PROXY
    std::int32_t family = 1;   ///< 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX
    std::int32_t protocol = 1; ///< 0 UNSPEC, 1 STREAM, 2 DGRAM
    std::string src_address;   ///< the client; empty: the header names none (LOCAL)
    std::uint16_t src_port = 0;
    std::string dst_address;
    std::uint16_t dst_port = 0;
    std::string tlvs;          ///< raw v2 TLV bytes
};

/// The result of session::sasl(): every 334 challenge (decoded) and the final reply.
struct sasl_result {
    std::vector<std::string> challenges;
    std::string reply;
};

/// RFC 4648 base64, as the server encodes challenges.
inline std::string base64_encode(std::string_view in)
{
    static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < in.size(); i += 3) {
        const auto byte = [&](std::size_t k) {
            return i + k < in.size() ? static_cast<unsigned>(static_cast<unsigned char>(in[i + k])) : 0u;
        };
        const unsigned n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        out += alphabet[(n >> 18) & 63];
        out += alphabet[(n >> 12) & 63];
        out += i + 1 < in.size() ? alphabet[(n >> 6) & 63] : '=';
        out += i + 2 < in.size() ? alphabet[n & 63] : '=';
    }
    return out;
}

/// Strict base64 as the server decodes AUTH lines: alphabet only, correct padding; "=" is empty.
inline std::optional<std::string> base64_decode(std::string_view in)
{
    if (in == "=")
        return std::string();
    if (in.size() % 4 != 0)
        return std::nullopt;
    const auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    std::string out;
    for (std::size_t i = 0; i < in.size(); i += 4) {
        const bool last = i + 4 == in.size();
        int v[4];
        int pad = 0;
        for (std::size_t k = 0; k < 4; ++k) {
            const char c = in[i + k];
            if (c == '=' && last && k >= 2) {
                ++pad;
                v[k] = 0;
                continue;
            }
            if (pad > 0)
                return std::nullopt;
            v[k] = value(c);
            if (v[k] < 0)
                return std::nullopt;
        }
        const unsigned n = (static_cast<unsigned>(v[0]) << 18) | (static_cast<unsigned>(v[1]) << 12) |
                           (static_cast<unsigned>(v[2]) << 6) | static_cast<unsigned>(v[3]);
        out.push_back(static_cast<char>((n >> 16) & 0xff));
        if (pad < 2)
            out.push_back(static_cast<char>((n >> 8) & 0xff));
        if (pad < 1)
            out.push_back(static_cast<char>(n & 0xff));
    }
    return out;
}

class host;
class session;

namespace detail {

inline asiosmtpd_str str(std::string_view v) noexcept { return {v.data() ? v.data() : "", v.size()}; }
inline std::string_view view(asiosmtpd_str s) noexcept
{
    return s.data ? std::string_view(s.data, s.size) : std::string_view();
}
inline std::string upper(std::string_view s)
{
    std::string out(s);
    for (char& c : out)
        if (c >= 'a' && c <= 'z')
            c = static_cast<char>(c - 'a' + 'A');
    return out;
}
/// A control character: C0 (NUL, TAB, CR, LF, ...) or DEL. The server refuses addresses and
/// ESMTP parameters holding one (RFC 5321 has none in a path or an esmtp-value), so no plugin
/// ever gets one from MAIL, RCPT or VRFY.
inline bool has_control(std::string_view s) noexcept
{
    for (const char c : s)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
            return true;
    return false;
}
inline std::string_view trim(std::string_view s) noexcept
{
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

// The host API table of ABI 1.0 ended with `log` (the kit fills the whole current table).
inline constexpr std::size_t host_api_v1_0_size =
    offsetof(asiosmtpd_host_api, log) + sizeof(asiosmtpd_host_api::log);
inline constexpr std::size_t session_info_v1_0_size =
    offsetof(asiosmtpd_session_info, authenticated) + sizeof(std::int32_t);

struct instance {
    host* owner = nullptr;
    std::string name;
    const asiosmtpd_plugin_descriptor* desc = nullptr;
    void* self = nullptr;
    void* dl = nullptr;
    bool created = false;
    std::mutex serial; // T3: hooks of a plugin without ASIOSMTPD_PF_THREAD_SAFE never overlap
};

struct registrar_state {
    host* owner;
    instance* inst;
    const node* root;
};

struct hook_entry {
    instance* inst;
    asiosmtpd_hook_fn fn;
};

// The hook id of a call into an AUTH mechanism (kit-private; plugins never see it).
inline constexpr asiosmtpd_hook_id auth_mechanism_call = 1000;

struct mechanism_entry {
    std::string name; // upper case
    hook_entry handler;
};

struct command_entry {
    std::string verb;
    std::string help;
    std::uint32_t flags;
    hook_entry handler;
};

struct slot {
    void* data = nullptr;
    void (*dtor)(void*) = nullptr;
};

// One suspended hook call, reachable from complete() on any thread through its token.
struct pending_state {
    std::mutex m;
    std::condition_variable cv;
    asiosmtpd_hook_id hook = 0;
    bool done = false;
    bool gone = false;
    // Why complete() ended the call as a plugin error ("complete() refused: ...", or a refused
    // per-recipient reply left); "" when its verdict stands.
    std::string refused;
    asiosmtpd_verdict verdict = ASIOSMTPD_CONTINUE;
    std::uint16_t code = 0;
    std::string text;
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies; // set_rcpt_reply[_pending]
    // DATA: the transaction's recipients, and the refused per-recipient replies (suspend()
    // moves the call's here; see put_rcpt_reply).
    std::size_t rcpt_count = 0;
    std::vector<std::pair<std::size_t, std::string>> refused_rcpt_replies;
};

struct token_registry {
    std::mutex m;
    std::map<asiosmtpd_token, std::shared_ptr<pending_state>> live;
    asiosmtpd_token last = 0;
    static token_registry& get()
    {
        static token_registry r;
        return r;
    }
};

struct call_state {
    session* s = nullptr;
    instance* inst = nullptr;
    asiosmtpd_hook_id hook = 0;
    bool active = true;
    std::uint16_t code = 0;
    std::string text;
    asiosmtpd_token token = 0;
    std::shared_ptr<pending_state> pending;
    std::string challenge; // set_auth_challenge
    std::string identity;  // set_auth_identity
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies; // set_rcpt_reply
    std::string refused_reply; // why the last set_reply() was refused; "" after one succeeded
    // set_rcpt_reply() refusals (recipient, reason) not replaced by a later accepted reply for
    // the same recipient: as refused_reply, they make the verdict a plugin error.
    std::vector<std::pair<std::size_t, std::string>> refused_rcpt_replies;
};

inline call_state* cs(asiosmtpd_call* c) noexcept { return reinterpret_cast<call_state*>(c); }

// The reply rules of plugin.h set_reply() (asiosmtpd/reply_rules.hpp), as the server checks
// them for set_reply(), complete(), set_rcpt_reply() and set_rcpt_reply_pending().
using sdk::reply_problem;

// Why a verdict with this reply cannot be used ("" when it can): the reply rules, then the
// class against the verdict (2xx/3xx ACCEPT, 4xx TEMPFAIL*, 5xx REJECT*; CONTINUE ignores its
// reply), as the server's to_result(). Code 0 is "no reply".
inline std::string verdict_problem(asiosmtpd_verdict v, std::uint16_t code, std::string_view text)
{
    if (code != 0) {
        std::string problem = reply_problem(code, text);
        if (!problem.empty())
            return problem;
    }
    const unsigned cls = code / 100u;
    switch (v) {
    case ASIOSMTPD_CONTINUE: return {};
    case ASIOSMTPD_ACCEPT:
        return code != 0 && cls != 2 && cls != 3 ? "ACCEPT with reply code " + std::to_string(code) : std::string();
    case ASIOSMTPD_REJECT:
    case ASIOSMTPD_REJECT_CLOSE:
        return code != 0 && cls != 5 ? "REJECT with reply code " + std::to_string(code) : std::string();
    case ASIOSMTPD_TEMPFAIL:
    case ASIOSMTPD_TEMPFAIL_CLOSE:
        return code != 0 && cls != 4 ? "TEMPFAIL with reply code " + std::to_string(code) : std::string();
    default: return "unknown verdict " + std::to_string(v);
    }
}

// One set_rcpt_reply[_pending]() call, as the server takes it: per recipient the last call
// counts; a reply for a recipient past the last one, or one breaking the one-line reply rules,
// answers E_INVALID and is remembered with the server's reason until a later call for the
// same recipient succeeds (refusals past the last recipient share one entry).
inline asiosmtpd_status put_rcpt_reply(std::vector<std::pair<std::uint16_t, std::string>>& replies,
                                       std::vector<std::pair<std::size_t, std::string>>& refused,
                                       std::size_t rcpt_count, const char* origin, std::size_t index,
                                       std::uint16_t code, std::string_view text)
{
    const std::size_t key = std::min(index, rcpt_count);
    const auto same = [key](const std::pair<std::size_t, std::string>& r) { return r.first == key; };
    std::string problem = index >= rcpt_count ? "the transaction has " + std::to_string(rcpt_count) +
                                                    (rcpt_count == 1 ? " recipient" : " recipients")
                                              : reply_problem(code, text, false);
    const auto it = std::find_if(refused.begin(), refused.end(), same);
    if (!problem.empty()) {
        std::string why = std::string(origin) + "() refused: recipient " + std::to_string(index) + ": " + problem;
        if (it != refused.end())
            it->second = std::move(why);
        else
            refused.emplace_back(key, std::move(why));
        return ASIOSMTPD_E_INVALID;
    }
    if (it != refused.end())
        refused.erase(it);
    if (replies.size() <= index)
        replies.resize(index + 1);
    replies[index] = {code, std::string(text)};
    return ASIOSMTPD_OK;
}

// The hook named in a plugin_error log line: the hook, or a command's verb.
inline std::string hook_label(asiosmtpd_hook_id hook, const void* args)
{
    static const char* const names[] = {"?", "CONNECT", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP",
                                        "QUIT", "VRFY", "UNKNOWN", "SESSION_CLOSE", "STARTTLS", "AUTH_CHECK",
                                        "PROXY", "DATA_CHUNK"};
    if (hook == 0 && args)
        return std::string(view(static_cast<const asiosmtpd_command_args*>(args)->verb));
    if (hook == auth_mechanism_call && args)
        return "AUTH " + std::string(view(static_cast<const asiosmtpd_auth_args*>(args)->mechanism));
    if (hook > 0 && static_cast<std::size_t>(hook) < sizeof names / sizeof names[0])
        return names[hook];
    return "hook " + std::to_string(hook);
}

} // namespace detail

// ------------------------------------------------------------------------------------------
// host: loads plugins into a chain (in load order) and opens sessions.
// ------------------------------------------------------------------------------------------
class host {
public:
    /// The name in the greeting, HELO and EHLO replies.
    std::string hostname = "mx.test.example";
    /// Advertised as SIZE in EHLO; 0: SIZE without a number.
    std::uint64_t data_size_limit = 33554432;
    /// How long a suspended hook may take before its session gets 451 4.3.0 (plugin.h T4).
    std::chrono::milliseconds hook_timeout{5000};

    // ---- server settings of ABI 1.1 features (the server's config keys of the same names) ----
    /// LMTP listener: LHLO instead of HELO/EHLO, one DATA reply per recipient.
    bool lmtp = false;
    /// STARTTLS offered in EHLO and accepted by cmd("STARTTLS") (with tls_defaults).
    bool starttls_available = false;
    /// AUTH (and the EHLO AUTH line) only with TLS, as the server's default.
    bool auth_require_tls = true;
    /// MAIL, RCPT, DATA, VRFY and HELP answer "530 5.7.0 Authentication required" before AUTH.
    bool auth_required = false;
    /// Failed AUTHs in a session before "421 ... too many failed authentication attempts"; 0: no limit.
    unsigned auth_max_failures = 3;
    /// server.decode_data / enable_smtputf8: DATA flags DECODED (and UTF8), strict ASCII check.
    bool decode_data = false;
    bool enable_smtputf8 = false;
    /// DATA_CHUNK (ABI 1.2): the size of each piece but the last (the server uses 64 KiB).
    std::size_t data_chunk_size = 64 * 1024;
    /// What config_dir() answers during create() (the folder of the server's config file).
    std::string config_dir = current_dir();
    /// What cmd("STARTTLS") and open_tls() negotiate.
    tls_params tls_defaults;

    host() { init_api(); }
    host(const host&) = delete;
    host& operator=(const host&) = delete;

    /// Destroys the instances in reverse load order, then unloads their libraries (T7).
    ~host()
    {
        for (auto it = instances_.rbegin(); it != instances_.rend(); ++it) {
            detail::instance& i = **it;
            if (i.created && i.desc && i.desc->destroy)
                i.desc->destroy(i.self);
            if (i.dl)
                dlclose(i.dl);
        }
    }

    /// Load the plugin file at `path` (dlopen RTLD_NOW | RTLD_LOCAL) and create an instance
    /// with `config`. Throws testkit::error with the reason the real host would give.
    void load(const std::string& path, const node& config = node())
    {
        void* dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!dl) {
            const char* why = dlerror();
            throw error("plugin " + path + ": cannot load: " + (why ? why : "dlopen failed"));
        }
        void* sym = dlsym(dl, ASIOSMTPD_ENTRY_SYMBOL);
        if (!sym) {
            dlclose(dl);
            throw error("plugin " + path + ": not an asiosmtpd plugin: no " ASIOSMTPD_ENTRY_SYMBOL);
        }
        asiosmtpd_entry_fn entry = nullptr;
        static_assert(sizeof entry == sizeof sym, "function and object pointers differ in size");
        std::memcpy(&entry, &sym, sizeof entry); // POSIX dlsym: object pointer to function
        add(entry, config, path, dl);
    }

    /// Create an instance from an entry function linked into the test program (a plugin built
    /// as a static or object library next to its test).
    void add(asiosmtpd_entry_fn entry, const node& config = node())
    {
        add(entry, config, "(linked)", nullptr);
    }

    /// load(), returning the refusal instead of throwing it ("" when the plugin loaded).
    std::string refusal(const std::string& path, const node& config = node())
    {
        try {
            load(path, config);
        } catch (const error& e) {
            return e.what();
        }
        return {};
    }

    /// A new session from peer_address:peer_port; runs the CONNECT chain.
    session open(std::string peer_address = "192.0.2.1", std::uint16_t peer_port = 40000);
    /// A session on an implicit-TLS listener: TLS is active from the start (no STARTTLS hook).
    session open_tls(tls_params tls = {}, std::string peer_address = "192.0.2.1", std::uint16_t peer_port = 40000);
    /// A session on a proxy_protocol listener: the PROXY chain runs first (the peer becomes the
    /// header's client, if it names one); a refusal closes the session without any reply
    /// (greeting() empty, closed() true). Otherwise CONNECT and the greeting follow.
    session open(const proxy_header& proxy, std::string tcp_peer_address = "192.0.2.254",
                 std::uint16_t tcp_peer_port = 50000);

    /// The AUTH mechanisms plugins registered (upper case), in registration order.
    std::vector<std::string> auth_mechanisms() const
    {
        std::vector<std::string> out;
        for (const auto& m : mechanisms_)
            out.push_back(m.name);
        return out;
    }

    /// The verbs plugins registered (upper-case), in registration order.
    std::vector<std::string> commands() const
    {
        std::vector<std::string> out;
        for (const auto& c : commands_)
            out.push_back(c.verb);
        return out;
    }
    /// The EHLO keyword lines plugins registered.
    const std::vector<std::string>& ehlo_keywords() const noexcept { return keywords_; }
    /// How many plugins have a handler in the chain of `hook`.
    std::size_t hook_count(asiosmtpd_hook_id hook) const
    {
        const auto it = hooks_.find(hook);
        return it == hooks_.end() ? 0 : it->second.size();
    }

    /// Every line logged so far: "<level> plugin=<name>[ session=<id>] <message>".
    std::vector<std::string> logs() const
    {
        std::lock_guard<std::mutex> lock(log_mutex_);
        return logs_;
    }
    /// Whether some log line contains `text`.
    bool logged(std::string_view text) const
    {
        std::lock_guard<std::mutex> lock(log_mutex_);
        return std::any_of(logs_.begin(), logs_.end(),
                           [&](const std::string& l) { return l.find(text) != std::string::npos; });
    }

    /// The table handed to plugins (for tests that call a plugin's create() themselves).
    const asiosmtpd_host_api* api() const noexcept { return &api_; }

private:
    friend class session;
    friend struct api_impl;

    void add(asiosmtpd_entry_fn entry, const node& config, const std::string& where, void* dl)
    {
        auto inst = std::make_unique<detail::instance>();
        inst->owner = this;
        inst->dl = dl;
        detail::instance& i = *inst;
        instances_.push_back(std::move(inst)); // the destructor closes dl, also on refusal
        const asiosmtpd_plugin_descriptor* d = entry ? entry() : nullptr;
        const auto refuse = [&](const std::string& why) {
            throw error("plugin " + where + ": " + why);
        };
        if (!d || d->struct_size < offsetof(asiosmtpd_plugin_descriptor, abi_minor) + sizeof d->abi_minor)
            refuse("the descriptor is missing or truncated");
        if (d->abi_major != ASIOSMTPD_ABI_MAJOR)
            refuse("built for plugin ABI " + std::to_string(d->abi_major) + "." +
                   std::to_string(d->abi_minor) + ", this host has ABI " +
                   std::to_string(ASIOSMTPD_ABI_MAJOR) + "." + std::to_string(ASIOSMTPD_ABI_MINOR));
        if (d->abi_minor > ASIOSMTPD_ABI_MINOR)
            refuse("needs plugin ABI 1." + std::to_string(d->abi_minor) + ", this host has 1." +
                   std::to_string(ASIOSMTPD_ABI_MINOR));
        if (d->struct_size < ASIOSMTPD_DESCRIPTOR_V1_0_SIZE || !d->name || !d->create || !d->destroy)
            refuse("the descriptor is truncated or lacks name, create or destroy");
        i.desc = d;
        i.name = d->name;
        detail::registrar_state reg{this, &i, &config};
        char buf[512] = {0};
        asiosmtpd_errbuf err{buf, sizeof buf};
        void* self = nullptr;
        frozen_ = false;
        const asiosmtpd_status st = d->create(&api_, reinterpret_cast<asiosmtpd_ctx*>(&i),
                                              reinterpret_cast<asiosmtpd_registrar*>(&reg), &self, &err);
        frozen_ = true;
        if (st != ASIOSMTPD_OK) {
            // Drop what the failed instance registered, as the real host drops the generation.
            for (auto& [id, chain] : hooks_)
                chain.erase(std::remove_if(chain.begin(), chain.end(),
                                           [&](const detail::hook_entry& e) { return e.inst == &i; }),
                            chain.end());
            commands_.erase(std::remove_if(commands_.begin(), commands_.end(),
                                           [&](const detail::command_entry& c) { return c.handler.inst == &i; }),
                            commands_.end());
            mechanisms_.erase(std::remove_if(mechanisms_.begin(), mechanisms_.end(),
                                             [&](const detail::mechanism_entry& m) { return m.handler.inst == &i; }),
                              mechanisms_.end());
            keywords_.resize(keywords_before_);
            refuse("refused its configuration: " + std::string(buf[0] ? buf : "create() failed"));
        }
        keywords_before_ = keywords_.size();
        i.self = self;
        i.created = true;
    }

    void write_log(detail::instance* inst, detail::call_state* c, std::int32_t level, std::string_view m)
    {
        static const char* names[] = {"?", "debug", "info", "warn", "error"};
        std::string line = (level >= 1 && level <= 4) ? names[level] : "?";
        line += " plugin=";
        line += inst ? inst->name : "?";
        if (c)
            line += " session=" + std::to_string(session_id_of(c));
        line += ' ';
        line.append(m.data(), m.size());
        std::lock_guard<std::mutex> lock(log_mutex_);
        logs_.push_back(std::move(line));
    }

    static std::uint64_t session_id_of(detail::call_state* c);

    static std::string current_dir()
    {
        std::vector<char> buf(4096);
        return getcwd(buf.data(), buf.size()) ? std::string(buf.data()) : std::string("/");
    }

    void init_api();

    asiosmtpd_host_api api_{};
    std::vector<std::unique_ptr<detail::instance>> instances_;
    std::map<asiosmtpd_hook_id, std::vector<detail::hook_entry>> hooks_;
    std::vector<detail::command_entry> commands_;
    std::vector<detail::mechanism_entry> mechanisms_;
    std::vector<std::string> keywords_;
    std::size_t keywords_before_ = 0;
    bool frozen_ = true;
    std::uint64_t next_session_ = 1;
    mutable std::mutex log_mutex_;
    std::vector<std::string> logs_;
};

// ------------------------------------------------------------------------------------------
// session: one SMTP conversation. Move-only; its end (destructor or close()) runs the
// SESSION_CLOSE chain and frees the data slots.
// ------------------------------------------------------------------------------------------
class session {
public:
    session(session&& o) noexcept { *this = std::move(o); }
    session& operator=(session&& o) noexcept
    {
        if (this != &o) {
            close();
            h_ = std::exchange(o.h_, nullptr);
            id_ = o.id_;
            peer_ = std::move(o.peer_);
            port_ = o.port_;
            greeting_ = std::move(o.greeting_);
            helo_ = std::move(o.helo_);
            extended_ = o.extended_;
            in_txn_ = o.in_txn_;
            mail_from_ = std::move(o.mail_from_);
            params_ = std::move(o.params_);
            rcpts_ = std::move(o.rcpts_);
            in_data_ = o.in_data_;
            content_ = std::move(o.content_);
            closed_ = o.closed_;
            slots_ = std::move(o.slots_);
            o.slots_.clear();
            tls_active_ = o.tls_active_;
            tls_ = std::move(o.tls_);
            tls_vetoed_ = o.tls_vetoed_;
            connect_rejected_ = o.connect_rejected_;
            authenticated_ = o.authenticated_;
            auth_login_ = std::move(o.auth_login_);
            auth_kind_ = o.auth_kind_;
            auth_step_ = o.auth_step_;
            auth_user_ = std::move(o.auth_user_);
            auth_mech_ = o.auth_mech_;
            auth_failures_ = o.auth_failures_;
            data_replies_ = std::move(o.data_replies_);
        }
        return *this;
    }
    session(const session&) = delete;
    session& operator=(const session&) = delete;
    ~session() { close(); }

    /// The 220 greeting (or what the CONNECT chain answered).
    const std::string& greeting() const noexcept { return greeting_; }
    /// True after QUIT or a *_CLOSE verdict.
    bool closed() const noexcept { return closed_; }
    std::uint64_t id() const noexcept { return id_; }

    /// Send one command line (without CRLF) and get the reply, lines joined by '\n'. After a
    /// "354" to DATA, each cmd() is a message line (dot-stuffed as on the wire) until ".".
    std::string cmd(std::string_view line)
    {
        if (!h_)
            throw error("session: moved from");
        if (closed_)
            throw error("session: closed (QUIT or a closing verdict)");
        if (in_data_) {
            if (line != ".") {
                if (!line.empty() && line.front() == '.')
                    line.remove_prefix(1); // RFC 5321 4.5.2 transparency
                content_.append(line.data(), line.size());
                content_ += "\r\n";
                return {};
            }
            in_data_ = false;
            return end_of_data();
        }
        if (auth_kind_ != auth_kind::none)
            return auth_line(line); // the answer to a 334 challenge
        const std::string_view l = detail::trim(line);
        const std::size_t sp = l.find(' ');
        const std::string verb = detail::upper(l.substr(0, sp));
        const std::string_view arg = sp == std::string_view::npos ? std::string_view() : detail::trim(l.substr(sp + 1));
        const bool has_arg = sp != std::string_view::npos && !arg.empty();

        if (connect_rejected_ && verb != "QUIT")
            return "503 5.5.1 Error: connection rejected, send QUIT"; // RFC 5321 §3.1, as the server
        if (tls_vetoed_ && verb != "QUIT")
            return "554 Command refused due to lack of security";
        const bool needs_auth = h_->auth_required && !authenticated_;
        if (h_->lmtp && (verb == "HELO" || verb == "EHLO"))
            return "500 Error: command \"" + verb + "\" not recognized";
        for (const auto& c : h_->commands_) {
            if (c.verb != verb)
                continue;
            if ((c.flags & ASIOSMTPD_CMD_NEEDS_HELO) && helo_.empty())
                return "503 Error: send HELO first";
            const asiosmtpd_command_args a{sizeof a, detail::str(verb), detail::str(arg), has_arg ? 1 : 0};
            return finish(run_one(c.handler, 0, &a), "250 OK");
        }
        if ((!h_->lmtp && (verb == "HELO" || verb == "EHLO")) || (h_->lmtp && verb == "LHLO")) {
            if (!has_arg)
                return std::string("501 Syntax: ") + (verb == "HELO" ? "HELO" : "EHLO") + " hostname";
            const asiosmtpd_helo_args a{sizeof a, detail::str(arg)};
            const bool ehlo = verb != "HELO";
            const outcome o = run(ehlo ? ASIOSMTPD_HOOK_EHLO : ASIOSMTPD_HOOK_HELO, &a);
            if (o.verdict == ASIOSMTPD_CONTINUE || o.verdict == ASIOSMTPD_ACCEPT) {
                helo_ = std::string(arg);
                extended_ = ehlo;
                reset_txn();
            }
            std::string dflt = "250 " + h_->hostname;
            if (ehlo) {
                dflt = "250-" + h_->hostname + "\n250-SIZE";
                if (h_->data_size_limit)
                    dflt += " " + std::to_string(h_->data_size_limit);
                dflt += "\n";
                if (!h_->decode_data)
                    dflt += "250-8BITMIME\n";
                if (h_->enable_smtputf8)
                    dflt += "250-SMTPUTF8\n";
                if (h_->starttls_available && !tls_active_)
                    dflt += "250-STARTTLS\n";
                if (!h_->auth_require_tls || tls_active_) {
                    std::vector<std::string> mechs = {"LOGIN", "PLAIN"};
                    for (const auto& m : h_->mechanisms_)
                        mechs.push_back(m.name);
                    std::sort(mechs.begin(), mechs.end());
                    dflt += "250-AUTH";
                    for (const auto& m : mechs)
                        dflt += " " + m;
                    dflt += "\n";
                }
                for (const auto& k : h_->keywords_)
                    dflt += "250-" + k + "\n";
                dflt += "250 HELP";
            }
            return finish(o, dflt);
        }
        if (verb == "AUTH")
            return on_auth(arg);
        if (verb == "STARTTLS") {
            if (has_arg)
                return "501 Syntax: STARTTLS";
            if (tls_active_)
                return "503 5.5.1 Error: TLS already active";
            if (!h_->starttls_available)
                return "454 TLS not available";
            const std::string after = handshake(h_->tls_defaults);
            return after.empty() ? "220 Ready to start TLS" : "220 Ready to start TLS\n" + after;
        }
        if (needs_auth && (verb == "MAIL" || verb == "RCPT" || verb == "DATA" || verb == "VRFY" || verb == "HELP")) {
            if ((verb == "MAIL" || verb == "RCPT" || verb == "DATA") && helo_.empty())
                return "503 Error: send HELO first";
            return "530 5.7.0 Authentication required";
        }
        if (verb == "MAIL") {
            if (helo_.empty())
                return "503 Error: send HELO first";
            std::string address;
            std::vector<std::string> params;
            const bool parsed = parse_path(arg, "FROM:", address, params);
            // As the server: a control character makes the address malformed (checked before
            // "nested MAIL"), a parameter a syntax error (after it).
            if (parsed && detail::has_control(address))
                return "553 5.1.3 Error: malformed address";
            if (in_txn_)
                return "503 Error: nested MAIL command";
            if (!parsed || std::any_of(params.begin(), params.end(), detail::has_control))
                return "501 Syntax: MAIL FROM: <address>";
            std::vector<asiosmtpd_str> ps;
            for (const auto& p : params)
                ps.push_back(detail::str(p));
            const asiosmtpd_address_args a{sizeof a, detail::str(address), ps.empty() ? nullptr : ps.data(), ps.size()};
            const outcome o = run(ASIOSMTPD_HOOK_MAIL, &a);
            if (o.verdict == ASIOSMTPD_CONTINUE || o.verdict == ASIOSMTPD_ACCEPT) {
                in_txn_ = true;
                mail_from_ = address;
                params_ = params;
            }
            return finish(o, "250 OK");
        }
        if (verb == "RCPT") {
            if (helo_.empty())
                return "503 Error: send HELO first";
            if (!in_txn_)
                return "503 Error: need MAIL command";
            std::string address;
            std::vector<std::string> params;
            const bool parsed = parse_path(arg, "TO:", address, params);
            if (parsed && detail::has_control(address))
                return "553 5.1.3 Error: malformed address";
            if (!parsed || address == "<>" || std::any_of(params.begin(), params.end(), detail::has_control))
                return "501 Syntax: RCPT TO: <address>";
            const asiosmtpd_address_args a{sizeof a, detail::str(address), nullptr, 0};
            const outcome o = run(ASIOSMTPD_HOOK_RCPT, &a);
            if (o.verdict == ASIOSMTPD_CONTINUE || o.verdict == ASIOSMTPD_ACCEPT)
                rcpts_.push_back(address);
            return finish(o, "250 OK");
        }
        if (verb == "DATA") {
            if (helo_.empty())
                return "503 Error: send HELO first";
            if (rcpts_.empty())
                return "503 Error: need RCPT command";
            in_data_ = true;
            content_.clear();
            return "354 End data with <CR><LF>.<CR><LF>";
        }
        if (verb == "RSET") {
            reset_txn(); // plugin.h: the envelope is already reset when the hook runs
            return finish(run(ASIOSMTPD_HOOK_RSET, nullptr), "250 OK");
        }
        if (verb == "NOOP") {
            const asiosmtpd_command_args a{sizeof a, detail::str(verb), detail::str(arg), has_arg ? 1 : 0};
            return finish(run(ASIOSMTPD_HOOK_NOOP, &a), "250 OK");
        }
        if (verb == "QUIT") {
            const std::string r = finish(run(ASIOSMTPD_HOOK_QUIT, nullptr), "221 Bye");
            closed_ = true;
            return r;
        }
        if (verb == "VRFY") {
            if (!has_arg)
                return "501 Syntax: VRFY <address>";
            if (detail::has_control(arg)) {
                // As the server: unparsable, echoed with each control byte but HT as '?'.
                std::string r = "502 Could not VRFY " + std::string(arg);
                for (char& c : r)
                    if (c != '\t' && (static_cast<unsigned char>(c) < 0x20 || c == 0x7f))
                        c = '?';
                return r;
            }
            const asiosmtpd_address_args a{sizeof a, detail::str(arg), nullptr, 0};
            return finish(run(ASIOSMTPD_HOOK_VRFY, &a),
                          "252 Cannot VRFY user, but will accept message and attempt delivery");
        }
        if (verb == "HELP") {
            if (has_arg) {
                for (const auto& c : h_->commands_)
                    if (c.verb == detail::upper(arg) && !c.help.empty())
                        return "250 Syntax: " + c.help;
            }
            std::vector<std::string> verbs = {"AUTH", "DATA", "EHLO", "HELO", "HELP", "MAIL",
                                              "NOOP", "QUIT", "RCPT", "RSET", "VRFY"};
            for (const auto& c : h_->commands_)
                verbs.push_back(c.verb);
            std::sort(verbs.begin(), verbs.end());
            std::string r = "250 Supported commands:";
            for (const auto& v : verbs)
                r += " " + v;
            return r;
        }
        const asiosmtpd_command_args a{sizeof a, detail::str(verb), detail::str(arg), has_arg ? 1 : 0};
        return finish(run(ASIOSMTPD_HOOK_UNKNOWN, &a), "500 Error: command \"" + verb + "\" not recognized");
    }

    /// DATA with `content` as the message (CRLF line ends, already dot-unstuffed). Returns the
    /// final reply, or the refusal of DATA itself.
    std::string data(std::string_view content)
    {
        const std::string r = cmd("DATA");
        if (r.compare(0, 3, "354") != 0)
            return r;
        in_data_ = false;
        content_.assign(content.data(), content.size());
        return end_of_data();
    }

    /// MAIL FROM, each RCPT TO and DATA; returns the first reply that is not 2xx/3xx, or the
    /// reply to the message. Sends EHLO first when the session has not greeted yet.
    std::string send_mail(std::string_view from, std::initializer_list<std::string_view> to,
                          std::string_view content)
    {
        if (helo_.empty()) {
            const std::string r = cmd("EHLO client.example");
            if (r[0] != '2')
                return r;
        }
        std::string r = cmd("MAIL FROM:<" + std::string(from) + ">");
        if (r[0] != '2')
            return r;
        for (std::string_view t : to) {
            r = cmd("RCPT TO:<" + std::string(t) + ">");
            if (r[0] != '2')
                return r;
        }
        return data(content);
    }

    /// AUTH PLAIN (initial response authzid NUL login NUL password) or AUTH LOGIN (user name as
    /// the initial response, then the password after "334 UGFzc3dvcmQ6"). Returns the final
    /// reply: "235 2.7.0 Authentication successful", "535 5.7.8 Authentication credentials
    /// invalid", "454 4.7.0 Temporary authentication failure", a plugin's own reply, or the
    /// refusal of AUTH itself (e.g. "538 ..." without TLS while host::auth_require_tls).
    std::string auth(std::string_view mechanism, std::string_view login, std::string_view password,
                     std::string_view authzid = {})
    {
        const std::string mech = detail::upper(mechanism);
        if (mech == "PLAIN") {
            std::string creds(authzid);
            creds += '\0';
            creds.append(login.data(), login.size());
            creds += '\0';
            creds.append(password.data(), password.size());
            return cmd("AUTH PLAIN " + base64_encode(creds));
        }
        if (mech == "LOGIN") {
            const std::string r = cmd("AUTH LOGIN " + (login.empty() ? std::string("=") : base64_encode(login)));
            if (r != "334 UGFzc3dvcmQ6")
                return r;
            return cmd(password.empty() ? std::string("=") : base64_encode(password));
        }
        throw error("session::auth(): PLAIN or LOGIN; use sasl() for other mechanisms");
    }

    /// A SASL exchange: "AUTH <mechanism>" (with answers[0] as the initial response when
    /// `initial_response`), then each further answer (base64-encoded) to each 334 challenge;
    /// "*" (abort) when a challenge comes and no answer is left. Returns the decoded challenges
    /// and the final reply.
    sasl_result sasl(std::string_view mechanism, std::vector<std::string> answers = {},
                     bool initial_response = false)
    {
        sasl_result out;
        std::size_t next = 0;
        std::string line = "AUTH " + std::string(mechanism);
        if (initial_response && next < answers.size()) {
            const std::string& a = answers[next++];
            line += " " + (a.empty() ? std::string("=") : base64_encode(a));
        }
        std::string r = cmd(line);
        while (r.compare(0, 4, "334 ") == 0) {
            const auto c = base64_decode(std::string_view(r).substr(4));
            out.challenges.push_back(c ? *c : r.substr(4));
            if (next >= answers.size()) {
                r = cmd("*");
                break;
            }
            const std::string& a = answers[next++];
            r = cmd(a.empty() ? std::string("=") : base64_encode(a));
        }
        out.reply = std::move(r);
        return out;
    }

    /// Pretend a STARTTLS handshake just succeeded with `params` (whatever STARTTLS's own
    /// checks; cmd("STARTTLS") does those): the session forgets HELO, AUTH and the
    /// transaction (RFC 3207 §4.2) and runs the STARTTLS chain. Returns "" or, after a *_CLOSE
    /// verdict with a reply, that reply. A REJECT/TEMPFAIL makes every later command but QUIT
    /// answer "554 Command refused due to lack of security".
    std::string tls(tls_params params = {})
    {
        if (!h_ || closed_)
            throw error("session: closed");
        if (tls_active_)
            throw error("session::tls(): TLS is already active");
        return handshake(std::move(params));
    }

    /// The replies to the last end of DATA: one, or with host::lmtp one per recipient.
    const std::vector<std::string>& data_replies() const noexcept { return data_replies_; }
    bool tls_active() const noexcept { return tls_active_; }
    bool authenticated() const noexcept { return authenticated_; }
    /// The authenticated identity (set_auth_identity(), else the login); empty before AUTH.
    const std::string& auth_login() const noexcept { return auth_login_; }

    /// End the session: runs SESSION_CLOSE (verdict ignored) and frees every slot.
    void close()
    {
        if (!h_)
            return;
        run(ASIOSMTPD_HOOK_SESSION_CLOSE, nullptr);
        free_slots(0);
        h_ = nullptr;
        closed_ = true;
    }

    /// Run a hook chain directly with hand-made args (for hooks the conversation does not
    /// reach, or to test a handler in isolation). The session's state is not changed.
    outcome run(asiosmtpd_hook_id hook, const void* args)
    {
        outcome result;
        const auto it = h_->hooks_.find(hook);
        if (it == h_->hooks_.end())
            return result;
        for (const auto& e : it->second) {
            result = run_one(e, hook, args);
            if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
                continue; // a notification: every plugin sees it
            if (hook == ASIOSMTPD_HOOK_DATA_CHUNK && result.verdict == ASIOSMTPD_ACCEPT)
                continue; // every plugin that takes pieces gets each piece (plugin.h)
            if (result.verdict != ASIOSMTPD_CONTINUE)
                return result;
        }
        if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
            return outcome{};
        return result;
    }

    // Read-only state, as the host API reports it to plugins.
    const std::string& helo_name() const noexcept { return helo_; }
    const std::string& mail_from() const noexcept { return mail_from_; }
    const std::vector<std::string>& rcpts() const noexcept { return rcpts_; }

private:
    friend class host;
    session(host& h, std::uint64_t id, std::string peer, std::uint16_t port, const proxy_header* proxy = nullptr,
            const tls_params* tls = nullptr)
        : h_(&h), id_(id), peer_(std::move(peer)), port_(port)
    {
        if (proxy) {
            std::string proxy_address;
            if (!proxy->src_address.empty()) {
                proxy_address = peer_ + ":" + std::to_string(port_);
                peer_ = proxy->src_address;
                port_ = proxy->src_port;
            }
            asiosmtpd_proxy_args a{};
            a.struct_size = sizeof a;
            a.version = proxy->version;
            a.command = proxy->command;
            a.family = proxy->family;
            a.protocol = proxy->protocol;
            a.src_address = detail::str(proxy->src_address);
            a.src_port = proxy->src_port;
            a.dst_address = detail::str(proxy->dst_address);
            a.dst_port = proxy->dst_port;
            a.tlvs = detail::str(proxy->tlvs);
            a.proxy_address = detail::str(proxy_address);
            const outcome o = run(ASIOSMTPD_HOOK_PROXY, &a);
            if (o.verdict != ASIOSMTPD_CONTINUE && o.verdict != ASIOSMTPD_ACCEPT) {
                closed_ = true; // closed without a reply (aiosmtpd)
                return;
            }
        }
        if (tls) {
            tls_active_ = true;
            tls_ = *tls;
        }
        const asiosmtpd_connect_args a{sizeof a, detail::str(peer_), port_, detail::str("127.0.0.1"), 25};
        greeting_ = connect_reply(run(ASIOSMTPD_HOOK_CONNECT, &a));
    }

    // The greeting for the CONNECT chain's outcome, as the server's engine answers it: the 220,
    // or the plugin's reply; REJECT's default is 554 and then only QUIT is served (RFC 5321
    // §3.1); TEMPFAIL and the *_CLOSE verdicts close after the reply (default 421); a plugin
    // error is always 421 and close (it may not greet: there is no session to go on with).
    std::string connect_reply(const outcome& o)
    {
        const std::string closing = "421 4.7.0 " + h_->hostname + " Service not available, closing transmission channel";
        if (o.plugin_error) {
            closed_ = true;
            return closing;
        }
        switch (o.verdict) {
        case ASIOSMTPD_ACCEPT:
            if (o.code)
                return finish(o, "");
            break;
        case ASIOSMTPD_REJECT:
            connect_rejected_ = true;
            return o.code ? finish(o, "") : "554 5.7.1 Rejected";
        case ASIOSMTPD_TEMPFAIL:
        case ASIOSMTPD_TEMPFAIL_CLOSE:
        case ASIOSMTPD_REJECT_CLOSE:
            closed_ = true;
            return o.code ? finish(o, "") : closing;
        default: break;
        }
        return "220 " + h_->hostname + " asiosmtpd-testkit";
    }

    enum class auth_kind { none, plain, login, plugin };

    std::string handshake(tls_params params)
    {
        helo_.clear();
        extended_ = false;
        authenticated_ = false;
        auth_login_.clear();
        reset_txn();
        tls_active_ = true;
        tls_ = std::move(params);
        const auto it = h_->hooks_.find(ASIOSMTPD_HOOK_STARTTLS);
        if (it == h_->hooks_.end() || it->second.empty())
            return {};
        const outcome o = run(ASIOSMTPD_HOOK_STARTTLS, nullptr);
        if (o.verdict == ASIOSMTPD_REJECT_CLOSE || o.verdict == ASIOSMTPD_TEMPFAIL_CLOSE) {
            closed_ = true;
            return o.code ? finish(o, "") : std::string();
        }
        if (o.verdict != ASIOSMTPD_CONTINUE && o.verdict != ASIOSMTPD_ACCEPT)
            tls_vetoed_ = true;
        return {};
    }

    std::string on_auth(std::string_view arg)
    {
        if (helo_.empty())
            return "503 Error: send EHLO first";
        if (!extended_)
            return "500 Error: command 'AUTH' not recognized";
        if (h_->auth_require_tls && !tls_active_)
            return "538 5.7.11 Encryption required for requested authentication mechanism";
        if (authenticated_)
            return "503 Already authenticated";
        if (arg.empty())
            return "501 Not enough value";
        std::vector<std::string_view> words;
        for (std::size_t i = 0; i < arg.size();) {
            while (i < arg.size() && (arg[i] == ' ' || arg[i] == '\t'))
                ++i;
            const std::size_t start = i;
            while (i < arg.size() && arg[i] != ' ' && arg[i] != '\t')
                ++i;
            if (i == start)
                continue;
            if (words.size() == 2)
                return "501 Too many values";
            words.push_back(arg.substr(start, i - start));
        }
        const std::string mech = detail::upper(words[0]);
        std::optional<std::string> initial;
        if (words.size() == 2) {
            initial = base64_decode(words[1]);
            if (!initial)
                return "501 5.5.2 Can't decode base64";
        }
        auth_step_ = 0;
        if (mech == "PLAIN") {
            auth_kind_ = auth_kind::plain;
            if (initial)
                return auth_response(*initial);
            return "334 ";
        }
        if (mech == "LOGIN") {
            auth_kind_ = auth_kind::login;
            if (initial) {
                auth_user_ = std::move(*initial);
                auth_step_ = 1;
                return "334 UGFzc3dvcmQ6";
            }
            return "334 VXNlcm5hbWU6";
        }
        for (std::size_t i = 0; i < h_->mechanisms_.size(); ++i) {
            if (h_->mechanisms_[i].name != mech)
                continue;
            auth_kind_ = auth_kind::plugin;
            auth_mech_ = i;
            return auth_plugin_step(initial ? std::optional<std::string_view>(*initial) : std::nullopt);
        }
        return "504 5.5.4 Unrecognized authentication type";
    }

    // One line answering a 334 challenge.
    std::string auth_line(std::string_view line)
    {
        const std::string_view answer = detail::trim(line);
        if (answer == "*") {
            auth_end();
            return "501 5.7.0 Auth aborted";
        }
        const auto decoded = base64_decode(answer);
        if (!decoded) {
            auth_end();
            return "501 5.5.2 Can't decode base64";
        }
        if (auth_kind_ == auth_kind::plugin)
            return auth_plugin_step(std::string_view(*decoded));
        return auth_response(*decoded);
    }

    // A decoded answer for the built-in mechanisms.
    std::string auth_response(std::string_view data)
    {
        if (auth_kind_ == auth_kind::plain) {
            const auto first = data.find('\0');
            const auto second = first == std::string_view::npos ? first : data.find('\0', first + 1);
            if (second == std::string_view::npos || data.find('\0', second + 1) != std::string_view::npos) {
                auth_end();
                return "501 5.5.2 Can't split auth value";
            }
            return auth_credentials("PLAIN", data.substr(0, first), data.substr(first + 1, second - first - 1),
                                    data.substr(second + 1));
        }
        if (auth_step_ == 0) {
            auth_user_.assign(data);
            auth_step_ = 1;
            return "334 UGFzc3dvcmQ6";
        }
        const std::string user = std::move(auth_user_);
        return auth_credentials("LOGIN", {}, user, data);
    }

    std::string auth_credentials(std::string_view mechanism, std::string_view authzid, std::string_view login,
                                 std::string_view password)
    {
        asiosmtpd_auth_args a{};
        a.struct_size = sizeof a;
        a.mechanism = detail::str(mechanism);
        a.authzid = detail::str(authzid);
        a.login = detail::str(login);
        a.password = detail::str(password);
        a.response = detail::str("");
        // Without an AUTH_CHECK plugin nobody vouches for the credentials: 535.
        const outcome o = run(ASIOSMTPD_HOOK_AUTH_CHECK, &a);
        return auth_result(o, login);
    }

    std::string auth_plugin_step(std::optional<std::string_view> response)
    {
        const detail::mechanism_entry& m = h_->mechanisms_[auth_mech_];
        asiosmtpd_auth_args a{};
        a.struct_size = sizeof a;
        a.mechanism = detail::str(m.name);
        a.authzid = a.login = a.password = detail::str("");
        a.response = detail::str(response ? *response : std::string_view());
        a.has_response = response ? 1 : 0;
        a.step = auth_step_;
        const outcome o = run_one(m.handler, detail::auth_mechanism_call, &a);
        return auth_result(o, {});
    }

    // The reply to an AUTH_CHECK chain or a mechanism step (the server's auth verdict mapping).
    std::string auth_result(const outcome& o, std::string_view login)
    {
        switch (o.verdict) {
        case ASIOSMTPD_ACCEPT: {
            authenticated_ = true;
            auth_login_ = o.identity.empty() ? std::string(login) : o.identity;
            const std::string r = finish(o, "235 2.7.0 Authentication successful");
            auth_end();
            return r;
        }
        case ASIOSMTPD_AUTH_CHALLENGE:
            ++auth_step_;
            return "334 " + base64_encode(o.challenge);
        case ASIOSMTPD_TEMPFAIL: {
            auth_end();
            return finish(o, "454 4.7.0 Temporary authentication failure");
        }
        case ASIOSMTPD_REJECT_CLOSE:
        case ASIOSMTPD_TEMPFAIL_CLOSE:
            auth_end();
            return finish(o, "");
        default: { // REJECT, or CONTINUE from every plugin
            std::string r = o.code ? finish(o, "") : "535 5.7.8 Authentication credentials invalid";
            auth_end();
            ++auth_failures_;
            if (h_->auth_max_failures != 0 && auth_failures_ >= h_->auth_max_failures) {
                r += "\n421 4.7.0 " + h_->hostname + " Error: too many failed authentication attempts";
                closed_ = true;
            }
            return r;
        }
        }
    }

    void auth_end()
    {
        auth_kind_ = auth_kind::none;
        auth_step_ = 0;
        auth_user_.clear();
    }

    static bool parse_path(std::string_view arg, std::string_view prefix, std::string& address,
                           std::vector<std::string>& params)
    {
        if (arg.size() < prefix.size() || detail::upper(arg.substr(0, prefix.size())) != prefix)
            return false;
        std::string_view rest = detail::trim(arg.substr(prefix.size()));
        std::string_view path;
        if (!rest.empty() && rest.front() == '<') {
            const std::size_t gt = rest.find('>');
            if (gt == std::string_view::npos)
                return false;
            path = rest.substr(1, gt - 1);
            rest = rest.substr(gt + 1);
        } else {
            const std::size_t sp = rest.find_first_of(" \t");
            path = rest.substr(0, sp);
            rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp);
        }
        address = path.empty() ? "<>" : std::string(path);
        rest = detail::trim(rest);
        while (!rest.empty()) {
            const std::size_t sp = rest.find_first_of(" \t"); // blanks and tabs separate, as in the server
            params.push_back(detail::upper(rest.substr(0, sp)));
            rest = sp == std::string_view::npos ? std::string_view() : detail::trim(rest.substr(sp));
        }
        return true;
    }

    std::string end_of_data()
    {
        data_replies_.clear();
        std::uint32_t flags = ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF;
        if (h_->decode_data)
            flags |= ASIOSMTPD_DATA_DECODED | (h_->enable_smtputf8 ? ASIOSMTPD_DATA_UTF8 : 0u);
        // aiosmtpd decode_data without SMTPUTF8 is strict ASCII. The server checks it as the
        // lines arrive and answers after the DATA_CHUNK pieces, before DATA.
        const bool non_ascii =
            h_->decode_data && !h_->enable_smtputf8 &&
            std::any_of(content_.begin(), content_.end(), [](char c) { return static_cast<unsigned char>(c) > 127; });
        std::optional<outcome> refused = stream(flags);
        if (!refused && non_ascii) {
            data_replies_.push_back("500 Error: strict ASCII mode"); // the envelope is kept,
            free_slots(ASIOSMTPD_SCOPE_TXN);                         // the message's slots end
            return data_replies_.back();
        }
        const outcome o = refused ? std::move(*refused) : deliver(flags);
        // LMTP (RFC 2033 §4.2): one reply per accepted recipient; set_rcpt_reply overrides one.
        const std::size_t due = h_->lmtp ? std::max<std::size_t>(rcpts_.size(), 1) : 1;
        const bool closes = o.verdict == ASIOSMTPD_REJECT_CLOSE || o.verdict == ASIOSMTPD_TEMPFAIL_CLOSE;
        outcome each = o;
        if (closes)
            each.verdict = o.verdict == ASIOSMTPD_REJECT_CLOSE ? ASIOSMTPD_REJECT : ASIOSMTPD_TEMPFAIL;
        std::string r;
        for (std::size_t i = 0; i < due; ++i) {
            std::string one;
            if (h_->lmtp && !o.plugin_error && i < o.rcpt_replies.size() && o.rcpt_replies[i].first != 0) {
                outcome single;
                single.verdict = ASIOSMTPD_ACCEPT;
                single.code = o.rcpt_replies[i].first;
                single.text = o.rcpt_replies[i].second;
                one = finish(single, "");
            } else {
                one = finish(each, "250 OK");
            }
            r += (i ? "\n" : "") + one;
            data_replies_.push_back(std::move(one));
        }
        reset_txn();
        if (closes)
            closed_ = true;
        return r;
    }

    // Whether DATA gets the message as DATA_CHUNK pieces only (ABI 1.2): some plugin takes
    // chunks and every DATA hook's plugin does too (else DATA gets the whole message).
    bool streams_message() const
    {
        const auto chunk_hooks = h_->hooks_.find(ASIOSMTPD_HOOK_DATA_CHUNK);
        if (chunk_hooks == h_->hooks_.end() || chunk_hooks->second.empty())
            return false;
        const auto data_hooks = h_->hooks_.find(ASIOSMTPD_HOOK_DATA);
        if (data_hooks == h_->hooks_.end())
            return true;
        return std::all_of(data_hooks->second.begin(), data_hooks->second.end(), [&](const detail::hook_entry& d) {
            return std::any_of(chunk_hooks->second.begin(), chunk_hooks->second.end(),
                               [&](const detail::hook_entry& c) { return c.inst == d.inst; });
        });
    }

    // The DATA_CHUNK pieces (ABI 1.2) as the server cuts them: every full host::data_chunk_size
    // piece, then the last one with the rest, flagged LAST_CHUNK and empty when the message is a
    // whole number of pieces. A refused piece (or a plugin error) ends the message: its outcome
    // answers it and nothing more runs. As in the server, the chain of a piece stops at the
    // first verdict other than CONTINUE, ACCEPT included.
    std::optional<outcome> stream(std::uint32_t flags)
    {
        const auto chunk_hooks = h_->hooks_.find(ASIOSMTPD_HOOK_DATA_CHUNK);
        if (chunk_hooks == h_->hooks_.end() || chunk_hooks->second.empty())
            return std::nullopt;
        const auto* content = reinterpret_cast<const std::uint8_t*>(content_.data());
        const std::size_t piece = std::max<std::size_t>(h_->data_chunk_size, 1);
        for (std::size_t at = 0;;) {
            const bool last = content_.size() - at < piece;
            const std::size_t n = last ? content_.size() - at : piece;
            asiosmtpd_data_args c{};
            c.struct_size = sizeof c;
            c.content = content + at;
            c.size = n;
            c.flags = flags | (last ? ASIOSMTPD_DATA_LAST_CHUNK : 0u);
            c.message_size = at + n;
            outcome o = run(ASIOSMTPD_HOOK_DATA_CHUNK, &c);
            if (o.verdict != ASIOSMTPD_CONTINUE && o.verdict != ASIOSMTPD_ACCEPT)
                return o;
            at += n;
            if (last)
                return std::nullopt;
        }
    }

    // The DATA chain, after the pieces: STREAMED without content, or the whole message.
    outcome deliver(std::uint32_t flags)
    {
        const auto* content = reinterpret_cast<const std::uint8_t*>(content_.data());
        const bool streamed = streams_message();
        asiosmtpd_data_args a{};
        a.struct_size = sizeof a;
        a.content = streamed ? nullptr : content;
        a.size = streamed ? 0 : content_.size();
        a.flags = flags | (streamed ? ASIOSMTPD_DATA_STREAMED : 0u);
        a.message_size = content_.size();
        return run(ASIOSMTPD_HOOK_DATA, &a);
    }

    void reset_txn()
    {
        in_txn_ = false;
        mail_from_.clear();
        params_.clear();
        rcpts_.clear();
        free_slots(ASIOSMTPD_SCOPE_TXN);
    }

    // Frees the slots of `scope` (0: all), calling the plugins' destructors.
    void free_slots(std::int32_t scope)
    {
        for (auto it = slots_.begin(); it != slots_.end();) {
            if (scope != 0 && it->first.second != scope) {
                ++it;
                continue;
            }
            const detail::slot s = it->second;
            it = slots_.erase(it);
            if (s.dtor && s.data)
                s.dtor(s.data);
        }
    }

    // The reply text for an outcome: the plugin's, or the default of its verdict.
    std::string finish(const outcome& o, const std::string& dflt)
    {
        std::string r;
        if (o.code != 0) {
            const std::string code = std::to_string(o.code);
            std::string_view t = o.text;
            for (;;) {
                const std::size_t nl = t.find('\n');
                r += code + (nl == std::string_view::npos ? " " : "-");
                r.append(t.substr(0, nl));
                if (nl == std::string_view::npos)
                    break;
                r += '\n';
                t.remove_prefix(nl + 1);
            }
        } else {
            switch (o.verdict) {
            case ASIOSMTPD_REJECT:
            case ASIOSMTPD_REJECT_CLOSE: r = "550 5.7.1 Rejected"; break;
            case ASIOSMTPD_TEMPFAIL: r = "451 4.7.1 Try again later"; break;
            case ASIOSMTPD_TEMPFAIL_CLOSE: r = "421 4.7.0 " + h_->hostname + " Service not available, closing transmission channel"; break;
            default: r = dflt;
            }
        }
        if (o.verdict == ASIOSMTPD_REJECT_CLOSE || o.verdict == ASIOSMTPD_TEMPFAIL_CLOSE)
            closed_ = true;
        return r;
    }

    // A plugin error, as the server handles it: 451 4.3.0 for the session and one log line
    // "warn plugin=<name> session=<id> event=plugin_error hook=<HOOK> reason="<why>"" (the
    // server's reason texts).
    outcome internal_error(detail::instance* inst, asiosmtpd_hook_id hook, const void* args, const std::string& why)
    {
        h_->write_log(inst, nullptr, ASIOSMTPD_LOG_WARN,
                      "session=" + std::to_string(id_) + " event=plugin_error hook=" + detail::hook_label(hook, args) +
                          " reason=\"" + why + "\"");
        outcome o{ASIOSMTPD_TEMPFAIL, 451, "4.3.0 Error: internal"};
        o.plugin_error = true;
        return o;
    }

    outcome run_one(const detail::hook_entry& e, asiosmtpd_hook_id hook, const void* args)
    {
        const auto fail = [&](const std::string& why) { return internal_error(e.inst, hook, args, why); };
        detail::call_state c;
        c.s = this;
        c.inst = e.inst;
        c.hook = hook;
        asiosmtpd_verdict v;
        {
            std::unique_lock<std::mutex> serial(e.inst->serial, std::defer_lock);
            if (!(e.inst->desc->flags & ASIOSMTPD_PF_THREAD_SAFE))
                serial.lock();
            v = e.fn(e.inst->self, reinterpret_cast<asiosmtpd_call*>(&c), args);
        }
        c.active = false;
        std::uint16_t code = c.code;
        std::string text = std::move(c.text);
        if (c.pending) {
            if (v != ASIOSMTPD_PENDING && hook != ASIOSMTPD_HOOK_SESSION_CLOSE) {
                std::lock_guard<std::mutex> reg(detail::token_registry::get().m);
                detail::token_registry::get().live.erase(c.token);
                return fail("suspended the call but returned a verdict");
            }
            // Suspended: complete() decides (a reply refused before suspend() no longer counts).
            std::unique_lock<std::mutex> lock(c.pending->m);
            if (!c.pending->cv.wait_for(lock, h_->hook_timeout, [&] { return c.pending->done; })) {
                c.pending->gone = true;
                lock.unlock();
                std::lock_guard<std::mutex> reg(detail::token_registry::get().m);
                detail::token_registry::get().live.erase(c.token);
                return fail("did not complete within " + std::to_string(h_->hook_timeout.count()) + " ms");
            }
            if (!c.pending->refused.empty())
                return fail(c.pending->refused);
            v = c.pending->verdict;
            code = c.pending->code;
            text = c.pending->text;
            for (std::size_t i = 0; i < c.pending->rcpt_replies.size(); ++i) {
                if (c.pending->rcpt_replies[i].first == 0)
                    continue;
                if (c.rcpt_replies.size() <= i)
                    c.rcpt_replies.resize(i + 1);
                c.rcpt_replies[i] = c.pending->rcpt_replies[i];
            }
            if (v == ASIOSMTPD_AUTH_CHALLENGE) {
                // From complete(), a challenge travels as the text (plugin.h).
                c.challenge = std::move(text);
                text.clear();
                code = 0;
            }
        } else if (v == ASIOSMTPD_PENDING && hook != ASIOSMTPD_HOOK_SESSION_CLOSE) {
            return fail("returned PENDING without suspend()");
        } else if (!c.refused_reply.empty() && hook != ASIOSMTPD_HOOK_SESSION_CLOSE) {
            // plugin.h set_reply(): a refused reply changes nothing, but the verdict given
            // without a later accepted one is a plugin error (not the verdict's default reply).
            return fail("set_reply() refused: " + c.refused_reply);
        } else if (!c.refused_rcpt_replies.empty() && hook != ASIOSMTPD_HOOK_SESSION_CLOSE) {
            // The same for a recipient's reply (plugin.h set_rcpt_reply): that recipient would
            // get the verdict's reply instead; the whole DATA is a plugin error.
            return fail(c.refused_rcpt_replies.front().second);
        }
        if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
            return outcome{};
        if (v == ASIOSMTPD_AUTH_CHALLENGE) {
            if (hook != detail::auth_mechanism_call)
                return fail("AUTH_CHALLENGE outside an AUTH mechanism");
        } else if (v < ASIOSMTPD_CONTINUE || v >= ASIOSMTPD_PENDING) {
            return fail("unknown verdict " + std::to_string(v));
        }
        if (v != ASIOSMTPD_AUTH_CHALLENGE) {
            const std::string problem = detail::verdict_problem(v, code, text);
            if (!problem.empty())
                return fail(problem);
        }
        if (v == ASIOSMTPD_CONTINUE)
            return outcome{}; // no opinion: a reply set on the way is ignored (as the server)
        outcome o{v, code, std::move(text)};
        o.challenge = std::move(c.challenge);
        o.identity = std::move(c.identity);
        o.rcpt_replies = std::move(c.rcpt_replies);
        return o;
    }

    host* h_ = nullptr;
    std::uint64_t id_ = 0;
    std::string peer_;
    std::uint16_t port_ = 0;
    std::string greeting_;
    std::string helo_;
    bool extended_ = false;
    bool in_txn_ = false;
    std::string mail_from_;
    std::vector<std::string> params_;
    std::vector<std::string> rcpts_;
    bool in_data_ = false;
    std::string content_;
    bool closed_ = false;
    std::map<std::pair<detail::instance*, std::int32_t>, detail::slot> slots_;
    bool tls_active_ = false;
    tls_params tls_;
    bool tls_vetoed_ = false;
    bool connect_rejected_ = false; // CONNECT REJECT: every command but QUIT gets 503
    bool authenticated_ = false;
    std::string auth_login_;
    auth_kind auth_kind_ = auth_kind::none;
    std::uint32_t auth_step_ = 0;
    std::string auth_user_;
    std::size_t auth_mech_ = 0;
    unsigned auth_failures_ = 0;
    std::vector<std::string> data_replies_;

    friend struct api_impl;
};

inline session host::open(std::string peer_address, std::uint16_t peer_port)
{
    return session(*this, next_session_++, std::move(peer_address), peer_port);
}

inline session host::open_tls(tls_params tls, std::string peer_address, std::uint16_t peer_port)
{
    return session(*this, next_session_++, std::move(peer_address), peer_port, nullptr, &tls);
}

inline session host::open(const proxy_header& proxy, std::string tcp_peer_address, std::uint16_t tcp_peer_port)
{
    return session(*this, next_session_++, std::move(tcp_peer_address), tcp_peer_port, &proxy);
}

inline std::uint64_t host::session_id_of(detail::call_state* c) { return c->s ? c->s->id_ : 0; }

// The host API functions. Each checks what the real host checks and reports the same codes.
struct api_impl {
    using call = asiosmtpd_call;
    static detail::registrar_state* rs(asiosmtpd_registrar* r) { return reinterpret_cast<detail::registrar_state*>(r); }
    static const node* nd(const asiosmtpd_cfg* n) { return reinterpret_cast<const node*>(n); }
    static const asiosmtpd_cfg* cfg(const node* n) { return reinterpret_cast<const asiosmtpd_cfg*>(n); }

    static asiosmtpd_status register_hook(asiosmtpd_registrar* reg, asiosmtpd_hook_id hook, asiosmtpd_hook_fn fn)
    {
        if (!reg || !fn)
            return ASIOSMTPD_E_INVALID;
        host* h = rs(reg)->owner;
        if (h->frozen_)
            return ASIOSMTPD_E_FROZEN;
        if (hook < ASIOSMTPD_HOOK_CONNECT || hook > ASIOSMTPD_HOOK_DATA_CHUNK)
            return ASIOSMTPD_E_UNSUPPORTED;
        h->hooks_[hook].push_back({rs(reg)->inst, fn});
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status register_command(asiosmtpd_registrar* reg, const asiosmtpd_command_desc* d)
    {
        if (!reg || !d || !d->handler)
            return ASIOSMTPD_E_INVALID;
        host* h = rs(reg)->owner;
        if (h->frozen_)
            return ASIOSMTPD_E_FROZEN;
        const std::string verb = detail::upper(detail::view(d->verb));
        if (verb.empty() || verb.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != std::string::npos)
            return ASIOSMTPD_E_INVALID;
        static const char* builtin[] = {"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT",
                                        "VRFY", "HELP", "AUTH", "STARTTLS", "EXPN", "BDAT"};
        for (const char* b : builtin)
            if (verb == b)
                return ASIOSMTPD_E_CONFLICT;
        for (const auto& c : h->commands_)
            if (c.verb == verb)
                return ASIOSMTPD_E_CONFLICT;
        h->commands_.push_back({verb, std::string(detail::view(d->help)), d->flags, {rs(reg)->inst, d->handler}});
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status register_ehlo_keyword(asiosmtpd_registrar* reg, asiosmtpd_str line)
    {
        if (!reg)
            return ASIOSMTPD_E_INVALID;
        host* h = rs(reg)->owner;
        if (h->frozen_)
            return ASIOSMTPD_E_FROZEN;
        const std::string_view l = detail::view(line);
        if (l.empty() || l.size() > 500 || l.find_first_of("\r\n") != std::string_view::npos)
            return ASIOSMTPD_E_INVALID;
        h->keywords_.emplace_back(l);
        return ASIOSMTPD_OK;
    }
    static const asiosmtpd_cfg* cfg_root(asiosmtpd_registrar* reg)
    {
        static const node null_node;
        return cfg(reg && !rs(reg)->owner->frozen_ ? rs(reg)->root : &null_node);
    }
    static std::int32_t cfg_kind(const asiosmtpd_cfg* n) { return n ? nd(n)->kind() : ASIOSMTPD_CFG_NULL; }
    static asiosmtpd_str cfg_scalar(const asiosmtpd_cfg* n)
    {
        return (n && nd(n)->kind() == ASIOSMTPD_CFG_SCALAR) ? detail::str(nd(n)->text()) : detail::str("");
    }
    static std::size_t cfg_size(const asiosmtpd_cfg* n)
    {
        if (!n || (nd(n)->kind() != ASIOSMTPD_CFG_MAP && nd(n)->kind() != ASIOSMTPD_CFG_SEQUENCE))
            return 0;
        return nd(n)->children().size();
    }
    static const asiosmtpd_cfg* cfg_at(const asiosmtpd_cfg* n, std::size_t i)
    {
        return i < cfg_size(n) ? cfg(&nd(n)->children()[i].second) : nullptr;
    }
    static asiosmtpd_str cfg_key_at(const asiosmtpd_cfg* n, std::size_t i)
    {
        if (!n || nd(n)->kind() != ASIOSMTPD_CFG_MAP || i >= nd(n)->children().size())
            return detail::str("");
        return detail::str(nd(n)->children()[i].first);
    }
    static const asiosmtpd_cfg* cfg_get(const asiosmtpd_cfg* n, asiosmtpd_str key)
    {
        if (!n || nd(n)->kind() != ASIOSMTPD_CFG_MAP)
            return nullptr;
        for (const auto& [k, v] : nd(n)->children())
            if (k == detail::view(key))
                return cfg(&v);
        return nullptr;
    }

    static asiosmtpd_status session_info(call* c, asiosmtpd_session_info* out)
    {
        if (!c || !out || out->struct_size < sizeof(std::uint32_t))
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        const session& s = *st->s;
        asiosmtpd_session_info full;
        std::memset(&full, 0, sizeof full);
        full.session_id = s.id_;
        full.peer_address = detail::str(s.peer_);
        full.peer_port = s.port_;
        full.helo_name = detail::str(s.helo_);
        full.extended_smtp = s.extended_ ? 1 : 0;
        full.tls_active = s.tls_active_ ? 1 : 0;
        full.authenticated = s.authenticated_ ? 1 : 0;
        full.tls_version = detail::str(s.tls_active_ ? std::string_view(s.tls_.version) : std::string_view());
        full.tls_cipher = detail::str(s.tls_active_ ? std::string_view(s.tls_.cipher) : std::string_view());
        full.tls_peer_subject = detail::str(s.tls_active_ ? std::string_view(s.tls_.peer_subject) : std::string_view());
        full.auth_login = detail::str(s.auth_login_);
        // The caller's capacity: a 1.0 plugin gets the 1.0 view.
        const std::size_t n = std::min<std::size_t>(out->struct_size, sizeof full);
        std::memcpy(out, &full, n);
        out->struct_size = static_cast<std::uint32_t>(n);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status txn_info(call* c, asiosmtpd_txn_info* out)
    {
        if (!c || !out || out->struct_size < sizeof(std::uint32_t))
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        const session& s = *st->s;
        asiosmtpd_txn_info full;
        std::memset(&full, 0, sizeof full);
        full.mail_from = detail::str(s.mail_from_);
        full.mail_param_count = s.params_.size();
        full.rcpt_count = s.rcpts_.size();
        const std::size_t n = std::min<std::size_t>(out->struct_size, sizeof full);
        std::memcpy(out, &full, n);
        out->struct_size = static_cast<std::uint32_t>(n);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status txn_rcpt_at(call* c, std::size_t i, asiosmtpd_str* out)
    {
        if (!c || !out)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        if (i >= st->s->rcpts_.size())
            return ASIOSMTPD_E_INVALID;
        *out = detail::str(st->s->rcpts_[i]);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status txn_mail_param_at(call* c, std::size_t i, asiosmtpd_str* out)
    {
        if (!c || !out)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        if (i >= st->s->params_.size())
            return ASIOSMTPD_E_INVALID;
        *out = detail::str(st->s->params_[i]);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status set_reply(call* c, std::uint16_t code, asiosmtpd_str text)
    {
        if (!c)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        // A refusal changes nothing but is remembered: unless a later set_reply() succeeds, the
        // hook's verdict (anything but PENDING) is a plugin error (run_one).
        std::string problem = detail::reply_problem(code, detail::view(text));
        if (!problem.empty()) {
            st->refused_reply = std::move(problem);
            return ASIOSMTPD_E_INVALID;
        }
        st->refused_reply.clear();
        st->code = code;
        st->text = std::string(detail::view(text));
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status slot_set(call* c, std::int32_t scope, void* data, void (*dtor)(void*))
    {
        if (!c || (scope != ASIOSMTPD_SCOPE_SESSION && scope != ASIOSMTPD_SCOPE_TXN))
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        detail::slot& s = st->s->slots_[{st->inst, scope}];
        const detail::slot old = s;
        s = detail::slot{data, dtor};
        if (old.dtor && old.data && old.data != data)
            old.dtor(old.data);
        return ASIOSMTPD_OK;
    }
    static void* slot_get(call* c, std::int32_t scope)
    {
        if (!c)
            return nullptr;
        detail::call_state* st = detail::cs(c);
        const auto it = st->s->slots_.find({st->inst, scope});
        return it == st->s->slots_.end() ? nullptr : it->second.data;
    }
    static asiosmtpd_status suspend(call* c, asiosmtpd_token* out)
    {
        if (!c || !out)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active || st->pending || st->hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
            return ASIOSMTPD_E_STATE;
        auto& reg = detail::token_registry::get();
        std::lock_guard<std::mutex> lock(reg.m);
        st->token = ++reg.last;
        st->pending = std::make_shared<detail::pending_state>();
        st->pending->hook = st->hook;
        if (st->hook == ASIOSMTPD_HOOK_DATA) {
            // From here on the per-recipient replies (and refusals) are the pending call's.
            st->pending->rcpt_count = st->s->rcpts_.size();
            st->pending->rcpt_replies = std::exchange(st->rcpt_replies, {});
            st->pending->refused_rcpt_replies = std::exchange(st->refused_rcpt_replies, {});
        }
        reg.live[st->token] = st->pending;
        *out = st->token;
        return ASIOSMTPD_OK;
    }
    // plugin.h complete(): PENDING is refused and the token stays valid; an unknown token is
    // E_INVALID, a finished one E_GONE; a verdict or reply the server cannot use, or a refused
    // per-recipient reply left, answers E_INVALID and ends the call at once as a plugin error.
    static asiosmtpd_status complete(asiosmtpd_token token, asiosmtpd_verdict v, std::uint16_t code, asiosmtpd_str text)
    {
        if (v == ASIOSMTPD_PENDING)
            return ASIOSMTPD_E_INVALID;
        std::shared_ptr<detail::pending_state> p;
        {
            auto& reg = detail::token_registry::get();
            std::lock_guard<std::mutex> lock(reg.m);
            const auto it = reg.live.find(token);
            if (it == reg.live.end())
                return (token == 0 || token > reg.last) ? ASIOSMTPD_E_INVALID : ASIOSMTPD_E_GONE;
            p = it->second;
            reg.live.erase(it);
        }
        std::lock_guard<std::mutex> lock(p->m);
        if (p->gone)
            return ASIOSMTPD_E_GONE;
        std::string problem;
        if (v == ASIOSMTPD_AUTH_CHALLENGE) {
            // The challenge travels as the text; the code is ignored.
            if (p->hook != detail::auth_mechanism_call)
                problem = "AUTH_CHALLENGE outside an AUTH mechanism";
            else if (text.size > 700)
                problem = "AUTH challenge of " + std::to_string(text.size) + " bytes (at most 700)";
        } else if (v < ASIOSMTPD_CONTINUE || v > ASIOSMTPD_AUTH_CHALLENGE) {
            problem = "unknown verdict " + std::to_string(v);
        } else if (code != 0) {
            problem = detail::verdict_problem(v, code, detail::view(text));
        }
        if (!problem.empty())
            problem = "complete() refused: " + problem;
        else if (!p->refused_rcpt_replies.empty())
            problem = std::move(p->refused_rcpt_replies.front().second);
        const bool refused = !problem.empty();
        if (refused) {
            p->refused = std::move(problem);
            p->rcpt_replies.clear();
        } else {
            p->verdict = v;
            p->code = code;
            p->text = std::string(detail::view(text));
        }
        p->done = true;
        p->cv.notify_all();
        return refused ? ASIOSMTPD_E_INVALID : ASIOSMTPD_OK;
    }
    // ---- ABI 1.1 ----
    static asiosmtpd_status register_auth_mechanism(asiosmtpd_registrar* reg, asiosmtpd_str name, asiosmtpd_hook_fn fn)
    {
        if (!reg || !fn)
            return ASIOSMTPD_E_INVALID;
        host* h = rs(reg)->owner;
        if (h->frozen_)
            return ASIOSMTPD_E_FROZEN;
        const std::string n = detail::upper(detail::view(name));
        // RFC 4954 / RFC 4422 SASL names: [A-Z0-9_-]+, at most 20 characters.
        if (n.empty() || n.size() > 20 ||
            n.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != std::string::npos)
            return ASIOSMTPD_E_INVALID;
        if (n == "PLAIN" || n == "LOGIN")
            return ASIOSMTPD_E_CONFLICT;
        for (const auto& m : h->mechanisms_)
            if (m.name == n)
                return ASIOSMTPD_E_CONFLICT;
        h->mechanisms_.push_back({n, {rs(reg)->inst, fn}});
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status set_auth_challenge(call* c, asiosmtpd_str challenge)
    {
        detail::call_state* st = c ? detail::cs(c) : nullptr;
        if (!st || !st->active || st->hook != detail::auth_mechanism_call)
            return ASIOSMTPD_E_STATE;
        if (challenge.size > 700) // the 334 line must fit 1001 bytes once base64-encoded
            return ASIOSMTPD_E_INVALID;
        st->challenge = std::string(detail::view(challenge));
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status set_auth_identity(call* c, asiosmtpd_str login)
    {
        if (!c || !detail::cs(c)->active)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (st->hook != detail::auth_mechanism_call && st->hook != ASIOSMTPD_HOOK_AUTH_CHECK)
            return ASIOSMTPD_E_STATE;
        const std::string_view l = detail::view(login);
        if (l.size() > 512 || l.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
            return ASIOSMTPD_E_INVALID;
        st->identity = std::string(l);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_str config_dir(asiosmtpd_registrar* reg)
    {
        if (!reg || rs(reg)->owner->frozen_)
            return detail::str("");
        return detail::str(rs(reg)->owner->config_dir);
    }
    static asiosmtpd_status set_rcpt_reply(call* c, std::size_t index, std::uint16_t code, asiosmtpd_str text)
    {
        if (!c || !detail::cs(c)->active)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (st->hook != ASIOSMTPD_HOOK_DATA)
            return ASIOSMTPD_E_STATE;
        if (st->pending) {
            // Suspended already: the replies are the pending call's (suspend()); complete() decides.
            std::lock_guard<std::mutex> lock(st->pending->m);
            if (st->pending->done || st->pending->gone)
                return ASIOSMTPD_E_GONE;
            return detail::put_rcpt_reply(st->pending->rcpt_replies, st->pending->refused_rcpt_replies,
                                          st->pending->rcpt_count, "set_rcpt_reply", index, code, detail::view(text));
        }
        return detail::put_rcpt_reply(st->rcpt_replies, st->refused_rcpt_replies, st->s->rcpts_.size(),
                                      "set_rcpt_reply", index, code, detail::view(text));
    }
    static asiosmtpd_status set_rcpt_reply_pending(asiosmtpd_token token, std::size_t index, std::uint16_t code,
                                                   asiosmtpd_str text)
    {
        std::shared_ptr<detail::pending_state> p;
        {
            auto& reg = detail::token_registry::get();
            std::lock_guard<std::mutex> lock(reg.m);
            const auto it = reg.live.find(token);
            if (it == reg.live.end())
                return (token == 0 || token > reg.last) ? ASIOSMTPD_E_INVALID : ASIOSMTPD_E_GONE;
            p = it->second;
        }
        std::lock_guard<std::mutex> lock(p->m);
        if (p->gone || p->done)
            return ASIOSMTPD_E_GONE;
        if (p->hook != ASIOSMTPD_HOOK_DATA)
            return ASIOSMTPD_E_STATE;
        return detail::put_rcpt_reply(p->rcpt_replies, p->refused_rcpt_replies, p->rcpt_count,
                                      "set_rcpt_reply_pending", index, code, detail::view(text));
    }

    static void log(asiosmtpd_ctx* ctx, call* c, std::int32_t level, asiosmtpd_str m)
    {
        auto* inst = reinterpret_cast<detail::instance*>(ctx);
        if (!inst || !inst->owner)
            return;
        detail::call_state* st = c ? detail::cs(c) : nullptr;
        inst->owner->write_log(inst, (st && st->active) ? st : nullptr, level, detail::view(m));
    }
};

inline void host::init_api()
{
    api_.struct_size = static_cast<std::uint32_t>(sizeof api_); // the whole current table
    api_.abi_major = ASIOSMTPD_ABI_MAJOR;
    api_.abi_minor = ASIOSMTPD_ABI_MINOR;
    api_.host_version = detail::str("testkit");
    api_.register_hook = &api_impl::register_hook;
    api_.register_command = &api_impl::register_command;
    api_.register_ehlo_keyword = &api_impl::register_ehlo_keyword;
    api_.cfg_root = &api_impl::cfg_root;
    api_.cfg_kind = &api_impl::cfg_kind;
    api_.cfg_scalar = &api_impl::cfg_scalar;
    api_.cfg_size = &api_impl::cfg_size;
    api_.cfg_at = &api_impl::cfg_at;
    api_.cfg_key_at = &api_impl::cfg_key_at;
    api_.cfg_get = &api_impl::cfg_get;
    api_.session_info = &api_impl::session_info;
    api_.txn_info = &api_impl::txn_info;
    api_.txn_rcpt_at = &api_impl::txn_rcpt_at;
    api_.txn_mail_param_at = &api_impl::txn_mail_param_at;
    api_.set_reply = &api_impl::set_reply;
    api_.slot_set = &api_impl::slot_set;
    api_.slot_get = &api_impl::slot_get;
    api_.suspend = &api_impl::suspend;
    api_.complete = &api_impl::complete;
    api_.log = &api_impl::log;
    api_.register_auth_mechanism = &api_impl::register_auth_mechanism;
    api_.set_auth_challenge = &api_impl::set_auth_challenge;
    api_.set_auth_identity = &api_impl::set_auth_identity;
    api_.config_dir = &api_impl::config_dir;
    api_.set_rcpt_reply = &api_impl::set_rcpt_reply;
    api_.set_rcpt_reply_pending = &api_impl::set_rcpt_reply_pending;
}

} // namespace asiosmtpd::testkit

#endif // ASIOSMTPD_TESTKIT_HPP
