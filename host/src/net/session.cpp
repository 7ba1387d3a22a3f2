#include "net/session.hpp"

#include "log/log.hpp"
#include "net/metrics.hpp"
#include "net/server.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <fmt/format.h>

#include <array>
#include <mutex>
#include <optional>
#include <tuple>

namespace asiosmtpd::net {
namespace {

// Boost 1.81 has no default completion token; I/O errors are expected, so they come back as
// values.
constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);
// Reads start small (an idle session holds little) and double while reads fill the buffer
// (a DATA transfer), up to read_max.
constexpr std::size_t read_min = 2 * 1024;
constexpr std::size_t read_max = 256 * 1024;
// Between commands: enough for a command line or a small pipelined group.
constexpr std::size_t idle_read = 128;
std::atomic<std::uint64_t> next_session_id{1};

} // namespace

session::session(tcp::socket socket, std::shared_ptr<const listener_context> ctx, registry& owner)
    : socket_(std::move(socket)),
      ctx_(std::move(ctx)),
      owner_(owner),
      engine_(ctx_->smtp),
      watchdog_timer_(socket_.get_executor()),
      id_(next_session_id.fetch_add(1, std::memory_order_relaxed))
{
    boost::system::error_code ec;
    if (const auto remote = socket_.remote_endpoint(ec); !ec) {
        peer_address_ = remote.address().to_string();
        peer_port_ = remote.port();
    }
    if (const auto local = socket_.local_endpoint(ec); !ec) {
        local_address_ = local.address().to_string();
        local_port_ = local.port();
    }
}

session::~session() = default;

// A transaction's slots end with it (their destructors run now, not at the next use: a
// plugin's temporary file of a refused message goes at once).
void session::end_transaction_slots() noexcept
{
    if (engine_.envelope_serial() != slots_serial_) (void)data_slots();
}

plugin::slots& session::data_slots() noexcept
{
    // Transaction slots end with their transaction (RSET, HELO/EHLO, end of DATA).
    if (engine_.envelope_serial() != slots_serial_) {
        slots_.clear_transaction();
        slots_serial_ = engine_.envelope_serial();
    }
    return slots_;
}

void session::arm(std::chrono::steady_clock::duration d)
{
    const auto next = std::chrono::steady_clock::now() + d;
    const bool earlier = next < deadline_;
    deadline_ = next;
    if (earlier) watchdog_timer_.cancel();  // the watchdog sleeps until the old deadline
}

void session::disarm() { deadline_ = std::chrono::steady_clock::time_point::max(); }

// The idle timeout bounds the time to receive one whole unit of input (a command line, an AUTH
// line), as aiosmtpd's per-line read does, counted from when the session starts waiting for
// it: bytes that arrive without completing it do not push the deadline back (slowloris). A
// message is bounded by a rate instead (data_rate_ok), so that a large message on a slow but
// honest link is not cut off.
void session::restart_read_clock()
{
    progress_seen_ = engine_.progress();
    window_bytes_ = 0;
    window_start_ = std::chrono::steady_clock::now();
    arm(ctx_->idle_timeout);
}

// At the deadline, during DATA: did the window bring data_min_rate bytes per second (at least
// one byte)? Then the client may go on for another window.
bool session::data_rate_ok(std::chrono::steady_clock::time_point now) const noexcept
{
    if (!engine_.reading_data() || window_bytes_ == 0) return false;
    const double seconds = std::chrono::duration<double>(now - window_start_).count();
    return static_cast<double>(window_bytes_) >= static_cast<double>(ctx_->data_min_rate) * seconds;
}

// The only place that decides a session is idle: it may cancel the socket, never write. A plain
// completion handler, not a coroutine: an idle session holds one timer wait, not a second frame.
void session::start_watchdog()
{
    watchdog_timer_.expires_at(deadline_);
    watchdog_timer_.async_wait([self = shared_from_this()](const boost::system::error_code&) { self->on_watchdog(); });
}

void session::on_watchdog()
{
    if (finished_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now < deadline_) return start_watchdog();  // re-armed meanwhile
    boost::system::error_code ignored;
    if (!timed_out_ && data_rate_ok(now)) {
        window_bytes_ = 0;
        window_start_ = now;
        deadline_ = now + ctx_->idle_timeout;
        return start_watchdog();
    }
    if (!timed_out_) {
        too_slow_ = engine_.reading_data();
        // Idle: the session loop sees operation_aborted and sends the 421 (docs/behaviour.md). A
        // client that does not read gets close_grace, then the socket is closed.
        timed_out_ = true;
        deadline_ = now + ctx_->close_grace;
        socket_.cancel(ignored);
        return start_watchdog();
    }
    socket_.close(ignored);
}

