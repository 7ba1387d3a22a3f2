// SPDX-License-Identifier: Apache-2.0
// trimmer: gives the memory a burst of connections left behind back to the system. glibc keeps
// what sessions freed in its arenas (one per event-loop thread, about) and shrinks them only
// from the top, so after 900 TLS handshakes that never finished RSS stayed tens of MiB above
// its baseline for good. A thread of its own (never an event-loop thread: malloc_trim walks
// every arena) looks at the live session count once a second and calls malloc_trim(0) when
// it fell by `drop` or more from its highest since the last trim, at most once per `spacing`.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <stop_token>
#include <thread>

namespace asiosmtpd::net {

class memory_trimmer {
public:
    /// `live`: the live session count (called on the trimmer's thread).
    explicit memory_trimmer(std::function<std::size_t()> live, std::size_t drop = 64,
                            std::chrono::milliseconds period = std::chrono::seconds(1),
                            std::chrono::milliseconds spacing = std::chrono::seconds(5));
    /// Stops and joins the thread.
    ~memory_trimmer();
    memory_trimmer(const memory_trimmer&) = delete;
    memory_trimmer& operator=(const memory_trimmer&) = delete;

    /// Trims done so far (for tests).
    [[nodiscard]] std::size_t trims() const noexcept { return trims_.load(std::memory_order_relaxed); }

private:
    void run(const std::stop_token& stop);

    std::function<std::size_t()> live_;
    const std::size_t drop_;
    const std::chrono::milliseconds period_;
    const std::chrono::milliseconds spacing_;
    std::atomic<std::size_t> trims_{0};
    std::mutex lock_;
    std::condition_variable_any wake_;
    std::jthread thread_;  // last: started once everything it uses exists
};

}  // namespace asiosmtpd::net
