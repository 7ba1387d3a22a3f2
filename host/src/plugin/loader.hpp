// SPDX-License-Identifier: Apache-2.0
// plugin: loading plugins (Boost.DLL) into a generation (generation.hpp). A generation is
// immutable once loaded: the instances in config order, the hook chains, the commands and
// EHLO keywords they registered. Sessions hold the generation they started on (shared_ptr), so
// a library is unloaded only after its last session ended. Calling the plugins is chain.hpp's.
#pragma once

#include "config/config.hpp"
#include "plugin/generation.hpp"

#include <asiosmtpd/plugin.h>

#include <filesystem>
#include <memory>
#include <stdexcept>
#include <vector>

namespace asiosmtpd::plugin {

/// A plugin that cannot be used: what() is "plugin <file or name> (<key>): <reason>".
class load_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
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
/// `check_only`: asiosmtpd --check-config; plugins are told (is_check_only()) so that their
/// create() checks without changing anything on disk.
std::shared_ptr<const generation> load(const config::settings& s, bool check_only = false);

/// Wait until every generation whose last reference was dropped has been destroyed (their
/// plugins' destroy() run and libraries closed). Call before returning from main.
void drain_retired();

}  // namespace asiosmtpd::plugin
