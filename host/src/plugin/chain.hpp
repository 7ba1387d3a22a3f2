// SPDX-License-Identifier: Apache-2.0
// chain: one run of a hook chain, sans-I/O. It builds the hook's arguments, calls the plugins
// in config order, checks and translates every answer, and stops where a plugin suspends its
// call; the driver (the server's session, awaiting with Asio) resumes it once that call was
// completed or given up. Everything that happens to a verdict happens here: a reader looking
// for "what does REJECT with a 250 do" reads judge() and nothing else.
//
// No Asio, no sockets, no clock but for the duration of a call: the server's session, the SDK
// test kit (core/testkit_core.cpp) and the unit tests drive it the same way.
#pragma once

#include "plugin/draft.hpp"
#include "plugin/generation.hpp"
#include "plugin/slots.hpp"
#include "proto/engine.hpp"
#include "proxy/parser.hpp"

#include <asiosmtpd/plugin.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace asiosmtpd::plugin {

/// What a hook call can see of its session; implemented by the session (and test doubles).
class session_view {
public:
    virtual ~session_view() = default;
    [[nodiscard]] virtual std::uint64_t session_id() const noexcept = 0;
    [[nodiscard]] virtual const proto::engine& smtp() const noexcept = 0;
    [[nodiscard]] virtual std::string_view peer_address() const noexcept = 0;
    [[nodiscard]] virtual std::uint16_t peer_port() const noexcept = 0;
    [[nodiscard]] virtual std::string_view local_address() const noexcept { return {}; }
    [[nodiscard]] virtual std::uint16_t local_port() const noexcept { return 0; }
    /// The PROXY header the connection began with (nullptr: none), and the load balancer's
    /// address when that header named a client ("" otherwise).
    [[nodiscard]] virtual const proxy::header* proxy_header() const noexcept { return nullptr; }
    [[nodiscard]] virtual std::string_view proxy_via() const noexcept { return {}; }
    /// TLS details ("" when TLS is not active).
    [[nodiscard]] virtual std::string_view tls_version() const noexcept { return {}; }
    [[nodiscard]] virtual std::string_view tls_cipher() const noexcept { return {}; }
    [[nodiscard]] virtual std::string_view tls_peer_subject() const noexcept { return {}; }
    /// The event loop the session runs on, where an isolated plugin's answers are read
    /// (isolation/adapter.cpp); nullptr for a driver without one (they are read elsewhere).
    [[nodiscard]] virtual boost::asio::io_context* event_loop() const noexcept { return nullptr; }
    /// Per-instance data slots of this session (scope session or transaction). Transaction
    /// slots end with their transaction: end_transactions() frees them after TXN_END.
    virtual class slots& data_slots() noexcept;

    /// The message held for the plugins after an editor (its live DATA_CHUNK pieces, when the
    /// DATA hooks take it in pieces), until the DATA chain ends.
    std::unique_ptr<spool> held;

private:
    friend void end_transactions(const generation& gen, session_view& session, proto::engine& engine) noexcept;
    class slots own_slots_;
    std::uint64_t slots_serial_ = 0;
    bool ending_ = false;  ///< in TXN_END: the ended transaction's slots are still there
};

/// After every step of the engine (input processed, a hook's outcome applied, the session's
/// end): TXN_END for each transaction that ended, with its slots still there, then those slots
/// freed. The server's session and the SDK test kit call it alike.
void end_transactions(const generation& gen, session_view& session, proto::engine& engine) noexcept;

/// A suspended hook call: filled by complete() on any thread, then `notify` runs (the
/// session posts to its own thread). Tokens are never reused, so a stale one is recognised.
struct pending_call {
    std::mutex lock;
    std::int32_t hook = 0;  ///< asiosmtpd_call::hook of the suspended call (set by suspend())
    bool done = false;
    int32_t verdict = ASIOSMTPD_CONTINUE;
    std::uint16_t code = 0;
    std::string text;
    /// complete() was refused (E_INVALID): the call ended as a plugin error, for this reason.
    std::string refused;
    std::function<void()> notify;                                     ///< set by the driver before it waits
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies;  ///< set_rcpt_reply_pending
    /// DATA: the recipients of the transaction (set by suspend()), and the per-recipient
    /// replies refused so far (asiosmtpd_call::refused_rcpt_replies, moved here by suspend()).
    /// complete() ends a call with refusals left as a plugin error.
    std::size_t rcpt_count = 0;
    std::vector<std::pair<std::size_t, std::string>> refused_rcpt_replies;
    /// ABI 1.3, the DATA call of an editor: edit_message_pending() records here (edits made
    /// before suspend() were moved here by it); resume() hands them to the chain.
    bool may_edit = false;
    bool lmtp = false;
    edit_batch edits;
    spool_settings spool;
    /// isolation: process (isolation/adapter.cpp): the AUTH identity the plugin set in its
    /// child before it suspended, and who to tell when the host gives up on the call.
    std::string identity;
    std::function<void()> on_cancel;
};

