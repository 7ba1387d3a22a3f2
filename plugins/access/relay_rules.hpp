// SPDX-License-Identifier: Apache-2.0
// relay_rules: whether a recipient is a local destination (accepted from anyone) or needs a
// client that may relay. Pure functions on the address as the server hands it to RCPT hooks
// (aiosmtpd's normalised form: `user@example.org`, a quoted local part kept quoted,
// `"user@foreign"@example.org`; source routes already dropped).
//
// A recipient is local only when its domain is one of local_domains AND its local part carries
// no routing of its own. Sender-specified routing is the classic way through a relay that checks
// only the domain after the last '@' (Postfix's allow_untrusted_routing = no; RFC 5321 §3.6.1
// and Appendix C): `user%foreign@local` (the percent hack), `foreign!user@local` (a UUCP bang
// path), `"user@foreign"@local` (a quoted '@'), `user@foreign@local`, `@local:user@foreign` (a
// source route). Each is "routed" here, which needs relay permission like a foreign domain.
#pragma once

#include <cstddef>
#include <optional>
#include <set>
#include <string>
#include <string_view>

namespace asiosmtpd::plugins::access {

/// ASCII lower case (domains and map keys compare case-insensitively; UTF-8 bytes are kept).
inline std::string lower(std::string_view s)
{
    std::string out(s);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

/// A domain as compared: lower case, one trailing dot dropped ("Example.ORG." → "example.org").
inline std::string normalize_domain(std::string_view d)
{
    if (!d.empty() && d.back() == '.') d.remove_suffix(1);
    return lower(d);
}

/// An address cut at its last '@' outside a quoted string.
struct address_parts {
    std::string local;   ///< the local part with quotes and backslash escapes removed
    std::string domain;  ///< normalize_domain()d; empty when there is no '@'
    bool has_at = false;
    bool source_route = false;  ///< began with "@host,...:" (RFC 5321 §4.1.2 A-d-l)
};

/// Splits `address`; the local part is dequoted (`"a@b"` → `a@b`, `"a\"b"` → `a"b`).
inline address_parts split_address(std::string_view address)
{
    address_parts out;
    if (!address.empty() && address.front() == '@') {
        // A source route the server did not drop: what counts is the mailbox after the ':'.
        out.source_route = true;
        const auto colon = address.find(':');
        address = colon == std::string_view::npos ? std::string_view() : address.substr(colon + 1);
    }
    // The last '@' outside quotes.
    std::size_t at = std::string_view::npos;
    bool quoted = false;
    for (std::size_t i = 0; i < address.size(); ++i) {
        const char c = address[i];
        if (c == '\\' && i + 1 < address.size()) {
            ++i;
            continue;
        }
        if (c == '"') quoted = !quoted;
        else if (c == '@' && !quoted) at = i;
    }
    const std::string_view local = at == std::string_view::npos ? address : address.substr(0, at);
    if (at != std::string_view::npos) {
        out.has_at = true;
        out.domain = normalize_domain(address.substr(at + 1));
    }
    for (std::size_t i = 0; i < local.size(); ++i) {
        const char c = local[i];
        if (c == '"') continue;
        if (c == '\\' && i + 1 < local.size()) {
            out.local += local[++i];
            continue;
        }
        out.local += c;
    }
    return out;
}

/// The domains mail is accepted for from anyone. An entry "example.org" matches that domain
/// only; ".example.org" matches every subdomain of it (not example.org itself), as Postfix's
/// relay_domains style. Address literals match as written, lower case: "[192.0.2.1]".
class domain_set {
public:
    /// Adds one entry; "" or why it is refused.
    std::string add(std::string_view entry)
    {
        const std::string d = normalize_domain(entry);
        if (d.empty() || d == ".") return "empty domain";
        for (const char c : d)
            if (c == '@' || c == ' ' || c == '\t' || static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
                return "not a domain (no '@', blanks or control characters)";
        if (d.front() == '.') {
            if (d.size() < 2 || d[1] == '.') return "not a domain";
            suffixes_.insert(d);
        } else {
            exact_.insert(d);
        }
        return {};
    }
    /// `domain` must be normalize_domain()d.
    bool contains(std::string_view domain) const
    {
        if (domain.empty()) return false;
        if (exact_.count(std::string(domain)) != 0) return true;
        for (std::size_t dot = domain.find('.'); dot != std::string_view::npos; dot = domain.find('.', dot + 1))
            if (suffixes_.count(std::string(domain.substr(dot))) != 0) return true;
        return false;
    }
    bool empty() const noexcept { return exact_.empty() && suffixes_.empty(); }

private:
    std::set<std::string> exact_;
    std::set<std::string> suffixes_;
};

/// Where a recipient goes, as far as relaying is concerned.
enum class destination {
    local,       ///< a local domain, plain local part: accepted from anyone
    postmaster,  ///< "postmaster" without a domain (RFC 5321 §4.5.1 requires accepting it)
    foreign,     ///< another domain: only for clients that may relay
    routed,      ///< sender-specified routing (%, !, a quoted '@', a source route): as foreign
    no_domain,   ///< a bare local part other than postmaster: as foreign (no local default domain)
};

inline const char* destination_name(destination d) noexcept
{
    switch (d) {
    case destination::local: return "local";
    case destination::postmaster: return "postmaster";
    case destination::foreign: return "foreign";
    case destination::routed: return "routed";
    case destination::no_domain: return "no_domain";
    }
    return "?";
}

inline destination classify(std::string_view rcpt, const domain_set& local_domains)
{
    const address_parts p = split_address(rcpt);
    const bool routing_chars = p.local.find_first_of("@%!") != std::string::npos;
    if (p.source_route || routing_chars) return destination::routed;
    if (!p.has_at) return lower(p.local) == "postmaster" ? destination::postmaster : destination::no_domain;
    if (p.local.empty()) return destination::routed;  // "@domain" alone: nobody to deliver to
    return local_domains.contains(p.domain) ? destination::local : destination::foreign;
}

/// Whether a recipient of this kind needs a client that may relay.
constexpr bool needs_relay(destination d) noexcept { return d != destination::local && d != destination::postmaster; }

}  // namespace asiosmtpd::plugins::access
