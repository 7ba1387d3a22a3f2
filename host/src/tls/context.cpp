// SPDX-License-Identifier: Apache-2.0
#include "tls/context.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>

#include <fmt/format.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <sys/socket.h>

#include <cerrno>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>

namespace asiosmtpd::tls {
namespace ssl = boost::asio::ssl;
namespace {

// Mozilla's "intermediate" TLS 1.2 list: ECDHE/DHE with AEAD only.
constexpr const char* default_tls12_ciphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

std::string openssl_reason()
{
    std::string why;
    while (const unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        if (!why.empty()) why += "; ";
        why += buf;
    }
    return why.empty() ? "unknown OpenSSL error" : why;
}

// The connection's socket as OpenSSL's BIO during the handshake. Not BIO_s_socket(): it
// writes with write(2), and a client gone mid-handshake would raise SIGPIPE, which ends a
// process that does not ignore it (one embedding the server; Asio sends with MSG_NOSIGNAL).
int fd_of(BIO* b) noexcept { return static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b))); }

bool retryable(int e) noexcept { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }

int socket_write(BIO* b, const char* data, int size)
{
    BIO_clear_retry_flags(b);
    const ssize_t n = ::send(fd_of(b), data, static_cast<std::size_t>(size), MSG_NOSIGNAL);
    if (n < 0 && retryable(errno)) BIO_set_retry_write(b);
    return static_cast<int>(n);
}

int socket_read(BIO* b, char* data, int size)
{
    BIO_clear_retry_flags(b);
    if (data == nullptr || size <= 0) return 0;
    const ssize_t n = ::recv(fd_of(b), data, static_cast<std::size_t>(size), 0);
    if (n == 0) BIO_set_flags(b, BIO_FLAGS_IN_EOF);  // OpenSSL asks BIO_eof() why a read gave 0
    if (n < 0 && retryable(errno)) BIO_set_retry_read(b);
    return static_cast<int>(n);
}

long socket_ctrl(BIO* b, int cmd, long, void*)
{
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_EOF: return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0 ? 1 : 0;
    default: return 0;
    }
}

int socket_create(BIO* b)
{
    BIO_set_init(b, 1);
    return 1;
}

BIO* socket_bio(int fd)
{
    static BIO_METHOD* const method = [] {
        BIO_METHOD* m =
            BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR, "asiosmtpd socket");
        if (m != nullptr && (BIO_meth_set_write(m, socket_write) != 1 || BIO_meth_set_read(m, socket_read) != 1 ||
                             BIO_meth_set_ctrl(m, socket_ctrl) != 1 || BIO_meth_set_create(m, socket_create) != 1)) {
            BIO_meth_free(m);
            m = nullptr;
        }
        return m;
    }();
    if (method == nullptr) return nullptr;
    BIO* b = BIO_new(method);
    if (b != nullptr) BIO_set_data(b, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd)));
    return b;
}

// An established channel's BIO: reads come from what the session read from the socket
// (channel::input), writes go to the socket as above.
channel::input* input_of(BIO* b) noexcept { return static_cast<channel::input*>(BIO_get_data(b)); }

int channel_write(BIO* b, const char* data, int size)
{
    BIO_clear_retry_flags(b);
    const ssize_t n = ::send(input_of(b)->fd, data, static_cast<std::size_t>(size), MSG_NOSIGNAL);
    if (n < 0 && retryable(errno)) BIO_set_retry_write(b);
    return static_cast<int>(n);
}

int channel_read(BIO* b, char* data, int size)
{
    BIO_clear_retry_flags(b);
    if (data == nullptr || size <= 0) return 0;
    channel::input& in = *input_of(b);
    const std::size_t have = in.end - in.begin;
    if (have == 0) {
        if (in.eof) {
            BIO_set_flags(b, BIO_FLAGS_IN_EOF);
            return 0;
        }
        BIO_set_retry_read(b);
        return -1;
    }
    const std::size_t n = std::min(have, static_cast<std::size_t>(size));
    std::memcpy(data, in.buf.get() + in.begin, n);
    in.begin += n;
    return static_cast<int>(n);
}

