// SPDX-License-Identifier: Apache-2.0
#include "net/trimmer.hpp"

#include "log/log.hpp"

#include <algorithm>
#include <utility>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace asiosmtpd::net {

memory_trimmer::memory_trimmer(std::function<std::size_t()> live, std::size_t drop, std::chrono::milliseconds period,
                               std::chrono::milliseconds spacing)
    : live_(std::move(live)),
      drop_(drop),
      period_(period),
      spacing_(spacing),
      thread_([this](const std::stop_token& stop) { run(stop); })
{}

memory_trimmer::~memory_trimmer()
{
    thread_.request_stop();  // wakes the wait below
    thread_.join();
}

void memory_trimmer::run(const std::stop_token& stop)
{
    std::size_t highest = 0;
    auto last = std::chrono::steady_clock::now() - spacing_;
    std::unique_lock lock(lock_);
    for (;;) {
        (void)wake_.wait_for(lock, stop, period_, [] { return false; });  // a sleep that a stop ends
        if (stop.stop_requested()) return;
        const std::size_t now = live_();
        highest = std::max(highest, now);
        if (highest - now < drop_ || std::chrono::steady_clock::now() - last < spacing_) continue;
#if defined(__GLIBC__)
        const auto started = std::chrono::steady_clock::now();
        const int released = malloc_trim(0);
        last = std::chrono::steady_clock::now();
        log::debug("event=malloc_trim sessions_before={} sessions={} released={} ms={}", highest, now, released != 0,
                   std::chrono::duration_cast<std::chrono::milliseconds>(last - started).count());
#else
        last = std::chrono::steady_clock::now();
#endif
        trims_.fetch_add(1, std::memory_order_relaxed);
        highest = now;
    }
}

}  // namespace asiosmtpd::net
