// SPDX-License-Identifier: Apache-2.0
// asiosmtpd/dsn.hpp: the DSN parameters (RFC 3461) of a transaction, parsed from the ESMTP
// parameters the host already gives plugins (header-only, C++17, standard library only; no
// ABI of its own). With server.enable_dsn the host checks RET and ENVID on MAIL and NOTIFY
// and ORCPT on RCPT and keeps them as "KEY=VALUE" strings: the MAIL hook's and
// call::mail_params() (the transaction's MAIL parameters), the RCPT hook's address_args::params
// and call::rcpt_params(i) (each accepted recipient's). Keys and RET/NOTIFY values are
// upper-cased; ENVID and ORCPT values are xtext in the client's case.
//
//   const auto m = asiosmtpd::sdk::dsn::parse_mail(c.mail_params());
//   if (m.ret == asiosmtpd::sdk::dsn::ret_type::hdrs) ...      // bounce with headers only
//   const auto r = asiosmtpd::sdk::dsn::parse_rcpt(c.rcpt_params(0));
//   if (r.notify & asiosmtpd::sdk::dsn::notify_success) ...    // a success DSN is wanted
//
// The parser takes what the host checked; anything else (another plugin's ADD_RCPT
// parameters, say) it skips rather than refuses: a value it cannot read counts as not given.
#ifndef ASIOSMTPD_DSN_HPP
#define ASIOSMTPD_DSN_HPP

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::sdk::dsn {

/// RET (RFC 3461 §4.3): what a failure DSN returns of the message.
enum class ret_type { unset, full, hdrs };

/// NOTIFY (RFC 3461 §4.1) bits; 0 = NOTIFY not given (the MTA's default: FAILURE, maybe DELAY).
enum notify_flag : unsigned {
    notify_never = 1u,
    notify_success = 2u,
    notify_failure = 4u,
    notify_delay = 8u,
};

/// MAIL's DSN parameters.
struct mail_request {
    ret_type ret = ret_type::unset;
    bool has_envid = false;
    std::string envid;        ///< ENVID decoded (printable ASCII)
    std::string envid_xtext;  ///< ENVID as the client sent it (xtext), to pass on
};

/// One recipient's DSN parameters.
struct rcpt_request {
    unsigned notify = 0;  ///< notify_flag bits; 0: not given
    bool has_orcpt = false;
    std::string orcpt_type;     ///< ORCPT's addr-type as sent ("rfc822"; compare case-insensitively)
    std::string orcpt_address;  ///< ORCPT's address decoded ("Bob@example.org")
    std::string orcpt_xtext;    ///< ORCPT's address as sent (xtext), to pass on
};

namespace detail {

constexpr char upper(char c) noexcept { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }

inline bool iequals(std::string_view a, std::string_view b) noexcept
{
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (upper(a[i]) != upper(b[i])) return false;
    return true;
}

inline int hex(char c) noexcept
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/// "KEY=VALUE" whose key is `key` (case-insensitive): the value; else nothing.
inline std::optional<std::string_view> value_of(std::string_view param, std::string_view key) noexcept
{
    if (param.size() <= key.size() || param[key.size()] != '=' || !iequals(param.substr(0, key.size()), key))
        return std::nullopt;
    return param.substr(key.size() + 1);
}

}  // namespace detail

/// RFC 3461 §4: xtext decoded ("+2B" is '+'; hex digits in either case), or nothing when `s`
/// is not xtext (a byte outside '!'..'~', a bare '=' or a '+' without two hex digits).
inline std::optional<std::string> xtext_decode(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
        const char c = s[i];
        if (c == '+') {
            if (s.size() - i < 3) return std::nullopt;
            const int hi = detail::hex(s[i + 1]);
            const int lo = detail::hex(s[i + 2]);
            if (hi < 0 || lo < 0) return std::nullopt;
            out.push_back(static_cast<char>(hi * 16 + lo));
            i += 2;
        } else if (c < '!' || c > '~' || c == '=') {
            return std::nullopt;
        } else {
            out.push_back(c);
        }
    }
    return out;
}

/// RFC 3461 §4: `s` as xtext ('+', '=' and bytes outside '!'..'~' as "+XX", upper-case hex).
inline std::string xtext_encode(std::string_view s)
{
    static constexpr char digits[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '+' || c == '=' || u < 0x21 || u > 0x7e) {
            out.push_back('+');
            out.push_back(digits[u >> 4]);
            out.push_back(digits[u & 15]);
        } else {
            out.push_back(c);
        }
    }
    return out;
}