BIO* channel_bio(channel::input& in)
{
    static BIO_METHOD* const method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "asiosmtpd channel");
        if (m != nullptr && (BIO_meth_set_write(m, channel_write) != 1 || BIO_meth_set_read(m, channel_read) != 1 ||
                             BIO_meth_set_ctrl(m, socket_ctrl) != 1 || BIO_meth_set_create(m, socket_create) != 1)) {
            BIO_meth_free(m);
            m = nullptr;
        }
        return m;
    }();
    if (method == nullptr) return nullptr;
    BIO* b = BIO_new(method);
    if (b != nullptr) BIO_set_data(b, &in);
    return b;
}

// OpenSSL's error queue must be empty before an SSL call for SSL_get_error() to be right;
// clearing it costs more than looking (classify() leaves it empty after a failure).
void clear_errors() noexcept
{
    if (ERR_peek_error() != 0) ERR_clear_error();
}

// What a failed SSL_do_handshake/SSL_read/SSL_write/SSL_shutdown (returning r) means: OpenSSL's
// SSL_ERROR_* code, and for the failures `ec` as an asio::ssl::stream reports them.
int classify(SSL* ssl, int r, int saved_errno, boost::system::error_code& ec) noexcept
{
    const int why = SSL_get_error(ssl, r);
    const unsigned long e = ERR_get_error();
    switch (why) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: return why;
    case SSL_ERROR_SYSCALL:
        // Without an errno, the client closed the connection without a close_notify.
        if (saved_errno != 0) ec = {saved_errno, boost::system::system_category()};
        else
            ec = e != 0 ? boost::system::error_code(static_cast<int>(e), boost::asio::error::get_ssl_category())
                        : boost::system::error_code(boost::asio::ssl::error::stream_truncated);
        return why;
    case SSL_ERROR_ZERO_RETURN: ec = boost::asio::error::eof; return why;
    case SSL_ERROR_SSL:
        // OpenSSL 3 reports a client gone without a close_notify as an error of its own.
        if (ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ec = boost::asio::ssl::error::stream_truncated;
        else ec = {static_cast<int>(e), boost::asio::error::get_ssl_category()};
        return why;
    default: ec = boost::asio::ssl::error::unexpected_result; return why;
    }
}

// classify(), then nothing left in the queue.
int classify_all(SSL* ssl, int r, int saved_errno, boost::system::error_code& ec) noexcept
{
    const int why = classify(ssl, r, saved_errno, ec);
    if (why != SSL_ERROR_WANT_READ && why != SSL_ERROR_WANT_WRITE) ERR_clear_error();
    return why;
}

}  // namespace

std::shared_ptr<ssl::context> make_server_context(const config::settings& s)
{
    if (!s.tls) throw std::runtime_error(fmt::format("{}: tls: required by a TLS listener", s.file.string()));
    const config::tls_settings& t = *s.tls;
    const auto fail = [&](std::string_view key, std::string_view what) {
        return std::runtime_error(fmt::format("{}: tls.{}: {}", s.file.string(), key, what));
    };
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    SSL_CTX* native = ctx->native_handle();
    ERR_clear_error();
    const int min = t.min_version == config::tls_version::v1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (SSL_CTX_set_min_proto_version(native, min) != 1) throw fail("min_version", openssl_reason());
    SSL_CTX_set_options(native, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                    SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1);
    const std::string& ciphers = t.ciphers.empty() ? std::string(default_tls12_ciphers) : t.ciphers;
    if (SSL_CTX_set_cipher_list(native, ciphers.c_str()) != 1)
        throw fail("ciphers", fmt::format("no usable cipher in {:?}: {}", ciphers, openssl_reason()));
    if (!t.ciphersuites.empty() && SSL_CTX_set_ciphersuites(native, t.ciphersuites.c_str()) != 1)
        throw fail("ciphersuites", fmt::format("no usable suite in {:?}: {}", t.ciphersuites, openssl_reason()));
    if (SSL_CTX_use_certificate_chain_file(native, t.certificate.c_str()) != 1)
        throw fail("certificate", fmt::format("cannot use {:?} as a PEM certificate chain: {}", t.certificate.string(),
                                              openssl_reason()));
    if (SSL_CTX_use_PrivateKey_file(native, t.private_key.c_str(), SSL_FILETYPE_PEM) != 1) {
        // OpenSSL 3 checks the pair while loading the key.
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            throw fail("private_key", fmt::format("{:?} does not match the certificate {:?}", t.private_key.string(),
                                                  t.certificate.string()));
        }
        throw fail("private_key",
                   fmt::format("cannot use {:?} as a PEM private key: {}", t.private_key.string(), openssl_reason()));
    }
    if (SSL_CTX_check_private_key(native) != 1)
        throw fail("private_key", fmt::format("{:?} does not match the certificate {:?}", t.private_key.string(),
                                              t.certificate.string()));
    // On request, a client certificate is asked for but never required nor verified here:
    // plugins may look at its subject and decide.
    if (t.request_client_certificate)
        SSL_CTX_set_verify(native, SSL_VERIFY_PEER, [](int, X509_STORE_CTX*) { return 1; });
    const unsigned char sid[] = "asiosmtpd";
    SSL_CTX_set_session_id_context(native, sid, sizeof sid - 1);
    // Resumption (OpenSSL's defaults, on): stateless tickets, two after each full TLS 1.3
    // handshake and one after a resumed one, sealed with keys OpenSSL draws for this context
    // (so a reload, which makes a new context, starts with new keys); TLS 1.2 clients that do
    // not take tickets are remembered in the context's session cache by session ID. Off: no
    // ticket, no cache, every handshake a full one.
    if (!t.session_resumption) {
        SSL_CTX_set_options(native, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(native, 0);
        SSL_CTX_set_session_cache_mode(native, SSL_SESS_CACHE_OFF);
    }
    return ctx;
}

