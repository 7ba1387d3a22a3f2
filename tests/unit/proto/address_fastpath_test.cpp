// SPDX-License-Identifier: Apache-2.0
// Differential tests for parse_address's fast path (detail::parse_address_fast): for every
// input it accepts, its result must be exactly what the port of Python's parser
// (detail::parse_address_full) gives, with and without SMTPUTF8; parse_address as a whole must
// always equal the port. The inputs are generated around the fast path's edges: every
// combination of a set of prefixes, local parts, separators, domains, closers and tails; every
// short string over an alphabet of the characters that matter; and random strings and random
// edits of accepted ones.
#include "proto/address.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstddef>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using asiosmtpd::proto::address_result;
using asiosmtpd::proto::parse_address;
using asiosmtpd::proto::detail::parse_address_fast;
using asiosmtpd::proto::detail::parse_address_full;

std::string shown(std::string_view s)
{
    static constexpr char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (const char ch : s) {
        const auto b = static_cast<unsigned char>(ch);
        if (b >= 0x20 && b < 0x7F && ch != '"' && ch != '\\') {
            out.push_back(ch);
        } else {
            out += "\\x";
            out.push_back(hex[b >> 4U]);
            out.push_back(hex[b & 0x0FU]);
        }
    }
    return out + '"';
}

bool same(const address_result& a, const address_result& b)
{
    return a.state == b.state && a.address == b.address && a.rest == b.rest;
}

struct tally {
    std::size_t inputs = 0;
    std::size_t accepted = 0;
    std::size_t failures = 0;
};

/// Checks one input; returns whether the fast path took it. An input the fast path declines
/// goes to the port unchanged (parse_address is `fast ? fast : full`), so only accepted inputs
/// need the comparison, which keeps millions of generated inputs cheap.
bool check(std::string_view arg, tally& t)
{
    ++t.inputs;
    address_result fast;
    if (!parse_address_fast(arg, fast)) return false;
    ++t.accepted;
    for (const bool smtputf8 : {false, true}) {
        const address_result full = parse_address_full(arg, smtputf8);
        if (!same(fast, full) && ++t.failures <= 20)
            ADD_FAILURE() << "fast path differs for " << shown(arg) << " smtputf8=" << smtputf8 << ": fast "
                          << static_cast<int>(fast.state) << ' ' << shown(fast.address) << ' ' << shown(fast.rest)
                          << ", full " << static_cast<int>(full.state) << ' ' << shown(full.address) << ' '
                          << shown(full.rest);
        if (!same(parse_address(arg, smtputf8), full) && ++t.failures <= 20)
            ADD_FAILURE() << "parse_address differs from the port for " << shown(arg);
    }
    return true;
}

void report(const char* what, const tally& t)
{
    std::printf("[ fastpath ] %s: %zu inputs, %zu on the fast path, %zu differences\n", what, t.inputs, t.accepted,
                t.failures);
}

TEST(address_fastpath, takes_the_common_shapes)
{
    const struct {
        std::string_view arg, address, rest;
    } cases[] = {
        {"<user.name@example.com>", "user.name@example.com", ""},
        {"user.name@example.com", "user.name@example.com", ""},
        {"<a@b.c> SIZE=10 BODY=8BITMIME", "a@b.c", "SIZE=10 BODY=8BITMIME"},
        {"<a@b.c>SIZE=10", "a@b.c", "SIZE=10"},
        {"<a@b.c>\t SIZE=10", "a@b.c", "SIZE=10"},
        {"a@b.c\tSIZE=1", "a@b.c", "SIZE=1"},
        {"<a@b.c> ", "a@b.c", ""},
        {"<>", "<>", ""},
        {"<> SIZE=10", "<>", " SIZE=10"},
        {"<>SIZE=10", "<>", "SIZE=10"},
        {"!def!xyz%abc@example.com", "!def!xyz%abc@example.com", ""},
        {"<a@b.c>>", "a@b.c", ">"},
    };
    for (const auto& c : cases) {
        address_result r;
        ASSERT_TRUE(parse_address_fast(c.arg, r)) << c.arg;
        EXPECT_EQ(r.state, address_result::status::ok) << c.arg;
        EXPECT_EQ(r.address, c.address) << c.arg;
        EXPECT_EQ(r.rest, c.rest) << c.arg;
    }
}

