// SPDX-License-Identifier: Apache-2.0
// server::endpoints() on another thread while reloads replace the listeners: a listener on
// port 0 matches no running one, so every reload opens a new one and closes the old. The
// caller gets a copy the home loop publishes, never the list a reload swaps (run it under the
// tsan preset to see the difference).
#include "config/config.hpp"
#include "net/metrics.hpp"
#include "net/server.hpp"
#include "plugin/loader.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include <unistd.h>

namespace asiosmtpd::net {
namespace {

using namespace std::chrono_literals;

TEST(server_reload, endpoints_follow_the_listeners_a_reload_replaces)
{
    std::string dir = (std::filesystem::temp_directory_path() / "asiosmtpd-server-reload-XXXXXX").string();
    ASSERT_NE(::mkdtemp(dir.data()), nullptr);
    const std::filesystem::path file = std::filesystem::path(dir) / "asiosmtpd.yaml";
    std::ofstream(file) << "server:\n  hostname: mx.test\n  listen: [{address: 127.0.0.1, port: 0}]\n"
                           "  workers: 2\n  shutdown_grace: 1\nplugins: []\n";
    const config::settings s = config::load_file(file);
    server srv(s, plugin::load(s), tls_context_for(s));
    srv.bind();
    srv.handle_signals();  // SIGHUP: a reload, as the executable does it
    std::thread runner([&srv] { srv.run(); });
    struct stopper {
        server& srv;
        std::thread& runner;
        ~stopper()
        {
            srv.stop();
            if (runner.joinable()) runner.join();
        }
    } stop_at_exit{srv, runner};

    ASSERT_EQ(srv.endpoints().size(), 1u);
    std::uint16_t port = srv.endpoints()[0].port();
    EXPECT_NE(port, 0);
    auto& reloads = metrics::get().reloads_ok;
    for (int i = 0; i < 3; ++i) {
        const auto before = reloads.load();
        ASSERT_EQ(::kill(::getpid(), SIGHUP), 0);
        // Meanwhile, here: one listener, the old one or the new one.
        std::size_t odd = 0;
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (reloads.load() == before && std::chrono::steady_clock::now() < deadline) {
            const auto eps = srv.endpoints();
            if (eps.size() != 1 || eps[0].port() == 0) ++odd;
            std::this_thread::sleep_for(100us);
        }
        ASSERT_GT(reloads.load(), before) << "no reload within 10 s";
        EXPECT_EQ(odd, 0u);
        // Done: the new listener (opened before the old one closed, so on another port).
        const auto eps = srv.endpoints();
        ASSERT_EQ(eps.size(), 1u);
        EXPECT_NE(eps[0].port(), port);
        EXPECT_NE(eps[0].port(), 0);
        port = eps[0].port();
    }
    srv.stop();
    runner.join();
    EXPECT_TRUE(srv.endpoints().empty());  // stopped: nothing listens
    plugin::drain_retired();
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace asiosmtpd::net