session_info describe(void* handle)
{
    SSL* ssl = static_cast<SSL*>(handle);
    session_info info;
    if (ssl == nullptr) return info;
    info.version = SSL_get_version(ssl);
    if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl)) info.cipher = SSL_CIPHER_get_name(c);
    if (X509* peer = SSL_get1_peer_certificate(ssl)) {
        if (BIO* bio = BIO_new(BIO_s_mem())) {
            X509_NAME_print_ex(bio, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253);
            char* data = nullptr;
            const long n = BIO_get_mem_data(bio, &data);
            if (n > 0) info.peer_subject.assign(data, static_cast<std::size_t>(n));
            BIO_free(bio);
        }
        X509_free(peer);
    }
    return info;
}

std::size_t handshake_record_size(std::span<const unsigned char, record_header_size> header) noexcept
{
    constexpr unsigned char handshake = 22;
    constexpr std::size_t max_length = 16384;  // TLSPlaintext (RFC 8446 §5.1; RFC 5246 §6.2.1)
    if (header[0] != handshake || header[1] != 3) return 0;
    const std::size_t length = (std::size_t{header[3]} << 8) | header[4];
    if (length == 0 || length > max_length) return 0;
    return record_header_size + length;
}

server_handshake::server_handshake(ssl::context& ctx, int fd) noexcept
{
    ERR_clear_error();
    ssl_ = SSL_new(ctx.native_handle());
    BIO* const bio = ssl_ != nullptr ? socket_bio(fd) : nullptr;
    if (bio == nullptr) {
        setup_error_ = {static_cast<int>(ERR_get_error()), boost::asio::error::get_ssl_category()};
        if (!setup_error_) setup_error_ = boost::asio::error::no_memory;
        return;
    }
    SSL_set_bio(ssl_, bio, bio);  // the SSL owns it
    // OpenSSL's record buffers only while a record is read or written (asio's engine sets the
    // same modes once it takes the SSL*).
    SSL_set_mode(ssl_, SSL_MODE_RELEASE_BUFFERS);
    SSL_set_accept_state(ssl_);
}

server_handshake::~server_handshake()
{
    if (ssl_ != nullptr) SSL_free(ssl_);
}

server_handshake::step server_handshake::advance(boost::system::error_code& ec) noexcept
{
    ec = setup_error_;
    if (ec) return step::failed;
    if (ssl_ == nullptr) {
        ec = boost::asio::error::bad_descriptor;  // released
        return step::failed;
    }
    clear_errors();
    errno = 0;
    const int r = SSL_do_handshake(ssl_);
    if (r == 1) return step::done;
    switch (classify_all(ssl_, r, errno, ec)) {
    case SSL_ERROR_WANT_READ: return step::want_read;
    case SSL_ERROR_WANT_WRITE: return step::want_write;
    default: return step::failed;
    }
}

