// SPDX-License-Identifier: Apache-2.0
// The SDK test kit's driver (asiosmtpd/testkit_core.hpp): the server's engine, hook chain and
// host function table, driven without sockets. A session is driven as the server's session
// drives it (net/session.cpp): bytes into the engine, each hook request through a
// plugin::chain, a suspended call waited for (complete() from any thread, or the timeout),
// SESSION_CLOSE through plugin::notify. The kit decides nothing on its own: every reply is
// the engine's, every verdict rule the chain's.
#include <asiosmtpd/testkit_core.hpp>

#include "config/node.hpp"
#include "plugin/chain.hpp"
#include "plugin/generation.hpp"
#include "plugin/log_sink.hpp"
#include "proto/engine.hpp"
#include "proxy/parser.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>

namespace asiosmtpd::testkit::core {

namespace {

std::string_view level_name(plugin::log_level l) noexcept
{
    switch (l) {
    case plugin::log_level::debug: return "debug";
    case plugin::log_level::info: return "info";
    case plugin::log_level::warn: return "warn";
    case plugin::log_level::error: return "error";
    }
    return "?";
}

config::node convert(const node& n)
{
    config::node out;
    switch (n.kind()) {
    case ASIOSMTPD_CFG_SCALAR:
        out.type = config::node::kind::scalar;
        out.scalar = n.text();
        break;
    case ASIOSMTPD_CFG_SEQUENCE:
        out.type = config::node::kind::sequence;
        for (const auto& c : n.children()) out.items.push_back(convert(c.second));
        break;
    case ASIOSMTPD_CFG_MAP:
        out.type = config::node::kind::map;
        for (const auto& c : n.children()) {
            out.keys.push_back(c.first);
            out.items.push_back(convert(c.second));
        }
        break;
    default: break;
    }
    return out;
}

// Replies as the kit returns them: lines joined by '\n', no CRLF at the end.
std::string lines_of(std::string_view wire)
{
    std::string out;
    out.reserve(wire.size());
    for (std::size_t i = 0; i < wire.size(); ++i) {
        if (wire[i] == '\r' && i + 1 < wire.size() && wire[i + 1] == '\n') continue;
        out.push_back(wire[i]);
    }
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

// Whole replies ("250-a\n250 b" is one) of a stretch of output.
std::vector<std::string> replies_of(std::string_view text)
{
    std::vector<std::string> out;
    std::string current;
    std::size_t start = 0;
    while (start < text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        const std::string_view line = text.substr(start, end - start);
        if (!current.empty()) current += '\n';
        current.append(line);
        if (line.size() < 4 || line[3] != '-') out.push_back(std::exchange(current, {}));
        start = end + 1;
    }
    if (!current.empty()) out.push_back(std::move(current));
    return out;
}

asiosmtpd_verdict abi_verdict(proto::verdict v) noexcept
{
    switch (v) {
    case proto::verdict::none: return ASIOSMTPD_CONTINUE;
    case proto::verdict::accept: return ASIOSMTPD_ACCEPT;
    case proto::verdict::reject: return ASIOSMTPD_REJECT;
    case proto::verdict::tempfail: return ASIOSMTPD_TEMPFAIL;
    case proto::verdict::reject_close: return ASIOSMTPD_REJECT_CLOSE;
    case proto::verdict::tempfail_close: return ASIOSMTPD_TEMPFAIL_CLOSE;
    case proto::verdict::error: return ASIOSMTPD_TEMPFAIL;
    case proto::verdict::challenge: return ASIOSMTPD_AUTH_CHALLENGE;
    }
    return ASIOSMTPD_CONTINUE;
}

}  // namespace

// --------------------------------------------------------------------------------------------
// host
// --------------------------------------------------------------------------------------------

struct host_core::impl final : plugin::log_sink {
    // Declared before the generation: plugins' destroy() may still log.
    mutable std::mutex log_lock;
    std::vector<std::string> lines;
    std::vector<std::unique_ptr<config::node>> configs;
    plugin::generation gen;
    std::atomic<std::uint64_t> next_session{1};

    impl() = default;
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() override
    {
        while (!gen.instances.empty()) gen.instances.pop_back();  // reverse load order
    }

    [[nodiscard]] bool enabled(plugin::log_level) const noexcept override { return true; }
    void write(plugin::log_level l, std::string_view line) noexcept override
    {
        try {
            std::string out(level_name(l));
            out.append(" ").append(line);
            const std::lock_guard guard(log_lock);
            lines.push_back(std::move(out));
        } catch (...) {}
    }

