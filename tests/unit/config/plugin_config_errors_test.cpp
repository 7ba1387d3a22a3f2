// SPDX-License-Identifier: Apache-2.0
// A plugin's config errors (issue 23) without a plugin file: a `config:` tree read from YAML,
// the SDK's sdk::config over the host's function table (as a plugin sees it), the host's
// cfg_error() and describe_failure(), which turn what the plugin reports into
// "<file>:<line>: plugins[N].config.<key>: <problem>". Also the SDK's spelling hints and
// ranged defaults (int_or/double_or with min and max).
#include "config/config.hpp"
#include "plugin/generation.hpp"

#include <asiosmtpd/plugin.hpp>

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;
using namespace asiosmtpd;

const asiosmtpd_cfg* as_cfg(const config::node& n) { return reinterpret_cast<const asiosmtpd_cfg*>(&n); }

// The first plugin entry of a config whose plugins section is `plugins_yaml` (from line 2).
config::plugin_entry entry_of(const std::string& plugins_yaml)
{
    const config::settings s = config::parse("server: {hostname: mx.test}\n" + plugins_yaml, "t.yaml", "/base");
    return s.plugins.at(0);
}

// What a plugin constructor sees: the registrar of one create() call on the entry's tree.
struct creation {
    explicit creation(const config::plugin_entry& e) : entry(e)
    {
        owner.key = "plugins[0]";
        owner.name = "fixture";
        reg.gen = &gen;
        reg.owner = &owner;
        reg.config = &entry.config;
    }
    const asiosmtpd_host_api& host = plugin::host_api();
    config::plugin_entry entry;
    plugin::generation gen;
    plugin::instance owner;
    asiosmtpd_registrar reg;

    sdk::config root() { return sdk::config(&host, host.cfg_root(&reg)); }

    // Runs `read` as the SDK's create() does: a config_error is reported with cfg_error().
    // Returns "<file>:<line>: <key>: <problem>" as the loader prints it, or "" if nothing threw.
    template <class F>
    std::string failure(F read)
    {
        std::string reason;
        try {
            read(root());
            return {};
        } catch (const sdk::config_error& e) {
            host.cfg_error(&reg, e.node(), {e.key().data(), e.key().size()}, {e.problem().data(), e.problem().size()});
            reason = e.what();
        }
        const plugin::create_failure f =
            plugin::describe_failure(reg, "plugins[0]", reason, entry.config_line ? entry.config_line : entry.line);
        if (!f.config) return "not a config report: " + f.problem;
        return "t.yaml:" + std::to_string(f.line) + ": " + f.key + ": " + f.problem;
    }
};

TEST(sdk_spelling, edit_distance_counts_swaps_as_one)
{
    EXPECT_EQ(sdk::edit_distance("dealy", "delay"), 1u);  // a swap
    EXPECT_EQ(sdk::edit_distance("kitten", "sitting"), 3u);
    EXPECT_EQ(sdk::edit_distance("Path", "path"), 0u);  // ASCII case ignored
    EXPECT_EQ(sdk::edit_distance("", "abc"), 3u);
}

TEST(sdk_spelling, closest_match_only_when_close)
{
    EXPECT_EQ(sdk::closest_match("dealy", {"path", "delay", "workers"}), "delay");
    EXPECT_EQ(sdk::closest_match("maildri", {"mbox", "maildir", "sink"}), "maildir");
    EXPECT_EQ(sdk::closest_match("wrokers", {"path", "workers"}), "workers");
    EXPECT_EQ(sdk::closest_match("Path", {"path"}), "path");
    EXPECT_EQ(sdk::closest_match("x", {"path", "workers"}), "");
    EXPECT_EQ(sdk::closest_match("settings", {"name", "path", "config", "timeout"}), "");
    const std::vector<std::string> names{"access", "maildir", "mbox"};
    EXPECT_EQ(sdk::closest_match("acess", names), "access");
}

