// SPDX-License-Identifier: Apache-2.0
// proxy: the HAProxy PROXY protocol header (v1 text, v2 binary), sans-I/O and std only.
// Feed it the first bytes of a connection; it says how many more it needs, or that the header
// is complete (and how long it was), or why it is invalid (aiosmtpd 1.4; HAProxy's
// proxy-protocol.txt). It never reads past the header, so the bytes after it belong to SMTP or
// to a TLS handshake.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::proxy {

struct tlv {
    std::uint8_t type = 0;
    std::string value;
};

struct header {
    int version = 0;          ///< 1 or 2
    int command = 1;          ///< v2: 0 LOCAL, 1 PROXY; v1: always 1
    int family = 0;           ///< 0 UNSPEC, 1 INET, 2 INET6, 3 UNIX
    int protocol = 0;         ///< 0 UNSPEC, 1 STREAM, 2 DGRAM
    std::string src_address;  ///< "192.0.2.1", "2001:db8::1"; empty when not carried
    std::string dst_address;
    std::uint16_t src_port = 0;
    std::uint16_t dst_port = 0;
    std::vector<tlv> tlvs;  ///< v2 TLVs (empty when malformed: see tlv_error)
    bool tlv_error = false;
    std::string raw;  ///< the whole header as received
    /// True when the header names a real client (PROXY command, INET/INET6 family).
    [[nodiscard]] bool has_client() const noexcept { return command == 1 && (family == 1 || family == 2); }
};

struct result {
    enum class status { need_more, done, invalid };
    status state = status::need_more;
    std::size_t need = 1;    ///< need_more: at least this many bytes in total before calling again
    std::size_t length = 0;  ///< done: the header's length in bytes
    header value;            ///< done
    std::string error;       ///< invalid: aiosmtpd's reason ("PROXYv1 address malformed", ...)
};

/// Parse the header at the start of `bytes` (everything received so far).
result parse(std::string_view bytes);

/// For a v1 header: the number of bytes to read before parse() can decide, given what has
/// been read (read up to the LF, at most 107 bytes): lets a caller read exactly the header.
constexpr std::size_t v1_max_length = 107;

}  // namespace asiosmtpd::proxy
