// SPDX-License-Identifier: Apache-2.0
// os/privileges: deciding whether to switch user, switching for good, and checking that the
// plugin files can be read afterwards. The order of the calls in drop() is the usual one
// (Postfix's set_ugid(), OpenSSH's permanently_set_uid()): supplementary groups and gid while
// still root, uid last; then read everything back and make sure root cannot be regained.
#include "os/privileges.hpp"

#include <fmt/format.h>

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

namespace asiosmtpd::os {
namespace {

namespace fs = std::filesystem;

// Written once by drop() on the main thread, before any other thread exists; read later.
std::string dropped_user;  // "nobody"
std::uint32_t dropped_uid = 0;

// The name of a uid in the user database, or the number.
std::string user_name(uid_t uid)
{
    std::vector<char> buf(1024);
    for (;;) {
        passwd pw{};
        passwd* found = nullptr;
        const int rc = ::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found);
        if (rc == ERANGE && buf.size() < (1u << 20)) {
            buf.resize(buf.size() * 2);
            continue;
        }
        return rc == 0 && found != nullptr ? std::string(pw.pw_name) : std::to_string(uid);
    }
}

// "<file>:<line>" of a key, or the file when the key has no line (default values).
std::string at(const std::string& where, const config::settings& s) { return where.empty() ? s.file.string() : where; }

std::string account(const config::run_as& who)
{
    return fmt::format("user {} (uid {}), group {} (gid {})", who.user, who.uid, who.group, who.gid);
}

// net.ipv4.ip_unprivileged_port_start (Linux 4.11+), 1024 when it cannot be read.
int unprivileged_port_start()
{
    std::ifstream in("/proc/sys/net/ipv4/ip_unprivileged_port_start");
    int v = 1024;
    if (!(in >> v) || v < 0 || v > 65536) v = 1024;
    return v;
}

bool all_capabilities_cleared(int& err)
{
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
    if (::syscall(SYS_capget, &header, data) != 0) {
        err = errno;
        return false;
    }
    err = 0;
    return std::all_of(std::begin(data), std::end(data),
                       [](const auto& d) { return d.effective == 0 && d.permitted == 0 && d.inheritable == 0; });
}

// Open for reading as the current user; errno value on failure, 0 on success.
int open_error(const fs::path& p)
{
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return errno;
    ::close(fd);
    return 0;
}

}  // namespace

plan decide(const config::settings& s)
{
    const auto& srv = s.server;
    const uid_t euid = ::geteuid();
    if (euid == 0) {
        if (srv.user) return plan::drop;
        if (!srv.allow_root)
            throw privilege_error(fmt::format(
                "{}: server.allow_root: false without server.user: refusing to start as root (plugins would "
                "run as root); set server.user to an unprivileged account (e.g. nobody), or start asiosmtpd "
                "as an unprivileged user",
                at(srv.allow_root_at, s)));
        return plan::stay_root;
    }
    if (!srv.user) return plan::keep;
    const config::run_as& who = *srv.user;
    if (euid != who.uid)
        throw privilege_error(fmt::format(
            "{}: server.user: cannot switch to user {} (uid {}): asiosmtpd runs as user {} (uid {}), not as root; "
            "start it as root or as {}, or remove server.user",
            at(who.user_at, s), who.user, who.uid, user_name(euid), euid, who.user));
    if (who.group_given && ::getegid() != who.gid)
        throw privilege_error(fmt::format(
            "{}: server.group: cannot switch to group {} (gid {}): asiosmtpd runs with gid {}, not as root; "
            "start it as root or with that group, or remove server.group",
            at(who.group_at, s), who.group, who.gid, ::getegid()));
    return plan::keep;
}

std::string root_warning(const config::settings& s)
{
    return fmt::format("event=running_as_root config={} reason=\"server.user is not set\" "
                       "action=\"plugins run as root; set server.user (e.g. nobody) to drop privileges after "
                       "binding, or server.allow_root: false to refuse to start like this\"",
                       s.file.string());
}

