// SPDX-License-Identifier: Apache-2.0
// The server's side of `isolation: process` (adapter.hpp): the adapter plugin, the child's
// supervisor (start, restart with backoff, give up), and the I/O thread that reads the child.
//
// A hook call on an event-loop thread never waits for the child: the adapter suspends the call
// (the ABI's own suspend()), builds one CALL frame with the hook's arguments and a snapshot of
// everything the plugin could read during the call (session, envelope, recipients), and sends it
// without blocking (what the socket does not take at once, the I/O thread writes). The child's
// answer ends the suspended call through complete_remote(), on the I/O thread, exactly as a
// plugin thread's complete() would.
#include "plugin/isolation/adapter.hpp"

#include "log/log.hpp"
#include "plugin/chain.hpp"
#include "plugin/generation.hpp"
#include "plugin/isolation/limits.hpp"
#include "plugin/isolation/wire.hpp"
#include "proto/trace.hpp"

#include <boost/dll/runtime_symbol_info.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_set>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;

namespace asiosmtpd::plugin::isolation {
namespace {

std::atomic<std::uint64_t> crash_count{0};
std::atomic<std::uint64_t> restart_count{0};

constexpr const char* helper_name = "asiosmtpd-plugin-host";
/// How long the child may take to load the plugin and to run create() (the plugin's timeout
/// when that is longer), and to run destroy() before it is killed.
constexpr std::chrono::seconds start_budget{30};
constexpr std::chrono::seconds stop_budget{10};

std::string_view view(asiosmtpd_str s) noexcept
{
    return s.data == nullptr ? std::string_view{} : std::string_view{s.data, s.size};
}

// The child's program: ASIOSMTPD_PLUGIN_HOST when set (an embedding application), else beside
// the server (the build tree), else <prefix>/libexec/asiosmtpd/ (installed).
fs::path helper_path()
{
    if (const char* env = std::getenv("ASIOSMTPD_PLUGIN_HOST"); env != nullptr && *env != '\0') return env;
    std::error_code ec;
    const fs::path exe = boost::dll::program_location(ec);
    if (ec) return fs::path(helper_name);
    const fs::path beside = exe.parent_path() / helper_name;
    const fs::path installed = exe.parent_path().parent_path() / ASIOSMTPD_INSTALL_LIBEXEC_SUBDIR / helper_name;
    std::error_code exists_ec;
    return fs::exists(beside, exists_ec) || !fs::exists(installed, exists_ec) ? beside : installed;
}

std::string describe_status(int status)
{
    if (WIFSIGNALED(status)) {
        const int sig = WTERMSIG(status);
        const char* abbrev = ::sigabbrev_np(sig);
        return abbrev != nullptr ? fmt::format("signal=SIG{}", abbrev) : fmt::format("signal={}", sig);
    }
    if (WIFEXITED(status)) return fmt::format("exit={}", WEXITSTATUS(status));
    return "status=unknown";
}

// Runs f() on a thread that lives as long as the process (never joined; it ends with it).
int on_spawning_thread(const std::function<int()>& f)
{
    struct spawner {
        std::mutex lock;
        std::condition_variable wake;
        std::deque<std::function<void()>> jobs;
    };
    static spawner* const s = [] {
        auto* made = new spawner;  // never destroyed: the thread may run until the very end
        std::thread([made] {
            std::unique_lock lock(made->lock);
            for (;;) {
                made->wake.wait(lock, [made] { return !made->jobs.empty(); });
                auto job = std::move(made->jobs.front());
                made->jobs.pop_front();
                lock.unlock();
                job();
                lock.lock();
            }
        }).detach();
        return made;
    }();
    std::mutex done_lock;
    std::condition_variable done_wake;
    bool done = false;
    int result = 0;
    {
        const std::lock_guard guard(s->lock);
        s->jobs.emplace_back([&] {
            const int r = f();
            const std::lock_guard g(done_lock);
            result = r;
            done = true;
            done_wake.notify_one();
        });
    }
    s->wake.notify_one();
    std::unique_lock lock(done_lock);
    done_wake.wait(lock, [&] { return done; });
    return result;
}

void put_tree(wire::writer& w, const config::node& n, int depth)
{
    std::int32_t kind = ASIOSMTPD_CFG_NULL;
    switch (n.type) {
    case config::node::kind::null: kind = ASIOSMTPD_CFG_NULL; break;
    case config::node::kind::scalar: kind = ASIOSMTPD_CFG_SCALAR; break;
    case config::node::kind::sequence: kind = ASIOSMTPD_CFG_SEQUENCE; break;
    case config::node::kind::map: kind = ASIOSMTPD_CFG_MAP; break;
    }
    if (depth > 64) kind = ASIOSMTPD_CFG_NULL;
    w.i32(kind);
    if (kind == ASIOSMTPD_CFG_SCALAR) w.str(n.scalar);
    if (kind != ASIOSMTPD_CFG_SEQUENCE && kind != ASIOSMTPD_CFG_MAP) {
        w.u32(0);
        return;
    }
    const bool map = kind == ASIOSMTPD_CFG_MAP;
    const std::size_t count = map ? std::min(n.items.size(), n.keys.size()) : n.items.size();
    w.u32(static_cast<std::uint32_t>(count));
    for (std::size_t i = 0; i < count; ++i) {
        if (map) w.str(n.keys[i]);
        put_tree(w, n.items[i], depth + 1);
    }
}

// ---- the snapshot and the arguments of a call ----------------------------------------------------

void put_snapshot(wire::writer& w, asiosmtpd_call* call, const instance& owner)
{
    const asiosmtpd_host_api& h = host_api();
    asiosmtpd_session_info si{};
    si.struct_size = sizeof si;
    if (h.session_info(call, &si) != ASIOSMTPD_OK) si = asiosmtpd_session_info{};
    w.u64(si.session_id).str(view(si.peer_address)).u16(si.peer_port).str(view(si.helo_name));
    w.u8(si.extended_smtp != 0).u8(si.tls_active != 0).u8(si.authenticated != 0);
    w.str(view(si.tls_version)).str(view(si.tls_cipher)).str(view(si.tls_peer_subject)).str(view(si.auth_login));
    const proto::engine& smtp = call->session->smtp();
    w.u64(smtp.envelope_serial());
    w.str(smtp.in_transaction() ? proto::transaction_id(si.session_id, smtp.transaction_number()) : std::string());
    const bool may_edit = call->hook == ASIOSMTPD_HOOK_DATA && call->draft != nullptr && owner.editor;
    w.u8(static_cast<std::uint8_t>((smtp.config().lmtp ? 1 : 0) | (may_edit ? 2 : 0) |
                                   (call->draft != nullptr ? 4 : 0)));
    asiosmtpd_txn_info ti{};
    ti.struct_size = sizeof ti;
    const asiosmtpd_status st = h.txn_info(call, &ti);
    w.i32(st);
    if (st != ASIOSMTPD_OK) {
        w.str({}).u32(0).u32(0);
        return;
    }
    w.str(view(ti.mail_from));
    w.u32(static_cast<std::uint32_t>(ti.mail_param_count));
    for (std::size_t i = 0; i < ti.mail_param_count; ++i) {
        asiosmtpd_str p{"", 0};
        (void)h.txn_mail_param_at(call, i, &p);
        w.str(view(p));
    }
    w.u32(static_cast<std::uint32_t>(ti.rcpt_count));
    for (std::size_t i = 0; i < ti.rcpt_count; ++i) {
        asiosmtpd_str r{"", 0};
        (void)h.txn_rcpt_at(call, i, &r);
        w.str(view(r));
        std::vector<asiosmtpd_str> params;
        for (asiosmtpd_str p{"", 0};
             call->draft != nullptr && h.txn_rcpt_param_at(call, i, params.size(), &p) == ASIOSMTPD_OK;)
            params.push_back(p);
        w.u32(static_cast<std::uint32_t>(params.size()));
        for (const auto& p : params) w.str(view(p));
    }
}

void put_arguments(wire::writer& w, std::int32_t hook, const void* args)
{
    w.u8(args != nullptr ? 1 : 0);
    if (args == nullptr) return;
    switch (hook) {
    case ASIOSMTPD_HOOK_CONNECT: {
        const auto& a = *static_cast<const asiosmtpd_connect_args*>(args);
        w.str(view(a.peer_address)).u16(a.peer_port).str(view(a.local_address)).u16(a.local_port);
        return;
    }
    case ASIOSMTPD_HOOK_HELO:
    case ASIOSMTPD_HOOK_EHLO: w.str(view(static_cast<const asiosmtpd_helo_args*>(args)->hostname)); return;
    case ASIOSMTPD_HOOK_MAIL:
    case ASIOSMTPD_HOOK_RCPT:
    case ASIOSMTPD_HOOK_VRFY: {
        const auto& a = *static_cast<const asiosmtpd_address_args*>(args);
        w.str(view(a.address)).u32(static_cast<std::uint32_t>(a.params != nullptr ? a.param_count : 0));
        for (std::size_t i = 0; a.params != nullptr && i < a.param_count; ++i) w.str(view(a.params[i]));
        return;
    }
    case ASIOSMTPD_HOOK_DATA:
    case ASIOSMTPD_HOOK_DATA_CHUNK: {
        const auto& a = *static_cast<const asiosmtpd_data_args*>(args);
        w.u8(a.content != nullptr ? 1 : 0);
        w.str(a.content != nullptr ? std::string_view(reinterpret_cast<const char*>(a.content), a.size)
                                   : std::string_view());
        w.u32(a.flags).u64(a.message_size);
        return;
    }
    case ASIOSMTPD_HOOK_NOOP:
    case ASIOSMTPD_HOOK_UNKNOWN:
    case wire::hook_command: {
        const auto& a = *static_cast<const asiosmtpd_command_args*>(args);
        w.str(view(a.verb)).str(view(a.argument)).i32(a.has_argument);
        return;
    }
    case ASIOSMTPD_HOOK_AUTH_CHECK:
    case wire::hook_auth_mechanism: {
        const auto& a = *static_cast<const asiosmtpd_auth_args*>(args);
        w.str(view(a.mechanism)).str(view(a.authzid)).str(view(a.login)).str(view(a.password)).str(view(a.response));
        w.i32(a.has_response).u32(a.step);
        return;
    }
    case ASIOSMTPD_HOOK_PROXY: {
        const auto& a = *static_cast<const asiosmtpd_proxy_args*>(args);
        w.i32(a.version).i32(a.command).i32(a.family).i32(a.protocol);
        w.str(view(a.src_address)).u16(a.src_port).str(view(a.dst_address)).u16(a.dst_port);
        w.str(view(a.tlvs)).str(view(a.proxy_address));
        return;
    }
    case ASIOSMTPD_HOOK_TXN_END: {
        const auto& a = *static_cast<const asiosmtpd_txn_end_args*>(args);
        w.i32(a.outcome).u16(a.code).str(view(a.reply)).str(view(a.reason)).str(view(a.mail_from));
        w.u64(a.rcpt_count).u64(a.size);
        return;
    }
    default: return;
    }
}

// ---- the supervisor ----------------------------------------------------------------------------

enum class state { starting, up, down, given_up, stopping };

// A CALL or notification sent and not yet acknowledged (PENDING, RESULT returned, DONE): the
// child runs them one at a time, in order, so the oldest tells whether it hangs.
struct sent_call {
    steady::time_point deadline;
    std::int32_t hook;
};

struct registrations {
    std::vector<std::int32_t> hooks;
    struct command {
        std::string verb, help;
        std::uint32_t flags;
    };
    std::vector<command> commands;
    std::vector<std::string> keywords;
    std::vector<std::string> mechanisms;
    bool editor = false;
};

class supervisor;

// The adapter's descriptor, with the way back to its supervisor: create() gets the instance,
// whose desc points here (desc is the first member: the pointers convert).
struct adapter_descriptor {
    asiosmtpd_plugin_descriptor desc{};
    supervisor* owner = nullptr;
};

// The adapter's transaction slot: its end frees the child's transaction slots of the session.
struct txn_marker {
    std::weak_ptr<supervisor> owner;
    std::uint64_t session;
};

class supervisor : public std::enable_shared_from_this<supervisor> {
public:
    adapter_descriptor adapter;
    std::string name, version, description;

