// SPDX-License-Identifier: Apache-2.0
#include "log/log.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <vector>

namespace asiosmtpd::log {
namespace {
std::atomic<int> threshold{static_cast<int>(level::info)};
std::atomic<format> line_format{format::text};
std::atomic<stamps> line_stamps{stamps::automatic};
std::atomic<bool> journal{false};
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

// syslog(3) priorities, as journald reads them from a "<N>" prefix.
int priority(level l) noexcept
{
    switch (l) {
    case level::debug: return 7;
    case level::info: return 6;
    case level::warn: return 4;
    case level::error: return 3;
    }
    return 6;
}

// RFC 3339, UTC, milliseconds: "2026-12-07T19:30:00.123Z".
std::string rfc3339(std::chrono::system_clock::time_point now)
{
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
    const std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
}

void json_string(std::string& out, std::string_view s)
{
    out.push_back('"');
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out.push_back('\\');
            out.push_back(c);
        } else if (u < 0x20 || u >= 0x7f) {
            out += fmt::format("\\u{:04x}", u);  // lines are ASCII (escaped()); anything else stays valid JSON
        } else {
            out.push_back(c);
        }
    }
    out.push_back('"');
}

bool key_char(char c, bool first) noexcept
{
    return (c >= 'a' && c <= 'z') || c == '_' || (!first && ((c >= '0' && c <= '9') || c == '-'));
}

// The line's words: key=value (value bare or "quoted") as fields, the rest as the message.
void json_fields(std::string& out, std::string_view line)
{
    std::vector<std::string> keys;
    std::string msg;
    std::size_t i = 0;
    while (i < line.size()) {
        while (i < line.size() && line[i] == ' ') ++i;
        if (i >= line.size()) break;
        std::size_t k = i;
        while (k < line.size() && key_char(line[k], k == i)) ++k;
        std::size_t end = line.find(' ', i);
        if (end == std::string_view::npos) end = line.size();
        if (k > i && k < line.size() && line[k] == '=') {
            std::string_view value;
            if (k + 1 < line.size() && line[k + 1] == '"') {
                // Quoted: up to the closing quote that ends the word.
                std::size_t q = k + 2;
                while (q < line.size() && !(line[q] == '"' && (q + 1 == line.size() || line[q + 1] == ' '))) ++q;
                value = line.substr(k + 2, q - k - 2);
                end = q < line.size() ? q + 1 : line.size();
            } else {
                value = line.substr(k + 1, end - k - 1);
            }
            std::string key(line.substr(i, k - i));
            const auto seen = static_cast<std::size_t>(std::count(keys.begin(), keys.end(), key));
            keys.push_back(key);
            if (seen > 0) key += "_" + std::to_string(seen + 1);
            out.push_back(',');
            json_string(out, key);
            out.push_back(':');
            json_string(out, value);
        } else {
            if (!msg.empty()) msg.push_back(' ');
            msg.append(line.substr(i, end - i));
        }
        i = end;
    }
    if (!msg.empty()) {
        out += ",\"msg\":";
        json_string(out, msg);
    }
}

}  // namespace

void set_level(level l) noexcept { threshold.store(static_cast<int>(l), std::memory_order_relaxed); }

bool enabled(level l) noexcept { return static_cast<int>(l) >= threshold.load(std::memory_order_relaxed); }

void set_format(format f, stamps s) noexcept
{
    line_format.store(f, std::memory_order_relaxed);
    line_stamps.store(s, std::memory_order_relaxed);
}

void detect_journal() noexcept
{
    const char* js = std::getenv("JOURNAL_STREAM");
    struct stat st {};
    if (js == nullptr || ::fstat(2, &st) != 0) return;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return;
    journal.store(dev == static_cast<unsigned long long>(st.st_dev) &&
                      ino == static_cast<unsigned long long>(st.st_ino),
                  std::memory_order_relaxed);
}

std::string render(level l, std::string_view line, std::chrono::system_clock::time_point now, format f, bool stamp,
                   bool in_journal)
{
    std::string out;
    out.reserve(line.size() + 48);
    if (in_journal) out += fmt::format("<{}>", priority(l));
    if (f == format::json) {
        out += "{";
        if (stamp) {
            out += "\"time\":";
            json_string(out, rfc3339(now));
            out += ",";
        }
        out += "\"level\":";
        json_string(out, name(l));
        json_fields(out, line);
        out += "}\n";
        return out;
    }
    if (stamp) out.append(rfc3339(now)).push_back(' ');
    out.append(name(l)).append(" ").append(line).append("\n");
    return out;
}

void write(level l, std::string_view line)
{
    const bool in_journal = journal.load(std::memory_order_relaxed);
    const stamps s = line_stamps.load(std::memory_order_relaxed);
    const bool stamp = s == stamps::on || (s == stamps::automatic && !in_journal);
    const std::string out = render(l, line, std::chrono::system_clock::now(),
                                   line_format.load(std::memory_order_relaxed), stamp, in_journal);
    const std::lock_guard guard(out_lock);
    std::fwrite(out.data(), 1, out.size(), stderr);
    std::fflush(stderr);
}

}  // namespace asiosmtpd::log
