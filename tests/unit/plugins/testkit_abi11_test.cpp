// SPDX-License-Identifier: Apache-2.0
// The test kit's other ABI 1.1 parts: LMTP per-recipient replies (the lmtp_split fixture, with
// set_rcpt_reply and, from a worker thread, set_rcpt_reply_pending), STARTTLS and PROXY hooks
// (the scripted fixture), and the raw host table seen by a plain C-ABI probe plugin linked into
// this test: table size, DATA flags, config_dir, and the state rules of the 1.1 functions.
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string lmtp_split = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/lmtp_split.so";
const std::string scripted = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so";

tk::node hooks(std::initializer_list<std::pair<std::string, tk::node>> entries)
{
    return tk::node::map({{"hooks", tk::node::map(entries)}});
}

// ---- LMTP ------------------------------------------------------------------------------------

std::string lmtp_conversation(tk::host& h)
{
    auto s = h.open();
    EXPECT_EQ(s.cmd("HELO client.example"), "500 Error: command \"HELO\" not recognized");
    EXPECT_EQ(s.cmd("EHLO client.example"), "500 Error: command \"EHLO\" not recognized");
    EXPECT_EQ(s.cmd("LHLO client.example").substr(0, 24), "250-mx.test.example\n250-");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<good@d.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<bad@d.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<later@d.example>"), "250 OK");
    const std::string r = s.data("Subject: t\r\n\r\nhi\r\n");
    EXPECT_EQ(s.data_replies().size(), 3u);
    return r;
}

TEST(testkit_lmtp, one_reply_per_recipient)
{
    tk::host h;
    h.lmtp = true;
    h.load(lmtp_split);
    EXPECT_EQ(lmtp_conversation(h), "250 OK\n"
                                    "550 5.1.1 <bad@d.example> no such user\n"
                                    "452 4.2.2 <later@d.example> mailbox full");
}

TEST(testkit_lmtp, replies_from_a_worker_thread)
{
    tk::host h;
    h.lmtp = true;
    h.load(lmtp_split, tk::node::map({{"async", true}}));
    EXPECT_EQ(lmtp_conversation(h), "250 OK\n"
                                    "550 5.1.1 <bad@d.example> no such user\n"
                                    "452 4.2.2 <later@d.example> mailbox full");
}

TEST(testkit_lmtp, smtp_has_one_reply)
{
    tk::host h;
    h.load(lmtp_split);
    auto s = h.open();
    EXPECT_EQ(s.send_mail("a@b.example", {"good@d.example", "bad@d.example"}, "hi\r\n"), "250 OK");
    EXPECT_EQ(s.data_replies(), std::vector<std::string>{"250 OK"});
}

TEST(testkit_lmtp, a_verdict_applies_to_every_recipient)
{
    tk::host h;
    h.lmtp = true;
    h.load(scripted,
           hooks({{"DATA", tk::node::map({{"verdict", "tempfail"}, {"code", 451}, {"text", "4.3.0 later"}})}}));
    auto s = h.open();
    s.cmd("LHLO client.example");
    s.cmd("MAIL FROM:<a@b.example>");
    s.cmd("RCPT TO:<x@d.example>");
    s.cmd("RCPT TO:<y@d.example>");
    EXPECT_EQ(s.data("hi\r\n"), "451 4.3.0 later\n451 4.3.0 later");
}

// ---- STARTTLS --------------------------------------------------------------------------------

TEST(testkit_tls, starttls_command)
{
    tk::host h;
    h.load(
        scripted,
        hooks({{"NOOP",
                tk::node::map({{"verdict", "accept"}, {"code", 250}, {"text", "{tls} {tls_version} {tls_cipher}"}})}}));
    auto s = h.open();
    EXPECT_EQ(s.cmd("STARTTLS"), "454 TLS not available");
    h.starttls_available = true;
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n"
                                            "250-STARTTLS\n250 HELP");
    EXPECT_EQ(s.cmd("STARTTLS now"), "501 Syntax: STARTTLS");
    EXPECT_EQ(s.cmd("NOOP"), "250 0  ");
    EXPECT_EQ(s.cmd("STARTTLS"), "220 Ready to start TLS");
    EXPECT_EQ(s.cmd("NOOP"), "250 1 TLSv1.3 TLS_AES_256_GCM_SHA384");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "503 Error: send HELO first");
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250-8BITMIME\n"
                                            "250-AUTH LOGIN PLAIN\n250 HELP");
    EXPECT_EQ(s.cmd("STARTTLS"), "503 5.5.1 Error: TLS already active");
    EXPECT_THROW(s.tls(), tk::error);
}

TEST(testkit_tls, a_starttls_veto_refuses_every_command_but_quit)
{
    tk::host h;
    h.load(scripted, hooks({{"STARTTLS", tk::node::map({{"verdict", "reject"}, {"log", "starttls {tls_version}"}})}}));
    EXPECT_EQ(h.hook_count(ASIOSMTPD_HOOK_STARTTLS), 1u);
    auto s = h.open();
    EXPECT_EQ(s.tls({"TLSv1.2", "AES128-SHA", ""}), "");
    EXPECT_TRUE(h.logged("starttls TLSv1.2"));
    EXPECT_EQ(s.cmd("EHLO client.example"), "554 Command refused due to lack of security");
    EXPECT_EQ(s.cmd("NOOP"), "554 Command refused due to lack of security");
    EXPECT_EQ(s.cmd("QUIT"), "221 Bye");
}