// Item 1 of issue 23: the line and the full key, with a suggestion.
TEST(plugin_config_errors, unknown_key_names_file_line_full_key_and_suggestion)
{
    creation c(entry_of("plugins:\n"
                        "  - name: fixture\n"
                        "    config:\n"
                        "      path: /x\n"
                        "      dealy: 5\n"));
    EXPECT_EQ(c.failure([](const sdk::config& cfg) {
        cfg.check_keys({"path", "delay"});
    }),
              "t.yaml:6: plugins[0].config.dealy: unknown key (did you mean 'delay'?)");
    // The SDK's own text (for hosts before cfg_error) names the key too.
    try {
        c.root().check_keys({"path", "delay"});
        FAIL();
    } catch (const sdk::config_error& e) {
        EXPECT_STREQ(e.what(), "dealy: unknown key (did you mean 'delay'?)");
        EXPECT_EQ(e.key(), "dealy");
        EXPECT_EQ(e.node(), c.host.cfg_root(&c.reg));
    }
    // Nothing close: the known keys.
    EXPECT_EQ(c.failure([](const sdk::config& cfg) {
        cfg.check_keys({"path", "workers"});
    }),
              "t.yaml:6: plugins[0].config.dealy: unknown key (known: path workers)");
}

TEST(plugin_config_errors, nested_values_and_missing_keys)
{
    creation c(entry_of("plugins:\n"
                        "  - name: fixture\n"
                        "    config:\n"
                        "      hooks:\n"
                        "        RCPT:\n"
                        "          code: x\n"
                        "      servers:\n"
                        "        - a\n"
                        "        - {host: b}\n"));
    EXPECT_EQ(c.failure([](const sdk::config& cfg) { cfg.require("hooks").require("RCPT").require("code").as_int(); }),
              "t.yaml:7: plugins[0].config.hooks.RCPT.code: expected an integer, got 'x'");
    // A required key that is missing: the line of the map that lacks it.
    EXPECT_EQ(c.failure([](const sdk::config& cfg) { cfg.require("hooks").require("RCPT").require("verdict"); }),
              "t.yaml:6: plugins[0].config.hooks.RCPT.verdict: required");
    EXPECT_EQ(c.failure([](const sdk::config& cfg) { cfg.require("servers").at(1).check_keys({"hosts"}); }),
              "t.yaml:10: plugins[0].config.servers[1].host: unknown key (did you mean 'hosts'?)");
    EXPECT_EQ(c.failure([](const sdk::config& cfg) { cfg.require("servers").at(0).expect_map(); }),
              "t.yaml:9: plugins[0].config.servers[0]: expected a map, got a scalar");
    // Missing at the root: the line of `config:`.
    EXPECT_EQ(c.failure([](const sdk::config& cfg) { cfg.require("path"); }),
              "t.yaml:4: plugins[0].config.path: required");
    // A plugin's own check of a value (config::error()).
    EXPECT_EQ(c.failure([](const sdk::config& cfg) { throw cfg.require("servers").at(0).error("does not resolve"); }),
              "t.yaml:9: plugins[0].config.servers[0]: does not resolve");
}

TEST(plugin_config_errors, no_config_at_all_points_at_the_entry)
{
    creation c(entry_of("plugins:\n  - name: fixture\n"));
    EXPECT_EQ(c.failure([](const sdk::config& cfg) { cfg.expect_map(); }),
              "t.yaml:3: plugins[0].config: expected a map, got nothing");
}

TEST(plugin_config_errors, cfg_error_checks_its_arguments)
{
    creation c(entry_of("plugins:\n  - name: fixture\n    config: {a: 1}\n"));
    const config::node foreign;
    const asiosmtpd_str none{"", 0};
    const asiosmtpd_str msg{"bad", 3};
    EXPECT_EQ(c.host.cfg_error(&c.reg, as_cfg(foreign), none, msg), ASIOSMTPD_E_INVALID);
    EXPECT_FALSE(c.reg.report.given);
    EXPECT_EQ(c.host.cfg_error(nullptr, nullptr, none, msg), ASIOSMTPD_E_INVALID);
    EXPECT_EQ(c.host.cfg_error(&c.reg, nullptr, none, msg), ASIOSMTPD_OK);  // NULL: the root
    EXPECT_EQ(c.reg.report.at, &c.entry.config);
    // The last report counts.
    const asiosmtpd_cfg* a = c.host.cfg_get(c.host.cfg_root(&c.reg), {"a", 1});
    EXPECT_EQ(c.host.cfg_error(&c.reg, a, none, {"must be 2", 9}), ASIOSMTPD_OK);
    const plugin::create_failure f = plugin::describe_failure(c.reg, "plugins[0]", "ignored", c.entry.config_line);
    EXPECT_TRUE(f.config);
    EXPECT_EQ(f.line, 4u);
    EXPECT_EQ(f.key, "plugins[0].config.a");
    EXPECT_EQ(f.problem, "must be 2");
    c.reg.frozen = true;  // after create()
    EXPECT_EQ(c.host.cfg_error(&c.reg, nullptr, none, msg), ASIOSMTPD_E_FROZEN);
    // Without a report: the plugin's reason, as before.
    creation d(entry_of("plugins:\n  - name: fixture\n"));
    EXPECT_EQ(plugin::describe_failure(d.reg, "plugins[0]", "no threshold", 0).problem,
              "refused its configuration: no threshold");
}

