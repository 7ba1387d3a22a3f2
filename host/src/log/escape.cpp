// SPDX-License-Identifier: Apache-2.0
// The log lines' escaping of peer text (escape.hpp).
#include "log/escape.hpp"

namespace asiosmtpd::log {

std::string escaped(std::string_view text, std::size_t max)
{
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    const bool cut = text.size() > max;
    if (cut) text = text.substr(0, max);
    for (const char c : text) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u >= 0x7f || c == '\\' || c == '"') {
            out.append("\\x");
            out.push_back(hex[u >> 4]);
            out.push_back(hex[u & 15]);
        } else {
            out.push_back(c);
        }
    }
    if (cut) out.append("...");
    return out;
}

}  // namespace asiosmtpd::log