bool session::at_command_boundary() const noexcept { return engine_.idle(); }

void session::request_stop()
{
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
        self->stop_requested_ = true;
        boost::system::error_code ignored;
        if (self->at_command_boundary()) self->socket_.cancel(ignored);
    });
}

void session::force_close()
{
    asio::post(socket_.get_executor(), [self = shared_from_this()] {
        self->forced_ = true;
        boost::system::error_code ignored;
        self->socket_.cancel(ignored);
        if (self->hook_waiter_) self->hook_waiter_->cancel();
    });
}

// Plaintext replies are written at once when the socket takes them (nearly always): no
// asynchronous operation, no trip through the event loop. What it does not take, flush() sends.
session::sent session::send_now()
{
    if (tls_) return sent::some;
    std::string& out = engine_.output();
    boost::system::error_code ec;
    const std::size_t n = socket_.write_some(asio::buffer(out), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) return sent::some;
    if (ec) {
        end_reason_ = timed_out_ ? "timeout (client not reading)" : fmt::format("write failed: {}", ec.message());
        engine_.clear_output();
        return sent::failed;
    }
    if (n == out.size()) {
        engine_.clear_output();
        return sent::all;
    }
    out.erase(0, n);
    return sent::some;
}

asio::awaitable<bool> session::flush()
{
    if (engine_.output().empty()) co_return true;
    boost::system::error_code ec;
    if (tls_) std::tie(ec, std::ignore) = co_await asio::async_write(tls_->stream, asio::buffer(engine_.output()), nothrow);
    else std::tie(ec, std::ignore) = co_await asio::async_write(socket_, asio::buffer(engine_.output()), nothrow);
    engine_.clear_output();
    if (ec) {
        end_reason_ = timed_out_ ? "timeout (client not reading)" : fmt::format("write failed: {}", ec.message());
        co_return false;
    }
    co_return true;
}

// A TLS handshake may start if fewer than max_tls_handshakes are in progress, and fewer than
// max_tls_handshakes_per_client with this client. The slot is held until the handshake ends,
// however it ends. Over a cap: false, logged (the refusal is counted in the metrics).
bool session::admit_tls()
{
    if (tls_slot_ || !ctx_->tls_handshakes) return true;
    handshake_limits::refusal why = handshake_limits::refusal::none;
    tls_slot_ = ctx_->tls_handshakes->try_acquire(peer_address_, why);
    if (why == handshake_limits::refusal::none) return true;
    const bool client = why == handshake_limits::refusal::client;
    log::warn("session={} event=tls_refused peer={} limit={} max={} reason=\"too many TLS handshakes in progress{}\"", id_,
              peer_address_, client ? "max_tls_handshakes_per_client" : "max_tls_handshakes",
              ctx_->tls_handshakes->limit(why), client ? " with this client" : "");
    return false;
}

// Nothing is allocated for TLS until the client's first record (its ClientHello) is all in the
// socket: a client that sends nothing, or only part of it, holds what an idle plaintext
// connection holds. The readiness wait ends only once that many bytes are there (the socket's
// SO_RCVLOWAT), at EOF or on an error; OpenSSL then reads the record at once, or reports what
// went wrong.
asio::awaitable<boost::system::error_code> session::await_client_hello()
{
    boost::system::error_code ec;
    std::size_t want = 1;  // bytes that end the wait
    for (;;) {
        std::tie(ec) = co_await socket_.async_wait(tcp::socket::wait_read, nothrow);
        if (ec) break;  // timed out or cancelled
        boost::system::error_code ignored;
        const std::size_t have = socket_.available(ignored);
        if (have < want) break;  // woken before `want` bytes: EOF or an error
        if (have < tls::record_header_size) {
            want = tls::record_header_size;
        } else {
            std::array<unsigned char, tls::record_header_size> header{};
            const std::size_t n = socket_.receive(asio::buffer(header), tcp::socket::message_peek, ignored);
            const std::size_t size = n == header.size() ? tls::handshake_record_size(header) : 0;
            if (size == 0 || have >= size) break;  // not a TLS handshake record, or all there
            want = size;
        }
        socket_.set_option(asio::socket_base::receive_low_watermark(static_cast<int>(want)), ignored);
        if (ignored) break;
    }
    boost::system::error_code ignored;
    if (want > 1) socket_.set_option(asio::socket_base::receive_low_watermark(1), ignored);
    co_return ec;
}

