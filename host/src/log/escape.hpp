// SPDX-License-Identifier: Apache-2.0
// escape: peer-supplied text made printable for a log line. Standard library only: the core
// (the hook chain, the host API) and the server's logger use the same function.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace asiosmtpd::log {

/// Printable form of peer-supplied text: control bytes, non-ASCII, '\\' and '"' as \xNN, at
/// most `max` bytes shown (then "...").
[[nodiscard]] std::string escaped(std::string_view text, std::size_t max = 100);

}  // namespace asiosmtpd::log
