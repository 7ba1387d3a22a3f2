// SPDX-License-Identifier: Apache-2.0
// session_socket: the session's tcp::socket, with a read that spares Asio's speculative recv().
//
// Asio (1.81, epoll) tries every read at once ("speculatively") and only stops trying after a
// read that returned 0 bytes; so each SMTP command costs a recv() that answers EAGAIN before
// the wait (the client sends the next command only once it has the reply). A read that did not
// fill its buffer has emptied the socket's receive queue: read_some_drained() reports it to the
// reactor as Asio's own reads report EOF ("exhausted"), so that the next read is queued for
// epoll's next edge without trying recv() first. Data that arrives in between raises that edge,
// and the reactor then tries again, as for any read. Only the plaintext read of the session
// loop uses it; TLS, PROXY and every other operation use Asio's own.
//
// It builds its operation from Asio's reactor internals (boost::asio::detail), which are not a
// public interface: it is compiled only for the reactor and Boost version it was written for
// (epoll, Boost 1.81-1.83), and is plain async_read_some() elsewhere.
#pragma once

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/version.hpp>

#include <cstddef>
#include <type_traits>
#include <utility>

#if defined(BOOST_ASIO_HAS_EPOLL) && !defined(BOOST_ASIO_HAS_IO_URING_AS_DEFAULT) && BOOST_VERSION >= 108100 &&        \
    BOOST_VERSION < 108400
#define ASIOSMTPD_DRAINED_READ 1
#include <boost/asio/detail/epoll_reactor.hpp>
#include <boost/asio/detail/fenced_block.hpp>
#include <boost/asio/detail/handler_alloc_helpers.hpp>
#include <boost/asio/detail/handler_cont_helpers.hpp>
#include <boost/asio/detail/handler_work.hpp>
#include <boost/asio/detail/reactor_op.hpp>
#include <boost/asio/detail/socket_ops.hpp>
#else
#define ASIOSMTPD_DRAINED_READ 0
#endif

namespace asiosmtpd::net {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

#if ASIOSMTPD_DRAINED_READ
namespace drained {
namespace ad = boost::asio::detail;

class recv_op_base : public ad::reactor_op {
public:
    recv_op_base(ad::socket_type socket, asio::mutable_buffer buffer, func_type on_complete)
        : ad::reactor_op(boost::system::error_code(), &recv_op_base::do_perform, on_complete),
          socket_(socket),
          buffer_(buffer)
    {}

    static status do_perform(ad::reactor_op* base)
    {
        auto* o = static_cast<recv_op_base*>(base);
        if (!ad::socket_ops::non_blocking_recv1(o->socket_, o->buffer_.data(), o->buffer_.size(), 0, true, o->ec_,
                                                o->bytes_transferred_))
            return not_done;  // EAGAIN: wait for the next edge
        // Short (EOF and errors included): the receive queue is empty.
        return o->bytes_transferred_ < o->buffer_.size() ? done_and_exhausted : done;
    }

private:
    ad::socket_type socket_;
    asio::mutable_buffer buffer_;
};

template <class Handler, class IoExecutor>
class recv_op : public recv_op_base {
public:
    BOOST_ASIO_DEFINE_HANDLER_PTR(recv_op);

    recv_op(ad::socket_type socket, asio::mutable_buffer buffer, Handler& handler, const IoExecutor& io_ex)
        : recv_op_base(socket, buffer, &recv_op::do_complete),
          handler_(std::move(handler)),
          work_(handler_, io_ex)
    {}

    // As Asio's reactive_socket_recv_op::do_complete.
    static void do_complete(void* owner, ad::operation* base, const boost::system::error_code&, std::size_t)
    {
        auto* o = static_cast<recv_op*>(base);
        ptr p = {std::addressof(o->handler_), o, o};
        ad::handler_work<Handler, IoExecutor> w(std::move(o->work_));
        ad::binder2<Handler, boost::system::error_code, std::size_t> handler(o->handler_, o->ec_,
                                                                             o->bytes_transferred_);
        p.h = std::addressof(handler.handler_);
        p.reset();
        if (owner) {
            ad::fenced_block b(ad::fenced_block::half);
            w.complete(handler, handler.handler_);
        }
    }

private:
    Handler handler_;
    ad::handler_work<Handler, IoExecutor> work_;
};

// Per-operation cancellation, as Asio's own reads have it.
class cancel_op {
public:
    cancel_op(ad::epoll_reactor* r, ad::epoll_reactor::per_descriptor_data* d, int fd) : reactor_(r), data_(d), fd_(fd)
    {}
    void operator()(asio::cancellation_type_t type)
    {
        if (!!(type &
               (asio::cancellation_type::terminal | asio::cancellation_type::partial | asio::cancellation_type::total)))
            reactor_->cancel_ops_by_key(fd_, *data_, ad::epoll_reactor::read_op, this);
    }

private:
    ad::epoll_reactor* reactor_;
    ad::epoll_reactor::per_descriptor_data* data_;
    int fd_;
};
}  // namespace drained
#endif

class session_socket : public tcp::socket {
public:
    explicit session_socket(tcp::socket&& s) : tcp::socket(std::move(s)) {}

    /// async_read_some() for a plaintext, non-blocking socket, without the speculative
    /// recv() after a read that emptied the socket (see above).
    template <class Token>
    auto async_read_some_drained(asio::mutable_buffer buffer, Token&& token)
    {
#if ASIOSMTPD_DRAINED_READ
        if (buffer.size() == 0) return async_read_some(buffer, std::forward<Token>(token));  // Asio's no-op read
        return asio::async_initiate<Token, void(boost::system::error_code, std::size_t)>(
            [this](auto handler, asio::mutable_buffer b) { start(std::move(handler), b); }, token, buffer);
#else
        return async_read_some(buffer, std::forward<Token>(token));
#endif
    }

private:
#if ASIOSMTPD_DRAINED_READ
    template <class Handler>
    void start(Handler handler, asio::mutable_buffer b)
    {
        namespace ad = boost::asio::detail;
        auto& impl = impl_.get_implementation();
        const asio::any_io_executor& io_ex = impl_.get_executor();
        auto& reactor = asio::use_service<ad::epoll_reactor>(asio::query(io_ex, asio::execution::context));
        const bool is_continuation = boost_asio_handler_cont_helpers::is_continuation(handler);
        auto slot = asio::get_associated_cancellation_slot(handler);
        using op = drained::recv_op<Handler, asio::any_io_executor>;
        typename op::ptr p = {std::addressof(handler), op::ptr::allocate(handler), nullptr};
        p.p = new (p.v) op(impl.socket_, b, handler, io_ex);
        if (slot.is_connected())
            p.p->cancellation_key_ =
                &slot.template emplace<drained::cancel_op>(&reactor, &impl.reactor_data_, impl.socket_);
        if ((impl.state_ & ad::socket_ops::non_blocking) ||
            ad::socket_ops::set_internal_non_blocking(impl.socket_, impl.state_, true, p.p->ec_))
            reactor.start_op(ad::epoll_reactor::read_op, impl.socket_, impl.reactor_data_, p.p, is_continuation, true);
        else reactor.post_immediate_completion(p.p, is_continuation);
        p.v = p.p = nullptr;
    }
#endif
};

}  // namespace asiosmtpd::net