/// Forget a token (timeout, session gone): a later complete() gets ASIOSMTPD_E_GONE. A call
/// given up on this way (not completed) runs its on_cancel.
void cancel(asiosmtpd_token token) noexcept;

/// isolation: process: end a suspended call with what the plugin's child process answered, as
/// complete() does; `error` not empty makes it a plugin error with that reason (the child
/// crashed, a reply the plugin set was refused...). Returns what complete() would.
/// `returned`: the verdict was the hook's return value (a refused one is logged as judge()
/// says it, without "complete() refused: ").
asiosmtpd_status complete_remote(asiosmtpd_token token, asiosmtpd_verdict verdict, std::uint16_t code,
                                 std::string_view text, std::string_view identity, std::string_view error,
                                 bool returned = false);

/// One plugin log line, as log_fields() writes it: `session` (0: outside a call) and `txn`
/// ("" outside a transaction) as the call's; what a plugin's child process logged.
void write_plugin_log(const instance* who, std::int32_t level, std::uint64_t session, std::string_view txn,
                      std::string_view message, const asiosmtpd_str* keys, const asiosmtpd_str* values,
                      std::size_t count);

}  // namespace asiosmtpd::plugin

/// One hook call. The SDK's opaque asiosmtpd_call; lives in the chain that makes it.
struct asiosmtpd_call {
    asiosmtpd::plugin::instance* owner = nullptr;
    asiosmtpd::plugin::session_view* session = nullptr;
    std::int32_t hook = 0;
    bool active = true;      ///< false once the hook returned (T5)
    std::uint16_t code = 0;  ///< set_reply
    std::string text;
    std::string auth_challenge;                                       ///< set_auth_challenge
    std::string auth_identity;                                        ///< set_auth_identity
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies;  ///< set_rcpt_reply
    /// Per-recipient replies set_rcpt_reply() refused (recipient index, the log's reason),
    /// each until a later call for the same recipient succeeds. suspend() moves these and
    /// rcpt_replies to the pending call, where set_rcpt_reply[_pending]() go on from then.
    std::vector<std::pair<std::size_t, std::string>> refused_rcpt_replies;
    asiosmtpd_token token = 0;  ///< set by suspend()
    std::shared_ptr<asiosmtpd::plugin::pending_call> pending;
    /// Why set_reply() last refused a reply; cleared by an accepted one.
    std::string refused_reply;
    /// ABI 1.3: in a DATA chain with an editor, the transaction as the plugins before this one
    /// left it (txn_info() and friends read it); nullptr otherwise.
    asiosmtpd::plugin::draft* draft = nullptr;
    const asiosmtpd::plugin::spool_settings* spool = nullptr;
    asiosmtpd::plugin::edit_batch edits;  ///< edit_message(): applied when the call goes on
};

namespace asiosmtpd::plugin {

/// A hook's name as logs and metrics give it ("RCPT"; a plugin command by its verb, read from
/// its arguments when given).
[[nodiscard]] std::string_view hook_label(std::int32_t hook, const void* args = nullptr) noexcept;

/// Call one hook entry (taking the instance lock when the plugin is not thread-safe) and
/// return its raw verdict. The call is watched: one that keeps its thread longer than
/// blocking_threshold is logged (event=plugin_blocking) while it still runs.
int32_t invoke(const hook_entry& e, asiosmtpd_call& call, const void* args) noexcept;

/// A hook call holding its thread longer than this is a blocking incident (plugin.h T4).
inline constexpr std::chrono::milliseconds blocking_threshold{500};
/// How often the watchdog thread looks at the calls in progress.
inline constexpr std::chrono::milliseconds blocking_check_interval{100};
/// Blocking incidents since start (asiosmtpd_plugin_blocking_total).
[[nodiscard]] std::uint64_t blocking_incidents() noexcept;

/// Why a verdict with this reply cannot be used ("" when it can): an unknown verdict, a reply
/// breaking the reply rules (sdk::reply_problem) whatever the verdict, a reply class that does
/// not fit it (ACCEPT 2xx/3xx, REJECT* 5xx, TEMPFAIL* 4xx; CONTINUE ignores its reply), an
/// AUTH_CHALLENGE outside an AUTH mechanism (`auth_mechanism`) or one too long for a 334 line.
/// The one check: judge() applies it to a returned verdict, complete() to a completed one.
[[nodiscard]] std::string verdict_problem(int32_t verdict, std::uint16_t code, std::string_view text,
                                          bool auth_mechanism);

/// A plugin's answer as the engine applies it. A verdict verdict_problem() refuses, or one
/// given after a reply the host refused (`refused`: set_reply(), set_rcpt_reply(), complete()),
/// becomes verdict::error with the reason in `why`.
[[nodiscard]] proto::hook_result judge(int32_t verdict, std::uint16_t code, std::string text, bool auth_mechanism,
                                       std::string_view refused, std::string& why);

/// What the driver hears of each plugin's answer: for logs and metrics, which are the host's.
class chain_events {
public:
    virtual ~chain_events() = default;
    /// `plugin` answered `hook` after `took`; `why` says what was wrong when r is an error.
    virtual void answered(const instance& plugin, std::string_view hook, std::chrono::steady_clock::duration took,
                          const proto::hook_result& r, std::string_view why) = 0;
    /// The host itself failed the chain (a held message could not be written or read): the
    /// session gets 451 4.3.0.
    virtual void host_failed(std::string_view hook, std::string_view why) = 0;
};

/// One run of the chain of plugins for one hook request.
///
///     chain c(gen, request, session, events);
///     for (bool waiting = c.run(); waiting; waiting = c.resume(why_not_completed))
///         wait until c.pending() is done, or the plugin's timeout();
///     engine.hook_done(c.take_result());
///
/// The request, the session and the generation outlive the chain.
class chain {
public:
    chain(const generation& gen, const proto::hook_request& req, session_view& session, chain_events& events);
    /// With the hook's argument struct made by the caller (the test kit's session::run()),
    /// instead of one built from the request; `args` outlives the chain.
    chain(const generation& gen, const proto::hook_request& req, session_view& session, chain_events& events,
          const void* args);
    ~chain();
    chain(const chain&) = delete;
    chain& operator=(const chain&) = delete;

