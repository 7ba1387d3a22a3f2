// SPDX-License-Identifier: Apache-2.0
// engine: the sans-I/O SMTP/LMTP protocol state machine. Bytes in, reply bytes and hook
// requests out; no sockets, no clock, no threads, no exceptions on bad input.
//
// Usage: start(); then repeatedly receive() bytes (or prepare()/commit() to read straight into
// the engine's one receive buffer), write out whatever output() holds, and when
// pending_hook() is set, run the plugin chain and call hook_done(). While a hook is pending the
// engine processes nothing else (pipelined commands wait in the buffer), so replies stay in
// order. close_requested() means: write the remaining output, then close.
//
// Replies and check order follow aiosmtpd 1.4 (aiosmtpd's smtp.py), with the deliberate
// differences of docs/behaviour.md.
#pragma once

#include "proto/replies.hpp"

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::proto {

/// Hooks the engine may ask for; values match the ASIOSMTPD_HOOK_* ids of the SDK.
enum class hook_kind : std::uint8_t {
    connect = 1,
    helo = 2,
    ehlo = 3,
    mail = 4,
    rcpt = 5,
    data = 6,
    rset = 7,
    noop = 8,
    quit = 9,
    vrfy = 10,
    unknown = 11,
    session_close = 12,  ///< run by the session when it ends, never asked by the engine
    starttls = 13,
    auth_check = 14,      ///< AUTH PLAIN/LOGIN credentials (login, password, authzid)
    proxy = 15,           ///< run by the session, never asked by the engine (PROXY header)
    data_chunk = 16,      ///< the next piece of the unstuffed message, while it arrives
    txn_end = 17,         ///< notification by the session: a transaction ended (take_transaction_ends())
    auth_mechanism = 30,  ///< a plugin's AUTH mechanism step (settings::auth_mechanisms[command_index])
    command = 31,         ///< a plugin-registered verb (settings::commands[command_index])
};

constexpr std::uint32_t hook_bit(hook_kind k) noexcept { return 1u << static_cast<unsigned>(k); }

/// The one table of hook names, as logs and metrics show them ("COMMAND" stands for any
/// plugin-registered verb; callers name those by their verb).
constexpr std::string_view hook_name(hook_kind k) noexcept
{
    switch (k) {
    case hook_kind::connect: return "CONNECT";
    case hook_kind::helo: return "HELO";
    case hook_kind::ehlo: return "EHLO";
    case hook_kind::mail: return "MAIL";
    case hook_kind::rcpt: return "RCPT";
    case hook_kind::data: return "DATA";
    case hook_kind::rset: return "RSET";
    case hook_kind::noop: return "NOOP";
    case hook_kind::quit: return "QUIT";
    case hook_kind::vrfy: return "VRFY";
    case hook_kind::unknown: return "UNKNOWN";
    case hook_kind::session_close: return "SESSION_CLOSE";
    case hook_kind::starttls: return "STARTTLS";
    case hook_kind::auth_check: return "AUTH_CHECK";
    case hook_kind::proxy: return "PROXY";
    case hook_kind::data_chunk: return "DATA_CHUNK";
    case hook_kind::txn_end: return "TXN_END";
    case hook_kind::auth_mechanism: return "AUTH";
    case hook_kind::command: return "COMMAND";
    }
    return "?";
}

/// A verb added by a plugin (aiosmtpd's smtp_<VERB>).
struct custom_command {
    std::string verb;  ///< upper-case
    std::string help;  ///< HELP text; empty = not listed
    bool needs_helo = false;
};

/// Everything the engine needs to know about its server; shared, immutable, by all sessions
/// of one configuration generation.
struct settings {
    std::string hostname = "localhost";
    std::string ident = "asiosmtpd";
    std::uint64_t data_size_limit = 33554432;  ///< 0 = none, and no SIZE keyword
    std::size_t command_size_limit = 512;
    bool enable_smtputf8 = false;
    bool decode_data = false;
    bool advertise_pipelining = false;
    /// server.enable_chunking: CHUNKING and BINARYMIME (RFC 3030), the BDAT command.
    bool enable_chunking = false;
    bool lmtp = false;
    bool starttls_available = false;  ///< this listener offers STARTTLS
    bool require_starttls = false;    ///< only meaningful with starttls_available (aiosmtpd)
    bool auth_required = false;
    bool auth_require_tls = true;
    bool call_limit_enabled = false;
    std::map<std::string, std::uint32_t, std::less<>> call_limits;  ///< per upper-cased verb
    std::uint32_t call_limit_default = 20;
    std::vector<custom_command> commands;
    std::vector<std::string> ehlo_keywords;    ///< plugin keyword lines, before "250 HELP"
    std::vector<std::string> auth_mechanisms;  ///< plugin mechanisms, upper-case (PLAIN, LOGIN built in)
    std::uint32_t auth_max_failures = 3;       ///< failed AUTHs before 421 and close; 0 = no limit
    std::uint32_t hook_mask = 0;               ///< hook_bit() of every hook that has a chain
    std::size_t data_line_limit = 1001;        ///< aiosmtpd line_length_limit, CRLF included
    /// The DATA hook needs the whole message in memory (some plugin with a DATA hook does not
    /// take the message in chunks). False: the engine keeps at most one chunk (streaming).
    bool data_whole_message = true;
    /// data_chunk hooks get pieces of at least this size (the last one may be smaller).
    std::size_t data_chunk_size = 64 * 1024;
    std::size_t unknown_command_budget = 5;  ///< aiosmtpd BOGUS_LIMIT
    /// DSN (RFC 3461): RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT, checked (proto/dsn.hpp) and
    /// kept as parameters (ENVID and ORCPT values in their case). Off: aiosmtpd's 555.
    bool enable_dsn = false;
    /// ENHANCEDSTATUSCODES (RFC 2034): the engine's replies get RFC 3463 codes (proto/enhanced_codes.hpp).
    bool enable_enhanced_status_codes = false;
    /// server.xclient_networks is not empty: XCLIENT is a known verb (an unknown one otherwise);
    /// the host says per client whether it may use it (engine::allow_xclient).
    bool xclient = false;
};

/// A plugin chain's outcome, as the engine applies it.
enum class verdict : std::uint8_t {
    none,            ///< every plugin said CONTINUE (or there are none): the host default
    accept,          ///< state change applied; reply given or default
    reject,          ///< 5xx; no state change
    tempfail,        ///< 4xx; no state change
    reject_close,    ///< 5xx, then close
    tempfail_close,  ///< 4xx (default 421), then close
    error,           ///< the plugin failed (nonsense, exception, timeout): 451 4.3.0
    challenge,       ///< AUTH mechanisms: send 334 with hook_result::challenge, await the answer
};

struct hook_result {
    proto::verdict verdict = verdict::none;
    std::uint16_t code = 0;  ///< 0 = no reply given: the default for the verdict
    std::string text;        ///< lines separated by '\n' (no CR)
    std::string challenge;   ///< verdict::challenge: raw bytes (base64-encoded on the wire)
    std::string identity;    ///< AUTH accepted: the identity (default: the login)
    /// LMTP: per-recipient replies (index = recipient; code 0 = the verdict's reply). Ignored
    /// with verdict::error: every recipient gets 451 4.3.0.
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies;
};

/// One finished DATA transaction, for the host's log (take_transaction()).
struct transaction_summary {
    std::string mail_from;              ///< "<>" for the null sender
    std::vector<std::string> rcpt_tos;  ///< the accepted recipients, in order
    std::size_t rcpts = 0;
    std::uint64_t size = 0;
    std::uint16_t code = 0;         ///< the reply's code (the first, for LMTP)
    std::uint64_t transaction = 0;  ///< its transaction_number()
};

/// How a transaction ended (the TXN_END notification), recorded when some plugin has that hook.
struct transaction_end {
    enum class how : std::uint8_t { accepted = 1, refused = 2, aborted = 3 };  ///< ASIOSMTPD_TXN_*
    how outcome = how::aborted;
    std::uint16_t code = 0;   ///< the message's reply code (the first, for LMTP); 0 when aborted
    std::string reply;        ///< its first line
    std::string_view reason;  ///< aborted: "rset", "helo", ... (a literal)
    std::string mail_from;
    std::size_t rcpts = 0;
    std::uint64_t size = 0;
};

/// A command the engine (or a plugin) answered with a 4xx or 5xx, for the host's log: the
/// command line as received (without CRLF) and the first line of the reply. AUTH, whose
/// failures the host logs on their own, and the reply to a message (the message line) are not
/// listed.
struct refusal {
    std::string command;
    std::string reply;
    std::uint64_t transaction = 0;  ///< transaction_number() when refused inside a transaction, else 0
};

/// What the engine asks the host to run. Views point into the engine and stay valid until
/// hook_done().
struct hook_request {
    hook_kind kind = hook_kind::noop;
    std::string_view verb;      ///< unknown and custom commands: upper-cased verb
    std::string_view argument;  ///< hostname, address, NOOP/command argument
    bool has_argument = false;
    std::size_t command_index = 0;        ///< for hook_kind::command
    std::span<const std::string> params;  ///< MAIL: upper-cased ESMTP parameters
    /// DATA: the unstuffed message, empty when streamed (then see content_size); data_chunk:
    /// the next piece of it.
    std::string_view content;
    bool streamed = false;           ///< DATA: the message went to data_chunk hooks and is not kept
    bool last_chunk = false;         ///< data_chunk: the final piece (the DATA hook comes next)
    std::uint64_t content_size = 0;  ///< DATA, data_chunk: unstuffed bytes of the whole message so far
    std::string_view authzid;        ///< auth_check: PLAIN's authorization identity
    std::string_view login;          ///< auth_check
    std::string_view password;       ///< auth_check (never log it)
    std::uint32_t step = 0;          ///< auth_mechanism: 0, 1, ...
    /// connect: asked after an accepted XCLIENT, not at the start: the host first makes the
    /// session the client of engine::xclient() (its peer, what plugins and logs see).
    bool xclient = false;
};

/// What the last accepted XCLIENT command gave (Postfix's XCLIENT_README). An attribute not
/// given is nullopt; [UNAVAILABLE] and [TEMPUNAVAIL] give "" (a port: 0). HELO, PROTO and LOGIN
/// the engine applies itself (helo_name(), extended_smtp(), authenticated()).
struct xclient_attributes {
    std::optional<std::string> name;      ///< NAME: the client's host name, as given
    std::optional<std::string> addr;      ///< ADDR: canonical ("IPV6:" prefix removed)
    std::optional<std::uint16_t> port;    ///< PORT
    std::optional<std::string> destaddr;  ///< DESTADDR: the address the client connected to
    std::optional<std::uint16_t> destport;
    std::optional<std::string> helo;   ///< HELO (characters Postfix censors become '?')
    std::optional<std::string> proto;  ///< "SMTP" or "ESMTP"
    std::optional<std::string> login;  ///< LOGIN: as if AUTH had succeeded with this identity
};

/// aiosmtpd's Envelope: one per transaction.
struct envelope {
    std::string mail_from;                  ///< empty until MAIL; "<>" for the null path
    std::vector<std::string> mail_options;  ///< upper-cased MAIL parameters
    bool smtp_utf8 = false;
    std::vector<std::string> rcpt_tos;
    /// Each accepted recipient's ESMTP parameters (DSN: NOTIFY, ORCPT), as rcpt_tos; empty
    /// without DSN (aiosmtpd accepts none). May be shorter than rcpt_tos: none for the rest.
    std::vector<std::vector<std::string>> rcpt_options;
    std::string content;  ///< unstuffed message (original_content)
    void clear() noexcept
    {
        mail_from.clear();
        mail_options.clear();
        smtp_utf8 = false;
        rcpt_tos.clear();
        rcpt_options.clear();
        content.clear();
    }
};

/// A member most sessions never use (AUTH, XCLIENT, BDAT refusals, a stop's reply): allocated
/// when first written, so that it costs an idle session one pointer. Reads before that see an
/// empty T.
template <class T>
class lazy {
public:
    [[nodiscard]] const T& get() const noexcept { return p_ ? *p_ : empty(); }
    T& set()
    {
        if (!p_) p_ = std::make_unique<T>();
        return *p_;
    }
    void reset() noexcept { p_.reset(); }

private:
    static const T& empty() noexcept
    {
        static const T none{};
        return none;
    }
    std::unique_ptr<T> p_;
};

class engine {
public:
    explicit engine(const settings& s);

    /// Begin the session: runs the connect hook (if any) or queues the greeting.
    void start();

    /// Feed bytes from the client (any chunking).
    void receive(std::string_view bytes);
    /// Zero-copy variant: a writable area of at least `min` bytes at the end of the receive
    /// buffer; commit(n) after reading n bytes into it. The area is valid until commit().
    std::span<char> prepare(std::size_t min);
    void commit(std::size_t n);
    /// Bytes read into a buffer the caller reuses (the event loop's one read buffer): processed
    /// where they are; only what stays unprocessed (an incomplete line, commands pipelined
    /// behind a hook) is copied into the engine's buffer. The same as receive() otherwise.
    void feed(std::string_view bytes);

    /// The outcome of the hook chain for pending_hook().
    void hook_done(hook_result result);

    /// The idle timer expired: queue 421 and close (docs/behaviour.md).
    void timed_out();
    /// The host is going away (shutdown, too many connections): queue 421 text and close.
    void abort_with(std::string_view reply);
    /// The host is stopping (docs/behaviour.md "Shutdown"): from now on, a command outside a
    /// transaction is answered `reply` (the 421) and the session closes, except QUIT, which gets
    /// its 221 as usual. A transaction in progress goes on.
    void drain(std::string_view reply) { drain_reply_.set().assign(reply); }

    /// Bytes to send; the caller clears them (clear_output()) once written.
    [[nodiscard]] std::string& output() noexcept { return out_; }
    void clear_output() noexcept { out_.clear(); }

    [[nodiscard]] const hook_request* pending_hook() const noexcept { return waiting_ ? &request_ : nullptr; }
    [[nodiscard]] bool close_requested() const noexcept { return closed_; }
    /// Why the engine asked to close ("quit", "timeout", ...), for logs.
    [[nodiscard]] std::string_view close_reason() const noexcept { return close_reason_; }

    /// The settings the engine runs with.
    [[nodiscard]] const settings& config() const noexcept { return settings_; }

    // --- session state, for the host API and logs ---
    [[nodiscard]] const std::string& helo_name() const noexcept { return host_name_; }
    [[nodiscard]] bool extended_smtp() const noexcept { return extended_smtp_; }
    [[nodiscard]] bool tls_active() const noexcept { return tls_active_; }
    [[nodiscard]] bool authenticated() const noexcept { return authenticated_; }
    /// The authenticated identity (empty before AUTH succeeded).
    [[nodiscard]] const std::string& auth_login() const noexcept { return auth_login_; }
    /// The last finished DATA transaction, once (then empty).
    [[nodiscard]] std::optional<transaction_summary> take_transaction() noexcept
    {
        return std::exchange(finished_, std::nullopt);
    }
    /// True once after each failed AUTH: the host may slow the reply down (brute force).
    [[nodiscard]] bool take_auth_failure() noexcept { return std::exchange(auth_failed_, false); }
    /// Commands refused since the last call, oldest first (then none until the next).
    [[nodiscard]] bool has_refusals() const noexcept { return !refusals_.empty(); }
    [[nodiscard]] std::vector<refusal> take_refusals() noexcept { return std::exchange(refusals_, {}); }
    /// The last failed AUTH: its mechanism and the login it tried ("" when the mechanism
    /// gives none), for the host's log (fail2ban). Never the password.
    [[nodiscard]] std::string_view failed_auth_mechanism() const noexcept { return failed_auth_mechanism_.get(); }
    [[nodiscard]] std::string_view failed_auth_login() const noexcept { return failed_auth_login_.get(); }
    [[nodiscard]] const proto::envelope& current_envelope() const noexcept { return envelope_; }
    [[nodiscard]] std::uint64_t transactions() const noexcept { return transactions_; }
    /// Transactions begun in this session (MAIL accepted): the number of the open or last one.
    [[nodiscard]] std::uint64_t transaction_number() const noexcept { return transaction_number_; }
    /// In a transaction (MAIL accepted, not yet ended).
    [[nodiscard]] bool in_transaction() const noexcept { return !envelope_.mail_from.empty(); }
    /// The transactions that ended since the last call, oldest first (recorded only when some
    /// plugin has the TXN_END hook). Each ended with a change of envelope_serial().
    [[nodiscard]] bool has_transaction_ends() const noexcept { return !txn_ends_.empty(); }
    [[nodiscard]] std::vector<transaction_end> take_transaction_ends() noexcept { return std::exchange(txn_ends_, {}); }
    /// The session ends (`reason`: "quit", "disconnect", "timeout", "shutdown", ...): an open
    /// transaction is over, without a message.
    void end_session(std::string_view reason) noexcept;
    /// Changes every time the envelope is reset (a transaction ended or was abandoned).
    [[nodiscard]] std::uint64_t envelope_serial() const noexcept { return envelope_serial_; }
    /// Between commands: no transaction open, nothing buffered, no hook running.
    [[nodiscard]] bool idle() const noexcept
    {
        return phase_ == phase::command && !waiting_ && envelope_.mail_from.empty() && end_ == pos_;
    }
    /// Changes each time the engine has read a whole unit of client input: a command line, an
    /// AUTH response line, or a message up to its final dot. The host's timeout bounds the time
    /// from one change to the next, whatever partial input arrives meanwhile (a client that
    /// trickles a line byte by byte does not keep its session alive).
    [[nodiscard]] std::uint64_t progress() const noexcept { return progress_; }
    /// Reading message data (between the 354 reply and the final dot, or a BDAT chunk's octets).
    [[nodiscard]] bool reading_data() const noexcept { return phase_ == phase::data || phase_ == phase::bdat; }
    /// Bytes buffered but not yet processed (pipelined input waiting behind a hook).
    [[nodiscard]] std::size_t buffered() const noexcept { return end_ - pos_; }
    /// If nothing is buffered, give back a receive buffer larger than `keep` bytes (a session
    /// waiting for its client holds at most `keep`; a smaller one is kept, so that a command
    /// costs no allocation) and return true.
    bool release_buffer(std::size_t keep) noexcept;

    /// server.received_header: called as each message begins (the 354 reply), it gives the
    /// trace field(s) that go at the top of the message the plugins see (the session composes
    /// them: proto/trace.hpp). They do not count against data_size_limit or the mail log's size.
    void set_message_prefix(std::function<std::string()> prefix) { message_prefix_ = std::move(prefix); }

    /// XCLIENT (settings::xclient): this client may use it (its address is in
    /// server.xclient_networks); the EHLO reply then lists it.
    void allow_xclient(bool on) noexcept { xclient_allowed_ = on; }
    [[nodiscard]] bool xclient_allowed() const noexcept { return xclient_allowed_; }
    /// The attributes of the last accepted XCLIENT command (hook_request::xclient).
    [[nodiscard]] const xclient_attributes& xclient() const noexcept { return xclient_.get(); }

    /// The TLS layer is active (implicit TLS): counts as TLS for AUTH and plugins (docs/behaviour.md).
    void set_tls_active(bool on) noexcept { tls_active_ = on; }

    /// STARTTLS was accepted ("220 Ready to start TLS" is in output()): write it, then run
    /// the TLS handshake and call tls_established(), or close on failure. Input buffered after
    /// the STARTTLS line has been discarded (RFC 3207 §4.2, CVE-2011-0411, CVE-2024-34083).
    [[nodiscard]] bool tls_requested() const noexcept { return phase_ == phase::tls; }
    /// Instead of the handshake, while tls_requested() and before output() is written: the
    /// "220 Ready to start TLS" becomes `reply` (a 454, RFC 3207 §4) and the session goes on in
    /// plaintext as it was before STARTTLS (its greeting and transaction kept; what was
    /// pipelined after STARTTLS stays discarded).
    void refuse_tls(std::string_view reply);
    /// The handshake after STARTTLS succeeded: the SMTP session starts over (a new EHLO is
    /// needed), then the STARTTLS hook runs if a plugin has one.
    void tls_established();

private:
    enum class phase : std::uint8_t { greeting, command, data, tls, auth, closed, bdat };
    enum class auth_kind : std::uint8_t { none, plain, login, plugin };
    enum class data_error : std::uint8_t { none, too_long, too_much, refused };

    struct line_read {
        std::string_view text;
        bool too_long;
    };
    std::optional<line_read> next_line(std::size_t limit);
    void pump();
    bool step_command();
    bool step_data();
    bool step_auth();
    void auth_response(std::string_view line);
    void auth_credentials(std::string_view mechanism, std::string_view authzid, std::string_view login,
                          std::string_view password);
    void auth_plugin_step(std::optional<std::string_view> response);
    void auth_success(const hook_result& r, std::string_view login);
    void auth_failure(const hook_result& r);
    void auth_end() noexcept;
    void handle_line(std::string_view line);
    void handle_command(std::string_view line);
    // The command table (engine.cpp): each built-in verb with its flags, handler and HELP text.
    struct command_spec;
    static std::span<const command_spec> command_table() noexcept;
    static const command_spec* find_command(std::string_view verb) noexcept;
    [[nodiscard]] bool offered(const command_spec& c) const noexcept;
    void dispatch(const command_spec* spec, std::string_view verb, std::string_view arg, bool has_arg);
    void finish_hook(const hook_result& r);

    // Handlers of the built-in verbs, one signature (the command table's).
    void on_helo(std::string_view arg, bool has_arg);
    void on_ehlo(std::string_view arg, bool has_arg);
    void on_mail(std::string_view arg, bool has_arg);
    void on_rcpt(std::string_view arg, bool has_arg);
    void on_data(std::string_view arg, bool has_arg);
    void on_rset(std::string_view arg, bool has_arg);
    void on_noop(std::string_view arg, bool has_arg);
    void on_quit(std::string_view arg, bool has_arg);
    void on_vrfy(std::string_view arg, bool has_arg);
    void on_help(std::string_view arg, bool has_arg);
    void on_expn(std::string_view arg, bool has_arg);
    void on_auth(std::string_view arg, bool has_arg);
    void on_starttls(std::string_view arg, bool has_arg);
    void on_xclient(std::string_view arg, bool has_arg);
    void on_unknown(std::string_view verb, std::string_view arg, bool has_arg);
    void on_custom(std::size_t index, std::string_view verb, std::string_view arg, bool has_arg);
    void end_of_data();
    void begin_message();

    // BDAT (RFC 3030, settings::enable_chunking): engine_bdat.cpp.
    void on_bdat(std::string_view arg, bool has_arg);
    bool after_bdat(std::string_view line, std::size_t reply_start);
    void start_chunk(std::uint64_t size, bool last, std::string_view refusal);
    bool step_bdat();
    void end_of_chunk();
    void fail_bdat_message(std::size_t reply_start);
    bool bdat_refuses_data();
    /// A message is being built from BDAT chunks (its first chunk was accepted, LAST not yet).
    [[nodiscard]] bool bdat_open() const noexcept { return in_transaction() && bdat_serial_ == envelope_serial_; }
    /// A BDAT message failed before its LAST chunk: its remaining chunks are discarded (503).
    [[nodiscard]] bool bdat_failed() const noexcept
    {
        return !in_transaction() && bdat_failed_serial_ == envelope_serial_;
    }

    void send_greeting();
    void send_ehlo_lines();
    void deliver_data_reply(const hook_result& r);
    void summarize(std::size_t reply_start);

    bool need_helo();
    bool need_auth();
    bool has_hook(hook_kind k) const noexcept { return (settings_.hook_mask & hook_bit(k)) != 0; }
    void ask(hook_kind k, std::string_view arg = {}, bool has_arg = false);
    /// A command's outcome: the plugins' (ask) when some plugin has the hook, else the default
    /// applied at once by the same step (finish_hook with no verdict), so that both paths
    /// change the state in one place.
    void decide(hook_kind k, std::string_view arg = {}, bool has_arg = false, std::span<const std::string> params = {});

    /// Apply a verdict's reply: returns true when the state change is to be applied.
    bool reply_for(const hook_result& r, std::string_view default_reply);
    void reply(std::string_view line);
    [[nodiscard]] std::string_view enhanced_code_for(std::string_view line) const noexcept;
    void reply_plugin(const hook_result& r);
    void close(std::string_view why) noexcept;
    void ask_chunk(bool last);
    void finish_data();
    bool keeps_content() const noexcept
    {
        return has_hook(hook_kind::data_chunk) || (has_hook(hook_kind::data) && settings_.data_whole_message);
    }
    /// The transaction is over (the envelope goes): TXN_END learns how, when it is hooked.
    void reset_envelope(transaction_end::how outcome = transaction_end::how::aborted, std::string_view reason = {},
                        std::size_t reply_start = std::string::npos) noexcept;
    void note_transaction_end(transaction_end::how outcome, std::string_view reason, std::size_t reply_start) noexcept;
    std::vector<transaction_end> txn_ends_;
    std::function<std::string()> message_prefix_;
    std::size_t command_limit(std::string_view verb) const noexcept;
    std::string help_list() const;

    const settings& settings_;
    std::string in_;             // the one receive buffer (storage); [pos_, end_) unprocessed
    const char* fed_ = nullptr;  // during feed(): the caller's bytes, read in place of in_
    [[nodiscard]] const char* input() const noexcept { return fed_ ? fed_ : in_.data(); }
    std::size_t pos_ = 0;
    std::size_t end_ = 0;
    std::size_t scan_ = 0;  // command/data scanning resumes here (no rescans)
    std::string out_;
    std::string verb_;  // the current verb, upper-cased (reused: no allocation per command)

    phase phase_ = phase::greeting;
    bool waiting_ = false;
    bool closed_ = false;
    std::string_view close_reason_;  // points to a literal
    bool connect_rejected_ = false;
    bool tls_vetoed_ = false;       // the STARTTLS hook refused the TLS session
    bool discarding_line_ = false;  // command line beyond the stream limit: skip to LF

    // session (aiosmtpd Session)
    std::string host_name_;
    bool extended_smtp_ = false;
    bool tls_active_ = false;
    bool authenticated_ = false;
    std::size_t unknown_budget_;
    std::map<std::string, std::uint32_t, std::less<>> calls_;
    std::uint64_t transactions_ = 0;
    std::uint64_t transaction_number_ = 0;
    std::uint64_t envelope_serial_ = 0;
    std::uint64_t progress_ = 0;

    std::optional<transaction_summary> finished_;

    // AUTH (RFC 4954)
    auth_kind auth_kind_ = auth_kind::none;
    std::size_t auth_plugin_ = 0;
    std::uint32_t auth_step_ = 0;
    lazy<std::string> auth_user_;  // LOGIN: the user name between the two challenges
    std::string auth_login_;       // the authenticated identity
    std::uint32_t auth_failures_ = 0;
    bool auth_failed_ = false;
    std::vector<refusal> refusals_;
    std::string hooked_line_;  // the command line whose hook is pending (for refusals_)
    void note_refusal(std::string_view command, std::size_t reply_start);
    lazy<std::string> failed_auth_mechanism_;
    lazy<std::string> failed_auth_login_;

    envelope envelope_;

    // DATA reader
    data_error data_error_ = data_error::none;
    std::uint64_t data_bytes_ = 0;
    std::uint64_t data_unstuffed_ = 0;  // message bytes after unstuffing
    bool data_non_ascii_ = false;       // decode_data without SMTPUTF8: some byte >= 0x80 seen
    std::size_t chunk_from_ = 0;        // envelope_.content[chunk_from_, end) not yet given to data_chunk
    lazy<hook_result> chunk_refusal_;   // a data_chunk hook refused the message: its reply, after the dot
    std::size_t partial_line_ = 0;      // bytes of the current line already consumed (too long)

    // BDAT reader
    std::uint64_t bdat_remaining_ = 0;          // octets of the current chunk still to read
    std::uint64_t bdat_size_ = 0;               // the current chunk's size
    bool bdat_last_ = false;                    // the current chunk is the LAST
    lazy<std::string> bdat_refusal_;            // the chunk was refused before it was read: its reply
    lazy<std::string> bdat_line_;               // the BDAT command line (for refusals_)
    std::uint64_t bdat_serial_ = ~0ull;         // envelope_serial_ of the message BDAT is building
    std::uint64_t bdat_failed_serial_ = ~0ull;  // envelope_serial_ after a BDAT message failed

    // the pending hook
    hook_request request_;
    std::string request_arg_;  // owns what request_.argument shows
    std::string request_verb_;
    std::vector<std::string> request_params_;

    lazy<std::string> drain_reply_;  // drain(): the host is stopping

    // XCLIENT
    bool xclient_allowed_ = false;
    lazy<xclient_attributes> xclient_;
    lazy<std::array<std::string, 3>> request_secret_;  // auth_check: authzid, login, password (owned while asked)
};

}  // namespace asiosmtpd::proto
