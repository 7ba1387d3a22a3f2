// SPDX-License-Identifier: Apache-2.0
#include "net/metrics.hpp"

#include "log/log.hpp"
#include "plugin/chain.hpp"
#include "plugin/isolation/adapter.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include <asiosmtpd/version.hpp>

#include <fmt/format.h>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <memory>
#include <vector>

namespace asiosmtpd::net {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {
constexpr auto nothrow = asio::as_tuple(asio::use_awaitable);

// Prometheus label values: backslash, quote and newline escaped.
std::string label(std::string_view v)
{
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out.push_back('\\');
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out.push_back(c);
    }
    return out;
}
}  // namespace

metrics& metrics::get() noexcept
{
    static metrics* const m = new metrics;  // never destroyed: counted into until exit
    return *m;
}

void metrics::message(std::uint16_t code, std::uint64_t size) noexcept
{
    const unsigned cls = code / 100u;
    (cls == 2   ? messages_accepted
     : cls == 4 ? messages_deferred
                : messages_rejected)
        .fetch_add(1, std::memory_order_relaxed);
    message_bytes.fetch_add(size, std::memory_order_relaxed);
}

// Histograms are never removed (metrics are never destroyed), so a thread may keep pointers.
metrics::histogram& metrics::find(std::string_view plugin, std::string_view hook_name)
{
    struct cached {
        std::string plugin;
        std::string hook;
        histogram* h;
    };
    thread_local std::vector<cached> cache;
    for (const cached& c : cache)
        if (c.plugin == plugin && c.hook == hook_name) return *c.h;
    const std::lock_guard guard(lock_);
    auto key = std::make_pair(std::string(plugin), std::string(hook_name));
    auto it = hooks_.find(key);
    if (it == hooks_.end()) it = hooks_.emplace(std::move(key), std::make_unique<histogram>()).first;
    cache.push_back({std::string(plugin), std::string(hook_name), it->second.get()});
    return *it->second;
}

void metrics::hook(std::string_view plugin, std::string_view hook_name, std::chrono::steady_clock::duration took)
{
    histogram& h = find(plugin, hook_name);
    const double seconds = std::chrono::duration<double>(took).count();
    for (std::size_t i = 0; i < bounds.size(); ++i)
        if (seconds <= bounds[i]) h.buckets[i].fetch_add(1, std::memory_order_relaxed);
    h.count.fetch_add(1, std::memory_order_relaxed);
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(took).count();
    h.sum_ns.fetch_add(static_cast<std::uint64_t>(std::max<std::int64_t>(ns, 0)), std::memory_order_relaxed);
}

namespace {

// The process metrics every Prometheus client library exports (same names, same units), read
// from the kernel at each scrape.
struct process_figures {
    double cpu_seconds = 0;
    double resident_bytes = 0;
    double open_fds = 0;
    double start_time = 0;  ///< seconds since the epoch
};

process_figures read_process()
{
    process_figures p;
    rusage ru{};
    if (::getrusage(RUSAGE_SELF, &ru) == 0)
        p.cpu_seconds = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                        static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    const long page = ::sysconf(_SC_PAGESIZE);
    if (std::ifstream statm("/proc/self/statm"); statm) {
        double size = 0;
        double resident = 0;
        statm >> size >> resident;
        p.resident_bytes = resident * static_cast<double>(page);
    }
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec))
        p.open_fds += 1;
    // Start: boot time (/proc/stat btime) + the process's start in clock ticks since boot
    // (/proc/self/stat field 22, after the command name, which may hold spaces).
    double boot = 0;
    if (std::ifstream stat("/proc/stat"); stat) {
        std::string line;
        while (std::getline(stat, line))
            if (line.rfind("btime ", 0) == 0) boot = std::stod(line.substr(6));
    }
    if (std::ifstream self("/proc/self/stat"); self && boot > 0) {
        std::string text((std::istreambuf_iterator<char>(self)), std::istreambuf_iterator<char>());
        const auto close = text.rfind(')');
        if (close != std::string::npos) {
            std::istringstream rest(text.substr(close + 2));
            std::string field;
            for (int i = 3; i <= 22 && rest >> field; ++i)
                if (i == 22) p.start_time = boot + std::stod(field) / static_cast<double>(::sysconf(_SC_CLK_TCK));
        }
    }
    return p;
}

}  // namespace

