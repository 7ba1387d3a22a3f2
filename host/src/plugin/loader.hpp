// plugin: loading plugins (Boost.DLL) into a generation, and the host API table. A generation
// is immutable once loaded: the instances in config order, the hook chains, the commands and
// EHLO keywords they registered. Sessions hold the generation they started on (shared_ptr), so
// a library is unloaded only after its last session ended. Calling the plugins is chain.hpp's.
#pragma once

#include "config/config.hpp"
#include "proto/engine.hpp"

#include <asiosmtpd/plugin.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace asiosmtpd::plugin {

/// A plugin that cannot be used: what() is "plugin <file or name> (<key>): <reason>".
class load_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct library;

/// asiosmtpd_call::hook of a call into a plugin's AUTH mechanism (not an ABI hook id).
inline constexpr std::int32_t auth_mechanism_call = static_cast<std::int32_t>(proto::hook_kind::auth_mechanism);

/// One past the highest hook id this host knows (ABI 1.1).
inline constexpr std::size_t hook_count = ASIOSMTPD_HOOK_DATA_CHUNK + 1;

} // namespace asiosmtpd::plugin

/// One plugin instance (one `plugins:` entry). The SDK's opaque asiosmtpd_ctx.
struct asiosmtpd_ctx {
    std::shared_ptr<asiosmtpd::plugin::library> lib; // declared first: destroyed last
    const asiosmtpd_plugin_descriptor* desc = nullptr;
    void* self = nullptr;
    std::string name;  ///< descriptor name, for logs
    std::string key;   ///< "plugins[0]"
    std::chrono::milliseconds timeout{30000};
    bool thread_safe = false;
    std::mutex serial; ///< taken around every hook call when !thread_safe (T3)

    asiosmtpd_ctx() = default;
    asiosmtpd_ctx(const asiosmtpd_ctx&) = delete;
    asiosmtpd_ctx& operator=(const asiosmtpd_ctx&) = delete;
    ~asiosmtpd_ctx();
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
    std::string name; ///< upper-case
    hook_entry handler;
};

class generation {
public:
    generation() = default;
    generation(const generation&) = delete;
    generation& operator=(const generation&) = delete;
    ~generation(); ///< destroys instances in reverse config order

    std::vector<std::unique_ptr<instance>> instances;  ///< config order
    std::array<std::vector<hook_entry>, hook_count> hooks;
    std::vector<command_entry> commands;
    std::vector<std::string> ehlo_keywords;
    std::vector<auth_mechanism_entry> auth_mechanisms;

    /// proto::hook_bit() of every hook with at least one entry, plus custom commands.
    [[nodiscard]] std::uint32_t hook_mask() const noexcept;
};

/// The folders searched for plugins given by name, in order: plugin_path from the config,
/// the build tree's plugin folder, <exe>/../plugins, <exe>/../lib/asiosmtpd/plugins.
std::vector<std::filesystem::path> search_dirs(const config::settings& s);

/// Load every plugin of the config, create its instance with its config subtree and collect
/// its registrations. Throws load_error naming the file, the config key and the reason.
/// Each file is loaded from a private copy (a 0700 folder of this process, unlinked once
/// mapped): dlopen() of a path or inode already loaded returns the old code, so a plugin
/// rebuilt in place would never change on reload, and a file overwritten in place would
/// corrupt the running mapping. No file can end the process here: anything but a regular file
/// (a FIFO, a directory, a device) is refused before it is opened for loading, and the copy's
/// ELF structure is checked before dlopen() (elf_check.hpp: truncated, another machine...).
std::shared_ptr<const generation> load(const config::settings& s);

} // namespace asiosmtpd::plugin

/// The registrar handed to create(); valid only during it.
struct asiosmtpd_registrar {
    asiosmtpd::plugin::generation* gen = nullptr;
    asiosmtpd::plugin::instance* owner = nullptr;
    const asiosmtpd::config::node* config = nullptr;
    bool frozen = false;
    std::string base_dir;
};

namespace asiosmtpd::plugin {

/// Wait until every generation whose last reference was dropped has been destroyed (their
/// plugins' destroy() run and libraries closed). Call before returning from main.
void drain_retired();

/// The host function table handed to every plugin.
const asiosmtpd_host_api& host_api() noexcept;

} // namespace asiosmtpd::plugin
