// SPDX-License-Identifier: Apache-2.0
// proxy: the reply texts and codes the proxy hands the host (complete()), valid by
// construction. The host refuses a code outside 200..599, a text with CR, NUL or another control
// byte but HT (DEL too), a line over 506 bytes or a text over 64 KiB, and then answers
// 451 4.3.0 - after the upstream took the message that is a duplicate on the client's retry.
// So every byte the upstream sent is sanitised here, never checked after the fact.
// Pure functions, no I/O; C++17 (the plugin's standard). Unit tests: tests/unit/plugins/proxy_test.cpp.
#ifndef ASIOSMTPD_PLUGINS_PROXY_REPLY_TEXT_HPP
#define ASIOSMTPD_PLUGINS_PROXY_REPLY_TEXT_HPP

#include <asiosmtpd/reply_rules.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::plugins::proxy_text {

/// The host's limits (asiosmtpd/reply_rules.hpp): a reply line, a whole reply text.
inline constexpr std::size_t max_line = sdk::max_reply_line;
inline constexpr std::size_t max_text = sdk::max_reply_text;
/// Refused recipients listed in one reply; the rest are counted in a last "... and N more"
/// line (all of them are logged). 100 lines of at most 507 bytes stay well below max_text.
inline constexpr std::size_t max_listed = 100;

/// Bytes the host refuses in a reply text: C0 controls but HT, and DEL. (LF separates lines
/// of a multi-line text; within one line it is refused like the others.)
constexpr bool forbidden(unsigned char c) noexcept { return c == '\n' || sdk::reply_byte_forbidden(c); }

/// The length of the longest prefix of `s` of at most `n` bytes that does not end inside a
/// UTF-8 sequence. Text that is not UTF-8 (no lead byte within 3 bytes back) is cut at `n`.
inline std::size_t utf8_prefix(std::string_view s, std::size_t n) noexcept
{
    if (s.size() <= n) return s.size();
    auto continuation = [&](std::size_t i) { return (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80; };
    std::size_t cut = n;
    for (int back = 0; back < 3 && cut > 0 && continuation(cut); ++back) --cut;
    return continuation(cut) ? n : cut;
}

/// One reply line from untrusted text: every forbidden byte (CR, LF, NUL, ESC, DEL, ...)
/// becomes '?', the result is at most `limit` bytes, cut on a UTF-8 boundary. Other bytes
/// (HT, 8-bit) pass unchanged: the host takes them.
inline std::string line(std::string_view s, std::size_t limit = max_line)
{
    std::string out(s.substr(0, utf8_prefix(s, limit)));
    for (char& ch : out)
        if (forbidden(static_cast<unsigned char>(ch))) ch = '?';
    return out;
}

/// A multi-line reply text: `first`, then one line per item, each through line(); at most
/// `listed` items, and no more than fit in `budget` bytes with room for the last line
/// "... and N more" that counts the items left out.
inline std::string with_list(std::string_view first, const std::vector<std::string>& items,
                             std::size_t listed = max_listed, std::size_t budget = max_text)
{
    // "\n... and " + up to 20 digits + " more"
    constexpr std::size_t tail_room = 1 + 8 + 20 + 5;
    std::string out = line(first);
    std::size_t shown = 0;
    for (; shown < items.size() && shown < listed; ++shown) {
        const std::string l = line(items[shown]);
        if (out.size() + 1 + l.size() + tail_room > budget) break;
        out += '\n';
        out += l;
    }
    if (shown < items.size()) out += "\n... and " + std::to_string(items.size() - shown) + " more";
    return out;
}

/// The host's rules for a multi-line reply, checked once more just before complete(): a
/// refused reply cannot be retried.
inline bool valid(std::uint16_t code, std::string_view text) { return sdk::reply_problem(code, text).empty(); }

/// What the client gets for an upstream reply code.
enum class kind { accept, tempfail, reject };
struct local_reply {
    kind verdict = kind::tempfail;
    std::uint16_t code = 451;
};

/// The local reply for an upstream's reply code: 2xx → 250 (the upstream took it); 5xx as is;
/// 4xx as is, but 421 → 451 (the upstream closes, the client's session goes on); anything else
/// (0xx, 1xx, 3xx, 6xx..9xx: RFC 5321 §4.2.1 has no such reply here) → 451: nobody can tell
/// what the upstream did, so the client keeps the message.
constexpr local_reply map_code(int upstream) noexcept
{
    if (upstream >= 200 && upstream <= 299) return {kind::accept, 250};
    if (upstream >= 500 && upstream <= 599) return {kind::reject, static_cast<std::uint16_t>(upstream)};
    if (upstream >= 400 && upstream <= 499 && upstream != 421)
        return {kind::tempfail, static_cast<std::uint16_t>(upstream)};
    return {kind::tempfail, 451};
}

}  // namespace asiosmtpd::plugins::proxy_text

#endif
