// SPDX-License-Identifier: Apache-2.0
// asiosmtpd: argument parsing and wiring, nothing else (README.md, "Command line").
#include "config/config.hpp"
#include "log/log.hpp"
#include "net/server.hpp"
#include "os/privileges.hpp"
#include "plugin/loader.hpp"

#include <asiosmtpd/version.hpp>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <iostream>

int main(int argc, char** argv)
{
    using namespace asiosmtpd;
    CLI::App app{"asiosmtpd - an RFC 5321 SMTP server and plugin host, aiosmtpd on the wire"};
    app.set_version_flag("--version", "asiosmtpd " ASIOSMTPD_VERSION_STRING " (plugin ABI " +
                                          std::to_string(ASIOSMTPD_ABI_MAJOR) + "." +
                                          std::to_string(ASIOSMTPD_ABI_MINOR) + ")");
    std::string config_file;
    bool check_only = false;
    std::string level = "info";
    app.add_option("-c,--config", config_file, "YAML configuration file (default: the embedded conf/asiosmtpd.yaml)");
    app.add_flag("--check-config", check_only, "validate the configuration and plugins, print problems, exit 0/1");
    app.add_option("--log-level", level, "debug, info, warn or error")
        ->check(CLI::IsMember({"debug", "info", "warn", "error"}));
    CLI11_PARSE(app, argc, argv);
    // A client or a plugin's stream (debugging writes to stdout) going away must not kill
    // the server; write errors are handled where they happen.
    std::signal(SIGPIPE, SIG_IGN);

    const auto set_level = [](const std::string& name) {
        log::set_level(name == "debug"   ? log::level::debug
                       : name == "warn"  ? log::level::warn
                       : name == "error" ? log::level::error
                                         : log::level::info);
    };
    set_level(level);
    log::detect_journal();
    try {
        const config::settings settings = config_file.empty() ? config::load_default() : config::load_file(config_file);
        if (app.count("--log-level") == 0) set_level(settings.server.log_level);  // the command line wins
        net::apply_log_format(settings);
        // Start-up order (issue 9): config; the privilege plan (refusals before anything is
        // opened); TLS keys, as started (they may be root-only); then, with server.user as root:
        // bind the listeners (ports below 1024, metrics), drop privileges for good, and only then
        // load the plugins: their create() and static constructors run at dlopen, never as root
        // unless so configured. Without a drop the plugins load before binding, as before, so
        // that a plugin refusing its config stops start-up before any listener opens.
        const os::plan plan = os::decide(settings);
        // Logged once start-up (or the check) succeeded, so that a failing one stays one line.
        const auto startup_warnings = [&] {
            if (plan == os::plan::stay_root) log::warn("{}", os::root_warning(settings));
            for (const std::string& w : config::open_relay_warnings(settings)) log::warn("{}", w);
            for (const std::string& w : config::discard_warnings(settings)) log::warn("{}", w);
        };
        auto tls = net::tls_context_for(settings);  // certificate problems first
        // The folders searched by plugin name, as started: after the drop a folder the user
        // cannot enter is named in the error instead of silently skipped.
        const auto plugin_dirs = plugin::search_dirs(settings);
        const auto drop = [&] {
            if (plan != os::plan::drop) return;
            const config::run_as& who = *settings.server.user;
            os::drop(who);
            log::info("event=privileges_dropped user={} uid={} group={} gid={}", who.user, who.uid, who.group, who.gid);
        };
        const auto load_plugins = [&] {
            os::check_plugin_files(settings, plugin_dirs);
            try {
                // A check changes nothing on disk: plugins are told (is_check_only()).
                return plugin::load(settings, check_only);
            } catch (const plugin::load_error& e) {
                const std::string who = os::dropped_to();
                if (who.empty()) throw;
                throw plugin::load_error(
                    fmt::format("{} (plugins run as user {}: their files and data must be accessible to that user)",
                                e.what(), who));
            }
        };
        if (check_only) {
            // As a start would do it, without binding: TLS as started, then the drop, then the
            // plugins loaded as server.user (so that their files and data are checked as that user).
            drop();
            auto plugins = load_plugins();
            {
                net::server probe(settings, plugins, tls);  // listener checks
                std::cout << settings.file.string() << ": configuration OK, " << plugins->instances.size()
                          << " plugin(s)\n";
            }
            startup_warnings();
            plugins.reset();
            plugin::drain_retired();
            return 0;
        }
        {
            std::shared_ptr<const plugin::generation> plugins;
            if (plan != os::plan::drop) plugins = load_plugins();
            // Until use_plugins() below, the listeners hold an empty generation; nothing is
            // accepted before run().
            // (Moved: a generation must not outlive its sessions in main's hands, or a reload
            // would never retire it.)
            net::server server(settings, plugins ? std::move(plugins) : std::make_shared<const plugin::generation>(),
                               std::move(tls));
            server.bind();
            if (plan == os::plan::drop) {
                drop();
                server.use_plugins(load_plugins());
            }
            startup_warnings();
            server.handle_signals();
            net::notify_systemd("READY=1\nSTATUS=serving");
            server.run();
        }
        plugin::drain_retired();  // plugins' destroy() before static destruction
        log::info("event=stopped");
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "asiosmtpd: %s\n", e.what());
        plugin::drain_retired();
        return 1;
    }
}