    void add(asiosmtpd_entry_fn entry, const node& config, const std::string& config_dir, const std::string& where,
             std::shared_ptr<void> lib)
    {
        const auto refuse = [&where](const std::string& why) { return error("plugin " + where + ": " + why); };
        auto inst = std::make_unique<plugin::instance>();
        inst->lib = std::move(lib);
        const asiosmtpd_plugin_descriptor* d = entry != nullptr ? entry() : nullptr;
        // The loader's checks, in its order and words.
        if (d == nullptr) throw refuse("the entry returned no descriptor");
        if (d->struct_size < offsetof(asiosmtpd_plugin_descriptor, abi_minor) + sizeof d->abi_minor)
            throw refuse("descriptor too small");
        if (d->abi_major != ASIOSMTPD_ABI_MAJOR)
            throw refuse("built for plugin ABI " + std::to_string(d->abi_major) + "." + std::to_string(d->abi_minor) +
                         ", this host has ABI " + std::to_string(ASIOSMTPD_ABI_MAJOR) + "." +
                         std::to_string(ASIOSMTPD_ABI_MINOR));
        if (d->abi_minor > ASIOSMTPD_ABI_MINOR)
            throw refuse("needs plugin ABI 1." + std::to_string(d->abi_minor) + ", this host has 1." +
                         std::to_string(ASIOSMTPD_ABI_MINOR));
        if (d->struct_size < ASIOSMTPD_DESCRIPTOR_V1_0_SIZE) throw refuse("descriptor truncated");
        if (d->name == nullptr || d->version == nullptr || d->create == nullptr || d->destroy == nullptr)
            throw refuse("incomplete descriptor (name, version, create and destroy are required)");
        inst->desc = d;
        inst->name = d->name;
        inst->key = "plugins[" + std::to_string(gen.instances.size()) + "]";
        inst->thread_safe = (d->flags & ASIOSMTPD_PF_THREAD_SAFE) != 0;
        inst->sink = this;
        configs.push_back(std::make_unique<config::node>(convert(config)));
        const std::size_t keywords_before = gen.ehlo_keywords.size();
        asiosmtpd_registrar reg;
        reg.gen = &gen;
        reg.owner = inst.get();
        reg.config = configs.back().get();
        reg.base_dir = config_dir;
        char reason[512] = {};
        asiosmtpd_errbuf err{reason, sizeof reason};
        void* self = nullptr;
        const asiosmtpd_status st = d->create(&plugin::host_api(), inst.get(), &reg, &self, &err);
        reg.frozen = true;
        reason[sizeof reason - 1] = '\0';
        if (st != ASIOSMTPD_OK) {
            gen.forget(inst.get());
            gen.ehlo_keywords.resize(keywords_before);
            const plugin::create_failure f = plugin::describe_failure(reg, inst->key, reason, 0);
            throw refuse(f.config ? f.key + ": " + f.problem : f.problem);
        }
        inst->self = self;
        gen.instances.push_back(std::move(inst));
    }
};

host_core::host_core() : impl_(std::make_unique<impl>()) {}
host_core::~host_core() = default;

void host_core::load(const std::string& path, const node& config, const std::string& config_dir)
{
    void* dl = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (dl == nullptr) {
        const char* why = ::dlerror();
        throw error("plugin " + path + ": cannot load: " + (why != nullptr ? why : "dlopen failed"));
    }
    std::shared_ptr<void> lib(dl, [](void* h) { ::dlclose(h); });
    void* sym = ::dlsym(dl, ASIOSMTPD_ENTRY_SYMBOL);
    if (sym == nullptr)
        throw error("plugin " + path +
                    ": not an asiosmtpd plugin: no " ASIOSMTPD_ENTRY_SYMBOL " (built for another ABI major?)");
    asiosmtpd_entry_fn entry = nullptr;
    static_assert(sizeof entry == sizeof sym);
    std::memcpy(&entry, &sym, sizeof entry);  // POSIX dlsym: object pointer to function
    impl_->add(entry, config, config_dir, path, std::move(lib));
}

void host_core::add(asiosmtpd_entry_fn entry, const node& config, const std::string& config_dir)
{
    impl_->add(entry, config, config_dir, "(linked)", nullptr);
}

std::vector<std::string> host_core::auth_mechanisms() const
{
    std::vector<std::string> out;
    for (const auto& m : impl_->gen.auth_mechanisms) out.push_back(m.name);
    return out;
}

std::vector<std::string> host_core::commands() const
{
    std::vector<std::string> out;
    for (const auto& c : impl_->gen.commands) out.push_back(c.verb);
    return out;
}

const std::vector<std::string>& host_core::ehlo_keywords() const noexcept { return impl_->gen.ehlo_keywords; }

std::size_t host_core::hook_count(asiosmtpd_hook_id hook) const
{
    if (hook <= 0 || static_cast<std::size_t>(hook) >= plugin::hook_count) return 0;
    return impl_->gen.hooks[static_cast<std::size_t>(hook)].size();
}

std::vector<std::string> host_core::logs() const
{
    const std::lock_guard guard(impl_->log_lock);
    return impl_->lines;
}

const asiosmtpd_host_api* host_core::api() const noexcept { return &plugin::host_api(); }

// --------------------------------------------------------------------------------------------
// session
// --------------------------------------------------------------------------------------------

struct session_core::impl final : plugin::session_view, plugin::chain_events {
    host_core::impl& host;
    const settings& live;  // the kit host's settings: read again before each exchange
    std::chrono::milliseconds timeout;
    tls_params tls_defaults;
    proto::settings config;  // before the engine, which keeps a reference
    proto::engine engine;
    std::uint64_t id;
    std::string peer;
    std::uint16_t port;
    std::optional<proxy::header> proxy;
    std::string via;
    tls_params tls;
    std::string greeting;
    std::vector<std::string> data_replies;
    bool closed = false;
    bool finished = false;
    bool client_gone = false;

