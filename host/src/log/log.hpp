// SPDX-License-Identifier: Apache-2.0
// log: one line per event on stderr, "<level> <key=value ...>". The engine does not log; the
// session, the loader and plugins do, through here. Remote text goes through escaped().
#pragma once

#include "log/escape.hpp"

#include <fmt/format.h>

#include <string>
#include <string_view>

namespace asiosmtpd::log {

enum class level { debug = 1, info = 2, warn = 3, error = 4 };

void set_level(level l) noexcept;
[[nodiscard]] bool enabled(level l) noexcept;
/// Write one finished line (a newline is added); thread-safe.
void write(level l, std::string_view line);

template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args)
{
    if (enabled(level::debug)) write(level::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args)
{
    if (enabled(level::info)) write(level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args)
{
    if (enabled(level::warn)) write(level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args)
{
    if (enabled(level::error)) write(level::error, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace asiosmtpd::log
