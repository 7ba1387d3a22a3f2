// SPDX-License-Identifier: Apache-2.0
// The loader and the host API against real plugin files (tests/fixtures/plugins and the
// bundled plugins): what loads, what is refused and why, and hook calls through the ABI,
// including a hook completed later from another thread. No sockets.
#include "plugin/chain.hpp"
#include "plugin/loader.hpp"

#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <unistd.h>
#include <string>

namespace asiosmtpd::plugin {
namespace {

namespace fs = std::filesystem;

const fs::path fixtures = ASIOSMTPD_TEST_PLUGIN_DIR;

config::settings settings_from(const std::string& yaml)
{
    return config::parse("server: {hostname: mx.test}\n" + yaml, "test.yaml", fixtures);
}

std::string load_failure(const std::string& yaml)
{
    try {
        (void)load(settings_from(yaml));
    } catch (const load_error& e) {
        return e.what();
    }
    return "loaded";
}

// A session as the host API sees it, without a network.
class fake_session : public session_view {
public:
    explicit fake_session(proto::settings s) : settings_(std::move(s)), engine_(settings_) { engine_.start(); }
    std::uint64_t session_id() const noexcept override { return 7; }
    const proto::engine& smtp() const noexcept override { return engine_; }
    std::string_view peer_address() const noexcept override { return "192.0.2.1"; }
    std::uint16_t peer_port() const noexcept override { return 4242; }
    slots& data_slots() noexcept override { return slots_; }
    proto::settings settings_;  // the engine keeps a reference
    proto::engine engine_;
    slots slots_;
};

struct called {
    std::int32_t verdict;
    std::uint16_t code;
    std::string text;
};

called call_hook(const hook_entry& e, session_view& s, std::int32_t hook, const void* args)
{
    asiosmtpd_call call;
    call.session = &s;
    call.hook = hook;
    const std::int32_t v = invoke(e, call, args);
    call.active = false;
    return {v, call.code, call.text};
}

asiosmtpd_address_args address_args(std::string_view address)
{
    return asiosmtpd_address_args{sizeof(asiosmtpd_address_args), {address.data(), address.size()}, nullptr, 0};
}

TEST(loader, bundled_plugins_load_by_name)
{
    const auto gen = load(settings_from("plugins: [{name: sink}, {name: ping}, {name: debugging}]\n"));
    ASSERT_EQ(gen->instances.size(), 3u);
    EXPECT_EQ(gen->instances[0]->name, "sink");
    EXPECT_EQ(gen->instances[0]->key, "plugins[0]");
    EXPECT_EQ(gen->hooks[ASIOSMTPD_HOOK_DATA].size(), 2u);  // sink, debugging: config order
    EXPECT_EQ(gen->hooks[ASIOSMTPD_HOOK_DATA][0].owner, gen->instances[0].get());
    ASSERT_EQ(gen->commands.size(), 1u);
    EXPECT_EQ(gen->commands[0].verb, "PING");
    EXPECT_NE(gen->hook_mask() & proto::hook_bit(proto::hook_kind::command), 0u);
}

TEST(loader, unknown_name_lists_the_folders_searched)
{
    const std::string why = load_failure("plugins: [{name: nosuchplugin}]\n");
    // The line of `name:` (the loader's test prepends one line), the key, and the folders.
    EXPECT_NE(why.find("test.yaml:2: plugins[0].name: no plugin 'nosuchplugin' in "), std::string::npos) << why;
    EXPECT_NE(why.find(fs::path(ASIOSMTPD_BUILD_PLUGIN_DIR).lexically_normal().string()), std::string::npos) << why;
    EXPECT_EQ(why.find("did you mean"), std::string::npos) << why;  // nothing close
}

TEST(loader, missing_file_is_refused_with_its_path)
{
    const std::string why = load_failure("plugins: [{path: does-not-exist.so}]\n");
    EXPECT_NE(why.find((fixtures / "does-not-exist.so").string()), std::string::npos) << why;
    EXPECT_NE(why.find("no such file"), std::string::npos) << why;
}

TEST(loader, wrong_abi_major_is_refused)
{
    const std::string why = load_failure("plugins: [{path: wrong_abi.so}]\n");
    EXPECT_NE(why.find("test.yaml: plugins[0]: " + (fixtures / "wrong_abi.so").string() + ": built for plugin ABI 2."),
              std::string::npos)
        << why;
}

TEST(loader, a_library_without_the_entry_symbol_is_refused)
{
    const std::string why = load_failure("plugins: [{path: no_entry.so}]\n");
    EXPECT_NE(why.find("not an asiosmtpd plugin: no asiosmtpd_plugin_entry_v1"), std::string::npos) << why;
}

TEST(loader, a_truncated_descriptor_is_refused)
{
    const std::string why = load_failure("plugins: [{path: bad_descriptor.so}]\n");
    EXPECT_NE(why.find("descriptor"), std::string::npos) << why;
    EXPECT_NE(why.find("bad_descriptor.so"), std::string::npos) << why;
}

TEST(loader, a_plugin_refusing_its_config_names_the_reason)
{
    const std::string why = load_failure("plugins: [{path: rejects_config.so, config: {threshold: high}}]\n");
    EXPECT_NE(why.find("rejects_config.so: refused its configuration: threshold must be a number"), std::string::npos)
        << why;
    EXPECT_EQ(load_failure("plugins: [{path: rejects_config.so, config: {threshold: 5}}]\n"), "loaded");
}

TEST(loader, bundled_plugins_refuse_bad_config)
{
    EXPECT_NE(load_failure("plugins: [{name: debugging, config: {stream: printer}}]\n").find("stream"),
              std::string::npos);
    EXPECT_NE(load_failure("plugins: [{name: sink, config: {x: 1}}]\n"), "loaded");
}

// Issue 23: a plugin's config error names the file, the line and the full key.
TEST(loader, a_plugin_config_error_names_the_line_and_the_full_key)
{
    const std::string why = load_failure("plugins:\n"
                                         "  - path: scripted.so\n"
                                         "    config:\n"
                                         "      hooks:\n"
                                         "        RCPT:\n"
                                         "          verdict: reject\n"
                                         "          dealy_ms: 5\n");
    EXPECT_EQ(why, "test.yaml:8: plugins[0].config.hooks.RCPT.dealy_ms: unknown key (did you mean 'delay_ms'?)");
    // A bundled plugin, a required key missing: the line of `config:`.
    EXPECT_EQ(load_failure("plugins:\n  - name: maildir\n    config:\n      workers: 2\n"),
              "test.yaml:4: plugins[0].config.path: required");
    EXPECT_EQ(load_failure("plugins:\n  - name: maildir\n    config: {path: /tmp, wrokers: 2}\n"),
              "test.yaml:4: plugins[0].config.wrokers: unknown key (did you mean 'workers'?)");
}

TEST(loader, a_plugin_name_typo_gets_the_line_and_a_suggestion)
{
    const std::string why = load_failure("plugins:\n  - name: sink\n  - name: maildri\n");
    EXPECT_EQ(why.find("test.yaml:4: plugins[1].name: no plugin 'maildri' in "), 0u) << why;
    EXPECT_NE(why.find(" (did you mean 'maildir'?)"), std::string::npos) << why;
}

TEST(loader, a_command_conflict_names_the_plugin_that_owns_the_verb)
{
    const std::string why = load_failure("plugins:\n  - name: ping\n  - name: sink\n  - name: ping\n");
    EXPECT_NE(why.find("plugins[2]: "), std::string::npos) << why;
    EXPECT_NE(why.find("ping.so: cannot register command PING: registered by plugins[0] (ping) already"),
              std::string::npos)
        << why;
    EXPECT_EQ(why.find("refused its configuration"), std::string::npos) << why;
}

// Issue 23: --check-config changes nothing on disk; a start makes the Maildir.
TEST(loader, a_check_run_makes_no_maildir)
{
    const fs::path base = fs::temp_directory_path() / ("asiosmtpd-loader-" + std::to_string(::getpid()));
    fs::remove_all(base);
    fs::create_directories(base);
    const std::string yaml = "plugins: [{name: maildir, config: {path: " + (base / "new" / "inbox").string() + "}}]\n";
    {
        const auto gen = load(settings_from(yaml), true);
        EXPECT_EQ(gen->instances.size(), 1u);
    }
    drain_retired();
    EXPECT_FALSE(fs::exists(base / "new"));
    // A parent that is a file cannot hold it: said on a check too, with the key.
    std::ofstream(base / "file") << "x";
    const std::string bad =
        "plugins:\n  - name: maildir\n    config:\n      path: " + (base / "file" / "md").string() + "\n";
    try {
        (void)load(settings_from(bad), true);
        ADD_FAILURE() << "loaded";
    } catch (const load_error& e) {
        EXPECT_EQ(std::string(e.what()).find("test.yaml:5: plugins[0].config.path: cannot create"), 0u) << e.what();
    }
    {
        const auto gen = load(settings_from(yaml));  // a start
    }
    drain_retired();
    EXPECT_TRUE(fs::is_directory(base / "new" / "inbox" / "tmp"));
    fs::remove_all(base);
}

TEST(loader, a_plain_c_plugin_answers_through_the_abi)
{
    const auto gen = load(settings_from("plugins: [{path: c_plugin.so}]\n"));
    ASSERT_EQ(gen->hooks[ASIOSMTPD_HOOK_NOOP].size(), 1u);
    fake_session s{proto::settings{}};
    const asiosmtpd_command_args args{sizeof args, {"NOOP", 4}, {"", 0}, 0};
    const called c = call_hook(gen->hooks[ASIOSMTPD_HOOK_NOOP][0], s, ASIOSMTPD_HOOK_NOOP, &args);
    EXPECT_EQ(c.verdict, ASIOSMTPD_ACCEPT);
    EXPECT_EQ(c.code, 250);
    EXPECT_EQ(c.text, "C plugin");
}

TEST(hooks, scripted_reply_sees_what_the_host_passed)
{
    const auto gen = load(settings_from(R"(plugins:
  - path: scripted.so
    config:
      hooks:
        MAIL: {verdict: reject, code: 550, text: "5.7.1 no {arg} from {peer}:{port}"}
)"));
    fake_session s{proto::settings{}};
    const auto args = address_args("a@b.c");
    const called c = call_hook(gen->hooks[ASIOSMTPD_HOOK_MAIL].at(0), s, ASIOSMTPD_HOOK_MAIL, &args);
    EXPECT_EQ(c.verdict, ASIOSMTPD_REJECT);
    std::string why;
    const proto::hook_result r = judge(c.verdict, c.code, c.text, false, {}, why);
    EXPECT_EQ(r.verdict, proto::verdict::reject);
    EXPECT_EQ(r.text, "5.7.1 no a@b.c from 192.0.2.1:4242");
}

TEST(hooks, an_exception_in_a_cpp_hook_becomes_a_451)
{
    const auto gen = load(settings_from("plugins: [{path: scripted.so, config: {hooks: {RCPT: {verdict: throw}}}}]\n"));
    fake_session s{proto::settings{}};
    const auto args = address_args("x@y.z");
    const called c = call_hook(gen->hooks[ASIOSMTPD_HOOK_RCPT].at(0), s, ASIOSMTPD_HOOK_RCPT, &args);
    EXPECT_EQ(c.verdict, ASIOSMTPD_TEMPFAIL);
    EXPECT_EQ(c.code, 451);
}

TEST(hooks, nonsense_verdicts_and_mismatched_reply_classes_are_errors)
{
    std::string why;
    EXPECT_EQ(judge(42, 0, {}, false, {}, why).verdict, proto::verdict::error);
    EXPECT_NE(why.find("unknown verdict 42"), std::string::npos);
    EXPECT_EQ(judge(ASIOSMTPD_ACCEPT, 550, "x", false, {}, why).verdict, proto::verdict::error);
    EXPECT_EQ(judge(ASIOSMTPD_REJECT, 451, "x", false, {}, why).verdict, proto::verdict::error);
    EXPECT_EQ(judge(ASIOSMTPD_TEMPFAIL, 250, "x", false, {}, why).verdict, proto::verdict::error);
    EXPECT_EQ(judge(ASIOSMTPD_TEMPFAIL_CLOSE, 421, "x", false, {}, why).verdict, proto::verdict::tempfail_close);
    EXPECT_EQ(judge(ASIOSMTPD_CONTINUE, 250, "ignored", false, {}, why).verdict, proto::verdict::none);
}

TEST(hooks, a_hook_completed_later_from_another_thread)
{
    const auto gen = load(settings_from("plugins: [{path: scripted.so, config: {hooks: {RCPT: {verdict: reject, code: "
                                        "550, text: later, delay_ms: 50}}}}]\n"));
    fake_session s{proto::settings{}};
    const auto args = address_args("x@y.z");
    asiosmtpd_call call;
    call.session = &s;
    call.hook = ASIOSMTPD_HOOK_RCPT;
    const std::int32_t v = invoke(gen->hooks[ASIOSMTPD_HOOK_RCPT].at(0), call, &args);
    call.active = false;
    ASSERT_EQ(v, ASIOSMTPD_PENDING);
    ASSERT_NE(call.pending, nullptr);
    ASSERT_NE(call.token, 0u);

    std::mutex m;
    std::condition_variable cv;
    bool woken = false;
    std::thread::id completer;
    {
        const std::lock_guard guard(call.pending->lock);
        if (!call.pending->done)
            call.pending->notify = [&] {
                const std::lock_guard g(m);
                woken = true;
                completer = std::this_thread::get_id();
                cv.notify_all();
            };
        else woken = true;
    }
    std::unique_lock lock(m);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(5), [&] { return woken; }));
    EXPECT_TRUE(completer != std::this_thread::get_id()) << "completed on the waiting thread";
    const std::lock_guard guard(call.pending->lock);
    EXPECT_TRUE(call.pending->done);
    EXPECT_EQ(call.pending->verdict, ASIOSMTPD_REJECT);
    EXPECT_EQ(call.pending->code, 550);
    EXPECT_EQ(call.pending->text, "later");
    // A second completion of the same token is harmless.
    EXPECT_EQ(host_api().complete(call.token, ASIOSMTPD_ACCEPT, 0, {"", 0}), ASIOSMTPD_E_GONE);
}

TEST(host_api, tokens_are_single_use_and_cancel_makes_them_gone)
{
    fake_session s{proto::settings{}};
    asiosmtpd_call call;
    call.session = &s;
    call.hook = ASIOSMTPD_HOOK_MAIL;
    asiosmtpd_token t = 0;
    ASSERT_EQ(host_api().suspend(&call, &t), ASIOSMTPD_OK);
    EXPECT_EQ(host_api().suspend(&call, &t), ASIOSMTPD_E_STATE);  // once per call
    cancel(t);
    EXPECT_EQ(host_api().complete(t, ASIOSMTPD_ACCEPT, 0, {"", 0}), ASIOSMTPD_E_GONE);
    EXPECT_EQ(host_api().complete(0, ASIOSMTPD_ACCEPT, 0, {"", 0}), ASIOSMTPD_E_INVALID);
    EXPECT_EQ(host_api().complete(~0ull, ASIOSMTPD_ACCEPT, 0, {"", 0}), ASIOSMTPD_E_INVALID);
}

TEST(host_api, set_reply_checks_code_and_text)
{
    fake_session s{proto::settings{}};
    asiosmtpd_call call;
    call.session = &s;
    const auto& api = host_api();
    EXPECT_EQ(api.set_reply(&call, 199, {"x", 1}), ASIOSMTPD_E_INVALID);
    EXPECT_EQ(api.set_reply(&call, 600, {"x", 1}), ASIOSMTPD_E_INVALID);
    EXPECT_EQ(api.set_reply(&call, 250, {"a\rb", 3}), ASIOSMTPD_E_INVALID);
    const std::string long_line(507, 'x');
    EXPECT_EQ(api.set_reply(&call, 250, {long_line.data(), long_line.size()}), ASIOSMTPD_E_INVALID);
    EXPECT_EQ(api.set_reply(&call, 250, {"a\nb", 3}), ASIOSMTPD_OK);
    EXPECT_EQ(call.text, "a\nb");
    call.active = false;  // after the hook returned, the call is dead (T5)
    EXPECT_EQ(api.set_reply(&call, 250, {"x", 1}), ASIOSMTPD_E_INVALID);
}

TEST(host_api, registration_is_frozen_after_create)
{
    generation g;
    instance owner;
    asiosmtpd_registrar reg{&g, &owner, nullptr, true, {}, false, {}, {}};
    const auto fn = [](void*, asiosmtpd_call*, const void*) -> asiosmtpd_verdict { return ASIOSMTPD_CONTINUE; };
    EXPECT_EQ(host_api().register_hook(&reg, ASIOSMTPD_HOOK_MAIL, fn), ASIOSMTPD_E_FROZEN);
    reg.frozen = false;
    EXPECT_EQ(host_api().register_hook(&reg, 99, fn), ASIOSMTPD_E_UNSUPPORTED);
    EXPECT_EQ(host_api().register_hook(&reg, ASIOSMTPD_HOOK_MAIL, fn), ASIOSMTPD_OK);
    const asiosmtpd_command_desc mail{sizeof mail, {"MAIL", 4}, {"", 0}, 0, fn};
    EXPECT_EQ(host_api().register_command(&reg, &mail), ASIOSMTPD_E_CONFLICT);
    EXPECT_EQ(reg.conflict, "cannot register command MAIL: a built-in command");
    const asiosmtpd_command_desc bad{sizeof bad, {"X Y", 3}, {"", 0}, 0, fn};
    EXPECT_EQ(host_api().register_command(&reg, &bad), ASIOSMTPD_E_INVALID);
    const asiosmtpd_command_desc xping{sizeof xping, {"xping", 5}, {"XPING", 5}, 0, fn};
    EXPECT_EQ(host_api().register_command(&reg, &xping), ASIOSMTPD_OK);
    EXPECT_EQ(host_api().register_command(&reg, &xping), ASIOSMTPD_E_CONFLICT);
    EXPECT_EQ(reg.conflict, "cannot register command XPING: registered by this plugin already");
    EXPECT_EQ(g.commands.at(0).verb, "XPING");
    EXPECT_EQ(host_api().register_ehlo_keyword(&reg, {"X\r\nY", 4}), ASIOSMTPD_E_INVALID);
}

TEST(host_api, slots_are_per_instance_and_transaction_slots_end_with_the_transaction)
{
    static int freed = 0;
    freed = 0;
    slots sl;
    instance a;
    instance b;
    int x = 1;
    int y = 2;
    sl.set(&a, ASIOSMTPD_SCOPE_TXN, {&x, [](void*) { ++freed; }});
    sl.set(&b, ASIOSMTPD_SCOPE_SESSION, {&y, [](void*) { ++freed; }});
    EXPECT_EQ(sl.find(&a, ASIOSMTPD_SCOPE_TXN)->data, &x);
    EXPECT_EQ(sl.find(&b, ASIOSMTPD_SCOPE_TXN), nullptr);
    sl.clear_transaction();
    EXPECT_EQ(freed, 1);
    EXPECT_EQ(sl.find(&a, ASIOSMTPD_SCOPE_TXN), nullptr);
    EXPECT_NE(sl.find(&b, ASIOSMTPD_SCOPE_SESSION), nullptr);
    sl.clear_all();
    EXPECT_EQ(freed, 2);
}

}  // namespace
}  // namespace asiosmtpd::plugin