    impl(host_core::impl& h, const settings& s, std::string peer_address, std::uint16_t peer_port)
        : host(h),
          live(s),
          timeout(s.hook_timeout),
          tls_defaults(s.tls_defaults),
          config(engine_settings(s, h.gen)),
          engine(config),
          id(h.next_session++),
          peer(std::move(peer_address)),
          port(peer_port)
    {}
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() override { finish(); }

    static proto::settings engine_settings(const settings& s, const plugin::generation& g)
    {
        proto::settings e;
        e.hostname = s.hostname;
        e.ident = s.ident;
        e.data_size_limit = s.data_size_limit;
        e.command_size_limit = s.command_size_limit;
        e.enable_smtputf8 = s.enable_smtputf8;
        e.decode_data = s.decode_data;
        e.advertise_pipelining = s.advertise_pipelining;
        e.enable_dsn = s.enable_dsn;
        e.enable_enhanced_status_codes = s.enable_enhanced_status_codes;
        e.enable_chunking = s.enable_chunking;
        e.lmtp = s.lmtp;
        e.starttls_available = s.starttls_available;
        e.require_starttls = s.require_starttls && s.starttls_available;
        e.auth_required = s.auth_required;
        e.auth_require_tls = s.auth_require_tls;
        e.call_limit_enabled = s.call_limit_enabled;
        for (const auto& [verb, n] : s.call_limits) e.call_limits.emplace(verb, n);
        e.call_limit_default = s.call_limit_default;
        e.auth_max_failures = s.auth_max_failures;
        e.data_chunk_size = s.data_chunk_size;
        plugin::add_registrations(e, g);
        return e;
    }

    // The host's settings as they are now (a test may change them between commands), and
    // the plugins' registrations.
    void refresh()
    {
        config = engine_settings(live, host.gen);
        host.gen.spool = {live.spool_threshold, live.spool_directory};
        timeout = live.hook_timeout;
        tls_defaults = live.tls_defaults;
    }

    // ---- session_view ----
    [[nodiscard]] std::uint64_t session_id() const noexcept override { return id; }
    [[nodiscard]] const proto::engine& smtp() const noexcept override { return engine; }
    [[nodiscard]] std::string_view peer_address() const noexcept override { return peer; }
    [[nodiscard]] std::uint16_t peer_port() const noexcept override { return port; }
    [[nodiscard]] std::string_view local_address() const noexcept override { return "127.0.0.1"; }
    [[nodiscard]] std::uint16_t local_port() const noexcept override { return 25; }
    [[nodiscard]] const proxy::header* proxy_header() const noexcept override { return proxy ? &*proxy : nullptr; }
    [[nodiscard]] std::string_view proxy_via() const noexcept override { return via; }
    [[nodiscard]] std::string_view tls_version() const noexcept override
    {
        return engine.tls_active() ? std::string_view(tls.version) : std::string_view();
    }
    [[nodiscard]] std::string_view tls_cipher() const noexcept override
    {
        return engine.tls_active() ? std::string_view(tls.cipher) : std::string_view();
    }
    [[nodiscard]] std::string_view tls_peer_subject() const noexcept override
    {
        return engine.tls_active() ? std::string_view(tls.peer_subject) : std::string_view();
    }

