// SPDX-License-Identifier: Apache-2.0
#include "proto/dsn.hpp"

#include <algorithm>

namespace asiosmtpd::proto::dsn {
namespace {

constexpr char upper(char c) noexcept { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }

bool iequals(std::string_view a, std::string_view b) noexcept
{
    return a.size() == b.size() &&
           std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return upper(x) == y; });
}

int hex_value(char c) noexcept
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// RFC 3461 §4: "graphic and white space" US-ASCII, as Postfix's allprint() checks it.
constexpr bool printable(char c) noexcept { return c >= 0x20 && c <= 0x7e; }

// After is_xtext(s): every byte it decodes to is printable (xchar always is), and with
// `non_empty` there is at least one.
bool decodes_printable(std::string_view xtext, bool non_empty) noexcept
{
    std::size_t n = 0;
    for (std::size_t i = 0; i < xtext.size(); ++i, ++n) {
        if (xtext[i] != '+') continue;
        if (!printable(static_cast<char>(hex_value(xtext[i + 1]) * 16 + hex_value(xtext[i + 2])))) return false;
        i += 2;
    }
    return !non_empty || n > 0;
}

// RFC 5322 atext.
constexpr bool is_atext(char c) noexcept
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           std::string_view("!#$%&'*+-/=?^_`{|}~").find(c) != std::string_view::npos;
}

// A token's key and value ("KEY=VALUE"); has_value false for a bare "KEY".
struct token {
    std::string_view key;
    std::string_view value;
    bool has_value = false;
};

token split(std::string_view t) noexcept
{
    const auto eq = t.find('=');
    if (eq == std::string_view::npos) return {t, {}, false};
    return {t.substr(0, eq), t.substr(eq + 1), true};
}

struct rule {
    std::string_view key;
    bool (*valid)(std::string_view) noexcept;
    problem bad;
};

// The first of `rules` broken in `tokens`: a value that fails its check, or a key seen before.
problem check(std::span<const std::string> tokens, std::span<const rule> rules) noexcept
{
    bool seen[2] = {false, false};
    for (const std::string& t : tokens) {
        const token p = split(t);
        for (std::size_t r = 0; r < rules.size(); ++r) {
            if (p.key != rules[r].key) continue;
            // RFC 3461 §4 / RFC 5321 §4.1.2: each parameter at most once.
            if (seen[r] || !p.has_value || !rules[r].valid(p.value)) return rules[r].bad;
            seen[r] = true;
        }
    }
    return problem::none;
}

}  // namespace

std::size_t line_allowance(std::string_view verb) noexcept
{
    if (verb == "MAIL") return mail_line_allowance;
    if (verb == "RCPT") return rcpt_line_allowance;
    return 0;
}

bool is_xtext(std::string_view s) noexcept
{
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '+') {
            if (s.size() - i < 3 || hex_value(s[i + 1]) < 0 || hex_value(s[i + 2]) < 0) return false;
            i += 2;
        } else if (c < '!' || c > '~' || c == '=') {
            return false;
        }
    }
    return true;
}

std::optional<std::string> decode_xtext(std::string_view s)
{
    if (!is_xtext(s)) return std::nullopt;
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '+') {
            out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
            i += 2;
        } else {
            out.push_back(s[i]);
        }
    }
    return out;
}

bool valid_ret(std::string_view value) noexcept { return iequals(value, "FULL") || iequals(value, "HDRS"); }

bool valid_envid(std::string_view value) noexcept
{
    return value.size() <= envid_max && is_xtext(value) && decodes_printable(value, false);
}

bool valid_notify(std::string_view value) noexcept
{
    if (iequals(value, "NEVER")) return true;
    for (;;) {
        const auto comma = value.find(',');
        const std::string_view element = value.substr(0, comma);
        if (!iequals(element, "SUCCESS") && !iequals(element, "FAILURE") && !iequals(element, "DELAY")) return false;
        if (comma == std::string_view::npos) return true;
        value.remove_prefix(comma + 1);
    }
}

bool valid_orcpt(std::string_view value) noexcept
{
    if (value.size() > orcpt_max) return false;
    const auto semi = value.find(';');
    if (semi == std::string_view::npos || semi == 0) return false;
    const std::string_view type = value.substr(0, semi);
    if (!std::all_of(type.begin(), type.end(), is_atext)) return false;
    const std::string_view address = value.substr(semi + 1);
    return is_xtext(address) && decodes_printable(address, true);
}

problem check_mail(std::span<const std::string> tokens) noexcept
{
    static constexpr rule rules[] = {{"RET", &valid_ret, problem::bad_ret},
                                     {"ENVID", &valid_envid, problem::bad_envid}};
    return check(tokens, rules);
}

problem check_rcpt(std::span<const std::string> tokens) noexcept
{
    static constexpr rule rules[] = {{"NOTIFY", &valid_notify, problem::bad_notify},
                                     {"ORCPT", &valid_orcpt, problem::bad_orcpt}};
    return check(tokens, rules);
}

bool keeps_case(std::string_view key) noexcept { return key == "ENVID" || key == "ORCPT"; }

}  // namespace asiosmtpd::proto::dsn
