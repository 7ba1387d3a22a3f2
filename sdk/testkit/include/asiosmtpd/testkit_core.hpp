// SPDX-License-Identifier: Apache-2.0
/*
 * asiosmtpd/testkit_core.hpp - the test kit's data types and its narrow driver API over the
 * server's own core (libasiosmtpd_core.a: the SMTP engine, the hook chain, the host function
 * table). C++17; the core itself is built in C++20 and reached only through the two pimpl
 * classes below. Plugin tests use testkit.hpp, which includes this header.
 */
#ifndef ASIOSMTPD_TESTKIT_CORE_HPP
#define ASIOSMTPD_TESTKIT_CORE_HPP

#include <asiosmtpd/plugin.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
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
        for (const node& i : items) n.children_.emplace_back(std::string(), i);
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

/// The outcome of one hook chain (session::run()): what the server decides.
struct outcome {
    outcome() = default;
    outcome(asiosmtpd_verdict v, std::uint16_t c = 0, std::string t = {}) : verdict(v), code(c), text(std::move(t)) {}

    asiosmtpd_verdict verdict = ASIOSMTPD_CONTINUE;  ///< the verdict that stopped the chain
    std::uint16_t code = 0;                          ///< 0: the plugin set no reply
    std::string text;
    // ---- ABI 1.1 ----
    std::string challenge;  ///< AUTH_CHALLENGE: the raw challenge bytes (set_auth_challenge or complete's text)
    std::string identity;   ///< set_auth_identity()
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies;  ///< LMTP: per recipient; code 0 = none
    /// The chain ended in a plugin error (unknown verdict, refused reply, timeout, ...): the
    /// server's "451 4.3.0 Error: internal" (verdict TEMPFAIL, code 451 here). At CONNECT the
    /// server answers 421 and closes instead; in DATA no per-recipient reply goes out.
    bool plugin_error = false;
};

/// What tls() / open_tls() pretend the handshake negotiated (session_info's 1.1 fields).
struct tls_params {
    std::string version = "TLSv1.3";
    std::string cipher = "TLS_AES_256_GCM_SHA384";
    std::string peer_subject;  ///< a client certificate's subject (RFC 2253); empty: none
};

/// A PROXY protocol header as the server would have parsed it (asiosmtpd_proxy_args).
struct proxy_header {
    std::int32_t version = 2;   ///< 1 or 2
    std::int32_t command = 1;   ///< v2: 0 LOCAL, 1 PROXY
    std::int32_t family = 1;    ///< 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX
    std::int32_t protocol = 1;  ///< 0 UNSPEC, 1 STREAM, 2 DGRAM
    std::string src_address;    ///< the client (PROXY command, INET/INET6: the session's peer)
    std::uint16_t src_port = 0;
    std::string dst_address;
    std::uint16_t dst_port = 0;
    std::string tlvs;  ///< raw v2 TLV bytes (type, 2-byte length, value; repeated)
};

namespace core {

/// The server settings a session runs with (the server's config keys of the same names);
/// testkit::host holds them as its public members.
struct settings {
    std::string hostname = "mx.test.example";
    /// After the hostname in the 220 greeting (the server's `ident`; its default there is
    /// "asiosmtpd <version>", here a text that does not change with releases).
    std::string ident = "asiosmtpd-testkit";
    std::uint64_t data_size_limit = 33554432;
    std::size_t command_size_limit = 512;
    std::chrono::milliseconds hook_timeout{5000};
    bool lmtp = false;
    bool starttls_available = false;
    bool require_starttls = false;
    bool auth_require_tls = true;
    bool auth_required = false;
    unsigned auth_max_failures = 3;
    bool decode_data = false;
    bool enable_smtputf8 = false;
    bool advertise_pipelining = false;
    bool enable_dsn = false;                    ///< DSN (RFC 3461): RET, ENVID, NOTIFY, ORCPT
    bool enable_enhanced_status_codes = false;  ///< ENHANCEDSTATUSCODES (RFC 2034)
    bool enable_chunking = false;               ///< server.enable_chunking: CHUNKING, BINARYMIME, BDAT
    /// command_call_limit: off, or per-verb budgets (upper case) and a default for the rest.
    bool call_limit_enabled = false;
    std::map<std::string, std::uint32_t> call_limits;
    std::uint32_t call_limit_default = 20;
    std::size_t data_chunk_size = 64 * 1024;
    /// ABI 1.3: a message held for the plugins after an editor goes to a file beyond this
    /// many bytes, in this folder ("": $TMPDIR, else /tmp).
    std::uint64_t spool_threshold = 1024 * 1024;
    std::string spool_directory;
    tls_params tls_defaults;
};

/// The plugins of one kit host: loaded into the server's own generation and host API table.
class host_core {
public:
    host_core();
    ~host_core();  ///< destroys the instances in reverse load order, then closes their files
    host_core(const host_core&) = delete;
    host_core& operator=(const host_core&) = delete;

    /// dlopen(RTLD_NOW | RTLD_LOCAL) and create(); throws error.
    void load(const std::string& path, const node& config, const std::string& config_dir);
    /// create() from an entry function linked into the test; throws error.
    void add(asiosmtpd_entry_fn entry, const node& config, const std::string& config_dir);

    std::vector<std::string> auth_mechanisms() const;
    std::vector<std::string> commands() const;
    const std::vector<std::string>& ehlo_keywords() const noexcept;
    std::size_t hook_count(asiosmtpd_hook_id hook) const;
    std::vector<std::string> logs() const;
    const asiosmtpd_host_api* api() const noexcept;

    struct impl;

private:
    friend class session_core;
    std::unique_ptr<impl> impl_;
};

/// One session: the server's engine fed with bytes, its hook requests run through the
/// server's chain (suspended calls waited for up to settings::hook_timeout).
class session_core {
public:
    /// Runs the PROXY chain (with `proxy`), then CONNECT and the greeting. `s` (the kit host's
    /// settings) outlives the session and is read again at each send() and starttls().
    session_core(host_core& h, const settings& s, std::string peer_address, std::uint16_t peer_port,
                 const proxy_header* proxy, const tls_params* tls);
    ~session_core();  ///< close()
    session_core(const session_core&) = delete;
    session_core& operator=(const session_core&) = delete;

    /// Client bytes in; the replies they caused out, CRLF turned into '\n', without the last.
    std::string send(std::string_view bytes);
    /// A STARTTLS whatever the listener offers, and a successful handshake with `params`.
    std::string starttls(const tls_params& params);
    /// One hook chain with hand-made arguments; the session's state is not changed.
    outcome run(asiosmtpd_hook_id hook, const void* args);
    /// SESSION_CLOSE, then every slot freed; later calls throw.
    void close();

    std::uint64_t id() const noexcept;
    const std::string& greeting() const noexcept;
    bool closed() const noexcept;
    bool reading_data() const noexcept;
    bool tls_active() const noexcept;
    bool authenticated() const noexcept;
    const std::string& auth_login() const noexcept;
    const std::string& helo_name() const noexcept;
    const std::string& mail_from() const noexcept;
    const std::vector<std::string>& rcpts() const noexcept;
    /// The replies to the last end of DATA: one, or with LMTP one per recipient.
    const std::vector<std::string>& data_replies() const noexcept;

    struct impl;

private:
    std::unique_ptr<impl> impl_;
};

}  // namespace core
}  // namespace asiosmtpd::testkit

#endif
