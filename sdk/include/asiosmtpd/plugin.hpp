// SPDX-License-Identifier: Apache-2.0
/*
 * asiosmtpd/plugin.hpp - header-only C++17 convenience layer over asiosmtpd/plugin.h.
 *
 * Compiled INTO the plugin: nothing declared here crosses the ABI, so this header may change
 * with every SDK release while plugin.h stays stable. What it guarantees:
 *  - no exception ever crosses the C ABI: hook trampolines and create() catch everything;
 *    a hook that throws is logged through host->log and answers 451 4.3.0 Error: internal;
 *  - a suspended hook completes exactly once: `pending` completes in its destructor if the
 *    plugin dropped it (451 4.3.0 Error: internal);
 *  - no global mutable state: the host table and ctx live in the instance the host holds.
 *
 * A plugin is a class constructible from `registrar&`; its constructor reads the config and
 * registers member functions; ASIOSMTPD_PLUGIN() defines the entry symbol:
 *
 *     class ping {
 *     public:
 *         explicit ping(asiosmtpd::sdk::registrar& reg)
 *         {
 *             reg.command<&ping::on_ping>("PING", "PING");
 *         }
 *         asiosmtpd::sdk::verdict on_ping(asiosmtpd::sdk::call& c,
 *                                         const asiosmtpd::sdk::command_args&)
 *         {
 *             return c.accept(259, "Pong");
 *         }
 *     };
 *     ASIOSMTPD_PLUGIN(ping, "ping", "1.0.0", "PING answers 259 Pong", ASIOSMTPD_PF_THREAD_SAFE)
 *
 * Threads and lifetimes follow plugin.h (T1-T7): the constructor and destructor run on the
 * host's control thread; handlers run on worker threads (concurrently for different sessions
 * only with ASIOSMTPD_PF_THREAD_SAFE); a `call` and every string_view it hands out die when
 * the handler returns; `config` nodes die when the constructor returns; `pending::complete()`
 * and `logger` may be used from any thread until the plugin's destructor has returned. The
 * destructor must stop and join every thread the plugin started (T7).
 */
#ifndef ASIOSMTPD_PLUGIN_HPP
#define ASIOSMTPD_PLUGIN_HPP

#include <asiosmtpd/plugin.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace asiosmtpd::sdk {

// ------------------------------------------------------------------------------------------
// Vocabulary
// ------------------------------------------------------------------------------------------

/// What a handler returns (plugin.h "What a hook returns").
enum class verdict : asiosmtpd_verdict {
    continue_ = ASIOSMTPD_CONTINUE,             ///< no opinion: next plugin, then the host default
    accept = ASIOSMTPD_ACCEPT,                  ///< accept and stop the chain
    reject = ASIOSMTPD_REJECT,                  ///< 5xx, stop the chain
    tempfail = ASIOSMTPD_TEMPFAIL,              ///< 4xx, stop the chain
    reject_close = ASIOSMTPD_REJECT_CLOSE,      ///< 5xx, then the host closes the connection
    tempfail_close = ASIOSMTPD_TEMPFAIL_CLOSE,  ///< 4xx (default 421), then close
    pending = ASIOSMTPD_PENDING,                ///< only after call::suspend()
    auth_challenge = ASIOSMTPD_AUTH_CHALLENGE,  ///< ABI 1.1, AUTH mechanisms: see call::challenge()
};

/// Hook points. `command` is not a C hook id: it marks the handler of a registered command.
/// `other` marks a hook id this header does not know (a newer host); such a hook can only
/// take a handler without arguments.
enum class hook : asiosmtpd_hook_id {
    other = -1,
    command = 0,
    connect = ASIOSMTPD_HOOK_CONNECT,
    helo = ASIOSMTPD_HOOK_HELO,
    ehlo = ASIOSMTPD_HOOK_EHLO,
    mail = ASIOSMTPD_HOOK_MAIL,
    rcpt = ASIOSMTPD_HOOK_RCPT,
    data = ASIOSMTPD_HOOK_DATA,
    rset = ASIOSMTPD_HOOK_RSET,
    noop = ASIOSMTPD_HOOK_NOOP,
    quit = ASIOSMTPD_HOOK_QUIT,
    vrfy = ASIOSMTPD_HOOK_VRFY,
    unknown = ASIOSMTPD_HOOK_UNKNOWN,
    session_close = ASIOSMTPD_HOOK_SESSION_CLOSE,
    starttls = ASIOSMTPD_HOOK_STARTTLS,      ///< ABI 1.1: after a STARTTLS handshake (no arguments)
    auth_check = ASIOSMTPD_HOOK_AUTH_CHECK,  ///< ABI 1.1: AUTH PLAIN/LOGIN credentials (auth_args)
    proxy = ASIOSMTPD_HOOK_PROXY,            ///< ABI 1.1: the PROXY protocol header (proxy_args)
    data_chunk = ASIOSMTPD_HOOK_DATA_CHUNK,  ///< ABI 1.2: the next piece of the message (data_args)
    txn_end = ASIOSMTPD_HOOK_TXN_END,        ///< ABI 1.3: notification, a transaction ended (txn_end_args)
};

/// Lifetime of a private data slot (plugin.h slot_set).
enum class scope : std::int32_t {
    session = ASIOSMTPD_SCOPE_SESSION,  ///< freed when the session ends
    txn = ASIOSMTPD_SCOPE_TXN,          ///< freed when the transaction ends
};

enum class log_level : std::int32_t {
    debug = ASIOSMTPD_LOG_DEBUG,
    info = ASIOSMTPD_LOG_INFO,
    warn = ASIOSMTPD_LOG_WARN,
    error = ASIOSMTPD_LOG_ERROR,
};

enum class node_kind : std::int32_t {
    null = ASIOSMTPD_CFG_NULL,
    scalar = ASIOSMTPD_CFG_SCALAR,
    sequence = ASIOSMTPD_CFG_SEQUENCE,
    map = ASIOSMTPD_CFG_MAP,
};

/// The reply the wrapper sets when a handler throws, returns PENDING without suspend(), or
/// drops a `pending` (the host's own text for a hook that gives no verdict).
inline constexpr std::uint16_t internal_error_code = 451;
inline constexpr std::string_view internal_error_text = "4.3.0 Error: internal";

// ------------------------------------------------------------------------------------------
// Strings: asiosmtpd_str is borrowed pointer + length, never owned.
// ------------------------------------------------------------------------------------------

/// A view of a host string. The view lives as long as the string it came from (see plugin.h).
inline std::string_view to_view(asiosmtpd_str s) noexcept
{
    return s.data ? std::string_view(s.data, s.size) : std::string_view();
}

/// An asiosmtpd_str over `v` for passing to the host, which copies what it keeps.
inline asiosmtpd_str to_str(std::string_view v) noexcept { return {v.data() ? v.data() : "", v.size()}; }

inline std::string to_string(asiosmtpd_str s) { return std::string(to_view(s)); }

/// "OK", "E_INVALID", ... for messages.
inline const char* status_name(asiosmtpd_status st) noexcept
{
    switch (st) {
    case ASIOSMTPD_OK: return "OK";
    case ASIOSMTPD_E_INVALID: return "E_INVALID";
    case ASIOSMTPD_E_UNSUPPORTED: return "E_UNSUPPORTED";
    case ASIOSMTPD_E_STATE: return "E_STATE";
    case ASIOSMTPD_E_GONE: return "E_GONE";
    case ASIOSMTPD_E_CONFLICT: return "E_CONFLICT";
    case ASIOSMTPD_E_FROZEN: return "E_FROZEN";
    default: return "unknown status";
    }
}

/// "MAIL", "SESSION_CLOSE", "command", ...
inline const char* hook_name(hook h) noexcept
{
    switch (h) {
    case hook::command: return "command";
    case hook::connect: return "CONNECT";
    case hook::helo: return "HELO";
    case hook::ehlo: return "EHLO";
    case hook::mail: return "MAIL";
    case hook::rcpt: return "RCPT";
    case hook::data: return "DATA";
    case hook::rset: return "RSET";
    case hook::noop: return "NOOP";
    case hook::quit: return "QUIT";
    case hook::vrfy: return "VRFY";
    case hook::unknown: return "UNKNOWN";
    case hook::session_close: return "SESSION_CLOSE";
    case hook::starttls: return "STARTTLS";
    case hook::auth_check: return "AUTH_CHECK";
    case hook::data_chunk: return "DATA_CHUNK";
    case hook::proxy: return "PROXY";
    case hook::txn_end: return "TXN_END";
    case hook::other: break;
    }
    return "other";
}

/// A host API function refused: carries the status.
class error : public std::runtime_error {
public:
    error(asiosmtpd_status st, const std::string& what_failed)
        : std::runtime_error(what_failed + ": host refused (" + status_name(st) + ")"),
          status_(st)
    {}
    asiosmtpd_status status() const noexcept { return status_; }

private:
    asiosmtpd_status status_;
};

namespace detail {
inline void check(asiosmtpd_status st, const char* what_failed)
{
    if (st != ASIOSMTPD_OK) throw error(st, what_failed);
}

// Whether a struct whose writer reported `struct_size` holds a field ending at `end`.
// (ASIOSMTPD_HAS uses a C cast, which -Wold-style-cast rejects in C++.)
constexpr bool has(std::uint32_t struct_size, std::size_t end) noexcept { return struct_size >= end; }

// The host table of ABI 1.0 ends with `log`.
inline constexpr std::size_t host_api_v1_0_size = offsetof(asiosmtpd_host_api, log) + sizeof(asiosmtpd_host_api::log);
/// The host table has member M (a newer member on an older host: no).
#define ASIOSMTPD_HOST_HAS(host, member)                                                                               \
    ((host)->struct_size >= offsetof(asiosmtpd_host_api, member) + sizeof(void (*)(void)))

// A per-type address, without RTTI (identifies the plugin class and slot contents).
template <class T>
struct tag_holder {
    static constexpr char value = 0;
};
template <class T>
constexpr const void* type_tag() noexcept
{
    return &tag_holder<T>::value;
}
}  // namespace detail

