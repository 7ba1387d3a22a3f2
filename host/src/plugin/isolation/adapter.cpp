// SPDX-License-Identifier: Apache-2.0
// The server's side of `isolation: process` (adapter.hpp): the adapter plugin, the child's
// supervisor (start, restart with backoff, give up) and its channels to the child.
//
// A hook call on an event-loop thread never waits for the child: the adapter suspends the call
// (the ABI's own suspend()), builds one CALL frame with the hook's arguments and a snapshot of
// everything the plugin could read during the call (session, envelope, recipients), and queues
// it on that loop's channel to the child (a socketpair of its own, made at the loop's first call
// and handed to the child over the control channel). The loop writes what its sessions queued
// in one write, reads the child's answers on the same socket and ends each suspended call
// through complete_remote(), exactly as a plugin thread's complete() would, but on the session's
// own thread: no thread in between, one wake-up of the child and one of the loop per call.
//
// The supervisor's own thread reads the control channel (the plugin's log lines outside a call,
// the child's end), looks for a hanging child every 100 ms, and restarts a crashed one.
#include "plugin/isolation/adapter.hpp"

#include "log/log.hpp"
#include "plugin/chain.hpp"
#include "plugin/generation.hpp"
#include "plugin/isolation/limits.hpp"
#include "plugin/isolation/wire.hpp"
#include "proto/trace.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
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
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace asio = boost::asio;
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
        for (asiosmtpd_str p{"", 0}; h.txn_rcpt_param_at(call, i, params.size(), &p) == ASIOSMTPD_OK;)
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
// child runs each channel's one at a time, in order, so the oldest tells whether it hangs.
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
class channel;

// What the supervisor knows of one channel, under its lock: which child it goes to, the frames
// the child has not answered yet (in order), and how many suspended calls answer there.
struct lane {
    std::uint64_t child = 0;
    std::deque<sent_call> sent;
    std::size_t calls = 0;
    std::weak_ptr<channel> ch;
};

// How long a channel with nothing in flight stays open (between one and two of these).
constexpr std::chrono::milliseconds idle_grace{200};

// One socket to the child, read and written on one event loop (`ex_`): that loop's sessions'
// calls go out on it, and their answers come back on it and complete the calls there, with no
// other thread in between. Frames queued while the loop works go out in one write when it gets
// to the flush. It lives as long as its read and its idle timer are outstanding (the supervisor
// keeps a weak reference), so that it never outlives its loop; closed after idle_grace without
// use, so that a loop with no session left runs out of work and ends.
class channel : public std::enable_shared_from_this<channel> {
public:
    channel(const asio::any_io_executor& ex, int fd, std::weak_ptr<supervisor> owner, std::shared_ptr<lane> l,
            bool idle_close);
    channel(const channel&) = delete;
    channel& operator=(const channel&) = delete;

    /// Start reading (on the loop).
    void start();
    /// Send `frame` with the next flush (any thread).
    void queue(std::string_view frame);
    [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_relaxed); }
    [[nodiscard]] const std::shared_ptr<lane>& route_lane() const noexcept { return lane_; }

