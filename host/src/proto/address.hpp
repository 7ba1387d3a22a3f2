// address: the MAIL/RCPT/VRFY address parser, reproducing what aiosmtpd (via Python's RFC 5322
// header parser) stores for each argument (aiosmtpd-behaviour.md §3.11). Pure function, std only.
// It finds the address at the start of the argument and returns it normalised plus the rest
// (the ESMTP parameter text), or says the address is malformed.
#pragma once

#include <string>
#include <string_view>

namespace asiosmtpd::proto {

struct address_result {
    enum class status {
        ok,        ///< `address` holds the normalised address, `rest` what followed it
        empty,     ///< nothing but blanks: the caller answers with its syntax error
        malformed, ///< "553 5.1.3 Error: malformed address" (aiosmtpd's parse failure)
    };
    status state = status::empty;
    std::string address;   ///< "a@b.c"; "<>" for the null path `<>`
    std::string_view rest; ///< text after the address (points into the input), leading blanks kept
};

/// Parse the address at the start of `arg` (leading blanks skipped). With `smtputf8` false,
/// non-ASCII is never seen here (the engine rejects it earlier); with true, UTF-8 bytes >= 0x80
/// count as atext.
address_result parse_address(std::string_view arg, bool smtputf8);

} // namespace asiosmtpd::proto
