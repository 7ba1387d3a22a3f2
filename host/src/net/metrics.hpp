// SPDX-License-Identifier: Apache-2.0
// metrics: process-wide counters and hook latency histograms, served in Prometheus text
// format over a minimal HTTP endpoint (GET /metrics). Counting is lock-free (atomics); a
// per-plugin histogram is looked up under a mutex once per thread, then found in a
// thread-local cache.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace asiosmtpd::net {

class metrics {
public:
    static metrics& get() noexcept;

    std::atomic<std::uint64_t> connections_total{0};
    std::atomic<std::uint64_t> connections_refused{0};
    std::atomic<std::uint64_t> messages_accepted{0};
    std::atomic<std::uint64_t> messages_rejected{0};
    std::atomic<std::uint64_t> messages_deferred{0};
    std::atomic<std::uint64_t> message_bytes{0};
    std::atomic<std::uint64_t> reloads_ok{0};
    std::atomic<std::uint64_t> reloads_failed{0};
    std::atomic<std::uint64_t> tls_ok{0};
    std::atomic<std::uint64_t> tls_failed{0};
    std::atomic<std::uint64_t> tls_refused_server{0};  ///< server.max_tls_handshakes reached
    std::atomic<std::uint64_t> tls_refused_client{0};  ///< server.max_tls_handshakes_per_client reached
    std::atomic<std::int64_t> tls_handshaking{0};      ///< handshakes in progress (a gauge)
    std::atomic<std::uint64_t> auth_ok{0};
    std::atomic<std::uint64_t> auth_failed{0};
    std::atomic<std::uint64_t> plugin_errors{0};

    /// A message's final reply code (the first, for LMTP) and size.
    void message(std::uint16_t code, std::uint64_t size) noexcept;
    /// One plugin hook call, from invoke to its verdict (a pending wait included).
    void hook(std::string_view plugin, std::string_view hook, std::chrono::steady_clock::duration took);

    /// The exposition text. `current_connections` is the live session count.
    std::string render(std::size_t current_connections) const;

private:
    static constexpr std::array<double, 10> bounds{0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5};
    struct histogram {
        std::array<std::atomic<std::uint64_t>, bounds.size()> buckets{};  ///< cumulative (le)
        std::atomic<std::uint64_t> count{0};
        std::atomic<std::uint64_t> sum_ns{0};
    };
    histogram& find(std::string_view plugin, std::string_view hook);
    mutable std::mutex lock_;  // hooks_'s structure; the histograms themselves are atomics
    std::map<std::pair<std::string, std::string>, std::unique_ptr<histogram>, std::less<>> hooks_;
};

/// Serve GET /metrics on `acceptor` until it is closed. `live` gives the current session count.
boost::asio::awaitable<void> serve_metrics(boost::asio::ip::tcp::acceptor& acceptor, std::function<std::size_t()> live);

}  // namespace asiosmtpd::net
