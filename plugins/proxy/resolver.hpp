// SPDX-License-Identifier: Apache-2.0
// proxy: name resolution with a deadline. getaddrinfo() cannot be cancelled and, with a dead DNS
// server, blocks for resolv.conf's timeout × attempts for each server (30 s and more), longer
// than the proxy's `timeout`. So lookups run on the resolver's own thread(s); a caller waits
// for the answer until its deadline and then gives up (the lookup finishes for whoever still
// waits; once done, the next caller starts a fresh one). Concurrent lookups of one name share
// one getaddrinfo() call: a dead DNS server holds one thread per name, never one per message.
//
// The threads are the resolver's and are joined by its destructor (plugin.h T7: no thread may
// run plugin code after unload); it therefore waits for a lookup in progress, which getaddrinfo
// ends by itself after the resolver's retry time. Destroy it only when no resolve() is running.
// Not done: caching (getaddrinfo gives no TTL; that is nscd's or systemd-resolved's job).
// C++17 (the plugin's standard). Unit tests: tests/unit/plugins/proxy_test.cpp.
#ifndef ASIOSMTPD_PLUGINS_PROXY_RESOLVER_HPP
#define ASIOSMTPD_PLUGINS_PROXY_RESOLVER_HPP

#include <netdb.h>
#include <sys/socket.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace asiosmtpd::plugins::proxy_dns {

/// One address to connect() to (a copy of an addrinfo entry).
struct address {
    int family = 0;
    int socktype = 0;
    int protocol = 0;
    sockaddr_storage storage{};
    socklen_t size = 0;
    const sockaddr* sa() const noexcept { return reinterpret_cast<const sockaddr*>(&storage); }
};

/// A blocking lookup of `host` and `service` for TCP: fills `out`, returns 0 or an EAI_* code.
using lookup_fn = std::function<int(const std::string& host, const std::string& service, std::vector<address>& out)>;

/// getaddrinfo() for a stream socket, any family (AI_ADDRCONFIG); `numeric_host`: `host` is
/// an IP literal (AI_NUMERICHOST: no DNS, returns at once).
inline int system_lookup(const std::string& host, const std::string& service, std::vector<address>& out,
                         bool numeric_host = false)
{
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG | AI_NUMERICSERV | (numeric_host ? AI_NUMERICHOST : 0);
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
    if (rc != 0) return rc;
    for (const addrinfo* ai = res; ai; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
        address a;
        a.family = ai->ai_family;
        a.socktype = ai->ai_socktype;
        a.protocol = ai->ai_protocol;
        std::memcpy(&a.storage, ai->ai_addr, ai->ai_addrlen);
        a.size = ai->ai_addrlen;
        out.push_back(a);
    }
    ::freeaddrinfo(res);
    return out.empty() ? EAI_NONAME : 0;
}

/// system_lookup() for a host name (the resolver's default lookup).
inline int dns_lookup(const std::string& host, const std::string& service, std::vector<address>& out)
{
    return system_lookup(host, service, out);
}

/// The outcome of resolver::resolve().
struct answer {
    enum class status { ok, failed, timed_out };
    status state = status::failed;
    int error = 0;                   ///< failed: the EAI_* code (gai_strerror() explains it)
    std::vector<address> addresses;  ///< ok: at least one
};

class resolver {
public:
    using clock = std::chrono::steady_clock;

    /// `threads` lookups of different names at a time; `lookup` does one (tests inject theirs).
    explicit resolver(std::size_t threads = 1, lookup_fn lookup = dns_lookup) : lookup_(std::move(lookup))
    {
        for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { run(); });
    }
    resolver(const resolver&) = delete;
    resolver& operator=(const resolver&) = delete;
    ~resolver()
    {
        {
            const std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        work_.notify_all();
        for (std::thread& t : threads_) t.join();
    }

    /// The addresses of `host`, or failed, or timed_out once `deadline` passes first. Any thread.
    answer resolve(const std::string& host, const std::string& service, clock::time_point deadline)
    {
        std::unique_lock<std::mutex> lock(mutex_);
        const key k{host, service};
        std::shared_ptr<request> r;
        if (const auto it = in_flight_.find(k); it != in_flight_.end()) {
            r = it->second;  // someone asked already: share that lookup
        } else {
            r = std::make_shared<request>();
            r->name = k;
            in_flight_.emplace(k, r);
            queue_.push_back(r);
            work_.notify_one();
        }
        answer a;
        if (!done_.wait_until(lock, deadline, [&] { return r->done; })) {
            a.state = answer::status::timed_out;
            return a;
        }
        if (r->error != 0) {
            a.error = r->error;
            return a;
        }
        a.state = answer::status::ok;
        a.addresses = r->addresses;
        return a;
    }

private:
    using key = std::pair<std::string, std::string>;  // host, service
    struct request {
        key name;
        bool done = false;
        int error = 0;
        std::vector<address> addresses;
    };

    void run()
    {
        for (;;) {
            std::unique_lock<std::mutex> lock(mutex_);
            work_.wait(lock, [this] { return stop_ || !queue_.empty(); });
            if (stop_) return;
            const std::shared_ptr<request> r = std::move(queue_.front());
            queue_.pop_front();
            lock.unlock();
            std::vector<address> found;
            int error = 0;
            try {
                error = lookup_(r->name.first, r->name.second, found);
            } catch (...) {
                error = EAI_MEMORY;
            }
            if (error == 0 && found.empty()) error = EAI_NONAME;
            lock.lock();
            r->error = error;
            r->addresses = std::move(found);
            r->done = true;
            in_flight_.erase(r->name);
            done_.notify_all();
        }
    }

    lookup_fn lookup_;
    std::mutex mutex_;
    std::condition_variable work_;  // queue_ or stop_ changed
    std::condition_variable done_;  // a request is done
    std::deque<std::shared_ptr<request>> queue_;
    std::map<key, std::shared_ptr<request>> in_flight_;  // queued or running
    bool stop_ = false;
    std::vector<std::thread> threads_;  // last: started once the members they use exist
};

}  // namespace asiosmtpd::plugins::proxy_dns

#endif
