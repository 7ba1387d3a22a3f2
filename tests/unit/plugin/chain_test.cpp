// SPDX-License-Identifier: Apache-2.0
// The hook chain (plugin/chain.hpp), driven as the server's session drives it but without
// sockets: real plugin files (the scripted fixture), config order, suspended calls completed
// from another thread or never, refused replies, and what each plugin's answer reports.
#include "plugin/chain.hpp"
#include "plugin/loader.hpp"

#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace asiosmtpd::plugin {
namespace {

namespace fs = std::filesystem;

const fs::path fixtures = ASIOSMTPD_TEST_PLUGIN_DIR;

std::shared_ptr<const generation> load_yaml(const std::string& yaml)
{
    return load(config::parse("server: {hostname: mx.test}\n" + yaml, "test.yaml", fixtures));
}

class test_session : public session_view, public chain_events {
public:
    // The engine keeps a reference to its settings: the session owns them (as the server's
    // listener context does).
    explicit test_session(proto::settings s) : settings_(std::move(s)), engine_(settings_) { engine_.start(); }
    std::uint64_t session_id() const noexcept override { return 9; }
    const proto::engine& smtp() const noexcept override { return engine_; }
    std::string_view peer_address() const noexcept override { return "192.0.2.7"; }
    std::uint16_t peer_port() const noexcept override { return 2525; }

    struct answer {
        std::string plugin, hook;
        proto::verdict verdict;
        std::string why;
    };
    void answered(const instance& plugin, std::string_view hook, std::chrono::steady_clock::duration,
                  const proto::hook_result& r, std::string_view why) override
    {
        answers.push_back({plugin.key, std::string(hook), r.verdict, std::string(why)});
    }
    void host_failed(std::string_view hook, std::string_view why) override
    {
        answers.push_back({"host", std::string(hook), proto::verdict::error, std::string(why)});
    }

