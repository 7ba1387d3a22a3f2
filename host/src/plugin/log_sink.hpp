// SPDX-License-Identifier: Apache-2.0
// log_sink: where the core's log lines go (plugin log() calls, plugin_blocking incidents).
// The core has no logger of its own: the server sets its log (log.hpp) as the process's
// sink, the test kit gives each instance its host's capture. Standard library only.
#pragma once

#include "log/escape.hpp"

#include <cstddef>
#include <string>
#include <string_view>

struct asiosmtpd_ctx;

namespace asiosmtpd::plugin {

enum class log_level { debug = 1, info = 2, warn = 3, error = 4 };

class log_sink {
public:
    virtual ~log_sink() = default;
    [[nodiscard]] virtual bool enabled(log_level l) const noexcept = 0;
    /// One finished line ("session=1 plugin=x ..."), without the level; thread-safe.
    virtual void write(log_level l, std::string_view line) noexcept = 0;
};

/// The process's sink, used for instances without one of their own. Until one is set (or
/// after set_default_log_sink(nullptr)): stderr, "<level> <line>", info and up.
void set_default_log_sink(log_sink* sink) noexcept;
/// The sink for lines about `who` (its own, else the process's).
[[nodiscard]] log_sink& log_for(const asiosmtpd_ctx* who) noexcept;

using log::escaped;  // log/escape.hpp

}  // namespace asiosmtpd::plugin
