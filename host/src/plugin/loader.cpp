// SPDX-License-Identifier: Apache-2.0
// The Boost.DLL loader: find, open and check each plugin, create its instance, collect what
// it registers. Runs on the control thread only (dlopen is not thread-safe everywhere).
#include "plugin/loader.hpp"

#include "log/log.hpp"
#include "plugin/elf_check.hpp"
#include "plugin/isolation/adapter.hpp"
#include "plugin/isolation/limits.hpp"

#include <asiosmtpd/plugin.hpp>  // sdk::closest_match
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fcntl.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace asiosmtpd::plugin {

/// Held around every dlopen() and dlclose() of a plugin file. The janitor thread closes an old
/// generation's libraries while a reload may be opening the new ones, and a new copy is often
/// mapped where an old one was: its code then touches the addresses the old code touched on
/// the janitor thread, and nothing but this lock orders the one before the other (the dynamic
/// linker's own lock is invisible to ThreadSanitizer, and so is the unmapping).
std::mutex& mapping_lock()
{
    static std::mutex m;
    return m;
}

/// One opened plugin file. Instances hold it (shared_ptr), so it is closed after them.
struct library {
    boost::dll::shared_library so;
    const asiosmtpd_plugin_descriptor* desc = nullptr;
    fs::path file;

    library() = default;
    library(const library&) = delete;
    library& operator=(const library&) = delete;
    ~library()
    {
        const std::lock_guard guard(mapping_lock());
        so.unload();
    }
};

}  // namespace asiosmtpd::plugin

