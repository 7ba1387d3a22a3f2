// SPDX-License-Identifier: Apache-2.0
// session: what comes before the SMTP conversation, and TLS. The PROXY header, implicit TLS
// and the STARTTLS handshake: admission against the handshake caps, waiting for the client's
// first TLS record before any TLS state exists, the handshake itself (session.hpp).
#include "net/session.hpp"

#include "log/log.hpp"
#include "net/metrics.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/read.hpp>

#include <fmt/format.h>

namespace asiosmtpd::net {
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
    log::warn("session={} event=tls_refused peer={} limit={} max={} reason=\"too many TLS handshakes in progress{}\"",
              id_, peer_address_, client ? "max_tls_handshakes_per_client" : "max_tls_handshakes",
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
// OpenSSL's record buffers released between records), and so it goes on once the handshake
// succeeded (tls::channel: an idle TLS session holds OpenSSL's SSL object and no buffer).
asio::awaitable<bool> session::handshake()
{
    arm(ctx_->handshake_timeout);
    if (!admit_tls()) {
        end_reason_ = "tls refused: too many handshakes in progress";
        co_return false;
    }
    const handshake_limits::slot slot = std::move(tls_slot_);  // given back when this returns
    boost::system::error_code ec;
    if (!socket_.non_blocking()) socket_.non_blocking(true, ec);  // OpenSSL reads and writes it directly
    if (!ec) ec = co_await await_client_hello();
    std::optional<tls::server_handshake> hs;
    if (!ec) {
        hs.emplace(*ctx_->tls_context, socket_.native_handle());
        for (;;) {
            const auto step = hs->advance(ec);
            if (step == tls::server_handshake::step::done || step == tls::server_handshake::step::failed) break;
            const auto ready =
                step == tls::server_handshake::step::want_read ? tcp::socket::wait_read : tcp::socket::wait_write;
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
    tls_ = std::make_unique<tls_state>(*hs, socket_.native_handle());
    arm(ctx_->idle_timeout);
    tls_->info = tls::describe(tls_->stream.native_handle());
    const tls::session_info& info = tls_->info;
    metrics::get().tls_ok.fetch_add(1, std::memory_order_relaxed);
    log::info("session={} event=tls version={} cipher={}{}", id_, info.version, info.cipher,
              info.peer_subject.empty() ? std::string()
                                        : fmt::format(" client=\"{}\"", log::escaped(info.peer_subject)));
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
            end_reason_ =
                timed_out_ ? "proxy header timeout" : fmt::format("proxy header not received: {}", ec.message());
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

}  // namespace asiosmtpd::net