// ------------------------------------------------------------------------------------------
// Hook arguments: views of the host's structs, valid until the handler returns, also for a
// call it suspends: copy what a worker thread needs before returning verdict::pending (the host
// frees them when the call times out or the session ends, while the worker may still run).
// ------------------------------------------------------------------------------------------

/// The MAIL parameters of an address_args: a range of string_view.
class str_list {
public:
    class iterator {
    public:
        using value_type = std::string_view;
        using difference_type = std::ptrdiff_t;
        using pointer = void;
        using reference = std::string_view;
        using iterator_category = std::input_iterator_tag;
        iterator(const asiosmtpd_str* p) noexcept : p_(p) {}
        std::string_view operator*() const noexcept { return to_view(*p_); }
        iterator& operator++() noexcept
        {
            ++p_;
            return *this;
        }
        iterator operator++(int) noexcept
        {
            iterator old = *this;
            ++p_;
            return old;
        }
        bool operator==(const iterator& o) const noexcept { return p_ == o.p_; }
        bool operator!=(const iterator& o) const noexcept { return p_ != o.p_; }

    private:
        const asiosmtpd_str* p_;
    };
    str_list() noexcept = default;
    str_list(const asiosmtpd_str* items, std::size_t count) noexcept
        : items_(count ? items : nullptr),
          count_(items ? count : 0)
    {}
    std::size_t size() const noexcept { return count_; }
    bool empty() const noexcept { return count_ == 0; }
    std::string_view operator[](std::size_t i) const noexcept { return to_view(items_[i]); }
    iterator begin() const noexcept { return iterator(items_); }
    iterator end() const noexcept { return iterator(items_ + count_); }
    std::vector<std::string_view> to_vector() const { return {begin(), end()}; }

private:
    const asiosmtpd_str* items_ = nullptr;
    std::size_t count_ = 0;
};

/// CONNECT.
struct connect_args {
    explicit connect_args(const asiosmtpd_connect_args& a) noexcept
        : peer_address(to_view(a.peer_address)),
          peer_port(a.peer_port),
          local_address(to_view(a.local_address)),
          local_port(a.local_port),
          raw(&a)
    {}
    std::string_view peer_address;  ///< "127.0.0.1", "::1"
    std::uint16_t peer_port;
    std::string_view local_address;
    std::uint16_t local_port;
    const asiosmtpd_connect_args* raw;  ///< for fields added after ABI 1.0 (check struct_size)
};

/// HELO and EHLO/LHLO.
struct helo_args {
    explicit helo_args(const asiosmtpd_helo_args& a) noexcept : hostname(to_view(a.hostname)), raw(&a) {}
    std::string_view hostname;  ///< the whole argument as sent
    const asiosmtpd_helo_args* raw;
};

/// MAIL, RCPT, VRFY.
struct address_args {
    explicit address_args(const asiosmtpd_address_args& a) noexcept
        : address(to_view(a.address)),
          params(a.params, a.param_count),
          raw(&a)
    {}
    std::string_view address;  ///< normalised; "<>" for the null reverse path
    str_list params;           ///< MAIL, RCPT (DSN only): ESMTP parameters, upper-cased (see dsn.hpp)
    const asiosmtpd_address_args* raw;
};

/// DATA: the whole message (empty when streamed()); DATA_CHUNK (1.2): the next piece of it.
struct data_args {
    explicit data_args(const asiosmtpd_data_args& a) noexcept
        : data(a.content),
          size(a.content ? a.size : 0),
          flags(a.flags),
          message_size(ASIOSMTPD_HAS(&a, asiosmtpd_data_args, message_size) ? a.message_size : size),
          raw(&a)
    {}
    /// DATA: the message went to DATA_CHUNK hooks and is not passed again (ABI 1.2).
    bool streamed() const noexcept { return (flags & ASIOSMTPD_DATA_STREAMED) != 0; }
    /// DATA_CHUNK: the final piece; the DATA hook comes next (ABI 1.2).
    bool last_chunk() const noexcept { return (flags & ASIOSMTPD_DATA_LAST_CHUNK) != 0; }
    /// The message bytes as a string_view (binary-safe).
    std::string_view content() const noexcept
    {
        return data ? std::string_view(reinterpret_cast<const char*>(data), size) : std::string_view();
    }
    bool dot_unstuffed() const noexcept { return (flags & ASIOSMTPD_DATA_DOT_UNSTUFFED) != 0; }
    bool crlf() const noexcept { return (flags & ASIOSMTPD_DATA_CRLF) != 0; }
    const std::uint8_t* data;
    std::size_t size;
    std::uint32_t flags;  ///< ASIOSMTPD_DATA_*
    /// DATA: the whole message's size (also when streamed); DATA_CHUNK: bytes so far.
    std::uint64_t message_size;
    const asiosmtpd_data_args* raw;
};

/// ABI 1.3: how a transaction ended (TXN_END).
enum class txn_outcome : std::int32_t {
    accepted = ASIOSMTPD_TXN_ACCEPTED,  ///< the message got a 2xx reply
    refused = ASIOSMTPD_TXN_REFUSED,    ///< the message got a 4xx/5xx reply
    aborted = ASIOSMTPD_TXN_ABORTED,    ///< no message: RSET, HELO/EHLO, STARTTLS, QUIT, disconnect...
};

/// ABI 1.3: TXN_END's arguments.
struct txn_end_args {
    explicit txn_end_args(const asiosmtpd_txn_end_args& a) noexcept
        : outcome(static_cast<txn_outcome>(a.outcome)),
          code(a.code),
          reply(to_view(a.reply)),
          reason(to_view(a.reason)),
          mail_from(to_view(a.mail_from)),
          rcpt_count(a.rcpt_count),
          size(a.size),
          raw(&a)
    {}
    txn_outcome outcome;
    std::uint16_t code;          ///< the message's reply code; 0 when aborted
    std::string_view reply;      ///< its first line; empty when aborted
    std::string_view reason;     ///< aborted: "rset", "quit", "disconnect", "timeout", ...
    std::string_view mail_from;  ///< "<>" for the null sender
    std::size_t rcpt_count;
    std::uint64_t size;  ///< message bytes; 0 when there was no message
    const asiosmtpd_txn_end_args* raw;
};

/// ABI 1.3: one change to the transaction, for call::edit() (in a DATA hook) or
/// pending::edit() (any thread, while the DATA call is suspended). Made by the factory
/// functions; the strings it views must outlive the edit() call (the host copies them).
///     c.edit(sdk::edit::add_header("X-Scanned", "yes"));
class edit {
public:
    static edit add_header(std::string_view name, std::string_view value)
    {
        return edit(ASIOSMTPD_EDIT_ADD_HEADER, name, value, 0);
    }
    /// Before the position-th field of the header block (0: at the top).
    static edit insert_header(std::size_t position, std::string_view name, std::string_view value)
    {
        return edit(ASIOSMTPD_EDIT_INSERT_HEADER, name, value, position);
    }
    /// The occurrence-th (from 1) field named `name` gets `value` (added when there is none).
    static edit change_header(std::string_view name, std::size_t occurrence, std::string_view value)
    {
        return edit(ASIOSMTPD_EDIT_CHANGE_HEADER, name, value, occurrence);
    }
    static edit delete_header(std::string_view name, std::size_t occurrence)
    {
        return edit(ASIOSMTPD_EDIT_DELETE_HEADER, name, {}, occurrence);
    }
    /// The next piece of the new body (the first one of a call starts it afresh).
    static edit replace_body(std::string_view piece) { return edit(ASIOSMTPD_EDIT_REPLACE_BODY, {}, piece, 0); }
    static edit change_sender(std::string_view address, std::vector<std::string_view> params = {})
    {
        return edit(ASIOSMTPD_EDIT_CHANGE_SENDER, address, {}, 0, std::move(params));
    }
    static edit add_rcpt(std::string_view address, std::vector<std::string_view> params = {})
    {
        return edit(ASIOSMTPD_EDIT_ADD_RCPT, address, {}, 0, std::move(params));
    }
    static edit delete_rcpt(std::string_view address) { return edit(ASIOSMTPD_EDIT_DELETE_RCPT, address, {}, 0); }

    edit(const edit& o) : raw_(o.raw_), params_(o.params_) { raw_.params = params_.empty() ? nullptr : params_.data(); }
    edit& operator=(const edit& o)
    {
        raw_ = o.raw_;
        params_ = o.params_;
        raw_.params = params_.empty() ? nullptr : params_.data();
        return *this;
    }
    edit(edit&& o) noexcept = default;
    edit& operator=(edit&& o) noexcept = default;
    ~edit() = default;

    const asiosmtpd_edit& raw() const noexcept { return raw_; }

private:
    edit(std::int32_t op, std::string_view name, std::string_view value, std::size_t index,
         std::vector<std::string_view> params = {})
    {
        raw_.struct_size = static_cast<std::uint32_t>(sizeof raw_);
        raw_.op = op;
        raw_.name = to_str(name);
        raw_.value = to_str(value);
        raw_.index = index;
        for (std::string_view p : params) params_.push_back(to_str(p));
        raw_.params = params_.empty() ? nullptr : params_.data();
        raw_.param_count = params_.size();
    }
    asiosmtpd_edit raw_{};
    std::vector<asiosmtpd_str> params_;  // a vector's move keeps its buffer: raw_.params stays right
};

/// NOOP, UNKNOWN and registered commands.
struct command_args {
    explicit command_args(const asiosmtpd_command_args& a) noexcept
        : verb(to_view(a.verb)),
          argument(to_view(a.argument)),
          has_argument(a.has_argument != 0),
          raw(&a)
    {}
    std::string_view verb;      ///< upper-cased
    std::string_view argument;  ///< stripped; empty when absent
    bool has_argument;          ///< false when nothing followed the verb (aiosmtpd's arg=None)
    const asiosmtpd_command_args* raw;
};