TEST(address_fastpath, leaves_the_rest_to_the_port)
{
    // Each of these is decided differently by some rule of Python's parser (or is simply not a
    // plain shape), so the fast path must decline it.
    for (const std::string_view arg : {"",
                                       " <a@b.c>",
                                       "<a@b.c",
                                       "<a@b.c d>",
                                       "<a.@b.c>",
                                       "<.a@b.c>",
                                       "<a..b@c.d>",
                                       "<a@b.c.>",
                                       "<a>",
                                       "a",
                                       "<@x.y:a@b.c>",
                                       "<a@[127.0.0.1]>",
                                       "<\"a\"@b.c>",
                                       "<a\\b@c.d>",
                                       "<a (c)@b.c>",
                                       "<a@b.c>(c)",
                                       "<a@b.c> (c) X",
                                       "a@b .c",
                                       "a@b @c",
                                       "a@b,c",
                                       "a@b>",
                                       "a@b\vc",
                                       "<a@b.c> \x1cX",
                                       "=?utf-8?q?a=40b=2Cc?=d",
                                       "<a=?b@c.d>",
                                       "<a@b.c> X=?",
                                       "<\xc3\xa9@b.c>",
                                       "<a@b.c> \xc2\xa0X",
                                       "<> \xc3\xa9",
                                       "a@b.c (x) SIZE=10",
                                       "<a@b@c>",
                                       "a@b@c"}) {
        address_result r;
        EXPECT_FALSE(parse_address_fast(arg, r)) << shown(arg);
    }
}

TEST(address_fastpath, combinations_match_the_port)
{
    const std::vector<std::string> prefixes{"", "<", " <", "<<", "(c)<", "(c)", " ", "\"\"", "@x:", "<@x:", "<\t"};
    const std::vector<std::string> locals{
        "a",        "user.name", "A~!#$%&'*+-/=^_`{|}~9", "a.b.c", ".a", "a.", "a..b", "",    "a b",  "\"a\"", "a\\b",
        "\xc3\xa9", "a=?b",      "=?utf-8?q?x?=",         "a(c)",  "?=", "a=", "a,b",  "[a]", "\x7f", "a\x01"};
    const std::vector<std::string> ats{"@", "", "@@", " @", "@ ", "."};
    const std::vector<std::string> domains{"example.com", "b",    "b.c", "b..c",     ".b",     "b.",
                                           "[1.2.3.4]",   "b(c)", "b c", "",         "-b.c_d", "b=?c",
                                           "\xc3\xa9.c",  "b\vc", "b@c", "b.c.d.e.f"};
    const std::vector<std::string> closers{">", "", ">>", " >", "]", ")", ">(c)", "> ", "\"", ">\t"};
    const std::vector<std::string> tails{"",
                                         " SIZE=10",
                                         "\tSIZE=1 BODY=8BITMIME",
                                         "  ",
                                         " (c) X",
                                         " @x",
                                         " .c",
                                         " \x1cX",
                                         "SIZE",
                                         " \xc2\xa0X",
                                         " =?utf-8?q?x?=",
                                         " <d@e.f>",
                                         " ,",
                                         " \"x\"",
                                         " \\",
                                         "\v",
                                         "\r\nX",
                                         " )",
                                         " x=?",
                                         " \x7f",
                                         "\t\t>",
                                         " d>",
                                         ">",
                                         ".",
                                         "@"};
    tally t;
    for (const auto& p : prefixes)
        for (const auto& l : locals)
            for (const auto& a : ats)
                for (const auto& d : domains)
                    for (const auto& c : closers)
                        for (const auto& tail : tails) check(p + l + a + d + c + tail, t);
    report("combinations", t);
    EXPECT_EQ(t.failures, 0U);
    EXPECT_GT(t.accepted, 1000U);  // the fast path is exercised, not just declined
}

