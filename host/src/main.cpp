// asiosmtpd: argument parsing and wiring, nothing else (design.md §3).
#include "config/config.hpp"
#include "log/log.hpp"
#include "net/server.hpp"
#include "plugin/loader.hpp"

#include <asiosmtpd/version.hpp>

#include <CLI/CLI.hpp>

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
        log::set_level(name == "debug" ? log::level::debug
                       : name == "warn" ? log::level::warn
                       : name == "error" ? log::level::error
                                         : log::level::info);
    };
    set_level(level);
    try {
        const config::settings settings = config_file.empty() ? config::load_default() : config::load_file(config_file);
        if (app.count("--log-level") == 0) set_level(settings.server.log_level);  // the command line wins
        auto tls = net::tls_context_for(settings);  // certificate problems first
        auto plugins = plugin::load(settings);
        if (check_only) {
            {
                net::server probe(settings, plugins, tls);  // listener checks
                std::cout << settings.file.string() << ": configuration OK, " << plugins->instances.size()
                          << " plugin(s)\n";
            }
            plugins.reset();
            plugin::drain_retired();
            return 0;
        }
        {
            net::server server(settings, std::move(plugins), std::move(tls));
            server.bind();
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
