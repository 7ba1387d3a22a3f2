// SPDX-License-Identifier: Apache-2.0
// The policy plugin's protocol (plugins/policy/protocol.hpp, header-only, compiled in here): the
// request's encoding, the answer's reader (fed whole and byte by byte, bounded, garbage), every
// action as the verdict and reply Postfix's check_table_result() would give, the `address` and
// `stages` syntax; and the plugin through the test kit (config refusals, a server that is not
// there). The plugin against real servers: tests/integration/test_policy.py.
#include "policy/protocol.hpp"

#include <asiosmtpd/reply_rules.hpp>
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

namespace pp = asiosmtpd::plugins::policy;
namespace tk = asiosmtpd::testkit;
using state = pp::response_reader::state;
using namespace std::string_literals;

std::string plugin(const char* name) { return std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/" + name + ".so"; }

TEST(policy_request, encodes_every_attribute_in_postfix_order_and_ends_with_an_empty_line)
{
    pp::request r;
    r.protocol_state = "RCPT";
    r.protocol_name = "ESMTP";
    r.helo_name = "client.example";
    r.sender = "a@b.example";
    r.recipient = "c@d.example";
    r.client_address = "192.0.2.1";
    r.client_port = "40000";
    r.instance = "1A.2.3";
    r.size = 1234;
    r.encryption_protocol = "TLSv1.3";
    r.encryption_cipher = "TLS_AES_256_GCM_SHA384";
    r.encryption_keysize = 256;
    r.server_address = "192.0.2.25";
    r.server_port = "25";
    EXPECT_EQ(pp::encode(r), "request=smtpd_access_policy\n"
                             "protocol_state=RCPT\n"
                             "protocol_name=ESMTP\n"
                             "helo_name=client.example\n"
                             "queue_id=\n"
                             "sender=a@b.example\n"
                             "recipient=c@d.example\n"
                             "recipient_count=0\n"
                             "client_address=192.0.2.1\n"
                             "client_name=unknown\n"
                             "reverse_client_name=unknown\n"
                             "instance=1A.2.3\n"
                             "sasl_method=\n"
                             "sasl_username=\n"
                             "sasl_sender=\n"
                             "size=1234\n"
                             "ccert_subject=\n"
                             "ccert_issuer=\n"
                             "ccert_fingerprint=\n"
                             "encryption_protocol=TLSv1.3\n"
                             "encryption_cipher=TLS_AES_256_GCM_SHA384\n"
                             "encryption_keysize=256\n"
                             "etrn_domain=\n"
                             "stress=\n"
                             "ccert_pubkey_fingerprint=\n"
                             "client_port=40000\n"
                             "policy_context=\n"
                             "server_address=192.0.2.25\n"
                             "server_port=25\n"
                             "\n");
}

TEST(policy_request, a_value_never_ends_its_line_early)
{
    pp::request r;
    r.helo_name = "evil\nrecipient=ceo@corp.example\r\0x"s;
    const std::string wire = pp::encode(r);
    EXPECT_NE(wire.find("helo_name=evil?recipient=ceo@corp.example??x\n"), std::string::npos) << wire;
    EXPECT_EQ(wire.find("\nrecipient=ceo"), std::string::npos);
    EXPECT_EQ(wire.find("\n\n"), wire.size() - 2);  // the one empty line is the end
}

TEST(policy_request, cipher_key_sizes)
{
    EXPECT_EQ(pp::cipher_bits("TLS_AES_256_GCM_SHA384"), 256u);
    EXPECT_EQ(pp::cipher_bits("TLS_AES_128_GCM_SHA256"), 128u);
    EXPECT_EQ(pp::cipher_bits("TLS_CHACHA20_POLY1305_SHA256"), 256u);
    EXPECT_EQ(pp::cipher_bits("ECDHE-RSA-AES128-GCM-SHA256"), 128u);
    EXPECT_EQ(pp::cipher_bits("ECDHE-ECDSA-AES256-SHA384"), 256u);
    EXPECT_EQ(pp::cipher_bits(""), 0u);
}

// The reader fed `bytes` at once, and again one byte at a time: the same result.
std::pair<state, std::string> read(const std::string& bytes)
{
    pp::response_reader whole;
    const state a = whole.feed(bytes);
    pp::response_reader bytewise;
    state b = state::more;
    for (const char ch : bytes) {
        b = bytewise.feed(std::string_view(&ch, 1));
        if (b != state::more) break;
    }
    EXPECT_EQ(a, b) << bytes;
    EXPECT_EQ(whole.action(), bytewise.action());
    EXPECT_EQ(whole.error(), bytewise.error());
    return {a, a == state::bad ? whole.error() : whole.action()};
}

TEST(policy_answer, an_action_and_an_empty_line)
{
    EXPECT_EQ(read("action=DUNNO\n\n"), std::make_pair(state::done, "DUNNO"s));
    EXPECT_EQ(read("action=DEFER_IF_PERMIT 4.2.0 Greylisted, see x\n\n"),
              std::make_pair(state::done, "DEFER_IF_PERMIT 4.2.0 Greylisted, see x"s));
    EXPECT_EQ(read("action=REJECT\r\n\r\n"), std::make_pair(state::done, "REJECT"s));              // CRLF lines too
    EXPECT_EQ(read("other=1\naction=OK\naction=REJECT\n\n"), std::make_pair(state::done, "OK"s));  // the first
    EXPECT_EQ(read("action=\n\n"), std::make_pair(state::done, ""s));
    EXPECT_EQ(read("action=DUNNO\n"), std::make_pair(state::more, "DUNNO"s));  // not ended yet
    EXPECT_EQ(read(""), std::make_pair(state::more, ""s));
}

TEST(policy_answer, garbage_is_refused_at_once)
{
    EXPECT_EQ(read("hello world\n\n").first, state::bad);
    EXPECT_EQ(read("hello world\n\n").second, "a line that is not name=value: hello world");
    EXPECT_EQ(read("=x\n\n").first, state::bad);
    EXPECT_EQ(read("foo=bar\n\n").second, "answer without action=");
    EXPECT_EQ(read("\n").second, "empty answer");
    EXPECT_EQ(read("action=" + std::string(5000, 'x')).first, state::bad);  // no newline needed to know
    std::string many;
    for (int i = 0; i < 70; ++i) many += "x" + std::to_string(i) + "=1\n";
    EXPECT_EQ(read(many).second, "answer of more than 64 lines");
    std::string big;
    for (int i = 0; i < 10; ++i) big += "x=" + std::string(4000, 'y') + "\n";
    EXPECT_EQ(read(big).second, "answer longer than 16384 bytes");
}

TEST(policy_answer, bytes_after_the_answer_are_noticed)
{
    pp::response_reader r;
    EXPECT_FALSE(r.started());
    EXPECT_EQ(r.feed("action=OK\n\naction=REJECT\n\n"), state::done);
    EXPECT_TRUE(r.started());
    EXPECT_TRUE(r.extra());
    EXPECT_EQ(r.action(), "OK");
    pp::response_reader clean;
    EXPECT_EQ(clean.feed("action=OK\n\n"), state::done);
    EXPECT_FALSE(clean.extra());
    EXPECT_EQ(clean.feed("x"), state::done);
    EXPECT_TRUE(clean.extra());
}

struct expectation {
    const char* action;
    pp::kind what;
    std::uint16_t code;
    const char* text;
    const char* name;
    pp::note extra;
};

TEST(policy_action, every_action_as_postfix_reads_it)
{
    using k = pp::kind;
    using n = pp::note;
    const expectation cases[] = {
        {"OK", k::accept, 0, "", "ok", n::none},
        {"ok trailing text is ignored", k::accept, 0, "", "ok", n::none},
        {"RELAY", k::accept, 0, "", "relay", n::none},
        {"12345", k::accept, 0, "", "12345", n::none},  // all-numerical: OK (Postfix)
        {"450", k::accept, 0, "", "450", n::none},      // a code needs a text, else it is all-numerical
        {"DUNNO", k::dunno, 0, "", "dunno", n::none},
        {"dunno whatever", k::dunno, 0, "", "dunno", n::none},
        {"REJECT", k::reject, 550, "5.7.1 Access denied", "reject", n::none},
        {"REJECT  go away ", k::reject, 550, "5.7.1 go away", "reject", n::none},
        {"REJECT 5.1.1 no such user", k::reject, 550, "5.1.1 no such user", "reject", n::none},
        {"REJECT 4.1.1 class from the code", k::reject, 550, "5.1.1 class from the code", "reject", n::none},
        {"DEFER", k::tempfail, 450, "4.7.1 Access denied", "defer", n::none},
        {"defer later", k::tempfail, 450, "4.7.1 later", "defer", n::none},
        {"DEFER_IF_PERMIT", k::tempfail, 450, "4.7.1 Service unavailable", "defer_if_permit", n::none},
        {"DEFER_IF_PERMIT 4.2.0 Greylisted, see http://x/", k::tempfail, 450, "4.2.0 Greylisted, see http://x/",
         "defer_if_permit", n::none},
        {"DEFER_IF_REJECT maybe", k::dunno, 0, "", "defer_if_reject", n::ignored},
        {"450 try later", k::tempfail, 450, "4.7.1 try later", "450", n::none},
        {"451 4.3.0 busy", k::tempfail, 451, "4.3.0 busy", "451", n::none},
        {"554 5.7.0", k::reject, 554, "5.7.0 Access denied", "554", n::none},
        {"550 4.7.0 fixed", k::reject, 550, "5.7.0 fixed", "550", n::none},
        {"421 going away", k::tempfail_close, 421, "4.7.1 going away", "421", n::none},
        {"521 5.3.2 no mail here", k::reject_close, 521, "5.3.2 no mail here", "521", n::none},
        {"INFO noted", k::dunno, 0, "", "info", n::info},
        {"WARN odd", k::dunno, 0, "", "warn", n::warn},
        {"PREPEND X-Greylist: delayed 3 seconds", k::dunno, 0, "", "prepend", n::prepend},
        {"DISCARD spam", k::dunno, 0, "", "discard", n::unsupported},
        {"HOLD", k::dunno, 0, "", "hold", n::unsupported},
        {"FILTER smtp:[127.0.0.1]:10025", k::dunno, 0, "", "filter", n::unsupported},
        {"REDIRECT x@y", k::dunno, 0, "", "redirect", n::unsupported},
        {"BCC x@y", k::dunno, 0, "", "bcc", n::unsupported},
        {"250 fine", k::unknown, 0, "", "250", n::none},
        {"FROBNICATE", k::unknown, 0, "", "frobnicate", n::none},
        {"permit_mynetworks", k::unknown, 0, "", "permit_mynetworks", n::none},
        {"", k::unknown, 0, "", "", n::none},
    };
    for (const expectation& e : cases) {
        const pp::decision d = pp::decide(e.action);
        EXPECT_EQ(d.what, e.what) << e.action;
        EXPECT_EQ(d.code, e.code) << e.action;
        EXPECT_EQ(d.text, e.text) << e.action;
        EXPECT_EQ(d.name, e.name) << e.action;
        EXPECT_EQ(d.extra, e.extra) << e.action;
        if (d.refuses()) {
            EXPECT_EQ(asiosmtpd::sdk::reply_problem(d.code, d.text, false), "") << e.action;
        }
    }
    EXPECT_EQ(pp::decide("PREPEND X-Greylist: delayed").note_text, "X-Greylist: delayed");
    EXPECT_EQ(pp::decide("INFO noted").note_text, "noted");
    EXPECT_EQ(pp::decide("DISCARD spam").note_text, "DISCARD spam");
}

TEST(policy_action, status_codes_are_recognised_as_postfix_does)
{
    EXPECT_EQ(pp::enhanced_code_length("4.2.0 Greylisted"), 5u);
    EXPECT_EQ(pp::enhanced_code_length("5.123.456\tx"), 9u);
    EXPECT_EQ(pp::enhanced_code_length("2.0.0"), 5u);
    EXPECT_EQ(pp::enhanced_code_length("3.0.0 x"), 0u);  // class 2, 4 or 5
    EXPECT_EQ(pp::enhanced_code_length("4.2 x"), 0u);
    EXPECT_EQ(pp::enhanced_code_length("4.2.0x"), 0u);
    EXPECT_EQ(pp::enhanced_code_length("4.1234.0 x"), 0u);
    EXPECT_EQ(pp::enhanced_code_length("4..0 x"), 0u);
    EXPECT_EQ(pp::enhanced_code_length("Greylisted"), 0u);
}

TEST(policy_action, server_text_always_makes_a_reply_the_host_takes)
{
    const pp::decision ctl = pp::decide("REJECT bad\x01\x7f\x1b[31mbytes\xc3\xa9");
    EXPECT_EQ(ctl.text, "5.7.1 bad???[31mbytes\xc3\xa9");
    const pp::decision long_one = pp::decide("REJECT " + std::string(600, 'x') + "\xc3\xa9");
    EXPECT_EQ(long_one.text.size(), asiosmtpd::sdk::max_reply_line);
    EXPECT_EQ(asiosmtpd::sdk::reply_problem(long_one.code, long_one.text, false), "");
    // A two-byte character straddling the limit is cut whole.
    const pp::decision straddle = pp::decide("REJECT " + std::string(499, 'x') + "\xc3\xa9");
    EXPECT_EQ(straddle.text, "5.7.1 " + std::string(499, 'x'));
}

TEST(policy_action, default_actions)
{
    EXPECT_EQ(pp::fallback_decision(pp::fallback::dunno).what, pp::kind::dunno);
    const pp::decision defer = pp::fallback_decision(pp::fallback::defer);
    EXPECT_EQ(defer.what, pp::kind::tempfail);
    EXPECT_EQ(std::to_string(defer.code) + " " + defer.text, "451 4.3.5 Server configuration problem");
    const pp::decision reject = pp::fallback_decision(pp::fallback::reject);
    EXPECT_EQ(reject.what, pp::kind::reject);
    EXPECT_EQ(std::to_string(reject.code) + " " + reject.text, "550 5.7.1 Access denied");
}

TEST(policy_config, endpoints)
{
    const pp::endpoint a = pp::parse_endpoint("inet:127.0.0.1:10023", "/etc/asiosmtpd");
    EXPECT_FALSE(a.unix_socket);
    EXPECT_EQ(a.host, "127.0.0.1");
    EXPECT_EQ(a.port, 10023);
    EXPECT_EQ(a.text(), "inet:127.0.0.1:10023");
    EXPECT_EQ(pp::parse_endpoint("inet:localhost:1", "").host, "127.0.0.1");
    const pp::endpoint six = pp::parse_endpoint("inet6:[::1]:10023", "");
    EXPECT_TRUE(six.ipv6);
    EXPECT_EQ(six.host, "::1");
    EXPECT_EQ(six.text(), "inet:[::1]:10023");
    EXPECT_TRUE(pp::parse_endpoint("inet:[2001:db8::1]:25", "").ipv6);
    EXPECT_EQ(pp::parse_endpoint("unix:/run/postgrey.sock", "/etc/asiosmtpd").path, "/run/postgrey.sock");
    EXPECT_EQ(pp::parse_endpoint("unix:policy.sock", "/etc/asiosmtpd").path, "/etc/asiosmtpd/policy.sock");
    const auto why = [](const std::string& text) {
        try {
            pp::parse_endpoint(text, "/etc");
        } catch (const std::invalid_argument& e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    EXPECT_NE(why("127.0.0.1:10023").find("unknown kind of address"), std::string::npos);
    EXPECT_NE(why("inet:127.0.0.1").find("no port"), std::string::npos);
    EXPECT_NE(why("inet:127.0.0.1:").find("must be a number"), std::string::npos);
    EXPECT_NE(why("inet:127.0.0.1:0").find("between 1 and 65535"), std::string::npos);
    EXPECT_NE(why("inet:127.0.0.1:65536").find("between 1 and 65535"), std::string::npos);
    EXPECT_NE(why("inet:127.0.0.1:99999999999").find("must be a number"), std::string::npos);
    EXPECT_NE(why("inet:policy.example:10023").find("must be an IP address"), std::string::npos);
    EXPECT_NE(why("inet:::1:10023").find("brackets"), std::string::npos);
    EXPECT_NE(why("inet6:127.0.0.1:10023").find("brackets"), std::string::npos);
    EXPECT_NE(why("inet:[127.0.0.1]:10023").find("not an IPv6 address"), std::string::npos);
    EXPECT_NE(why("inet:[::1]10023").find("[IPv6]:PORT"), std::string::npos);
    EXPECT_NE(why("unix:").find("no socket path"), std::string::npos);
    EXPECT_NE(why("unix:/" + std::string(200, 'x')).find("longer than"), std::string::npos);
}

TEST(policy_config, stages)
{
    EXPECT_EQ(pp::parse_stage("rcpt"), pp::stage::rcpt);
    EXPECT_EQ(pp::parse_stage("data"), pp::stage::data);
    EXPECT_EQ(pp::stage_config_name(pp::stage::helo), "helo");
    try {
        pp::parse_stage("queue");
        ADD_FAILURE() << "accepted";
    } catch (const std::invalid_argument& e) {
        EXPECT_STREQ(e.what(), "unknown stage 'queue' (known: connect, helo, mail, rcpt, data, vrfy)");
    }
}

TEST(policy_plugin, config_refusals_name_the_key)
{
    tk::host h;
    const std::string so = plugin("policy");
    EXPECT_NE(h.refusal(so, tk::node::map({})).find("address: required"), std::string::npos);
    EXPECT_NE(h.refusal(so, tk::node::map({{"address", "inet:x:1"}})).find("address: \"inet:x:1\""), std::string::npos);
    EXPECT_NE(h.refusal(so, tk::node::map({{"address", "inet:127.0.0.1:1"}, {"stages", tk::node::list({"mail", "x"})}}))
                  .find("stages[1]: unknown stage 'x'"),
              std::string::npos);
    EXPECT_NE(h.refusal(so, tk::node::map({{"address", "inet:127.0.0.1:1"}, {"default_action", "maybe"}}))
                  .find("default_action: expected dunno, defer or reject, got 'maybe'"),
              std::string::npos);
    EXPECT_NE(h.refusal(so, tk::node::map({{"address", "inet:127.0.0.1:1"}, {"timeout", 0}})).find("timeout:"),
              std::string::npos);
    EXPECT_NE(h.refusal(so, tk::node::map({{"address", "inet:127.0.0.1:1"}, {"policy_context", "a\nb"}}))
                  .find("policy_context:"),
              std::string::npos);
}

// A loopback port with nobody listening (bound, then closed).
int dead_port()
{
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    ::close(fd);
    return ntohs(a.sin_port);
}

TEST(policy_plugin, an_unreachable_server_takes_the_default_action)
{
    const std::string address = "inet:127.0.0.1:" + std::to_string(dead_port());
    for (const auto& [fallback, reply] : {std::pair<const char*, const char*>{"dunno", "250 OK"},
                                          {"defer", "451 4.3.5 Server configuration problem"},
                                          {"reject", "550 5.7.1 Access denied"}}) {
        tk::host h;
        h.load(plugin("policy"), tk::node::map({{"address", address}, {"default_action", fallback}, {"timeout", 2}}));
        auto s = h.open();
        s.cmd("EHLO client.example");
        EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
        EXPECT_EQ(s.cmd("RCPT TO:<c@d.example>"), reply) << fallback;
        EXPECT_TRUE(h.logged("event=policy_error")) << fallback;
    }
}

}  // namespace
