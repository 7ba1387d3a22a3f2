// SPDX-License-Identifier: Apache-2.0
// address: the MAIL/RCPT/VRFY address parser, reproducing what aiosmtpd (via Python's RFC 5322
// header parser) stores for each argument (aiosmtpd 1.4). Pure function, std only.
// It finds the address at the start of the argument and returns it normalised plus the rest
// (the ESMTP parameter text), or says the address is malformed.
#pragma once

#include <string>
#include <string_view>

namespace asiosmtpd::proto {

struct address_result {
    enum class status {
        ok,         ///< `address` holds the normalised address, `rest` what followed it
        empty,      ///< the address came out empty (see parse_address): MAIL/RCPT syntax error
        malformed,  ///< "553 5.1.3 Error: malformed address" (aiosmtpd's parse failure)
    };
    status state = status::empty;
    std::string address;  ///< "a@b.c"; "<>" for the null path `<>`
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
///   `500 Error: (IndexError) ...`, which asiosmtpd answers with 553, see docs/behaviour.md).
///
/// With `smtputf8` false any byte >= 0x80 makes the argument malformed (the engine rejects such
/// lines earlier with "500 Error: strict ASCII mode"); with true, UTF-8 (and undecodable bytes,
/// as Python's surrogateescape keeps them) count as atext.
///
/// The common shapes (`<local@domain>`, `local@domain`, `<>`, with plain dot-atoms and simple
/// parameters) take a fast path that gives the same result without the port of Python's parser;
/// everything else goes through the port (detail::parse_address_full).
address_result parse_address(std::string_view arg, bool smtputf8);

namespace detail {

/// The fast path alone: true, with `out` set, when `arg` is (all ASCII, no `=?` anywhere)
/// - `<>` followed by anything (`rest` is everything after `>`, blanks included), or
/// - `<L@D>` followed by nothing, or by optional spaces/tabs and parameters that start with a
///   printable ASCII character other than `(` (`rest` is the parameters, without the blanks), or
/// - `L@D` followed by nothing, or by spaces/tabs and parameters that start with a printable
///   ASCII character other than `(`, `@` and `.` (`rest` as above),
/// where L and D are RFC 5322 dot-atoms of plain atext (ALPHA DIGIT !#$%&'*+-/=?^_`{|}~).
/// False (and `out` untouched) otherwise. For every input it accepts the result equals
/// parse_address_full(arg, smtputf8) with either smtputf8 (tests/unit/proto/address_fastpath_test.cpp
/// and tests/fuzz/address_fuzz.cpp check this differentially).
bool parse_address_fast(std::string_view arg, address_result& out);

/// The port of Python's parser without the fast path (for the differential tests).
address_result parse_address_full(std::string_view arg, bool smtputf8);

}  // namespace detail

}  // namespace asiosmtpd::proto
