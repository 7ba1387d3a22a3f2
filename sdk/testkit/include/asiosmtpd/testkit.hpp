// SPDX-License-Identifier: Apache-2.0
/*
 * asiosmtpd/testkit.hpp - unit-testing plugins with the server's own engine, without sockets.
 *
 * C++17, for plugin authors' unit tests (GoogleTest or any other framework; the kit itself
 * throws testkit::error and never depends on a test framework). Link asiosmtpd::testkit
 * (CMake) or -lasiosmtpd_core (pkg-config asiosmtpd-sdk --libs). It loads a plugin (a .so
 * through dlopen, or an entry function linked into the test), calls create() with a config
 * tree you build in code, and drives its hooks through a scripted SMTP conversation:
 *
 *     asiosmtpd::testkit::host h;
 *     h.load("build/ping.so");                      // or h.load(path, node::map({...}))
 *     auto s = h.open();                             // runs CONNECT; s.greeting() is the 220
 *     EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n"
 *                                             "250-8BITMIME\n250 HELP");
 *     EXPECT_EQ(s.cmd("PING"), "259 Pong");
 *     EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: x\r\n\r\nhi\r\n"), "250 OK");
 *
 * What it is: the server itself minus the sockets. The kit links the server's core library
 * (libasiosmtpd_core.a): the SMTP/LMTP engine that answers every command on the wire, the
 * hook chain that calls the plugins and judges every verdict and reply, and the host function
 * table of plugin.h (ABI 1.3) that plugins call. Each cmd() line goes into the engine as the
 * client's bytes (with CRLF); each hook the engine asks for runs through the chain as in the
 * server's sessions; a suspended call is waited for (up to host::hook_timeout) inside the
 * cmd() that triggered it, and complete() may come from any thread. So the replies, their
 * order and every check (address syntax, SIZE, line and call limits, require_starttls, AUTH,
 * the unknown-command budget, LMTP, DATA_CHUNK streaming, plugin errors and their 451 4.3.0)
 * are the server's, with the settings below (the server's config keys of the same names).
 *  - Logs: what plugins log() and the plugin_error lines, as "<level> session=<id>
 *    plugin=<name> <message>" (host::logs(), host::logged()).
 *  - AUTH: `s.auth("PLAIN", user, password)`, `s.auth("LOGIN", ...)`, or any mechanism with
 *    `s.sasl("X-MECH", {answers...})`; or by hand with cmd("AUTH ...") and base64 lines.
 *  - TLS: `s.tls({"TLSv1.3", "TLS_AES_256_GCM_SHA384", subject})` (or cmd("STARTTLS") with
 *    host::starttls_available) pretends a STARTTLS handshake succeeded: the session forgets
 *    HELO, AUTH and the transaction and runs the STARTTLS chain; `h.open_tls(...)` is an
 *    implicit-TLS connection. No TLS bytes: the handshake's results are what session_info()
 *    reports.
 *  - PROXY: `h.open(testkit::proxy_header{...})` gives the header as the server's parser
 *    would have read it (no bytes are parsed); the PROXY chain runs before CONNECT.
 *  - LMTP: with host::lmtp, LHLO replaces HELO/EHLO and the end of DATA answers one reply per
 *    recipient, joined by '\n' (data_replies()).
 * Replies are returned without CRLF, lines of a multi-line reply joined by '\n'; where the
 * server sends several replies at once (LMTP DATA, a 535 followed by the 421 of
 * auth_max_failures, a refused STARTTLS session's close) they are joined by '\n' too.
 * Not there: sockets and timers (no idle or data-rate timeouts, no auth_failure_delay), real
 * TLS, PROXY header bytes, reloads, metrics.
 */
#ifndef ASIOSMTPD_TESTKIT_HPP
#define ASIOSMTPD_TESTKIT_HPP

#include <asiosmtpd/plugin.h>
#include <asiosmtpd/testkit_core.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::testkit {

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
    if (in == "=") return std::string();
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
            if (pad > 0) return std::nullopt;
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

class session;

// ------------------------------------------------------------------------------------------
// host: loads plugins into a chain (in load order) and opens sessions. Its settings are the
// server's config keys of the same names (core::settings, inherited as public members):
//   hostname ("mx.test.example"), ident ("asiosmtpd-testkit"), data_size_limit (33554432;
//   0: SIZE without a number, no limit), command_size_limit (512), hook_timeout (5 s: how
//   long a suspended hook may take before 451 4.3.0), lmtp, starttls_available,
//   require_starttls, auth_require_tls (true), auth_required, auth_max_failures (3; 0: no
//   limit), decode_data, enable_smtputf8, advertise_pipelining, enable_dsn,
//   enable_enhanced_status_codes, enable_chunking (BDAT: send() its octets),
//   call_limit_enabled / call_limits / call_limit_default (command_call_limit),
//   data_chunk_size (64 KiB: the DATA_CHUNK pieces), spool_threshold / spool_directory (ABI
//   1.3: where a message is held for the plugins after an editor), tls_defaults (what
//   cmd("STARTTLS") negotiates).
// A session reads them at each command: a test may change them between two cmd() calls.
// ------------------------------------------------------------------------------------------
class host : public core::settings {
public:
    /// What config_dir() answers during create() (the folder of the server's config file).
    std::string config_dir = current_dir();