    supervisor(fs::path file, std::string key, std::uint64_t memory_limit, std::chrono::milliseconds timeout)
        : file_(std::move(file)),
          key_(std::move(key)),
          memory_limit_(memory_limit),
          timeout_(timeout)
    {}
    supervisor(const supervisor&) = delete;
    supervisor& operator=(const supervisor&) = delete;
    ~supervisor() { stop(); }

    /// Start the first child and read the plugin's descriptor (control thread).
    void start_first();
    /// The adapter's create(): the child's create(), then its registrations made here.
    asiosmtpd_status create(asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg, asiosmtpd_errbuf* err);
    /// The adapter's destroy(): the child's destroy(), and the child's end.
    void stop() noexcept;

    /// One hook call of a session (any event-loop thread): `index` is which of the plugin's
    /// registrations of that hook.
    asiosmtpd_verdict call(std::uint32_t index, asiosmtpd_call* call, const void* args);
    /// A session's transaction ended in the server (its slots went): tell the child.
    void txn_ended(std::uint64_t session);

private:
    struct child {
        pid_t pid = -1;
        int fd = -1;
        std::shared_ptr<limits::cgroup> cgroup;  // memory_limit by cgroup: the child's own
        bool oom_killed = false;                 // set by end_child(): the cgroup's OOM killer ended it
    };
    bool spawn(child& c, std::string& why);
    // The limits and the user (limits.hpp, child_limits.hpp): the child's arguments for them,
    // its cgroup, and what a crash's exit status says about them.
    void limit_arguments(std::vector<std::string>& args) const;
    bool place(child& c, std::string& why);
    [[nodiscard]] std::string limit_cause(int status, const child& c) const;
    bool request(child& c, std::string& frame, std::uint8_t want, std::string& body, steady::time_point deadline,
                 std::string& why);
    bool open_in(child& c, std::string& why);
    bool create_in(child& c, std::string& why, registrations* regs, std::string* body_out);
    void end_child(child& c, bool kill_now, int& status) noexcept;