namespace asiosmtpd::plugin {
namespace {

// "<config file>: plugins[0]: <plugin file>: <why>" (the file, the key, the problem, as every start-up error)
load_error refusal(const fs::path& config_file, const std::string& key, const fs::path& file, std::string_view why)
{
    return load_error(fmt::format("{}: {}: {}: {}", config_file.string(), key, file.string(), why));
}

// "<file>:<line>" of a config line (just "<file>" when unknown).
std::string where(const fs::path& config_file, std::uint32_t line)
{
    return line == 0 ? config_file.string() : fmt::format("{}:{}", config_file.string(), line);
}

fs::path find_by_name(const fs::path& config_file, const config::plugin_entry& e, const std::vector<fs::path>& dirs)
{
    const std::string file = e.name + ".so";
    for (const auto& d : dirs) {
        std::error_code ec;
        const fs::path candidate = d / file;
        if (fs::is_regular_file(candidate, ec)) return candidate;
    }
    std::string searched;
    for (const auto& d : dirs) searched += (searched.empty() ? "" : ", ") + d.string();
    // A typo ("maildri") gets the closest plugin found in those folders.
    std::vector<std::string> names;
    for (const auto& d : dirs) {
        std::error_code ec;
        for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
            const fs::path& p = it->path();
            std::error_code type_ec;
            if (p.extension() == ".so" && it->is_regular_file(type_ec)) names.push_back(p.stem().string());
            if (names.size() >= 1000) break;
        }
    }
    std::sort(names.begin(), names.end());
    const std::string_view near = sdk::closest_match(e.name, names);
    throw load_error(fmt::format("{}: {}.name: no plugin '{}' in {}{}", where(config_file, e.name_line), e.key, e.name,
                                 searched.empty() ? "no plugin folder" : searched,
                                 near.empty() ? std::string() : fmt::format(" (did you mean '{}'?)", near)));
}

// Load `file` (named `shown` in messages: a private copy is named after its original).
std::shared_ptr<library> open(const fs::path& config_file, const fs::path& file, const std::string& key,
                              const fs::path& shown)
{
    const auto refuse = [&](std::string_view why) { return refusal(config_file, key, shown, why); };
    std::error_code ec;
    if (!fs::exists(file, ec)) throw refuse("no such file");
    auto lib = std::make_shared<library>();
    lib->file = file;
    try {
        const std::lock_guard guard(mapping_lock());
        // rtld_now: a missing symbol fails here, not in the middle of a session.
        lib->so.load(file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
    } catch (const std::exception& e) {
        throw refuse(fmt::format("cannot load: {}", e.what()));  // includes dlerror()
    }
    if (!lib->so.has(ASIOSMTPD_ENTRY_SYMBOL))
        throw refuse("not an asiosmtpd plugin: no " ASIOSMTPD_ENTRY_SYMBOL " (built for another ABI major?)");
    const auto entry = lib->so.get<const asiosmtpd_plugin_descriptor*()>(ASIOSMTPD_ENTRY_SYMBOL);
    const asiosmtpd_plugin_descriptor* d = entry();
    // Check the version before anything else: the rest of the descriptor may not have the
    // fields we expect (PostgreSQL's order).
    if (d == nullptr) throw refuse("the entry returned no descriptor");
    if (d->struct_size < offsetof(asiosmtpd_plugin_descriptor, abi_minor) + sizeof d->abi_minor)
        throw refuse("descriptor too small");
    if (d->abi_major != ASIOSMTPD_ABI_MAJOR)
        throw refuse(fmt::format("built for plugin ABI {}.{}, this host has ABI {}.{}", d->abi_major, d->abi_minor,
                                 ASIOSMTPD_ABI_MAJOR, ASIOSMTPD_ABI_MINOR));
    if (d->abi_minor > ASIOSMTPD_ABI_MINOR)
        throw refuse(fmt::format("needs plugin ABI 1.{}, this host has 1.{}", d->abi_minor, ASIOSMTPD_ABI_MINOR));
    if (d->struct_size < ASIOSMTPD_DESCRIPTOR_V1_0_SIZE) throw refuse("descriptor truncated");
    if (d->name == nullptr || d->version == nullptr || d->create == nullptr || d->destroy == nullptr)
        throw refuse("incomplete descriptor (name, version, create and destroy are required)");
    lib->desc = d;
    return lib;
}

}  // namespace

std::vector<fs::path> search_dirs(const config::settings& s)
{
    std::vector<fs::path> dirs = s.plugin_path;
    // Relative to the program: <build>/bin/../plugins in the build tree (programs and test
    // programs all live in <build>/bin), <prefix>/bin/../lib/asiosmtpd/plugins once installed.
    std::error_code ec;  // BOOST_DLL_USE_STD_FS
    const fs::path exe = boost::dll::program_location(ec);
    if (!ec) {
        const fs::path prefix = exe.parent_path().parent_path();
        for (const fs::path& d : {prefix / "plugins", prefix / ASIOSMTPD_INSTALL_PLUGIN_SUBDIR}) {
            std::error_code exists_ec;
            if (fs::is_directory(d, exists_ec) &&
                std::find(dirs.begin(), dirs.end(), d.lexically_normal()) == dirs.end())
                dirs.push_back(d.lexically_normal());
        }
    }
    return dirs;
}

namespace {

// The folder for private copies: made once per process (mkdtemp: 0700), emptied as copies
// are unlinked right after loading, removed at exit.
const fs::path& private_copies()
{
    // Never destroyed: the atexit handler below runs after static destructors may have run.
    static const fs::path* const dir = [] {
        std::string pattern = (fs::temp_directory_path() / "asiosmtpd-plugins-XXXXXX").string();
        if (::mkdtemp(pattern.data()) == nullptr) return new fs::path();
        auto* made = new fs::path(pattern);
        std::atexit([] {
            std::error_code ec;
            fs::remove_all(private_copies(), ec);
        });
        return made;
    }();
    return *dir;
}

// Copy the open `source` to `to` (a new file): at most the size it had when opened, so that a
// file still being written cannot keep the copy going. A file that shrank meanwhile gives a
// shorter copy, which the check of the copy then refuses. "" or why not.
std::string copy_out(const plugin_file& source, const fs::path& to)
{
    const int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0700);
    if (out < 0) return std::strerror(errno);
    std::vector<char> buffer(64 * 1024);
    std::uint64_t done = 0;
    std::string why;
    while (why.empty() && done < source.size()) {
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), source.size() - done));
        const ssize_t got = ::pread(source.fd(), buffer.data(), want, static_cast<off_t>(done));
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) why = std::strerror(errno);
        if (got <= 0) break;
        for (ssize_t written = 0; why.empty() && written < got;) {
            const ssize_t n = ::write(out, buffer.data() + written, static_cast<std::size_t>(got - written));
            if (n > 0) written += n;
            else if (n == 0) why = "nothing written";
            else if (errno != EINTR) why = std::strerror(errno);
        }
        done += static_cast<std::uint64_t>(got);
    }
    if (::close(out) != 0 && why.empty()) why = std::strerror(errno);
    return why;
}

