// SPDX-License-Identifier: Apache-2.0
#include "net/server.hpp"

#include "log/log.hpp"
#include "net/metrics.hpp"
#include "net/trimmer.hpp"
#include "os/privileges.hpp"

#include <asiosmtpd/version.hpp>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace asiosmtpd::net {
namespace {

std::chrono::milliseconds millis(double seconds)
{
    return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

// `workers` resolved: 0 is one per core this process may run on (its CPU affinity: taskset,
// systemd's CPUAffinity=, a container's cpuset), not every core of the machine: two loops that
// share one CPU only add wake-ups.
std::size_t usable_cpus()
{
    cpu_set_t allowed;
    CPU_ZERO(&allowed);
    if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) > 0)
        return static_cast<std::size_t>(CPU_COUNT(&allowed));
    return std::max(1u, std::thread::hardware_concurrency());
}

std::size_t resolve_workers(std::uint32_t configured) { return configured != 0 ? configured : usable_cpus(); }

// More loops than CPUs work, but each loop sleeps and wakes on its own: at low concurrency that
// costs CPU per message (bench/README.md, "Event loops").
void note_oversubscribed(std::size_t workers)
{
    const std::size_t cpus = usable_cpus();
    if (workers > 1 && workers > cpus)
        log::info(
            "event=workers_oversubscribed workers={} cpus={} reason=\"more event loops than CPUs this process may "
            "run on: loops share CPUs and wake separately\"",
            workers, cpus);
}

// Each connection holds a descriptor: the soft RLIMIT_NOFILE (1024 under systemd) is raised
// towards the hard one as far as max_connections needs, with some to spare for listeners,
// plugins and their upstreams; short of that, a warning names the limit to raise
// (docs/performance.md).
void fit_descriptor_limit(std::uint32_t max_connections)
{
    constexpr rlim_t spare = 256;
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    const rlim_t need = static_cast<rlim_t>(max_connections) + spare;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rlimit raised = rl;
        raised.rlim_cur = rl.rlim_max == RLIM_INFINITY ? need : std::min(need, rl.rlim_max);
        if (raised.rlim_cur > rl.rlim_cur && ::setrlimit(RLIMIT_NOFILE, &raised) == 0) rl = raised;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need)
        log::warn("event=descriptor_limit max_connections={} rlimit_nofile={} reason=\"fewer descriptors than "
                  "max_connections + {}: raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)\"",
                  max_connections, static_cast<unsigned long long>(rl.rlim_cur),
                  static_cast<unsigned long long>(spare));
}

// A co_spawn completion that never hides an exception (never `detached`).
auto log_failure(std::string what)
{
    return [what = std::move(what)](std::exception_ptr e) {
        if (!e) return;
        try {
            std::rethrow_exception(e);
        } catch (const std::exception& ex) {
            log::error("event=crash where={} what=\"{}\"", what, ex.what());
        }
    };
}

}  // namespace

// --------------------------------------------------------------------------------------------
// registry
// --------------------------------------------------------------------------------------------

void registry::add(const std::shared_ptr<session>& s)
{
    const std::lock_guard guard(lock_);
    sessions_.emplace(s.get(), s);
}

void registry::remove(const session* s)
{
    std::function<void()> notify;
    {
        const std::lock_guard guard(lock_);
        sessions_.erase(s);
        if (sessions_.empty() && on_empty_) notify = std::exchange(on_empty_, nullptr);
    }
    if (notify) notify();
}

std::size_t registry::size() const
{
    const std::lock_guard guard(lock_);
    return sessions_.size();
}

void registry::request_stop_all()
{
    const std::lock_guard guard(lock_);
    for (auto& [key, weak] : sessions_)
        if (auto s = weak.lock()) s->request_stop();
}

void registry::force_close_all()
{
    const std::lock_guard guard(lock_);
    for (auto& [key, weak] : sessions_)
        if (auto s = weak.lock()) s->force_close();
}