channel::channel(SSL* ssl, int fd) noexcept : ssl_(ssl)
{
    input_.fd = fd;
    if (ssl_ == nullptr) return;
    BIO* const bio = channel_bio(input_);
    if (bio == nullptr) {
        broken_ = true;  // every call fails (no memory)
        return;
    }
    SSL_set_bio(ssl_, bio, bio);  // frees the handshake's socket BIO; the SSL owns this one
    // Partial writes: a long write returns after each record, and a write retried after
    // WANT_WRITE may come from a buffer that moved (the caller's string grew meanwhile).
    SSL_set_mode(ssl_, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

channel::~channel()
{
    if (ssl_ != nullptr) SSL_free(ssl_);
}

channel::status channel::outcome(int r, boost::system::error_code& ec) noexcept
{
    const int saved_errno = errno;
    switch (classify_all(ssl_, r, saved_errno, ec)) {
    case SSL_ERROR_WANT_READ: return status::want_read;
    case SSL_ERROR_WANT_WRITE: return status::want_write;
    case SSL_ERROR_ZERO_RETURN: return status::failed;  // close_notify: ours may still go out
    default: broken_ = true; return status::failed;
    }
}

bool channel::readable() const noexcept
{
    return input_.begin < input_.end || input_.eof || (ssl_ != nullptr && SSL_has_pending(ssl_) == 1);
}

std::span<char> channel::input_room(std::size_t size)
{
    input& in = input_;
    if (in.begin == in.end) {
        // All taken: start over, and give a large buffer back (a DATA transfer is over).
        in.begin = in.end = 0;
        if (in.cap > 2 * size) {
            in.buf.reset();
            in.cap = 0;
        }
    }
    if (in.cap - in.end < size) {
        const std::size_t have = in.end - in.begin;
        if (in.cap - have >= size) {
            std::memmove(in.buf.get(), in.buf.get() + in.begin, have);
        } else {
            const std::size_t cap = std::max(have + size, 2 * in.cap);
            auto bigger = std::make_unique_for_overwrite<char[]>(cap);
            if (have > 0) std::memcpy(bigger.get(), in.buf.get() + in.begin, have);
            in.buf = std::move(bigger);
            in.cap = cap;
        }
        in.begin = 0;
        in.end = have;
    }
    return {in.buf.get() + in.end, in.cap - in.end};
}

void channel::input_commit(std::size_t n) noexcept { input_.end = std::min(input_.end + n, input_.cap); }

channel::status channel::read(std::span<char> into, std::size_t& n, boost::system::error_code& ec) noexcept
{
    n = 0;
    ec.clear();
    if (ssl_ == nullptr || broken_) {
        ec = boost::asio::error::bad_descriptor;
        return status::failed;
    }
    if (into.empty()) return status::done;
    if (!readable()) return status::want_read;  // no input: no need to ask OpenSSL
    clear_errors();
    errno = 0;
    if (SSL_read_ex(ssl_, into.data(), into.size(), &n) == 1) return status::done;
    n = 0;
    return outcome(0, ec);
}

channel::status channel::write(std::span<const char> from, std::size_t& n, boost::system::error_code& ec) noexcept
{
    n = 0;
    ec.clear();
    if (ssl_ == nullptr || broken_) {
        ec = boost::asio::error::bad_descriptor;
        return status::failed;
    }
    if (from.empty()) return status::done;
    clear_errors();
    errno = 0;
    if (SSL_write_ex(ssl_, from.data(), from.size(), &n) == 1) return status::done;
    n = 0;
    return outcome(0, ec);
}

channel::status channel::shutdown(boost::system::error_code& ec) noexcept
{
    ec.clear();
    if (ssl_ == nullptr || broken_) return status::done;
    clear_errors();
    errno = 0;
    const int r = SSL_shutdown(ssl_);
    if (r == 1) return status::done;
    if (r == 0) {
        // Ours is sent; the client's is awaited (asio::ssl::stream waits for it too, so that
        // whatever the client still sends is read before the socket closes, not reset).
        errno = 0;
        const int again = SSL_shutdown(ssl_);
        if (again == 1) return status::done;
        if (again == 0) return status::want_read;
        return outcome(again, ec);
    }
    const status s = outcome(r, ec);
    // The client closed (EOF or close_notify) or broke the connection: nothing left to wait for.
    if (s == status::failed) {
        ec.clear();
        return status::done;
    }
    return s;
}

}  // namespace asiosmtpd::tls
