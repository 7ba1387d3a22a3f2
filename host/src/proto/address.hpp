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
        empty,     ///< the address came out empty (see parse_address): MAIL/RCPT syntax error
        malformed, ///< "553 5.1.3 Error: malformed address" (aiosmtpd's parse failure)
    };
    status state = status::empty;
    std::string address; ///< "a@b.c"; "<>" for the null path `<>`
    /// What Python's parser left after the address, byte for byte: `SIZE=10` for
    /// `<a@b.c> SIZE=10` (blanks and comments after `>` belong to the address), ` SIZE=10` for
    /// `<> SIZE=10` (the null path keeps them), `d>` for `<a@b.c d>`. It is owned text rather
    /// than a view of the argument because an RFC 2047 encoded word in the local part is decoded
    /// and re-parsed by Python, so the remainder can contain decoded bytes that are not in the
    /// input (`=?utf-8?q?a=40b=2Cc?=d` leaves `,cd`).
    std::string rest;
};

/// Parse the address at the start of `arg` exactly as aiosmtpd's `SMTP._getaddr(arg)` does
/// (aiosmtpd 1.4.3 on Python 3.11): a leading `<` (after whitespace) selects RFC 5322
/// angle-addr (with obsolete source route), anything else a bare addr-spec. `arg` must already
/// be stripped the way aiosmtpd strips it (MAIL/RCPT: Python `str.strip()`; VRFY: `bytes.strip()`),
/// because trailing blanks become part of `rest`.
///
/// - `empty`: `arg` is empty or only blanks/tabs, or the address normalised to the empty string
///   (`""`, `"" (c)`); aiosmtpd's `not address`. MAIL/RCPT answer with their syntax error; VRFY
///   with a non-blank argument calls its hook with an empty address (aiosmtpd: 252).
/// - `malformed`: Python raised HeaderParseError (553) or any other exception (aiosmtpd's
///   `500 Error: (IndexError) ...`, quirk Q13, which design.md §5 answers with 553 too).
///
/// With `smtputf8` false any byte >= 0x80 makes the argument malformed (the engine rejects such
/// lines earlier with "500 Error: strict ASCII mode"); with true, UTF-8 (and undecodable bytes,
/// as Python's surrogateescape keeps them) count as atext.
address_result parse_address(std::string_view arg, bool smtputf8);

} // namespace asiosmtpd::proto