void registry::when_empty(std::function<void()> f)
{
    std::unique_lock guard(lock_);
    if (!sessions_.empty()) {
        on_empty_ = std::move(f);
        return;
    }
    guard.unlock();
    f();
}

// --------------------------------------------------------------------------------------------
// server
// --------------------------------------------------------------------------------------------

void apply_log_format(const config::settings& s) noexcept
{
    log::set_format(s.log.format == "json" ? log::format::json : log::format::text,
                    s.log.timestamps == "true"    ? log::stamps::on
                    : s.log.timestamps == "false" ? log::stamps::off
                                                  : log::stamps::automatic);
}

proto::settings engine_settings(const config::settings& s, const config::listener& l, const plugin::generation& g)
{
    const auto& srv = s.server;
    proto::settings e;
    e.hostname = srv.hostname;
    e.ident = srv.ident ? *srv.ident : std::string("asiosmtpd ") + ASIOSMTPD_VERSION_STRING;
    e.data_size_limit = srv.data_size_limit;
    e.command_size_limit = srv.command_size_limit;
    e.enable_smtputf8 = srv.enable_smtputf8;
    e.decode_data = srv.decode_data;
    e.advertise_pipelining = srv.advertise_pipelining;
    e.enable_dsn = srv.enable_dsn;
    e.enable_enhanced_status_codes = srv.enable_enhanced_status_codes;
    e.enable_chunking = srv.enable_chunking;
    e.lmtp = l.protocol == config::protocol::lmtp;
    e.starttls_available = l.tls == config::tls_mode::starttls;
    // aiosmtpd: effective only with a TLS context (tls_context and require_starttls).
    e.require_starttls = srv.require_starttls && e.starttls_available;
    e.auth_required = srv.auth_required;
    e.auth_require_tls = srv.auth_require_tls;
    e.call_limit_enabled = srv.command_call_limit.enabled;
    for (const auto& [verb, n] : srv.command_call_limit.per_verb) e.call_limits.emplace(verb, n);
    e.call_limit_default = srv.command_call_limit.default_limit;
    e.auth_max_failures = srv.auth_max_failures;
    e.xclient = !srv.xclient_networks.empty();
    plugin::add_registrations(e, g);  // the same in the SDK test kit
    return e;
}

void notify_systemd(std::string_view state) noexcept
{
    const char* path = std::getenv("NOTIFY_SOCKET");
    if (path == nullptr || path[0] == '\0') return;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::size_t len = std::strlen(path);
    if (len >= sizeof addr.sun_path) return;
    std::memcpy(addr.sun_path, path, len);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace
    const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    const auto size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
    (void)::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), size);
    ::close(fd);
}

std::shared_ptr<asio::ssl::context> tls_context_for(const config::settings& s)
{
    for (const auto& l : s.server.listen)
        if (l.tls != config::tls_mode::none) return tls::make_server_context(s);
    return nullptr;
}

std::shared_ptr<const listener_context> server::make_context(const config::settings& s, const config::listener& l,
                                                             const std::shared_ptr<const plugin::generation>& g,
                                                             const std::shared_ptr<asio::ssl::context>& tls) const
{
    auto ctx = std::make_shared<listener_context>();
    ctx->plugins = g;
    ctx->smtp = engine_settings(s, l, *g);
    ctx->idle_timeout = millis(s.server.timeout);
    ctx->data_min_rate = s.server.data_min_rate;
    ctx->received_header = s.server.received_header;
    for (const std::string& n : s.server.xclient_networks) {
        std::string why;
        if (auto net = proto::parse_network(n, why)) ctx->xclient_networks.push_back(*net);  // checked by config
    }
    ctx->unix_path = l.path.string();
    ctx->handshake_timeout = millis(s.server.tls_handshake_timeout);
    ctx->auth_failure_delay = millis(s.server.auth_failure_delay);
    ctx->proxy_protocol = l.proxy_protocol;
    ctx->proxy_timeout = millis(s.server.proxy_protocol_timeout);
    ctx->tls = l.tls;
    if (l.tls != config::tls_mode::none) {
        if (!tls) throw std::runtime_error(fmt::format("{}: tls: required by a TLS listener", s.file.string()));
        ctx->tls_context = tls;
        ctx->tls_handshakes = tls_handshakes_;
    }
    return ctx;
}