// A plugin that reports no node (C, an older SDK, a hand-written message) but starts its
// reason with a key path of its tree gets the line too.
TEST(plugin_config_errors, a_reason_starting_with_a_key_path_gets_its_line)
{
    creation c(entry_of("plugins:\n"
                        "  - name: fixture\n"
                        "    config:\n"
                        "      limits:\n"
                        "        connections: -1\n"
                        "      servers: [a, b]\n"));
    const auto said = [&c](std::string_view reason) {
        const plugin::create_failure f = plugin::describe_failure(c.reg, "plugins[0]", reason, c.entry.config_line);
        return f.config ? "t.yaml:" + std::to_string(f.line) + ": " + f.key + ": " + f.problem : f.problem;
    };
    EXPECT_EQ(said("limits.connections: must be between 0 and 10"),
              "t.yaml:6: plugins[0].config.limits.connections: must be between 0 and 10");
    EXPECT_EQ(said("servers[1]: \"b\": not an address"),
              "t.yaml:7: plugins[0].config.servers[1]: \"b\": not an address");
    EXPECT_EQ(said("limits.minutes: required"), "t.yaml:5: plugins[0].config.limits.minutes: required");
    EXPECT_EQ(said("path: required"), "t.yaml:4: plugins[0].config.path: required");
    // Not a key path of the tree: the reason as it is.
    EXPECT_EQ(said("threshold must be a number"), "refused its configuration: threshold must be a number");
    EXPECT_EQ(said("debugging: unknown key 'color'"), "refused its configuration: debugging: unknown key 'color'");
    EXPECT_EQ(said("servers[7]: out of range"), "refused its configuration: servers[7]: out of range");
    EXPECT_EQ(said("path: too long"), "refused its configuration: path: too long");
}

TEST(plugin_config_errors, check_only_is_told_during_create)
{
    creation c(entry_of("plugins:\n  - name: fixture\n"));
    EXPECT_EQ(c.host.is_check_only(&c.reg), 0);
    c.reg.check_only = true;
    EXPECT_EQ(c.host.is_check_only(&c.reg), 1);
    c.reg.frozen = true;
    EXPECT_EQ(c.host.is_check_only(&c.reg), 0);
}

// Item 2: ranged defaults.
TEST(sdk_config, ranged_defaults_name_the_key_and_the_range)
{
    creation c(entry_of("plugins:\n"
                        "  - name: fixture\n"
                        "    config:\n"
                        "      workers: 100\n"
                        "      delay: 0.5\n"
                        "      empty:\n"));
    const sdk::config cfg = c.root();
    EXPECT_EQ(cfg.int_or("absent", 4, 1, 64), 4);
    EXPECT_EQ(cfg.int_or("empty", 4, 1, 64), 4);
    EXPECT_EQ(cfg.int_or("workers", 4, 1, 100), 100);
    EXPECT_DOUBLE_EQ(cfg.double_or("delay", 1, 0, 10), 0.5);
    EXPECT_DOUBLE_EQ(cfg.double_or("absent", 1.5, 0, 10), 1.5);
    EXPECT_DOUBLE_EQ(cfg.double_or("delay", 2), 0.5);
    EXPECT_EQ(c.failure([](const sdk::config& r) { (void)r.int_or("workers", 4, 1, 64); }),
              "t.yaml:5: plugins[0].config.workers: must be between 1 and 64, got 100");
    EXPECT_EQ(c.failure([](const sdk::config& r) { (void)r.double_or("delay", 1, 1, 60); }),
              "t.yaml:6: plugins[0].config.delay: must be between 1 and 60, got 0.5");
    try {
        (void)cfg.int_or("workers", 4, 1, 64);
        FAIL();
    } catch (const sdk::config_error& e) {
        EXPECT_STREQ(e.what(), "workers: must be between 1 and 64, got 100");
    }
}

}  // namespace