/// ABI 1.1: AUTH_CHECK (built-in PLAIN/LOGIN) and the calls into a plugin's AUTH mechanism.
/// Raw bytes as the client sent them (base64-decoded). Never log the password.
struct auth_args {
    explicit auth_args(const asiosmtpd_auth_args& a) noexcept
        : mechanism(to_view(a.mechanism)),
          authzid(to_view(a.authzid)),
          login(to_view(a.login)),
          password(to_view(a.password)),
          response(to_view(a.response)),
          has_response(a.has_response != 0),
          step(a.step),
          raw(&a)
    {}
    std::string_view mechanism;  ///< "PLAIN", "LOGIN" or the plugin's mechanism (upper case)
    std::string_view authzid;    ///< PLAIN's authorization identity
    std::string_view login;      ///< AUTH_CHECK
    std::string_view password;   ///< AUTH_CHECK
    std::string_view response;   ///< mechanisms: the client's answer (the initial response first)
    bool has_response;           ///< mechanisms: false on the first call without initial response
    std::uint32_t step;          ///< mechanisms: 0, 1, 2, ...
    const asiosmtpd_auth_args* raw;
};

/// ABI 1.1: the HAProxy PROXY protocol header of the connection.
struct proxy_args {
    explicit proxy_args(const asiosmtpd_proxy_args& a) noexcept
        : version(a.version),
          command(a.command),
          family(a.family),
          protocol(a.protocol),
          src_address(to_view(a.src_address)),
          src_port(a.src_port),
          dst_address(to_view(a.dst_address)),
          dst_port(a.dst_port),
          tlvs(to_view(a.tlvs)),
          proxy_address(to_view(a.proxy_address)),
          raw(&a)
    {}
    int version;                   ///< 1 or 2
    int command;                   ///< v2: 0 LOCAL, 1 PROXY
    int family;                    ///< 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX
    int protocol;                  ///< 0 UNSPEC, 1 STREAM, 2 DGRAM
    std::string_view src_address;  ///< the client
    std::uint16_t src_port;
    std::string_view dst_address;
    std::uint16_t dst_port;
    std::string_view tlvs;           ///< v2 raw TLVs: type, 16-bit big-endian length, value, ...
    std::string_view proxy_address;  ///< the load balancer ("addr:port")
    const asiosmtpd_proxy_args* raw;
};

/// session_info(): views valid until the handler returns.
struct session_info {
    std::uint64_t id = 0;
    std::string_view peer_address;
    std::uint16_t peer_port = 0;
    std::string_view helo_name;  ///< empty before HELO/EHLO
    bool extended_smtp = false;  ///< after EHLO/LHLO
    bool tls_active = false;
    bool authenticated = false;
    // ABI 1.1 (empty on an older host):
    std::string_view tls_version;       ///< "TLSv1.3"
    std::string_view tls_cipher;        ///< "TLS_AES_256_GCM_SHA384"
    std::string_view tls_peer_subject;  ///< client certificate subject (RFC 2253), if one was given
    std::string_view auth_login;        ///< the authenticated identity; empty before AUTH
};

/// txn_info(): views valid until the handler returns.
struct txn_info {
    std::string_view mail_from;  ///< empty before MAIL; "<>" for the null sender
    std::size_t mail_param_count = 0;
    std::size_t rcpt_count = 0;
};

// ------------------------------------------------------------------------------------------
// logger: host->log for this instance. Copyable; any thread; valid until destroy() returns.
// ------------------------------------------------------------------------------------------
class logger {
public:
    logger() noexcept = default;
    logger(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx) noexcept : host_(host), ctx_(ctx) {}

    /// One log line, without session id (use call::log inside a handler). Never log message
    /// bodies or credentials.
    void log(log_level level, std::string_view message) const noexcept
    {
        if (host_) host_->log(ctx_, nullptr, static_cast<std::int32_t>(level), to_str(message));
    }
    void debug(std::string_view m) const noexcept { log(log_level::debug, m); }
    void info(std::string_view m) const noexcept { log(log_level::info, m); }
    void warn(std::string_view m) const noexcept { log(log_level::warn, m); }
    void error(std::string_view m) const noexcept { log(log_level::error, m); }

    /// ABI 1.3: a line of key=value fields after the message, as the host's own lines:
    ///     log.fields(log_level::info, "", {{"event", "upstream"}, {"reply", text}});
    /// On an older host the fields are appended to the message text.
    void fields(log_level level, std::string_view message,
                std::initializer_list<std::pair<std::string_view, std::string_view>> kv) const noexcept
    {
        log_fields(host_, ctx_, nullptr, level, message, kv);
    }

    /// Shared by logger and call: log_fields(), or log() with the fields appended.
    static void log_fields(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_call* call, log_level level,
                           std::string_view message,
                           std::initializer_list<std::pair<std::string_view, std::string_view>> kv) noexcept
    {
        if (!host) return;
        constexpr std::size_t max = 32;
        asiosmtpd_str keys[max], values[max];
        std::size_t n = 0;
        for (const auto& [k, v] : kv) {
            if (n == max) break;
            keys[n] = to_str(k);
            values[n] = to_str(v);
            ++n;
        }
        if (ASIOSMTPD_HOST_HAS(host, log_fields)) {
            host->log_fields(ctx, call, static_cast<std::int32_t>(level), to_str(message), keys, values, n);
            return;
        }
        try {
            std::string line(message);
            for (std::size_t i = 0; i < n; ++i)
                line.append(line.empty() ? "" : " ").append(to_view(keys[i])).append("=").append(to_view(values[i]));
            host->log(ctx, call, static_cast<std::int32_t>(level), to_str(line));
        } catch (...) {
            host->log(ctx, call, static_cast<std::int32_t>(level), to_str(message));
        }
    }

private:
    const asiosmtpd_host_api* host_ = nullptr;
    asiosmtpd_ctx* ctx_ = nullptr;
};

// ------------------------------------------------------------------------------------------
// Spelling hints: "did you mean 'delay'?" for a key, a name or a choice given with a typo.
// ------------------------------------------------------------------------------------------

/// The edit distance of `a` and `b`, ASCII case ignored: insertions, deletions, substitutions
/// and swaps of two neighbouring characters count 1 each (Damerau-Levenshtein, optimal string
/// alignment). Words longer than 64 bytes are not compared (the result is then SIZE_MAX).
inline std::size_t edit_distance(std::string_view a, std::string_view b) noexcept
{
    constexpr std::size_t cap = 64;
    if (a.size() > cap || b.size() > cap) return std::numeric_limits<std::size_t>::max();
    const auto lower = [](char c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
    // Three rows of the table: i-2, i-1, i.
    std::size_t rows[3][cap + 1] = {};
    for (std::size_t j = 0; j <= b.size(); ++j) rows[1][j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t* const cur = rows[(i + 1) % 3];
        const std::size_t* const prev = rows[i % 3];
        const std::size_t* const prev2 = rows[(i + 2) % 3];
        cur[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const bool same = lower(a[i - 1]) == lower(b[j - 1]);
            std::size_t d =
                std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (same ? std::size_t{0} : std::size_t{1})});
            if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) && lower(a[i - 2]) == lower(b[j - 1]))
                d = std::min(d, prev2[j - 2] + 1);
            cur[j] = d;
        }
    }
    return rows[(a.size() + 1) % 3][b.size()];
}

/// The candidate `word` most likely meant, or "" when none is close: at most 1 edit for a word
/// of up to 4 characters, 2 up to 8, 3 beyond (edit_distance); on a tie the first candidate.
/// `candidates`: anything iterable whose elements convert to std::string_view. The view
/// points into `candidates`.
template <class Range>
std::string_view closest_match(std::string_view word, const Range& candidates)
{
    const std::size_t limit = word.size() <= 4 ? 1 : word.size() <= 8 ? 2 : 3;
    std::string_view best;
    std::size_t best_distance = limit + 1;
    for (const auto& c : candidates) {
        const std::string_view candidate(c);
        if (candidate == word) continue;
        const std::size_t d = edit_distance(word, candidate);
        if (d < best_distance && d < std::max(candidate.size(), std::size_t{1})) {
            best = candidate;
            best_distance = d;
        }
    }
    return best;
}
inline std::string_view closest_match(std::string_view word, std::initializer_list<std::string_view> candidates)
{
    return closest_match<std::initializer_list<std::string_view>>(word, candidates);
}

// ------------------------------------------------------------------------------------------
// config_error: what is wrong with one node of the instance's config. Thrown by the config
// readers below, and by the plugin itself (config::error(), config::key_error()) for a
// problem it finds in a value (a folder that cannot be made, a host name that does not
// resolve). create() hands the node to the host (ABI 1.3 cfg_error), which names the config
// file, the line and the full key; what() is "<path>: <problem>" for older hosts and logs.
// ------------------------------------------------------------------------------------------
class config_error : public std::invalid_argument {
public:
    /// `path`: where the node is ("" for the root, "hooks.MAIL"); `key`: "" or the key of the
    /// node (a map) that is wrong or missing; `problem`: one line, without the key.
    config_error(const asiosmtpd_cfg* node, const std::string& path, std::string key, std::string problem)
        : std::invalid_argument(describe(path, key, problem)),
          node_(node),
          key_(std::move(key)),
          problem_(std::move(problem))
    {}
    /// The node that is wrong (or holds the wrong key); valid only during create().
    const asiosmtpd_cfg* node() const noexcept { return node_; }
    /// "" or the key of node() that is wrong or missing.
    const std::string& key() const noexcept { return key_; }
    /// The problem without the key path ("unknown key (did you mean 'delay'?)").
    const std::string& problem() const noexcept { return problem_; }

private:
    static std::string describe(const std::string& path, const std::string& key, const std::string& problem)
    {
        std::string where = path;
        if (!key.empty()) where += (where.empty() ? "" : ".") + key;
        return (where.empty() ? std::string("config") : where) + ": " + problem;
    }

