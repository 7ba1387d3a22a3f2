// SPDX-License-Identifier: Apache-2.0
// trace: the Received: header field the host adds to each message (RFC 5321 §4.4,
// server.received_header). Pure function, standard library only.
#pragma once

#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

namespace asiosmtpd::proto {

/// What a Received field says of one message.
struct trace_info {
    std::string_view helo;          ///< the client's HELO/EHLO/LHLO argument
    std::string_view peer_address;  ///< "192.0.2.1", "2001:db8::1" (the PROXY/XCLIENT client when given), "unix:/path"
    std::string_view peer_name;     ///< the client's host name (XCLIENT NAME), "" when not known
    std::string_view hostname;      ///< server.hostname
    std::string_view id;            ///< the transaction id
    std::string_view tls_version;   ///< "" without TLS
    std::string_view tls_cipher;
    bool esmtp = false;  ///< EHLO (or LHLO)
    bool lmtp = false;
    bool authenticated = false;
    std::string_view single_rcpt;  ///< the recipient when there is exactly one, else ""
    std::time_t when = 0;
};

/// The id of a session's n-th transaction, "<process start, hex>.<session, hex>.<n>": unique
/// across restarts; in every log line of the transaction and in its Received field.
std::string transaction_id(std::uint64_t session, std::uint64_t n);

/// "Received: from <helo> ([<ip>])\r\n\t(using <tls> with cipher <c>)\r\n\tby <host> (asiosmtpd)
/// with <ESMTPSA...> id <id>\r\n\tfor <rcpt>; <RFC 5322 date>\r\n" (the TLS line only with TLS,
/// "for" only with one recipient; "(<name> [<ip>])" with a peer_name, "(unix:<path>)" for a
/// UNIX socket client). `with` is RFC 3848's
/// protocol type (SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, LMTP, LMTPS, LMTPA, LMTPSA); bytes of
/// the HELO name outside printable ASCII (and SP, '(', ')', '[', ']', '\\') become '?'.
std::string received_field(const trace_info& t);

}  // namespace asiosmtpd::proto
