// SPDX-License-Identifier: Apache-2.0
// tls: the OpenSSL server context of a configuration. No SMTP knowledge here.
// TLS 1.2 and 1.3 only (RFC 8996 retired 1.0/1.1), forward-secret AEAD ciphers by default, no
// compression (CRIME), no renegotiation, server cipher preference.
#pragma once

#include "config/config.hpp"

#include <boost/asio/ssl/context.hpp>
#include <boost/system/error_code.hpp>

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>

namespace asiosmtpd::tls {

/// Build the server context from `s.tls`. Throws std::runtime_error naming the config file,
/// the key and OpenSSL's reason ("<file>: tls.private_key: does not match the certificate").
std::shared_ptr<boost::asio::ssl::context> make_server_context(const config::settings& s);

/// What a finished handshake negotiated, for logs and plugins.
struct session_info {
    std::string version;       ///< "TLSv1.3"
    std::string cipher;        ///< "TLS_AES_256_GCM_SHA384"
    std::string peer_subject;  ///< the client certificate's subject (RFC 2253), empty if none
};

/// Read what `ssl` (an SSL* after the handshake) negotiated.
session_info describe(void* ssl);

/// The bytes a TLS record header starts (type, version, length).
inline constexpr std::size_t record_header_size = 5;

/// The size, header included, of the TLS record whose header is `header` when it is a
/// handshake record (a ClientHello's) of a valid length; 0 otherwise (not TLS: OpenSSL
/// refuses it as soon as it reads it).
std::size_t handshake_record_size(std::span<const unsigned char, record_header_size> header) noexcept;

/// A server-side handshake run by OpenSSL directly on the connection's non-blocking socket,
/// with SSL_MODE_RELEASE_BUFFERS: while it waits for the client it holds OpenSSL's handshake
/// state and no more (OpenSSL 3.0, once it answered a ClientHello: about 42 KiB, the SSL object,
/// a 21 KiB handshake message buffer, an 8 KiB write-buffering BIO, keys), where an
/// asio::ssl::stream would hold its four 17 KiB buffers as well. The caller waits for what
/// advance() asks for and calls it again; once done, release() hands the SSL* over, to a
/// `channel` (below) or any owner that frees it. Read-ahead stays off, so OpenSSL never reads
/// past the handshake's last record: what the client pipelined after it (its first command) is
/// still in the socket.
class server_handshake {
public:
    /// `fd`: the connection's socket, already non-blocking; it stays the caller's.
    server_handshake(boost::asio::ssl::context& ctx, int fd) noexcept;
    ~server_handshake();
    server_handshake(const server_handshake&) = delete;
    server_handshake& operator=(const server_handshake&) = delete;

    enum class step { done, want_read, want_write, failed };
    /// One SSL_do_handshake(): finished, what to wait for, or failed (`ec` says why, as an
    /// asio::ssl::stream would: "stream truncated" for a client that left, OpenSSL's reason).
    step advance(boost::system::error_code& ec) noexcept;
    /// The SSL* (nullptr after the first call); the caller owns it.
    SSL* release() noexcept { return std::exchange(ssl_, nullptr); }

private:
    SSL* ssl_ = nullptr;
    boost::system::error_code setup_error_;  ///< SSL_new or SSL_set_fd failed
};

/// An established TLS connection. OpenSSL writes the connection's non-blocking socket itself
/// (one send() per record); what it reads is what the caller read from the socket and handed
/// over (input_room(), input_commit()): the caller reads as it reads plaintext (Asio's
/// speculative read, then a readiness wait without re-arming epoll), and OpenSSL takes the
/// records out of that buffer. SSL_MODE_RELEASE_BUFFERS gives OpenSSL's record buffers back
/// whenever no record is half read or half written, and the input buffer shrinks back to a few
/// hundred bytes once drained, so an idle connection holds the SSL object, its session and keys
/// (about 14 KiB with OpenSSL 3.0) and little else; an asio::ssl::stream would keep four
/// buffers of 17 KiB for the connection's life and copy every record through them.
///
/// Every call is one non-blocking attempt: done, or what it needs before it is called again
/// (want_read: more input; want_write: the socket writable; write: with the same arguments),
/// or failed with `ec` as an asio::ssl::stream would say it (eof: the client's close_notify;
/// "stream truncated": the client closed without one).
class channel {
public:
    /// Takes the SSL* of a finished server_handshake (nullptr: every call fails); `fd` is the
    /// connection's non-blocking socket, which stays the caller's.
    channel(SSL* ssl, int fd) noexcept;
    ~channel();
    channel(const channel&) = delete;
    channel& operator=(const channel&) = delete;

    enum class status { done, want_read, want_write, failed };
    /// Up to `into.size()` bytes of application data into `into`; `n` is how many (done). Says
    /// want_read at once, without calling OpenSSL, when nothing is buffered.
    status read(std::span<char> into, std::size_t& n, boost::system::error_code& ec) noexcept;
    /// At least one record of `from` when done; `n` is how many bytes of it were taken.
    status write(std::span<const char> from, std::size_t& n, boost::system::error_code& ec) noexcept;
    /// close_notify: done once it is sent and the client's came back (or the client closed);
    /// done at once after a fatal error, where no close_notify may be sent.
    status shutdown(boost::system::error_code& ec) noexcept;

    /// Room for at least `size` bytes read from the socket (then input_commit() them). Once all
    /// input was taken, a buffer larger than twice `size` is given back first.
    std::span<char> input_room(std::size_t size);
    void input_commit(std::size_t n) noexcept;
    /// The socket said EOF: OpenSSL is told once the buffered input is used up.
    void input_eof() noexcept { input_.eof = true; }
    /// Input read() can use without more from the socket: buffered bytes, or a record (or
    /// part of one) OpenSSL holds.
    [[nodiscard]] bool readable() const noexcept;
    [[nodiscard]] SSL* native_handle() const noexcept { return ssl_; }

    /// What the channel's BIO reads from (internal; public for the BIO's functions).
    struct input {
        int fd = -1;
        std::unique_ptr<char[]> buf;  ///< [begin, end): read from the socket, not yet taken by OpenSSL
        std::size_t cap = 0;
        std::size_t begin = 0;
        std::size_t end = 0;
        bool eof = false;
    };

private:
    status outcome(int r, boost::system::error_code& ec) noexcept;
    SSL* ssl_ = nullptr;
    bool broken_ = false;  ///< a fatal error happened: no close_notify any more
    input input_;
};

}  // namespace asiosmtpd::tls