// Check and load one plugin file. Whatever is at `file` must not end the process: ld.so maps a
// truncated ELF's segments past the end of the file (SIGBUS on first touch), blocks on a FIFO
// for ever; so the path is opened without blocking and refused unless it is a regular file,
// and the ELF structure is checked (elf_check.hpp) on the exact bytes that dlopen() maps: the
// private copy, which nobody else writes. The original gets the same look first, so that a
// file that is no plugin at all is named without being copied.
std::shared_ptr<library> open_checked(const fs::path& config_file, const fs::path& file, const std::string& key)
{
    static std::atomic<std::uint64_t> copies{0};
    const auto refuse = [&](std::string_view why) { return refusal(config_file, key, file, why); };
    const plugin_file source(file);
    if (!source.problem().empty()) throw refuse(source.problem());
    if (std::string why = elf_problem(source.fd(), source.size()); !why.empty()) throw refuse(why);
    if (private_copies().empty()) {
        // No private folder (no writable temp folder): the original is loaded as it is. It was
        // checked just now; only a change in the moment between check and dlopen() gets past.
        return open(config_file, file, key, file);
    }
    std::error_code ec;
    const fs::path copy = private_copies() / fmt::format("{}.{}.so", file.stem().string(), ++copies);
    std::shared_ptr<library> lib;
    try {
        if (std::string why = copy_out(source, copy); !why.empty())
            throw refuse(fmt::format("cannot copy for loading: {}", why));
        if (std::string why = elf_problem(copy); !why.empty()) throw refuse(why);
        lib = open(config_file, copy, key, file);
    } catch (...) {
        fs::remove(copy, ec);
        throw;
    }
    fs::remove(copy, ec);  // the mapping stays; nothing is left behind
    lib->file = file;
    return lib;
}

}  // namespace

// Generations end on this thread, never on the I/O thread whose session happened to hold the
// last reference: a plugin's destroy() joins its threads and may take a while (plugin.h
// §3.2 step 6). Generations still queued at exit are destroyed by the thread that exits.
class janitor {
public:
    static janitor& get()
    {
        static janitor j;
        return j;
    }
    /// Wait until every retired generation is gone (call before exit: plugin destroy() code
    /// must not run during static destruction).
    void drain()
    {
        std::unique_lock lock(lock_);
        idle_.wait(lock, [this] { return queue_.empty() && !busy_; });
    }
    void retire(generation* g)
    {
        {
            const std::lock_guard guard(lock_);
            if (!stopped_) {
                queue_.push_back(g);
                wake_.notify_one();
                return;
            }
        }
        delete g;  // at exit: inline
    }
    ~janitor()
    {
        {
            const std::lock_guard guard(lock_);
            stopped_ = true;
        }
        wake_.notify_one();
        if (thread_.joinable()) thread_.join();
        for (generation* g : queue_) delete g;
    }

private:
    janitor() : thread_([this] { run(); }) {}
    void run()
    {
        std::unique_lock lock(lock_);
        for (;;) {
            wake_.wait(lock, [this] { return stopped_ || !queue_.empty(); });
            if (queue_.empty()) return;  // stopped
            generation* g = queue_.front();
            queue_.erase(queue_.begin());
            busy_ = true;
            lock.unlock();
            delete g;
            lock.lock();
            busy_ = false;
            if (queue_.empty()) idle_.notify_all();
        }
    }
    std::mutex lock_;
    std::condition_variable wake_;
    std::condition_variable idle_;
    std::vector<generation*> queue_;
    bool busy_ = false;
    bool stopped_ = false;
    std::thread thread_;
};

