// SPDX-License-Identifier: Apache-2.0
// session: one client connection. A coroutine on one event loop (its socket's io_context, run
// by one thread, for the session's whole life: no strand) feeds the socket's bytes to
// the engine, writes the engine's replies (a pipelined batch in one write), and runs plugin
// hook chains when the engine asks, awaiting PENDING hooks without blocking the thread.
// A watchdog coroutine owns the idle deadline and may only cancel the socket; the session loop
// turns that into the engine's 421. Only the session loop writes.
#pragma once

#include "config/config.hpp"
#include "net/handshake_limits.hpp"
#include "plugin/chain.hpp"
#include "plugin/loader.hpp"
#include "proto/engine.hpp"
#include "proto/network.hpp"
#include "proxy/parser.hpp"
#include "tls/context.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace asiosmtpd::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

class registry;

// Boost 1.81 has no default completion token; I/O errors are expected, so the session's
// operations return them as values.
inline constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

/// What every session of one listener shares (immutable).
struct listener_context {
    std::shared_ptr<const plugin::generation> plugins;
    proto::settings smtp;
    std::chrono::milliseconds idle_timeout{300000};
    std::chrono::milliseconds close_grace{5000};  ///< for the last reply before a forced close
    config::tls_mode tls = config::tls_mode::none;
    std::shared_ptr<asio::ssl::context> tls_context;  ///< set for starttls and implicit listeners
    std::chrono::milliseconds handshake_timeout{30000};
    std::shared_ptr<handshake_limits> tls_handshakes;  ///< the server's; set for starttls and implicit listeners
    std::chrono::milliseconds auth_failure_delay{1000};
    bool proxy_protocol = false;  ///< a PROXY header comes first
    std::chrono::milliseconds proxy_timeout{10000};
    /// While a message arrives, each idle_timeout window must bring at least this many bytes
    /// per second (0: at least one byte); slower is a timeout.
    std::uint64_t data_min_rate = 500;
    bool received_header = false;                     ///< server.received_header: a Received field tops each message
    std::vector<proto::ip_network> xclient_networks;  ///< server.xclient_networks: who may use XCLIENT
    /// A UNIX socket listener's path ("" for TCP): its sessions' peer and local address are
    /// "unix:<path>" (docs/behaviour.md).
    std::string unix_path;
};

class session : public std::enable_shared_from_this<session>, public plugin::session_view, public plugin::chain_events {
public:
    session(tcp::socket socket, std::shared_ptr<const listener_context> ctx, registry& owner);
    ~session() override;

    /// The session's whole life; co_spawn it on the socket's executor (its loop).
    asio::awaitable<void> run();

    /// Shutdown: end at the next command boundary (now if idle); thread-safe.
    void request_stop();
    /// Grace period over: send 421 and close now; thread-safe.
    void force_close();

    // plugin::session_view
    [[nodiscard]] std::uint64_t session_id() const noexcept override { return id_; }
    [[nodiscard]] const proto::engine& smtp() const noexcept override { return engine_; }
    [[nodiscard]] std::string_view peer_address() const noexcept override { return peer_address_; }
    [[nodiscard]] std::uint16_t peer_port() const noexcept override { return peer_port_; }
    [[nodiscard]] std::string_view tls_version() const noexcept override
    {
        return tls_ ? tls_->info.version : std::string_view();
    }
    [[nodiscard]] std::string_view tls_cipher() const noexcept override
    {
        return tls_ ? tls_->info.cipher : std::string_view();
    }
    [[nodiscard]] std::string_view tls_peer_subject() const noexcept override
    {
        return tls_ ? tls_->info.peer_subject : std::string_view();
    }
    [[nodiscard]] std::string_view local_address() const noexcept override { return local_address_; }
    [[nodiscard]] std::uint16_t local_port() const noexcept override { return local_port_; }
    [[nodiscard]] const proxy::header* proxy_header() const noexcept override
    {
        return proxy_ ? &proxy_->header : nullptr;
    }
    [[nodiscard]] std::string_view proxy_via() const noexcept override
    {
        return proxy_ ? std::string_view(proxy_->via) : std::string_view();
    }
    [[nodiscard]] asio::io_context* event_loop() const noexcept override
    {
        // (get_executor() reads only; Asio does not mark it const.)
        const auto ex = const_cast<tcp::socket&>(socket_).get_executor();
        const auto* io = ex.target<asio::io_context::executor_type>();
        return io != nullptr ? &io->context() : nullptr;
    }

