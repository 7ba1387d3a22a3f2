// SPDX-License-Identifier: Apache-2.0
// replies: every fixed reply text the engine sends, each beside the aiosmtpd reply it mirrors
// (aiosmtpd 1.4). Handlers name replies from here; they never inline text.
// Texts are without the trailing CRLF. Replies that carry a variable part are built by the
// small functions in replies.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace asiosmtpd::proto::replies {

// --- success ---------------------------------------------------------------------------------
inline constexpr std::string_view ok = "250 OK";    // NOOP, RSET, MAIL, RCPT, DATA
inline constexpr std::string_view bye = "221 Bye";  // QUIT
inline constexpr std::string_view start_data = "354 End data with <CR><LF>.<CR><LF>";
inline constexpr std::string_view cannot_vrfy = "252 Cannot VRFY user, but will accept message and attempt delivery";

// --- 4xx -------------------------------------------------------------------------------------
inline constexpr std::string_view tls_not_available = "454 TLS not available";
inline constexpr std::string_view ready_to_start_tls = "220 Ready to start TLS";
// RFC 3207 §4: the host cannot start a handshake now (too many in progress).
inline constexpr std::string_view tls_temporarily_unavailable = "454 4.7.0 TLS not available due to temporary reason";
inline constexpr std::string_view internal_error = "451 4.3.0 Error: internal";    // a plugin error (docs/behaviour.md)
inline constexpr std::string_view default_tempfail = "451 4.7.1 Try again later";  // plugin TEMPFAIL, no text

// --- 5xx: syntax -----------------------------------------------------------------------------
inline constexpr std::string_view bad_syntax = "500 Error: bad syntax";
inline constexpr std::string_view line_too_long = "500 Command line too long";
inline constexpr std::string_view strict_ascii = "500 Error: strict ASCII mode";
inline constexpr std::string_view data_line_too_long = "500 Line too long (see RFC5321 4.5.3.1.6)";
inline constexpr std::string_view auth_not_recognized = "500 Error: command 'AUTH' not recognized";
inline constexpr std::string_view syntax_helo = "501 Syntax: HELO hostname";
inline constexpr std::string_view syntax_ehlo = "501 Syntax: EHLO hostname";  // LMTP LHLO too (kept)
inline constexpr std::string_view syntax_quit = "501 Syntax: QUIT";
inline constexpr std::string_view syntax_rset = "501 Syntax: RSET";
inline constexpr std::string_view syntax_data = "501 Syntax: DATA";
inline constexpr std::string_view syntax_starttls = "501 Syntax: STARTTLS";
inline constexpr std::string_view syntax_vrfy = "501 Syntax: VRFY <address>";
inline constexpr std::string_view syntax_mail = "501 Syntax: MAIL FROM: <address>";
inline constexpr std::string_view syntax_mail_esmtp = "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]";
inline constexpr std::string_view syntax_rcpt = "501 Syntax: RCPT TO: <address>";
inline constexpr std::string_view syntax_rcpt_esmtp = "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]";
inline constexpr std::string_view bad_body = "501 Error: BODY can only be one of 7BIT, 8BITMIME";
inline constexpr std::string_view smtputf8_no_args = "501 Error: SMTPUTF8 takes no arguments";
inline constexpr std::string_view smtputf8_disabled = "501 Error: SMTPUTF8 disabled";
inline constexpr std::string_view auth_not_enough = "501 Not enough value";
inline constexpr std::string_view auth_ok = "235 2.7.0 Authentication successful";
inline constexpr std::string_view auth_empty_challenge = "334 ";  // PLAIN without initial response
// docs/behaviour.md: the standard LOGIN challenges ("Username:", "Password:"), not aiosmtpd's
// "User Name\0" / "Password\0" (its issue #566: Go net/smtp and curl abort on the NUL).
inline constexpr std::string_view auth_username_challenge = "334 VXNlcm5hbWU6";
inline constexpr std::string_view auth_password_challenge = "334 UGFzc3dvcmQ6";
inline constexpr std::string_view already_authenticated = "503 Already authenticated";
inline constexpr std::string_view auth_aborted = "501 5.7.0 Auth aborted";
inline constexpr std::string_view auth_bad_base64 = "501 5.5.2 Can't decode base64";
inline constexpr std::string_view auth_cannot_split = "501 5.5.2 Can't split auth value";
inline constexpr std::string_view auth_failed = "535 5.7.8 Authentication credentials invalid";
inline constexpr std::string_view auth_tempfail = "454 4.7.0 Temporary authentication failure";  // RFC 4954 §6
// RFC 4954 §4 (aiosmtpd leaks a Python exception text here).
inline constexpr std::string_view auth_line_too_long = "500 5.5.6 Authentication Exchange line is too long";
inline constexpr std::string_view auth_too_many = "501 Too many values";
inline constexpr std::string_view expn_not_implemented = "502 EXPN not implemented";
inline constexpr std::string_view too_many_unknown = "502 5.5.1 Too many unrecognized commands, goodbye.";

