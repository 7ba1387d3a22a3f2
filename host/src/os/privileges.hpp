// SPDX-License-Identifier: Apache-2.0
// os/privileges: whom the server runs as (issue 9). Started as root with server.user set, the
// executable binds its listeners and loads its TLS keys as root, then drop() switches to that
// user for good, before any plugin code runs: a plugin's create() and its C++ static
// constructors run when its .so is dlopen'ed, so plugins are loaded only after the drop.
// Linux only (setresuid, prctl, capget). The embedding Controller does not use this module:
// an application that embeds the server owns its process's credentials.
#pragma once

#include "config/config.hpp"

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace asiosmtpd::os {

/// A start-up problem with the process's credentials. what() is one line, starting with
/// "<config file>:<line>: <key>: " where a config key is the cause.
class privilege_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// What start-up does about privileges, decided by decide().
enum class plan {
    keep,       ///< not root (already the configured user, or no user configured): nothing to do
    drop,       ///< root with server.user: bind, load TLS, drop(), then load plugins
    stay_root,  ///< root without server.user and allow_root: plugins run as root (warn)
};

/// The plan for this process and config. Throws privilege_error when the config forbids how
/// the process was started: root without server.user while server.allow_root is false, or
/// server.user (server.group) naming another account while not root.
[[nodiscard]] plan decide(const config::settings& s);

/// The one warning line (log::warn) for plan::stay_root: plugins run as root, and how to fix it.
[[nodiscard]] std::string root_warning(const config::settings& s);

/// Switch to `who` for good: supplementary groups (the user's in the group database, the
/// primary/configured group excluded), then gid, then uid (real, effective and saved alike),
/// PR_SET_DUMPABLE 0 (the TLS key in memory stays out of reach of other processes of that
/// user) and PR_SET_NO_NEW_PRIVS 1 (no setuid/setgid executable gives privileges back).
/// Then checks that it holds: the ids read back, no capability left, setuid(0) and setgid(0)
/// fail. Throws privilege_error; the caller must exit then (the process may be half-switched).
void drop(const config::run_as& who);

/// After a successful drop(): "nobody (uid 65534)"; empty before (or if none happened).
[[nodiscard]] std::string dropped_to();

/// The explanation appended to "cannot listen on ADDR:PORT: Permission denied": after a drop,
/// ports below the unprivileged limit can only be opened at start-up ("restart to add it");
/// otherwise that they need root or CAP_NET_BIND_SERVICE. Empty when it does not apply.
[[nodiscard]] std::string bind_denied_hint(std::uint16_t port);

/// Every plugin file of `s` openable for reading by the current (dropped-to) user? `dirs`:
/// the folders searched for plugins by name, as computed before the drop (plugin::search_dirs),
/// so that a folder the user cannot enter is named rather than skipped. Throws privilege_error:
/// "<config>: plugins[0]: plugin file /x/sink.so not readable by user nobody: Permission denied",
/// "<config>: plugins[0].name: plugin folder /x not accessible by user nobody (...)".
/// A file that does not exist is left to the loader's own message.
void check_plugin_files(const config::settings& s, const std::vector<std::filesystem::path>& dirs);

}  // namespace asiosmtpd::os
