// SPDX-License-Identifier: Apache-2.0
// asiosmtpd/reply_rules.hpp: the reply rules of plugin.h set_reply(), as one C++17 function
// that the server, the test kit and plugins share (header-only, standard library only).
//
// code 200..599; text without CR, NUL or another control byte but HT ('\n' separates the lines
// of a multi-line reply, or is refused when the reply is one line); lines of at most 506 bytes
// (RFC 5321 §4.5.3.1.5: 512 with "NNN-" and CRLF), 64 KiB of text in all; bytes >= 0x80 pass
// (RFC 6531). A plugin that builds replies from foreign text (an upstream server's) can check
// them before handing them over: the server refuses what fails here.
#ifndef ASIOSMTPD_REPLY_RULES_HPP
#define ASIOSMTPD_REPLY_RULES_HPP

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace asiosmtpd::sdk {

inline constexpr std::size_t max_reply_line = 512 - 2 - 4;  // minus "NNN-" and CRLF
inline constexpr std::size_t max_reply_text = 64 * 1024;    // 160 lines of 400 bytes: a relay listing refusals

/// A byte no reply text may hold: a control byte but HT (LF is the line separator), or DEL.
constexpr bool reply_byte_forbidden(unsigned char c) noexcept
{
    return (c < 0x20 && c != '\t' && c != '\n') || c == 0x7f;
}

/// Why the server refuses this reply, in its own words, or "" when it is fine.
inline std::string reply_problem(std::uint16_t code, std::string_view text, bool multiline = true)
{
    if (code < 200 || code > 599) return "reply code " + std::to_string(code) + " is outside 200..599";
    if (text.size() > max_reply_text)
        return "reply text of " + std::to_string(text.size()) + " bytes (at most " + std::to_string(max_reply_text) +
               ")";
    std::size_t line_start = 0;
    for (std::size_t i = 0; i <= text.size(); ++i) {
        const auto c = i < text.size() ? static_cast<unsigned char>(text[i]) : static_cast<unsigned char>('\n');
        if (c == '\n') {
            if (i < text.size() && !multiline)
                return "reply text has LF at byte " + std::to_string(i) + " (one line only)";
            if (i - line_start > max_reply_line)
                return "reply line of " + std::to_string(i - line_start) + " bytes (at most " +
                       std::to_string(max_reply_line) + ")";
            line_start = i + 1;
            continue;
        }
        if (c == '\r') return "reply text has CR at byte " + std::to_string(i);
        if (reply_byte_forbidden(c)) {
            static constexpr char digits[] = "0123456789abcdef";
            return std::string("reply text has control byte 0x") + digits[c >> 4] + digits[c & 15] + " at byte " +
                   std::to_string(i);
        }
    }
    return {};
}

}  // namespace asiosmtpd::sdk

#endif
