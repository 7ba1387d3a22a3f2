// SPDX-License-Identifier: Apache-2.0
// The memory trimmer: malloc_trim(0) on its own thread once the session count fell.
#include "net/trimmer.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace asiosmtpd::net {
namespace {

TEST(memory_trimmer, trims_once_after_the_session_count_fell)
{
    std::atomic<std::size_t> live{0};
    const memory_trimmer trimmer([&] { return live.load(); }, 64, std::chrono::milliseconds(5),
                                 std::chrono::milliseconds(0));
    const auto wait_for = [&](std::size_t n) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
        while (trimmer.trims() < n && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return trimmer.trims();
    };
    live = 100;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    live = 60;  // fell by 40: not enough
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(trimmer.trims(), 0u);
    live = 10;
    EXPECT_EQ(wait_for(1), 1u);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(trimmer.trims(), 1u);  // once per fall
}

}  // namespace
}  // namespace asiosmtpd::net