    const asiosmtpd_cfg* node_;
    std::string key_;
    std::string problem_;
};

// ------------------------------------------------------------------------------------------
// config: a read-only view of one node of the instance's `config:` subtree. Valid only
// during the plugin's constructor (create()); copy what you keep. The as_* readers throw
// config_error (a std::invalid_argument) naming the key path ("hooks.MAIL.code: expected an
// integer, got 'x'"), which create() hands to the host: "<file>:<line>:
// plugins[N].config.hooks.MAIL.code: expected an integer, got 'x'".
// ------------------------------------------------------------------------------------------
class config {
public:
    config(const asiosmtpd_host_api* host, const asiosmtpd_cfg* node, std::string path = {})
        : host_(host),
          node_(node),
          path_(std::move(path))
    {}

    node_kind kind() const noexcept { return node_ ? static_cast<node_kind>(host_->cfg_kind(node_)) : node_kind::null; }
    bool is_null() const noexcept { return kind() == node_kind::null; }
    bool is_scalar() const noexcept { return kind() == node_kind::scalar; }
    bool is_sequence() const noexcept { return kind() == node_kind::sequence; }
    bool is_map() const noexcept { return kind() == node_kind::map; }
    /// Null, or a map or sequence without entries.
    bool empty() const noexcept
    {
        const node_kind k = kind();
        return k == node_kind::null || ((k == node_kind::map || k == node_kind::sequence) && size() == 0);
    }

    /// Where this node is, for messages: "" for the root, "hooks.MAIL", "ehlo_keywords[0]".
    const std::string& path() const noexcept { return path_; }

    /// Raw scalar text (borrowed until create() returns); empty unless a scalar.
    std::string_view scalar() const noexcept { return node_ ? to_view(host_->cfg_scalar(node_)) : std::string_view(); }

    /// Entries of a map or sequence; 0 otherwise.
    std::size_t size() const noexcept { return node_ ? host_->cfg_size(node_) : 0; }

    /// The index-th entry of a map or sequence.
    config at(std::size_t index) const
    {
        const asiosmtpd_cfg* n = node_ ? host_->cfg_at(node_, index) : nullptr;
        if (!n) throw error("has no entry " + std::to_string(index));
        if (is_map()) return config(host_, n, child_path(key_at(index)));
        return config(host_, n, path_ + "[" + std::to_string(index) + "]");
    }

    /// The index-th key of a map (borrowed until create() returns).
    std::string_view key_at(std::size_t index) const noexcept
    {
        return node_ ? to_view(host_->cfg_key_at(node_, index)) : std::string_view();
    }

    /// The value at `key` of a map; nullopt when absent or when this is not a map. A key
    /// present with an empty value is a node of kind null.
    std::optional<config> get(std::string_view key) const
    {
        const asiosmtpd_cfg* n = (node_ && is_map()) ? host_->cfg_get(node_, to_str(key)) : nullptr;
        if (!n) return std::nullopt;
        return config(host_, n, child_path(key));
    }

    /// The value at `key`, or config_error "<path>.<key>: required".
    config require(std::string_view key) const
    {
        if (auto v = get(key)) return *v;
        throw key_error(key, "required");
    }

    /// The map's entries in order: {key, value}.
    std::vector<std::pair<std::string_view, config>> entries() const
    {
        std::vector<std::pair<std::string_view, config>> out;
        if (!is_map()) return out;
        const std::size_t n = size();
        out.reserve(n);
        for (std::size_t i = 0; i < n; ++i) out.emplace_back(key_at(i), at(i));
        return out;
    }

    /// The sequence's items in order.
    std::vector<config> items() const
    {
        std::vector<config> out;
        if (!is_sequence()) return out;
        const std::size_t n = size();
        out.reserve(n);
        for (std::size_t i = 0; i < n; ++i) out.push_back(at(i));
        return out;
    }

    /// Throws "<path>: expected a map, got ..." unless this is a map; returns *this.
    const config& expect_map() const
    {
        expect(node_kind::map, "a map");
        return *this;
    }
    /// Throws "<path>: expected a list, got ..." unless this is a sequence; returns *this.
    const config& expect_list() const
    {
        expect(node_kind::sequence, "a list");
        return *this;
    }

    /// Throws unless this is null or a map whose keys are all in `allowed`: config_error
    /// "<path>.<key>: unknown key (did you mean 'delay'?)", or "(known: a b c)" when no allowed
    /// key is close to it.
    void check_keys(std::initializer_list<std::string_view> allowed) const
    {
        if (is_null()) return;
        expect(node_kind::map, "a map");
        const std::size_t n = size();
        for (std::size_t i = 0; i < n; ++i) {
            const std::string_view k = key_at(i);
            bool ok = false;
            for (std::string_view a : allowed) ok = ok || a == k;
            if (ok) continue;
            std::string problem = "unknown key";
            if (const std::string_view near = closest_match(k, allowed); !near.empty()) {
                problem.append(" (did you mean '").append(near).append("'?)");
            } else if (allowed.size() != 0) {
                problem += " (known:";
                for (std::string_view a : allowed) problem.append(" ").append(a);
                problem += ")";
            }
            throw key_error(k, problem);
        }
    }

    /// The scalar as a string (copied).
    std::string as_string() const
    {
        expect(node_kind::scalar, "a string");
        return std::string(scalar());
    }

    /// The scalar as an integer: decimal with optional sign, or 0x hex.
    std::int64_t as_int() const
    {
        expect(node_kind::scalar, "an integer");
        std::string_view s = scalar();
        bool negative = false;
        if (!s.empty() && (s.front() == '+' || s.front() == '-')) {
            negative = s.front() == '-';
            s.remove_prefix(1);
        }
        int base = 10;
        if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
            base = 16;
            s.remove_prefix(2);
        }
        std::uint64_t magnitude = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), magnitude, base);
        const std::uint64_t limit = negative ? std::uint64_t{1} << 63 : (std::uint64_t{1} << 63) - 1;
        if (s.empty() || ec != std::errc() || end != s.data() + s.size() || magnitude > limit)
            throw bad_value("an integer");
        if (!negative) return static_cast<std::int64_t>(magnitude);
        return magnitude == limit ? std::numeric_limits<std::int64_t>::min() : -static_cast<std::int64_t>(magnitude);
    }

    /// as_int() within [min, max], else "<path>: must be between min and max, got v".
    std::int64_t as_int(std::int64_t min, std::int64_t max) const
    {
        const std::int64_t v = as_int();
        if (v < min || v > max)
            throw error("must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
                        std::to_string(v));
        return v;
    }

    /// The scalar as a finite number (integers included; no inf or nan).
    double as_double() const
    {
        expect(node_kind::scalar, "a number");
        std::string_view s = scalar();
        if (!s.empty() && s.front() == '+') s.remove_prefix(1);
        double v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (s.empty() || ec != std::errc() || end != s.data() + s.size() || !std::isfinite(v))
            throw bad_value("a number");
        return v;
    }

    /// as_double() within [min, max], else "<path>: must be between min and max, got v".
    double as_double(double min, double max) const
    {
        const double v = as_double();
        if (v < min || v > max)
            throw error("must be between " + number_text(min) + " and " + number_text(max) + ", got " +
                        std::string(scalar().substr(0, 40)));
        return v;
    }

    /// The scalar as a boolean, spelled as YAML 1.1 / yaml-cpp accept: true/false, yes/no,
    /// on/off, y/n (lower, Capitalised or UPPER case).
    bool as_bool() const
    {
        expect(node_kind::scalar, "a boolean");
        static constexpr std::string_view yes[] = {"true", "True", "TRUE", "yes", "Yes", "YES",
                                                   "on",   "On",   "ON",   "y",   "Y"};
        static constexpr std::string_view no[] = {"false", "False", "FALSE", "no", "No", "NO",
                                                  "off",   "Off",   "OFF",   "n",  "N"};
        const std::string_view s = scalar();
        for (std::string_view t : yes)
            if (s == t) return true;
        for (std::string_view f : no)
            if (s == f) return false;
        throw bad_value("a boolean (true or false)");
    }

    /// A sequence of scalars as strings.
    std::vector<std::string> as_string_list() const
    {
        expect_list();
        std::vector<std::string> out;
        for (const config& item : items()) out.push_back(item.as_string());
        return out;
    }

    // Optional keys with a default when the key is absent or null.
    std::string string_or(std::string_view key, std::string_view fallback) const
    {
        auto v = get(key);
        return (v && !v->is_null()) ? v->as_string() : std::string(fallback);
    }
    std::int64_t int_or(std::string_view key, std::int64_t fallback) const
    {
        auto v = get(key);
        return (v && !v->is_null()) ? v->as_int() : fallback;
    }
    /// A ranged default: `fallback` when absent or null, else the value, which must lie in
    /// [min, max] ("workers: must be between 1 and 64, got 100"). `fallback` is not checked.
    std::int64_t int_or(std::string_view key, std::int64_t fallback, std::int64_t min, std::int64_t max) const
    {
        auto v = get(key);
        return (v && !v->is_null()) ? v->as_int(min, max) : fallback;
    }
    double double_or(std::string_view key, double fallback) const
    {
        auto v = get(key);
        return (v && !v->is_null()) ? v->as_double() : fallback;
    }
    /// double_or() within [min, max], as int_or(key, fallback, min, max).
    double double_or(std::string_view key, double fallback, double min, double max) const
    {
        auto v = get(key);
        return (v && !v->is_null()) ? v->as_double(min, max) : fallback;
    }
    bool bool_or(std::string_view key, bool fallback) const
    {
        auto v = get(key);
        return (v && !v->is_null()) ? v->as_bool() : fallback;
    }

    const asiosmtpd_cfg* raw() const noexcept { return node_; }

    /// A problem with this node's value, to throw: `throw cfg.require("path").error("cannot
    /// create the folder: Permission denied")`. The host names the file, line and full key.
    config_error error(std::string_view problem) const
    {
        return config_error(node_, path_, std::string(), std::string(problem));
    }
    /// A problem with the key `key` of this map (present or missing): "<path>.<key>: <problem>".
    config_error key_error(std::string_view key, std::string_view problem) const
    {
        return config_error(node_, path_, std::string(key), std::string(problem));
    }