// The TLS handshake (implicit TLS, or after "220 Ready to start TLS"), bounded by
// tls_handshake_timeout. A failure costs this session only: logged, closed without a reply.
// A pending handshake is cheap (an attacker may hold many until the timeout): nothing is
// allocated for TLS before the client's ClientHello is there (await_client_hello), then
// OpenSSL runs the handshake on the socket itself (tls::server_handshake: no Asio buffers,
// OpenSSL's record buffers released between records); the asio::ssl::stream, whose buffers
// cost about 70 KiB, is made only once the handshake succeeded.
asio::awaitable<bool> session::handshake()
{
    arm(ctx_->handshake_timeout);
    if (!admit_tls()) {
        end_reason_ = "tls refused: too many handshakes in progress";
        co_return false;
    }
    const handshake_limits::slot slot = std::move(tls_slot_);  // given back when this returns
    boost::system::error_code ec;
    socket_.non_blocking(true, ec);  // OpenSSL reads and writes it directly
    if (!ec) ec = co_await await_client_hello();
    std::optional<tls::server_handshake> hs;
    if (!ec) {
        hs.emplace(*ctx_->tls_context, socket_.native_handle());
        for (;;) {
            const auto step = hs->advance(ec);
            if (step == tls::server_handshake::step::done || step == tls::server_handshake::step::failed) break;
            const auto ready = step == tls::server_handshake::step::want_read ? tcp::socket::wait_read : tcp::socket::wait_write;
            std::tie(ec) = co_await socket_.async_wait(ready, nothrow);
            if (ec) break;
        }
    }
    if (ec) {
        end_reason_ = timed_out_ ? "tls handshake timeout" : fmt::format("tls handshake failed: {}", ec.message());
        log::info("session={} event=tls_failed reason=\"{}\"", id_, log::escaped(end_reason_, 200));
        metrics::get().tls_failed.fetch_add(1, std::memory_order_relaxed);
        co_return false;
    }
    tls_ = std::make_unique<tls_state>(socket_, *hs);
    arm(ctx_->idle_timeout);
    tls_->info = tls::describe(tls_->stream.native_handle());
    const tls::session_info& info = tls_->info;
    metrics::get().tls_ok.fetch_add(1, std::memory_order_relaxed);
    log::info("session={} event=tls version={} cipher={}{}", id_, info.version, info.cipher,
              info.peer_subject.empty() ? std::string() : fmt::format(" client=\"{}\"", log::escaped(info.peer_subject)));
    co_return true;
}

// HAProxy's PROXY header, read before anything else and never past its end: what follows
// belongs to SMTP or to an implicit-TLS handshake. A bad, slow or missing header closes the
// connection without a reply (aiosmtpd §6.1); the session's peer becomes the client it names.
asio::awaitable<bool> session::read_proxy_header()
{
    arm(ctx_->proxy_timeout);
    std::string buf;
    for (;;) {
        const proxy::result r = proxy::parse(buf);
        if (r.state == proxy::result::status::invalid) {
            end_reason_ = fmt::format("proxy header invalid: {}", r.error);
            log::info("session={} event=proxy_failed reason=\"{}\"", id_, r.error);
            co_return false;
        }
        if (r.state == proxy::result::status::done) {
            proxy_ = std::make_unique<proxied>();
            proxy_->header = r.value;
            break;
        }
        const std::size_t have = buf.size();
        buf.resize(r.need);
        auto [ec, n] = co_await asio::async_read(socket_, asio::buffer(buf.data() + have, r.need - have), nothrow);
        if (ec) {
            end_reason_ = timed_out_ ? "proxy header timeout" : fmt::format("proxy header not received: {}", ec.message());
            log::info("session={} event=proxy_failed reason=\"{}\"", id_, end_reason_);
            co_return false;
        }
    }
    const proxy::header& h = proxy_->header;
    if (h.has_client()) {
        proxy_->via = fmt::format("{}:{}", peer_address_, peer_port_);
        peer_address_ = h.src_address;
        peer_port_ = h.src_port;
    }
    log::info("session={} event=proxy version={} client={}:{} via={}", id_, h.version, peer_address_, peer_port_,
              proxy_->via.empty() ? std::string_view("-") : std::string_view(proxy_->via));
    if (!ctx_->plugins->hooks[ASIOSMTPD_HOOK_PROXY].empty()) {
        proto::hook_request req;
        req.kind = proto::hook_kind::proxy;
        const proto::hook_result r = co_await run_chain(req);
        if (client_gone_) co_return false;
        if (r.verdict != proto::verdict::none && r.verdict != proto::verdict::accept) {
            end_reason_ = "refused by a PROXY hook";
            co_return false;
        }
    }
    arm(ctx_->idle_timeout);
    co_return true;
}