    proto::settings settings_;
    proto::engine engine_;
    std::vector<answer> answers;
};

proto::hook_request rcpt_request(std::string_view address)
{
    proto::hook_request r;
    r.kind = proto::hook_kind::rcpt;
    r.argument = address;
    r.has_argument = true;
    return r;
}

// Wait (bounded) until the suspended call is done, as the session's timer wait would.
bool wait_done(const chain& c, std::chrono::milliseconds limit)
{
    std::mutex m;
    std::condition_variable cv;
    bool woken = false;
    {
        const std::lock_guard guard(c.pending()->lock);
        if (c.pending()->done) return true;
        c.pending()->notify = [&] {
            const std::lock_guard g(m);
            woken = true;
            cv.notify_all();
        };
    }
    std::unique_lock lock(m);
    const bool done = cv.wait_for(lock, limit, [&] { return woken; });
    const std::lock_guard guard(c.pending()->lock);
    c.pending()->notify = nullptr;
    return done;
}

TEST(chain, plugins_run_in_config_order_until_one_decides)
{
    const auto gen = load_yaml(R"(plugins:
  - {path: scripted.so, config: {hooks: {RCPT: {verdict: continue}}}}
  - {path: scripted.so, config: {hooks: {RCPT: {verdict: reject, code: 550, text: "5.1.1 no {arg}"}}}}
  - {path: scripted.so, config: {hooks: {RCPT: {verdict: accept}}}}
)");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    chain c(*gen, req, s, s);
    EXPECT_FALSE(c.run());
    const proto::hook_result r = c.take_result();
    EXPECT_EQ(r.verdict, proto::verdict::reject);
    EXPECT_EQ(r.code, 550);
    EXPECT_EQ(r.text, "5.1.1 no x@y.example");
    EXPECT_EQ(c.decided_by(), "scripted");
    ASSERT_EQ(s.answers.size(), 2u);  // the third plugin is never asked
    EXPECT_EQ(s.answers[0].plugin, "plugins[0]");
    EXPECT_EQ(s.answers[0].verdict, proto::verdict::none);
    EXPECT_EQ(s.answers[1].hook, "RCPT");
}

TEST(chain, no_plugin_with_the_hook_is_the_default)
{
    const auto gen = load_yaml("plugins: [{path: scripted.so, config: {hooks: {MAIL: {verdict: reject}}}}]\n");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    chain c(*gen, req, s, s);
    EXPECT_FALSE(c.run());
    EXPECT_EQ(c.take_result().verdict, proto::verdict::none);
    EXPECT_TRUE(s.answers.empty());
    EXPECT_EQ(c.decided_by(), "");
}

TEST(chain, a_call_completed_from_another_thread_resumes_the_chain)
{
    const auto gen = load_yaml(R"(plugins:
  - {path: scripted.so, config: {hooks: {RCPT: {verdict: continue, delay_ms: 20}}}}
  - {path: scripted.so, config: {hooks: {RCPT: {verdict: tempfail, code: 451, text: "4.7.1 later", delay_ms: 20}}}}
)");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    chain c(*gen, req, s, s);
    ASSERT_TRUE(c.run());  // the first plugin suspended
    EXPECT_EQ(c.timeout(), std::chrono::seconds(30));
    ASSERT_TRUE(wait_done(c, std::chrono::seconds(5)));
    ASSERT_TRUE(c.resume("not used: it completed"));  // on to the second, which suspends too
    ASSERT_TRUE(wait_done(c, std::chrono::seconds(5)));
    EXPECT_FALSE(c.resume("not used"));
    const proto::hook_result r = c.take_result();
    EXPECT_EQ(r.verdict, proto::verdict::tempfail);
    EXPECT_EQ(r.text, "4.7.1 later");
    ASSERT_EQ(s.answers.size(), 2u);
    EXPECT_EQ(s.answers[1].plugin, "plugins[1]");
}

TEST(chain, a_call_never_completed_is_a_plugin_error_and_its_token_is_gone)
{
    const auto gen = load_yaml("plugins: [{path: scripted.so, config: {hooks: {RCPT: {verdict: pending_never}}}}]\n");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    chain c(*gen, req, s, s);
    ASSERT_TRUE(c.run());
    const auto pending = c.pending();
    EXPECT_FALSE(c.resume("did not complete within 5 ms"));
    EXPECT_EQ(c.take_result().verdict, proto::verdict::error);
    ASSERT_EQ(s.answers.size(), 1u);
    EXPECT_EQ(s.answers[0].why, "did not complete within 5 ms");
    EXPECT_EQ(s.answers[0].verdict, proto::verdict::error);
}

TEST(chain, a_verdict_after_a_refused_reply_is_a_plugin_error)
{
    const auto gen = load_yaml(R"(plugins:
  - {path: scripted.so, config: {hooks: {RCPT: {verdict: reject, code: 600, text: "nope"}}}}
)");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    chain c(*gen, req, s, s);
    EXPECT_FALSE(c.run());
    EXPECT_EQ(c.take_result().verdict, proto::verdict::error);
    ASSERT_EQ(s.answers.size(), 1u);
    EXPECT_EQ(s.answers[0].why, "set_reply() refused: reply code 600 is outside 200..599");
}

TEST(chain, a_refused_completion_is_a_plugin_error_with_its_reason)
{
    const auto gen = load_yaml(R"(plugins:
  - {path: scripted.so, config: {hooks: {RCPT: {verdict: accept, code: 550, text: "5.0.0 x", thread: true}}}}
)");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    chain c(*gen, req, s, s);
    ASSERT_TRUE(c.run());
    ASSERT_TRUE(wait_done(c, std::chrono::seconds(5)));
    EXPECT_FALSE(c.resume("not used"));
    EXPECT_EQ(c.take_result().verdict, proto::verdict::error);
    ASSERT_EQ(s.answers.size(), 1u);
    EXPECT_EQ(s.answers[0].why, "complete() refused: ACCEPT with reply code 550");
}

TEST(chain, pending_without_suspend_is_a_plugin_error)
{
    const auto gen =
        load_yaml("plugins: [{path: scripted.so, config: {hooks: {RCPT: {verdict: pending_no_suspend}}}}]\n");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    chain c(*gen, req, s, s);
    EXPECT_FALSE(c.run());
    EXPECT_EQ(c.take_result().verdict, proto::verdict::error);
    EXPECT_EQ(s.answers.at(0).why, "returned PENDING without suspend()");
}

TEST(chain, a_message_piece_goes_on_after_accept_and_stops_at_a_refusal)
{
    const auto gen = load_yaml(R"(plugins:
  - {path: scripted.so, config: {hooks: {DATA_CHUNK: {verdict: accept}}}}
  - {path: scripted.so, config: {hooks: {DATA_CHUNK: {verdict: reject, code: 554, text: "5.6.0 enough"}}}}
)");
    test_session s{proto::settings{}};
    proto::hook_request req;
    req.kind = proto::hook_kind::data_chunk;
    req.content = "Subject: x\r\n\r\nbody\r\n";
    req.content_size = req.content.size();
    chain c(*gen, req, s, s);
    EXPECT_FALSE(c.run());
    ASSERT_EQ(s.answers.size(), 2u);  // ACCEPT passed the piece on
    EXPECT_EQ(s.answers[0].verdict, proto::verdict::accept);
    const proto::hook_result r = c.take_result();
    EXPECT_EQ(r.verdict, proto::verdict::reject);
    EXPECT_EQ(r.code, 554);
}

TEST(chain, an_abandoned_call_lets_go_of_its_pending_call)
{
    // The client left while the call was suspended: nothing may wake the session any more,
    // and the plugin's completion finds its call gone (its thread completes after 100 ms).
    const auto gen =
        load_yaml("plugins: [{path: scripted.so, config: {hooks: {RCPT: {verdict: accept, delay_ms: 100}}}}]\n");
    test_session s{proto::settings{}};
    const auto req = rcpt_request("x@y.example");
    std::shared_ptr<pending_call> pending;
    {
        chain c(*gen, req, s, s);
        ASSERT_TRUE(c.run());
        pending = c.pending();
        {
            const std::lock_guard guard(pending->lock);
            pending->notify = [] { ADD_FAILURE() << "woken after abandon()"; };
        }
        c.abandon();
        EXPECT_EQ(c.pending(), nullptr);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const std::lock_guard guard(pending->lock);
    EXPECT_FALSE(pending->done);  // complete() answered E_GONE and filled nothing
    EXPECT_TRUE(s.answers.empty());
}

TEST(verdicts, one_check_for_returned_and_completed_verdicts)
{
    EXPECT_EQ(verdict_problem(42, 0, {}, false), "unknown verdict 42");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_ACCEPT, 550, "x", false), "ACCEPT with reply code 550");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_ACCEPT, 354, "x", false), "");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_REJECT_CLOSE, 421, "x", false), "REJECT with reply code 421");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_TEMPFAIL_CLOSE, 554, "x", false), "TEMPFAIL with reply code 554");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_CONTINUE, 250, "ignored", false), "");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_CONTINUE, 600, "bad", false), "reply code 600 is outside 200..599");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_AUTH_CHALLENGE, 0, "x", false), "AUTH_CHALLENGE outside an AUTH mechanism");
    EXPECT_EQ(verdict_problem(ASIOSMTPD_AUTH_CHALLENGE, 0, std::string(701, 'x'), true),
              "AUTH challenge of 701 bytes (at most 700)");
    std::string why;
    EXPECT_EQ(judge(ASIOSMTPD_AUTH_CHALLENGE, 0, {}, true, {}, why).verdict, proto::verdict::challenge);
    EXPECT_EQ(judge(ASIOSMTPD_REJECT, 550, "5.0.0 x", false, "set_reply() refused: y", why).verdict,
              proto::verdict::error);
    EXPECT_EQ(why, "set_reply() refused: y");
}

TEST(hook_names, one_table_for_logs_and_metrics)
{
    EXPECT_EQ(hook_label(ASIOSMTPD_HOOK_DATA_CHUNK), "DATA_CHUNK");
    EXPECT_EQ(hook_label(ASIOSMTPD_HOOK_SESSION_CLOSE), "SESSION_CLOSE");
    EXPECT_EQ(hook_label(static_cast<std::int32_t>(proto::hook_kind::auth_mechanism)), "AUTH");
    const asiosmtpd_command_args ping{sizeof ping, {"PING", 4}, {"", 0}, 0};
    EXPECT_EQ(hook_label(static_cast<std::int32_t>(proto::hook_kind::command), &ping), "PING");
    EXPECT_EQ(hook_label(99), "?");
    EXPECT_EQ(hook_label(0), "?");
}

}  // namespace
}  // namespace asiosmtpd::plugin
