// SPDX-License-Identifier: Apache-2.0
#include "net/session.hpp"

#include "log/log.hpp"
#include "net/metrics.hpp"
#include "net/server.hpp"
#include "proto/trace.hpp"

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

#include <cstring>
#include <memory>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

namespace asiosmtpd::net {
namespace {

// Reads start small (an idle session holds little) and double while reads fill the buffer
// (a DATA transfer), up to read_max.
constexpr std::size_t read_min = 2 * 1024;
constexpr std::size_t read_max = 256 * 1024;
// Between commands: enough for a command line or a small pipelined group.
constexpr std::size_t idle_read = 128;
// Draining after SIGTERM: how long a session that was busy at the stop may take, once its
// transaction is over, to send its next command (QUIT gets 221, anything else 421).
constexpr std::chrono::seconds quit_window{1};
std::atomic<std::uint64_t> next_session_id{1};

// TLS input between commands: a TLS 1.3 record of a command line or a small pipelined group.
constexpr std::size_t idle_tls_input = 256;

// One TLS operation to its end: `attempt(ec)` (a tls::channel call) again after what it asked
// for: more input, read from the socket as plaintext is (Asio's speculative read, then the
// readiness wait), or the socket writable. The watchdog's cancel ends a wait with
// operation_aborted.
template <class Attempt>
asio::awaitable<boost::system::error_code> until_done(tcp::socket& socket, tls::channel& ch, std::size_t input,
                                                      Attempt attempt)
{
    for (;;) {
        boost::system::error_code ec;
        const tls::channel::status s = attempt(ec);
        if (s == tls::channel::status::done || s == tls::channel::status::failed) co_return ec;
        if (s == tls::channel::status::want_write) {
            std::tie(ec) = co_await socket.async_wait(tcp::socket::wait_write, nothrow);
            if (ec) co_return ec;
            continue;
        }
        const std::span<char> room = ch.input_room(input);
        std::size_t n = 0;
        std::tie(ec, n) = co_await socket.async_read_some(asio::buffer(room.data(), room.size()), nothrow);
        if (ec == asio::error::eof) ch.input_eof();  // OpenSSL says what it means: close_notify or not
        else if (ec) co_return ec;
        ch.input_commit(n);
    }
}

}  // namespace

session::session(tcp::socket socket, std::shared_ptr<const listener_context> ctx, registry& owner)
    : socket_(std::move(socket)),
      ctx_(std::move(ctx)),
      owner_(owner),
      engine_(ctx_->smtp),
      watchdog_timer_(socket_.get_executor()),
      id_(next_session_id.fetch_add(1, std::memory_order_relaxed))
{
    boost::system::error_code ec;
    if (!ctx_->unix_path.empty()) {
        // A UNIX socket client has no address: its peer and local address are the socket.
        peer_address_ = local_address_ = "unix:" + ctx_->unix_path;
    } else if (const auto remote = socket_.remote_endpoint(ec); !ec) {
        peer_address_ = remote.address().to_string();
        peer_port_ = remote.port();
    }
    if (const auto local = socket_.local_endpoint(ec); !ec && ctx_->unix_path.empty()) {
        local_address_ = local.address().to_string();
        local_port_ = local.port();
    }
    if (ctx_->received_header) engine_.set_message_prefix([this] { return received_field(); });
}

std::string session::transaction_id() const { return proto::transaction_id(id_, engine_.transaction_number()); }

std::string session::received_field() const
{
    const proto::envelope& env = engine_.current_envelope();
    proto::trace_info t;
    t.helo = engine_.helo_name();
    t.peer_address = peer_address_;
    t.peer_name = peer_name_;
    t.hostname = ctx_->smtp.hostname;
    const std::string id = transaction_id();
    t.id = id;
    t.tls_version = tls_version();
    t.tls_cipher = tls_cipher();
    t.esmtp = engine_.extended_smtp();
    t.lmtp = ctx_->smtp.lmtp;
    t.authenticated = engine_.authenticated();
    if (env.rcpt_tos.size() == 1) t.single_rcpt = env.rcpt_tos.front();
    t.when = std::time(nullptr);
    return proto::received_field(t);
}

session::~session() = default;

// A transaction's end: TXN_END, then its slots go (their destructors run now, not at the next
// use: a plugin's temporary file of a refused message goes at once).
void session::end_transaction_slots() noexcept
{
    if (ctx_->plugins) plugin::end_transactions(*ctx_->plugins, *this, engine_);
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
        self->busy_at_stop_ = !self->at_command_boundary();
        self->engine_.drain(proto::replies::shutting_down(self->ctx_->smtp.hostname));
        boost::system::error_code ignored;
        if (!self->busy_at_stop_) self->socket_.cancel(ignored);
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
    boost::system::error_code ec;
    if (tls_) return send_tls(ec);
    std::string& out = engine_.output();
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

// Under TLS too: the records go out at once while the socket takes them (OpenSSL writes each
// with one send()); what is left, flush() sends.
session::sent session::send_tls(boost::system::error_code& ec)
{
    std::string& out = engine_.output();
    std::size_t done = 0;
    tls::channel::status s = tls::channel::status::done;
    while (done < out.size()) {
        std::size_t n = 0;
        s = tls_->stream.write(std::span<const char>(out).subspan(done), n, ec);
        if (s != tls::channel::status::done) break;
        done += n;
    }
    if (s == tls::channel::status::failed) {
        end_reason_ = timed_out_ ? "timeout (client not reading)" : fmt::format("write failed: {}", ec.message());
        engine_.clear_output();
        return sent::failed;
    }
    if (done == out.size()) {
        engine_.clear_output();
        return sent::all;
    }
    out.erase(0, done);
    return sent::some;
}

asio::awaitable<bool> session::flush()
{
    if (engine_.output().empty()) co_return true;
    waited_ = true;
    boost::system::error_code ec;
    if (tls_) {
        std::string& out = engine_.output();
        std::size_t done = 0;
        while (!ec && done < out.size()) {
            std::size_t n = 0;
            ec = co_await until_done(socket_, tls_->stream, idle_tls_input, [&](boost::system::error_code& e) {
                return tls_->stream.write(std::span<const char>(out).subspan(done), n, e);
            });
            done += n;
        }
    } else std::tie(ec, std::ignore) = co_await asio::async_write(socket_, asio::buffer(engine_.output()), nothrow);
    engine_.clear_output();
    if (ec) {
        end_reason_ = timed_out_ ? "timeout (client not reading)" : fmt::format("write failed: {}", ec.message());
        co_return false;
    }
    co_return true;
}

// The session's whole life: the SMTP conversation. Cold paths (hooks, TLS, PROXY, AUTH failures)
// are separate coroutines or plain functions, so that the one frame an idle session keeps is small.
asio::awaitable<void> session::run()
{
    if (ctx_->unix_path.empty()) {
        log::info("session={} event=connect peer={}:{} local={}:{}", id_, peer_address_, peer_port_, local_address_,
                  local_port_);
    } else {
        // A UNIX socket client: who it is, as the kernel says (SO_PEERCRED).
        ucred cred{};
        socklen_t len = sizeof cred;
        const bool known = ::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0;
        log::info("session={} event=connect peer={} pid={} uid={} gid={}", id_, peer_address_,
                  known ? std::to_string(cred.pid) : "-", known ? std::to_string(cred.uid) : "-",
                  known ? std::to_string(cred.gid) : "-");
    }
    metrics::get().connections_total.fetch_add(1, std::memory_order_relaxed);
    arm(ctx_->idle_timeout);
    start_watchdog();
    if (!co_await open()) {
        co_await close();
        co_return;
    }
    {
        boost::system::error_code ignored;
        if (!socket_.non_blocking()) socket_.non_blocking(true, ignored);  // the reads and writes below never block
        socket_.set_option(asio::ip::tcp::no_delay(true), ignored);
        const int on = 1;  // each read says what it left in the socket (receive_now)
        inq_ = ctx_->unix_path.empty() && ::setsockopt(socket_.native_handle(), SOL_TCP, TCP_INQ, &on, sizeof on) == 0;
    }
    engine_.allow_xclient(proto::contains(ctx_->xclient_networks, peer_address_));
    engine_.start();
    // The plaintext read's state (see there): the last read emptied the socket and nothing ran
    // on the loop since; the last read left more to read.
    bool drained = false;
    bool more = false;
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
            drained = more = false;
            if (!co_await handshake()) break;
            engine_.tls_established();
            continue;
        }
        if (stop_requested_ && at_command_boundary() && quit_deadline_ == std::chrono::steady_clock::time_point{}) {
            // Its transaction over, a session busy at the stop may still say QUIT (221; the engine
            // drains: anything else is answered 421). One idle at the stop gets the 421 now,
            // unless it sent something meanwhile (a QUIT crossing the stop): that is answered.
            quit_deadline_ = std::chrono::steady_clock::now() + quit_window;
            if (!busy_at_stop_) {
                if (answer_pending_input()) continue;
                engine_.abort_with(proto::replies::shutting_down(ctx_->smtp.hostname));
                end_reason_ = "shutdown";
                continue;
            }
        }
        if (client_eof_) {  // seen by the watch during a suspended hook (await_pending)
            end_reason_ = "client closed";
            break;
        }
        if (engine_.progress() != progress_seen_) restart_read_clock();  // waiting for the next line
        if (quit_deadline_ != std::chrono::steady_clock::time_point{})
            arm(std::max(quit_deadline_ - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration{}));
        boost::system::error_code ec;
        std::size_t n = 0;
        if (tls_) {
            // As below, small buffers between commands (the records' and the plaintext's);
            // OpenSSL keeps what does not fit and hands it out at the next read.
            const bool idle = engine_.release_buffer(idle_read);
            const std::span<char> room = engine_.prepare(idle ? idle_read : read_size_);
            ec = co_await until_done(socket_, tls_->stream, idle ? idle_tls_input : read_size_,
                                     [&](boost::system::error_code& e) { return tls_->stream.read(room, n, e); });
            if (!ec && !idle)
                read_size_ = n == room.size() ? std::min(read_size_ * 2, read_max) : std::max(read_size_ / 2, read_min);
        } else {
            // The session holds no read buffer: it waits for the socket to be readable, reads
            // into its loop's buffer, and the engine keeps only what it did not process (an
            // incomplete line, pipelined commands behind a hook). The wait comes first when the
            // last read left the socket empty and nothing ran on the loop since (the kernel
            // says so, TCP_INQ: a FIN counts as not empty), so that no read answers EAGAIN;
            // otherwise the read is tried at once (after a trip through the loop while a fast
            // sender has more: it cannot starve the others).
            engine_.release_buffer(0);
            if (std::exchange(waited_, false)) drained = false;  // an edge may have come and gone
            if (drained) {
                std::tie(ec) = co_await socket_.async_wait(tcp::socket::wait_read, nothrow);
            } else if (more) {
                co_await asio::post(socket_.get_executor(), asio::use_awaitable);
            }
            while (!ec) {
                const std::string_view got = receive_now(ec, drained, more);
                if (!ec) {
                    n = got.size();
                    window_bytes_ += n;
                    engine_.feed(got);
                    break;
                }
                if (ec != asio::error::would_block && ec != asio::error::try_again) break;
                ec = {};
                std::tie(ec) = co_await socket_.async_wait(tcp::socket::wait_read, nothrow);
            }
            if (!ec) {
                if (engine_.has_refusals()) log_refusals();
                if (auto t = engine_.take_transaction()) log_transaction(*t);
                end_transaction_slots();
                continue;
            }
            drained = more = false;
        }
        if (ec == asio::error::operation_aborted) {
            if (timed_out_ && !forced_ && stop_requested_) {
                engine_.abort_with(proto::replies::shutting_down(ctx_->smtp.hostname));  // the quit window
                end_reason_ = "shutdown";
            } else if (timed_out_ && !forced_) {
                engine_.timed_out();
                end_reason_ = too_slow_
                                  ? fmt::format("timeout (message data slower than {} bytes/s)", ctx_->data_min_rate)
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
        if (engine_.has_refusals()) log_refusals();
        if (auto t = engine_.take_transaction()) log_transaction(*t);
        end_transaction_slots();
    }
    co_await close();
}

namespace {
// The loop's one read buffer for plaintext sessions (engine::feed copies what it keeps).
constexpr std::size_t loop_buffer_size = 128 * 1024;
char* loop_buffer()
{
    thread_local const std::unique_ptr<char[]> buffer(new char[loop_buffer_size]);
    return buffer.get();
}
}  // namespace

// Plaintext: one recvmsg() into the loop's buffer. With TCP_INQ the kernel also says what is
// left in the socket after it (a FIN counts as something): `drained` when nothing, `more` when
// something or unknown (a UNIX socket). Errors as Asio reports them (would_block, eof).
std::string_view session::receive_now(boost::system::error_code& ec, bool& drained, bool& more)
{
    char* const buffer = loop_buffer();
    iovec iov{buffer, loop_buffer_size};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (inq_) {
        msg.msg_control = control.data();
        msg.msg_controllen = control.size();
    }
    ssize_t r = 0;
    do r = ::recvmsg(socket_.native_handle(), &msg, 0);
    while (r < 0 && errno == EINTR);
    drained = false;
    more = false;
    if (r < 0) {
        ec = boost::system::error_code(errno, asio::error::get_system_category());
        return {};
    }
    if (r == 0) {
        ec = asio::error::eof;
        return {};
    }
    more = true;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_TCP || c->cmsg_type != TCP_CM_INQ) continue;
        int left = 0;
        std::memcpy(&left, CMSG_DATA(c), sizeof left);
        drained = left == 0;
        more = !drained;
    }
    return {buffer, static_cast<std::size_t>(r)};
}

