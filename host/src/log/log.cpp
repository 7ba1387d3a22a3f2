// SPDX-License-Identifier: Apache-2.0
#include "log/log.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace asiosmtpd::log {
namespace {
std::atomic<int> threshold{static_cast<int>(level::info)};
std::mutex out_lock;

std::string_view name(level l) noexcept
{
    switch (l) {
    case level::debug: return "debug";
    case level::info: return "info";
    case level::warn: return "warn";
    case level::error: return "error";
    }
    return "?";
}
}  // namespace

void set_level(level l) noexcept { threshold.store(static_cast<int>(l), std::memory_order_relaxed); }

bool enabled(level l) noexcept { return static_cast<int>(l) >= threshold.load(std::memory_order_relaxed); }

void write(level l, std::string_view line)
{
    std::string out;
    out.reserve(line.size() + 8);
    out.append(name(l)).append(" ").append(line).append("\n");
    const std::lock_guard guard(out_lock);
    std::fwrite(out.data(), 1, out.size(), stderr);
    std::fflush(stderr);
}

}  // namespace asiosmtpd::log