server::server(config::settings s, std::shared_ptr<const plugin::generation> plugins,
               std::shared_ptr<asio::ssl::context> tls_context)
    : config_(std::move(s)),
      workers_(1),
      grace_timer_(ioc_)
{
    set_workers(resolve_workers(config_.server.workers));      // the threads start in run()
    if (!tls_context) tls_context = tls_context_for(config_);  // not given by the caller
    max_connections_ = config_.server.max_connections;
    fit_descriptor_limit(config_.server.max_connections);
    tls_handshakes_->set_limits(config_.server.max_tls_handshakes, config_.server.max_tls_handshakes_per_client);
    shutdown_grace_ms_ = millis(config_.server.shutdown_grace).count();
    for (const auto& l : config_.server.listen) {
        auto slot = std::make_shared<listener_slot>();
        slot->spec = l;
        slot->ctx.store(make_context(config_, l, plugins, tls_context));
        listeners_.push_back(std::move(slot));
    }
}

server::~server()
{
    stop_control_thread();
    ioc_.stop();
    for (const auto& l : loops_) {
        l->ioc.stop();
        if (l->thread.joinable()) l->thread.join();
    }
    if (reload_thread_.joinable()) reload_thread_.join();
}

// --------------------------------------------------------------------------------------------
// Event loops: one io_context per thread, sessions on one loop for life.
// --------------------------------------------------------------------------------------------

void server::start_loop(loop& l)
{
    l.finished = false;
    l.thread = std::thread([&l] {
        // "smtp-loop-N" in top -H and /proc/PID/task/*/comm (15 characters at most).
        const std::string name = fmt::format("smtp-loop-{}", l.number);
        (void)pthread_setname_np(pthread_self(), name.c_str());
        l.ioc.run();
        l.finished = true;
    });
}

// With one worker the home loop serves the sessions itself (what workers: 1 always was: one
// thread, no hand-off). With N >= 2, N worker loops do and home keeps to the listeners, the
// metrics, reloads and the stop, so that a plugin hook that holds its thread holds one worker
// loop's sessions only, never the accepting of new ones nor a graceful stop. Shrinking retires
// the last loops: they take no new session, their open sessions finish there (nothing is
// moved or cut), and their thread ends with the last of them. Growing first revives retired
// loops whose thread has ended.
void server::set_workers(std::size_t n)
{
    const std::size_t want = n >= 2 ? n : 0;  // worker loops
    std::size_t active = 0;
    for (const auto& l : loops_)
        if (!l->retired) ++active;
    for (auto it = loops_.rbegin(); it != loops_.rend() && active > want; ++it) {
        loop& l = **it;
        if (l.retired) continue;
        l.retired = true;
        l.keep.reset();  // its run() returns once its last session ended
        --active;
    }
    for (const auto& l : loops_) {
        if (active == want) break;
        if (!l->retired || !(l->finished || !l->thread.joinable())) continue;
        if (l->thread.joinable()) l->thread.join();
        l->ioc.restart();
        l->keep.emplace(l->ioc.get_executor());
        l->retired = false;
        if (running_) start_loop(*l);
        ++active;
    }
    while (active < want) {
        auto l = std::make_unique<loop>();
        l->number = loops_.size() + 1;
        l->keep.emplace(l->ioc.get_executor());
        if (running_) start_loop(*l);
        loops_.push_back(std::move(l));
        ++active;
    }
    workers_ = n;
}

