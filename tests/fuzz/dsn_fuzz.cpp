// SPDX-License-Identifier: Apache-2.0
// dsn_fuzz: the DSN parameter checks (proto/dsn.hpp) against arbitrary parameters, and the
// SDK's parser (asiosmtpd/dsn.hpp) against what the host accepts.
//
// Input: byte 0 bit 0 = RCPT (else MAIL); the rest is the parameter text, split on spaces into
// tokens whose keys are upper-cased (as the engine hands them over; the values of ENVID and
// ORCPT keep their case).
//
// Checked: no crash, sanitizer report or exception; deterministic; a value a check accepts is
// xtext that decodes to printable ASCII within the length limits; the host's and the SDK's
// xtext decoders agree on every value, and encode() then decode() gives back any bytes; when
// the host accepts a command's parameters, the SDK parses exactly them: RET/ENVID or
// NOTIFY/ORCPT present as given, decoded the same, and re-emitted (mail_params(), rcpt_params())
// as the client sent them but for NOTIFY's order and case.
#include "fuzz_check.hpp"
#include "fuzz_input.hpp"
#include "proto/dsn.hpp"

#include <asiosmtpd/dsn.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace host = asiosmtpd::proto::dsn;
namespace sdk = asiosmtpd::sdk::dsn;

