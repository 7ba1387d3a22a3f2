// SPDX-License-Identifier: Apache-2.0
// generation: the plugins of one configuration as the hook chains see them: the instances in
// config order, the hook chains, the commands, EHLO keywords and AUTH mechanisms they
// registered, and the registrar handed to create(). Standard library only (part of the core
// the test kit runs too); loading .so files is the loader's (loader.hpp, Boost.DLL).
#pragma once

#include "config/node.hpp"
#include "plugin/draft.hpp"
#include "plugin/log_sink.hpp"
#include "proto/engine.hpp"

#include <asiosmtpd/plugin.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace asiosmtpd::plugin {

/// asiosmtpd_call::hook of a call into a plugin's AUTH mechanism (not an ABI hook id).
inline constexpr std::int32_t auth_mechanism_call = static_cast<std::int32_t>(proto::hook_kind::auth_mechanism);

/// One past the highest hook id this host knows (ABI 1.3).
inline constexpr std::size_t hook_count = ASIOSMTPD_HOOK_TXN_END + 1;

}  // namespace asiosmtpd::plugin

/// One plugin instance (one `plugins:` entry). The SDK's opaque asiosmtpd_ctx.
struct asiosmtpd_ctx {
    /// The opened file (the loader's library, the test kit's dlopen handle): declared first,
    /// so that it is closed last, after destroy().
    std::shared_ptr<void> lib;
    const asiosmtpd_plugin_descriptor* desc = nullptr;
    void* self = nullptr;
    std::string name;  ///< descriptor name, for logs
    std::string key;   ///< "plugins[0]"
    std::chrono::milliseconds timeout{30000};
    bool thread_safe = false;
    bool editor = false;       ///< declare_editor() (ABI 1.3): may edit messages in its DATA hook
    bool holds_state = false;  ///< keep_state() (ABI 1.3): release its hold when destroyed
    std::mutex serial;         ///< taken around every hook call when !thread_safe (T3)
    /// Where this instance's log lines go (nullptr: the process's sink, log_sink.hpp).
    asiosmtpd::plugin::log_sink* sink = nullptr;

    asiosmtpd_ctx() = default;
    asiosmtpd_ctx(const asiosmtpd_ctx&) = delete;
    asiosmtpd_ctx& operator=(const asiosmtpd_ctx&) = delete;
    ~asiosmtpd_ctx();  ///< runs destroy() once create() succeeded
};

namespace asiosmtpd::plugin {

using instance = ::asiosmtpd_ctx;

struct hook_entry {
    instance* owner = nullptr;
    asiosmtpd_hook_fn fn = nullptr;
};

struct command_entry {
    std::string verb;
    std::string help;
    std::uint32_t flags = 0;
    hook_entry handler;
};

struct auth_mechanism_entry {
    std::string name;  ///< upper-case
    hook_entry handler;
};

class generation {
public:
    generation() = default;
    generation(const generation&) = delete;
    generation& operator=(const generation&) = delete;
    ~generation();  ///< destroys instances in reverse config order

    std::vector<std::unique_ptr<instance>> instances;  ///< config order
    std::array<std::vector<hook_entry>, hook_count> hooks;
    std::vector<command_entry> commands;
    std::vector<std::string> ehlo_keywords;
    std::vector<auth_mechanism_entry> auth_mechanisms;
    /// Where messages are held while editors run (server.spool_threshold, spool_directory).
    spool_settings spool;

    /// The index in `instances` of the first editor (declare_editor()) with a DATA hook, or
    /// npos when no plugin edits messages.
    [[nodiscard]] std::size_t first_editor() const noexcept;
    /// The index of `owner` in `instances` (npos when it is not there).
    [[nodiscard]] std::size_t position(const instance* owner) const noexcept;

    /// proto::hook_bit() of every hook with at least one entry, plus custom commands.
    [[nodiscard]] std::uint32_t hook_mask() const noexcept;
    /// Drop everything `owner` registered (its create() failed).
    void forget(const instance* owner);
};

/// What the engine must know of a generation's registrations: the plugins' commands, EHLO
/// keywords and AUTH mechanisms, the hook mask, and whether the DATA hook needs the whole
/// message (some plugin with a DATA hook takes no DATA_CHUNK) or a session keeps one chunk.
void add_registrations(proto::settings& e, const generation& g);

/// The host function table handed to every plugin.
const asiosmtpd_host_api& host_api() noexcept;

/// keep_state() (plugin.h): the data kept for (`plugin`'s name, `key`), `candidate` when none
/// was; `owner` holds it until drop_kept_state(owner).
void* keep_state(instance* owner, std::string_view key, void* candidate, void (*release)(void*));
/// `owner` is gone (after its destroy()): it holds no kept state any more; the last holder of
/// an entry has its release() called.
void drop_kept_state(const instance* owner) noexcept;

}  // namespace asiosmtpd::plugin

/// The registrar handed to create(); valid only during it.
struct asiosmtpd_registrar {
    asiosmtpd::plugin::generation* gen = nullptr;
    asiosmtpd::plugin::instance* owner = nullptr;
    const asiosmtpd::config::node* config = nullptr;
    bool frozen = false;
    std::string base_dir;
    bool check_only = false;  ///< asiosmtpd --check-config: is_check_only() answers 1

    /// The last cfg_error() (ABI 1.3): the node (of `config`) and key that are wrong.
    struct config_report {
        bool given = false;
        const asiosmtpd::config::node* at = nullptr;
        std::string key;
        std::string message;
    } report;
    /// The last registration refused for a conflict, with who holds the name
    /// ("command PING is registered by plugins[0] (ping) already").
    std::string conflict;
};

namespace asiosmtpd::plugin {

/// Why an instance's create() failed, as the loader and the test kit say it.
struct create_failure {
    bool config = false;  ///< from cfg_error(): `key` is the full key, `line` its line (0: unknown)
    std::uint32_t line = 0;
    std::string key;      ///< "plugins[0].config.dealy" (config only)
    std::string problem;  ///< "unknown key (did you mean 'delay'?)", "refused its configuration: <reason>"
};

/// The failure of create() for the instance `key` ("plugins[0]") from what it reported through
/// `reg` and the errbuf's `reason`: a cfg_error() report first, then a refused registration
/// (a command or AUTH mechanism another plugin holds), else "refused its configuration: ...".
/// `root_line`: the line of the entry's `config:` key (or of the entry), for the root.
/// Control bytes in what the plugin gave are escaped.
create_failure describe_failure(const asiosmtpd_registrar& reg, std::string_view key, std::string_view reason,
                                std::uint32_t root_line);

}  // namespace asiosmtpd::plugin
