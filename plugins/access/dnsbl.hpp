// SPDX-License-Identifier: Apache-2.0
// dnsbl: an asynchronous DNS client for the DNSBL lookups, on c-ares. One thread owns the
// c-ares channel (c-ares 1.18's channels are not thread-safe): query() and after() hand work
// to it from any thread through a queue and an eventfd; it polls the channel's sockets, and
// runs each query's function on itself with the raw answer. Nothing here blocks a caller, and
// no resolver call ever runs on a hook thread. The destructor stops and joins the thread; every
// query still open is then answered with ARES_EDESTRUCTION and every timer runs, so that no
// waiting session is left without an answer.
#pragma once

#include "cidr.hpp"

#include <ares.h>
#include <arpa/nameser.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace asiosmtpd::plugins::access {

class dns_client {
public:
    using clock = std::chrono::steady_clock;
    /// status: ARES_SUCCESS (answer in abuf/alen), ARES_ENOTFOUND (NXDOMAIN), ARES_ENODATA, or a
    /// failure (ARES_ETIMEOUT, ARES_ESERVFAIL, ARES_ECONNREFUSED, ARES_EDESTRUCTION, ...).
    using answer_fn = std::function<void(int status, const unsigned char* abuf, int alen)>;

    /// servers: c-ares' "host:port,[v6]:port" list; empty: the system's resolvers
    /// (/etc/resolv.conf). try_timeout: what each server gets per try (2 tries).
    /// Throws std::runtime_error when c-ares cannot be set up.
    dns_client(const std::string& servers, std::chrono::milliseconds try_timeout)
    {
        if (const int rc = ::ares_library_init(ARES_LIB_INIT_ALL); rc != ARES_SUCCESS)
            throw std::runtime_error(std::string("c-ares: ") + ::ares_strerror(rc));
        library_ = true;
        ares_options o{};
        o.timeout = static_cast<int>(try_timeout.count());
        o.tries = 2;
        o.flags = ARES_FLAG_NOSEARCH | ARES_FLAG_NOALIASES;
        int rc = ::ares_init_options(&channel_, &o, ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS);
        if (rc == ARES_SUCCESS && !servers.empty()) rc = ::ares_set_servers_ports_csv(channel_, servers.c_str());
        if (rc != ARES_SUCCESS) {
            cleanup();
            throw std::runtime_error(std::string("c-ares: ") + ::ares_strerror(rc));
        }
        wake_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (wake_ < 0) {
            cleanup();
            throw std::runtime_error("eventfd failed");
        }
        thread_ = std::thread([this] { run(); });
    }
    dns_client(const dns_client&) = delete;
    dns_client& operator=(const dns_client&) = delete;
    ~dns_client()
    {
        {
            const std::lock_guard guard(lock_);
            stopping_ = true;
        }
        signal();
        if (thread_.joinable()) thread_.join();
        cleanup();
    }

    /// Query `name` (class IN, `type` ns_t_a, ns_t_txt, ...); `done` runs on the DNS thread.
    void query(std::string name, int type, answer_fn done)
    {
        {
            const std::lock_guard guard(lock_);
            queries_.push_back({std::move(name), type, std::move(done)});
        }
        signal();
    }

    /// Run `fn` on the DNS thread at `when` (or when the client stops, if sooner).
    void after(clock::time_point when, std::function<void()> fn)
    {
        {
            const std::lock_guard guard(lock_);
            timers_.emplace(when, std::move(fn));
        }
        signal();
    }

private:
    struct request {
        std::string name;
        int type;
        answer_fn done;
    };

    static void on_answer(void* arg, int status, int, unsigned char* abuf, int alen)
    {
        auto* fn = static_cast<answer_fn*>(arg);
        try {
            (*fn)(status, abuf, alen);
        } catch (...) {  // a query function must not end the DNS thread
        }
        delete fn;
    }

    void signal() noexcept
    {
        const std::uint64_t one = 1;
        [[maybe_unused]] const ssize_t n = ::write(wake_, &one, sizeof one);
    }

    void submit(std::vector<request>& batch)
    {
        for (request& r : batch)
            ::ares_query(channel_, r.name.c_str(), ns_c_in, r.type, &dns_client::on_answer,
                         new answer_fn(std::move(r.done)));
        batch.clear();
    }

    // Runs the timers that are due (all of them when `all`).
    void run_timers(bool all)
    {
        for (;;) {
            std::function<void()> fn;
            {
                const std::lock_guard guard(lock_);
                if (timers_.empty() || (!all && timers_.begin()->first > clock::now())) return;
                fn = std::move(timers_.begin()->second);
                timers_.erase(timers_.begin());
            }
            try {
                fn();
            } catch (...) {}
        }
    }