    // ---- chain_events: the server's plugin_error line ----
    void answered(const plugin::instance& plugin, std::string_view hook, std::chrono::steady_clock::duration,
                  const proto::hook_result& r, std::string_view why) override
    {
        if (r.verdict != proto::verdict::error) return;
        host.write(plugin::log_level::warn, "session=" + std::to_string(id) + " plugin=" + plugin.name +
                                                " key=" + plugin.key + " event=plugin_error hook=" + std::string(hook) +
                                                " reason=\"" + std::string(why) + "\"");
    }
    void host_failed(std::string_view hook, std::string_view why) override
    {
        host.write(plugin::log_level::error, "session=" + std::to_string(id) + " event=host_error hook=" +
                                                 std::string(hook) + " reason=\"" + std::string(why) + "\"");
    }

    // ---- driving ----

    // Wait for the suspended call: complete() (any thread) or the timeout.
    void await_pending(const plugin::chain& c)
    {
        struct waiter {
            std::mutex lock;
            std::condition_variable cv;
            bool woken = false;
        };
        const auto w = std::make_shared<waiter>();
        const std::shared_ptr<plugin::pending_call>& pending = c.pending();
        {
            const std::lock_guard guard(pending->lock);
            if (pending->done) return;
            pending->notify = [w] {
                const std::lock_guard g(w->lock);
                w->woken = true;
                w->cv.notify_all();
            };
        }
        std::unique_lock lock(w->lock);
        w->cv.wait_for(lock, timeout, [&w] { return w->woken; });
    }

    proto::hook_result run_chain(const proto::hook_request& req, const void* args = nullptr, bool given = false)
    {
        std::optional<plugin::chain> c;
        if (given) c.emplace(host.gen, req, *this, *this, args);
        else c.emplace(host.gen, req, *this, *this);
        for (bool waiting = c->run(); waiting;) {
            await_pending(*c);
            waiting = c->resume("did not complete within " + std::to_string(timeout.count()) + " ms");
        }
        return c->take_result();
    }

    void pump()
    {
        while (const proto::hook_request* req = engine.pending_hook()) {
            proto::hook_result r = run_chain(*req);
            engine.hook_done(std::move(r));
            (void)engine.take_transaction();
            (void)engine.take_auth_failure();
            plugin::end_transactions(host.gen, *this, engine);
        }
        (void)engine.take_auth_failure();
        (void)engine.take_refusals();  // the server's log lines; the kit's caller sees the replies
        plugin::end_transactions(host.gen, *this, engine);
    }

    std::string take_output()
    {
        std::string out = lines_of(engine.output());
        engine.clear_output();
        if (engine.close_requested()) closed = true;
        return out;
    }

    // After STARTTLS was accepted: the handshake succeeded with `params`.
    void handshake(const tls_params& params)
    {
        tls = params;
        engine.tls_established();
        pump();
    }

    std::string send(std::string_view bytes)
    {
        refresh();
        const bool in_data = engine.reading_data();
        engine.receive(bytes);
        pump();
        std::string out = take_output();
        if (!closed && engine.tls_requested()) {
            handshake(tls_defaults);
            std::string after = take_output();
            if (!after.empty()) out += "\n" + after;
        }
        if (in_data && !engine.reading_data()) data_replies = replies_of(out);
        return out;
    }

    void open(const testkit::proxy_header* p, const tls_params* t)
    {
        if (p != nullptr) {
            proxy::header h;
            h.version = p->version;
            h.command = p->command;
            h.family = p->family;
            h.protocol = p->protocol;
            h.src_address = p->src_address;
            h.src_port = p->src_port;
            h.dst_address = p->dst_address;
            h.dst_port = p->dst_port;
            for (std::size_t i = 0; i + 3 <= p->tlvs.size();) {
                const auto len = static_cast<std::size_t>((static_cast<unsigned char>(p->tlvs[i + 1]) << 8) |
                                                          static_cast<unsigned char>(p->tlvs[i + 2]));
                if (i + 3 + len > p->tlvs.size()) {
                    h.tlv_error = true;
                    break;
                }
                h.tlvs.push_back({static_cast<std::uint8_t>(p->tlvs[i]), p->tlvs.substr(i + 3, len)});
                i += 3 + len;
            }
            proxy = std::move(h);
            if (proxy->has_client()) {
                via = peer + ":" + std::to_string(port);
                peer = proxy->src_address;
                port = proxy->src_port;
            }
            if (!host.gen.hooks[ASIOSMTPD_HOOK_PROXY].empty()) {
                proto::hook_request req;
                req.kind = proto::hook_kind::proxy;
                const proto::hook_result r = run_chain(req);
                if (r.verdict != proto::verdict::none && r.verdict != proto::verdict::accept) {
                    closed = true;  // refused by a PROXY hook: closed without a reply
                    return;
                }
            }
        }
        if (t != nullptr) {
            tls = *t;
            engine.set_tls_active(true);
        }
        engine.start();
        pump();
        greeting = take_output();
    }