bool printable(std::string_view s)
{
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

std::vector<std::string> tokens_of(std::string_view text)
{
    std::vector<std::string> out;
    std::size_t i = 0;
    while (i < text.size()) {
        const std::size_t end = std::min(text.find(' ', i), text.size());
        if (end > i) {
            std::string t(text.substr(i, end - i));
            const std::size_t eq = t.find('=');
            const std::size_t upto = eq == std::string::npos ? t.size() : eq;
            for (std::size_t k = 0; k < upto; ++k)
                if (t[k] >= 'a' && t[k] <= 'z') t[k] = static_cast<char>(t[k] - 'a' + 'A');
            if (eq != std::string::npos && !host::keeps_case(std::string_view(t).substr(0, eq)))
                for (std::size_t k = eq; k < t.size(); ++k)
                    if (t[k] >= 'a' && t[k] <= 'z') t[k] = static_cast<char>(t[k] - 'a' + 'A');
            out.push_back(std::move(t));
        }
        i = end + 1;
    }
    return out;
}

// The value of the last token with `key`, or nothing.
const std::string* last_value(const std::vector<std::string>& tokens, std::string_view key, std::string& out)
{
    const std::string* found = nullptr;
    for (const std::string& t : tokens)
        if (t.size() > key.size() && t.compare(0, key.size(), key) == 0 && t[key.size()] == '=') {
            out = t.substr(key.size() + 1);
            found = &out;
        }
    return found;
}

void check_value(std::string_view v)
{
    const auto ours = host::decode_xtext(v);
    const auto theirs = sdk::xtext_decode(v);
    ASIOSMTPD_FUZZ_CHECK(ours == theirs, "host and SDK decode xtext alike");
    ASIOSMTPD_FUZZ_CHECK(ours.has_value() == host::is_xtext(v), "decode_xtext answers exactly for xtext");
    ASIOSMTPD_FUZZ_CHECK(sdk::xtext_decode(sdk::xtext_encode(v)) == std::string(v), "encode, decode: the same bytes");
    ASIOSMTPD_FUZZ_CHECK(host::is_xtext(sdk::xtext_encode(v)), "encode gives xtext");
    if (host::valid_envid(v)) {
        ASIOSMTPD_FUZZ_CHECK(v.size() <= host::envid_max && ours && printable(*ours), "a valid ENVID");
    }
    if (host::valid_orcpt(v)) {
        const auto semi = v.find(';');
        ASIOSMTPD_FUZZ_CHECK(v.size() <= host::orcpt_max && semi != std::string_view::npos && semi > 0,
                             "a valid ORCPT has a type");
        const auto address = host::decode_xtext(v.substr(semi + 1));
        ASIOSMTPD_FUZZ_CHECK(address && !address->empty() && printable(*address), "a valid ORCPT's address");
    }
    if (host::valid_notify(v)) {
        const unsigned bits = sdk::parse_notify(v);
        ASIOSMTPD_FUZZ_CHECK(bits != 0, "the SDK reads a valid NOTIFY");
        ASIOSMTPD_FUZZ_CHECK(bits == sdk::notify_never || (bits & sdk::notify_never) == 0, "NEVER alone");
        ASIOSMTPD_FUZZ_CHECK(sdk::parse_notify(sdk::notify_text(bits)) == bits, "NOTIFY text round trip");
        ASIOSMTPD_FUZZ_CHECK(host::valid_notify(sdk::notify_text(bits)), "the SDK writes a valid NOTIFY");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    asiosmtpd::fuzz::byte_reader in(data, size);
    const bool rcpt = (in.byte() & 0x01) != 0;
    const std::string_view text = in.rest();
    const std::vector<std::string> tokens = tokens_of(text);

    for (const std::string& t : tokens) {
        const auto eq = t.find('=');
        check_value(eq == std::string::npos ? std::string_view(t) : std::string_view(t).substr(eq + 1));
    }
    check_value(text);

    const host::problem p = rcpt ? host::check_rcpt(tokens) : host::check_mail(tokens);
    ASIOSMTPD_FUZZ_CHECK(p == (rcpt ? host::check_rcpt(tokens) : host::check_mail(tokens)), "deterministic");
    if (p != host::problem::none) return 0;

    std::string a, b;
    if (!rcpt) {
        const sdk::mail_request m = sdk::parse_mail(tokens);
        const std::string* ret = last_value(tokens, "RET", a);
        const std::string* envid = last_value(tokens, "ENVID", b);
        ASIOSMTPD_FUZZ_CHECK((m.ret != sdk::ret_type::unset) == (ret != nullptr), "RET as given");
        ASIOSMTPD_FUZZ_CHECK(m.has_envid == (envid != nullptr), "ENVID as given");
        std::vector<std::string> expected;
        if (ret) expected.push_back("RET=" + *ret);
        if (envid) {
            ASIOSMTPD_FUZZ_CHECK(m.envid == host::decode_xtext(*envid), "ENVID decoded alike");
            expected.push_back("ENVID=" + *envid);
        }
        ASIOSMTPD_FUZZ_CHECK(sdk::mail_params(m) == expected, "MAIL parameters passed on as sent");
    } else {
        const sdk::rcpt_request r = sdk::parse_rcpt(tokens);
        const std::string* notify = last_value(tokens, "NOTIFY", a);
        const std::string* orcpt = last_value(tokens, "ORCPT", b);
        ASIOSMTPD_FUZZ_CHECK((r.notify != 0) == (notify != nullptr), "NOTIFY as given");
        ASIOSMTPD_FUZZ_CHECK(r.has_orcpt == (orcpt != nullptr), "ORCPT as given");
        std::vector<std::string> expected;
        if (notify) expected.push_back("NOTIFY=" + sdk::notify_text(sdk::parse_notify(*notify)));
        if (orcpt) {
            const std::size_t semi = orcpt->find(';');
            ASIOSMTPD_FUZZ_CHECK(r.orcpt_address == host::decode_xtext(orcpt->substr(semi + 1)), "ORCPT decoded alike");
            expected.push_back("ORCPT=" + *orcpt);
        }
        ASIOSMTPD_FUZZ_CHECK(sdk::rcpt_params(r) == expected, "RCPT parameters passed on as sent");
        for (const std::string& e : expected) {
            const auto eq = e.find('=');
            const std::string_view v = std::string_view(e).substr(eq + 1);
            ASIOSMTPD_FUZZ_CHECK(e[0] == 'N' ? host::valid_notify(v) : host::valid_orcpt(v), "re-emitted valid");
        }
    }
    return 0;
}