TEST(testkit_tls, a_closing_starttls_verdict_closes)
{
    tk::host h;
    h.load(scripted,
           hooks({{"STARTTLS",
                   tk::node::map({{"verdict", "tempfail_close"}, {"code", 421}, {"text", "4.7.0 no thanks"}})}}));
    auto s = h.open();
    EXPECT_EQ(s.tls(), "421 4.7.0 no thanks");
    EXPECT_TRUE(s.closed());
}

TEST(testkit_tls, implicit_tls_runs_no_starttls_hook)
{
    tk::host h;
    h.load(scripted,
           hooks({{"STARTTLS", tk::node::map({{"verdict", "reject"}})},
                  {"CONNECT", tk::node::map({{"verdict", "accept"}, {"code", 220}, {"text", "tls={tls}"}})}}));
    auto s = h.open_tls();
    EXPECT_EQ(s.greeting(), "220 tls=1");
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
}

// ---- PROXY -----------------------------------------------------------------------------------

TEST(testkit_proxy, the_header_names_the_peer)
{
    tk::host h;
    h.load(scripted, hooks({{"PROXY", tk::node::map({{"log", "proxy peer={peer}:{port}"}})},
                            {"CONNECT", tk::node::map({{"verdict", "accept"}, {"code", 220}, {"text", "hi {arg}"}})}}));
    tk::proxy_header p;
    p.src_address = "203.0.113.7";
    p.src_port = 4711;
    p.dst_address = "198.51.100.1";
    p.dst_port = 25;
    auto s = h.open(p);
    EXPECT_TRUE(h.logged("proxy peer=203.0.113.7:4711"));
    EXPECT_EQ(s.greeting(), "220 hi 203.0.113.7");
}

TEST(testkit_proxy, a_refusal_closes_without_a_reply)
{
    tk::host h;
    h.load(scripted, hooks({{"PROXY", tk::node::map({{"verdict", "reject"}, {"code", 550}, {"text", "5.7.1 no"}})},
                            {"CONNECT", tk::node::map({{"log", "connect ran"}})}}));
    auto s = h.open(tk::proxy_header{});
    EXPECT_TRUE(s.closed());
    EXPECT_EQ(s.greeting(), "");
    EXPECT_FALSE(h.logged("connect ran"));
}

// ---- a raw C-ABI probe -----------------------------------------------------------------------

struct probe_state {
    const asiosmtpd_host_api* api = nullptr;
    std::string config_dir;
    std::uint32_t data_flags = 0;
    asiosmtpd_status rcpt_reply_in_rcpt = ASIOSMTPD_OK;
    asiosmtpd_status rcpt_reply_bad_index = ASIOSMTPD_OK;
    asiosmtpd_status rcpt_reply_ok = -100;
    bool rcpt_replies_in_data = true;  // probe_data tries set_rcpt_reply (a bad index costs a 451)
    asiosmtpd_status challenge_in_noop = ASIOSMTPD_OK;
    asiosmtpd_status identity_in_noop = ASIOSMTPD_OK;
    asiosmtpd_status mechanism_plain = ASIOSMTPD_OK;
    asiosmtpd_status mechanism_bad = ASIOSMTPD_OK;
    std::uint32_t info_size_full = 0;
    std::uint32_t info_size_v1_0 = 0;
};
probe_state probe;

asiosmtpd_verdict probe_rcpt(void*, asiosmtpd_call* c, const void*)
{
    probe.rcpt_reply_in_rcpt = probe.api->set_rcpt_reply(c, 0, 250, {"x", 1});
    return ASIOSMTPD_CONTINUE;
}

asiosmtpd_verdict probe_data(void*, asiosmtpd_call* c, const void* args)
{
    probe.data_flags = static_cast<const asiosmtpd_data_args*>(args)->flags;
    if (!probe.rcpt_replies_in_data) return ASIOSMTPD_CONTINUE;
    probe.rcpt_reply_bad_index = probe.api->set_rcpt_reply(c, 5, 250, {"x", 1});
    probe.rcpt_reply_ok = probe.api->set_rcpt_reply(c, 0, 250, {"2.0.0 first", 11});
    return ASIOSMTPD_CONTINUE;
}

asiosmtpd_verdict probe_noop(void*, asiosmtpd_call* c, const void*)
{
    probe.challenge_in_noop = probe.api->set_auth_challenge(c, {"x", 1});
    probe.identity_in_noop = probe.api->set_auth_identity(c, {"x", 1});
    asiosmtpd_session_info info{};
    info.struct_size = sizeof info;
    probe.api->session_info(c, &info);
    probe.info_size_full = info.struct_size;
    asiosmtpd_session_info old{};
    old.struct_size =
        static_cast<std::uint32_t>(offsetof(asiosmtpd_session_info, authenticated) + sizeof(std::int32_t));
    probe.api->session_info(c, &old);
    probe.info_size_v1_0 = old.struct_size;
    return ASIOSMTPD_CONTINUE;
}