std::string metrics::render(std::size_t current) const
{
    const auto v = [](const std::atomic<std::uint64_t>& a) { return a.load(std::memory_order_relaxed); };
    std::string out;
    const auto counter = [&](std::string_view name, std::string_view help, std::string_view labels, std::uint64_t value,
                             bool header = true) {
        if (header) out += fmt::format("# HELP {} {}\n# TYPE {} counter\n", name, help, name);
        out += fmt::format("{}{} {}\n", name, labels, value);
    };
    // Not "asiosmtpd_connections": that is the family of the counter asiosmtpd_connections_total
    // (OpenMetrics), and one name cannot be both.
    out +=
        fmt::format("# HELP asiosmtpd_connections_open Open SMTP sessions.\n# TYPE asiosmtpd_connections_open gauge\n"
                    "asiosmtpd_connections_open {}\n",
                    current);
    out +=
        fmt::format("# HELP asiosmtpd_build_info The running version (always 1).\n# TYPE asiosmtpd_build_info gauge\n"
                    "asiosmtpd_build_info{{version=\"{}\"}} 1\n",
                    label(ASIOSMTPD_VERSION_STRING));
    const process_figures p = read_process();
    out += fmt::format("# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
                       "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {}\n"
                       "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
                       "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {}\n"
                       "# HELP process_open_fds Number of open file descriptors.\n"
                       "# TYPE process_open_fds gauge\nprocess_open_fds {}\n"
                       "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n"
                       "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.2f}\n",
                       p.cpu_seconds, p.resident_bytes, p.open_fds, p.start_time);
    counter("asiosmtpd_connections_total", "Accepted connections.", "", v(connections_total));
    counter("asiosmtpd_connections_refused_total", "Connections refused with 421 (max_connections).", "",
            v(connections_refused));
    counter("asiosmtpd_messages_total", "Messages by their final reply.", "{result=\"accepted\"}",
            v(messages_accepted));
    counter("asiosmtpd_messages_total", "", "{result=\"deferred\"}", v(messages_deferred), false);
    counter("asiosmtpd_messages_total", "", "{result=\"rejected\"}", v(messages_rejected), false);
    counter("asiosmtpd_message_bytes_total", "Bytes of message content received.", "", v(message_bytes));
    counter("asiosmtpd_reloads_total", "Configuration reloads.", "{result=\"ok\"}", v(reloads_ok));
    counter("asiosmtpd_reloads_total", "", "{result=\"failed\"}", v(reloads_failed), false);
    counter("asiosmtpd_tls_handshakes_total", "TLS handshakes.", "{result=\"ok\"}", v(tls_ok));
    counter("asiosmtpd_tls_handshakes_total", "", "{result=\"failed\"}", v(tls_failed), false);
    counter("asiosmtpd_tls_handshakes_refused_total",
            "TLS handshakes not started: too many in progress (max_tls_handshakes, max_tls_handshakes_per_client).",
            "{limit=\"server\"}", v(tls_refused_server));
    counter("asiosmtpd_tls_handshakes_refused_total", "", "{limit=\"client\"}", v(tls_refused_client), false);
    out += fmt::format("# HELP asiosmtpd_tls_handshakes_in_progress TLS handshakes started and not yet finished.\n"
                       "# TYPE asiosmtpd_tls_handshakes_in_progress gauge\n"
                       "asiosmtpd_tls_handshakes_in_progress {}\n",
                       std::max<std::int64_t>(tls_handshaking.load(std::memory_order_relaxed), 0));
    counter("asiosmtpd_auth_total", "AUTH attempts.", "{result=\"ok\"}", v(auth_ok));
    counter("asiosmtpd_auth_total", "", "{result=\"failed\"}", v(auth_failed), false);
    counter("asiosmtpd_plugin_errors_total", "Hook calls that failed (answered 451).", "", v(plugin_errors));
    counter("asiosmtpd_plugin_blocking_total",
            "Hook calls that held an event-loop thread longer than the blocking threshold.", "",
            plugin::blocking_incidents());
    counter("asiosmtpd_plugin_process_crashes_total",
            "Plugin child processes (isolation: process) that crashed, exited or hung.", "",
            plugin::isolation::crashes());
    counter("asiosmtpd_plugin_process_restarts_total", "Plugin child processes started again after a crash.", "",
            plugin::isolation::restarts());
    out += "# HELP asiosmtpd_hook_duration_seconds Plugin hook calls, until their verdict.\n"
           "# TYPE asiosmtpd_hook_duration_seconds histogram\n";
    const std::lock_guard guard(lock_);
    for (const auto& [key, hp] : hooks_) {
        const histogram& h = *hp;
        const std::string labels = fmt::format("plugin=\"{}\",hook=\"{}\"", label(key.first), label(key.second));
        // A scrape may race with hook calls: buckets are clamped to the count read first, so
        // le="+Inf" is never below a bucket.
        const std::uint64_t count = h.count.load(std::memory_order_relaxed);
        for (std::size_t i = 0; i < bounds.size(); ++i)
            out += fmt::format("asiosmtpd_hook_duration_seconds_bucket{{{},le=\"{}\"}} {}\n", labels, bounds[i],
                               std::min(count, h.buckets[i].load(std::memory_order_relaxed)));
        out += fmt::format("asiosmtpd_hook_duration_seconds_bucket{{{},le=\"+Inf\"}} {}\n", labels, count);
        out += fmt::format("asiosmtpd_hook_duration_seconds_sum{{{}}} {}\n", labels,
                           static_cast<double>(h.sum_ns.load(std::memory_order_relaxed)) / 1e9);
        out += fmt::format("asiosmtpd_hook_duration_seconds_count{{{}}} {}\n", labels, count);
    }
    return out;
}

