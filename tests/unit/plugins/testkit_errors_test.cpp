// SPDX-License-Identifier: Apache-2.0
// The test kit where a plugin fails, held to the server's behaviour: the CONNECT chain's
// verdicts and errors as the engine answers them (host/src/proto/engine.cpp, CONNECT in
// finish_hook; tests/integration/test_misbehaving_plugins.py ConnectHookTest), and
// per-recipient replies the host refuses (plugin.h set_rcpt_reply: the DATA verdict becomes a
// plugin error; tests/integration/test_lmtp.py RefusedRecipientReplyTest).
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

namespace {

namespace tk = asiosmtpd::testkit;
const std::string scripted = std::string(ASIOSMTPD_TEST_PLUGIN_DIR) + "/scripted.so";
const std::string internal = "451 4.3.0 Error: internal";
const std::string closing = "421 4.7.0 mx.test.example Service not available, closing transmission channel";

tk::node hooks(std::initializer_list<std::pair<std::string, tk::node>> entries)
{
    return tk::node::map({{"hooks", tk::node::map(entries)}});
}

// ---- CONNECT ----------------------------------------------------------------------------------

struct connect_case {
    const char* name;
    tk::node spec;
    std::string greeting;
    bool closed;
    std::string reason;  // the plugin_error reason; "" when none is logged
};

TEST(testkit_connect, verdicts_and_errors_answer_as_the_server)
{
    using m = tk::node;
    const std::vector<connect_case> cases = {
        {"continue", m::map({{"verdict", "continue"}}), "220 mx.test.example asiosmtpd-testkit", false, ""},
        {"accept", m::map({{"verdict", "accept"}, {"code", 220}, {"text", "hi"}}), "220 hi", false, ""},
        {"reject", m::map({{"verdict", "reject"}}), "554 5.7.1 Rejected", false, ""},
        {"reject with a reply", m::map({{"verdict", "reject"}, {"code", 554}, {"text", "5.7.1 no"}}), "554 5.7.1 no",
         false, ""},
        {"tempfail", m::map({{"verdict", "tempfail"}}), closing, true, ""},
        {"tempfail with a reply", m::map({{"verdict", "tempfail"}, {"code", 450}, {"text", "4.7.1 later"}}),
         "450 4.7.1 later", true, ""},
        {"tempfail_close", m::map({{"verdict", "tempfail_close"}}), closing, true, ""},
        {"reject_close", m::map({{"verdict", "reject_close"}}), closing, true, ""},
        {"reject_close with a reply", m::map({{"verdict", "reject_close"}, {"code", 554}, {"text", "5.7.1 bye"}}),
         "554 5.7.1 bye", true, ""},
        // Plugin errors: 421 and close (the engine's verdict::error at CONNECT).
        {"unknown verdict", m::map({{"verdict", "nonsense"}}), closing, true, "unknown verdict 42"},
        {"refused reply", m::map({{"verdict", "accept"}, {"code", 600}, {"text", "x"}}), closing, true,
         "set_reply() refused: reply code 600 is outside 200..599"},
        {"bad class", m::map({{"verdict", "reject"}, {"code", 250}, {"text", "x"}}), closing, true,
         "REJECT with reply code 250"},
        {"pending without suspend", m::map({{"verdict", "pending_no_suspend"}}), closing, true,
         "returned PENDING without suspend()"},
        {"timeout", m::map({{"verdict", "pending_never"}}), closing, true, "did not complete within 200 ms"},
        {"nonsense completion", m::map({{"verdict", "nonsense"}, {"thread", true}}), closing, true,
         "complete() refused: unknown verdict 42"},
        // A C++ handler that throws: the SDK wrapper's TEMPFAIL with 451 4.3.0, closing as any
        // CONNECT TEMPFAIL (no plugin_error: the server sees a verdict, not an error).
        {"exception", m::map({{"verdict", "throw"}}), internal, true, ""},
    };
    for (const connect_case& c : cases) {
        SCOPED_TRACE(c.name);
        tk::host h;
        h.hook_timeout = std::chrono::milliseconds(200);
        h.load(scripted, hooks({{"CONNECT", c.spec}}));
        auto s = h.open();
        EXPECT_EQ(s.greeting(), c.greeting);
        EXPECT_EQ(s.closed(), c.closed);
        if (c.reason.empty()) EXPECT_FALSE(h.logged("event=plugin_error"));
        else EXPECT_TRUE(h.logged("event=plugin_error hook=CONNECT reason=\"" + c.reason + "\""));
    }
}

TEST(testkit_connect, after_a_reject_only_quit_is_served)
{
    tk::host h;
    h.load(scripted, hooks({{"CONNECT", tk::node::map({{"verdict", "reject"}})}}));
    auto s = h.open();
    EXPECT_EQ(s.greeting(), "554 5.7.1 Rejected");
    EXPECT_EQ(s.cmd("EHLO client.example"), "503 5.5.1 Error: connection rejected, send QUIT");
    EXPECT_EQ(s.cmd("NOOP"), "503 5.5.1 Error: connection rejected, send QUIT");
    EXPECT_EQ(s.cmd("QUIT"), "221 Bye");
    EXPECT_TRUE(s.closed());
}

// ---- refused per-recipient replies ------------------------------------------------------------

tk::node reply(int index, int code, const char* text)
{
    return tk::node::map({{"index", index}, {"code", code}, {"text", text}});
}

// LMTP: MAIL, three recipients, the message; the replies after the final dot.
std::vector<std::string> lmtp_transaction(tk::host& h)
{
    auto s = h.open();
    EXPECT_EQ(s.cmd("LHLO client.example").substr(0, 4), "250-");
    EXPECT_EQ(s.cmd("MAIL FROM:<a@b.example>"), "250 OK");
    for (const char* r : {"one@x.example", "two@x.example", "three@x.example"})
        EXPECT_EQ(s.cmd(std::string("RCPT TO:<") + r + ">"), "250 OK");
    s.data("Subject: lmtp\r\n\r\nhello\r\n");
    const std::vector<std::string> replies = s.data_replies();
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");  // the session goes on
    return replies;
}

std::vector<std::string> lmtp_with(tk::host& h, tk::node data_spec)
{
    h.lmtp = true;
    h.load(scripted, hooks({{"DATA", std::move(data_spec)}}));
    return lmtp_transaction(h);
}

const std::vector<std::string> all_internal{internal, internal, internal};
std::vector<std::string> all_internal_of(std::size_t n) { return std::vector<std::string>(n, internal); }

TEST(testkit_rcpt_replies, a_refused_text_costs_every_recipient_451)
{
    for (const bool thread : {false, true}) {
        SCOPED_TRACE(thread ? "set_rcpt_reply_pending" : "set_rcpt_reply");
        const std::string origin = thread ? "set_rcpt_reply_pending" : "set_rcpt_reply";
        tk::host h;
        const auto replies = lmtp_with(
            h,
            tk::node::map({{"verdict", "accept"},
                           {"thread", thread},
                           {"rcpt_replies", tk::node::list({reply(0, 250, "2.0.0 first ok"),
                                                            reply(1, 550, "5.1.1 no{cr}{lf}250 2.0.0 smuggled")})}}));
        EXPECT_EQ(replies, all_internal);
        EXPECT_TRUE(h.logged("scripted: DATA: " + origin + "(1) returned E_INVALID"));
        EXPECT_TRUE(h.logged("event=plugin_error hook=DATA reason=\"" + origin +
                             "() refused: recipient 1: reply text has CR at byte 8\""));
    }
}

TEST(testkit_rcpt_replies, a_refused_code_or_index)
{
    struct one {
        tk::node reply;
        int index;
        std::string reason;
    };
    const std::vector<one> cases = {
        {reply(2, 199, "x"), 2, "recipient 2: reply code 199 is outside 200..599"},
        {reply(0, 550, "a{lf}b"), 0, "recipient 0: reply text has LF at byte 1 (one line only)"},
        {reply(3, 550, "5.1.1 x"), 3, "recipient 3: the transaction has 3 recipients"},
    };
    for (const one& c : cases) {
        for (const bool thread : {false, true}) {
            SCOPED_TRACE(c.reason + (thread ? " (pending)" : ""));
            const std::string origin = thread ? "set_rcpt_reply_pending" : "set_rcpt_reply";
            tk::host h;
            const auto replies = lmtp_with(
                h, tk::node::map(
                       {{"verdict", "accept"}, {"thread", thread}, {"rcpt_replies", tk::node::list({c.reply})}}));
            EXPECT_EQ(replies, all_internal);
            EXPECT_TRUE(h.logged("scripted: DATA: " + origin + "(" + std::to_string(c.index) + ") returned E_INVALID"));
            EXPECT_TRUE(h.logged("event=plugin_error hook=DATA reason=\"" + origin + "() refused: " + c.reason + "\""));
        }
    }
}

TEST(testkit_rcpt_replies, a_refusal_replaced_for_the_same_recipient_is_forgotten)
{
    for (const bool thread : {false, true}) {
        SCOPED_TRACE(thread ? "set_rcpt_reply_pending" : "set_rcpt_reply");
        tk::host h;
        const auto replies = lmtp_with(
            h, tk::node::map(
                   {{"verdict", "accept"},
                    {"thread", thread},
                    {"rcpt_replies", tk::node::list({reply(1, 550, "5.1.1 {cr}"), reply(1, 550, "5.1.1 replaced")})}}));
        EXPECT_EQ(replies, (std::vector<std::string>{"250 OK", "550 5.1.1 replaced", "250 OK"}));
        EXPECT_FALSE(h.logged("event=plugin_error"));
    }
}

TEST(testkit_rcpt_replies, a_plugin_error_drops_the_accepted_replies)
{
    for (const bool thread : {false, true}) {
        SCOPED_TRACE(thread ? "complete" : "set_reply");
        tk::host h;
        const auto replies =
            lmtp_with(h, tk::node::map({{"verdict", "accept"},
                                        {"code", 600},
                                        {"text", "x"},
                                        {"thread", thread},
                                        {"rcpt_replies", tk::node::list({reply(0, 550, "5.1.1 gone")})}}));
        EXPECT_EQ(replies, all_internal);
        EXPECT_TRUE(h.logged(std::string("event=plugin_error hook=DATA reason=\"") +
                             (thread ? "complete()" : "set_reply()") +
                             " refused: reply code 600 is outside 200..599\""));
    }
}

TEST(testkit_rcpt_replies, smtp_answers_the_data_with_451)
{
    for (const bool thread : {false, true}) {
        SCOPED_TRACE(thread ? "set_rcpt_reply_pending" : "set_rcpt_reply");
        const std::string origin = thread ? "set_rcpt_reply_pending" : "set_rcpt_reply";
        tk::host h;
        h.load(scripted,
               hooks({{"DATA", tk::node::map({{"verdict", "accept"},
                                              {"thread", thread},
                                              {"rcpt_replies", tk::node::list({reply(0, 550, "5.1.1 no{nul}")})}})}}));
        auto s = h.open();
        EXPECT_EQ(s.send_mail("a@b.example", {"one@x.example"}, "hello\r\n"), internal);
        EXPECT_EQ(s.cmd("NOOP"), "250 OK");
        EXPECT_TRUE(h.logged("event=plugin_error hook=DATA reason=\"" + origin +
                             "() refused: recipient 0: reply text has control byte 0x00 at byte 8\""));
    }
}

TEST(testkit_rcpt_replies, valid_replies_still_answer_per_recipient)
{
    for (const bool thread : {false, true}) {
        SCOPED_TRACE(thread ? "set_rcpt_reply_pending" : "set_rcpt_reply");
        tk::host h;
        const auto replies = lmtp_with(
            h, tk::node::map(
                   {{"verdict", "accept"},
                    {"thread", thread},
                    {"rcpt_replies", tk::node::list({reply(0, 250, "2.0.0 first"), reply(2, 452, "4.2.2 full")})}}));
        EXPECT_EQ(replies, (std::vector<std::string>{"250 2.0.0 first", "250 OK", "452 4.2.2 full"}));
    }
}

// A raw C-ABI probe for the orders the scripted fixture does not take: replies set in the
// hook before and after suspend() belong to the suspended call, whose complete() decides.
struct rcpt_probe_state {
    const asiosmtpd_host_api* api = nullptr;
    std::string mode;
    std::vector<asiosmtpd_status> statuses;
};
rcpt_probe_state rcpt_probe;

asiosmtpd_str s_(const char* text) { return {text, std::char_traits<char>::length(text)}; }

asiosmtpd_verdict rcpt_probe_noop(void*, asiosmtpd_call* c, const void*)
{
    asiosmtpd_token t = 0;
    rcpt_probe.api->suspend(c, &t);
    rcpt_probe.statuses.push_back(rcpt_probe.api->set_rcpt_reply_pending(t, 0, 250, s_("x")));  // not DATA
    rcpt_probe.api->complete(t, ASIOSMTPD_CONTINUE, 0, s_(""));
    return ASIOSMTPD_PENDING;
}

asiosmtpd_verdict rcpt_probe_data(void*, asiosmtpd_call* c, const void*)
{
    const asiosmtpd_host_api& api = *rcpt_probe.api;
    auto& st = rcpt_probe.statuses;
    st.push_back(api.set_rcpt_reply(c, 0, 550, s_(rcpt_probe.mode == "before" ? "5.1.1 bad\r" : "5.1.1 first")));
    asiosmtpd_token t = 0;
    api.suspend(c, &t);
    if (rcpt_probe.mode == "after") st.push_back(api.set_rcpt_reply(c, 1, 550, s_("5.1.1 bad\r")));
    if (rcpt_probe.mode == "replaced") st.push_back(api.set_rcpt_reply_pending(t, 0, 552, s_("5.2.2 replaced")));
    st.push_back(api.complete(t, ASIOSMTPD_ACCEPT, 0, s_("")));
    st.push_back(api.set_rcpt_reply(c, 1, 250, s_("2.0.0 too late")));
    return ASIOSMTPD_PENDING;
}

asiosmtpd_status rcpt_probe_create(const asiosmtpd_host_api* api, asiosmtpd_ctx*, asiosmtpd_registrar* reg, void** out,
                                   asiosmtpd_errbuf*)
{
    rcpt_probe.api = api;
    api->register_hook(reg, ASIOSMTPD_HOOK_NOOP, &rcpt_probe_noop);
    api->register_hook(reg, ASIOSMTPD_HOOK_DATA, &rcpt_probe_data);
    *out = &rcpt_probe;
    return ASIOSMTPD_OK;
}

void rcpt_probe_destroy(void*) {}

const asiosmtpd_plugin_descriptor* rcpt_probe_entry()
{
    static const asiosmtpd_plugin_descriptor d = {
        sizeof d,           ASIOSMTPD_ABI_MAJOR, 1, 0, "rcpt_probe", "1.0", "per-recipient reply probe",
        &rcpt_probe_create, &rcpt_probe_destroy};
    return &d;
}

TEST(testkit_rcpt_replies, suspended_calls_decide_at_complete)
{
    using statuses = std::vector<asiosmtpd_status>;
    constexpr asiosmtpd_status ok = ASIOSMTPD_OK;
    constexpr asiosmtpd_status invalid = ASIOSMTPD_E_INVALID;
    constexpr asiosmtpd_status gone = ASIOSMTPD_E_GONE;
    const auto run = [](const char* mode) {
        rcpt_probe = rcpt_probe_state{};
        rcpt_probe.mode = mode;
        tk::host h;
        h.lmtp = true;
        h.add(&rcpt_probe_entry);
        auto s = h.open();
        s.cmd("LHLO client.example");
        s.cmd("MAIL FROM:<a@b.example>");
        s.cmd("RCPT TO:<one@x.example>");
        s.cmd("RCPT TO:<two@x.example>");
        s.data("hi\r\n");
        return s.data_replies();
    };
    // Set before suspend(): kept for the completion.
    EXPECT_EQ(run("kept"), (std::vector<std::string>{"550 5.1.1 first", "250 OK"}));
    EXPECT_EQ(rcpt_probe.statuses, (statuses{ok, ok, gone}));
    // Refused before suspend(): the completion is a plugin error.
    EXPECT_EQ(run("before"), all_internal_of(2));
    EXPECT_EQ(rcpt_probe.statuses, (statuses{invalid, invalid, gone}));
    // Refused with set_rcpt_reply() after suspend(): the same.
    EXPECT_EQ(run("after"), all_internal_of(2));
    EXPECT_EQ(rcpt_probe.statuses, (statuses{ok, invalid, invalid, gone}));
    // Replaced from the worker's side: the later reply counts.
    EXPECT_EQ(run("replaced"), (std::vector<std::string>{"552 5.2.2 replaced", "250 OK"}));
    EXPECT_EQ(rcpt_probe.statuses, (statuses{ok, ok, ok, gone}));
}

TEST(testkit_rcpt_replies, pending_replies_only_for_data)
{
    rcpt_probe = rcpt_probe_state{};
    tk::host h;
    h.add(&rcpt_probe_entry);
    auto s = h.open();
    EXPECT_EQ(s.cmd("NOOP"), "250 OK");
    EXPECT_EQ(rcpt_probe.statuses, std::vector<asiosmtpd_status>{ASIOSMTPD_E_STATE});
}

}  // namespace
