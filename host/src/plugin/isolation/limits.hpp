// SPDX-License-Identifier: Apache-2.0
// The server's side of a plugin process's limits (isolation: process): memory_limit as a
// cgroup v2 memory.max where the server can make cgroups, and whether plugins[].user can be
// honoured by this process. The child's side (cpu_limit, the switch of user) is
// child_limits.hpp.
//
// memory_limit by cgroup: when cgroup2 is mounted, the memory controller is available in the
// server's own cgroup and the server may enable it for cgroups below its own (it can write its
// cgroup: root, or a subtree delegated to its user, as systemd's Delegate=yes does), each child
// gets a cgroup of its own below the server's, `asiosmtpd-<server pid>-<key>-<n>`, with
// memory.max = memory_limit (resident memory and page cache, the plugin's threads and any
// process it starts), memory.swap.max = 0 and memory.oom.group = 1. When the server shares its
// cgroup with no other process, it moves itself into a leaf `asiosmtpd-server` first (cgroup v2
// enables controllers only for the children of a cgroup without processes of its own). A child
// that goes past the limit is killed by the kernel's OOM killer (a crash, reason=memory). The
// cgroup is removed when its child has ended (what the plugin left running in it is killed
// first). Otherwise RLIMIT_AS, as before; the start-up log says which applies and why.
#pragma once

#include "config/config.hpp"

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <sys/types.h>

namespace asiosmtpd::plugin::isolation::limits {

/// Whether memory_limit can be a cgroup here; detected once per process (the first plugin with
/// a memory_limit), with the reason when not.
struct cgroup_support {
    bool usable = false;
    std::filesystem::path base;  // where the children's cgroups are made
    std::string why;             // why not (usable == false)
};
[[nodiscard]] const cgroup_support& memory_cgroups();

/// One child's cgroup.
class cgroup {
public:
    /// Made below memory_cgroups().base with the limits set; nullptr with `why` on failure.
    static std::shared_ptr<cgroup> make(std::string_view key, std::uint64_t memory_limit, std::string& why);
    /// Moves `pid` into it.
    bool add(pid_t pid, std::string& why);
    /// The kernel's OOM kills in it so far (memory.events oom_kill).
    [[nodiscard]] std::uint64_t oom_kills() const;
    /// Kills what is left in it and removes it.
    ~cgroup();
    cgroup(const cgroup&) = delete;
    cgroup& operator=(const cgroup&) = delete;
    [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

private:
    explicit cgroup(std::filesystem::path p) : path_(std::move(p)) {}
    std::filesystem::path path_;
};

/// plugins[].user for this process: "" when the child can run as that user (the server is root,
/// or already that user), else why not.
[[nodiscard]] std::string user_problem(const config::plugin_entry& e);

/// Whether the child must switch to e.user (the server is root and e.user is another account).
[[nodiscard]] bool switches_user(const config::plugin_entry& e);

/// Removes, once per process, the working folders (`asiosmtpd-plugin-<pid>-*` in `tmp`) of
/// plugin processes whose server is gone (killed before it could remove them).
void sweep_workdirs(const std::filesystem::path& tmp);

/// The server pid in a name "<prefix><pid>-...", 0 when it has none.
[[nodiscard]] long owner_pid(std::string_view name, std::string_view prefix);

// ---- parsing, for the tests ----

/// The folder of this process's cgroup2 cgroup from /proc/self/mountinfo and /proc/self/cgroup;
/// nullopt when there is no cgroup2 mount or no unified hierarchy entry, or it is not below the mount.
[[nodiscard]] std::optional<std::filesystem::path> unified_dir(std::string_view mountinfo,
                                                               std::string_view proc_cgroup);
/// The value of `key` in a flat keyed file (memory.events: "oom_kill 3"); 0 when absent.
[[nodiscard]] std::uint64_t keyed_value(std::string_view text, std::string_view key);
/// Whether a space-separated list (cgroup.controllers) holds `word`.
[[nodiscard]] bool has_word(std::string_view list, std::string_view word);

}  // namespace asiosmtpd::plugin::isolation::limits