server::loop& server::pick_loop()
{
    loop* best = nullptr;
    std::size_t fewest = 0;
    for (const auto& l : loops_) {
        if (l->retired) continue;
        const std::size_t have = l->sessions.load(std::memory_order_relaxed);
        if (best == nullptr || have < fewest) {
            best = l.get();
            fewest = have;
        }
    }
    return best != nullptr ? *best : home_;
}

void server::open(listener_slot& slot)
{
    const auto& l = slot.spec;
    boost::system::error_code ec;
    // "<file>:<line>: server.listen[1]: cannot listen on 127.0.0.1:25: Address already in use"
    const std::string key = l.line == 0 ? fmt::format("{}: {}", config_.file.string(), l.key)
                                        : fmt::format("{}:{}: {}", config_.file.string(), l.line, l.key);
    if (!l.path.empty()) {
        slot.local = std::make_unique<unix_listener>(ioc_, l, config_.server.user, key);
        return;
    }
    const auto address = asio::ip::make_address(l.address, ec);
    if (ec)
        throw std::runtime_error(fmt::format("{}: cannot listen on {}:{}: not an IP address", key, l.address, l.port));
    const tcp::endpoint ep(address, l.port);
    auto acc = std::make_unique<tcp::acceptor>(ioc_);
    acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec && l.reuse_port) acc->set_option(asio::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        // After the privilege drop a port below 1024 cannot be opened by a reload: say so.
        const std::string hint = ec == asio::error::access_denied ? os::bind_denied_hint(l.port) : std::string();
        throw std::runtime_error(
            fmt::format("{}: cannot listen on {}:{}: {}{}", key, l.address, l.port, ec.message(), hint));
    }
    const auto bound = acc->local_endpoint();
    log::info("event=listening address={} port={} protocol={} tls={}", bound.address().to_string(), bound.port(),
              l.protocol == config::protocol::lmtp ? "lmtp" : "smtp",
              l.tls == config::tls_mode::none       ? "none"
              : l.tls == config::tls_mode::starttls ? "starttls"
                                                    : "implicit");
    slot.acceptor = std::move(acc);
}

void server::bind()
{
    for (const auto& slot : listeners_) open(*slot);
    if (config_.metrics) {
        const auto& m = *config_.metrics;
        const std::string key = m.line == 0 ? fmt::format("{}: metrics", config_.file.string())
                                            : fmt::format("{}:{}: metrics.listen", config_.file.string(), m.line);
        boost::system::error_code ec;
        const auto address = asio::ip::make_address(m.address, ec);
        if (ec)
            throw std::runtime_error(
                fmt::format("{}: cannot listen on {}:{}: not an IP address", key, m.address, m.port));
        const tcp::endpoint ep(address, m.port);
        auto acc = std::make_unique<tcp::acceptor>(ioc_);
        acc->open(ep.protocol(), ec);
        if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec) acc->bind(ep, ec);
        if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
        if (ec)
            throw std::runtime_error(
                fmt::format("{}: cannot listen on {}:{}: {}", key, m.address, m.port, ec.message()));
        const auto bound = acc->local_endpoint();
        log::info("event=metrics_listening address={} port={}", bound.address().to_string(), bound.port());
        metrics_acceptor_ = std::move(acc);
        asio::co_spawn(ioc_, serve_metrics(*metrics_acceptor_, [this] { return registry_.size(); }),
                       log_failure("metrics"));
    }
    for (const auto& slot : listeners_) asio::co_spawn(ioc_, accept_loop(slot), log_failure("accept"));
    publish_endpoints();
}

void server::use_plugins(std::shared_ptr<const plugin::generation> g)
{
    // Same listener, same TLS context: only the plugins (and what they register) change.
    for (const auto& slot : listeners_)
        slot->ctx.store(make_context(config_, slot->spec, g, slot->ctx.load()->tls_context));
}

