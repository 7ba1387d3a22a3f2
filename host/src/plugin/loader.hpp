// plugin: loading plugins (Boost.DLL) into a generation, the host API table, and one hook
// call's state. A generation is immutable once loaded: the instances in config order, the
// hook chains, the commands and EHLO keywords they registered. Sessions hold the generation
// they started on (shared_ptr), so a library is unloaded only after its last session ended.
// No Asio here; the session awaits PENDING calls through the pending_call it is handed.
#pragma once

#include "config/config.hpp"
#include "proto/engine.hpp"

#include <asiosmtpd/plugin.h>
#include <asiosmtpd/reply_rules.hpp>

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

// --------------------------------------------------------------------------------------------
// Hook calls
// --------------------------------------------------------------------------------------------

/// What a hook call can see of its session; implemented by the session.
class session_view {
public:
    virtual ~session_view() = default;
    [[nodiscard]] virtual std::uint64_t session_id() const noexcept = 0;
    [[nodiscard]] virtual const proto::engine& smtp() const noexcept = 0;
    [[nodiscard]] virtual std::string_view peer_address() const noexcept = 0;
    [[nodiscard]] virtual std::uint16_t peer_port() const noexcept = 0;
    /// TLS details ("" when TLS is not active).
    [[nodiscard]] virtual std::string_view tls_version() const noexcept { return {}; }
    [[nodiscard]] virtual std::string_view tls_cipher() const noexcept { return {}; }
    [[nodiscard]] virtual std::string_view tls_peer_subject() const noexcept { return {}; }
    /// Per-instance data slots of this session (scope session or transaction).
    virtual class slots& data_slots() noexcept = 0;
};

/// One plugin's private data for one scope.
struct slot {
    void* data = nullptr;
    void (*dtor)(void*) = nullptr;
};

/// The slots of one session. Transaction slots are freed when the engine's envelope changes.
class slots {
public:
    slots() = default;
    slots(const slots&) = delete;
    slots& operator=(const slots&) = delete;
    ~slots() { clear_all(); }
    slot* find(const instance* owner, int32_t scope) noexcept;
    void set(const instance* owner, int32_t scope, slot s);
    void clear_transaction() noexcept;
    void clear_all() noexcept;

private:
    struct entry {
        const instance* owner;
        int32_t scope;
        slot value;
    };
    std::vector<entry> entries_;
};

/// A suspended hook call: filled by complete() on any thread, then `notify` runs (the
/// session posts to its strand). Tokens are never reused, so a stale one is recognised.
struct pending_call {
    std::mutex lock;
    std::int32_t hook = 0;  ///< asiosmtpd_call::hook of the suspended call (set by suspend())
    bool done = false;
    int32_t verdict = ASIOSMTPD_CONTINUE;
    std::uint16_t code = 0;
    std::string text;
    std::function<void()> notify; ///< set by the session before it waits
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies; ///< set_rcpt_reply_pending
    /// DATA: the recipients of the transaction (set by suspend()), and the per-recipient
    /// replies refused so far (asiosmtpd_call::refused_rcpt_replies, moved here by suspend()).
    /// complete() ends a call with refusals left as a plugin error.
    std::size_t rcpt_count = 0;
    std::vector<std::pair<std::size_t, std::string>> refused_rcpt_replies;
};

/// Forget a token (timeout, session gone): a later complete() gets ASIOSMTPD_E_GONE.
void cancel(asiosmtpd_token token) noexcept;

} // namespace asiosmtpd::plugin

/// The registrar handed to create(); valid only during it.
struct asiosmtpd_registrar {
    asiosmtpd::plugin::generation* gen = nullptr;
    asiosmtpd::plugin::instance* owner = nullptr;
    const asiosmtpd::config::node* config = nullptr;
    bool frozen = false;
    std::string base_dir;
};