asiosmtpd_verdict probe_mech(void*, asiosmtpd_call*, const void*) { return ASIOSMTPD_REJECT; }

asiosmtpd_status probe_create(const asiosmtpd_host_api* api, asiosmtpd_ctx*, asiosmtpd_registrar* reg, void** out,
                              asiosmtpd_errbuf*)
{
    probe.api = api;
    const asiosmtpd_str dir = api->config_dir(reg);
    probe.config_dir.assign(dir.data, dir.size);
    api->register_hook(reg, ASIOSMTPD_HOOK_RCPT, &probe_rcpt);
    api->register_hook(reg, ASIOSMTPD_HOOK_DATA, &probe_data);
    api->register_hook(reg, ASIOSMTPD_HOOK_NOOP, &probe_noop);
    probe.mechanism_plain = api->register_auth_mechanism(reg, {"plain", 5}, &probe_mech);
    probe.mechanism_bad = api->register_auth_mechanism(reg, {"X MECH", 6}, &probe_mech);
    *out = &probe;
    return ASIOSMTPD_OK;
}

void probe_destroy(void*) {}

const asiosmtpd_plugin_descriptor* probe_entry()
{
    static const asiosmtpd_plugin_descriptor d = {
        sizeof d, ASIOSMTPD_ABI_MAJOR, 1, 0, "probe", "1.0", "ABI 1.1 probe", &probe_create, &probe_destroy};
    return &d;
}

TEST(testkit_abi11, the_table_and_the_state_rules)
{
    probe = probe_state{};
    tk::host h;
    h.config_dir = "/etc/asiosmtpd";
    h.add(&probe_entry);
    EXPECT_EQ(h.api()->struct_size, sizeof(asiosmtpd_host_api));
    EXPECT_EQ(h.api()->abi_minor, ASIOSMTPD_ABI_MINOR);
    EXPECT_EQ(probe.config_dir, "/etc/asiosmtpd");
    EXPECT_EQ(h.api()->config_dir(nullptr).size, 0u);
    EXPECT_EQ(probe.mechanism_plain, ASIOSMTPD_E_CONFLICT);
    EXPECT_EQ(probe.mechanism_bad, ASIOSMTPD_E_INVALID);
    EXPECT_EQ(h.hook_count(ASIOSMTPD_HOOK_PROXY), 0u);

    auto s = h.open();
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
    EXPECT_EQ(probe.challenge_in_noop, ASIOSMTPD_E_STATE);
    EXPECT_EQ(probe.identity_in_noop, ASIOSMTPD_E_STATE);
    EXPECT_EQ(probe.info_size_full, sizeof(asiosmtpd_session_info));
    EXPECT_EQ(probe.info_size_v1_0, offsetof(asiosmtpd_session_info, authenticated) + sizeof(std::int32_t));
    // The reply for recipient 5 of 1 was refused and never replaced: as with set_reply(), the
    // verdict (CONTINUE) became a plugin error.
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "hi\r\n"), "451 4.3.0 Error: internal");
    EXPECT_TRUE(h.logged("event=plugin_error hook=DATA reason=\"set_rcpt_reply() refused: recipient 5: the "
                         "transaction has 1 recipient\""));
    EXPECT_EQ(probe.rcpt_reply_in_rcpt, ASIOSMTPD_E_STATE);
    EXPECT_EQ(probe.rcpt_reply_bad_index, ASIOSMTPD_E_INVALID);
    EXPECT_EQ(probe.rcpt_reply_ok, ASIOSMTPD_OK);
    EXPECT_EQ(probe.data_flags, ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF);
    EXPECT_EQ(h.api()->set_rcpt_reply_pending(0, 0, 250, {"x", 1}), ASIOSMTPD_E_INVALID);
}

TEST(testkit_abi11, data_flags_follow_decode_data)
{
    probe = probe_state{};
    probe.rcpt_replies_in_data = false;
    tk::host h;
    h.decode_data = true;
    h.add(&probe_entry);
    auto s = h.open();
    EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250 HELP");  // no 8BITMIME
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "hi\r\n"), "250 OK");
    EXPECT_EQ(probe.data_flags, ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF | ASIOSMTPD_DATA_DECODED);
    EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "h\xc3\xa9\r\n"), "500 Error: strict ASCII mode");

    h.enable_smtputf8 = true;
    auto u = h.open();
    EXPECT_EQ(u.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n250-SMTPUTF8\n250 HELP");
    EXPECT_EQ(u.send_mail("a@b.example", {"c@d.example"}, "h\xc3\xa9\r\n"), "250 OK");
    EXPECT_EQ(probe.data_flags,
              ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF | ASIOSMTPD_DATA_DECODED | ASIOSMTPD_DATA_UTF8);
}

}  // namespace