std::vector<tcp::endpoint> server::endpoints() const
{
    const std::lock_guard guard(endpoints_lock_);
    return endpoints_;
}

void server::publish_endpoints()
{
    std::vector<tcp::endpoint> eps;
    for (const auto& slot : listeners_) {
        if (slot->closed || !slot->acceptor) continue;
        boost::system::error_code ec;
        eps.push_back(slot->acceptor->local_endpoint(ec));
    }
    const std::lock_guard guard(endpoints_lock_);
    endpoints_ = std::move(eps);
}

// --------------------------------------------------------------------------------------------
// Reload (SIGHUP): a new generation for new sessions; open sessions finish on theirs.
// --------------------------------------------------------------------------------------------

void server::reload()
{
    if (stopping_) return;
    if (reloading_.exchange(true)) {
        log::warn("event=reload result=skipped reason=\"a reload is already running\"");
        return;
    }
    if (reload_thread_.joinable()) reload_thread_.join();
    notify_systemd("RELOADING=1");
    const std::filesystem::path file = config_.file;
    // Parsing, certificate loading and dlopen() block: never on an I/O thread.
    reload_thread_ = std::thread([this, file] {
        try {
            config::settings next = file == "<embedded default>" ? config::load_default() : config::load_file(file);
            auto tls = tls_context_for(next);
            auto plugins = plugin::load(next);
            asio::post(ioc_,
                       [this, next = std::move(next), tls = std::move(tls), plugins = std::move(plugins)]() mutable {
                           apply(std::move(next), std::move(plugins), std::move(tls));
                       });
        } catch (const std::exception& e) {
            log::error("event=reload result=failed reason=\"{}\" action=\"keeping the running configuration\"",
                       log::escaped(e.what(), 1000));
            metrics::get().reloads_failed.fetch_add(1, std::memory_order_relaxed);
            notify_systemd("READY=1\nSTATUS=reload failed, serving the previous configuration");
            reloading_ = false;
        }
    });
}

