// SPDX-License-Identifier: Apache-2.0
// enhanced_codes: the RFC 3463 enhanced status code of each reply the engine sends, for
// server.enable_enhanced_status_codes (RFC 2034). A pure lookup by reply text (and the verb it
// answers), std only. It is not applied to plugin replies (they carry their own code or none),
// nor where RFC 2034 §3 wants none: 3xx replies, the greeting, and any reply to HELO, EHLO or
// LHLO. The list and its reasons are in docs/behaviour.md; Postfix's codes where RFC 3463
// leaves a choice.
#pragma once

#include <string_view>

namespace asiosmtpd::proto {

/// True when the reply line ("250 2.1.0 Ok", "550-5.7.1 ...") already starts its text with an
/// enhanced status code of its own class.
bool has_enhanced_code(std::string_view line) noexcept;

/// The enhanced status code ("2.1.5") for `line`, a reply of the engine's own
/// ("ddd text"), answering the command `verb` (upper-cased; empty when the line could not be
/// read as a command, or for the greeting): empty when none is to be added (see above, or
/// the line has one already). Replies the engine does not list get "X.0.0" of their class
/// (RFC 3463 §3.1: other undefined status).
std::string_view enhanced_code(std::string_view line, std::string_view verb) noexcept;

}  // namespace asiosmtpd::proto