private:
    void read();
    void on_read(const boost::system::error_code& ec, std::size_t n);
    void flush();
    void arm_idle();
    void fail(std::string why);
    void close();

    asio::any_io_executor ex_;
    asio::local::stream_protocol::socket sock_;
    asio::steady_timer idle_;
    const std::weak_ptr<supervisor> owner_;
    const std::shared_ptr<lane> lane_;
    const bool idle_close_;
    std::atomic<bool> closed_{false};
    // on the loop only
    std::vector<char> buf_;
    wire::framer in_;
    std::string body_;
    std::string writing_;
    bool write_busy_ = false;
    // any thread, under out_lock_
    std::mutex out_lock_;
    std::string out_;
    bool flush_posted_ = false;
    bool used_ = false;
};

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
    asio::io_context* loop;  // the session's (its channel)
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
    void txn_ended(std::uint64_t session, asio::io_context* loop);

    /// A frame from the child: on the channel with `l` (its loop), or on the control channel
    /// (l == nullptr: the supervisor's thread, or the thread starting the child).
    void handle(std::string_view body, lane* l);
    /// A channel failed (the child ended, a malformed frame) or closed: forget it.
    void channel_failed(const lane& l, std::string why);
    void channel_closed(const std::shared_ptr<lane>& l);
    /// Whether the channel of `l` has something in flight.
    bool busy(const lane& l);

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

    // On the supervisor's thread (own_): the control channel, the hang check, crashes, restarts.
    void watch_control();
    void tick();
    void crashed(std::uint64_t which, std::string reason, bool hung);
    void restart();
    void fail_calls(std::vector<asiosmtpd_token> tokens, const std::string& why);
    std::shared_ptr<channel> channel_for(asio::io_context* loop, std::string& why);
    std::shared_ptr<channel> live_channel(asio::io_context* loop);
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
    std::uint64_t child_number_ = 0;  // which child is up (1, 2, ... with each restart)
    std::string down_reason_;
    std::unordered_map<asiosmtpd_token, std::shared_ptr<lane>> outstanding_;  // suspended calls
    std::unordered_set<std::uint64_t> txn_slots_;  // sessions holding a transaction slot in the child
    struct route {
        asio::io_context* loop;
        std::weak_ptr<channel> ch;
    };
    std::vector<route> routes_;                 // each event loop's channel
    std::vector<std::shared_ptr<lane>> lanes_;  // the up child's channels (the hang check)
    std::deque<steady::time_point> crash_times_;
    steady::time_point restart_at_;
    bool stopped_ = false;

    // The supervisor's thread: its io_context runs the control channel's reading, the hang
    // check and restarts, and the channel of calls made off any event loop.
    asio::io_context own_{1};
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> own_work_;
    asio::local::stream_protocol::socket control_{own_};
    asio::steady_timer ticker_{own_};
    std::vector<char> control_buf_ = std::vector<char>(64 * 1024);
    wire::framer control_in_;
    std::thread own_thread_;
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

// Send `frame` and wait for a frame of type `want` (on the control channel, while no other
// thread reads it: start, restart, stop; LOG frames on the way are written). False, with `why`, when the child ends or the deadline passes.
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
                if (static_cast<std::uint8_t>(body[0]) == wire::log) handle(body, nullptr);
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
    w.str(file_.string()).u32(wire::protocol);
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
    const std::uint32_t speaks = r.u32();  // missing: protocol 1
    if (!r.ok() || speaks < wire::protocol) {
        why = fmt::format("{} speaks wire protocol {}, this server {} (install them together)", helper_path().string(),
                          r.ok() ? speaks : 1, wire::protocol);
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
    {
        const std::lock_guard guard(lock_);
        state_ = state::up;
        child_number_ = 1;
    }
    boost::system::error_code ec;
    control_.assign(asio::local::stream_protocol(), child_.fd, ec);
    if (ec) {
        put_errbuf(err, "the plugin process's channel: " + ec.message());
        int status = 0;
        end_child(child_, true, status);
        return ASIOSMTPD_E_INVALID;
    }
    own_work_.emplace(own_.get_executor());
    watch_control();
    tick();
    own_thread_ = std::thread([this] { own_.run(); });
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
        for (const auto& o : outstanding_) left.push_back(o.first);
        outstanding_.clear();
        lanes_.clear();
        routes_.clear();
    }
    if (own_thread_.joinable()) {
        own_work_.reset();
        own_.stop();
        own_thread_.join();
    }
    fail_calls(std::move(left), "the plugin process was stopped");
    if (control_.is_open()) {
        boost::system::error_code ignored;
        (void)control_.release(ignored);  // c.fd: DESTROY goes there, end_child() closes it
    }
    if (c.fd >= 0) {
        // destroy() in the child, then it exits; its LOG lines on the way are written. The
        // event loops' channels see the end and close.
        std::string frame = wire::writer(wire::destroy).finish();
        std::string body, why;
        (void)request(c, frame, 0xff, body, steady::now() + stop_budget, why);
    }
    int status = 0;
    end_child(c, false, status);
    if (!workdir_.empty()) {
        std::error_code ec;
        fs::remove_all(workdir_, ec);
    }
}