void server::apply(config::settings next, std::shared_ptr<const plugin::generation> plugins,
                   std::shared_ptr<asio::ssl::context> tls)
{
    reloading_ = false;
    if (stopping_) return;
    // Listeners are matched by address and port: kept ones get the new settings, new ones are
    // opened, the ones gone from the config are closed (their open sessions go on). What can
    // fail (a context, opening a new listener: a port below 1024 once privileges were dropped,
    // an address in use) is done first, so that a failure refuses the whole reload and the
    // running configuration goes on untouched.
    struct change {
        std::shared_ptr<listener_slot> slot;
        std::shared_ptr<const listener_context> ctx;
        config::listener spec;
        bool fresh = false;  // opened by this reload, not yet accepting
    };
    std::vector<change> changes;
    try {
        for (const auto& l : next.server.listen) {
            auto ctx = make_context(next, l, plugins, tls);
            auto it = std::find_if(listeners_.begin(), listeners_.end(), [&](const auto& slot) {
                if (!l.path.empty()) return !slot->closed && slot->spec.path == l.path;  // a UNIX socket
                return !slot->closed && slot->spec.address == l.address && slot->spec.port == l.port && l.port != 0;
            });
            if (it != listeners_.end()) {
                changes.push_back({*it, std::move(ctx), l, false});
                continue;
            }
            auto slot = std::make_shared<listener_slot>();
            slot->spec = l;
            changes.push_back({slot, std::move(ctx), l, true});
            open(*slot);
        }
    } catch (const std::exception& e) {
        boost::system::error_code ignored;
        for (auto& c : changes)
            if (c.fresh && c.slot->acceptor) c.slot->acceptor->close(ignored);
        for (auto& c : changes)
            if (c.fresh && c.slot->local) c.slot->local->close();
        log::error("event=reload result=failed reason=\"{}\" action=\"keeping the running configuration\"",
                   log::escaped(e.what(), 1000));
        metrics::get().reloads_failed.fetch_add(1, std::memory_order_relaxed);
        notify_systemd("READY=1\nSTATUS=reload failed, serving the previous configuration");
        return;
    }
    std::vector<std::shared_ptr<listener_slot>> kept;
    std::size_t opened = 0, closed = 0;
    for (auto& c : changes) {
        if (!c.fresh && c.slot->local && c.spec.mode != c.slot->spec.mode) c.slot->local->set_mode(c.spec.mode);
        c.slot->spec = std::move(c.spec);
        c.slot->ctx.store(std::move(c.ctx));
        if (c.fresh) {
            asio::co_spawn(ioc_, accept_loop(c.slot), log_failure("accept"));
            ++opened;
        }
        kept.push_back(std::move(c.slot));
    }
    for (auto& slot : listeners_) {
        if (std::find(kept.begin(), kept.end(), slot) != kept.end()) continue;
        slot->closed = true;
        boost::system::error_code ignored;
        if (slot->acceptor) slot->acceptor->close(ignored);
        if (slot->local) slot->local->close();  // its socket file goes
        ++closed;
    }
    listeners_ = std::move(kept);
    publish_endpoints();
    max_connections_ = next.server.max_connections;
    fit_descriptor_limit(next.server.max_connections);
    const std::size_t workers_before = workers_;
    set_workers(resolve_workers(next.server.workers));
    if (workers_ != workers_before) note_oversubscribed(workers_);
    tls_handshakes_->set_limits(next.server.max_tls_handshakes, next.server.max_tls_handshakes_per_client);
    shutdown_grace_ms_ = millis(next.server.shutdown_grace).count();
    apply_log_format(next);
    warn_restart_only(next);
    ++generation_;
    metrics::get().reloads_ok.fetch_add(1, std::memory_order_relaxed);
    notify_systemd("READY=1\nSTATUS=serving");
    log::info("event=reload result=ok generation={} plugins={} listeners={} opened={} closed={} sessions_open={} "
              "workers={}{}",
              generation_, plugins->instances.size(), listeners_.size(), opened, closed, registry_.size(), workers_,
              workers_ == workers_before ? std::string() : fmt::format(" workers_before={}", workers_before));
}

// Keys a running process cannot take from a reload: the user it switched to, the metrics listener and the log level are set up once, at start. A reload that
// changes them still applies everything else; each such key gets a warn line, so that an
// operator does not believe it took effect. The values the process started with are kept.
void server::warn_restart_only(const config::settings& next) const
{
    const auto warn = [](std::string_view key, std::string_view started, std::string_view configured) {
        log::warn("event=reload_ignored key={} started=\"{}\" configured=\"{}\" reason=\"takes effect at restart\"",
                  key, log::escaped(started, 200), log::escaped(configured, 200));
    };
    const config::server_settings& was = config_.server;
    const config::server_settings& now = next.server;
    const auto who = [](const std::optional<config::run_as>& u) {
        return u ? u->user + (u->group_given ? ":" + u->group : std::string()) : std::string("(not set)");
    };
    if (who(now.user) != who(was.user)) warn("server.user/group", who(was.user), who(now.user));
    if (now.allow_root != was.allow_root)
        warn("server.allow_root", was.allow_root ? "true" : "false", now.allow_root ? "true" : "false");
    if (now.log_level != was.log_level) warn("server.log_level", was.log_level, now.log_level);
    const auto where = [](const std::optional<config::metrics_settings>& m) {
        return m ? fmt::format("{}:{}", m->address, m->port) : std::string("(not set)");
    };
    if (where(next.metrics) != where(config_.metrics))
        warn("metrics.listen", where(config_.metrics), where(next.metrics));
}