    /// Call the plugins until one suspends its call (true: wait for pending(), then resume())
    /// or the chain has its outcome (false: take_result()).
    bool run();
    /// The suspended call is over: completed (its pending() is done) or not, and then
    /// `not_completed` says why ("did not complete within 30000 ms"). Forgets the token, so a
    /// late complete() answers E_GONE, and goes on like run().
    bool resume(std::string_view not_completed);
    /// The client left while the call was suspended: forget the token; there is no outcome.
    void abandon() noexcept;

    /// While suspended: the call and how long its plugin may take.
    [[nodiscard]] const std::shared_ptr<pending_call>& pending() const noexcept { return call_.pending; }
    [[nodiscard]] std::chrono::milliseconds timeout() const noexcept;
    [[nodiscard]] const instance& plugin() const noexcept { return *call_.owner; }
    /// The hook being run, as logs name it.
    [[nodiscard]] std::string_view hook() const noexcept { return hook_label(call_.hook, args_ptr_); }

    /// The outcome (verdict::none when every plugin went on, or there are none).
    [[nodiscard]] proto::hook_result take_result() noexcept { return std::move(result_); }
    /// The plugin whose verdict ended the chain ("" when none did).
    [[nodiscard]] std::string_view decided_by() const noexcept { return decided_by_; }

private:
    // The hook's argument struct (plugin.h), one kind at a time, built once per run. Views
    // point into the engine and the session, which do not change while the chain runs.
    struct arguments {
        union {
            asiosmtpd_connect_args connect;
            asiosmtpd_helo_args helo;
            asiosmtpd_address_args address;
            asiosmtpd_data_args data;
            asiosmtpd_command_args command;
            asiosmtpd_proxy_args proxy;
            asiosmtpd_auth_args auth;
        };
        std::vector<asiosmtpd_str> params;
        std::string tlv_bytes;
    };
    const void* build_arguments();
    bool finish_entry(int32_t verdict, std::string why);
    // ABI 1.3 editing (draft.hpp): hold the live pieces, plan the DATA chain, feed the pieces
    // of the edited message to DATA_CHUNK plugins after an editor.
    bool prepare_editing();
    const void* data_arguments(std::string& error);
    const void* next_piece(std::string& error);
    void fail_host(std::string why);

    // One call of the DATA chain when some plugin edits: a DATA hook, or the pieces of the
    // message for a DATA_CHUNK plugin after the first editor (`replay`).
    struct step {
        const hook_entry* entry;
        bool replay;
    };

    const generation& gen_;
    const proto::hook_request& req_;
    session_view& session_;
    chain_events& events_;
    std::span<const hook_entry> entries_;
    std::vector<step> plan_;  ///< DATA with an editor: replaces entries_
    std::size_t next_ = 0;
    bool started_ = false;
    std::unique_ptr<draft> draft_;
    std::uint64_t replay_at_ = 0;  ///< the next piece of a replay step starts here
    std::string piece_;
    asiosmtpd_data_args piece_args_{};
    arguments args_;
    const void* args_ptr_ = nullptr;
    bool args_given_ = false;
    asiosmtpd_call call_;
    std::chrono::steady_clock::time_point started_at_;
    proto::hook_result result_;
    std::string_view decided_by_;
};

/// Tell every plugin with a hook of this notification kind (SESSION_CLOSE): verdicts are
/// ignored, nothing can be suspended.
void notify(const generation& gen, std::int32_t hook, session_view& session, const void* args = nullptr) noexcept;

}  // namespace asiosmtpd::plugin