// The session's whole life: the SMTP conversation. Cold paths (hooks, TLS, PROXY, AUTH failures)
// are separate coroutines or plain functions, so that the one frame an idle session keeps is small.
asio::awaitable<void> session::run()
{
    log::info("session={} event=connect peer={}:{} local={}:{}", id_, peer_address_, peer_port_, local_address_, local_port_);
    metrics::get().connections_total.fetch_add(1, std::memory_order_relaxed);
    arm(ctx_->idle_timeout);
    start_watchdog();
    if (!co_await open()) {
        co_await close();
        co_return;
    }
    {
        boost::system::error_code ignored;
        socket_.non_blocking(true, ignored);  // the reads and writes below never block
        socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
    }
    engine_.start();
    for (;;) {
        if (engine_.pending_hook()) {
            co_await run_hooks();
            if (client_gone_) break;  // end_reason_ says why
        }
        if (engine_.take_auth_failure()) co_await auth_failed();
        if (forced_ && !engine_.close_requested()) {
            engine_.abort_with(proto::replies::shutting_down(ctx_->smtp.hostname));
            end_reason_ = "shutdown";
        }
        // Over the TLS handshake caps, STARTTLS is answered 454 instead of 220 (RFC 3207 §4).
        if (engine_.tls_requested() && !admit_tls()) engine_.refuse_tls(proto::replies::tls_temporarily_unavailable);
        if (!engine_.output().empty()) {
            const sent r = send_now();
            if (r == sent::failed || (r == sent::some && !co_await flush())) break;
        }
        if (engine_.close_requested()) {
            if (end_reason_ == "closed") end_reason_ = engine_.close_reason();
            break;
        }
        if (engine_.tls_requested()) {
            // The 220 went out above; plaintext pipelined after STARTTLS was dropped.
            if (!co_await handshake()) break;
            engine_.tls_established();
            continue;
        }
        if (stop_requested_ && at_command_boundary()) {
            engine_.abort_with(proto::replies::shutting_down(ctx_->smtp.hostname));
            end_reason_ = "shutdown";
            continue;
        }
        if (client_eof_) {  // seen by the watch during a suspended hook (await_pending)
            end_reason_ = "client closed";
            break;
        }
        if (engine_.progress() != progress_seen_) restart_read_clock();  // waiting for the next line
        boost::system::error_code ec;
        std::size_t n = 0;
        if (tls_) {
            const std::span<char> room = engine_.prepare(read_size_);
            std::tie(ec, n) = co_await tls_->stream.async_read_some(asio::buffer(room.data(), room.size()), nothrow);
            if (!ec) read_size_ = n == room.size() ? std::min(read_size_ * 2, read_max) : std::max(read_size_ / 2, read_min);
        } else {
            // Between commands (nothing buffered) the session holds only a small buffer, kept
            // from one command to the next: an idle session costs little memory, a command no
            // allocation. Asio tries the read at once (EAGAIN when the client
            // has not sent yet: cheaper than re-arming epoll for a readiness wait), and every
            // read goes through the event loop, so a fast sender cannot starve the others.
            const bool idle = engine_.release_buffer(idle_read);
            const std::span<char> room = engine_.prepare(idle ? idle_read : read_size_);
            std::tie(ec, n) = co_await socket_.async_read_some(asio::buffer(room.data(), room.size()), nothrow);
            if (!ec && !idle) read_size_ = n < room.size() ? std::max(read_size_ / 2, read_min) : std::min(read_size_ * 2, read_max);
        }
        if (ec == asio::error::operation_aborted) {
            if (timed_out_ && !forced_) {
                engine_.timed_out();
                end_reason_ = too_slow_ ? fmt::format("timeout (message data slower than {} bytes/s)", ctx_->data_min_rate)
                                        : std::string("timeout");
            }
            continue;  // forced_ or stop_requested_: decided at the top of the loop
        }
        if (ec) {
            end_reason_ = ec == asio::error::eof ? "client closed" : fmt::format("read failed: {}", ec.message());
            break;
        }
        window_bytes_ += n;
        engine_.commit(n);
        if (auto t = engine_.take_transaction()) log_transaction(*t);
        end_transaction_slots();
    }
    co_await close();
}

// Before the greeting: the PROXY header, implicit TLS (RFC 8314 §3.3: TLS first, then the
// greeting; it counts as TLS, docs/behaviour.md). False: the session ends without a greeting.
asio::awaitable<bool> session::open()
{
    if (ctx_->proxy_protocol && !co_await read_proxy_header()) co_return false;
    if (ctx_->tls == config::tls_mode::implicit) {
        const bool ok = co_await handshake();
        engine_.set_tls_active(ok);
        co_return ok;
    }
    co_return true;
}