private:
    static std::string number_text(double v)
    {
        char buf[32] = {};
        std::snprintf(buf, sizeof buf, "%g", v);  // at most 13 characters
        return buf;
    }
    std::string child_path(std::string_view key) const
    {
        return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
    }
    static const char* kind_name(node_kind k) noexcept
    {
        switch (k) {
        case node_kind::null: return "nothing";
        case node_kind::scalar: return "a scalar";
        case node_kind::sequence: return "a list";
        case node_kind::map: return "a map";
        }
        return "an unknown node";
    }
    void expect(node_kind k, const char* wanted) const
    {
        const node_kind have = kind();
        if (have != k) throw error(std::string("expected ") + wanted + ", got " + kind_name(have));
    }
    config_error bad_value(const char* wanted) const
    {
        std::string_view s = scalar();
        std::string shown(s.substr(0, 40));
        if (s.size() > 40) shown += "...";
        return error(std::string("expected ") + wanted + ", got '" + shown + "'");
    }

    const asiosmtpd_host_api* host_;
    const asiosmtpd_cfg* node_;
    std::string path_;
};

// ------------------------------------------------------------------------------------------
// pending: a suspended hook call. Move-only; completes exactly once. complete() may be called
// from any thread (also concurrently: one call wins, the others return E_GONE). Destroying or
// move-assigning over a pending that was neither completed nor released completes it with
// TEMPFAIL 451 "4.3.0 Error: internal" and logs a warning. It must not outlive the plugin
// instance (join your threads in the destructor, T7).
// ------------------------------------------------------------------------------------------
class pending {
public:
    pending() noexcept = default;
    pending(pending&& o) noexcept
        : host_(o.host_),
          ctx_(o.ctx_),
          token_(o.token_.exchange(0, std::memory_order_acq_rel))
    {}
    pending& operator=(pending&& o) noexcept
    {
        if (this != &o) {
            drop();
            host_ = o.host_;
            ctx_ = o.ctx_;
            token_.store(o.token_.exchange(0, std::memory_order_acq_rel), std::memory_order_release);
        }
        return *this;
    }
    pending(const pending&) = delete;
    pending& operator=(const pending&) = delete;
    ~pending() { drop(); }

    /// Finish the suspended call with `v` and, when code != 0, the reply code/text (copied by
    /// the host; same rules as call::reply). Returns the host's status: OK, E_GONE (session
    /// ended, hook timed out, or already completed - harmless), E_INVALID (bad reply). A
    /// verdict of `pending` is refused with E_INVALID and keeps the token.
    asiosmtpd_status complete(verdict v, std::uint16_t code = 0, std::string_view text = {}) noexcept
    {
        if (v == verdict::pending) return ASIOSMTPD_E_INVALID;
        const asiosmtpd_token t = token_.exchange(0, std::memory_order_acq_rel);
        if (t == 0) return ASIOSMTPD_E_GONE;
        return host_->complete(t, static_cast<asiosmtpd_verdict>(v), code, to_str(text));
    }

    /// LMTP, before complete(), from any thread: the reply for the index-th recipient.
    /// E_INVALID (bad index/code/text) makes the completion a plugin error (451 4.3.0 for
    /// every recipient) unless a later rcpt_reply() for the same index succeeds.
    asiosmtpd_status rcpt_reply(std::size_t index, std::uint16_t code, std::string_view text) noexcept
    {
        const asiosmtpd_token t = token_.load(std::memory_order_acquire);
        if (t == 0) return ASIOSMTPD_E_GONE;
        return host_->set_rcpt_reply_pending(t, index, code, to_str(text));
    }

    /// ABI 1.3, before complete(), from any thread: one change to the transaction (the DATA
    /// call of an editor). OK, E_INVALID (malformed: nothing recorded), E_GONE (the call ended),
    /// E_STATE (not an editor's DATA call), E_UNSUPPORTED (host older than 1.3).
    asiosmtpd_status edit(const sdk::edit& e) noexcept
    {
        const asiosmtpd_token t = token_.load(std::memory_order_acquire);
        if (t == 0) return ASIOSMTPD_E_GONE;
        if (!ASIOSMTPD_HOST_HAS(host_, edit_message_pending)) return ASIOSMTPD_E_UNSUPPORTED;
        return host_->edit_message_pending(t, &e.raw());
    }

    /// True while it holds a token (not completed, not released, not moved from).
    bool valid() const noexcept { return token_.load(std::memory_order_acquire) != 0; }
    explicit operator bool() const noexcept { return valid(); }

    /// Give up the token without completing it; the caller completes it through
    /// host->complete, or never (the host's hook timeout then answers 451).
    asiosmtpd_token release() noexcept { return token_.exchange(0, std::memory_order_acq_rel); }

private:
    friend class call;
    pending(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_token token) noexcept
        : host_(host),
          ctx_(ctx),
          token_(token)
    {}
    void drop() noexcept
    {
        const asiosmtpd_token t = token_.exchange(0, std::memory_order_acq_rel);
        if (t == 0) return;
        host_->log(ctx_, nullptr, ASIOSMTPD_LOG_WARN,
                   to_str("a suspended hook was dropped without completion; answering 451"));
        host_->complete(t, ASIOSMTPD_TEMPFAIL, internal_error_code, to_str(internal_error_text));
    }

    const asiosmtpd_host_api* host_ = nullptr;
    asiosmtpd_ctx* ctx_ = nullptr;
    std::atomic<asiosmtpd_token> token_{0};
};

// ------------------------------------------------------------------------------------------
// call: the running hook. Valid only during the handler (T5); everything it returns by view
// dies with it. Not thread-safe: use it on the handler's thread only; hand work to other
// threads through suspend().
// ------------------------------------------------------------------------------------------
class call {
public:
    call(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_call* c, sdk::hook which) noexcept
        : host_(host),
          ctx_(ctx),
          call_(c),
          hook_(which)
    {}
    call(const call&) = delete;
    call& operator=(const call&) = delete;

    /// Which hook is running (hook::command for a registered command's handler).
    sdk::hook current_hook() const noexcept { return hook_; }

    // -- Replies ---------------------------------------------------------------------------

    /// Set the reply for the verdict this handler returns: code 200..599, text without CR,
    /// '\n' between lines of a multi-line reply. The class must fit the verdict (2xx/3xx for
    /// accept/continue_, 4xx tempfail*, 5xx reject*). Throws sdk::error when the host refuses
    /// (E_INVALID: bad code, CR, line over 506 bytes; E_STATE).
    void reply(std::uint16_t code, std::string_view text)
    {
        const asiosmtpd_status st = host_->set_reply(call_, code, to_str(text));
        if (st != ASIOSMTPD_OK) throw error(st, "set_reply(" + std::to_string(code) + ")");
    }
    /// reply(code, text) and return v: `return c.reply(verdict::reject, 550, "5.7.1 No");`
    verdict reply(verdict v, std::uint16_t code, std::string_view text)
    {
        reply(code, text);
        return v;
    }
    verdict accept(std::uint16_t code, std::string_view text) { return reply(verdict::accept, code, text); }
    verdict reject(std::uint16_t code, std::string_view text) { return reply(verdict::reject, code, text); }
    verdict tempfail(std::uint16_t code, std::string_view text) { return reply(verdict::tempfail, code, text); }
    verdict reject_close(std::uint16_t code, std::string_view text) { return reply(verdict::reject_close, code, text); }
    verdict tempfail_close(std::uint16_t code, std::string_view text)
    {
        return reply(verdict::tempfail_close, code, text);
    }

    // -- LMTP per-recipient replies (ABI 1.1) ------------------------------------------------

    /// In the DATA hook on an LMTP listener: the reply for the index-th recipient (rcpts()
    /// order), instead of the verdict's. Return accept (or another verdict) as usual.
    /// Throws sdk::error (E_STATE outside DATA, E_INVALID bad index/code/text). A refused reply
    /// stays a plugin error (451 4.3.0 for every recipient) unless a later rcpt_reply() for the
    /// same index succeeds: catch the error to fall back to a reply of your own.
    void rcpt_reply(std::size_t index, std::uint16_t code, std::string_view text) const
    {
        detail::check(host_->set_rcpt_reply(call_, index, code, to_str(text)), "set_rcpt_reply");
    }

    // -- Message editing (ABI 1.3) -------------------------------------------------------------

    /// In the DATA hook of an editor (registrar::editor()): one change to the transaction,
    /// which the plugins after this one see once the handler returns continue_ or accept.
    /// Throws sdk::error (E_INVALID malformed, E_STATE not an editor's DATA call,
    /// E_UNSUPPORTED host older than 1.3).
    void edit(const sdk::edit& e) const
    {
        if (!ASIOSMTPD_HOST_HAS(host_, edit_message))
            throw error(ASIOSMTPD_E_UNSUPPORTED, "edit_message (host older than ABI 1.3)");
        detail::check(host_->edit_message(call_, &e.raw()), "edit_message");
    }

    // -- AUTH (ABI 1.1) -----------------------------------------------------------------------