// Under lock_, the child up: the channel of `loop` (nullptr: the supervisor's own) to the
// child, made when there is none yet: a socketpair whose other end goes to the child with an
// ATTACH frame on the control channel. nullptr with `why` when that fails.
std::shared_ptr<channel> supervisor::channel_for(asio::io_context* loop, std::string& why)
{
    asio::io_context* const key = loop != nullptr ? loop : &own_;
    auto at = std::find_if(routes_.begin(), routes_.end(), [key](const route& r) { return r.loop == key; });
    if (at != routes_.end()) {
        if (auto ch = at->ch.lock(); ch && !ch->closed() && ch->route_lane()->child == child_number_) return ch;
    }
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        why = fmt::format("the plugin process's channel: socketpair: {}", std::strerror(errno));
        return nullptr;
    }
    const int size = 4 * 1024 * 1024;
    for (int fd : sv) {
        (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    std::string frame = wire::writer(wire::attach).finish();
    iovec iov{frame.data(), frame.size()};
    alignas(cmsghdr) char space[CMSG_SPACE(sizeof(int))] = {};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = space;
    m.msg_controllen = sizeof space;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &sv[1], sizeof(int));
    const ssize_t sent = ::sendmsg(child_.fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    const int error = errno;
    ::close(sv[1]);
    if (sent != static_cast<ssize_t>(frame.size())) {
        ::close(sv[0]);
        why = sent < 0 ? fmt::format("the plugin process's channel: {}", std::strerror(error))
                       : std::string("the plugin process's channel: a short write");
        if (sent > 0) {
            // Half a frame on the control channel: the child cannot make sense of it any more.
            const std::uint64_t which = child_number_;
            asio::post(own_, [this, which] { crashed(which, "its control channel broke", false); });
        }
        return nullptr;
    }
    auto l = std::make_shared<lane>();
    l->child = child_number_;
    const asio::any_io_executor ex(key->get_executor());
    auto ch = std::make_shared<channel>(ex, sv[0], weak_from_this(), l, loop != nullptr);
    l->ch = ch;
    lanes_.push_back(l);
    if (at != routes_.end()) at->ch = ch;
    else routes_.push_back({key, ch});
    // On the session's own loop this runs here and now; the supervisor's runs it on its thread.
    asio::dispatch(ex, [ch] { ch->start(); });
    return ch;
}

// Under lock_: the loop's channel to the up child, if it has one open.
std::shared_ptr<channel> supervisor::live_channel(asio::io_context* loop)
{
    asio::io_context* const key = loop != nullptr ? loop : &own_;
    for (const route& r : routes_)
        if (r.loop == key) {
            auto ch = r.ch.lock();
            if (ch && !ch->closed() && ch->route_lane()->child == child_number_) return ch;
        }
    return nullptr;
}

void supervisor::txn_ended(std::uint64_t session, asio::io_context* loop)
{
    const std::lock_guard guard(lock_);
    // Only for a session whose transaction slot the child said it holds: no frame otherwise.
    if (txn_slots_.erase(session) == 0 || state_ != state::up) return;
    // On the session's channel, after its calls. Without one (closed as idle) the child frees
    // the slot at the session's next call, or at its end.
    if (const auto ch = live_channel(loop)) ch->queue(wire::writer(wire::end_txn).u64(session).finish());
}

void supervisor::cancelled(asiosmtpd_token token)
{
    const std::lock_guard guard(lock_);
    const auto it = outstanding_.find(token);
    if (it == outstanding_.end()) return;
    const std::shared_ptr<lane> l = std::move(it->second);
    outstanding_.erase(it);
    --l->calls;
    if (state_ != state::up || l->child != child_number_) return;
    if (const auto ch = l->ch.lock(); ch && !ch->closed()) ch->queue(wire::writer(wire::cancel).u64(token).finish());
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
    asio::io_context* const loop = call->session->event_loop();
    // The child's transaction slots end when the server's do: a transaction slot of the
    // adapter's own, whose end tells the child (so that a plugin's per-message state, a temporary
    // file say, goes when the transaction ends, not at the session's next call).
    if (call->hook != ASIOSMTPD_HOOK_TXN_END && call->hook != ASIOSMTPD_HOOK_SESSION_CLOSE &&
        host_api().slot_get(call, ASIOSMTPD_SCOPE_TXN) == nullptr) {
        auto* marker = new txn_marker{weak_from_this(), call->session->session_id(), loop};
        (void)host_api().slot_set(call, ASIOSMTPD_SCOPE_TXN, marker, [](void* p) {
            const std::unique_ptr<txn_marker> m(static_cast<txn_marker*>(p));
            if (const auto s = m->owner.lock()) s->txn_ended(m->session, m->loop);
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
    const std::string& frame = w.finish();
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
            if (const auto ch = channel_for(loop, why)) {
                const std::shared_ptr<lane>& l = ch->route_lane();
                if (!notification) {
                    outstanding_.emplace(token, l);
                    ++l->calls;
                }
                l->sent.push_back({steady::now() + timeout_, hook});
                ch->queue(frame);
                sent = true;
            }
        }
        if (why.empty()) why = down_reason_;
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

// A frame from the child (a channel's loop, or the control channel's reader).
void supervisor::handle(std::string_view body, lane* l)
{
    wire::reader r(body.substr(1));
    // The oldest frame of the channel not answered yet is answered (under lock_).
    const auto answered = [l] {
        if (l != nullptr && !l->sent.empty()) l->sent.pop_front();
    };
    switch (static_cast<std::uint8_t>(body[0])) {
    case wire::pending: {
        (void)r.u64();
        const bool holds = r.u8() != 0;
        const std::uint64_t session = r.u64();
        const std::lock_guard guard(lock_);
        answered();
        if (holds && r.ok()) txn_slots_.insert(session);
        return;
    }
    case wire::done: {
        const std::lock_guard guard(lock_);
        answered();
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
            if (returned) answered();
            if (const auto it = outstanding_.find(token); it != outstanding_.end()) {
                --it->second->calls;
                outstanding_.erase(it);
                mine = true;
            }
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

// A channel's end of the child (read or write failed, a malformed frame): the child is gone or
// broken. The supervisor's thread makes it a crash, once, for the child it was.
void supervisor::channel_failed(const lane& l, std::string why)
{
    const std::uint64_t which = l.child;
    asio::post(own_, [this, which, why = std::move(why)]() mutable { crashed(which, std::move(why), false); });
}

void supervisor::channel_closed(const std::shared_ptr<lane>& l)
{
    const std::lock_guard guard(lock_);
    std::erase(lanes_, l);
}

bool supervisor::busy(const lane& l)
{
    const std::lock_guard guard(lock_);
    return !l.sent.empty() || l.calls > 0;
}

// The control channel (the supervisor's thread): LOG lines of the plugin's threads outside a
// call, and the child's end.
void supervisor::watch_control()
{
    std::uint64_t which = 0;
    {
        const std::lock_guard guard(lock_);
        which = child_number_;
    }
    control_.async_read_some(asio::buffer(control_buf_),
                             [this, which](const boost::system::error_code& ec, std::size_t n) {
                                 if (ec == asio::error::operation_aborted) return;
                                 if (ec) {
                                     crashed(which, ec == asio::error::eof ? std::string() : ec.message(), false);
                                     return;
                                 }
                                 control_in_.feed(control_buf_.data(), n);
                                 std::string body;
                                 while (control_in_.next(body)) handle(body, nullptr);
                                 if (control_in_.broken()) {
                                     crashed(which, "it sent a malformed frame", false);
                                     return;
                                 }
                                 watch_control();
                             });
}

// Every 100 ms (the supervisor's thread): a frame the child has not answered within the
// plugin's timeout means it hangs (the earliest such, for the log line); a child down for its
// backoff is started again.
void supervisor::tick()
{
    ticker_.expires_after(std::chrono::milliseconds(100));
    ticker_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) return;
        bool hung = false, due = false;
        std::int32_t hook = 0;
        std::uint64_t which = 0;
        {
            const std::lock_guard guard(lock_);
            const auto now = steady::now();
            which = child_number_;
            due = state_ == state::down && now >= restart_at_;
            steady::time_point oldest = steady::time_point::max();
            for (const auto& l : lanes_)
                if (state_ == state::up && !l->sent.empty() && l->sent.front().deadline < now &&
                    l->sent.front().deadline < oldest) {
                    oldest = l->sent.front().deadline;
                    hook = l->sent.front().hook;
                    hung = true;
                }
        }
        if (hung)
            crashed(which, fmt::format("reason=hung hook={} timeout_ms={}", hook_label(hook), timeout_.count()), true);
        else if (due) restart();
        tick();
    });
}

// The child ended (or hangs: killed). Every call in flight ends as a plugin error; a restart is
// planned after a backoff, or the child is given up on. `which`: the child it was about (a late
// word on an earlier one changes nothing).
void supervisor::crashed(std::uint64_t which, std::string reason, bool hung)
{
    child c;
    std::vector<asiosmtpd_token> calls;
    {
        const std::lock_guard guard(lock_);
        if (state_ != state::up || which != child_number_) return;
        c = std::exchange(child_, child{});
        for (const auto& o : outstanding_) calls.push_back(o.first);
        outstanding_.clear();
        lanes_.clear();
        txn_slots_.clear();
        state_ = state::down;
    }
    if (control_.is_open()) {
        boost::system::error_code ignored;
        (void)control_.release(ignored);  // c.fd: end_child() closes it
    }
    control_in_ = wire::framer{};
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

// The supervisor's thread: a new child, with the first one's CREATE.
void supervisor::restart()
{
    std::string why;
    child c;
    const bool ok = spawn(c, why) && open_in(c, why) && create_in(c, why, nullptr, nullptr);
    std::uint64_t which = 0;
    {
        const std::lock_guard guard(lock_);
        if (state_ == state::stopping) {
            int status = 0;
            end_child(c, true, status);
            return;
        }
        // Could not start again: counts as a crash of its own (below).
        child_ = c;
        which = ++child_number_;
        state_ = state::up;
        if (ok) down_reason_.clear();
    }
    if (!ok) {
        crashed(which, "restart failed: " + why, false);
        return;
    }
    boost::system::error_code ec;
    control_.assign(asio::local::stream_protocol(), c.fd, ec);
    if (ec) {
        crashed(which, "its channel: " + ec.message(), false);
        return;
    }
    watch_control();
    restart_count.fetch_add(1, std::memory_order_relaxed);
    log::info("event=plugin_process_restarted plugin={} key={} pid={}", name, key_, c.pid);
}

// ---- a channel -----------------------------------------------------------------------------------

channel::channel(const asio::any_io_executor& ex, int fd, std::weak_ptr<supervisor> owner, std::shared_ptr<lane> l,
                 bool idle_close)
    : ex_(ex),
      sock_(ex),
      idle_(ex),
      owner_(std::move(owner)),
      lane_(std::move(l)),
      idle_close_(idle_close),
      buf_(64 * 1024)
{
    boost::system::error_code ec;
    sock_.assign(asio::local::stream_protocol(), fd, ec);
    if (ec) {
        ::close(fd);
        closed_ = true;
    }
}

void channel::start()
{
    if (closed()) {
        if (const auto s = owner_.lock()) s->channel_failed(*lane_, "its channel could not be set up");
        return;
    }
    read();
    if (idle_close_) arm_idle();
}

void channel::read()
{
    sock_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](const boost::system::error_code& ec,
                                                                          std::size_t n) { self->on_read(ec, n); });
}

void channel::on_read(const boost::system::error_code& ec, std::size_t n)
{
    if (closed()) return;
    const auto s = owner_.lock();
    if (ec) {
        fail(ec == asio::error::eof ? std::string() : ec.message());
        return;
    }
    in_.feed(buf_.data(), n);
    while (in_.next(body_))
        if (s) s->handle(body_, lane_.get());
    if (in_.broken()) {
        fail("it sent a malformed frame");
        return;
    }
    read();
}

void channel::queue(std::string_view frame)
{
    bool post = false;
    {
        const std::lock_guard guard(out_lock_);
        out_.append(frame);
        used_ = true;
        post = !std::exchange(flush_posted_, true);
    }
    if (post) asio::post(ex_, [self = shared_from_this()] { self->flush(); });
}

// On the loop: what was queued goes out in one write; what the socket does not take at once,
// Asio writes when it can (and the next flush waits for that).
void channel::flush()
{
    if (closed() || write_busy_) {
        const std::lock_guard guard(out_lock_);
        flush_posted_ = false;
        return;
    }
    {
        const std::lock_guard guard(out_lock_);
        writing_.swap(out_);
        out_.clear();
        flush_posted_ = false;
    }
    if (writing_.empty()) return;
    const ssize_t n = ::send(sock_.native_handle(), writing_.data(), writing_.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == static_cast<ssize_t>(writing_.size())) {
        writing_.clear();
        return;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fail(std::strerror(errno));
        return;
    }
    const std::size_t at = n > 0 ? static_cast<std::size_t>(n) : 0;
    write_busy_ = true;
    asio::async_write(sock_, asio::buffer(writing_.data() + at, writing_.size() - at),
                      [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                          self->write_busy_ = false;
                          if (self->closed()) return;
                          if (ec) {
                              self->fail(ec.message());
                              return;
                          }
                          self->writing_.clear();
                          self->flush();
                      });
}

void channel::arm_idle()
{
    idle_.expires_after(idle_grace);
    idle_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
        if (ec || self->closed()) return;
        bool used = false;
        {
            const std::lock_guard guard(self->out_lock_);
            used = std::exchange(self->used_, false);
        }
        const auto s = self->owner_.lock();
        if (s && (used || s->busy(*self->lane_))) {
            self->arm_idle();
            return;
        }
        self->close();  // the child sees the end and forgets it
    });
}

void channel::fail(std::string why)
{
    if (const auto s = owner_.lock()) s->channel_failed(*lane_, std::move(why));
    close();
}

void channel::close()
{
    if (closed_.exchange(true)) return;
    boost::system::error_code ignored;
    sock_.close(ignored);
    idle_.cancel();
    if (const auto s = owner_.lock()) s->channel_closed(lane_);
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