    void io_loop();
    void handle(std::string_view body);
    void crashed(std::string reason, bool hung);
    void restart();
    void fail_calls(std::vector<asiosmtpd_token> tokens, const std::string& why);
    bool send_locked(std::string& frame);
    void wake() noexcept;
    void cancelled(asiosmtpd_token token);

    // fixed after create()
    fs::path file_;
    std::string key_;
    std::uint64_t memory_limit_;
    std::chrono::milliseconds timeout_;

public:
    std::uint64_t cpu_limit_ns = 0;
    std::optional<config::run_as> user;  // set: the child switches to it
    bool memory_by_cgroup = false;
    std::string memory_by_why;  // why not by cgroup

private:
    fs::path workdir_;
    const instance* inst_ = nullptr;
    std::string create_frame_;  // CREATE as first sent: a restarted child gets the same
    std::size_t session_close_hooks_ = 0;

    std::mutex lock_;
    state state_ = state::starting;
    child child_;
    std::string down_reason_;
    std::unordered_set<asiosmtpd_token> outstanding_;
    std::unordered_set<std::uint64_t> txn_slots_;  // sessions holding a transaction slot in the child
    std::deque<sent_call> sent_;
    std::string out_;  // what the socket did not take yet
    std::deque<steady::time_point> crash_times_;
    steady::time_point restart_at_;
    int wake_fd_ = -1;
    std::thread io_;
    bool stopped_ = false;
};

static_assert(std::is_standard_layout_v<adapter_descriptor>);

supervisor* from_desc(const asiosmtpd_plugin_descriptor* d)
{
    return reinterpret_cast<const adapter_descriptor*>(d)->owner;
}

bool supervisor::spawn(child& c, std::string& why)
{
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        why = fmt::format("socketpair: {}", std::strerror(errno));
        return false;
    }
    const int buf = 4 * 1024 * 1024;
    for (int fd : sv) {
        (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
    }
    const fs::path helper = helper_path();
    const std::string helper_s = helper.string();
    const std::string limit = std::to_string(memory_limit_);
    const std::string dir = workdir_.string();
    std::vector<char*> argv{const_cast<char*>(helper_s.c_str())};
    if (memory_limit_ > 0 && !memory_by_cgroup) {
        argv.push_back(const_cast<char*>("--memory-limit"));
        argv.push_back(const_cast<char*>(limit.c_str()));
    }
    if (!dir.empty()) {
        argv.push_back(const_cast<char*>("--workdir"));
        argv.push_back(const_cast<char*>(dir.c_str()));
    }
    std::vector<std::string> more;
    limit_arguments(more);
    for (auto& a : more) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], 3);  // dup2 clears close-on-exec
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    // On the spawning thread: the child's PR_SET_PDEATHSIG fires when the thread that started
    // it ends, which must be the process's end, not a reload's thread.
    const int rc =
        on_spawning_thread([&] { return ::posix_spawn(&pid, helper_s.c_str(), &fa, &attr, argv.data(), environ); });
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    ::close(sv[1]);
    if (rc != 0) {
        ::close(sv[0]);
        why = fmt::format("cannot start {}: {}", helper_s, std::strerror(rc));
        return false;
    }
    ::fcntl(sv[0], F_SETFL, ::fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    c.pid = pid;
    c.fd = sv[0];
    return place(c, why);
}

void supervisor::limit_arguments(std::vector<std::string>& args) const
{
    args.push_back("--parent");
    args.push_back(std::to_string(::getpid()));
    if (cpu_limit_ns > 0) {
        args.push_back("--cpu-limit-ns");
        args.push_back(std::to_string(cpu_limit_ns));
    }
    if (user) {
        args.push_back("--uid");
        args.push_back(std::to_string(user->uid));
        args.push_back("--gid");
        args.push_back(std::to_string(user->gid));
    }
}

// Into its own cgroup before it loads the plugin (OPEN comes after this).
bool supervisor::place(child& c, std::string& why)
{
    if (!memory_by_cgroup) return true;
    c.cgroup = limits::cgroup::make(key_, memory_limit_, why);
    if (c.cgroup && c.cgroup->add(c.pid, why)) return true;
    int status = 0;
    end_child(c, true, status);
    return false;
}

std::string supervisor::limit_cause(int status, const child& c) const
{
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGXCPU)
        return cpu_limit_ns > 0 ? fmt::format("reason=cpu cpu_limit_ms={}", cpu_limit_ns / 1000000) : "reason=cpu";
    if (c.oom_killed) return fmt::format("reason=memory memory_limit={}", memory_limit_);
    return {};
}

