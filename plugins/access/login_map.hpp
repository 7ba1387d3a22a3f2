// SPDX-License-Identifier: Apache-2.0
// login_map: the sender_login_map file, which authenticated login may use which MAIL FROM
// address (Postfix's smtpd_sender_login_maps with reject_authenticated_sender_login_mismatch).
// One entry per line, `address-or-@domain: login[, login...]`; '#' starts a comment line;
// blank lines are skipped. Keys compare case-insensitively (and a trailing dot of the domain
// is dropped); logins too, as Postfix compares them. Pure parsing and lookup, no I/O.
#pragma once

#include "relay_rules.hpp"

#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::plugins::access {

class login_map {
public:
    /// Parses the file's text. Throws std::invalid_argument "<file>:<line>: <what is wrong>".
    static login_map parse(std::string_view text, const std::string& file)
    {
        login_map m;
        std::size_t number = 0;
        std::map<std::string, std::size_t> first_line;
        while (!text.empty()) {
            ++number;
            const auto eol = text.find('\n');
            std::string_view line = text.substr(0, eol);
            text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
            line = trim(line);
            if (line.empty() || line.front() == '#') continue;
            const auto fail = [&](const std::string& what) {
                return std::invalid_argument(file + ":" + std::to_string(number) + ": " + what);
            };
            for (const char c : line)
                if (static_cast<unsigned char>(c) < 0x20 && c != '\t') throw fail("control character in the line");
            const auto colon = line.find(':');
            if (colon == std::string_view::npos)
                throw fail("expected \"address-or-@domain: login[, login...]\", found no ':'");
            const std::string_view key_text = trim(line.substr(0, colon));
            const auto at = key_text.rfind('@');
            if (key_text.empty() || at == std::string_view::npos || at + 1 == key_text.size() ||
                key_text.find_first_of(" \t") != std::string_view::npos)
                throw fail("\"" + std::string(key_text) + "\" is not an address or @domain");
            const std::string key = normalize_key(key_text);
            std::vector<std::string> logins;
            std::string_view rest = line.substr(colon + 1);
            while (true) {
                const auto comma = rest.find(',');
                const std::string_view login = trim(rest.substr(0, comma));
                if (login.empty()) throw fail("empty login for " + std::string(key_text));
                if (login.find_first_of(" \t") != std::string_view::npos)
                    throw fail("logins are separated by ',': \"" + std::string(login) + "\"");
                logins.push_back(lower(login));
                if (comma == std::string_view::npos) break;
                rest = rest.substr(comma + 1);
            }
            const auto [it, fresh] = first_line.emplace(key, number);
            if (!fresh)
                throw fail("duplicate entry for " + std::string(key_text) + " (first on line " +
                           std::to_string(it->second) + ")");
            m.owners_.emplace(key, std::move(logins));
        }
        return m;
    }

    /// The logins that own `sender`: its own entry, else its domain's "@domain" entry; nullptr
    /// when the map names no owner (an authenticated client may then not use it).
    const std::vector<std::string>* owners(std::string_view sender) const
    {
        const auto at = sender.rfind('@');
        if (at == std::string_view::npos) return find(lower(sender));
        if (const auto* o = find(normalize_key(sender))) return o;
        return find("@" + normalize_domain(sender.substr(at + 1)));
    }

    bool owns(std::string_view login, std::string_view sender) const
    {
        const auto* o = owners(sender);
        if (o == nullptr) return false;
        const std::string l = lower(login);
        for (const std::string& x : *o)
            if (x == l) return true;
        return false;
    }

    std::size_t size() const noexcept { return owners_.size(); }

private:
    static std::string_view trim(std::string_view s)
    {
        const auto first = s.find_first_not_of(" \t");
        if (first == std::string_view::npos) return {};
        const auto last = s.find_last_not_of(" \t");
        return s.substr(first, last - first + 1);
    }
    // "Alice@Example.ORG." → "alice@example.org" (the local part lower-cased too, as Postfix's
    // table lookups do).
    static std::string normalize_key(std::string_view address)
    {
        const auto at = address.rfind('@');
        return lower(address.substr(0, at)) + "@" + normalize_domain(address.substr(at + 1));
    }
    const std::vector<std::string>* find(const std::string& key) const
    {
        const auto it = owners_.find(key);
        return it == owners_.end() ? nullptr : &it->second;
    }

    std::map<std::string, std::vector<std::string>> owners_;
};

}  // namespace asiosmtpd::plugins::access