/// Whether `param` ("KEY=VALUE" or "KEY") is one of DSN's: RET, ENVID, NOTIFY, ORCPT.
inline bool is_dsn_param(std::string_view param) noexcept
{
    const std::string_view key = param.substr(0, param.find('='));
    return detail::iequals(key, "RET") || detail::iequals(key, "ENVID") || detail::iequals(key, "NOTIFY") ||
           detail::iequals(key, "ORCPT");
}

/// NOTIFY's value ("SUCCESS,DELAY", "NEVER") as notify_flag bits; 0 when it is not one.
inline unsigned parse_notify(std::string_view value) noexcept
{
    if (detail::iequals(value, "NEVER")) return notify_never;
    unsigned bits = 0;
    for (;;) {
        const std::size_t comma = value.find(',');
        const std::string_view element = value.substr(0, comma);
        if (detail::iequals(element, "SUCCESS")) bits |= notify_success;
        else if (detail::iequals(element, "FAILURE")) bits |= notify_failure;
        else if (detail::iequals(element, "DELAY")) bits |= notify_delay;
        else return 0;
        if (comma == std::string_view::npos) return bits;
        value.remove_prefix(comma + 1);
    }
}

/// notify_flag bits as NOTIFY's value ("SUCCESS,FAILURE,DELAY" order; "NEVER"); "" for 0.
inline std::string notify_text(unsigned bits)
{
    if ((bits & notify_never) != 0) return "NEVER";
    std::string out;
    const auto add = [&](unsigned bit, const char* name) {
        if ((bits & bit) == 0) return;
        if (!out.empty()) out.push_back(',');
        out.append(name);
    };
    add(notify_success, "SUCCESS");
    add(notify_failure, "FAILURE");
    add(notify_delay, "DELAY");
    return out;
}

/// MAIL's DSN parameters among `params` (any range of strings or string_views: the MAIL hook's
/// address_args::params, call::mail_params()). The last valid one of each counts.
template <class Range>
mail_request parse_mail(const Range& params)
{
    mail_request out;
    for (const auto& item : params) {
        const std::string_view p(item);
        if (const auto v = detail::value_of(p, "RET")) {
            if (detail::iequals(*v, "FULL")) out.ret = ret_type::full;
            else if (detail::iequals(*v, "HDRS")) out.ret = ret_type::hdrs;
        } else if (const auto e = detail::value_of(p, "ENVID")) {
            if (auto decoded = xtext_decode(*e)) {
                out.has_envid = true;
                out.envid = std::move(*decoded);
                out.envid_xtext.assign(e->data(), e->size());
            }
        }
    }
    return out;
}

/// One recipient's DSN parameters among `params` (the RCPT hook's address_args::params,
/// call::rcpt_params(i)).
template <class Range>
rcpt_request parse_rcpt(const Range& params)
{
    rcpt_request out;
    for (const auto& item : params) {
        const std::string_view p(item);
        if (const auto v = detail::value_of(p, "NOTIFY")) {
            if (const unsigned bits = parse_notify(*v)) out.notify = bits;
        } else if (const auto o = detail::value_of(p, "ORCPT")) {
            const std::size_t semi = o->find(';');
            if (semi == 0 || semi == std::string_view::npos) continue;
            const std::string_view xtext = o->substr(semi + 1);
            auto decoded = xtext_decode(xtext);
            if (!decoded || decoded->empty()) continue;
            out.has_orcpt = true;
            out.orcpt_type.assign(o->data(), semi);
            out.orcpt_address = std::move(*decoded);
            out.orcpt_xtext.assign(xtext.data(), xtext.size());
        }
    }
    return out;
}

/// The parameters that ask an upstream for the same DSNs ("RET=HDRS", "ENVID=..."), to append
/// to its MAIL FROM when it offers DSN (RFC 3461 §4: a relay passes them on).
inline std::vector<std::string> mail_params(const mail_request& m)
{
    std::vector<std::string> out;
    if (m.ret == ret_type::full) out.emplace_back("RET=FULL");
    if (m.ret == ret_type::hdrs) out.emplace_back("RET=HDRS");
    if (m.has_envid) out.push_back("ENVID=" + m.envid_xtext);
    return out;
}

/// The same for one RCPT TO ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;...").
inline std::vector<std::string> rcpt_params(const rcpt_request& r)
{
    std::vector<std::string> out;
    if (r.notify != 0) out.push_back("NOTIFY=" + notify_text(r.notify));
    if (r.has_orcpt) out.push_back("ORCPT=" + r.orcpt_type + ";" + r.orcpt_xtext);
    return out;
}

}  // namespace asiosmtpd::sdk::dsn

#endif  // ASIOSMTPD_DSN_HPP
