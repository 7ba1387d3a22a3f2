// SPDX-License-Identifier: Apache-2.0
// log: one line per event on stderr, "<level> <key=value ...>". The engine does not log; the
// session, the loader and plugins do, through here. Remote text goes through escaped().
//
// How a line looks (log.format, log.timestamps): text "2026-12-07T19:30:00.123Z info key=value"
// or one JSON object per line; under systemd (JOURNAL_STREAM names stderr) each line starts
// with its syslog priority "<6>" and, unless asked, carries no timestamp (the journal has one).
#pragma once

#include "log/escape.hpp"

#include <fmt/format.h>

#include <chrono>
#include <string>
#include <string_view>

namespace asiosmtpd::log {

enum class level { debug = 1, info = 2, warn = 3, error = 4 };
enum class format { text, json };
enum class stamps { automatic, on, off };  ///< automatic: on, except when stderr is the journal

void set_level(level l) noexcept;
[[nodiscard]] bool enabled(level l) noexcept;
/// The line format from now on; thread-safe.
void set_format(format f, stamps s) noexcept;
/// Whether stderr is the systemd journal: JOURNAL_STREAM ("<dev>:<inode>") names the file that
/// fd 2 is. Read once at start-up.
void detect_journal() noexcept;
/// Write one finished line (a newline is added); thread-safe.
void write(level l, std::string_view line);

/// The bytes written for one line (pure; write() uses it). `journal`: the "<N>" priority prefix.
/// JSON: {"time":..,"level":..,<each key=value as a string field>,"msg":<the other words>};
/// a repeated key gets a suffix (_2, _3...).
[[nodiscard]] std::string render(level l, std::string_view line, std::chrono::system_clock::time_point now, format f,
                                 bool stamp, bool journal);

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
