// SPDX-License-Identifier: Apache-2.0
#include "plugin/log_sink.hpp"

#include "plugin/generation.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>

namespace asiosmtpd::plugin {
namespace {

class stderr_sink final : public log_sink {
public:
    [[nodiscard]] bool enabled(log_level l) const noexcept override { return l >= log_level::info; }
    void write(log_level l, std::string_view line) noexcept override
    {
        static constexpr std::string_view names[] = {"?", "debug", "info", "warn", "error"};
        const auto i = static_cast<std::size_t>(l);
        try {
            std::string out(i < 5 ? names[i] : names[0]);
            out.append(" ").append(line).append("\n");
            const std::lock_guard guard(lock_);
            std::fwrite(out.data(), 1, out.size(), stderr);
            std::fflush(stderr);
        } catch (...) {}
    }

private:
    std::mutex lock_;
};

stderr_sink fallback;
std::atomic<log_sink*> process_sink{nullptr};

}  // namespace

void set_default_log_sink(log_sink* sink) noexcept { process_sink.store(sink, std::memory_order_release); }

log_sink& log_for(const asiosmtpd_ctx* who) noexcept
{
    if (who != nullptr && who->sink != nullptr) return *who->sink;
    log_sink* s = process_sink.load(std::memory_order_acquire);
    return s != nullptr ? *s : fallback;
}

}  // namespace asiosmtpd::plugin