void drop(const config::run_as& who)
{
    const auto fail = [&who](std::string_view step, int err) {
        return privilege_error(fmt::format("{}: server.user: cannot switch to {}: {}: {}", who.user_at, account(who),
                                           step, std::strerror(err)));
    };
    const auto broken = [&who](std::string_view what) {
        return privilege_error(
            fmt::format("{}: server.user: switched to {}, but {}: refusing to go on", who.user_at, account(who), what));
    };

    // The user's supplementary groups from the group database (getgrouplist adds `gid`, which
    // is the process's group already: left out, so that a user without any has none).
    std::vector<gid_t> groups(16);
    for (;;) {
        int n = static_cast<int>(groups.size());
        if (::getgrouplist(who.user.c_str(), who.gid, groups.data(), &n) >= 0) {
            groups.resize(static_cast<std::size_t>(n));
            break;
        }
        if (static_cast<std::size_t>(n) <= groups.size() || n > 65536) throw fail("getgrouplist", EINVAL);
        groups.resize(static_cast<std::size_t>(n));
    }
    groups.erase(std::remove(groups.begin(), groups.end(), static_cast<gid_t>(who.gid)), groups.end());

    // Capabilities must not survive the uid change (they do with PR_SET_KEEPCAPS).
    if (::prctl(PR_SET_KEEPCAPS, 0UL, 0UL, 0UL, 0UL) != 0) throw fail("prctl(PR_SET_KEEPCAPS, 0)", errno);
    if (::setgroups(groups.size(), groups.data()) != 0) throw fail("setgroups", errno);
    const auto gid = static_cast<gid_t>(who.gid);
    const auto uid = static_cast<uid_t>(who.uid);
    if (::setresgid(gid, gid, gid) != 0) throw fail("setresgid", errno);
    if (::setresuid(uid, uid, uid) != 0) throw fail("setresuid", errno);
    // The inheritable set is not cleared by setresuid(); nothing is needed from it.
    {
        __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
        __user_cap_data_struct none[_LINUX_CAPABILITY_U32S_3] = {};
        if (::syscall(SYS_capset, &header, none) != 0) throw fail("capset (clear)", errno);
    }
    // Not dumpable: another process of the same user (nobody is shared by many daemons) may not
    // ptrace this one or read its memory, which holds the TLS private key loaded as root. The
    // kernel does this on the uid change already unless fs.suid_dumpable says otherwise.
    if (::prctl(PR_SET_DUMPABLE, 0UL, 0UL, 0UL, 0UL) != 0) throw fail("prctl(PR_SET_DUMPABLE, 0)", errno);
    // No new privileges through execve() of a setuid/setgid/file-capability program: a plugin
    // that runs programs runs them as this user (systemd's NoNewPrivileges=yes).
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1UL, 0UL, 0UL, 0UL) != 0) throw fail("prctl(PR_SET_NO_NEW_PRIVS, 1)", errno);

    // Read everything back.
    uid_t ru = 0, eu = 0, su = 0;
    gid_t rg = 0, eg = 0, sg = 0;
    if (::getresuid(&ru, &eu, &su) != 0 || ru != uid || eu != uid || su != uid)
        throw broken("getresuid() does not report it");
    if (::getresgid(&rg, &eg, &sg) != 0 || rg != gid || eg != gid || sg != gid)
        throw broken("getresgid() does not report it");
    const int n = ::getgroups(0, nullptr);
    std::vector<gid_t> now(static_cast<std::size_t>(std::max(n, 0)));
    if (n < 0 || ::getgroups(n, now.data()) != n) throw broken("getgroups() failed");
    std::sort(now.begin(), now.end());
    std::sort(groups.begin(), groups.end());
    if (now != groups) throw broken("the supplementary groups are not the ones set");
    int err = 0;
    if (!all_capabilities_cleared(err))
        throw broken(err != 0 ? fmt::format("capget: {}", std::strerror(err)) : std::string("capabilities are left"));
    // The point of it all: root cannot be regained.
    if (::setuid(0) == 0 || ::seteuid(0) == 0) throw broken("setuid(0) still succeeds");
    if (gid != 0 && (::setgid(0) == 0 || ::setegid(0) == 0)) throw broken("setgid(0) still succeeds");

    dropped_user = who.user;
    dropped_uid = who.uid;
}

std::string dropped_to()
{
    if (dropped_user.empty()) return {};
    return fmt::format("{} (uid {})", dropped_user, dropped_uid);
}

std::string bind_denied_hint(std::uint16_t port)
{
    const int limit = unprivileged_port_start();
    if (port == 0 || port >= limit) return {};
    if (!dropped_user.empty())
        return fmt::format(" (port {} is below {}: asiosmtpd dropped its privileges to user {} at start-up, after "
                           "opening its listeners; restart it to listen on this port)",
                           port, limit, dropped_user);
    if (::geteuid() != 0) return fmt::format(" (ports below {} need root or CAP_NET_BIND_SERVICE)", limit);
    return {};
}

void check_plugin_files(const config::settings& s, const std::vector<fs::path>& dirs)
{
    const std::string who = user_name(::geteuid());
    const auto unreadable = [&](const config::plugin_entry& e, const fs::path& file, int err) {
        return privilege_error(fmt::format("{}: {}: plugin file {} not readable by user {}: {}", s.file.string(), e.key,
                                           file.string(), who, std::strerror(err)));
    };
    for (const config::plugin_entry& e : s.plugins) {
        if (!e.path.empty()) {
            // A missing file is the loader's to report ("no such file").
            if (const int err = open_error(e.path); err != 0 && err != ENOENT) throw unreadable(e, e.path, err);
            continue;
        }
        // As the loader looks a name up: the first folder holding a regular <name>.so. A folder
        // the user cannot search is an error, not skipped: the loader would skip it silently
        // and might load another <name>.so from a later folder than the one meant.
        const std::string file = e.name + ".so";
        for (const fs::path& d : dirs) {
            const fs::path candidate = d / file;
            struct stat st {};
            if (::stat(candidate.c_str(), &st) != 0) {
                if (errno == EACCES)
                    throw privilege_error(fmt::format(
                        "{}: {}.name: plugin folder {} not accessible by user {} (looking for {}; the user needs "
                        "search permission on the folder and its parents)",
                        s.file.string(), e.key, d.string(), who, file));
                continue;
            }
            if (!S_ISREG(st.st_mode)) continue;
            if (const int err = open_error(candidate); err != 0) throw unreadable(e, candidate, err);
            break;
        }
    }
}

}  // namespace asiosmtpd::os
