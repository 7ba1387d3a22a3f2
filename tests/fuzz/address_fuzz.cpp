// SPDX-License-Identifier: Apache-2.0
// address_fuzz: the MAIL/RCPT/VRFY address parser against arbitrary arguments.
//
// Input: byte 0 bit 0 = smtputf8; the rest is the argument (as the engine hands it over:
// stripped, so a leading/trailing blank is trimmed here too).
//
// Checked: no crash, sanitizer report or exception; the result is deterministic; `malformed`
// and `empty` carry no address; `ok` has one; without SMTPUTF8 and without an RFC 2047 encoded
// word nothing non-ASCII comes out; when the argument has no RFC 2047 encoded word ("=?"), `rest` is a suffix of the argument
// (address.hpp: Python's remainder, byte for byte; only a decoded encoded word adds text).
// Differential: wherever the fast path (detail::parse_address_fast) accepts the argument, or the
// raw unstripped bytes, its result equals the port of Python's parser
// (detail::parse_address_full) with and without SMTPUTF8.
#include "fuzz_check.hpp"
#include "fuzz_input.hpp"
#include "proto/address.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace {

bool ascii(std::string_view s)
{
    return std::none_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

bool same(const asiosmtpd::proto::address_result& a, const asiosmtpd::proto::address_result& b)
{
    return a.state == b.state && a.address == b.address && a.rest == b.rest;
}

/// Where the fast path takes `arg`, the port must agree with it.
void check_fast_path(std::string_view arg)
{
    using asiosmtpd::proto::address_result;
    namespace detail = asiosmtpd::proto::detail;
    address_result fast;
    if (!detail::parse_address_fast(arg, fast)) return;
    ASIOSMTPD_FUZZ_CHECK(fast.state == address_result::status::ok, "the fast path only answers ok");
    ASIOSMTPD_FUZZ_CHECK(same(fast, detail::parse_address_full(arg, false)), "fast path = port (ASCII)");
    ASIOSMTPD_FUZZ_CHECK(same(fast, detail::parse_address_full(arg, true)), "fast path = port (SMTPUTF8)");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    using asiosmtpd::proto::address_result;
    using asiosmtpd::proto::parse_address;

    asiosmtpd::fuzz::byte_reader in(data, size);
    const bool smtputf8 = (in.byte() & 0x01) != 0;
    std::string_view arg = in.rest();
    check_fast_path(arg);
    while (!arg.empty() && is_blank(arg.front())) arg.remove_prefix(1);
    while (!arg.empty() && is_blank(arg.back())) arg.remove_suffix(1);

    const address_result r = parse_address(arg, smtputf8);
    check_fast_path(arg);
    const address_result again = parse_address(arg, smtputf8);
    ASIOSMTPD_FUZZ_CHECK(r.state == again.state && r.address == again.address && r.rest == again.rest, "deterministic");
    switch (r.state) {
    case address_result::status::ok: ASIOSMTPD_FUZZ_CHECK(!r.address.empty(), "ok has an address"); break;
    case address_result::status::empty: ASIOSMTPD_FUZZ_CHECK(r.address.empty(), "empty has no address"); break;
    case address_result::status::malformed:
        ASIOSMTPD_FUZZ_CHECK(r.address.empty() && r.rest.empty(), "malformed has no address");
        break;
    }
    // An RFC 2047 encoded word ("=?cs?b?...?=") may decode to any bytes, also without SMTPUTF8
    // (Python stores the decoded str); only input without one maps ASCII to ASCII.
    const bool encoded_word = arg.find("=?") != std::string_view::npos;
    if (!smtputf8 && !encoded_word) ASIOSMTPD_FUZZ_CHECK(ascii(r.address) && ascii(r.rest), "ASCII in, ASCII out");
    if (r.state == address_result::status::ok && !encoded_word)
        ASIOSMTPD_FUZZ_CHECK(r.rest.size() <= arg.size() && arg.substr(arg.size() - r.rest.size()) == r.rest,
                             "rest is a suffix of the argument");
    return 0;
}
