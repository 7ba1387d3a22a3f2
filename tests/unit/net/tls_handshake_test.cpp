// SPDX-License-Identifier: Apache-2.0
// tls::server_handshake: OpenSSL's handshake on the connection's own socket, handed over to a
// tls::channel once done. A client over a socketpair, driven step by step.
#include "tls/context.hpp"

#include <boost/asio/error.hpp>
#include <boost/asio/ssl/error.hpp>

#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <memory>
#include <string>
#include <string_view>

namespace asiosmtpd::tls {
namespace {

namespace ssl = boost::asio::ssl;

// A server context with a fresh self-signed P-256 certificate.
std::unique_ptr<ssl::context> server_context()
{
    auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
    EVP_PKEY* key = EVP_EC_gen("P-256");
    X509* cert = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_NAME* name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("localhost"), -1, -1,
                               0);
    X509_set_issuer_name(cert, name);
    X509_sign(cert, key, EVP_sha256());
    EXPECT_EQ(SSL_CTX_use_certificate(ctx->native_handle(), cert), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey(ctx->native_handle(), key), 1);
    X509_free(cert);
    EVP_PKEY_free(key);
    return ctx;
}

struct pair {
    int server = -1;
    int client = -1;
    pair()
    {
        int fds[2];
        EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
        server = fds[0];
        client = fds[1];
        ::fcntl(server, F_SETFL, O_NONBLOCK);
        ::fcntl(client, F_SETFL, O_NONBLOCK);
    }
    ~pair()
    {
        if (server >= 0) ::close(server);
        if (client >= 0) ::close(client);
    }
};

struct client {
    SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
    SSL* ssl = nullptr;
    explicit client(int fd)
    {
        ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        SSL_set_connect_state(ssl);
    }
    ~client()
    {
        SSL_free(ssl);
        SSL_CTX_free(ctx);
    }
    bool step() { return SSL_do_handshake(ssl) == 1; }
};

// Both sides in turns until the server is done (or failed).
server_handshake::step run(server_handshake& hs, client& c, boost::system::error_code& ec)
{
    for (int i = 0; i < 20; ++i) {
        c.step();
        const auto s = hs.advance(ec);
        if (s == server_handshake::step::done || s == server_handshake::step::failed) return s;
    }
    return server_handshake::step::failed;
}

// What the session does when the channel wants input: read the socket into it (a socketpair:
// the client's bytes are there at once or never). False: nothing there.
bool feed(channel& ch, int fd, std::size_t size = 256)
{
    const std::span<char> room = ch.input_room(size);
    const ssize_t n = ::recv(fd, room.data(), room.size(), 0);
    if (n == 0) ch.input_eof();
    if (n < 0) return false;
    ch.input_commit(static_cast<std::size_t>(n));
    return true;
}

// Read from the channel until `want` bytes came, feeding it the socket's input.
std::string read_all(channel& ch, int fd, std::size_t want)
{
    std::string got;
    for (int i = 0; i < 20 && got.size() < want; ++i) {
        std::array<char, 64> buf{};
        std::size_t n = 0;
        boost::system::error_code ec;
        const auto s = ch.read(buf, n, ec);
        if (s == channel::status::failed) break;
        if (s == channel::status::want_read && !feed(ch, fd)) break;
        got.append(buf.data(), n);
    }
    return got;
}

std::string client_read(client& c)
{
    std::array<char, 256> reply{};
    int got = -1;
    for (int i = 0; i < 10 && got <= 0; ++i) got = SSL_read(c.ssl, reply.data(), static_cast<int>(reply.size()));
    return std::string(reply.data(), static_cast<std::size_t>(std::max(got, 0)));
}

// One connection over a socketpair: a client, the server's handshake on its end, and the server
// context (one per test program: its key and certificate are made once).
class tls_connection : public ::testing::Test {
protected:
    static void SetUpTestSuite() { ctx = server_context(); }
    static void TearDownTestSuite() { ctx.reset(); }

    // Both sides through the handshake, the client's last flight included (call through
    // ASSERT_NO_FATAL_FAILURE).
    void handshake()
    {
        ASSERT_EQ(run(hs, c, ec), server_handshake::step::done) << ec.message();
        ASSERT_TRUE(c.step());
    }

