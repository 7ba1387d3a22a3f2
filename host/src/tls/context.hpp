// tls: the OpenSSL server context of a configuration. No SMTP knowledge here.
// TLS 1.2 and 1.3 only (RFC 8996 retired 1.0/1.1), forward-secret AEAD ciphers by default, no
// compression (CRIME), no renegotiation, server cipher preference.
#pragma once

#include "config/config.hpp"

#include <boost/asio/ssl/context.hpp>

#include <memory>
#include <string>

namespace asiosmtpd::tls {

/// Build the server context from `s.tls`. Throws std::runtime_error naming the config file,
/// the key and OpenSSL's reason ("<file>: tls.private_key: does not match the certificate").
std::shared_ptr<boost::asio::ssl::context> make_server_context(const config::settings& s);

/// What a finished handshake negotiated, for logs and plugins.
struct session_info {
    std::string version;      ///< "TLSv1.3"
    std::string cipher;       ///< "TLS_AES_256_GCM_SHA384"
    std::string peer_subject; ///< the client certificate's subject (RFC 2253), empty if none
};

/// Read what `ssl` (an SSL* after the handshake) negotiated.
session_info describe(void* ssl);

} // namespace asiosmtpd::tls
