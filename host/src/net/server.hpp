// SPDX-License-Identifier: Apache-2.0
// server: the listeners of one configuration, the registry of live sessions, the event loops
// (one io_context per thread; a session lives on one loop for life), and graceful shutdown
// (stop accepting, let sessions finish within shutdown_grace, then close them with 421; with
// handle_signals(), end the process if that does not finish within shutdown_grace +
// shutdown_forced_margin).
#pragma once

#include "config/config.hpp"
#include "net/session.hpp"
#include "net/unix_listener.hpp"
#include "plugin/loader.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string_view>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

namespace asiosmtpd::net {

/// The live sessions, so that they can be stopped (Asio's connection_manager).
class registry {
public:
    void add(const std::shared_ptr<session>& s);
    void remove(const session* s);
    [[nodiscard]] std::size_t size() const;
    void request_stop_all();
    void force_close_all();
    /// Called (once, from the thread that removes the last session) when the registry empties.
    void when_empty(std::function<void()> f);

private:
    mutable std::mutex lock_;
    std::unordered_map<const session*, std::weak_ptr<session>> sessions_;
    std::function<void()> on_empty_;
};

/// systemd's readiness protocol (sd_notify(3), Type=notify): send `state` ("READY=1",
/// "RELOADING=1", "STOPPING=1") to $NOTIFY_SOCKET if set; nothing otherwise. No libsystemd.
void notify_systemd(std::string_view state) noexcept;

/// The TLS context of a configuration, or nullptr when no listener uses TLS. Throws
/// std::runtime_error naming the file and the tls key.
std::shared_ptr<asio::ssl::context> tls_context_for(const config::settings& s);

/// log.format and log.timestamps, from now on (at start and at each reload).
void apply_log_format(const config::settings& s) noexcept;

/// The proto::settings of one listener, from the config and the loaded plugins.
proto::settings engine_settings(const config::settings& s, const config::listener& l, const plugin::generation& g);

/// After SIGTERM/SIGINT, how long beyond shutdown_grace the process may take to finish run()
/// before it is ended with exit status 1 (event=shutdown_forced). Only a plugin hook that never
/// returns keeps it that long: it holds an event-loop thread, which cannot be taken back.
/// Keep shutdown_grace + this margin below systemd's TimeoutStopSec (packaging: 45 s).
inline constexpr std::chrono::seconds shutdown_forced_margin{5};

class server {
public:
    /// `tls_context`: from tls_context_for(s) (made before the plugins load, so that a
    /// certificate problem is the first and only thing reported).
    server(config::settings s, std::shared_ptr<const plugin::generation> plugins,
           std::shared_ptr<asio::ssl::context> tls_context);
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    /// Bind every listener. Throws std::runtime_error ("cannot listen on ADDR:PORT: why").
    void bind();
    /// Give every listener the plugins `g`, before run(). The executable binds first, drops
    /// privileges (server.user), and only then loads the plugins (os/privileges.hpp), so it
    /// constructs the server with an empty generation and hands the real one over here.
    void use_plugins(std::shared_ptr<const plugin::generation> g);
    /// The bound endpoints, in listener order (port 0 resolved).
    [[nodiscard]] std::vector<tcp::endpoint> endpoints() const;
    /// Stop on SIGINT/SIGTERM, reload on SIGHUP (for the executable). The signals are taken
    /// on a control thread of their own, started here, so that they are seen even while every
    /// event-loop thread is held by a plugin; that thread also ends the process (std::_Exit,
    /// status 1) when run() has not returned shutdown_grace + shutdown_forced_margin after
    /// SIGTERM/SIGINT. Without this call (embedding, controller.hpp) no signal is handled and
    /// the process is never ended.
    void handle_signals();
    /// Serve until stopped and drained; then stop and join the control thread of
    /// handle_signals(). This thread runs the home loop (listeners, metrics, reload, stop);
    /// with workers: 1 it runs the sessions too, with more each worker is a thread of its own.
    void run();
    /// Begin a graceful stop; thread-safe, idempotent.
    void stop();
    /// Re-read the config file and load its plugins as a new generation (on a control
    /// thread); new sessions use it, open ones finish on theirs. A config that fails is refused
    /// with a log line and the running one goes on. Call on the home loop (SIGHUP does).
    void reload();

private:
    /// One event loop: an io_context that one thread runs. Every session stays on the loop it
    /// was given at accept for its whole life (its socket, timers, coroutine and the posts
    /// that wake it), so no strand is needed. The home loop (ioc_) runs the listeners, metrics,
    /// reload and stop; with workers: 1 it is the only loop and runs the sessions too, with N
    /// >= 2 the sessions go to N worker loops (loops_) and home runs no plugin code.
    struct loop {
        asio::io_context ioc{1};  // one thread: Asio skips the cross-thread wake-ups
        /// Keeps a worker loop's run() going while it has no session; reset to retire it.
        std::optional<asio::executor_work_guard<asio::io_context::executor_type>> keep;
        std::thread thread;                    // worker loops only
        std::atomic<std::size_t> sessions{0};  // live sessions on this loop
        std::atomic<bool> finished{false};     // the thread's run() returned
        bool retired = false;                  // on the home loop only: takes no new session
        std::size_t number = 0;                // 1.. for worker loops (thread names, logs)
    };