namespace {

asio::awaitable<void> answer(tcp::socket socket, std::function<std::size_t()> live)
{
    using namespace asio::experimental::awaitable_operators;
    asio::streambuf request(8192);  // bounded: a request line and a few headers
    asio::steady_timer deadline(socket.get_executor(), std::chrono::seconds(5));
    auto outcome =
        co_await (asio::async_read_until(socket, request, "\r\n\r\n", nothrow) || deadline.async_wait(nothrow));
    if (outcome.index() != 0) co_return;  // too slow
    const auto [ec, n] = std::get<0>(outcome);
    if (ec) co_return;
    const std::string head(asio::buffers_begin(request.data()),
                           asio::buffers_begin(request.data()) + static_cast<std::ptrdiff_t>(n));
    const bool ok = head.rfind("GET /metrics ", 0) == 0 || head.rfind("GET /metrics?", 0) == 0;
    const std::string body = ok ? metrics::get().render(live()) : std::string("not found: try /metrics\n");
    const std::string response =
        fmt::format("HTTP/1.1 {}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\n"
                    "Connection: close\r\n\r\n{}",
                    ok ? "200 OK" : "404 Not Found", body.size(), body);
    co_await asio::async_write(socket, asio::buffer(response), nothrow);
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
}

}  // namespace

asio::awaitable<void> serve_metrics(tcp::acceptor& acceptor, std::function<std::size_t()> live)
{
    for (;;) {
        auto [ec, socket] = co_await acceptor.async_accept(nothrow);
        if (ec) {
            if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
            continue;
        }
        const auto ex = socket.get_executor();
        asio::co_spawn(ex, answer(std::move(socket), live), [](std::exception_ptr e) {
            if (!e) return;
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& x) {
                log::warn("event=metrics_error what=\"{}\"", x.what());
            }
        });
    }
}

}  // namespace asiosmtpd::net