    host() = default;
    host(const host&) = delete;
    host& operator=(const host&) = delete;
    /// Destroys the instances in reverse load order, then unloads their libraries (T7).
    ~host() = default;

    /// Load the plugin file at `path` (dlopen RTLD_NOW | RTLD_LOCAL) and create an instance
    /// with `config`. Throws testkit::error with the reason the real host would give.
    void load(const std::string& path, const node& config = node()) { core_.load(path, config, config_dir); }
    /// Create an instance from an entry function linked into the test program (a plugin built
    /// as a static or object library next to its test).
    void add(asiosmtpd_entry_fn entry, const node& config = node()) { core_.add(entry, config, config_dir); }
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
    /// header's client when it names one: PROXY command, INET or INET6); a refusal closes the
    /// session without any reply (greeting() empty, closed() true). Otherwise CONNECT and the
    /// greeting follow.
    session open(const proxy_header& proxy, std::string tcp_peer_address = "192.0.2.254",
                 std::uint16_t tcp_peer_port = 50000);

    /// The AUTH mechanisms plugins registered (upper case), in registration order.
    std::vector<std::string> auth_mechanisms() const { return core_.auth_mechanisms(); }
    /// The verbs plugins registered (upper-case), in registration order.
    std::vector<std::string> commands() const { return core_.commands(); }
    /// The EHLO keyword lines plugins registered.
    const std::vector<std::string>& ehlo_keywords() const noexcept { return core_.ehlo_keywords(); }
    /// How many plugins have a handler in the chain of `hook`.
    std::size_t hook_count(asiosmtpd_hook_id hook) const { return core_.hook_count(hook); }
    /// Every line logged so far: "<level> [session=<id> ]plugin=<name> <message>".
    std::vector<std::string> logs() const { return core_.logs(); }
    /// Whether some log line contains `text`.
    bool logged(std::string_view text) const
    {
        const std::vector<std::string> all = logs();
        return std::any_of(all.begin(), all.end(),
                           [&](const std::string& l) { return l.find(text) != std::string::npos; });
    }
    /// The table handed to plugins (for tests that call a plugin's create() themselves).
    const asiosmtpd_host_api* api() const noexcept { return core_.api(); }

private:
    static std::string current_dir()
    {
        std::vector<char> buf(4096);
        return getcwd(buf.data(), buf.size()) ? std::string(buf.data()) : std::string("/");
    }

    core::host_core core_;
    friend class session;
};

// ------------------------------------------------------------------------------------------
// session: one SMTP conversation. Move-only; its end (destructor or close()) runs the
// SESSION_CLOSE chain and frees the data slots.
// ------------------------------------------------------------------------------------------
class session {
public:
    session(session&&) noexcept = default;
    session& operator=(session&&) noexcept = default;
    ~session() = default;

    /// The 220 greeting (or what the CONNECT chain answered).
    const std::string& greeting() const { return c().greeting(); }
    /// True after QUIT or a closing reply (a *_CLOSE verdict, auth_max_failures, ...).
    bool closed() const { return c().closed(); }
    std::uint64_t id() const { return c().id(); }

    /// Send one line (CRLF is added) and get the reply, lines joined by '\n'. After a "354" to
    /// DATA, each cmd() is a message line (dot-stuffed as on the wire: "." ends the message).
    std::string cmd(std::string_view line)
    {
        std::string wire(line);
        wire += "\r\n";
        return c().send(wire);
    }
    /// Raw client bytes (several lines, pipelining, no CRLF at all...); the replies they caused.
    std::string send(std::string_view bytes) { return c().send(bytes); }

    /// DATA with `content` as the message (CRLF line ends, not dot-stuffed: the kit does that,
    /// and ends the last line with CRLF when it has none, as a client must). Returns the final
    /// reply, or the refusal of DATA itself.
    std::string data(std::string_view content)
    {
        const std::string r = cmd("DATA");
        if (r.compare(0, 3, "354") != 0) return r;
        std::string wire;
        wire.reserve(content.size() + content.size() / 64 + 8);
        bool line_start = true;
        for (const char ch : content) {
            if (line_start && ch == '.') wire += '.';
            wire += ch;
            line_start = ch == '\n';
        }
        if (!content.empty() && (content.size() < 2 || content.substr(content.size() - 2) != "\r\n")) wire += "\r\n";
        wire += ".\r\n";
        return c().send(wire);
    }