/// One hook call. The SDK's opaque asiosmtpd_call; lives on the session's stack or frame.
struct asiosmtpd_call {
    asiosmtpd::plugin::instance* owner = nullptr;
    asiosmtpd::plugin::session_view* session = nullptr;
    std::int32_t hook = 0;
    bool active = true;               ///< false once the hook returned (T5)
    std::uint16_t code = 0;           ///< set_reply
    std::string text;
    std::string auth_challenge;       ///< set_auth_challenge
    std::string auth_identity;        ///< set_auth_identity
    std::vector<std::pair<std::uint16_t, std::string>> rcpt_replies; ///< set_rcpt_reply
    /// Per-recipient replies set_rcpt_reply() refused (recipient index, the log's reason),
    /// each until a later call for the same recipient succeeds. Like refused_reply, invoke()
    /// turns a verdict given with one left into refused_verdict. suspend() moves these and
    /// rcpt_replies to the pending call, where set_rcpt_reply[_pending]() go on from then.
    std::vector<std::pair<std::size_t, std::string>> refused_rcpt_replies;
    asiosmtpd_token token = 0;        ///< set by suspend()
    std::shared_ptr<asiosmtpd::plugin::pending_call> pending;
    /// Why set_reply() last refused a reply; cleared by an accepted one. invoke() turns a
    /// verdict given after a refused reply into refused_verdict.
    std::string refused_reply;
};

namespace asiosmtpd::plugin {

/// Wait until every generation whose last reference was dropped has been destroyed (their
/// plugins' destroy() run and libraries closed). Call before returning from main.
void drain_retired();

/// A host-internal verdict (not an ABI value): the plugin gave a reply the host refused
/// (set_reply() refused and never replaced, or complete() with a bad verdict or reply). The
/// call's text carries the reason, code is 0; to_result() turns it into verdict::error.
inline constexpr std::int32_t refused_verdict = -1001;

/// Reply text rules (RFC 5321 §4.2 textstring, RFC 6531 §3.3 UTF-8), shared with the test kit
/// and plugins through the SDK: why a reply is not acceptable ("" when it is). Code 0 means
/// "no reply" and is never checked.
using sdk::max_reply_line;
using sdk::max_reply_text;
using sdk::reply_problem;

/// Call one hook entry (taking the instance lock when the plugin is not thread-safe). The call
/// is watched: one that keeps its event-loop thread longer than blocking_threshold is logged
/// (event=plugin_blocking) while it still runs. A verdict (anything but PENDING) given after a
/// refused set_reply(), or with a refused set_rcpt_reply() not replaced, comes back as
/// refused_verdict with the reason in call.text (and no per-recipient replies).
int32_t invoke(const hook_entry& e, asiosmtpd_call& call, const void* args) noexcept;

/// A hook call holding its thread longer than this is a blocking incident (plugin.h T4).
inline constexpr std::chrono::milliseconds blocking_threshold{500};
/// How often the watchdog thread looks at the calls in progress.
inline constexpr std::chrono::milliseconds blocking_check_interval{100};
/// Blocking incidents since start (asiosmtpd_plugin_blocking_total).
[[nodiscard]] std::uint64_t blocking_incidents() noexcept;

/// Turn a plugin's verdict and reply into what the engine applies; a verdict or reply that
/// makes no sense becomes verdict::error with a reason in `why`: an unknown verdict, a reply
/// breaking reply_problem()'s rules (whatever the verdict), a reply class that does not fit the
/// verdict (ACCEPT 2xx/3xx, REJECT* 5xx, TEMPFAIL* 4xx; CONTINUE ignores its reply),
/// refused_verdict. ASIOSMTPD_AUTH_CHALLENGE is only valid where `challenge_allowed` (AUTH
/// mechanisms).
proto::hook_result to_result(int32_t verdict, std::uint16_t code, std::string text, std::string& why,
                             bool challenge_allowed = false);

/// The host function table handed to every plugin.
const asiosmtpd_host_api& host_api() noexcept;

} // namespace asiosmtpd::plugin
