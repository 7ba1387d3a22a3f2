// SPDX-License-Identifier: Apache-2.0
// dsn: the RFC 3461 (Delivery Status Notification) MAIL and RCPT parameters, checked as the
// engine receives them with server.enable_dsn: RET and ENVID on MAIL, NOTIFY and ORCPT on
// RCPT. Pure functions over the parameter tokens, std only; no state, never throws on input.
// It checks; it does not store: the tokens themselves go on to the envelope and the plugins
// (the SDK's asiosmtpd/dsn.hpp parses them there).
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace asiosmtpd::proto::dsn {

/// What is wrong with a command's DSN parameters; each maps to one reply (replies.hpp).
enum class problem {
    none,
    bad_ret,     ///< RET not FULL or HDRS, without a value, or given twice
    bad_envid,   ///< ENVID not xtext, decoding to a non-printable byte, over 100 characters, or twice
    bad_notify,  ///< NOTIFY not NEVER or a list of SUCCESS, FAILURE, DELAY, or twice
    bad_orcpt,   ///< ORCPT not addr-type ";" xtext, over 500 characters, or twice
};

/// RFC 3461 §4.4: an ENVID value is at most 100 characters; §4.2: an ORCPT value at most 500.
/// Both are counted as the client sends them (xtext-encoded, ORCPT with its addr-type).
inline constexpr std::size_t envid_max = 100;
inline constexpr std::size_t orcpt_max = 500;

/// How much longer than command_size_limit a command may be in an EHLO session with DSN on,
/// so that the longest valid parameters fit: " RET=HDRS ENVID=" and 100 characters for MAIL,
/// " NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=" and 500 for RCPT (RFC 3461 §4: the parameters
/// lengthen the command line).
inline constexpr std::size_t mail_line_allowance = 9 + 7 + envid_max;
inline constexpr std::size_t rcpt_line_allowance = 29 + 7 + orcpt_max;
std::size_t line_allowance(std::string_view verb) noexcept;

/// RFC 3461 §4: xtext = *( xchar / hexchar ); xchar is "!".."~" but "+" and "="; hexchar is
/// "+" and two hex digits (upper case in the RFC; lower case is accepted, as Postfix does).
bool is_xtext(std::string_view s) noexcept;
/// The decoded xtext, or nothing when `s` is not xtext.
std::optional<std::string> decode_xtext(std::string_view s);

/// RET=FULL|HDRS (case-insensitive).
bool valid_ret(std::string_view value) noexcept;
/// ENVID=<xtext> of at most envid_max characters, decoding to printable ASCII (RFC 3461 §4.4).
bool valid_envid(std::string_view value) noexcept;
/// NOTIFY=NEVER, or a comma-separated list of SUCCESS, FAILURE and DELAY (case-insensitive;
/// RFC 3461 §4.1: NEVER only alone). An element may repeat (Postfix); none may be empty.
bool valid_notify(std::string_view value) noexcept;
/// ORCPT=<addr-type>;<xtext> of at most orcpt_max characters: addr-type an RFC 5322 atom
/// ("rfc822", "utf-8", ...), the address xtext decoding to a non-empty printable ASCII
/// string (RFC 3461 §4.2).
bool valid_orcpt(std::string_view value) noexcept;

/// MAIL's DSN parameters among `tokens` ("KEY" or "KEY=VALUE", the key upper-cased, as the
/// engine keeps them): the first RET or ENVID that is invalid or repeated, in token order.
problem check_mail(std::span<const std::string> tokens) noexcept;
/// RCPT's: the first NOTIFY or ORCPT that is invalid or repeated.
problem check_rcpt(std::span<const std::string> tokens) noexcept;

/// The keys whose values keep their case (xtext is case-sensitive; the engine upper-cases
/// every other parameter, as aiosmtpd does). `key` upper-cased.
bool keeps_case(std::string_view key) noexcept;

}  // namespace asiosmtpd::proto::dsn