// Send `frame` and wait for a frame of type `want` (control or I/O thread only; LOG frames on
// the way are written). False, with `why`, when the child ends or the deadline passes.
bool supervisor::request(child& c, std::string& frame, std::uint8_t want, std::string& body,
                         steady::time_point deadline, std::string& why)
{
    std::size_t at = 0;
    wire::framer in;
    std::vector<char> buf(64 * 1024);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
        if (left <= 0) {
            why = "no answer in time";
            return false;
        }
        pollfd p{c.fd, static_cast<short>(POLLIN | (at < frame.size() ? POLLOUT : 0)), 0};
        const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
        if (n < 0 && errno != EINTR) {
            why = std::strerror(errno);
            return false;
        }
        if (n <= 0) continue;
        if ((p.revents & POLLOUT) != 0 && at < frame.size()) {
            const ssize_t sent = ::send(c.fd, frame.data() + at, frame.size() - at, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (sent > 0) at += static_cast<std::size_t>(sent);
        }
        if ((p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
            const ssize_t got = ::recv(c.fd, buf.data(), buf.size(), MSG_DONTWAIT);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
                why = "the plugin process ended";
                return false;
            }
            if (got > 0) in.feed(buf.data(), static_cast<std::size_t>(got));
            while (in.next(body)) {
                if (static_cast<std::uint8_t>(body[0]) == want) return true;
                if (static_cast<std::uint8_t>(body[0]) == wire::log) handle(body);
            }
            if (in.broken()) {
                why = "the plugin process sent a malformed frame";
                return false;
            }
        }
    }
}

bool supervisor::open_in(child& c, std::string& why)
{
    wire::writer w(wire::open);
    w.str(file_.string());
    std::string body;
    if (!request(c, w.finish(), wire::opened, body, steady::now() + start_budget, why)) return false;
    wire::reader r(std::string_view(body).substr(1));
    if (r.u8() == 0) {
        why = std::string(r.str());
        return false;
    }
    const std::uint32_t size = r.u32();
    const std::uint32_t major = r.u32();
    const std::uint32_t minor = r.u32();
    const std::uint32_t flags = r.u32();
    const bool has_name = r.u8() != 0;
    name.assign(r.str());
    const bool has_version = r.u8() != 0;
    version.assign(r.str());
    description.assign(r.str());
    const bool has_functions = r.u8() != 0;
    if (!r.ok()) {
        why = "the plugin process sent a malformed descriptor";
        return false;
    }
    // The loader's checks, in its order and words (loader.cpp open()).
    if (major != ASIOSMTPD_ABI_MAJOR)
        why = fmt::format("built for plugin ABI {}.{}, this host has ABI {}.{}", major, minor, ASIOSMTPD_ABI_MAJOR,
                          ASIOSMTPD_ABI_MINOR);
    else if (minor > ASIOSMTPD_ABI_MINOR)
        why = fmt::format("needs plugin ABI 1.{}, this host has 1.{}", minor, ASIOSMTPD_ABI_MINOR);
    else if (size < ASIOSMTPD_DESCRIPTOR_V1_0_SIZE) why = "descriptor truncated";
    else if (!has_name || !has_version || !has_functions)
        why = "incomplete descriptor (name, version, create and destroy are required)";
    if (!why.empty()) return false;
    (void)flags;  // the child runs one hook at a time whatever the plugin says (T3 holds)
    return true;
}

bool supervisor::create_in(child& c, std::string& why, registrations* regs, std::string* body_out)
{
    std::string frame = create_frame_;
    std::string body;
    const auto budget = std::max<steady::duration>(start_budget, timeout_);
    if (!request(c, frame, wire::created, body, steady::now() + budget, why)) {
        why = "during create(): " + why;
        return false;
    }
    if (body_out != nullptr) *body_out = body;
    if (regs == nullptr) {
        wire::reader r(std::string_view(body).substr(1));
        if (r.i32() != ASIOSMTPD_OK) {
            why = fmt::format("create() refused: {}", r.str());
            return false;
        }
    }
    return true;
}

void supervisor::start_first()
{
    limits::sweep_workdirs(fs::temp_directory_path());
    std::string pattern = (fs::temp_directory_path() / fmt::format("asiosmtpd-plugin-{}-XXXXXX", ::getpid())).string();
    if (::mkdtemp(pattern.data()) != nullptr) workdir_ = pattern;
    if (user && !workdir_.empty() && ::chown(workdir_.c_str(), user->uid, user->gid) != 0)
        throw std::runtime_error(fmt::format("cannot give the working folder {} to user {}: {}", workdir_.string(),
                                             user->user, std::strerror(errno)));
    if (memory_limit_ > 0) {
        const limits::cgroup_support& cg = limits::memory_cgroups();
        memory_by_cgroup = cg.usable;
        memory_by_why = cg.usable ? std::string() : cg.why;
    }
    std::string why;
    child c;
    if (!spawn(c, why)) throw std::runtime_error(why);
    if (!open_in(c, why)) {
        int status = 0;
        end_child(c, true, status);
        throw std::runtime_error(why == "the plugin process ended" ? why + " (" + describe_status(status) + ")" : why);
    }
    child_ = c;
    asiosmtpd_plugin_descriptor& desc = adapter.desc;
    adapter.owner = this;
    desc.struct_size = sizeof desc;
    desc.abi_major = ASIOSMTPD_ABI_MAJOR;
    desc.abi_minor = ASIOSMTPD_ABI_MINOR;
    desc.flags = ASIOSMTPD_PF_THREAD_SAFE;  // the adapter is; the child serialises the plugin
    desc.name = name.c_str();
    desc.version = version.c_str();
    desc.description = description.c_str();
    desc.create = [](const asiosmtpd_host_api*, asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg, void** out,
                     asiosmtpd_errbuf* err) -> asiosmtpd_status {
        supervisor* s = from_desc(ctx->desc);
        const asiosmtpd_status st = s->create(ctx, reg, err);
        if (st == ASIOSMTPD_OK) *out = s;
        return st;
    };
    desc.destroy = [](void* self) { static_cast<supervisor*>(self)->stop(); };
}

