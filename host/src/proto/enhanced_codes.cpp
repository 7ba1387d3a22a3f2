// SPDX-License-Identifier: Apache-2.0
#include "proto/enhanced_codes.hpp"

#include "proto/replies.hpp"

namespace asiosmtpd::proto {
namespace {

constexpr bool digit(char c) noexcept { return c >= '0' && c <= '9'; }

struct entry {
    std::string_view reply;  // the whole line, or its beginning (prefix)
    bool prefix;
    std::string_view code;
};

// Every reply of the engine that aiosmtpd sends without an enhanced code (docs/behaviour.md
// lists them). RFC 3463 §3.6 (X.5.x protocol): X.5.1 invalid command or sequence, X.5.2 syntax
// error or unrecognised command, X.5.4 invalid arguments; §3.8 X.7.0 security; §3.5 X.3.4
// too big; X.1.3 a bad address. Where RFC 3463 leaves a choice, Postfix's code for its reply to
// the same situation.
constexpr entry table[] = {
    {replies::bye, false, "2.0.0"},                 // Postfix 221 2.0.0 Bye
    {replies::ready_to_start_tls, false, "2.0.0"},  // Postfix 220 2.0.0 Ready to start TLS
    {replies::cannot_vrfy, false, "2.0.0"},         // Postfix 252 2.0.0 <address>
    {"250 Syntax: ", true, "2.0.0"},                // HELP
    {"250 Supported commands: ", true, "2.0.0"},    // HELP
    {replies::tls_not_available, false, "4.7.0"},   // Postfix 454 4.7.0 TLS not available ...
    {replies::bad_syntax, false, "5.5.2"},          // Postfix 500 5.5.2 Error: bad syntax
    {replies::line_too_long, false, "5.5.2"},
    {replies::data_line_too_long, false, "5.5.2"},    // RFC 5321 §4.5.3.1.6, a protocol limit
    {"500 Error: command \"", true, "5.5.2"},         // Postfix 502 5.5.2 Error: command not recognized
    {replies::auth_not_recognized, false, "5.5.1"},   // Postfix 503 5.5.1 Error: authentication not enabled
    {replies::expn_not_implemented, false, "5.5.1"},  // Postfix 502 5.5.1 Error: command not implemented
    {replies::syntax_quit, false, "5.5.4"},           // Postfix 501 5.5.4 Syntax: ...
    {replies::syntax_rset, false, "5.5.4"},
    {replies::syntax_data, false, "5.5.4"},
    {replies::syntax_starttls, false, "5.5.4"},
    {replies::syntax_vrfy, false, "5.5.4"},
    {replies::syntax_mail, false, "5.5.4"},
    {replies::syntax_mail_esmtp, false, "5.5.4"},
    {replies::syntax_rcpt, false, "5.5.4"},
    {replies::syntax_rcpt_esmtp, false, "5.5.4"},
    {replies::bad_body, false, "5.5.4"},
    {replies::smtputf8_no_args, false, "5.5.4"},
    {replies::smtputf8_disabled, false, "5.5.4"},  // Postfix 555 5.5.4 Unsupported option: SMTPUTF8
    {replies::auth_not_enough, false, "5.5.4"},    // Postfix 501 5.5.4 Syntax: AUTH mechanism
    {replies::auth_too_many, false, "5.5.4"},
    {"501 Supported commands: ", true, "5.5.4"},     // HELP with an unknown command
    {replies::mail_params_unknown, false, "5.5.4"},  // Postfix 555 5.5.4 Unsupported option
    {replies::rcpt_params_unknown, false, "5.5.4"},
    {replies::dsn_bad_ret, false, "5.5.4"},  // Postfix 501 5.5.4 Bad RET parameter syntax
    {replies::dsn_bad_envid, false, "5.5.4"},
    {replies::dsn_bad_notify, false, "5.5.4"},
    {replies::dsn_bad_orcpt, false, "5.5.4"},
    {"502 Could not VRFY ", true, "5.1.3"},            // Postfix 501 5.1.3 Bad recipient address syntax
    {replies::need_helo, false, "5.5.1"},              // Postfix 503 5.5.1 Error: send HELO/EHLO first
    {replies::need_ehlo, false, "5.5.1"},              // AUTH before any greeting
    {replies::nested_mail, false, "5.5.1"},            // Postfix 503 5.5.1 Error: nested MAIL command
    {replies::need_mail, false, "5.5.1"},              // Postfix 503 5.5.1 Error: need MAIL command
    {replies::need_rcpt, false, "5.5.1"},              // Postfix 503 5.5.1 Error: need RCPT command
    {replies::already_authenticated, false, "5.5.1"},  // Postfix 503 5.5.1 Error: already authenticated
    {replies::need_starttls, false, "5.7.0"},          // Postfix 530 5.7.0 Must issue a STARTTLS command first
    {replies::lack_of_security, false, "5.7.0"},
    {replies::size_exceeded, false, "5.3.4"},  // Postfix 552 5.3.4 Message size exceeds fixed limit
    {replies::too_much_data, false, "5.3.4"},
};

}  // namespace

bool has_enhanced_code(std::string_view line) noexcept
{
    // "ddd" SP/"-" class "." 1*3digit "." 1*3digit, then SP or the end (RFC 3463 §2).
    if (line.size() < 9 || !digit(line[0]) || (line[3] != ' ' && line[3] != '-') || line[4] != line[0] ||
        line[5] != '.')
        return false;
    std::size_t i = 6;
    for (int part = 0; part < 2; ++part) {
        const std::size_t start = i;
        while (i < line.size() && digit(line[i]) && i - start < 3) ++i;
        if (i == start) return false;
        if (part == 0) {
            if (i >= line.size() || line[i] != '.') return false;
            ++i;
        }
    }
    return i == line.size() || line[i] == ' ';
}

std::string_view enhanced_code(std::string_view line, std::string_view verb) noexcept
{
    if (line.size() < 4 || !digit(line[0]) || !digit(line[1]) || !digit(line[2])) return {};
    // RFC 2034 §3: not on 3xx (354, 334), nor on any reply to HELO/EHLO (LHLO: RFC 2033).
    if (line[0] == '3' || verb == "HELO" || verb == "EHLO" || verb == "LHLO") return {};
    if (has_enhanced_code(line)) return {};
    if (line == replies::ok) {
        if (verb == "MAIL") return "2.1.0";  // Postfix 250 2.1.0 Ok
        if (verb == "RCPT") return "2.1.5";  // Postfix 250 2.1.5 Ok
        return "2.0.0";                      // NOOP, RSET, the message, a plugin's command
    }
    if (line == replies::strict_ascii)  // after the message: its content; else the command line
        return verb == "DATA" || verb == "BDAT" ? "5.6.0" : "5.5.2";
    for (const entry& e : table)
        if (e.prefix ? line.starts_with(e.reply) : line == e.reply) return e.code;
    switch (line[0]) {
    case '2': return "2.0.0";
    case '4': return "4.0.0";
    case '5': return "5.0.0";
    default: return {};
    }
}

}  // namespace asiosmtpd::proto