asio::awaitable<void> session::close()
{
    if (tls_ && socket_.is_open() && !forced_ && !client_gone_) {
        // close_notify, bounded by the watchdog; the peer may already be gone.
        arm(ctx_->close_grace);
        co_await tls_->stream.async_shutdown(nothrow);
    }
    finished_ = true;
    watchdog_timer_.cancel();
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    run_session_close_hooks();
    slots_.clear_all();
    log::info("session={} event=disconnect reason=\"{}\" messages={}", id_, end_reason_, engine_.transactions());
}

// The hook chains the engine asked for, one after the other (a hook's outcome may release
// pipelined commands that ask for the next).
asio::awaitable<void> session::run_hooks()
{
    while (const proto::hook_request* req = engine_.pending_hook()) {
        if ((req->kind == proto::hook_kind::data || req->kind == proto::hook_kind::data_chunk) &&
            data_started_ == std::chrono::steady_clock::time_point{})
            data_started_ = std::chrono::steady_clock::now();
        const bool auth = req->kind == proto::hook_kind::auth_check || req->kind == proto::hook_kind::auth_mechanism;
        proto::hook_result result = co_await run_chain(*req);
        if (client_gone_) co_return;  // the session loop ends; no reply, no further command
        engine_.hook_done(std::move(result));
        if (auth && engine_.authenticated()) {
            log::info("session={} event=auth result=ok login=\"{}\"", id_, log::escaped(engine_.auth_login()));
            metrics::get().auth_ok.fetch_add(1, std::memory_order_relaxed);
        }
        if (auto t = engine_.take_transaction()) log_transaction(*t);
        end_transaction_slots();
    }
}

// One line per transaction: who, how much, the answer, who decided, how long.
void session::log_transaction(const proto::transaction_summary& t)
{
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - data_started_)
                        .count();
    log::info("session={} event=message from=<{}> rcpts={} size={} result={} decided_by={} ms={}", id_,
              log::escaped(t.mail_from), t.rcpts, t.size, t.code,
              decided_by_.empty() ? std::string_view("default") : decided_by_,
              data_started_ == std::chrono::steady_clock::time_point{} ? 0 : ms);
    metrics::get().message(t.code, t.size);
    decided_by_ = {};
    data_started_ = {};
}

// Brute force: a failed AUTH answers slowly (never log the credentials).
asio::awaitable<void> session::auth_failed()
{
    log::info("session={} event=auth result=failed", id_);
    metrics::get().auth_failed.fetch_add(1, std::memory_order_relaxed);
    if (ctx_->auth_failure_delay.count() > 0) {
        asio::steady_timer pause(socket_.get_executor(), ctx_->auth_failure_delay);
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
    waker(asio::any_io_executor ex, const std::shared_ptr<asio::steady_timer>& timer) : ex_(std::move(ex)), timer_(timer) {}
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
    bool active = true;    ///< false once the wait ended
    bool peeking = false;  ///< the peek is outstanding on the socket
    std::string gone;      ///< why the client is gone; empty while it is not
    bool eof = false;      ///< plaintext EOF seen (a half-close): the next read would answer it
    char byte = 0;         ///< the peek's buffer
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
                             w->gone = ec == asio::error::eof
                                           ? std::string("client closed during a plugin hook")
                                           : fmt::format("client connection lost during a plugin hook: {}", ec.message());
                             w->waiter->cancel();
                         });
}

} // namespace

// Wait for the call `c` suspended: until complete() wakes us, the plugin's timeout, the client
// leaving (client_gone_) or a forced shutdown. The chain decides what came of it.
asio::awaitable<void> session::await_pending(const plugin::chain& c)
{
    const std::shared_ptr<plugin::pending_call>& pending = c.pending();
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

// Each plugin's answer: its metric, and a log line when it failed.
void session::answered(const plugin::instance& plugin, std::string_view hook, std::chrono::steady_clock::duration took,
                       const proto::hook_result& r, std::string_view why)
{
    metrics::get().hook(plugin.name, hook, took);
    if (r.verdict != proto::verdict::error) return;
    metrics::get().plugin_errors.fetch_add(1, std::memory_order_relaxed);
    log::warn("session={} event=plugin_error plugin={} key={} hook={} reason=\"{}\"", id_, plugin.name, plugin.key, hook,
              why);
}

void session::run_session_close_hooks() noexcept
{
    if (ctx_->plugins) plugin::notify(*ctx_->plugins, ASIOSMTPD_HOOK_SESSION_CLOSE, *this);
}

} // namespace asiosmtpd::net