    /// In an AUTH mechanism: send "334 <base64(bytes)>" and be called again with the answer.
    /// `return c.challenge("...");`. Throws sdk::error when the host refuses (E_STATE outside a
    /// mechanism, E_INVALID over 700 bytes). From a worker thread, complete the pending call
    /// with verdict::auth_challenge and the challenge bytes as its text instead.
    verdict challenge(std::string_view bytes) const
    {
        detail::check(host_->set_auth_challenge(call_, to_str(bytes)), "set_auth_challenge");
        return verdict::auth_challenge;
    }
    /// With accept from AUTH_CHECK or a mechanism: the identity the session authenticates as
    /// (AUTH_CHECK defaults to the login).
    void identity(std::string_view login) const
    {
        detail::check(host_->set_auth_identity(call_, to_str(login)), "set_auth_identity");
    }

    // -- Session and transaction views -----------------------------------------------------

    session_info session() const
    {
        asiosmtpd_session_info raw{};
        raw.struct_size = static_cast<std::uint32_t>(sizeof raw);
        detail::check(host_->session_info(call_, &raw), "session_info");
        using S = asiosmtpd_session_info;
        session_info out;
        const std::uint32_t n = raw.struct_size;
        if (detail::has(n, offsetof(S, session_id) + sizeof raw.session_id)) out.id = raw.session_id;
        if (detail::has(n, offsetof(S, peer_address) + sizeof raw.peer_address))
            out.peer_address = to_view(raw.peer_address);
        if (detail::has(n, offsetof(S, peer_port) + sizeof raw.peer_port)) out.peer_port = raw.peer_port;
        if (detail::has(n, offsetof(S, helo_name) + sizeof raw.helo_name)) out.helo_name = to_view(raw.helo_name);
        if (detail::has(n, offsetof(S, extended_smtp) + sizeof raw.extended_smtp))
            out.extended_smtp = raw.extended_smtp != 0;
        if (detail::has(n, offsetof(S, tls_active) + sizeof raw.tls_active)) out.tls_active = raw.tls_active != 0;
        if (detail::has(n, offsetof(S, authenticated) + sizeof raw.authenticated))
            out.authenticated = raw.authenticated != 0;
        if (detail::has(n, offsetof(S, tls_version) + sizeof raw.tls_version))
            out.tls_version = to_view(raw.tls_version);
        if (detail::has(n, offsetof(S, tls_cipher) + sizeof raw.tls_cipher)) out.tls_cipher = to_view(raw.tls_cipher);
        if (detail::has(n, offsetof(S, tls_peer_subject) + sizeof raw.tls_peer_subject))
            out.tls_peer_subject = to_view(raw.tls_peer_subject);
        if (detail::has(n, offsetof(S, auth_login) + sizeof raw.auth_login)) out.auth_login = to_view(raw.auth_login);
        return out;
    }

    txn_info txn() const
    {
        asiosmtpd_txn_info raw{};
        raw.struct_size = static_cast<std::uint32_t>(sizeof raw);
        detail::check(host_->txn_info(call_, &raw), "txn_info");
        using T = asiosmtpd_txn_info;
        txn_info out;
        const std::uint32_t n = raw.struct_size;
        if (detail::has(n, offsetof(T, mail_from) + sizeof raw.mail_from)) out.mail_from = to_view(raw.mail_from);
        if (detail::has(n, offsetof(T, mail_param_count) + sizeof raw.mail_param_count))
            out.mail_param_count = raw.mail_param_count;
        if (detail::has(n, offsetof(T, rcpt_count) + sizeof raw.rcpt_count)) out.rcpt_count = raw.rcpt_count;
        return out;
    }

    /// The accepted recipients, in order (duplicates kept).
    std::vector<std::string_view> rcpts() const { return collect(txn().rcpt_count, host_->txn_rcpt_at, "txn_rcpt_at"); }

    /// ABI 1.3: the ESMTP parameters of the index-th recipient (the client's DSN NOTIFY and
    /// ORCPT, or those an editor gave it; asiosmtpd/dsn.hpp parses them).
    std::vector<std::string_view> rcpt_params(std::size_t index) const
    {
        std::vector<std::string_view> out;
        if (!ASIOSMTPD_HOST_HAS(host_, txn_rcpt_param_at)) return out;
        asiosmtpd_str s{"", 0};
        for (std::size_t i = 0; host_->txn_rcpt_param_at(call_, index, i, &s) == ASIOSMTPD_OK; ++i)
            out.push_back(to_view(s));
        return out;
    }

    /// The transaction's MAIL parameters ("SIZE=100", "BODY=8BITMIME"), upper-cased.
    std::vector<std::string_view> mail_params() const
    {
        return collect(txn().mail_param_count, host_->txn_mail_param_at, "txn_mail_param_at");
    }

    // -- Private data slots: one per instance and scope; hold one type per scope. ----------
    // The host deletes the object (on the session's thread) when the scope ends.

    /// The object in the slot, or nullptr when empty. Throws std::logic_error when the slot
    /// holds another type.
    template <class T>
    T* find_slot(scope s) const
    {
        void* p = host_->slot_get(call_, static_cast<std::int32_t>(s));
        if (!p) return nullptr;
        auto* box = static_cast<slot_base*>(p);
        if (box->tag != detail::type_tag<T>()) throw std::logic_error("slot holds an object of another type");
        return &static_cast<slot_box<T>*>(box)->value;
    }

    /// The object in the slot, default-constructed on first use.
    template <class T>
    T& slot(scope s) const
    {
        if (T* p = find_slot<T>(s)) return *p;
        return emplace_slot<T>(s);
    }

    /// Put a new T(args...) in the slot, replacing (and freeing) what was there.
    template <class T, class... Args>
    T& emplace_slot(scope s, Args&&... args) const
    {
        auto box = std::make_unique<slot_box<T>>(std::forward<Args>(args)...);
        T& ref = box->value;
        detail::check(host_->slot_set(call_, static_cast<std::int32_t>(s), static_cast<slot_base*>(box.get()),
                                      &slot_box<T>::destroy),
                      "slot_set");
        box.release();
        return ref;
    }

    /// Empty the slot (freeing its object).
    void clear_slot(scope s) const
    {
        detail::check(host_->slot_set(call_, static_cast<std::int32_t>(s), nullptr, nullptr), "slot_set");
    }

    // -- Waiting -----------------------------------------------------------------------------

    /// Suspend this hook: return verdict::pending from the handler and complete the returned
    /// object later, from any thread. Once suspended, only the completion decides the hook's
    /// result (what the handler returns, or throws, is then ignored). Throws sdk::error when
    /// the host refuses (E_STATE: e.g. in SESSION_CLOSE, or suspended twice).
    pending suspend()
    {
        asiosmtpd_token t = 0;
        detail::check(host_->suspend(call_, &t), "suspend");
        suspended_ = true;
        return pending(host_, ctx_, t);
    }
    bool suspended() const noexcept { return suspended_; }

    // -- Logging -----------------------------------------------------------------------------

    /// One log line tagged with this session. Never log message bodies or credentials.
    void log(log_level level, std::string_view message) const noexcept
    {
        host_->log(ctx_, call_, static_cast<std::int32_t>(level), to_str(message));
    }
    /// ABI 1.3: a line with key=value fields, tagged with this session (logger::fields()).
    void log(log_level level, std::string_view message,
             std::initializer_list<std::pair<std::string_view, std::string_view>> kv) const noexcept
    {
        sdk::logger::log_fields(host_, ctx_, call_, level, message, kv);
    }
    sdk::logger logger() const noexcept { return sdk::logger(host_, ctx_); }

    asiosmtpd_call* raw() const noexcept { return call_; }
    const asiosmtpd_host_api* host() const noexcept { return host_; }
    asiosmtpd_ctx* ctx() const noexcept { return ctx_; }

private:
    struct slot_base {
        const void* tag;
    };
    template <class T>
    struct slot_box : slot_base {
        template <class... Args>
        explicit slot_box(Args&&... args) : slot_base{detail::type_tag<T>()},
                                            value(std::forward<Args>(args)...)
        {}
        static void destroy(void* p) noexcept { delete static_cast<slot_box*>(static_cast<slot_base*>(p)); }
        T value;
    };

    using at_fn = asiosmtpd_status (*)(asiosmtpd_call*, std::size_t, asiosmtpd_str*);
    std::vector<std::string_view> collect(std::size_t n, at_fn at, const char* what) const
    {
        std::vector<std::string_view> out;
        out.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            asiosmtpd_str s{"", 0};
            detail::check(at(call_, i, &s), what);
            out.push_back(to_view(s));
        }
        return out;
    }

    const asiosmtpd_host_api* host_;
    asiosmtpd_ctx* ctx_;
    asiosmtpd_call* call_;
    sdk::hook hook_;
    bool suspended_ = false;
};