// --- 5xx: sequence ---------------------------------------------------------------------------
inline constexpr std::string_view need_helo = "503 Error: send HELO first";
inline constexpr std::string_view need_ehlo = "503 Error: send EHLO first";  // AUTH before greeting
inline constexpr std::string_view nested_mail = "503 Error: nested MAIL command";
inline constexpr std::string_view need_mail = "503 Error: need MAIL command";
inline constexpr std::string_view need_rcpt = "503 Error: need RCPT command";
// Not aiosmtpd (it has no connect hook): RFC 5321 §3.1, after a 554 greeting only QUIT is served.
inline constexpr std::string_view only_quit = "503 5.5.1 Error: connection rejected, send QUIT";
inline constexpr std::string_view unknown_mechanism = "504 5.5.4 Unrecognized authentication type";
inline constexpr std::string_view need_starttls = "530 Must issue a STARTTLS command first";
// docs/behaviour.md: aiosmtpd answers 220 and attempts TLS inside TLS.
inline constexpr std::string_view tls_already_active = "503 5.5.1 Error: TLS already active";
// aiosmtpd: handle_STARTTLS returned false; every command but QUIT gets this.
inline constexpr std::string_view lack_of_security = "554 Command refused due to lack of security";
inline constexpr std::string_view auth_required = "530 5.7.0 Authentication required";
inline constexpr std::string_view encryption_required =
    "538 5.7.11 Encryption required for requested authentication mechanism";
inline constexpr std::string_view size_exceeded = "552 Error: message size exceeds fixed maximum message size";
inline constexpr std::string_view too_much_data = "552 Error: Too much mail data";
inline constexpr std::string_view malformed_address = "553 5.1.3 Error: malformed address";
inline constexpr std::string_view mail_params_unknown = "555 MAIL FROM parameters not recognized or not implemented";
inline constexpr std::string_view rcpt_params_unknown = "555 RCPT TO parameters not recognized or not implemented";
// DSN (RFC 3461 §4, server.enable_dsn): not aiosmtpd (it answers 555); Postfix's texts. A
// repeated parameter gets the same reply (Postfix).
inline constexpr std::string_view dsn_bad_ret = "501 Bad RET parameter syntax";
inline constexpr std::string_view dsn_bad_envid = "501 Bad ENVID parameter syntax";
inline constexpr std::string_view dsn_bad_notify = "501 Error: Bad NOTIFY parameter syntax";
inline constexpr std::string_view dsn_bad_orcpt = "501 Error: Bad ORCPT parameter syntax";
inline constexpr std::string_view default_reject = "550 5.7.1 Rejected";          // plugin REJECT, no text
inline constexpr std::string_view default_reject_connect = "554 5.7.1 Rejected";  // CONNECT REJECT, no text

// --- CHUNKING (RFC 3030; not in aiosmtpd, docs/behaviour.md) -----------------------------------
inline constexpr std::string_view bad_body_chunking = "501 Error: BODY can only be one of 7BIT, 8BITMIME, BINARYMIME";
// A size that cannot be read: nobody knows where the chunk ends, so the connection closes (Postfix).
inline constexpr std::string_view bdat_unreadable = "521 5.5.4 Syntax: BDAT <size> [LAST]";
inline constexpr std::string_view syntax_bdat = "501 5.5.4 Syntax: BDAT <size> [LAST]";  // its chunk is skipped
inline constexpr std::string_view data_after_bdat = "503 5.5.1 Error: DATA after BDAT";  // RFC 3030 §2
inline constexpr std::string_view binarymime_needs_bdat = "503 5.5.1 Error: BODY=BINARYMIME requires BDAT";  // §3
inline constexpr std::string_view bdat_after_error = "503 5.5.1 Error: chunk discarded after an earlier BDAT error";

// --- built from parts ------------------------------------------------------------------------
std::string greeting(std::string_view hostname, std::string_view ident);  // 220 <host> <ident>
std::string helo_ok(std::string_view hostname);                           // 250 <host>
std::string unknown_command(std::string_view verb);                       // 500 Error: command "X" not recognized
std::string call_limit_hit(std::string_view verb);                        // 421 4.7.0 X sent too many times
std::string could_not_vrfy(std::string_view arg);                         // 502 Could not VRFY <arg> (controls → '?')
// docs/behaviour.md: aiosmtpd closes silently; we say why first.
std::string timeout_exceeded(std::string_view hostname);        // 421 4.4.2 <host> Error: timeout exceeded
std::string closing(std::string_view hostname);                 // 421 4.7.0 <host> ... closing
std::string too_many_connections(std::string_view hostname);    // 421 4.7.0 <host> Error: too many connections
std::string shutting_down(std::string_view hostname);           // 421 4.3.2 <host> Service shutting down
std::string too_many_auth_failures(std::string_view hostname);  // 421 4.7.0 <host> ... authentication
std::string bdat_chunk_ok(std::uint64_t octets);                // 250 2.0.0 Ok: <n> octets received

}  // namespace asiosmtpd::proto::replies