    /// One listener: its acceptor and the context new sessions get (replaced by reloads).
    struct listener_slot {
        config::listener spec;
        std::unique_ptr<tcp::acceptor> acceptor;
        std::unique_ptr<unix_listener> local;  // a UNIX socket listener instead (spec.path)
        std::atomic<std::shared_ptr<const listener_context>> ctx;
        bool closed = false;  // on the io_context only
    };

    std::shared_ptr<const listener_context> make_context(const config::settings& s, const config::listener& l,
                                                         const std::shared_ptr<const plugin::generation>& g,
                                                         const std::shared_ptr<asio::ssl::context>& tls) const;
    void open(listener_slot& slot);
    void apply(config::settings next, std::shared_ptr<const plugin::generation> plugins,
               std::shared_ptr<asio::ssl::context> tls);
    asio::awaitable<void> accept_loop(std::shared_ptr<listener_slot> slot);
    asio::awaitable<void> refuse(tcp::socket socket, std::string reply);
    void begin_stop();
    /// Where the next session goes: the worker loop with the fewest sessions, home without any.
    loop& pick_loop();
    void start_session(tcp::socket socket, std::shared_ptr<const listener_context> ctx, loop& l);
    /// Grow or shrink to `n` worker loops (1: none, home serves). On the home loop.
    void set_workers(std::size_t n);
    void start_loop(loop& l);
    void wait_for_signal();
    void arm_stop_deadline();
    void warn_restart_only(const config::settings& next) const;
    void stop_control_thread();
    /// endpoints() from now on: the listeners that are open now. On the home loop (or before run()).
    void publish_endpoints();

    config::settings config_;  // as started (the file to reload, restart-only keys)
    std::size_t workers_;      // session loops (config's workers, 0 resolved); on the home loop
    // Before every member that holds a session or an Asio object of a loop (destroyed after).
    registry registry_;
    loop home_;
    asio::io_context& ioc_ = home_.ioc;                      // the home loop's
    std::vector<std::unique_ptr<loop>> loops_;               // worker loops, retired ones included; on the home loop
    bool running_ = false;                                   // run() started the loops; on the home loop
    std::vector<std::shared_ptr<listener_slot>> listeners_;  // on the io_context only (after bind)
    // What endpoints() answers on any thread: a copy made on the home loop whenever listeners_
    // changed (bind, reload, stop), never listeners_ itself, which a reload replaces.
    mutable std::mutex endpoints_lock_;
    std::vector<tcp::endpoint> endpoints_;
    std::atomic<std::uint32_t> max_connections_{0};
    // TLS handshakes in progress, shared by every TLS listener's sessions; limits from the config.
    std::shared_ptr<handshake_limits> tls_handshakes_ = std::make_shared<handshake_limits>();
    std::atomic<std::int64_t> shutdown_grace_ms_{0};
    std::atomic<bool> reloading_{false};
    std::thread reload_thread_;
    std::uint64_t generation_ = 1;
    std::unique_ptr<tcp::acceptor> metrics_acceptor_;
    asio::steady_timer grace_timer_;
    bool stopping_ = false;  // on the io_context only
    // handle_signals(): signals and the stop deadline live on their own io_context and thread,
    // which no plugin ever runs on; signals_ and stop_deadline_ are used on that thread only.
    asio::io_context control_ioc_{1};
    asio::signal_set signals_{control_ioc_};
    asio::steady_timer stop_deadline_{control_ioc_};
    std::thread control_thread_;
};

}  // namespace asiosmtpd::net