TEST(address_fastpath, short_strings_match_the_port)
{
    // Every string of up to 6 characters over the characters the fast path looks at.
    constexpr std::string_view alphabet = "a.@<> \t(=?\x1c\x80";
    tally t;
    std::string s;
    const auto walk = [&](const auto& self, std::size_t depth) -> void {
        check(s, t);
        if (depth == 6) return;
        for (const char c : alphabet) {
            s.push_back(c);
            self(self, depth + 1);
            s.pop_back();
        }
    };
    walk(walk, 0);
    report("short strings", t);
    EXPECT_EQ(t.failures, 0U);
    EXPECT_GT(t.accepted, 100U);
}

TEST(address_fastpath, random_inputs_match_the_port)
{
    std::mt19937 rng(20240607);  // fixed: reproducible
    // Weighted toward atext, with every special, blank, control and non-ASCII byte represented.
    const std::string pool = std::string("abcxyzABZ0189!#$%&'*+-/=?^_`{|}~") + "....@@@<<>>  \t" +
                             "()\"\\[],:;\x1c\x1f\v\r\n\x7f\x01" + "\xc3\xa9\xc2\xa0\xe2\x80\x80\xff";
    const auto pick = [&](std::string_view from) {
        return from[std::uniform_int_distribution<std::size_t>(0, from.size() - 1)(rng)];
    };
    const auto below = [&](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };
    const auto atom = [&] {
        std::string a;
        const std::size_t n = 1 + below(8);
        for (std::size_t i = 0; i < n; ++i) a.push_back(pick("abcxyzABZ0189!#$%&'*+-/=?^_`{|}~"));
        return a;
    };
    const auto dot_atom = [&] {
        std::string a = atom();
        for (std::size_t n = below(4); n > 0; --n) a += "." + atom();
        return a;
    };
    const auto params = [&] {
        const std::string_view choices[] = {"", " SIZE=10", " BODY=8BITMIME", "\tSMTPUTF8", "  AUTH=<>", " X"};
        std::string out;
        for (std::size_t n = below(3); n > 0; --n) out += choices[below(std::size(choices))];
        return out;
    };
    const auto plain = [&] {
        const std::string spec = dot_atom() + "@" + dot_atom();
        switch (below(3)) {
        case 0: return "<" + spec + ">" + params();
        case 1: return spec + params();
        default: return "<>" + params();
        }
    };

    tally random_strings;
    for (int i = 0; i < 1000000; ++i) {
        std::string s;
        for (std::size_t n = below(24); n > 0; --n) s.push_back(pick(pool));
        check(s, random_strings);
    }
    report("random strings", random_strings);

    tally plain_shapes;
    tally edited;
    std::size_t declined_plain = 0;
    for (int i = 0; i < 150000; ++i) {
        const std::string s = plain();
        // The only plain shapes it declines are those with an encoded-word start.
        if (!check(s, plain_shapes) && s.find("=?") == std::string::npos && ++declined_plain <= 20)
            ADD_FAILURE() << "fast path declines the plain shape " << shown(s);
        // One to three random edits (replace, insert, delete) of a plain shape: the inputs right
        // next to what the fast path accepts.
        std::string e = s;
        for (std::size_t n = 1 + below(3); n > 0; --n) {
            const std::size_t at = below(e.size() + 1);
            switch (below(3)) {
            case 0:
                if (at < e.size()) e[at] = pick(pool);
                break;
            case 1: e.insert(e.begin() + static_cast<std::ptrdiff_t>(at), pick(pool)); break;
            default:
                if (at < e.size()) e.erase(at, 1);
                break;
            }
        }
        check(e, edited);
    }
    report("plain shapes", plain_shapes);
    report("edited plain shapes", edited);
    EXPECT_EQ(random_strings.failures + plain_shapes.failures + edited.failures, 0U);
    EXPECT_EQ(declined_plain, 0U);
    EXPECT_GT(edited.accepted, 30000U);
}

}  // namespace
