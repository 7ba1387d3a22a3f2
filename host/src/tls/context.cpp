#include "tls/context.hpp"

#include <fmt/format.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

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

} // namespace

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
        throw fail("private_key", fmt::format("cannot use {:?} as a PEM private key: {}", t.private_key.string(),
                                              openssl_reason()));
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

} // namespace asiosmtpd::tls
