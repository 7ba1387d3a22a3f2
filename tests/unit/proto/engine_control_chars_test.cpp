// SPDX-License-Identifier: Apache-2.0
// Control characters (C0, TAB included, and DEL) in MAIL/RCPT/VRFY addresses and in ESMTP
// parameters: refused reply by reply (553 for an address, the verb's 501 for a parameter, 502
// for VRFY), in aiosmtpd's check order, with and without hooks, and never seen by a hook or
// stored in the envelope. Whitespace between the address and the parameters (TAB, Python's
// \x1c-\x1f, a CR in mid-line) still separates, and UTF-8 with SMTPUTF8 is unchanged.
#include "proto/engine.hpp"

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::proto {
namespace {

using namespace std::string_literals;  // "...\0..."s: a NUL inside the literal

constexpr std::string_view ehlo_reply = "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250 HELP\r\n";
constexpr std::string_view ehlo_reply_utf8 =
    "250-mx.test\r\n250-SIZE 33554432\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 HELP\r\n";
constexpr std::string_view malformed = "553 5.1.3 Error: malformed address\r\n";
constexpr std::string_view syntax_mail = "501 Syntax: MAIL FROM: <address> [SP <mail-parameters>]\r\n";
constexpr std::string_view syntax_rcpt = "501 Syntax: RCPT TO: <address> [SP <mail-parameters>]\r\n";
constexpr std::string_view ok = "250 OK\r\n";

// The attack line of the report, CRs and all: a quoted local part that Python's email parser
// keeps whole, and a maildir header block would split into forged X-RcptTo and X-Foo headers.
const std::string attack = "MAIL FROM:<\"x\rX-RcptTo: ceo@corp.example\rX-Foo: \"@b.example>\r\n";

bool has_control(std::string_view s)
{
    for (const char c : s)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
    return false;
}

// One session: the client bytes at once, every hook answered CONTINUE (none). Records what each
// MAIL/RCPT/VRFY hook was asked and checks that none of it, nor the envelope, ever holds a
// control character.
struct conversation {
    settings s;
    std::vector<std::string> asked;  // "mail a@b.c", "rcpt d@e.f", "vrfy x"
    std::string replies;
    envelope last;

    explicit conversation(std::uint32_t hooks = 0, bool smtputf8 = false)
    {
        s.hostname = "mx.test";
        s.ident = "asiosmtpd test";
        s.enable_smtputf8 = smtputf8;
        s.hook_mask = hooks;
    }

    std::string run(std::string_view bytes)
    {
        engine e(s);
        e.start();
        e.clear_output();
        e.receive(bytes);
        while (const hook_request* h = e.pending_hook()) {
            const char* name = h->kind == hook_kind::mail ? "mail" : h->kind == hook_kind::rcpt ? "rcpt" : "vrfy";
            asked.push_back(std::string(name) + " " + std::string(h->argument));
            EXPECT_FALSE(has_control(h->argument)) << asked.back();
            for (const std::string& p : h->params) EXPECT_FALSE(has_control(p)) << p;
            e.hook_done(hook_result{});
        }
        const envelope& env = e.current_envelope();
        EXPECT_FALSE(has_control(env.mail_from)) << env.mail_from;
        for (const std::string& r : env.rcpt_tos) EXPECT_FALSE(has_control(r)) << r;
        for (const std::string& p : env.mail_options) EXPECT_FALSE(has_control(p)) << p;
        last = env;
        replies = e.output();
        return replies;
    }
};

constexpr std::uint32_t all_hooks = hook_bit(hook_kind::mail) | hook_bit(hook_kind::rcpt) | hook_bit(hook_kind::vrfy);

TEST(engine_control_chars, attack_line_is_553_and_nothing_is_stored)
{
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        conversation c(hooks);
        // RCPT after the refused MAIL: there is no transaction.
        EXPECT_EQ(c.run("EHLO c\r\n" + attack + "RCPT TO:<d@e.f>\r\n"),
                  std::string(ehlo_reply) + std::string(malformed) + "503 Error: need MAIL command\r\n");
        EXPECT_TRUE(c.asked.empty());
        EXPECT_TRUE(c.last.mail_from.empty());
    }
}

TEST(engine_control_chars, every_control_character_in_a_mail_address_is_553)
{
    std::vector<std::string> lines;
    for (int b = 0; b < 0x20; ++b) {
        if (b == '\n') continue;  // ends the command line: tested below as the line end
        const std::string ch(1, static_cast<char>(b));
        lines.push_back("MAIL FROM:<\"a" + ch + "b\"@c.example>");  // quoted: Python keeps every one
    }
    lines.push_back("MAIL FROM:<\"a\x7f"
                    "b\"@c.example>");
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        for (const std::string& line : lines) {
            conversation c(hooks);
            EXPECT_EQ(c.run("EHLO c\r\n" + line + "\r\nMAIL FROM:<a@b.c>\r\n"),
                      std::string(ehlo_reply) + std::string(malformed) + std::string(ok))
                << line;
            // The next MAIL is served as if nothing happened, and only it reached the hook.
            EXPECT_EQ(c.last.mail_from, "a@b.c");
            const std::vector<std::string> asked =
                hooks != 0 ? std::vector<std::string>{"mail a@b.c"} : std::vector<std::string>{};
            EXPECT_EQ(c.asked, asked) << line;
        }
    }
}

