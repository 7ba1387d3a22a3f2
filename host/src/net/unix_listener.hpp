// SPDX-License-Identifier: Apache-2.0
// unix_listener: a listener on a UNIX socket (server.listen[].path): the socket file (made
// with its mode, and owner when the server drops privileges), its acceptor, and the file's
// removal when the listener closes. Its connections are handed to sessions as the TCP ones
// are: the descriptor in a tcp::socket (only read, write, wait, shutdown and close are used on
// it; the session knows it is a UNIX client from its listener: listener_context::unix_path).
#pragma once

#include "config/config.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include <sys/types.h>

namespace asiosmtpd::net {

class unix_listener {
public:
    /// Creates the socket file at spec.path and listens. A socket file nobody listens on any
    /// more (left by a process that is gone) is replaced; one that answers, or a file that is
    /// not a socket, is an error. The file gets spec.mode; when the process runs as root and
    /// `owner` is set (server.user: privileges are dropped next), it belongs to that user and
    /// group. Throws std::runtime_error("<where>: cannot listen on unix:<path>: <why>").
    unix_listener(boost::asio::io_context& ioc, const config::listener& spec,
                  const std::optional<config::run_as>& owner, std::string_view where);
    ~unix_listener();
    unix_listener(const unix_listener&) = delete;
    unix_listener& operator=(const unix_listener&) = delete;

    /// Stops accepting and removes the socket file, if it is still the one this listener made
    /// (not one another process has put there since). Idempotent.
    void close() noexcept;
    /// A reload changed the listener's mode.
    void set_mode(std::uint32_t mode) noexcept;
    [[nodiscard]] const std::string& path() const noexcept { return path_; }

    /// The next connection, as a tcp::socket holding the UNIX socket's descriptor.
    boost::asio::awaitable<std::tuple<boost::system::error_code, boost::asio::ip::tcp::socket>> accept(
        const boost::asio::any_io_executor& ex);

private:
    boost::asio::local::stream_protocol::acceptor acceptor_;
    std::string path_;
    dev_t dev_ = 0;
    ino_t ino_ = 0;
    bool made_ = false;
};

}  // namespace asiosmtpd::net
