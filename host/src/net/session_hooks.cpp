// SPDX-License-Identifier: Apache-2.0
// session: running the plugins' hook chains. The chain (plugin/chain.hpp) calls the plugins
// and decides; the session waits, with Asio, for the calls a plugin suspended: until
// complete() (from any thread), the plugin's timeout, the client leaving or a shutdown.
#include "net/session.hpp"

#include "log/log.hpp"
#include "net/metrics.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fmt/format.h>

#include <mutex>
#include <optional>

namespace asiosmtpd::net {
// The hook chains the engine asked for, one after the other (a hook's outcome may release
// pipelined commands that ask for the next).
asio::awaitable<void> session::run_hooks()
{
    while (const proto::hook_request* req = engine_.pending_hook()) {
        if ((req->kind == proto::hook_kind::data || req->kind == proto::hook_kind::data_chunk) &&
            data_started_ == std::chrono::steady_clock::time_point{})
            data_started_ = std::chrono::steady_clock::now();
        const bool auth = req->kind == proto::hook_kind::auth_check || req->kind == proto::hook_kind::auth_mechanism;
        if (req->xclient) apply_xclient();
        // (No co_await inside a conditional expression: GCC 12 miscompiles its temporaries.)
        proto::hook_result result;
        if (!req->xclient || !ctx_->plugins->hooks[ASIOSMTPD_HOOK_CONNECT].empty()) result = co_await run_chain(*req);
        if (client_gone_) co_return;  // the session loop ends; no reply, no further command
        engine_.hook_done(std::move(result));
        if (engine_.has_refusals()) log_refusals();
        if (auth && engine_.authenticated()) {
            log::info("session={} event=auth result=ok login=\"{}\"", id_, log::escaped(engine_.auth_login()));
            metrics::get().auth_ok.fetch_add(1, std::memory_order_relaxed);
        }
        if (auto t = engine_.take_transaction()) log_transaction(*t);
        end_transaction_slots();
    }
}

// XCLIENT was accepted (engine::xclient()): from now on the session is the client it names, as
// if that client had connected (Postfix does the same): the plugins see this session end
// (SESSION_CLOSE, its session slots freed) and then its CONNECT hook again, with the new peer;
// the logs and the Received field name the new client; whether it may use XCLIENT in turn is
// decided by its address.
void session::apply_xclient()
{
    const proto::xclient_attributes& x = engine_.xclient();
    const std::string was = fmt::format("{}:{}", peer_address_, peer_port_);
    if (x.addr) peer_address_ = x.addr->empty() ? std::string("unknown") : *x.addr;
    if (x.port) peer_port_ = *x.port;
    if (x.name) peer_name_ = *x.name;
    if (x.destaddr) local_address_ = x.destaddr->empty() ? std::string("unknown") : *x.destaddr;
    if (x.destport) local_port_ = *x.destport;
    run_session_close_hooks();
    data_slots().clear_all();
    engine_.allow_xclient(proto::contains(ctx_->xclient_networks, peer_address_));
    const auto shown = [](const std::optional<std::string>& v) {
        return v ? fmt::format("\"{}\"", log::escaped(*v, 255)) : std::string("-");
    };
    log::info("session={} event=xclient peer={}:{} name={} helo={} login={} local={}:{} was={}", id_, peer_address_,
              peer_port_, peer_name_.empty() ? std::string("-") : log::escaped(peer_name_, 255), shown(x.helo),
              shown(x.login), local_address_, local_port_, was);
}

// Brute force: a failed AUTH answers slowly (never log the credentials).
asio::awaitable<void> session::auth_failed()
{
    // The client and the login tried (never the password): what fail2ban and a postmaster need.
    log::info("session={} event=auth result=failed client={} mechanism={} login=\"{}\"", id_, peer_address_,
              log::escaped(engine_.failed_auth_mechanism(), 40), log::escaped(engine_.failed_auth_login(), 320));
    metrics::get().auth_failed.fetch_add(1, std::memory_order_relaxed);
    if (ctx_->auth_failure_delay.count() > 0) {
        asio::steady_timer pause(socket_.get_executor(), ctx_->auth_failure_delay);
        waited_ = true;
        co_await pause.async_wait(nothrow);
    }
}

// --------------------------------------------------------------------------------------------
// Hook chains
// --------------------------------------------------------------------------------------------

namespace {

// What a plugin thread may hold to wake a session waiting for complete(). Plugin threads can
// outlive sessions and even the io_context, so they never own an Asio object: the waiting
// side closes the waker (dropping the executor) before it stops waiting, and the posted
// wake-up only holds a weak reference to the timer.
class waker {
public:
    waker(asio::any_io_executor ex, const std::shared_ptr<asio::steady_timer>& timer)
        : ex_(std::move(ex)),
          timer_(timer)
    {}
    void wake()
    {
        const std::lock_guard guard(lock_);
        if (!ex_) return;
        asio::post(*ex_, [t = timer_] {
            if (const auto timer = t.lock()) timer->cancel();
        });
    }
    void close() noexcept
    {
        const std::lock_guard guard(lock_);
        ex_.reset();
        timer_.reset();
    }

private:
    std::mutex lock_;
    std::optional<asio::any_io_executor> ex_;
    std::weak_ptr<asio::steady_timer> timer_;
};

// Closes the waker however the wait ends (also when the coroutine frame is destroyed).
struct waker_closer {
    std::shared_ptr<waker> w;
    ~waker_closer() { w->close(); }
};

// What a suspended hook's wait knows of its client. Shared with the peek's handler, which may
// run after the wait ended (a completion already queued when the wait cancels the peek).
struct client_watch {
    explicit client_watch(std::shared_ptr<asio::steady_timer> t) : waiter(std::move(t)) {}
    std::shared_ptr<asio::steady_timer> waiter;  ///< the hook wait, cut short when the client is gone
    bool active = true;                          ///< false once the wait ended
    bool peeking = false;                        ///< the peek is outstanding on the socket
    std::string gone;                            ///< why the client is gone; empty while it is not
    bool eof = false;                            ///< plaintext EOF seen (a half-close): the next read would answer it
    char byte = 0;                               ///< the peek's buffer
};

// Nobody reads the socket while a hook is suspended, so a client that leaves would go
// unnoticed until the plugin answered or timed out, holding its connection slot. This peeks at
// one byte, and does what aiosmtpd (asyncio) does when its transport sees the same:
// - a reset or another socket error: the client is gone, the wait is cut short;
// - EOF under TLS: gone too (asyncio closes a TLS transport at EOF);
// - EOF in plaintext: a half-close, the client may still read its replies (asyncio keeps the
//   transport open): the hook goes on and its reply is sent; the read after it sees the EOF;
// - a byte: pipelined input (RFC 2920), left in the kernel buffer for the read after the
//   hook, and under TLS a record that is the TLS layer's to read.
// In the last two cases the watch ends there (no busy loop). A peek rather than a readiness
// wait: Asio tries it at once, so what came before the wait began is seen too.
void watch_client(tcp::socket& socket, bool tls, const std::shared_ptr<client_watch>& w)
{
    w->peeking = true;
    socket.async_receive(asio::buffer(&w->byte, 1), tcp::socket::message_peek,
                         [w, tls](const boost::system::error_code& ec, std::size_t) {
                             w->peeking = false;
                             // operation_aborted: the wait ended, or a shutdown cancelled the socket.
                             if (!ec || !w->active || ec == asio::error::operation_aborted) return;
                             if (ec == asio::error::eof && !tls) {
                                 // Asio takes a read of 0 bytes as "drained" and would not try the
                                 // next read until an event that never comes: remember the EOF.
                                 w->eof = true;
                                 return;
                             }
                             w->gone =
                                 ec == asio::error::eof
                                     ? std::string("client closed during a plugin hook")
                                     : fmt::format("client connection lost during a plugin hook: {}", ec.message());
                             w->waiter->cancel();
                         });
}

}  // namespace

// Wait for the call `c` suspended: until complete() wakes us, the plugin's timeout, the client
// leaving (client_gone_) or a forced shutdown. The chain decides what came of it.
asio::awaitable<void> session::await_pending(const plugin::chain& c)
{
    const std::shared_ptr<plugin::pending_call>& pending = c.pending();
    waited_ = true;  // the loop ran meanwhile (session::run's read)
    auto timer = std::make_shared<asio::steady_timer>(socket_.get_executor());
    const auto wake = std::make_shared<waker>(socket_.get_executor(), timer);
    const waker_closer closer{wake};
    {
        const std::lock_guard guard(pending->lock);
        if (pending->done) co_return;
        pending->notify = [wake] { wake->wake(); };  // complete() may run on any thread
    }
    // Replies already due go out now, not after the plugin's wait. One that cannot be written
    // means the client is gone: nothing to wait for.
    if (!co_await flush()) {
        client_gone_ = !forced_;  // forced_: the shutdown cancelled the write, and ends the session
        co_return;
    }
    {
        // complete() may have come while the replies were written: its wake-up then cancelled a
        // timer that was not waiting yet, and would be lost (the plugin's whole timeout).
        const std::lock_guard guard(pending->lock);
        if (pending->done) co_return;
    }
    disarm();  // the plugin's own timeout bounds the wait, not the idle timer
    hook_waiter_ = timer;
    timer->expires_after(c.timeout());
    const auto watch = std::make_shared<client_watch>(timer);
    watch_client(socket_, tls_ != nullptr, watch);
    co_await timer->async_wait(nothrow);
    hook_waiter_.reset();
    watch->active = false;
    boost::system::error_code ignored;
    if (watch->peeking) socket_.cancel(ignored);  // the peek is the socket's only operation now
    client_eof_ = watch->eof;
    if (!watch->gone.empty()) {
        client_gone_ = true;
        end_reason_ = std::move(watch->gone);
        log::info("session={} event=hook_cancelled plugin={} hook={} reason=\"{}\"", id_, c.plugin().name, c.hook(),
                  end_reason_);
    }
    restart_read_clock();  // the plugin's time is not the client's
}

// GCC 12 at -O2 reports -Wmismatched-new-delete for this coroutine's frame (Asio's
// awaitable_frame_base operator new/delete pair): a false positive of GCC's coroutine lowering,
// not of this code. Silenced for this one function only.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
// The plugins' chain for one request: the chain calls them; this awaits the suspended calls.
asio::awaitable<proto::hook_result> session::run_chain(const proto::hook_request& req)
{
    plugin::chain c(*ctx_->plugins, req, *this, *this);
    for (bool waiting = c.run(); waiting;) {
        co_await await_pending(c);
        if (client_gone_) {  // no reply: the session ends (run_hooks)
            c.abandon();
            co_return proto::hook_result{};
        }
        waiting = c.resume(forced_ ? std::string("cancelled by shutdown")
                                   : fmt::format("did not complete within {} ms", c.timeout().count()));
    }
    decided_by_ = c.decided_by();
    co_return c.take_result();
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// Each plugin's answer: its metric, and a log line when it failed.
void session::answered(const plugin::instance& plugin, std::string_view hook, std::chrono::steady_clock::duration took,
                       const proto::hook_result& r, std::string_view why)
{
    metrics::get().hook(plugin.name, hook, took);
    if (r.verdict != proto::verdict::error) return;
    metrics::get().plugin_errors.fetch_add(1, std::memory_order_relaxed);
    log::warn("session={}{} event=plugin_error plugin={} key={} hook={} reason=\"{}\"", id_,
              engine_.in_transaction() ? " txn=" + transaction_id() : std::string(), plugin.name, plugin.key, hook,
              why);
}

void session::host_failed(std::string_view hook, std::string_view why)
{
    log::error("session={} event=host_error hook={} reason=\"{}\"", id_, hook, why);
}

void session::run_session_close_hooks() noexcept
{
    if (ctx_->plugins) plugin::notify(*ctx_->plugins, ASIOSMTPD_HOOK_SESSION_CLOSE, *this);
}

}  // namespace asiosmtpd::net