TEST(engine_control_chars, nul_del_and_tab_in_unquoted_addresses)
{
    const std::vector<std::string> lines = {
        "MAIL FROM:<a\0b@c.example>"s,  // NUL in an atom: atext to Python
        "MAIL FROM:a\0b@c.example"s,    // the same without angle brackets
        "MAIL FROM:<a@c\0d.example>"s,  // in the domain
        "MAIL FROM:<a\x7f"
        "b@c.example>",
        "MAIL FROM:<\"a\tb\"@c.example>",           // TAB: whitespace, but RFC 5321 has none in a path
        "MAIL FROM:<=?utf-8?q?a=0Db?=@c.example>",  // an encoded word decoding to a CR
        "MAIL FROM:<=?utf-8?q?a=00b?=@c.example>",  // ... and to a NUL
        "MAIL FROM:<a@[1.2.3\x01.4]>",              // in a domain literal
    };
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        for (const std::string& line : lines) {
            conversation c(hooks);
            EXPECT_EQ(c.run("HELO c\r\n" + line + "\r\n"), "250 mx.test\r\n" + std::string(malformed)) << line;
            EXPECT_TRUE(c.asked.empty()) << line;
        }
    }
}

TEST(engine_control_chars, rcpt_with_a_cr_and_no_lf_is_553)
{
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        conversation c(hooks);
        EXPECT_EQ(c.run("EHLO c\r\nMAIL FROM:<a@b.c>\r\n"
                        "RCPT TO:<\"x\rX-Spam-Flag: YES\"@b.example>\r\n"
                        "RCPT TO:<=?utf-8?q?d=0De?=@f.example>\r\n"
                        "RCPT TO:d\0e@f.example\r\n"s
                        "RCPT TO:<d@e.f>\r\n"),
                  std::string(ehlo_reply) + std::string(ok) + std::string(malformed) + std::string(malformed) +
                      std::string(malformed) + std::string(ok));
        EXPECT_EQ(c.last.rcpt_tos, std::vector<std::string>{"d@e.f"});
        const std::vector<std::string> asked =
            hooks != 0 ? std::vector<std::string>{"mail a@b.c", "rcpt d@e.f"} : std::vector<std::string>{};
        EXPECT_EQ(c.asked, asked);
    }
}

TEST(engine_control_chars, vrfy_answers_could_not_vrfy_without_the_control_bytes)
{
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        conversation c(hooks);
        EXPECT_EQ(c.run("VRFY <\"x\rX-Foo: y\"@b.example>\r\n"
                        "VRFY a\0b@c.example\r\n"s
                        "VRFY \"a\tb\"@c.example\r\n"
                        "VRFY a\x7f"
                        "b@c.example\r\n"),
                  // The argument is echoed as aiosmtpd does, with each control byte but HT as '?'.
                  "502 Could not VRFY <\"x?X-Foo: y\"@b.example>\r\n"
                  "502 Could not VRFY a?b@c.example\r\n"
                  "502 Could not VRFY \"a\tb\"@c.example\r\n"
                  "502 Could not VRFY a?b@c.example\r\n");
        EXPECT_TRUE(c.asked.empty());
    }
    // A plain address still reaches the VRFY hook (or gets 252 without one).
    conversation plain(all_hooks);
    plain.run("VRFY a@b.c\r\n");
    EXPECT_EQ(plain.asked, std::vector<std::string>{"vrfy a@b.c"});
    EXPECT_EQ(conversation().run("VRFY a@b.c\r\n"),
              "252 Cannot VRFY user, but will accept message and attempt delivery\r\n");
}