    void run()
    {
        std::vector<request> batch;
        for (;;) {
            bool stop = false;
            clock::time_point next_timer = clock::time_point::max();
            {
                const std::lock_guard guard(lock_);
                stop = stopping_;
                if (!stop) batch.swap(queries_);
                if (!timers_.empty()) next_timer = timers_.begin()->first;
            }
            if (stop) break;
            submit(batch);
            run_timers(false);

            ares_socket_t socks[ARES_GETSOCK_MAXNUM];
            const int bits = ::ares_getsock(channel_, socks, ARES_GETSOCK_MAXNUM);
            std::vector<pollfd> fds;
            fds.push_back({wake_, POLLIN, 0});
            for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
                short events = 0;
                if (ARES_GETSOCK_READABLE(bits, i)) events = static_cast<short>(events | POLLIN);
                if (ARES_GETSOCK_WRITABLE(bits, i)) events = static_cast<short>(events | POLLOUT);
                if (events == 0) continue;
                fds.push_back({socks[i], events, 0});
            }
            long long wait_ms = 1000;
            timeval max{1, 0}, tv{};
            if (const timeval* t = ::ares_timeout(channel_, &max, &tv))
                wait_ms = static_cast<long long>(t->tv_sec) * 1000 + t->tv_usec / 1000 + 1;
            if (next_timer != clock::time_point::max()) {
                const auto left =
                    std::chrono::duration_cast<std::chrono::milliseconds>(next_timer - clock::now()).count() + 1;
                wait_ms = std::max<long long>(0, std::min<long long>(wait_ms, left));
            }
            const int n = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), static_cast<int>(wait_ms));
            if (n < 0 && errno != EINTR) wait_ms = 10;  // nothing sane to do but try again
            if (n > 0 && (fds[0].revents & POLLIN) != 0) {
                std::uint64_t drained = 0;
                [[maybe_unused]] const ssize_t r = ::read(wake_, &drained, sizeof drained);
            }
            for (std::size_t i = 1; n > 0 && i < fds.size(); ++i) {
                if (fds[i].revents == 0) continue;
                const bool readable = (fds[i].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
                const bool writable = (fds[i].revents & POLLOUT) != 0;
                ::ares_process_fd(channel_, readable ? fds[i].fd : ARES_SOCKET_BAD,
                                  writable ? fds[i].fd : ARES_SOCKET_BAD);
            }
            ::ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
        }
        // Stopping: every query in flight gets ARES_EDESTRUCTION; queries made meanwhile (by
        // those functions) and the ones never sent too; then every timer runs.
        ::ares_destroy(channel_);
        channel_ = nullptr;
        for (;;) {
            {
                const std::lock_guard guard(lock_);
                batch.swap(queries_);
            }
            if (batch.empty()) break;
            for (request& r : batch) on_answer(new answer_fn(std::move(r.done)), ARES_EDESTRUCTION, 0, nullptr, 0);
            batch.clear();
        }
        run_timers(true);
    }

    void cleanup() noexcept
    {
        if (channel_) ::ares_destroy(channel_);
        channel_ = nullptr;
        if (wake_ >= 0) ::close(wake_);
        wake_ = -1;
        if (library_) ::ares_library_cleanup();
        library_ = false;
    }

    ares_channel channel_ = nullptr;
    bool library_ = false;
    int wake_ = -1;
    std::mutex lock_;
    bool stopping_ = false;
    std::vector<request> queries_;
    std::multimap<clock::time_point, std::function<void()>> timers_;
    std::thread thread_;
};

/// The addresses of an A answer.
inline std::vector<ip_address> parse_a_answer(const unsigned char* abuf, int alen)
{
    std::vector<ip_address> out;
    ares_addrttl addrs[16];
    int count = 16;
    if (::ares_parse_a_reply(abuf, alen, nullptr, addrs, &count) != ARES_SUCCESS) return out;
    for (int i = 0; i < count; ++i) {
        ip_address a;
        const auto* b = reinterpret_cast<const std::uint8_t*>(&addrs[i].ipaddr);
        for (std::size_t k = 0; k < 4; ++k) a.bytes[k] = b[k];
        out.push_back(a);
    }
    return out;
}

/// The first TXT record of an answer, its strings joined (RFC 7208 §3.3 style); "" if none.
inline std::string parse_txt_answer(const unsigned char* abuf, int alen)
{
    ares_txt_ext* txt = nullptr;
    if (::ares_parse_txt_reply_ext(abuf, alen, &txt) != ARES_SUCCESS) return {};
    std::string out;
    bool first = true;
    for (const ares_txt_ext* t = txt; t != nullptr; t = t->next) {
        if (t->record_start && !first) break;
        first = false;
        out.append(reinterpret_cast<const char*>(t->txt), t->length);
        if (out.size() > 4096) break;
    }
    ::ares_free_data(txt);
    return out;
}

}  // namespace asiosmtpd::plugins::access