void server::handle_signals()
{
    signals_.add(SIGINT);
    signals_.add(SIGTERM);
    signals_.add(SIGHUP);
    wait_for_signal();
    // Signals arrive through the reactor of the io_context their signal_set belongs to. On ioc_
    // a sync hook that never returns (workers: 1) would keep SIGTERM from ever being seen.
    control_thread_ = std::thread([this] { control_ioc_.run(); });
}

// On the control thread: reload and stop are handed to the event loop.
void server::wait_for_signal()
{
    signals_.async_wait([this](const boost::system::error_code& ec, int signo) {
        if (ec) return;
        if (signo == SIGHUP) {
            log::info("event=signal signal=SIGHUP action=reload");
            asio::post(ioc_, [this] { reload(); });
            wait_for_signal();
            return;
        }
        log::info("event=signal signal={} action=stop grace={}s", signo == SIGINT ? "SIGINT" : "SIGTERM",
                  static_cast<double>(shutdown_grace_ms_.load()) / 1000.0);
        arm_stop_deadline();
        asio::post(ioc_, [this] { begin_stop(); });
    });
}

// On the control thread. The graceful stop (begin_stop, grace_timer_) runs on the event loop; a
// plugin hook that never returns holds one of its threads for good: with workers: 1 not even
// grace_timer_ fires, with more run() never joins that thread. This deadline does not depend on
// the event loop. Exiting loses no acknowledged mail: a message gets its 250 only once the
// delivering plugin's DATA hook took it, so a client cut off here was not told "250" for mail
// it sent and will try again. std::_Exit, not exit(): destructors and atexit handlers would
// wait for or tear down what the stuck thread still uses.
void server::arm_stop_deadline()
{
    const auto limit = std::chrono::milliseconds(shutdown_grace_ms_.load()) + shutdown_forced_margin;
    stop_deadline_.expires_after(limit);
    stop_deadline_.async_wait([this, limit](const boost::system::error_code& ec) {
        if (ec) return;
        log::error("event=shutdown_forced reason=\"a plugin hook did not return\" sessions={} waited={}s exit=1",
                   registry_.size(), static_cast<double>(limit.count()) / 1000.0);
        std::fflush(stderr);  // log::write flushes each line; stderr is where the logs go
        std::_Exit(EXIT_FAILURE);
    });
}

void server::stop_control_thread()
{
    if (!control_thread_.joinable()) return;
    control_ioc_.stop();  // the pending signal wait and stop deadline are dropped
    control_thread_.join();
}

void server::run()
{
    // Memory a burst of connections freed goes back to the system (not on an event-loop thread).
    const memory_trimmer trimmer([this] { return registry_.size(); });
    note_oversubscribed(workers_);
    running_ = true;  // before the loops start: from here on only the home loop touches loops_
    for (const auto& l : loops_)
        if (!l->retired) start_loop(*l);
    ioc_.run();
    // Stopped: every worker loop was released by begin_stop() and ends with its last session.
    for (const auto& l : loops_)
        if (l->thread.joinable()) l->thread.join();
    stop_control_thread();  // drained in time: no forced exit, no thread left behind
}

void server::stop()
{
    asio::post(ioc_, [this] { begin_stop(); });
}

void server::begin_stop()
{
    if (stopping_) return;
    stopping_ = true;
    notify_systemd("STOPPING=1");
    boost::system::error_code ignored;
    for (auto& slot : listeners_) {
        slot->closed = true;
        if (slot->acceptor) slot->acceptor->close(ignored);
        if (slot->local) slot->local->close();
    }
    if (metrics_acceptor_) metrics_acceptor_->close(ignored);
    publish_endpoints();
    // The worker loops end once their sessions have.
    for (const auto& l : loops_) l->keep.reset();
    // Sessions finish what they are doing; idle ones say 421 and close at once.
    registry_.request_stop_all();
    grace_timer_.expires_after(std::chrono::milliseconds(shutdown_grace_ms_.load()));
    grace_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) return;
        if (registry_.size() > 0) log::info("event=shutdown_grace_over sessions={}", registry_.size());
        registry_.force_close_all();
    });
    registry_.when_empty([this] { asio::post(ioc_, [this] { grace_timer_.cancel(); }); });
}

