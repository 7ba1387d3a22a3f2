// SPDX-License-Identifier: Apache-2.0
#include "net/unix_listener.hpp"

#include "log/log.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace asiosmtpd::net {
namespace {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;

// Does a process accept connections on the socket file at `path`? (A stale file refuses them.)
bool answers(const std::string& path)
{
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return false;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), std::min(path.size(), sizeof addr.sun_path - 1));
    const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    const int err = errno;
    ::close(fd);
    return rc == 0 || err == EAGAIN;  // EAGAIN: its backlog is full, but it listens
}

}  // namespace

unix_listener::unix_listener(asio::io_context& ioc, const config::listener& spec,
                             const std::optional<config::run_as>& owner, std::string_view where)
    : acceptor_(ioc),
      path_(spec.path.string())
{
    const auto fail = [&](std::string_view why) {
        close();  // a file this constructor made goes (no destructor runs after a throw)
        throw std::runtime_error(fmt::format("{}: cannot listen on unix:{}: {}", where, path_, why));
    };
    struct stat st {};
    if (::lstat(path_.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) fail("the file exists and is not a socket");
        if (answers(path_)) fail("another process is listening on it");
        if (::unlink(path_.c_str()) != 0 && errno != ENOENT)
            fail(fmt::format("cannot remove the stale socket file: {}", std::strerror(errno)));
        log::info("event=stale_socket_removed path={}", path_);
    }
    boost::system::error_code ec;
    const local::endpoint ep(path_);
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (ec) fail(ec.message());
    made_ = true;
    if (::lstat(path_.c_str(), &st) == 0) {
        dev_ = st.st_dev;
        ino_ = st.st_ino;
    }
    // Permissions and owner before listen(): until then a connection attempt is refused.
    if (::chmod(path_.c_str(), static_cast<mode_t>(spec.mode)) != 0)
        fail(fmt::format("cannot set its mode {:04o}: {}", spec.mode, std::strerror(errno)));
    if (owner && ::geteuid() == 0 && ::chown(path_.c_str(), owner->uid, owner->gid) != 0)
        fail(fmt::format("cannot give it to {}:{}: {}", owner->user, owner->group, std::strerror(errno)));
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) fail(ec.message());
    log::info("event=listening path={} protocol={} tls={} mode={:04o}", path_,
              spec.protocol == config::protocol::lmtp ? "lmtp" : "smtp",
              spec.tls == config::tls_mode::none       ? "none"
              : spec.tls == config::tls_mode::starttls ? "starttls"
                                                       : "implicit",
              spec.mode);
}

unix_listener::~unix_listener() { close(); }

void unix_listener::close() noexcept
{
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    if (!made_) return;
    made_ = false;
    struct stat st {};
    if (::lstat(path_.c_str(), &st) != 0 || st.st_dev != dev_ || st.st_ino != ino_) return;  // not ours any more
    if (::unlink(path_.c_str()) == 0) log::info("event=socket_removed path={}", path_);
    else log::warn("event=socket_not_removed path={} reason=\"{}\"", path_, std::strerror(errno));
}

void unix_listener::set_mode(std::uint32_t mode) noexcept
{
    if (made_ && ::chmod(path_.c_str(), static_cast<mode_t>(mode)) != 0)
        log::warn("event=socket_mode_failed path={} mode={:04o} reason=\"{}\"", path_, mode, std::strerror(errno));
}

asio::awaitable<std::tuple<boost::system::error_code, asio::ip::tcp::socket>> unix_listener::accept(
    const asio::any_io_executor& ex)
{
    auto [ec, peer] = co_await acceptor_.async_accept(ex, asio::as_tuple(asio::use_awaitable));
    asio::ip::tcp::socket socket(ex);
    if (!ec) {
        // Its descriptor, for the session (see the header).
        const int fd = peer.release(ec);
        if (!ec) socket.assign(asio::ip::tcp::v4(), fd, ec);
        if (ec && fd >= 0) ::close(fd);
    }
    co_return std::tuple{ec, std::move(socket)};
}

}  // namespace asiosmtpd::net