template <std::uint32_t K>
asiosmtpd_verdict trampoline(void* self, asiosmtpd_call* call, const void* args)
{
    return static_cast<supervisor*>(self)->call(K, call, args);
}

constexpr asiosmtpd_hook_fn trampolines[] = {trampoline<0>, trampoline<1>, trampoline<2>, trampoline<3>,
                                             trampoline<4>, trampoline<5>, trampoline<6>, trampoline<7>};

void put_errbuf(asiosmtpd_errbuf* err, std::string_view text)
{
    if (err == nullptr || err->buf == nullptr || err->cap == 0) return;
    const std::size_t n = std::min(text.size(), err->cap - 1);
    std::memcpy(err->buf, text.data(), n);
    err->buf[n] = '\0';
}

asiosmtpd_status supervisor::create(asiosmtpd_ctx* ctx, asiosmtpd_registrar* reg, asiosmtpd_errbuf* err)
{
    inst_ = ctx;
    const asiosmtpd_host_api& h = host_api();
    {
        wire::writer w(wire::create);
        w.u8(h.is_check_only(reg) != 0 ? 1 : 0).str(view(h.config_dir(reg)));
        put_tree(w, reg->config != nullptr ? *reg->config : config::node{}, 0);
        // The names other plugins hold: the plugin's registration gets E_CONFLICT in the child,
        // as it would here.
        const auto who = [](const instance* o) {
            return o == nullptr ? std::string("registered already")
                                : "registered by " + o->key + " (" + o->name + ") already";
        };
        w.u32(static_cast<std::uint32_t>(reg->gen->commands.size()));
        for (const auto& c : reg->gen->commands) w.str(c.verb).str(who(c.handler.owner));
        w.u32(static_cast<std::uint32_t>(reg->gen->auth_mechanisms.size()));
        for (const auto& m : reg->gen->auth_mechanisms) w.str(m.name).str(who(m.handler.owner));
        create_frame_ = w.finish();
    }
    std::string why, body;
    registrations regs;
    if (!create_in(child_, why, &regs, &body)) {
        int status = 0;
        end_child(child_, true, status);
        if (why.find("ended") != std::string::npos) why += " (" + describe_status(status) + ")";
        put_errbuf(err, "the plugin process failed " + why);
        return ASIOSMTPD_E_INVALID;
    }
    wire::reader r(std::string_view(body).substr(1));
    const std::int32_t st = r.i32();
    const std::string reason(r.str());
    const std::string conflict(r.str());
    const bool report = r.u8() != 0;
    std::vector<std::uint32_t> path(r.count(4));
    for (auto& i : path) i = r.u32();
    const std::string report_key(r.str());
    const std::string report_message(r.str());
    for (std::uint32_t i = 0, n = r.count(4); i < n; ++i) regs.hooks.push_back(r.i32());
    for (std::uint32_t i = 0, n = r.count(12); i < n; ++i) {
        registrations::command c;
        c.verb.assign(r.str());
        c.help.assign(r.str());
        c.flags = r.u32();
        regs.commands.push_back(std::move(c));
    }
    for (std::uint32_t i = 0, n = r.count(4); i < n; ++i) regs.keywords.emplace_back(r.str());
    for (std::uint32_t i = 0, n = r.count(4); i < n; ++i) regs.mechanisms.emplace_back(r.str());
    regs.editor = r.u8() != 0;
    if (!r.ok()) {
        put_errbuf(err, "the plugin process sent a malformed answer to create()");
        return ASIOSMTPD_E_INVALID;
    }
    if (st != ASIOSMTPD_OK) {
        // What the plugin said about its config, named in the server's tree.
        if (report) {
            const asiosmtpd_cfg* node = h.cfg_root(reg);
            for (const std::uint32_t i : path)
                if (node != nullptr) node = h.cfg_at(node, i);
            if (node != nullptr)
                (void)h.cfg_error(reg, node, {report_key.data(), report_key.size()},
                                  {report_message.data(), report_message.size()});
        }
        if (!conflict.empty()) reg->conflict = conflict;
        put_errbuf(err, reason);
        int status = 0;
        end_child(child_, false, status);
        return st;
    }
    // The plugin's registrations, made here for the adapter.
    asiosmtpd_status rs = ASIOSMTPD_OK;
    std::array<std::uint32_t, hook_count> seen{};
    for (const std::int32_t hook : regs.hooks) {
        if (hook < ASIOSMTPD_HOOK_CONNECT || static_cast<std::size_t>(hook) >= hook_count) continue;
        const std::uint32_t k = seen[static_cast<std::size_t>(hook)]++;
        if (k < std::size(trampolines)) rs = std::min(rs, h.register_hook(reg, hook, trampolines[k]));
    }
    // SESSION_CLOSE always: the child frees the session's data slots then.
    session_close_hooks_ = seen[ASIOSMTPD_HOOK_SESSION_CLOSE];
    if (session_close_hooks_ == 0)
        rs = std::min(rs, h.register_hook(reg, ASIOSMTPD_HOOK_SESSION_CLOSE, trampolines[0]));
    for (const auto& c : regs.commands) {
        asiosmtpd_command_desc d{};
        d.struct_size = sizeof d;
        d.verb = {c.verb.data(), c.verb.size()};
        d.help = {c.help.data(), c.help.size()};
        d.flags = c.flags;
        d.handler = trampolines[0];
        rs = std::min(rs, h.register_command(reg, &d));
    }
    for (const auto& k : regs.keywords) rs = std::min(rs, h.register_ehlo_keyword(reg, {k.data(), k.size()}));
    for (const auto& m : regs.mechanisms)
        rs = std::min(rs, h.register_auth_mechanism(reg, {m.data(), m.size()}, trampolines[0]));
    if (regs.editor) (void)h.declare_editor(reg);
    if (rs != ASIOSMTPD_OK) {
        put_errbuf(err, "the plugin's registrations were refused in the server");
        int status = 0;
        end_child(child_, true, status);
        return rs;
    }
    if (h.is_check_only(reg) == 0) {
        if (memory_limit_ > 0 && memory_by_cgroup)
            log::info("event=plugin_memory_limit plugin={} key={} limit={} by=cgroup cgroup={}", name, key_,
                      memory_limit_, child_.cgroup ? child_.cgroup->path().string() : std::string());
        else if (memory_limit_ > 0)
            log::info("event=plugin_memory_limit plugin={} key={} limit={} by=rlimit_as why=\"{}\"", name, key_,
                      memory_limit_, memory_by_why);
        log::info("event=plugin_process_started plugin={} key={} pid={}", name, key_, child_.pid);
    }
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    {
        const std::lock_guard guard(lock_);
        state_ = state::up;
    }
    io_ = std::thread([this] { io_loop(); });
    return ASIOSMTPD_OK;
}