// On the home loop. The accepted socket is registered with its session's loop at once (Asio
// accepts into another io_context's reactor): the hand-off costs one post to that loop.
asio::awaitable<void> server::accept_loop(std::shared_ptr<listener_slot> slot)
{
    for (;;) {
        loop* target = &pick_loop();
        const asio::any_io_executor session_ex(target->ioc.get_executor());
        boost::system::error_code ec;
        tcp::socket socket(session_ex);
        if (slot->local) std::tie(ec, socket) = co_await slot->local->accept(session_ex);
        else std::tie(ec, socket) = co_await slot->acceptor->async_accept(session_ex, nothrow);
        // The listener's current settings and plugins (a reload may have replaced them).
        const std::shared_ptr<const listener_context> ctx = slot->ctx.load();
        if (!ec && (stopping_ || slot->closed)) {
            boost::system::error_code ignored;
            socket.close(ignored);  // accepted as the stop began: the client sees the close
            co_return;
        }
        if (!ec && target->retired) {
            // A reload retired the loop while the accept waited: the socket goes to another.
            loop& other = pick_loop();
            // (A UNIX socket's descriptor is held as a tcp::socket: see unix_listener.hpp.)
            const auto protocol = slot->local ? tcp::v4() : socket.local_endpoint(ec).protocol();
            const int fd = ec ? -1 : socket.release(ec);
            tcp::socket moved(other.ioc);
            if (!ec) moved.assign(protocol, fd, ec);
            if (!ec) {
                socket = std::move(moved);
                target = &other;
            }
        }
        if (ec) {
            if (ec == asio::error::operation_aborted || stopping_ || slot->closed) co_return;
            // EMFILE and friends: say so and go on; the backlog holds the clients meanwhile.
            log::warn("event=accept_failed reason=\"{}\"", ec.message());
            asio::steady_timer pause(ioc_, std::chrono::milliseconds(100));
            co_await pause.async_wait(nothrow);
            continue;
        }
        if (registry_.size() >= max_connections_.load()) {
            const auto ex = socket.get_executor();
            asio::co_spawn(ex, refuse(std::move(socket), proto::replies::too_many_connections(ctx->smtp.hostname)),
                           log_failure("refuse"));
            continue;
        }
        start_session(std::move(socket), ctx, *target);
    }
}

// On the home loop; the session runs on `l` (its socket's) from here on.
void server::start_session(tcp::socket socket, std::shared_ptr<const listener_context> ctx, loop& l)
{
    const auto ex = socket.get_executor();
    auto s = std::make_shared<session>(std::move(socket), std::move(ctx), registry_);
    registry_.add(s);
    l.sessions.fetch_add(1, std::memory_order_relaxed);
    asio::co_spawn(ex, s->run(), [this, s, &l](std::exception_ptr e) {
        log_failure("session")(e);
        l.sessions.fetch_sub(1, std::memory_order_relaxed);
        registry_.remove(s.get());
    });
}

asio::awaitable<void> server::refuse(tcp::socket socket, std::string reply)
{
    boost::system::error_code ec;
    const auto peer = socket.remote_endpoint(ec);
    log::warn("event=refused reason=max_connections client={} limit={}",
              ec || (peer.data()->sa_family != AF_INET && peer.data()->sa_family != AF_INET6)  // a UNIX socket
                  ? std::string("-")
                  : peer.address().to_string(),
              max_connections_.load());
    metrics::get().connections_refused.fetch_add(1, std::memory_order_relaxed);
    reply.append("\r\n");
    co_await asio::async_write(socket, asio::buffer(reply), nothrow);
    boost::system::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
}

}  // namespace asiosmtpd::net