    // plugin::chain_events
    void answered(const plugin::instance& plugin, std::string_view hook, std::chrono::steady_clock::duration took,
                  const proto::hook_result& r, std::string_view why) override;
    void host_failed(std::string_view hook, std::string_view why) override;

private:
    asio::awaitable<bool> open();
    asio::awaitable<void> close();
    asio::awaitable<void> run_hooks();
    asio::awaitable<void> auth_failed();
    void apply_xclient();
    void log_transaction(const proto::transaction_summary& t);
    /// The id of the session's current (or last) message: in its Received field and log line.
    [[nodiscard]] std::string transaction_id() const;
    [[nodiscard]] std::string received_field() const;
    void log_refusals();
    void end_transaction_slots() noexcept;
    void start_watchdog();
    void on_watchdog();
    enum class sent { all, some, failed };
    sent send_now();
    std::string_view receive_now(boost::system::error_code& ec, bool& drained, bool& more);
    asio::awaitable<bool> flush();
    sent send_tls(boost::system::error_code& ec);
    asio::awaitable<bool> handshake();
    bool admit_tls();
    asio::awaitable<boost::system::error_code> await_client_hello();
    asio::awaitable<bool> read_proxy_header();
    asio::awaitable<proto::hook_result> run_chain(const proto::hook_request& req);
    asio::awaitable<void> await_pending(const plugin::chain& c);
    void run_session_close_hooks() noexcept;
    void arm(std::chrono::steady_clock::duration d);
    void disarm();
    void restart_read_clock();
    bool data_rate_ok(std::chrono::steady_clock::time_point now) const noexcept;
    bool at_command_boundary() const noexcept;

    // What only some sessions need lives behind a pointer: an idle plaintext session is small
    // (issue 8: <= 4 KiB per idle connection, the whole session included).
    struct tls_state {
        /// Takes the SSL* of a finished handshake (the channel owns and frees it).
        tls_state(tls::server_handshake& done, int fd) : stream(done.release(), fd) {}
        tls::channel stream;     ///< OpenSSL over socket_: writes it, reads what the session read
        tls::session_info info;  ///< set once the handshake succeeded
    };

    tcp::socket socket_;
    std::unique_ptr<tls_state> tls_;  ///< over socket_, once TLS started
    std::shared_ptr<const listener_context> ctx_;
    handshake_limits::slot tls_slot_;  ///< held from STARTTLS's admission to its handshake
    registry& owner_;
    proto::engine engine_;
    asio::steady_timer watchdog_timer_;
    std::chrono::steady_clock::time_point deadline_;
    // The read clock (restart_read_clock): the engine progress the idle deadline was armed
    // for, and the bytes read since the current window started (DATA's minimum rate).
    std::uint64_t progress_seen_ = 0;
    std::uint64_t window_bytes_ = 0;
    std::chrono::steady_clock::time_point window_start_{};
    std::shared_ptr<asio::steady_timer> hook_waiter_;  ///< set while a PENDING hook is awaited
    const std::uint64_t id_;
    std::string peer_address_;
    std::uint16_t peer_port_ = 0;
    std::string peer_name_;  ///< the client's host name when XCLIENT gave one
    struct proxied {
        proxy::header header;
        std::string via;  ///< the load balancer (TCP peer) when the header named a client
    };
    std::unique_ptr<proxied> proxy_;  ///< set once a PROXY header was read
    std::string local_address_;
    std::uint16_t local_port_ = 0;
    std::size_t read_size_ = 2 * 1024;
    /// The plugin whose verdict ended the last chain (its name lives as long as ctx_'s plugins).
    std::string_view decided_by_;
    std::chrono::steady_clock::time_point data_started_{};
    bool timed_out_ = false;
    bool too_slow_ = false;  ///< the timeout was DATA's minimum rate (for the log)
    bool finished_ = false;
    bool inq_ = false;          ///< TCP_INQ is on: each plaintext read says whether it emptied the socket
    bool waited_ = false;       ///< the loop ran other work since the last read (it may have taken an edge)
    bool client_gone_ = false;  ///< the client left while a hook was suspended: no more replies
    bool client_eof_ = false;   ///< the client half-closed while a hook was suspended: no more reads
    std::atomic<bool> stop_requested_{false};
    std::atomic<bool> forced_{false};
    bool busy_at_stop_ = false;  ///< the stop found the session in the middle of something
    /// Draining: when a session busy at the stop reached its next command boundary, it has
    /// until then to send QUIT (221) or another command (421); zero until then.
    std::chrono::steady_clock::time_point quit_deadline_{};
    bool answer_pending_input();
    std::string end_reason_ = "closed";
};

}  // namespace asiosmtpd::net