void supervisor::end_child(child& c, bool kill_now, int& status) noexcept
{
    status = 0;
    if (c.fd >= 0) {
        ::close(c.fd);
        c.fd = -1;
    }
    if (c.pid <= 0) return;
    if (kill_now) ::kill(c.pid, SIGKILL);
    // Without the channel the child exits by itself; it is killed when it does not in time.
    const auto until = steady::now() + stop_budget;
    for (;;) {
        const pid_t r = ::waitpid(c.pid, &status, WNOHANG);
        if (r == c.pid || (r < 0 && errno != EINTR)) break;
        if (steady::now() >= until) {
            ::kill(c.pid, SIGKILL);
            (void)::waitpid(c.pid, &status, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    c.pid = -1;
    if (c.cgroup) {
        c.oom_killed = c.cgroup->oom_kills() > 0;
        c.cgroup.reset();  // removed (what the plugin left running in it killed)
    }
}

void supervisor::stop() noexcept
{
    child c;
    std::vector<asiosmtpd_token> left;
    {
        const std::lock_guard guard(lock_);
        if (stopped_) return;
        stopped_ = true;
        state_ = state::stopping;
        c = std::exchange(child_, child{});
        left.assign(outstanding_.begin(), outstanding_.end());
        outstanding_.clear();
    }
    wake();
    if (io_.joinable()) io_.join();
    fail_calls(std::move(left), "the plugin process was stopped");
    if (c.fd >= 0) {
        // destroy() in the child, then it exits; its LOG lines on the way are written.
        std::string frame = wire::writer(wire::destroy).finish();
        std::string body, why;
        (void)request(c, frame, 0xff, body, steady::now() + stop_budget, why);
    }
    int status = 0;
    end_child(c, false, status);
    if (wake_fd_ >= 0) ::close(wake_fd_);
    wake_fd_ = -1;
    if (!workdir_.empty()) {
        std::error_code ec;
        fs::remove_all(workdir_, ec);
    }
}

void supervisor::wake() noexcept
{
    if (wake_fd_ < 0) return;
    const std::uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
}

// Under lock_: queue or send `frame`. False when the socket is gone.
bool supervisor::send_locked(std::string& frame)
{
    if (out_.empty()) {
        const ssize_t n = ::send(child_.fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == static_cast<ssize_t>(frame.size())) return true;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return false;
        out_.append(frame, n > 0 ? static_cast<std::size_t>(n) : 0);
    } else {
        out_ += frame;
    }
    wake();
    return true;
}

void supervisor::txn_ended(std::uint64_t session)
{
    const std::lock_guard guard(lock_);
    // Only for a session whose transaction slot the child said it holds: no frame otherwise.
    if (txn_slots_.erase(session) == 0 || state_ != state::up) return;
    std::string frame = wire::writer(wire::end_txn).u64(session).finish();
    (void)send_locked(frame);
}

void supervisor::cancelled(asiosmtpd_token token)
{
    const std::lock_guard guard(lock_);
    if (outstanding_.erase(token) == 0 || state_ != state::up) return;
    std::string frame = wire::writer(wire::cancel).u64(token).finish();
    (void)send_locked(frame);
}

asiosmtpd_verdict supervisor::call(std::uint32_t index, asiosmtpd_call* call, const void* args)
{
    const bool notification = call->hook == ASIOSMTPD_HOOK_SESSION_CLOSE || call->hook == ASIOSMTPD_HOOK_TXN_END;
    const std::int32_t hook = call->hook == auth_mechanism_call ? wire::hook_auth_mechanism
                              : call->hook == static_cast<std::int32_t>(proto::hook_kind::command) ? wire::hook_command
                                                                                                   : call->hook;
    {
        const std::lock_guard guard(lock_);
        if (state_ != state::up) {
            if (notification) return ASIOSMTPD_CONTINUE;
            // The verdict comes with a refused reply: the chain makes it a plugin error.
            call->refused_reply =
                down_reason_.empty() ? std::string("the plugin process is not running") : down_reason_;
            return ASIOSMTPD_CONTINUE;
        }
    }
    // The child's transaction slots end when the server's do: a transaction slot of the
    // adapter's own, whose end tells the child (so that a plugin's per-message state, a temporary
    // file say, goes when the transaction ends, not at the session's next call).
    if (call->hook != ASIOSMTPD_HOOK_TXN_END && call->hook != ASIOSMTPD_HOOK_SESSION_CLOSE &&
        host_api().slot_get(call, ASIOSMTPD_SCOPE_TXN) == nullptr) {
        auto* marker = new txn_marker{weak_from_this(), call->session->session_id()};
        (void)host_api().slot_set(call, ASIOSMTPD_SCOPE_TXN, marker, [](void* p) {
            const std::unique_ptr<txn_marker> m(static_cast<txn_marker*>(p));
            if (const auto s = m->owner.lock()) s->txn_ended(m->session);
        });
    }
    asiosmtpd_token token = 0;
    if (!notification && host_api().suspend(call, &token) != ASIOSMTPD_OK) {
        call->refused_reply = "the call could not be suspended for the plugin process";
        return ASIOSMTPD_CONTINUE;
    }
    wire::writer w(wire::call);
    if ((hook == ASIOSMTPD_HOOK_DATA || hook == ASIOSMTPD_HOOK_DATA_CHUNK) && args != nullptr)
        w.reserve(static_cast<const asiosmtpd_data_args*>(args)->size + 4096);
    w.u64(token).i32(hook).u32(index);
    put_snapshot(w, call, *inst_);
    put_arguments(w, hook, args);
    std::string& frame = w.finish();
    if (!notification) {
        const std::weak_ptr<supervisor> weak = weak_from_this();
        const std::lock_guard guard(call->pending->lock);
        call->pending->on_cancel = [weak, token] {
            if (const auto s = weak.lock()) s->cancelled(token);
        };
    }
    bool sent = false;
    std::string why;
    {
        const std::lock_guard guard(lock_);
        if (state_ == state::up) {
            if (!notification) outstanding_.insert(token);
            sent_.push_back({steady::now() + timeout_, hook});
            sent = send_locked(frame);
            if (!sent && !notification) outstanding_.erase(token);
        }
        why = down_reason_;
    }
    if (!sent && !notification)
        (void)complete_remote(token, ASIOSMTPD_CONTINUE, 0, {}, {},
                              why.empty() ? std::string_view("the plugin process is not running") : why);
    return notification ? ASIOSMTPD_CONTINUE : ASIOSMTPD_PENDING;
}

void supervisor::fail_calls(std::vector<asiosmtpd_token> tokens, const std::string& why)
{
    for (const asiosmtpd_token t : tokens) (void)complete_remote(t, ASIOSMTPD_CONTINUE, 0, {}, {}, why);
}

// A frame from the child (I/O thread).
void supervisor::handle(std::string_view body)
{
    wire::reader r(body.substr(1));
    switch (static_cast<std::uint8_t>(body[0])) {
    case wire::pending: {
        (void)r.u64();
        const bool holds = r.u8() != 0;
        const std::uint64_t session = r.u64();
        const std::lock_guard guard(lock_);
        if (!sent_.empty()) sent_.pop_front();
        if (holds && r.ok()) txn_slots_.insert(session);
        return;
    }
    case wire::done: {
        const std::lock_guard guard(lock_);
        if (!sent_.empty()) sent_.pop_front();
        return;
    }
    case wire::result: {
        const asiosmtpd_token token = r.u64();
        const bool returned = r.u8() != 0;
        std::int32_t verdict = r.i32();
        std::uint16_t code = r.u16();
        std::string_view text = r.str();
        const std::string_view challenge = r.str();
        const std::string_view identity = r.str();
        std::string error(r.str());
        bool mine = false;
        {
            const std::lock_guard guard(lock_);
            if (returned && !sent_.empty()) sent_.pop_front();
            mine = outstanding_.erase(token) != 0;
        }
        if (!mine) return;  // given up on already (timeout, session gone)
        const asiosmtpd_host_api& h = host_api();
        for (std::uint32_t i = 0, n = r.count(14); i < n && error.empty(); ++i) {
            const std::uint64_t index = r.u64();
            const std::uint16_t rc = r.u16();
            const std::string_view rt = r.str();
            if (h.set_rcpt_reply_pending(token, index, rc, {rt.data(), rt.size()}) == ASIOSMTPD_E_STATE)
                error = "set_rcpt_reply() outside DATA";
        }
        for (std::uint32_t i = 0, n = r.count(24); i < n && error.empty(); ++i) {
            asiosmtpd_edit e{};
            e.struct_size = sizeof e;
            e.op = r.i32();
            const std::string_view field = r.str();
            const std::string_view value = r.str();
            e.name = {field.data(), field.size()};
            e.value = {value.data(), value.size()};
            e.index = static_cast<std::size_t>(r.u64());
            std::vector<asiosmtpd_str> params;
            for (std::uint32_t j = 0, m = r.count(4); j < m; ++j) {
                const std::string_view p = r.str();
                params.push_back({p.data(), p.size()});
            }
            e.params = params.empty() ? nullptr : params.data();
            e.param_count = params.size();
            if (r.ok() && h.edit_message_pending(token, &e) != ASIOSMTPD_OK)
                error = "an edit the plugin process made was refused by the server";
        }
        const bool holds = r.u8() != 0;
        const std::uint64_t session = r.u64();
        if (!r.ok()) error = "the plugin process sent a malformed result";
        if (holds && r.ok()) {
            const std::lock_guard guard(lock_);
            txn_slots_.insert(session);
        }
        if (verdict == ASIOSMTPD_AUTH_CHALLENGE && returned) {
            // From a returned verdict the challenge is set_auth_challenge()'s; complete() carries it as the text.
            text = challenge;
            code = 0;
        }
        (void)complete_remote(token, verdict, code, text, identity, error, returned);
        return;
    }
    case wire::log: {
        const std::int32_t level = r.i32();
        const bool in_call = r.u8() != 0;
        const std::uint64_t session = r.u64();
        const std::string_view txn = r.str();
        const std::string_view message = r.str();
        std::vector<asiosmtpd_str> keys, values;
        for (std::uint32_t i = 0, n = r.count(8); i < n; ++i) {
            const std::string_view k = r.str();
            const std::string_view v = r.str();
            keys.push_back({k.data(), k.size()});
            values.push_back({v.data(), v.size()});
        }
        if (!r.ok() || inst_ == nullptr) return;
        write_plugin_log(inst_, level, in_call ? session : 0, in_call ? txn : std::string_view(), message, keys.data(),
                         values.data(), keys.size());
        return;
    }
    default: return;
    }
}

void supervisor::io_loop()
{
    std::vector<char> buf(256 * 1024);
    wire::framer in;
    std::string body;
    for (;;) {
        int fd = -1;
        bool want_out = false;
        state st;
        {
            const std::lock_guard guard(lock_);
            st = state_;
            fd = child_.fd;
            want_out = !out_.empty();
        }
        if (st == state::stopping) return;
        if (st == state::down || st == state::given_up) {
            pollfd p{wake_fd_, POLLIN, 0};
            int wait_ms = 1000;
            if (st == state::down) {
                const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(restart_at_ - steady::now());
                if (left.count() <= 0) {
                    restart();
                    in = wire::framer{};
                    continue;
                }
                wait_ms = static_cast<int>(std::min<long long>(left.count(), 1000));
            }
            if (::poll(&p, 1, wait_ms) > 0) {
                std::uint64_t v;
                (void)!::read(wake_fd_, &v, sizeof v);
            }
            continue;
        }
        pollfd p[2] = {{fd, static_cast<short>(POLLIN | (want_out ? POLLOUT : 0)), 0}, {wake_fd_, POLLIN, 0}};
        const int n = ::poll(p, 2, 100);
        if (n < 0 && errno != EINTR) {
            crashed(fmt::format("poll: {}", std::strerror(errno)), false);
            continue;
        }
        if (n > 0 && (p[1].revents & POLLIN) != 0) {
            std::uint64_t v;
            (void)!::read(wake_fd_, &v, sizeof v);
        }
        if (n > 0 && (p[0].revents & POLLOUT) != 0) {
            const std::lock_guard guard(lock_);
            if (!out_.empty()) {
                const ssize_t sent = ::send(fd, out_.data(), out_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
                if (sent > 0) out_.erase(0, static_cast<std::size_t>(sent));
            }
        }
        bool ended = false;
        if (n > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
            for (;;) {
                const ssize_t got = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
                if (got > 0) {
                    in.feed(buf.data(), static_cast<std::size_t>(got));
                    if (static_cast<std::size_t>(got) < buf.size()) break;
                    continue;
                }
                if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
                if (got < 0 && errno == EINTR) continue;
                ended = true;
                break;
            }
            while (in.next(body)) handle(body);
            if (in.broken()) {
                crashed("it sent a malformed frame", false);
                in = wire::framer{};
                continue;
            }
        }
        if (ended) {
            crashed({}, false);
            in = wire::framer{};
            continue;
        }
        // A hook that has not returned within the plugin's timeout: the child hangs.
        bool hung = false;
        std::int32_t hook = 0;
        {
            const std::lock_guard guard(lock_);
            if (!sent_.empty() && steady::now() > sent_.front().deadline) {
                hung = true;
                hook = sent_.front().hook;
            }
        }
        if (hung) {
            crashed(fmt::format("reason=hung hook={} timeout_ms={}", hook_label(hook), timeout_.count()), true);
            in = wire::framer{};
        }
    }
}

// The child ended (or hangs: killed). Every call in flight ends as a plugin error; a restart is
// planned after a backoff, or the child is given up on.
void supervisor::crashed(std::string reason, bool hung)
{
    child c;
    std::vector<asiosmtpd_token> calls;
    {
        const std::lock_guard guard(lock_);
        if (state_ == state::stopping) return;  // stop() ends the child; nothing to restart
        c = std::exchange(child_, child{});
        calls.assign(outstanding_.begin(), outstanding_.end());
        outstanding_.clear();
        sent_.clear();
        out_.clear();
        txn_slots_.clear();
        state_ = state::down;
    }
    const pid_t pid = c.pid;
    int status = 0;
    end_child(c, true, status);
    const std::string cause = hung ? std::string() : limit_cause(status, c);
    const std::string how = hung ? reason
                            : !cause.empty()
                                ? describe_status(status) + " " + cause
                                : describe_status(status) + (reason.empty() ? "" : " reason=\"" + reason + "\"");
    crash_count.fetch_add(1, std::memory_order_relaxed);
    const auto now = steady::now();
    std::size_t recent = 0;
    std::chrono::milliseconds backoff{0};
    bool give_up = false;
    std::string why;
    {
        const std::lock_guard guard(lock_);
        crash_times_.push_back(now);
        while (!crash_times_.empty() && now - crash_times_.front() > crash_window) crash_times_.pop_front();
        recent = crash_times_.size();
        give_up = recent >= static_cast<std::size_t>(max_crashes);
        backoff = std::min<std::chrono::milliseconds>(max_backoff,
                                                      first_backoff * (1 << std::min<std::size_t>(recent - 1, 10)));
        why = hung ? "the plugin process hung (killed)"
              : cause.starts_with("reason=cpu")
                  ? "the plugin process went over its cpu_limit (" + describe_status(status) + ")"
              : cause.starts_with("reason=memory") ? "the plugin process went over its memory_limit (killed)"
                                                   : "the plugin process crashed (" + describe_status(status) + ")";
        down_reason_ = give_up ? why + "; given up after " + std::to_string(recent) + " crashes" : why + "; restarting";
        if (state_ != state::stopping) state_ = give_up ? state::given_up : state::down;
        restart_at_ = now + backoff;
    }
    log::error("event=plugin_process_crash plugin={} key={} pid={} {} in_flight={} crashes_in_window={}{}", name, key_,
               pid, how, calls.size(), recent,
               give_up ? std::string(" action=given_up")
                       : fmt::format(" action=restart restart_in_ms={}", backoff.count()));
    if (give_up)
        log::error("event=plugin_process_given_up plugin={} key={} crashes={} window_s={}: every call of it fails "
                   "until a reload",
                   name, key_, recent, crash_window.count());
    fail_calls(std::move(calls), why);
}

void supervisor::restart()
{
    std::string why;
    child c;
    bool ok = spawn(c, why) && open_in(c, why) && create_in(c, why, nullptr, nullptr);
    if (ok) {
        bool stopping = false;
        {
            const std::lock_guard guard(lock_);
            stopping = state_ == state::stopping;
            if (!stopping) {
                child_ = c;
                state_ = state::up;
                down_reason_.clear();
            }
        }
        if (stopping) {
            int status = 0;
            end_child(c, true, status);
            return;
        }
        restart_count.fetch_add(1, std::memory_order_relaxed);
        log::info("event=plugin_process_restarted plugin={} key={} pid={}", name, key_, c.pid);
        return;
    }
    // Could not start again: counts as a crash of its own.
    {
        const std::lock_guard guard(lock_);
        if (state_ == state::stopping) {
            int status = 0;
            end_child(c, true, status);
            return;
        }
        child_ = c;
        state_ = state::up;
    }
    crashed("restart failed: " + why, false);
}

}  // namespace

std::shared_ptr<void> open(const config::settings&, const config::plugin_entry& e, const fs::path& file,
                           const asiosmtpd_plugin_descriptor*& desc)
{
    auto s = std::make_shared<supervisor>(fs::absolute(file), e.key, e.memory_limit,
                                          std::chrono::milliseconds(static_cast<std::int64_t>(e.timeout * 1000)));
    s->cpu_limit_ns = static_cast<std::uint64_t>(e.cpu_limit * 1e9);
    if (limits::switches_user(e)) s->user = e.user;
    s->start_first();
    desc = &s->adapter.desc;
    return s;
}

std::uint64_t crashes() noexcept { return crash_count.load(std::memory_order_relaxed); }
std::uint64_t restarts() noexcept { return restart_count.load(std::memory_order_relaxed); }

}  // namespace asiosmtpd::plugin::isolation
