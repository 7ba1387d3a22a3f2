// SPDX-License-Identifier: Apache-2.0
// isolation: a plugin configured with `isolation: process` runs in a child process
// (asiosmtpd-plugin-host, installed beside the server). In the server it is an adapter: a
// plugin of its own that implements the plugin's side of the ABI by forwarding every hook call
// as one frame over a socketpair (wire.hpp) and suspending the call until the child answers.
// The hook chains, the engine and the sessions see an ordinary plugin.
//
// The child crashing, exiting or hanging (a hook that does not return within the plugin's
// timeout) ends every call in flight as a plugin error; the child is started again after a
// backoff, and given up on (every call a plugin error) after max_crashes in crash_window,
// until a reload starts a new one. docs/architecture.md "Process isolation" tells the whole.
#pragma once

#include "config/config.hpp"

#include <asiosmtpd/plugin.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

namespace asiosmtpd::plugin::isolation {

/// Crashes within this window that make the server give up on a child until a reload.
inline constexpr int max_crashes = 5;
inline constexpr std::chrono::seconds crash_window{60};
/// The first restart waits this long; each further crash in the window doubles it.
inline constexpr std::chrono::milliseconds first_backoff{100};
inline constexpr std::chrono::milliseconds max_backoff{5000};

/// Start the child for `file` (the `plugins:` entry `e`) and have it load the plugin. Returns
/// what the instance holds as its library (the child's supervisor) and sets `desc` to the
/// adapter's descriptor: the plugin's name, version and ABI minor, the adapter's create() and
/// destroy(). Throws std::runtime_error with the reason (the caller names file and key).
std::shared_ptr<void> open(const config::settings& s, const config::plugin_entry& e, const std::filesystem::path& file,
                           const asiosmtpd_plugin_descriptor*& desc);

/// Children that crashed, hung or were killed (asiosmtpd_plugin_process_crashes_total), and
/// children started again after one (asiosmtpd_plugin_process_restarts_total).
[[nodiscard]] std::uint64_t crashes() noexcept;
[[nodiscard]] std::uint64_t restarts() noexcept;

}  // namespace asiosmtpd::plugin::isolation