namespace {

class server_log_sink final : public log_sink {
public:
    [[nodiscard]] bool enabled(log_level l) const noexcept override { return log::enabled(static_cast<log::level>(l)); }
    void write(log_level l, std::string_view line) noexcept override
    {
        try {
            log::write(static_cast<log::level>(l), line);
        } catch (...) {}
    }
};

}  // namespace

void drain_retired() { janitor::get().drain(); }

std::shared_ptr<const generation> load(const config::settings& s, bool check_only)
{
    janitor::get();  // constructed before the first generation: destroyed after the last one
    // The core logs (plugins' log() calls, blocking incidents) through the server's log. Never
    // destroyed: plugin threads may log until the janitor's last destroy() at exit.
    static server_log_sink* const sink = new server_log_sink;
    set_default_log_sink(sink);
    std::shared_ptr<generation> gen(new generation, [](generation* g) { janitor::get().retire(g); });
    gen->spool.threshold = s.server.spool_threshold;
    gen->spool.directory = s.server.spool_directory.string();
    const auto dirs = search_dirs(s);
    for (const config::plugin_entry& e : s.plugins) {
        const fs::path file = e.path.empty() ? find_by_name(s.file, e, dirs) : e.path;
        auto inst = std::make_unique<instance>();
        if (e.isolation == config::plugin_entry::isolation_mode::process) {
            // In a child process: the adapter (isolation/adapter.hpp) stands in for the plugin.
            // The file gets the same look first, so that a file that is no plugin is named
            // before a process is started for it.
            const plugin_file source(file);
            if (!source.problem().empty()) throw refusal(s.file, e.key, file, source.problem());
            if (std::string why = elf_problem(source.fd(), source.size()); !why.empty())
                throw refusal(s.file, e.key, file, why);
            if (const std::string why = isolation::limits::user_problem(e); !why.empty())
                throw load_error(fmt::format("{}: {}.user: {}", e.user->user_at, e.key, why));
            try {
                inst->lib = isolation::open(s, e, file, inst->desc);
            } catch (const std::runtime_error& err) {
                throw refusal(s.file, e.key, file, err.what());
            }
        } else {
            const std::shared_ptr<library> lib = open_checked(s.file, file, e.key);
            inst->lib = lib;
            inst->desc = lib->desc;
        }
        inst->name = inst->desc->name;
        inst->key = e.key;
        inst->timeout = std::chrono::milliseconds(static_cast<std::int64_t>(e.timeout * 1000));
        inst->thread_safe = (inst->desc->flags & ASIOSMTPD_PF_THREAD_SAFE) != 0;

        asiosmtpd_registrar reg;
        reg.gen = gen.get();
        reg.owner = inst.get();
        reg.config = &e.config;
        reg.base_dir = s.base_dir.string();
        reg.check_only = check_only;
        char reason[512] = {};
        asiosmtpd_errbuf err{reason, sizeof reason};
        void* self = nullptr;
        const asiosmtpd_status st = inst->desc->create(&host_api(), inst.get(), &reg, &self, &err);
        reg.frozen = true;
        reason[sizeof reason - 1] = '\0';
        if (st != ASIOSMTPD_OK) {
            // Drop what it registered before refusing.
            for (auto& chain : gen->hooks)
                chain.erase(std::remove_if(chain.begin(), chain.end(),
                                           [&](const hook_entry& h) { return h.owner == inst.get(); }),
                            chain.end());
            // What the plugin named with cfg_error() (file, line, full key), a registration
            // another plugin holds (the verb's owner), or the plugin's own reason.
            const create_failure f = describe_failure(reg, e.key, reason, e.config_line != 0 ? e.config_line : e.line);
            if (f.config) throw load_error(fmt::format("{}: {}: {}", where(s.file, f.line), f.key, f.problem));
            throw refusal(s.file, e.key, file, f.problem);
        }
        inst->self = self;
        log::info("event=plugin_loaded plugin={} version={} key={} file={}{}", inst->name, inst->desc->version, e.key,
                  file.string(),
                  e.isolation == config::plugin_entry::isolation_mode::process ? " isolation=process" : "");
        gen->instances.push_back(std::move(inst));
    }
    return gen;
}

}  // namespace asiosmtpd::plugin