TEST(engine_control_chars, a_parameter_with_a_control_character_is_the_verbs_syntax_error)
{
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        conversation c(hooks);
        EXPECT_EQ(c.run("EHLO c\r\n"
                        "MAIL FROM:<a@b.c> SIZE=1\x01\r\n"         // aiosmtpd: the same 501 (not digits)
                        "MAIL FROM:<a@b.c> X=\x01\r\n"             // aiosmtpd: 555 unknown
                        "MAIL FROM:<a@b.c> BODY=8BIT\x7fMIME\r\n"  // aiosmtpd: 501 BODY
                        "MAIL FROM:<a@b.c> SIZE=1\0\r\n"s
                        "MAIL FROM:<a@b.c> SIZE=10\r\n"
                        "RCPT TO:<d@e.f> X=\x02\r\n"),  // aiosmtpd: 555 unknown
                  std::string(ehlo_reply) + std::string(syntax_mail) + std::string(syntax_mail) +
                      std::string(syntax_mail) + std::string(syntax_mail) + std::string(ok) + std::string(syntax_rcpt));
        EXPECT_EQ(c.last.mail_options, std::vector<std::string>{"SIZE=10"});
        EXPECT_TRUE(c.last.rcpt_tos.empty());
        const std::vector<std::string> asked =
            hooks != 0 ? std::vector<std::string>{"mail a@b.c"} : std::vector<std::string>{};
        EXPECT_EQ(c.asked, asked);
    }
}

TEST(engine_control_chars, check_order_is_aiosmtpds)
{
    conversation c;
    EXPECT_EQ(c.run("EHLO c\r\n"
                    // Address before parameters.
                    "MAIL FROM:<a\x01"
                    "b@c> SIZE=1\x01\r\n"
                    // Both fine: a transaction is open now.
                    "MAIL FROM:<a@b.c>\r\n"
                    // A malformed address comes before "nested MAIL" ...
                    "MAIL FROM:<a\x01"
                    "b@c>\r\n"
                    // ... and "nested MAIL" before the parameters.
                    "MAIL FROM:<a@b.c> SIZE=1\x01\r\n"),
              std::string(ehlo_reply) + std::string(malformed) + std::string(ok) + std::string(malformed) +
                  "503 Error: nested MAIL command\r\n");
    // Without EHLO, parameters are a syntax error before they are looked at, an address is not.
    conversation h;
    EXPECT_EQ(h.run("HELO c\r\nMAIL FROM:<a@b.c> SIZE=1\x01\r\nMAIL FROM:<a\x01"
                    "b@c> SIZE=1\r\n"),
              "250 mx.test\r\n501 Syntax: MAIL FROM: <address>\r\n" + std::string(malformed));
    // Before HELO the sequence error wins, as for any MAIL.
    EXPECT_EQ(conversation().run(attack), "503 Error: send HELO first\r\n");
}

TEST(engine_control_chars, whitespace_between_address_and_parameters_still_separates)
{
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        conversation c(hooks);
        EXPECT_EQ(c.run("EHLO c\r\n"
                        "MAIL FROM:\x1c<a@b.c>\tSIZE=10\rBODY=8BITMIME\x1f\r\n"  // a CR in mid-line: whitespace
                        "RCPT TO:<d@e.f>\r\r\n"),                                // trailing CRs: stripped
                  std::string(ehlo_reply) + std::string(ok) + std::string(ok));
        EXPECT_EQ(c.last.mail_from, "a@b.c");
        EXPECT_EQ(c.last.mail_options, (std::vector<std::string>{"SIZE=10", "BODY=8BITMIME"}));
        EXPECT_EQ(c.last.rcpt_tos, std::vector<std::string>{"d@e.f"});
    }
}

TEST(engine_control_chars, utf8_addresses_with_smtputf8_are_unchanged)
{
    for (const std::uint32_t hooks : {0u, all_hooks}) {
        conversation c(hooks, true);
        EXPECT_EQ(c.run("EHLO c\r\n"
                        "MAIL FROM:<j\xc3\xb6rg@ex\xc3\xa4mple.com> SMTPUTF8\r\n"
                        "RCPT TO:<\"\xe2\x82\xac \xe6\x97\xa5\"@b.example>\r\n"
                        "RCPT TO:<\xff\xfe@b.example>\r\n"),  // not UTF-8: kept as bytes, as Python's surrogateescape
                  std::string(ehlo_reply_utf8) + std::string(ok) + std::string(ok) + std::string(ok));
        EXPECT_EQ(c.last.mail_from, "j\xc3\xb6rg@ex\xc3\xa4mple.com");
        EXPECT_EQ(c.last.rcpt_tos,
                  (std::vector<std::string>{"\"\xe2\x82\xac \xe6\x97\xa5\"@b.example", "\xff\xfe@b.example"}));
        EXPECT_TRUE(c.last.smtp_utf8);
    }
}

}  // namespace
}  // namespace asiosmtpd::proto