// The stop found the session idle and cancelled its read: bytes the client sent meanwhile (a
// QUIT crossing the stop) are read now, without waiting, and go to the engine. True when some
// were (the session loop answers them).
bool session::answer_pending_input()
{
    if (tls_) return false;  // a TLS record may hold a partial command: not worth the risk here
    boost::system::error_code ec;
    const std::span<char> room = engine_.prepare(idle_read);
    const std::size_t n = socket_.read_some(asio::buffer(room.data(), room.size()), ec);
    if (ec || n == 0) return false;
    engine_.commit(n);
    if (engine_.has_refusals()) log_refusals();
    return true;
}

asio::awaitable<void> session::close()
{
    if (tls_ && socket_.is_open() && !forced_ && !client_gone_) {
        // close_notify, bounded by the watchdog; the peer may already be gone.
        arm(ctx_->close_grace);
        co_await until_done(socket_, tls_->stream, idle_tls_input,
                            [this](boost::system::error_code& e) { return tls_->stream.shutdown(e); });
    }
    finished_ = true;
    watchdog_timer_.cancel();
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    // An open transaction ends with the session (TXN_END "quit", "timeout", "disconnect"...).
    std::string_view why = forced_ || stop_requested_ ? "shutdown" : "disconnect";
    if (engine_.close_requested()) {
        const std::string_view r = engine_.close_reason();
        why = r == "quit" || r == "timeout" ? r : r == "aborted" || r == "shutdown" ? "shutdown" : "closed";
    }
    engine_.end_session(why);
    end_transaction_slots();
    run_session_close_hooks();
    data_slots().clear_all();
    log::info("session={} event=disconnect reason=\"{}\" messages={}", id_, end_reason_, engine_.transactions());
}

