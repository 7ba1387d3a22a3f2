// SPDX-License-Identifier: Apache-2.0
// The server's side of a plugin process's limits (limits.hpp): cgroup v2 memory.max for
// memory_limit, and plugins[].user's conditions.
#include "plugin/isolation/limits.hpp"

#include "log/log.hpp"

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace asiosmtpd::plugin::isolation::limits {
namespace {

constexpr std::string_view server_leaf = "asiosmtpd-server";

std::string read_text(const fs::path& p)
{
    std::ifstream in(p);
    if (!in) return {};
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

// One write(2) of `text` to a control file: cgroupfs answers each write as a whole.
bool write_control(const fs::path& p, std::string_view text, int& error)
{
    const int fd = ::open(p.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        error = errno;
        return false;
    }
    const ssize_t n = ::write(fd, text.data(), text.size());
    error = n < 0 ? errno : 0;
    ::close(fd);
    return n == static_cast<ssize_t>(text.size());
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(std::string_view s)
{
    std::string out;
    for (std::size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && s.size() - i >= 4) {
            int v = 0;
            const auto [end, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 4, v, 8);
            if (ec == std::errc{} && end == s.data() + i + 4) {
                out += static_cast<char>(v);
                i += 3;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

std::vector<std::string_view> fields(std::string_view line)
{
    std::vector<std::string_view> out;
    std::size_t at = 0;
    while (at < line.size()) {
        const std::size_t end = std::min(line.find(' ', at), line.size());
        if (end > at) out.push_back(line.substr(at, end - at));
        at = end + 1;
    }
    return out;
}

bool only_us(const fs::path& dir)
{
    const std::string procs = read_text(dir / "cgroup.procs");
    std::istringstream in(procs);
    std::string pid;
    bool any = false;
    while (in >> pid) {
        if (pid != std::to_string(::getpid())) return false;
        any = true;
    }
    return any;
}

// A server that has ended (a pid without a process: ESRCH).
bool gone(long pid) { return pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH; }

// Old children's cgroups of servers that are gone (killed before they could remove them).
void sweep(const fs::path& base)
{
    std::error_code ec;
    for (fs::directory_iterator it(base, ec), end; !ec && it != end; it.increment(ec)) {
        const std::string name = it->path().filename().string();
        if (name == server_leaf || !gone(owner_pid(name, "asiosmtpd-"))) continue;
        (void)::rmdir(it->path().c_str());  // fails (and stays) while something still runs in it
    }
}

cgroup_support detect()
{
    cgroup_support s;
    const auto own = unified_dir(read_text("/proc/self/mountinfo"), read_text("/proc/self/cgroup"));
    if (!own) {
        s.why = "no cgroup2 hierarchy for this process (cgroup v1 only, or not mounted)";
        return s;
    }
    std::error_code ec;
    if (!fs::is_directory(*own, ec)) {
        s.why = fmt::format("its cgroup {} is not visible", own->string());
        return s;
    }
    const std::string controllers = read_text(*own / "cgroup.controllers");
    if (!has_word(controllers, "memory")) {
        std::string list = controllers.substr(0, controllers.find('\n'));
        s.why = fmt::format("the memory controller is not available in cgroup2 at {} (its cgroup.controllers: {})",
                            own->string(), list.empty() ? std::string("none") : list);
        return s;
    }
    int error = 0;
    if (!has_word(read_text(*own / "cgroup.subtree_control"), "memory") &&
        !write_control(*own / "cgroup.subtree_control", "+memory", error)) {
        // A cgroup with processes of its own cannot enable a controller for its children. Alone
        // in it (a service with a delegated cgroup), the server moves into a leaf of its own.
        const fs::path leaf = *own / server_leaf;
        bool moved = false;
        if (error == EBUSY && only_us(*own) && (::mkdir(leaf.c_str(), 0755) == 0 || errno == EEXIST)) {
            moved = write_control(leaf / "cgroup.procs", std::to_string(::getpid()), error);
            if (moved && write_control(*own / "cgroup.subtree_control", "+memory", error)) {
                log::info("event=cgroup_moved cgroup={} reason=\"controllers for the plugin processes' cgroups\"",
                          leaf.string());
            } else {
                const int why = error;
                if (moved) (void)write_control(*own / "cgroup.procs", std::to_string(::getpid()), error);
                (void)::rmdir(leaf.c_str());
                error = why;
                moved = false;
            }
        }
        if (!moved && !has_word(read_text(*own / "cgroup.subtree_control"), "memory")) {
            s.why = error == EBUSY ? fmt::format("cannot enable the memory controller below {}: other processes share "
                                                 "the server's cgroup (run it as a service with a delegated cgroup)",
                                                 own->string())
                                   : fmt::format("cannot enable the memory controller below {}: {}", own->string(),
                                                 std::strerror(error));
            return s;
        }
    }
    if (::access(own->c_str(), W_OK) != 0) {
        s.why = fmt::format("cannot make cgroups in {}: {}", own->string(), std::strerror(errno));
        return s;
    }
    sweep(*own);
    s.usable = true;
    s.base = *own;
    return s;
}

std::atomic<std::uint64_t> made_count{0};

}  // namespace

std::optional<fs::path> unified_dir(std::string_view mountinfo, std::string_view proc_cgroup)
{
    std::optional<std::string> path;
    for (std::size_t at = 0; at < proc_cgroup.size();) {
        const std::size_t end = std::min(proc_cgroup.find('\n', at), proc_cgroup.size());
        const std::string_view line = proc_cgroup.substr(at, end - at);
        at = end + 1;
        if (line.starts_with("0::")) path = std::string(line.substr(3));
    }
    if (!path || path->empty() || path->front() != '/') return std::nullopt;
    for (std::size_t at = 0; at < mountinfo.size();) {
        const std::size_t end = std::min(mountinfo.find('\n', at), mountinfo.size());
        const std::string_view line = mountinfo.substr(at, end - at);
        at = end + 1;
        const auto f = fields(line);
        // id parent dev root mountpoint options [optional...] - fstype source superoptions
        std::size_t dash = 6;
        while (dash < f.size() && f[dash] != "-") ++dash;
        if (f.size() < 5 || dash + 1 >= f.size() || f[dash + 1] != "cgroup2") continue;
        const std::string root = unescape(f[3]);
        const std::string mount = unescape(f[4]);
        // The mount shows the hierarchy from `root` on: the cgroup must be below it.
        std::string rel;
        if (root == "/") rel = *path;
        else if (*path == root) rel = "/";
        else if (path->starts_with(root + "/")) rel = path->substr(root.size());
        else continue;
        if (rel.find("/..") != std::string::npos) continue;
        const fs::path dir = fs::path(rel).relative_path();
        return (dir.empty() ? fs::path(mount) : fs::path(mount) / dir).lexically_normal();
    }
    return std::nullopt;
}

std::uint64_t keyed_value(std::string_view text, std::string_view key)
{
    for (std::size_t at = 0; at < text.size();) {
        const std::size_t end = std::min(text.find('\n', at), text.size());
        const std::string_view line = text.substr(at, end - at);
        at = end + 1;
        if (line.size() > key.size() && line.starts_with(key) && line[key.size()] == ' ') {
            std::uint64_t v = 0;
            const std::string_view n = line.substr(key.size() + 1);
            (void)std::from_chars(n.data(), n.data() + n.size(), v);
            return v;
        }
    }
    return 0;
}

bool has_word(std::string_view list, std::string_view word)
{
    for (std::size_t at = 0; at < list.size();) {
        std::size_t end = list.find_first_of(" \n", at);
        if (end == std::string_view::npos) end = list.size();
        if (list.substr(at, end - at) == word) return true;
        at = end + 1;
    }
    return false;
}

long owner_pid(std::string_view name, std::string_view prefix)
{
    if (!name.starts_with(prefix)) return 0;
    const std::string_view rest = name.substr(prefix.size());
    long pid = 0;
    const auto [p, e] = std::from_chars(rest.data(), rest.data() + rest.size(), pid);
    if (e != std::errc{} || p == rest.data() || p == rest.data() + rest.size() || *p != '-' || pid <= 0) return 0;
    return pid;
}

void sweep_workdirs(const fs::path& tmp)
{
    static std::once_flag once;
    std::call_once(once, [&tmp] {
        std::error_code ec;
        for (fs::directory_iterator it(tmp, ec), end; !ec && it != end; it.increment(ec)) {
            if (!gone(owner_pid(it->path().filename().string(), "asiosmtpd-plugin-"))) continue;
            std::error_code rm;
            fs::remove_all(it->path(), rm);  // another user's stays (not ours to remove)
        }
    });
}

const cgroup_support& memory_cgroups()
{
    static std::once_flag once;
    static cgroup_support support;
    std::call_once(once, [] { support = detect(); });
    return support;
}

std::shared_ptr<cgroup> cgroup::make(std::string_view key, std::uint64_t memory_limit, std::string& why)
{
    const cgroup_support& s = memory_cgroups();
    if (!s.usable) {
        why = s.why;
        return nullptr;
    }
    std::string name = fmt::format("asiosmtpd-{}-", ::getpid());
    for (const char c : key)
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) name += c;
    name += fmt::format("-{}", made_count.fetch_add(1) + 1);
    const fs::path dir = s.base / name;
    if (::mkdir(dir.c_str(), 0755) != 0) {
        why = fmt::format("cannot make the cgroup {}: {}", dir.string(), std::strerror(errno));
        return nullptr;
    }
    std::shared_ptr<cgroup> made(new cgroup(dir));
    int error = 0;
    if (!write_control(dir / "memory.max", std::to_string(memory_limit), error)) {
        why = fmt::format("cannot set {}: {}", (dir / "memory.max").string(), std::strerror(error));
        return nullptr;  // made's end removes it
    }
    // No swap for it (absent when the kernel does not account swap), and an OOM kill ends the
    // whole cgroup: the plugin process and whatever it started.
    if (!write_control(dir / "memory.swap.max", "0", error) && error != ENOENT) {
        why = fmt::format("cannot set {}: {}", (dir / "memory.swap.max").string(), std::strerror(error));
        return nullptr;
    }
    (void)write_control(dir / "memory.oom.group", "1", error);
    return made;
}

bool cgroup::add(pid_t pid, std::string& why)
{
    int error = 0;
    if (write_control(path_ / "cgroup.procs", std::to_string(pid), error)) return true;
    why = fmt::format("cannot move the plugin process into {}: {}", path_.string(), std::strerror(error));
    return false;
}

std::uint64_t cgroup::oom_kills() const { return keyed_value(read_text(path_ / "memory.events"), "oom_kill"); }

cgroup::~cgroup()
{
    // What the plugin left running in it (processes it started) goes with it.
    int error = 0;
    if (keyed_value(read_text(path_ / "cgroup.events"), "populated") != 0)
        (void)write_control(path_ / "cgroup.kill", "1", error);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    for (;;) {
        if (::rmdir(path_.c_str()) == 0 || errno == ENOENT) return;
        if (errno != EBUSY || std::chrono::steady_clock::now() >= until) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    log::warn("event=cgroup_not_removed cgroup={} error=\"{}\"", path_.string(), std::strerror(errno));
}

bool switches_user(const config::plugin_entry& e) { return e.user && ::geteuid() == 0 && e.user->uid != 0; }

std::string user_problem(const config::plugin_entry& e)
{
    if (!e.user) return {};
    const uid_t me = ::geteuid();
    if (me == 0 || me == e.user->uid) return {};
    return fmt::format("the server runs as uid {}, not root: it cannot start the plugin's process as user {} (uid "
                       "{}); start the server as root without server.user, or leave plugins[].user unset",
                       me, e.user->user, e.user->uid);
}

}  // namespace asiosmtpd::plugin::isolation::limits