    static inline std::unique_ptr<ssl::context> ctx;
    pair p;
    client c{p.client};
    server_handshake hs{*ctx, p.server};
    boost::system::error_code ec;
};
using tls_server_handshake = tls_connection;
using tls_channel = tls_connection;

TEST_F(tls_server_handshake, completes_and_leaves_pipelined_data_in_the_socket)
{
    ASSERT_NO_FATAL_FAILURE(handshake());
    // The client's first command right after its Finished: OpenSSL did not read it (no
    // read-ahead during the handshake), the channel that takes over reads it.
    ASSERT_EQ(SSL_write(c.ssl, "EHLO x\r\n", 8), 8);
    char peek = 0;
    EXPECT_EQ(::recv(p.server, &peek, 1, MSG_PEEK), 1);
    EXPECT_EQ(peek, 23);  // an application data record, still in the socket

    channel ch(hs.release(), p.server);
    EXPECT_EQ(hs.release(), nullptr);
    EXPECT_EQ(describe(ch.native_handle()).version, "TLSv1.3");
    EXPECT_EQ(read_all(ch, p.server, 8), "EHLO x\r\n");
    std::size_t n = 0;
    ASSERT_EQ(ch.write(std::string_view("250 ok\r\n"), n, ec), channel::status::done) << ec.message();
    EXPECT_EQ(n, 8u);
    EXPECT_EQ(client_read(c), "250 ok\r\n");
}

TEST_F(tls_channel, takes_its_input_from_the_caller_and_hands_it_out_piece_by_piece)
{
    ASSERT_NO_FATAL_FAILURE(handshake());
    channel ch(hs.release(), p.server);
    std::array<char, 4> small{};
    std::size_t n = 0;
    EXPECT_FALSE(ch.readable());
    EXPECT_EQ(ch.read(small, n, ec), channel::status::want_read);  // nothing read yet: OpenSSL not asked
    EXPECT_FALSE(ec);
    // Two records in the socket: one read of the socket takes both; a small buffer gets them
    // piece by piece without another.
    ASSERT_EQ(SSL_write(c.ssl, "MAIL FROM:<a@b>\r\n", 17), 17);
    ASSERT_EQ(SSL_write(c.ssl, "RCPT TO:<c@d>\r\n", 15), 15);
    ASSERT_TRUE(feed(ch, p.server));
    EXPECT_TRUE(ch.readable());
    ASSERT_EQ(ch.read(small, n, ec), channel::status::done) << ec.message();
    EXPECT_EQ(std::string(small.data(), n), "MAIL");
    char peek = 0;
    EXPECT_EQ(::recv(p.server, &peek, 1, MSG_PEEK | MSG_DONTWAIT), -1);  // the socket is empty
    std::string rest;
    while (ch.readable()) {
        ASSERT_EQ(ch.read(small, n, ec), channel::status::done) << ec.message();
        rest.append(small.data(), n);
    }
    EXPECT_EQ(rest, " FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
    EXPECT_EQ(ch.read(small, n, ec), channel::status::want_read);
    // A record that comes in pieces: OpenSSL waits for the rest (want_read), then hands it out.
    ASSERT_EQ(SSL_write(c.ssl, "DATA\r\n", 6), 6);
    std::array<char, 64> raw{};
    const ssize_t len = ::recv(p.server, raw.data(), raw.size(), 0);
    ASSERT_GT(len, 10);
    for (ssize_t i = 0; i < len; ++i) {
        const std::span<char> room = ch.input_room(1);
        room[0] = raw[static_cast<std::size_t>(i)];
        ch.input_commit(1);
        const auto s = ch.read(small, n, ec);
        if (i + 1 < len) {
            ASSERT_EQ(s, channel::status::want_read) << i;
        } else {
            ASSERT_EQ(s, channel::status::done) << ec.message();
            EXPECT_EQ(std::string(small.data(), n), "DATA");
        }
    }
}

TEST_F(tls_channel, a_client_gone_without_close_notify_is_a_truncated_stream)
{
    ASSERT_NO_FATAL_FAILURE(handshake());
    channel ch(hs.release(), p.server);
    std::array<char, 8> tickets{};
    EXPECT_EQ(SSL_read(c.ssl, tickets.data(), 8), -1);  // takes the session tickets: no reset at close
    ::close(p.client);
    p.client = -1;
    std::array<char, 64> buf{};
    std::size_t n = 0;
    EXPECT_EQ(ch.read(buf, n, ec), channel::status::want_read);
    ASSERT_TRUE(feed(ch, p.server));  // EOF
    EXPECT_EQ(ch.read(buf, n, ec), channel::status::failed);
    EXPECT_EQ(ec, boost::asio::ssl::error::stream_truncated) << ec.message();
    EXPECT_EQ(ch.shutdown(ec), channel::status::done);  // no close_notify after a fatal error
    EXPECT_EQ(ch.write(std::string_view("x"), n, ec), channel::status::failed);
}

TEST_F(tls_channel, close_notify_server_first)
{
    ASSERT_NO_FATAL_FAILURE(handshake());
    channel ch(hs.release(), p.server);
    // The server closes first: its close_notify goes out, then it waits for the client's.
    EXPECT_EQ(ch.shutdown(ec), channel::status::want_read) << ec.message();
    EXPECT_EQ(SSL_read(c.ssl, std::array<char, 8>{}.data(), 8), 0);
    EXPECT_EQ(SSL_get_error(c.ssl, 0), SSL_ERROR_ZERO_RETURN);
    EXPECT_EQ(SSL_shutdown(c.ssl), 1);
    ASSERT_TRUE(feed(ch, p.server));
    EXPECT_EQ(ch.shutdown(ec), channel::status::done) << ec.message();
}

TEST_F(tls_channel, close_notify_client_first)
{
    // The client closes first: the server reads eof, and its own close_notify still goes out.
    ASSERT_NO_FATAL_FAILURE(handshake());
    channel ch(hs.release(), p.server);
    EXPECT_EQ(SSL_shutdown(c.ssl), 0);
    std::array<char, 8> buf{};
    std::size_t n = 0;
    ASSERT_TRUE(feed(ch, p.server));
    EXPECT_EQ(ch.read(buf, n, ec), channel::status::failed);
    EXPECT_EQ(ec, boost::asio::error::eof) << ec.message();
    EXPECT_EQ(ch.shutdown(ec), channel::status::done) << ec.message();
    EXPECT_EQ(SSL_shutdown(c.ssl), 1);
}

TEST_F(tls_server_handshake, a_client_gone_fails_without_sigpipe)
{
    // The server's first flight goes to a socket whose peer is closed: an error (EPIPE), not
    // SIGPIPE (this test process does not ignore it).
    c.step();  // the ClientHello
    ::close(p.client);
    p.client = -1;
    EXPECT_EQ(hs.advance(ec), server_handshake::step::failed);
    EXPECT_TRUE(ec);
}

TEST_F(tls_server_handshake, a_client_that_left_is_a_truncated_stream)
{
    ::close(p.client);
    p.client = -1;
    EXPECT_EQ(hs.advance(ec), server_handshake::step::failed);
    EXPECT_EQ(ec, boost::asio::ssl::error::stream_truncated) << ec.message();
}

TEST_F(tls_server_handshake, waits_for_the_client)
{
    EXPECT_EQ(hs.advance(ec), server_handshake::step::want_read);
    EXPECT_FALSE(ec);
    ASSERT_EQ(::write(p.client, "not tls at all\r\n", 16), 16);
    EXPECT_EQ(hs.advance(ec), server_handshake::step::failed);
    EXPECT_EQ(ec.category(), boost::asio::error::get_ssl_category()) << ec.message();
}

TEST(tls_records, a_client_hello_record_header_gives_its_size)
{
    const std::array<unsigned char, 5> hello{22, 3, 1, 0x02, 0x00};
    EXPECT_EQ(handshake_record_size(hello), 5u + 512u);
    const std::array<unsigned char, 5> largest{22, 3, 3, 0x40, 0x00};
    EXPECT_EQ(handshake_record_size(largest), 5u + 16384u);
    const std::array<unsigned char, 5> too_large{22, 3, 3, 0x40, 0x01};
    EXPECT_EQ(handshake_record_size(too_large), 0u);
    const std::array<unsigned char, 5> empty{22, 3, 3, 0, 0};
    EXPECT_EQ(handshake_record_size(empty), 0u);
    const std::array<unsigned char, 5> plaintext{'E', 'H', 'L', 'O', ' '};
    EXPECT_EQ(handshake_record_size(plaintext), 0u);
    const std::array<unsigned char, 5> alert{21, 3, 3, 0, 2};
    EXPECT_EQ(handshake_record_size(alert), 0u);
}

}  // namespace
}  // namespace asiosmtpd::tls