// ------------------------------------------------------------------------------------------
// Trampolines: the only place where the C ABI calls C++ code. Nothing escapes them.
// ------------------------------------------------------------------------------------------
namespace detail {

// What the host stores as the instance pointer: host table, ctx and the plugin object.
struct instance_base {
    const asiosmtpd_host_api* host = nullptr;
    asiosmtpd_ctx* ctx = nullptr;
    void* object = nullptr;
};

template <class P>
struct instance : instance_base {
    std::optional<P> plugin;
};

template <class M>
struct member_class;
template <class F, class C>
struct member_class<F C::*> {
    using type = C;
};
template <auto M>
using member_class_t = typename member_class<decltype(M)>::type;

// The argument struct of each hook: C struct and C++ view.
template <asiosmtpd_hook_id H>
struct hook_args {
    using c_type = void;
    using type = void;
};
template <>
struct hook_args<0> {
    using c_type = asiosmtpd_command_args;
    using type = command_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_CONNECT> {
    using c_type = asiosmtpd_connect_args;
    using type = connect_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_HELO> {
    using c_type = asiosmtpd_helo_args;
    using type = helo_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_EHLO> {
    using c_type = asiosmtpd_helo_args;
    using type = helo_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_MAIL> {
    using c_type = asiosmtpd_address_args;
    using type = address_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_RCPT> {
    using c_type = asiosmtpd_address_args;
    using type = address_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_VRFY> {
    using c_type = asiosmtpd_address_args;
    using type = address_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_DATA> {
    using c_type = asiosmtpd_data_args;
    using type = data_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_DATA_CHUNK> {
    using c_type = asiosmtpd_data_args;
    using type = data_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_NOOP> {
    using c_type = asiosmtpd_command_args;
    using type = command_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_UNKNOWN> {
    using c_type = asiosmtpd_command_args;
    using type = command_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_AUTH_CHECK> {
    using c_type = asiosmtpd_auth_args;
    using type = auth_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_PROXY> {
    using c_type = asiosmtpd_proxy_args;
    using type = proxy_args;
};
template <>
struct hook_args<ASIOSMTPD_HOOK_TXN_END> {
    using c_type = asiosmtpd_txn_end_args;
    using type = txn_end_args;
};

template <auto M>
inline constexpr bool takes_none = std::is_invocable_r_v<verdict, decltype(M), member_class_t<M>&, call&>;
template <auto M, class A>
constexpr bool takes_arg() noexcept
{
    if constexpr (std::is_void_v<A>) return false;
    else return std::is_invocable_r_v<verdict, decltype(M), member_class_t<M>&, call&, const A&>;
}
template <auto M, class A>
inline constexpr bool takes = takes_arg<M, A>();
template <auto M>
inline constexpr bool valid_handler =
    takes_none<M> || takes<M, connect_args> || takes<M, helo_args> || takes<M, address_args> || takes<M, data_args> ||
    takes<M, command_args> || takes<M, auth_args> || takes<M, proxy_args> || takes<M, txn_end_args>;

// "MAIL handler: <what>[: <detail>]" at warn (a plugin misbehaved; the host adds the plugin
// instance and session).
inline void log_noexcept(call& c, const char* what, const char* detail_text) noexcept
{
    try {
        std::string m = hook_name(c.current_hook());
        m += " handler: ";
        m += what;
        if (detail_text) {
            m += ": ";
            m += detail_text;
        }
        c.log(log_level::warn, m);
    } catch (...) {
        c.log(log_level::warn, what);
    }
}

// The handler failed: 451 unless the call is suspended (then its `pending` decides: if the
// handler dropped it while unwinding, it has already completed with 451).
inline asiosmtpd_verdict fail(call& c, const char* what) noexcept
{
    log_noexcept(c, "unhandled exception", what);
    if (c.suspended()) return ASIOSMTPD_PENDING;
    c.host()->set_reply(c.raw(), internal_error_code, to_str(internal_error_text));
    return ASIOSMTPD_TEMPFAIL;
}

inline asiosmtpd_verdict finish(call& c, verdict v) noexcept
{
    const auto raw = static_cast<asiosmtpd_verdict>(v);
    if (c.suspended()) {
        if (v != verdict::pending)
            log_noexcept(c, "suspended but returned another verdict; the completion decides", nullptr);
        return ASIOSMTPD_PENDING;
    }
    if (v == verdict::pending || raw < ASIOSMTPD_CONTINUE || raw > ASIOSMTPD_AUTH_CHALLENGE) {
        log_noexcept(c, "returned PENDING without suspend(), or an unknown verdict; answering 451", nullptr);
        c.host()->set_reply(c.raw(), internal_error_code, to_str(internal_error_text));
        return ASIOSMTPD_TEMPFAIL;
    }
    return raw;
}

template <auto M, asiosmtpd_hook_id H>
asiosmtpd_verdict trampoline(void* inst, asiosmtpd_call* raw_call, const void* raw_args) noexcept
{
    using C = member_class_t<M>;
    using A = typename hook_args<H>::type;
    auto* box = static_cast<instance_base*>(inst);
    call c(box->host, box->ctx, raw_call, static_cast<hook>(H));
    try {
        C& self = *static_cast<C*>(box->object);
        if constexpr (takes<M, A>) {
            if (!raw_args) throw std::logic_error("the host passed no hook arguments");
            const A args(*static_cast<const typename hook_args<H>::c_type*>(raw_args));
            return finish(c, (self.*M)(c, args));
        } else {
            return finish(c, (self.*M)(c));
        }
    } catch (const std::exception& e) {
        return fail(c, e.what());
    } catch (...) {
        return fail(c, "unknown exception");
    }
}

// The trampoline of M for hook H, or nullptr when M's argument type does not fit H.
template <auto M, asiosmtpd_hook_id H>
constexpr asiosmtpd_hook_fn pick() noexcept
{
    using A = typename hook_args<H>::type;
    if constexpr (takes<M, A>) return &trampoline<M, H>;
    else if constexpr (takes_none<M>) return &trampoline<M, H>;
    else return nullptr;
}

inline void write_error(asiosmtpd_errbuf* err, const char* text) noexcept
{
    if (!err || !err->buf || err->cap == 0) return;
    const std::size_t len = text ? std::strlen(text) : 0;
    const std::size_t n = len < err->cap - 1 ? len : err->cap - 1;
    if (n) std::memcpy(err->buf, text, n);
    err->buf[n] = '\0';
}

}  // namespace detail

// ------------------------------------------------------------------------------------------
// registrar: what the plugin's constructor gets. Valid only during the constructor
// (create(), control thread); registration afterwards is impossible (E_FROZEN).
// ------------------------------------------------------------------------------------------
class registrar {
public:
    registrar(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg,
              const void* plugin_tag) noexcept
        : host_(host),
          ctx_(ctx),
          reg_(reg),
          plugin_tag_(plugin_tag)
    {}
    registrar(const registrar&) = delete;
    registrar& operator=(const registrar&) = delete;

    /// This instance's `config:` subtree (kind null when absent).
    sdk::config config() const { return sdk::config(host_, host_->cfg_root(reg_)); }
    /// ABI 1.1: the config file's folder, to resolve relative paths in this plugin's config
    /// (empty on an older host).
    std::string_view config_dir() const
    {
        if (host_->struct_size < offsetof(asiosmtpd_host_api, config_dir) + sizeof(void*)) return {};
        return to_view(host_->config_dir(reg_));
    }

    /// ABI 1.3: true when this construction only checks the configuration (asiosmtpd
    /// --check-config; the instance is destroyed right after, no hook runs): check what a start
    /// needs, change nothing (make no folder, create no file). False on a start, a reload, and
    /// on an older host.
    bool check_only() const noexcept
    {
        return ASIOSMTPD_HOST_HAS(host_, is_check_only) && host_->is_check_only(reg_) != 0;
    }

    /// A logger usable from any thread for the instance's lifetime.
    sdk::logger logger() const noexcept { return sdk::logger(host_, ctx_); }

    /// Add member function M of the plugin class to the chain of hook `h`. M is
    ///   verdict (Plugin::*)(call&)                  for any hook, or
    ///   verdict (Plugin::*)(call&, const X&)        with X the hook's view:
    ///     connect_args (CONNECT), helo_args (HELO, EHLO), address_args (MAIL, RCPT, VRFY),
    ///     data_args (DATA, DATA_CHUNK), command_args (NOOP, UNKNOWN), auth_args
    ///     (AUTH_CHECK), proxy_args (PROXY), txn_end_args (TXN_END, ABI 1.3).
    /// Throws std::logic_error when M does not fit `h` or is not a member of the plugin
    /// class, sdk::error when the host refuses (E_UNSUPPORTED: a hook the host lacks).
    template <auto M>
    void on(hook h)
    {
        const asiosmtpd_status st = try_on<M>(h);
        if (st != ASIOSMTPD_OK) throw error(st, std::string("register_hook(") + hook_name(h) + ")");
    }

    /// on() returning the host's status instead of throwing it (E_UNSUPPORTED lets a
    /// plugin degrade on an older host). A signature mismatch still throws.
    template <auto M>
    asiosmtpd_status try_on(hook h)
    {
        static_assert(std::is_member_function_pointer_v<decltype(M)> && detail::valid_handler<M>,
                      "a handler is verdict (Plugin::*)(call&) or verdict (Plugin::*)(call&, const X&)"
                      " with X one of connect_args, helo_args, address_args, data_args, command_args,"
                      " auth_args, proxy_args");
        check_class<detail::member_class_t<M>>();
        asiosmtpd_hook_fn fn = nullptr;
        switch (h) {
        case hook::connect: fn = detail::pick<M, ASIOSMTPD_HOOK_CONNECT>(); break;
        case hook::helo: fn = detail::pick<M, ASIOSMTPD_HOOK_HELO>(); break;
        case hook::ehlo: fn = detail::pick<M, ASIOSMTPD_HOOK_EHLO>(); break;
        case hook::mail: fn = detail::pick<M, ASIOSMTPD_HOOK_MAIL>(); break;
        case hook::rcpt: fn = detail::pick<M, ASIOSMTPD_HOOK_RCPT>(); break;
        case hook::data: fn = detail::pick<M, ASIOSMTPD_HOOK_DATA>(); break;
        case hook::rset: fn = detail::pick<M, ASIOSMTPD_HOOK_RSET>(); break;
        case hook::noop: fn = detail::pick<M, ASIOSMTPD_HOOK_NOOP>(); break;
        case hook::quit: fn = detail::pick<M, ASIOSMTPD_HOOK_QUIT>(); break;
        case hook::vrfy: fn = detail::pick<M, ASIOSMTPD_HOOK_VRFY>(); break;
        case hook::unknown: fn = detail::pick<M, ASIOSMTPD_HOOK_UNKNOWN>(); break;
        case hook::session_close: fn = detail::pick<M, ASIOSMTPD_HOOK_SESSION_CLOSE>(); break;
        case hook::starttls: fn = detail::pick<M, ASIOSMTPD_HOOK_STARTTLS>(); break;
        case hook::auth_check: fn = detail::pick<M, ASIOSMTPD_HOOK_AUTH_CHECK>(); break;
        case hook::proxy: fn = detail::pick<M, ASIOSMTPD_HOOK_PROXY>(); break;
        case hook::data_chunk: fn = detail::pick<M, ASIOSMTPD_HOOK_DATA_CHUNK>(); break;
        case hook::txn_end: fn = detail::pick<M, ASIOSMTPD_HOOK_TXN_END>(); break;
        case hook::command: throw std::logic_error("register commands with registrar::command()");
        case hook::other:
        default: fn = detail::pick<M, -1>(); break;
        }
        if (!fn) throw std::logic_error(std::string("the handler's argument type does not fit hook ") + hook_name(h));
        return host_->register_hook(reg_, static_cast<asiosmtpd_hook_id>(h), fn);
    }

    /// Add the SMTP command `verb` ([A-Z0-9-]+, not built in) handled by member M:
    ///   verdict (Plugin::*)(call&, const command_args&)  or  verdict (Plugin::*)(call&).
    /// `help` is listed by HELP ("PING [text]"); flags: ASIOSMTPD_CMD_NEEDS_HELO. The
    /// default reply of an ACCEPT/CONTINUE without reply is "250 OK". Throws sdk::error
    /// (E_CONFLICT: verb taken; E_INVALID: bad verb).
    template <auto M>
    void command(std::string_view verb, std::string_view help = {}, std::uint32_t flags = 0)
    {
        static_assert(std::is_member_function_pointer_v<decltype(M)> &&
                          (detail::takes_none<M> || detail::takes<M, command_args>),
                      "a command handler is verdict (Plugin::*)(call&, const command_args&)"
                      " or verdict (Plugin::*)(call&)");
        check_class<detail::member_class_t<M>>();
        asiosmtpd_command_desc d{};
        d.struct_size = static_cast<std::uint32_t>(sizeof d);
        d.verb = to_str(verb);
        d.help = to_str(help);
        d.flags = flags;
        d.handler = detail::pick<M, 0>();
        const asiosmtpd_status st = host_->register_command(reg_, &d);
        if (st != ASIOSMTPD_OK) throw error(st, "register_command(" + std::string(verb) + ")");
    }

    /// ABI 1.1: add an AUTH mechanism (aiosmtpd's auth_<MECH>), advertised in EHLO's AUTH line.
    /// M is verdict (Plugin::*)(call&, const auth_args&): return c.challenge(bytes) for a 334
    /// round trip, accept (with c.identity(user)), reject (535) or tempfail (454).
    /// Throws sdk::error (E_CONFLICT: taken or PLAIN/LOGIN; E_INVALID: not [A-Z0-9_-]{1,20}).
    template <auto M>
    void auth_mechanism(std::string_view name)
    {
        static_assert(std::is_member_function_pointer_v<decltype(M)> && detail::takes<M, auth_args>,
                      "an AUTH mechanism is verdict (Plugin::*)(call&, const auth_args&)");
        check_class<detail::member_class_t<M>>();
        if (host_->struct_size < offsetof(asiosmtpd_host_api, register_auth_mechanism) + sizeof(void*))
            throw error(ASIOSMTPD_E_UNSUPPORTED, "register_auth_mechanism (host older than ABI 1.1)");
        const asiosmtpd_status st =
            host_->register_auth_mechanism(reg_, to_str(name), detail::pick<M, ASIOSMTPD_HOOK_AUTH_CHECK>());
        if (st != ASIOSMTPD_OK) throw error(st, "register_auth_mechanism(" + std::string(name) + ")");
    }

    /// ABI 1.3: this instance edits messages (call::edit() in its DATA hook); the host holds
    /// each message for the plugins after it. Throws sdk::error (E_UNSUPPORTED: older host).
    void editor()
    {
        if (!ASIOSMTPD_HOST_HAS(host_, declare_editor))
            throw error(ASIOSMTPD_E_UNSUPPORTED, "declare_editor (host older than ABI 1.3)");
        detail::check(host_->declare_editor(reg_), "declare_editor");
    }

    /// ABI 1.3: an object that outlives a reload (plugin.h keep_state): the first instance of
    /// this plugin that asks for `key` makes it (T(args...)); every later instance, also after
    /// a reload, gets the same object while some instance that asked lives. Guard it (old and
    /// new instances use it at once); keep a layout version in the key. Throws sdk::error.
    template <class T, class... Args>
    T& keep_state(std::string_view key, Args&&... args)
    {
        if (!ASIOSMTPD_HOST_HAS(host_, keep_state))
            throw error(ASIOSMTPD_E_UNSUPPORTED, "keep_state (host older than ABI 1.3)");
        auto candidate = std::make_unique<T>(std::forward<Args>(args)...);
        void* kept = host_->keep_state(reg_, to_str(key), candidate.get(), [](void* p) { delete static_cast<T*>(p); });
        if (!kept) throw error(ASIOSMTPD_E_INVALID, "keep_state(" + std::string(key) + ")");
        if (kept == candidate.get()) return *candidate.release();
        return *static_cast<T*>(kept);
    }

    /// Add an EHLO keyword line ("XFOO bar"). Throws sdk::error (E_INVALID: CR/LF, > 500 bytes).
    void ehlo_keyword(std::string_view line)
    {
        const asiosmtpd_status st = host_->register_ehlo_keyword(reg_, to_str(line));
        if (st != ASIOSMTPD_OK) throw error(st, "register_ehlo_keyword(" + std::string(line.substr(0, 40)) + ")");
    }

    const asiosmtpd_host_api* host() const noexcept { return host_; }
    asiosmtpd_ctx* ctx() const noexcept { return ctx_; }
    asiosmtpd_registrar* raw() const noexcept { return reg_; }

private:
    template <class C>
    void check_class() const
    {
        // The trampoline turns the instance pointer into a C*: only right for the class that
        // ASIOSMTPD_PLUGIN names (a base-class member would need an offset adjustment).
        if (detail::type_tag<C>() != plugin_tag_)
            throw std::logic_error("a handler must be a member function of the plugin class itself");
    }

    const asiosmtpd_host_api* host_;
    asiosmtpd_ctx* ctx_;
    asiosmtpd_registrar* reg_;
    const void* plugin_tag_;
};

namespace detail {

/// create()/destroy() of plugin class P, used by ASIOSMTPD_PLUGIN.
template <class P>
struct entry {
    static_assert(std::is_constructible_v<P, registrar&>,
                  "a plugin class is constructible from asiosmtpd::sdk::registrar&");

    static asiosmtpd_status create(const asiosmtpd_host_api* host, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg,
                                   void** out_instance, asiosmtpd_errbuf* err) noexcept
    {
        if (out_instance) *out_instance = nullptr;
        if (!host || !reg || !out_instance) {
            write_error(err, "create() called with a NULL argument");
            return ASIOSMTPD_E_INVALID;
        }
        if (host->abi_major != ASIOSMTPD_ABI_MAJOR || host->struct_size < host_api_v1_0_size) {
            write_error(err, "the host's plugin ABI does not match this plugin (needs 1.0)");
            return ASIOSMTPD_E_UNSUPPORTED;
        }
        try {
            auto box = std::make_unique<instance<P>>();
            box->host = host;
            box->ctx = ctx;
            registrar r(host, ctx, reg, type_tag<P>());
            box->plugin.emplace(r);
            box->object = &*box->plugin;
            *out_instance = static_cast<instance_base*>(box.release());
            return ASIOSMTPD_OK;
        } catch (const config_error& e) {
            // ABI 1.3: the host names the file, the line and the full key; older hosts print
            // the errbuf's what().
            if (ASIOSMTPD_HOST_HAS(host, cfg_error))
                host->cfg_error(reg, e.node(), to_str(e.key()), to_str(e.problem()));
            write_error(err, e.what());
        } catch (const std::exception& e) {
            write_error(err, e.what());
        } catch (...) {
            write_error(err, "unknown exception");
        }
        return ASIOSMTPD_E_INVALID;
    }

    static void destroy(void* inst) noexcept { delete static_cast<instance<P>*>(static_cast<instance_base*>(inst)); }
};

}  // namespace detail
}  // namespace asiosmtpd::sdk

/// ASIOSMTPD_PLUGIN(Class, "name", "version", "one-line description", flags)
/// Defines the entry symbol asiosmtpd_plugin_entry_v1 for plugin class `Class` (constructed
/// from registrar& in create(), destroyed in destroy()). Use once per library, at namespace
/// scope. `name` is [a-z0-9_.-]+; flags: 0 or ASIOSMTPD_PF_THREAD_SAFE (handlers of different
/// sessions may then run concurrently: guard shared state yourself).
/// The descriptor asks for host ABI 1.0 (define ASIOSMTPD_PLUGIN_MIN_ABI_MINOR before
/// including this header to require more).
#ifndef ASIOSMTPD_PLUGIN_MIN_ABI_MINOR
#define ASIOSMTPD_PLUGIN_MIN_ABI_MINOR 0u
#endif
#define ASIOSMTPD_PLUGIN(Class, Name, Version, Description, Flags)                                                     \
    extern "C" ASIOSMTPD_EXPORT const asiosmtpd_plugin_descriptor* asiosmtpd_plugin_entry_v1(void)                     \
    {                                                                                                                  \
        static const asiosmtpd_plugin_descriptor descriptor = {                                                        \
            static_cast<std::uint32_t>(sizeof(asiosmtpd_plugin_descriptor)),                                           \
            ASIOSMTPD_ABI_MAJOR,                                                                                       \
            ASIOSMTPD_PLUGIN_MIN_ABI_MINOR,                                                                            \
            std::uint32_t{Flags},                                                                                      \
            Name,                                                                                                      \
            Version,                                                                                                   \
            Description,                                                                                               \
            &::asiosmtpd::sdk::detail::entry<Class>::create,                                                           \
            &::asiosmtpd::sdk::detail::entry<Class>::destroy,                                                          \
        };                                                                                                             \
        return &descriptor;                                                                                            \
    }

#endif  // ASIOSMTPD_PLUGIN_HPP