// One line per refused command: the client, the command as received, the reply (Postfix's
// "reject:" lines). AUTH failures and messages have lines of their own.
void session::log_refusals()
{
    for (const proto::refusal& r : engine_.take_refusals())
        log::info("session={}{} event=reject client={} command=\"{}\" reply=\"{}\"", id_,
                  r.transaction == 0 ? std::string() : " txn=" + proto::transaction_id(id_, r.transaction),
                  peer_address_, log::escaped(r.command, 200), log::escaped(r.reply, 200));
}

// One line per transaction: who sent to whom, how much, the answer, who decided, how long.
// The null sender is "from=<>"; recipients are "to=<a>,<b>" (each escaped).
void session::log_transaction(const proto::transaction_summary& t)
{
    metrics::get().message(t.code, t.size);
    if (!log::enabled(log::level::info)) {  // the line's arguments cost more than the rest of it
        decided_by_ = {};
        data_started_ = {};
        return;
    }
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - data_started_).count();
    const std::string_view from = t.mail_from == "<>" ? std::string_view() : std::string_view(t.mail_from);
    std::string to;
    for (const std::string& r : t.rcpt_tos) {
        if (!to.empty()) to.push_back(',');
        to.append("<").append(log::escaped(r, 320)).append(">");
    }
    log::info(
        "session={} event=message txn={} client={} from=<{}> to={} rcpts={} size={} result={} decided_by={} ms={}", id_,
        proto::transaction_id(id_, t.transaction), peer_address_, log::escaped(from, 320),
        to.empty() ? std::string("-") : to, t.rcpts, t.size, t.code,
        decided_by_.empty() ? std::string_view("default") : decided_by_,
        data_started_ == std::chrono::steady_clock::time_point{} ? 0 : ms);
    decided_by_ = {};
    data_started_ = {};
}

}  // namespace asiosmtpd::net