    /// MAIL FROM, each RCPT TO and DATA; returns the first reply that is not 2xx/3xx, or the
    /// reply to the message. Sends EHLO (LHLO with host::lmtp) first when the session has not
    /// greeted yet.
    std::string send_mail(std::string_view from, std::initializer_list<std::string_view> to, std::string_view content)
    {
        if (helo_name().empty()) {
            const std::string r = cmd(lmtp_ ? "LHLO client.example" : "EHLO client.example");
            if (r.empty() || r[0] != '2') return r;
        }
        std::string r = cmd("MAIL FROM:<" + std::string(from) + ">");
        if (r.empty() || r[0] != '2') return r;
        for (std::string_view t : to) {
            r = cmd("RCPT TO:<" + std::string(t) + ">");
            if (r.empty() || r[0] != '2') return r;
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
        std::string mech(mechanism);
        for (char& ch : mech)
            if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
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
            if (r != "334 UGFzc3dvcmQ6") return r;
            return cmd(password.empty() ? std::string("=") : base64_encode(password));
        }
        throw error("session::auth(): PLAIN or LOGIN; use sasl() for other mechanisms");
    }

    /// A SASL exchange: "AUTH <mechanism>" (with answers[0] as the initial response when
    /// `initial_response`), then each further answer (base64-encoded) to each 334 challenge;
    /// "*" (abort) when a challenge comes and no answer is left. Returns the decoded challenges
    /// and the final reply.
    sasl_result sasl(std::string_view mechanism, std::vector<std::string> answers = {}, bool initial_response = false)
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
            const auto decoded = base64_decode(std::string_view(r).substr(4));
            out.challenges.push_back(decoded ? *decoded : r.substr(4));
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

    /// Pretend a STARTTLS handshake just succeeded with `params`, whether the listener offers
    /// STARTTLS or not (cmd("STARTTLS") answers as the server with host::starttls_available):
    /// the session forgets HELO, AUTH and the transaction (RFC 3207 §4.2) and runs the STARTTLS
    /// chain. Returns what the server sent after the handshake: "", or a closing reply. A
    /// STARTTLS hook's REJECT/TEMPFAIL makes every later command but QUIT answer "554 Command
    /// refused due to lack of security". Throws when TLS is active already or the session
    /// refuses STARTTLS itself (after a refused CONNECT, say).
    std::string tls(tls_params params = {}) { return c().starttls(params); }

    /// The replies to the last end of DATA: one, or with host::lmtp one per recipient.
    const std::vector<std::string>& data_replies() const { return c().data_replies(); }
    bool tls_active() const { return c().tls_active(); }
    bool authenticated() const { return c().authenticated(); }
    /// The authenticated identity (set_auth_identity(), else the login); empty before AUTH.
    const std::string& auth_login() const { return c().auth_login(); }

    /// End the session: runs SESSION_CLOSE (verdict ignored) and frees every slot.
    void close()
    {
        if (core_) core_->close();
    }

    /// Run a hook chain directly with hand-made args (for hooks the conversation does not
    /// reach, or to test a handler in isolation). The session's state is not changed.
    outcome run(asiosmtpd_hook_id hook, const void* args) { return c().run(hook, args); }

    // Read-only state, as the host API reports it to plugins.
    const std::string& helo_name() const { return c().helo_name(); }
    const std::string& mail_from() const { return c().mail_from(); }
    const std::vector<std::string>& rcpts() const { return c().rcpts(); }

private:
    friend class host;
    session(host& h, std::string peer, std::uint16_t port, const proxy_header* proxy, const tls_params* tls)
        : core_(std::make_unique<core::session_core>(h.core_, h, std::move(peer), port, proxy, tls)),
          lmtp_(h.lmtp)
    {}
    core::session_core& c() const
    {
        if (!core_) throw error("session: moved from");
        return *core_;
    }

    std::unique_ptr<core::session_core> core_;
    bool lmtp_ = false;
};

inline session host::open(std::string peer_address, std::uint16_t peer_port)
{
    return session(*this, std::move(peer_address), peer_port, nullptr, nullptr);
}

inline session host::open_tls(tls_params tls, std::string peer_address, std::uint16_t peer_port)
{
    return session(*this, std::move(peer_address), peer_port, nullptr, &tls);
}

inline session host::open(const proxy_header& proxy, std::string tcp_peer_address, std::uint16_t tcp_peer_port)
{
    return session(*this, std::move(tcp_peer_address), tcp_peer_port, &proxy, nullptr);
}

}  // namespace asiosmtpd::testkit

#endif