    void finish() noexcept
    {
        if (finished) return;
        finished = true;
        std::string_view why = "disconnect";  // the test closed the session
        if (engine.close_requested()) {
            const std::string_view r = engine.close_reason();
            why = r == "quit" || r == "timeout" ? r : "closed";
        }
        closed = true;
        engine.end_session(why);
        plugin::end_transactions(host.gen, *this, engine);
        plugin::notify(host.gen, ASIOSMTPD_HOOK_SESSION_CLOSE, *this);
        data_slots().clear_all();
    }
};

session_core::session_core(host_core& h, const settings& s, std::string peer_address, std::uint16_t peer_port,
                           const proxy_header* proxy, const tls_params* tls)
    : impl_(std::make_unique<impl>(*h.impl_, s, std::move(peer_address), peer_port))
{
    impl_->open(proxy, tls);
}

session_core::~session_core() = default;

std::string session_core::send(std::string_view bytes)
{
    if (impl_->closed) throw error("session: closed (QUIT or a closing verdict)");
    return impl_->send(bytes);
}

std::string session_core::starttls(const tls_params& params)
{
    impl& s = *impl_;
    if (s.closed) throw error("session: closed");
    if (s.engine.tls_active()) throw error("session::tls(): TLS is already active");
    // STARTTLS as the client would send it, on a listener that offers it for this one command.
    s.refresh();
    const bool offered = std::exchange(s.config.starttls_available, true);
    s.engine.receive("STARTTLS\r\n");
    s.pump();
    s.config.starttls_available = offered;
    if (!s.engine.tls_requested()) {
        const std::string refused = s.take_output();
        throw error("session::tls(): STARTTLS refused: " + refused);
    }
    s.engine.clear_output();  // "220 Ready to start TLS"
    s.handshake(params);
    return s.take_output();
}

outcome session_core::run(asiosmtpd_hook_id hook, const void* args)
{
    impl& s = *impl_;
    if (s.finished) throw error("session: closed");
    if (hook <= 0 || static_cast<std::size_t>(hook) >= plugin::hook_count) throw error("session::run(): unknown hook");
    if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE) {
        plugin::notify(s.host.gen, hook, s);
        return {};
    }
    proto::hook_request req;
    req.kind = static_cast<proto::hook_kind>(hook);
    proto::hook_result r = s.run_chain(req, args, true);
    outcome o;
    o.verdict = abi_verdict(r.verdict);
    if (r.verdict == proto::verdict::error) {
        o.code = 451;
        o.text = "4.3.0 Error: internal";
        o.plugin_error = true;
        return o;
    }
    o.code = r.code;
    o.text = std::move(r.text);
    o.challenge = std::move(r.challenge);
    o.identity = std::move(r.identity);
    o.rcpt_replies = std::move(r.rcpt_replies);
    return o;
}

void session_core::close() { impl_->finish(); }

std::uint64_t session_core::id() const noexcept { return impl_->id; }
const std::string& session_core::greeting() const noexcept { return impl_->greeting; }
bool session_core::closed() const noexcept { return impl_->closed; }
bool session_core::reading_data() const noexcept { return impl_->engine.reading_data(); }
bool session_core::tls_active() const noexcept { return impl_->engine.tls_active(); }
bool session_core::authenticated() const noexcept { return impl_->engine.authenticated(); }
const std::string& session_core::auth_login() const noexcept { return impl_->engine.auth_login(); }
const std::string& session_core::helo_name() const noexcept { return impl_->engine.helo_name(); }
const std::string& session_core::mail_from() const noexcept { return impl_->engine.current_envelope().mail_from; }
const std::vector<std::string>& session_core::rcpts() const noexcept
{
    return impl_->engine.current_envelope().rcpt_tos;
}
const std::vector<std::string>& session_core::data_replies() const noexcept { return impl_->data_replies; }

}  // namespace asiosmtpd::testkit::core
