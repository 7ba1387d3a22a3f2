/*
 * asiosmtpd/testkit.hpp - a fake host for unit-testing plugins, without sockets or a server.
 *
 * Header-only C++17, for plugin authors' unit tests (GoogleTest or any other framework; the
 * kit itself throws testkit::error and never depends on a test framework). It loads a plugin
 * (a .so through dlopen, or an entry function linked into the test), calls create() with a
 * config tree you build in code, and drives its hooks through a scripted SMTP conversation:
 *
 *     asiosmtpd::testkit::host h;
 *     h.load("build/ping.so");                      // or h.load(path, node::map({...}))
 *     auto s = h.open();                             // runs CONNECT; s.greeting() is the 220
 *     EXPECT_EQ(s.cmd("EHLO client.example"), "250-mx.test.example\n250-SIZE 33554432\n"
 *                                             "250-8BITMIME\n250 HELP");
 *     EXPECT_EQ(s.cmd("PING"), "259 Pong");
 *     EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "Subject: x\r\n\r\nhi\r\n"), "250 OK");
 *
 * What it is: the host API of plugin.h implemented faithfully where a plugin can observe it
 * (registration frozen after create(), reply validation, verdict/reply class checks, default
 * replies of plugin.h, data slots and their destructors, suspend()/complete() from any
 * thread with a hook timeout, log capture). What it is not: the real SMTP engine. Command
 * syntax and sequence checks are simplified (the server's own tests pin the wire behaviour);
 * replies are returned without CRLF, lines of a multi-line reply joined by '\n'.
 *
 * Threads: one session is driven from the test's thread; complete() and log() may be called
 * by the plugin from any thread, as with the real host. A suspended hook is waited for (up to
 * host::hook_timeout) inside the cmd() that triggered it.
 */
#ifndef ASIOSMTPD_TESTKIT_HPP
#define ASIOSMTPD_TESTKIT_HPP

#include <asiosmtpd/plugin.h>

#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace asiosmtpd::testkit {

/// A plugin refused to load (bad file, ABI mismatch, create() failed) or the kit was misused.
class error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------------------------------
// node: a config tree, what the YAML `config:` subtree of a plugin entry would be.
//   node()                                  null (no config)
//   node("stdout"), node(5), node(true)     scalars (kept as text, as YAML gives them)
//   node::map({{"stream", "stderr"}})       a map, keys in order
//   node::list({"a.example", "b.example"})  a sequence
// ------------------------------------------------------------------------------------------
class node {
public:
    node() = default;
    node(const char* s) : kind_(ASIOSMTPD_CFG_SCALAR), text_(s ? s : "") {}
    node(std::string s) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::move(s)) {}
    node(std::string_view s) : kind_(ASIOSMTPD_CFG_SCALAR), text_(s) {}
    node(int v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::to_string(v)) {}
    node(long long v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::to_string(v)) {}
    node(double v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(std::to_string(v)) {}
    node(bool v) : kind_(ASIOSMTPD_CFG_SCALAR), text_(v ? "true" : "false") {}

    static node map(std::initializer_list<std::pair<std::string, node>> entries)
    {
        node n;
        n.kind_ = ASIOSMTPD_CFG_MAP;
        n.children_.assign(entries.begin(), entries.end());
        return n;
    }
    static node list(std::initializer_list<node> items)
    {
        node n;
        n.kind_ = ASIOSMTPD_CFG_SEQUENCE;
        for (const node& i : items)
            n.children_.emplace_back(std::string(), i);
        return n;
    }

    std::int32_t kind() const noexcept { return kind_; }
    const std::string& text() const noexcept { return text_; }
    const std::vector<std::pair<std::string, node>>& children() const noexcept { return children_; }

private:
    std::int32_t kind_ = ASIOSMTPD_CFG_NULL;
    std::string text_;
    std::vector<std::pair<std::string, node>> children_;
};

/// The outcome of one hook chain: what the real host would decide and answer.
struct outcome {
    asiosmtpd_verdict verdict = ASIOSMTPD_CONTINUE; ///< the verdict that stopped the chain
    std::uint16_t code = 0;                          ///< 0: the plugin set no reply
    std::string text;
};

class host;
class session;

namespace detail {

inline asiosmtpd_str str(std::string_view v) noexcept { return {v.data() ? v.data() : "", v.size()}; }
inline std::string_view view(asiosmtpd_str s) noexcept
{
    return s.data ? std::string_view(s.data, s.size) : std::string_view();
}
inline std::string upper(std::string_view s)
{
    std::string out(s);
    for (char& c : out)
        if (c >= 'a' && c <= 'z')
            c = static_cast<char>(c - 'a' + 'A');
    return out;
}
inline std::string_view trim(std::string_view s) noexcept
{
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
        s.remove_suffix(1);
    return s;
}

// The host API table of ABI 1.0 ends with `log`; the kit fills exactly that table.
inline constexpr std::size_t host_api_v1_0_size =
    offsetof(asiosmtpd_host_api, log) + sizeof(asiosmtpd_host_api::log);
inline constexpr std::size_t session_info_v1_0_size =
    offsetof(asiosmtpd_session_info, authenticated) + sizeof(std::int32_t);

struct instance {
    host* owner = nullptr;
    std::string name;
    const asiosmtpd_plugin_descriptor* desc = nullptr;
    void* self = nullptr;
    void* dl = nullptr;
    bool created = false;
    std::mutex serial; // T3: hooks of a plugin without ASIOSMTPD_PF_THREAD_SAFE never overlap
};

struct registrar_state {
    host* owner;
    instance* inst;
    const node* root;
};

struct hook_entry {
    instance* inst;
    asiosmtpd_hook_fn fn;
};

struct command_entry {
    std::string verb;
    std::string help;
    std::uint32_t flags;
    hook_entry handler;
};

struct slot {
    void* data = nullptr;
    void (*dtor)(void*) = nullptr;
};

// One suspended hook call, reachable from complete() on any thread through its token.
struct pending_state {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    bool gone = false;
    asiosmtpd_verdict verdict = ASIOSMTPD_CONTINUE;
    std::uint16_t code = 0;
    std::string text;
};

struct token_registry {
    std::mutex m;
    std::map<asiosmtpd_token, std::shared_ptr<pending_state>> live;
    asiosmtpd_token last = 0;
    static token_registry& get()
    {
        static token_registry r;
        return r;
    }
};

struct call_state {
    session* s = nullptr;
    instance* inst = nullptr;
    asiosmtpd_hook_id hook = 0;
    bool active = true;
    std::uint16_t code = 0;
    std::string text;
    asiosmtpd_token token = 0;
    std::shared_ptr<pending_state> pending;
};

inline call_state* cs(asiosmtpd_call* c) noexcept { return reinterpret_cast<call_state*>(c); }

// set_reply()/complete() rules of plugin.h: code 200..599, no CR, lines <= 510 bytes.
inline bool valid_reply(std::uint16_t code, std::string_view text) noexcept
{
    if (code < 200 || code > 599)
        return false;
    std::size_t line = 0;
    for (char c : text) {
        if (c == '\r')
            return false;
        line = c == '\n' ? 0 : line + 1;
        if (line > 510)
            return false;
    }
    return true;
}

// Whether the reply class fits the verdict (plugin.h set_reply).
inline bool class_fits(asiosmtpd_verdict v, std::uint16_t code) noexcept
{
    if (code == 0)
        return true;
    switch (v) {
    case ASIOSMTPD_CONTINUE:
    case ASIOSMTPD_ACCEPT: return code < 400;
    case ASIOSMTPD_TEMPFAIL:
    case ASIOSMTPD_TEMPFAIL_CLOSE: return code >= 400 && code < 500;
    case ASIOSMTPD_REJECT:
    case ASIOSMTPD_REJECT_CLOSE: return code >= 500;
    default: return false;
    }
}

} // namespace detail

// ------------------------------------------------------------------------------------------
// host: loads plugins into a chain (in load order) and opens sessions.
// ------------------------------------------------------------------------------------------
class host {
public:
    /// The name in the greeting, HELO and EHLO replies.
    std::string hostname = "mx.test.example";
    /// Advertised as SIZE in EHLO; 0: SIZE without a number.
    std::uint64_t data_size_limit = 33554432;
    /// How long a suspended hook may take before its session gets 451 4.3.0 (plugin.h T4).
    std::chrono::milliseconds hook_timeout{5000};

    host() { init_api(); }
    host(const host&) = delete;
    host& operator=(const host&) = delete;

    /// Destroys the instances in reverse load order, then unloads their libraries (T7).
    ~host()
    {
        for (auto it = instances_.rbegin(); it != instances_.rend(); ++it) {
            detail::instance& i = **it;
            if (i.created && i.desc && i.desc->destroy)
                i.desc->destroy(i.self);
            if (i.dl)
                dlclose(i.dl);
        }
    }

    /// Load the plugin file at `path` (dlopen RTLD_NOW | RTLD_LOCAL) and create an instance
    /// with `config`. Throws testkit::error with the reason the real host would give.
    void load(const std::string& path, const node& config = node())
    {
        void* dl = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!dl) {
            const char* why = dlerror();
            throw error("plugin " + path + ": cannot load: " + (why ? why : "dlopen failed"));
        }
        void* sym = dlsym(dl, ASIOSMTPD_ENTRY_SYMBOL);
        if (!sym) {
            dlclose(dl);
            throw error("plugin " + path + ": not an asiosmtpd plugin: no " ASIOSMTPD_ENTRY_SYMBOL);
        }
        asiosmtpd_entry_fn entry = nullptr;
        static_assert(sizeof entry == sizeof sym, "function and object pointers differ in size");
        std::memcpy(&entry, &sym, sizeof entry); // POSIX dlsym: object pointer to function
        add(entry, config, path, dl);
    }

    /// Create an instance from an entry function linked into the test program (a plugin built
    /// as a static or object library next to its test).
    void add(asiosmtpd_entry_fn entry, const node& config = node())
    {
        add(entry, config, "(linked)", nullptr);
    }

    /// load(), returning the refusal instead of throwing it ("" when the plugin loaded).
    std::string refusal(const std::string& path, const node& config = node())
    {
        try {
            load(path, config);
        } catch (const error& e) {
            return e.what();
        }
        return {};
    }

    /// A new session from peer_address:peer_port; runs the CONNECT chain.
    session open(std::string peer_address = "192.0.2.1", std::uint16_t peer_port = 40000);

    /// The verbs plugins registered (upper-case), in registration order.
    std::vector<std::string> commands() const
    {
        std::vector<std::string> out;
        for (const auto& c : commands_)
            out.push_back(c.verb);
        return out;
    }
    /// The EHLO keyword lines plugins registered.
    const std::vector<std::string>& ehlo_keywords() const noexcept { return keywords_; }
    /// How many plugins have a handler in the chain of `hook`.
    std::size_t hook_count(asiosmtpd_hook_id hook) const
    {
        const auto it = hooks_.find(hook);
        return it == hooks_.end() ? 0 : it->second.size();
    }

    /// Every line logged so far: "<level> plugin=<name>[ session=<id>] <message>".
    std::vector<std::string> logs() const
    {
        std::lock_guard<std::mutex> lock(log_mutex_);
        return logs_;
    }
    /// Whether some log line contains `text`.
    bool logged(std::string_view text) const
    {
        std::lock_guard<std::mutex> lock(log_mutex_);
        return std::any_of(logs_.begin(), logs_.end(),
                           [&](const std::string& l) { return l.find(text) != std::string::npos; });
    }

    /// The table handed to plugins (for tests that call a plugin's create() themselves).
    const asiosmtpd_host_api* api() const noexcept { return &api_; }

private:
    friend class session;
    friend struct api_impl;

    void add(asiosmtpd_entry_fn entry, const node& config, const std::string& where, void* dl)
    {
        auto inst = std::make_unique<detail::instance>();
        inst->owner = this;
        inst->dl = dl;
        detail::instance& i = *inst;
        instances_.push_back(std::move(inst)); // the destructor closes dl, also on refusal
        const asiosmtpd_plugin_descriptor* d = entry ? entry() : nullptr;
        const auto refuse = [&](const std::string& why) {
            throw error("plugin " + where + ": " + why);
        };
        if (!d || d->struct_size < offsetof(asiosmtpd_plugin_descriptor, abi_minor) + sizeof d->abi_minor)
            refuse("the descriptor is missing or truncated");
        if (d->abi_major != ASIOSMTPD_ABI_MAJOR)
            refuse("built for plugin ABI " + std::to_string(d->abi_major) + "." +
                   std::to_string(d->abi_minor) + ", this host has ABI " +
                   std::to_string(ASIOSMTPD_ABI_MAJOR) + "." + std::to_string(ASIOSMTPD_ABI_MINOR));
        if (d->abi_minor > ASIOSMTPD_ABI_MINOR)
            refuse("needs plugin ABI 1." + std::to_string(d->abi_minor) + ", this host has 1." +
                   std::to_string(ASIOSMTPD_ABI_MINOR));
        if (d->struct_size < ASIOSMTPD_DESCRIPTOR_V1_0_SIZE || !d->name || !d->create || !d->destroy)
            refuse("the descriptor is truncated or lacks name, create or destroy");
        i.desc = d;
        i.name = d->name;
        detail::registrar_state reg{this, &i, &config};
        char buf[512] = {0};
        asiosmtpd_errbuf err{buf, sizeof buf};
        void* self = nullptr;
        frozen_ = false;
        const asiosmtpd_status st = d->create(&api_, reinterpret_cast<asiosmtpd_ctx*>(&i),
                                              reinterpret_cast<asiosmtpd_registrar*>(&reg), &self, &err);
        frozen_ = true;
        if (st != ASIOSMTPD_OK) {
            // Drop what the failed instance registered, as the real host drops the generation.
            for (auto& [id, chain] : hooks_)
                chain.erase(std::remove_if(chain.begin(), chain.end(),
                                           [&](const detail::hook_entry& e) { return e.inst == &i; }),
                            chain.end());
            commands_.erase(std::remove_if(commands_.begin(), commands_.end(),
                                           [&](const detail::command_entry& c) { return c.handler.inst == &i; }),
                            commands_.end());
            keywords_.resize(keywords_before_);
            refuse("refused its configuration: " + std::string(buf[0] ? buf : "create() failed"));
        }
        keywords_before_ = keywords_.size();
        i.self = self;
        i.created = true;
    }

    void write_log(detail::instance* inst, detail::call_state* c, std::int32_t level, std::string_view m)
    {
        static const char* names[] = {"?", "debug", "info", "warn", "error"};
        std::string line = (level >= 1 && level <= 4) ? names[level] : "?";
        line += " plugin=";
        line += inst ? inst->name : "?";
        if (c)
            line += " session=" + std::to_string(session_id_of(c));
        line += ' ';
        line.append(m.data(), m.size());
        std::lock_guard<std::mutex> lock(log_mutex_);
        logs_.push_back(std::move(line));
    }

    static std::uint64_t session_id_of(detail::call_state* c);

    void init_api();

    asiosmtpd_host_api api_{};
    std::vector<std::unique_ptr<detail::instance>> instances_;
    std::map<asiosmtpd_hook_id, std::vector<detail::hook_entry>> hooks_;
    std::vector<detail::command_entry> commands_;
    std::vector<std::string> keywords_;
    std::size_t keywords_before_ = 0;
    bool frozen_ = true;
    std::uint64_t next_session_ = 1;
    mutable std::mutex log_mutex_;
    std::vector<std::string> logs_;
};

// ------------------------------------------------------------------------------------------
// session: one SMTP conversation. Move-only; its end (destructor or close()) runs the
// SESSION_CLOSE chain and frees the data slots.
// ------------------------------------------------------------------------------------------
class session {
public:
    session(session&& o) noexcept { *this = std::move(o); }
    session& operator=(session&& o) noexcept
    {
        if (this != &o) {
            close();
            h_ = std::exchange(o.h_, nullptr);
            id_ = o.id_;
            peer_ = std::move(o.peer_);
            port_ = o.port_;
            greeting_ = std::move(o.greeting_);
            helo_ = std::move(o.helo_);
            extended_ = o.extended_;
            in_txn_ = o.in_txn_;
            mail_from_ = std::move(o.mail_from_);
            params_ = std::move(o.params_);
            rcpts_ = std::move(o.rcpts_);
            in_data_ = o.in_data_;
            content_ = std::move(o.content_);
            closed_ = o.closed_;
            slots_ = std::move(o.slots_);
            o.slots_.clear();
        }
        return *this;
    }
    session(const session&) = delete;
    session& operator=(const session&) = delete;
    ~session() { close(); }

    /// The 220 greeting (or what the CONNECT chain answered).
    const std::string& greeting() const noexcept { return greeting_; }
    /// True after QUIT or a *_CLOSE verdict.
    bool closed() const noexcept { return closed_; }
    std::uint64_t id() const noexcept { return id_; }

    /// Send one command line (without CRLF) and get the reply, lines joined by '\n'. After a
    /// "354" to DATA, each cmd() is a message line (dot-stuffed as on the wire) until ".".
    std::string cmd(std::string_view line)
    {
        if (!h_)
            throw error("session: moved from");
        if (closed_)
            throw error("session: closed (QUIT or a closing verdict)");
        if (in_data_) {
            if (line != ".") {
                if (!line.empty() && line.front() == '.')
                    line.remove_prefix(1); // RFC 5321 4.5.2 transparency
                content_.append(line.data(), line.size());
                content_ += "\r\n";
                return {};
            }
            in_data_ = false;
            return end_of_data();
        }
        const std::string_view l = detail::trim(line);
        const std::size_t sp = l.find(' ');
        const std::string verb = detail::upper(l.substr(0, sp));
        const std::string_view arg = sp == std::string_view::npos ? std::string_view() : detail::trim(l.substr(sp + 1));
        const bool has_arg = sp != std::string_view::npos && !arg.empty();

        for (const auto& c : h_->commands_) {
            if (c.verb != verb)
                continue;
            if ((c.flags & ASIOSMTPD_CMD_NEEDS_HELO) && helo_.empty())
                return "503 Error: send HELO first";
            const asiosmtpd_command_args a{sizeof a, detail::str(verb), detail::str(arg), has_arg ? 1 : 0};
            return finish(run_one(c.handler, 0, &a), "250 OK");
        }
        if (verb == "HELO" || verb == "EHLO") {
            if (!has_arg)
                return "501 Syntax: " + verb + " hostname";
            const asiosmtpd_helo_args a{sizeof a, detail::str(arg)};
            const bool ehlo = verb == "EHLO";
            const outcome o = run(ehlo ? ASIOSMTPD_HOOK_EHLO : ASIOSMTPD_HOOK_HELO, &a);
            if (o.verdict == ASIOSMTPD_CONTINUE || o.verdict == ASIOSMTPD_ACCEPT) {
                helo_ = std::string(arg);
                extended_ = ehlo;
                reset_txn();
            }
            std::string dflt = "250 " + h_->hostname;
            if (ehlo) {
                dflt = "250-" + h_->hostname + "\n250-SIZE";
                if (h_->data_size_limit)
                    dflt += " " + std::to_string(h_->data_size_limit);
                dflt += "\n250-8BITMIME\n";
                for (const auto& k : h_->keywords_)
                    dflt += "250-" + k + "\n";
                dflt += "250 HELP";
            }
            return finish(o, dflt);
        }
        if (verb == "MAIL") {
            if (helo_.empty())
                return "503 Error: send HELO first";
            if (in_txn_)
                return "503 Error: nested MAIL command";
            std::string address;
            std::vector<std::string> params;
            if (!parse_path(arg, "FROM:", address, params))
                return "501 Syntax: MAIL FROM: <address>";
            std::vector<asiosmtpd_str> ps;
            for (const auto& p : params)
                ps.push_back(detail::str(p));
            const asiosmtpd_address_args a{sizeof a, detail::str(address), ps.empty() ? nullptr : ps.data(), ps.size()};
            const outcome o = run(ASIOSMTPD_HOOK_MAIL, &a);
            if (o.verdict == ASIOSMTPD_CONTINUE || o.verdict == ASIOSMTPD_ACCEPT) {
                in_txn_ = true;
                mail_from_ = address;
                params_ = params;
            }
            return finish(o, "250 OK");
        }
        if (verb == "RCPT") {
            if (helo_.empty())
                return "503 Error: send HELO first";
            if (!in_txn_)
                return "503 Error: need MAIL command";
            std::string address;
            std::vector<std::string> params;
            if (!parse_path(arg, "TO:", address, params) || address == "<>")
                return "501 Syntax: RCPT TO: <address>";
            const asiosmtpd_address_args a{sizeof a, detail::str(address), nullptr, 0};
            const outcome o = run(ASIOSMTPD_HOOK_RCPT, &a);
            if (o.verdict == ASIOSMTPD_CONTINUE || o.verdict == ASIOSMTPD_ACCEPT)
                rcpts_.push_back(address);
            return finish(o, "250 OK");
        }
        if (verb == "DATA") {
            if (helo_.empty())
                return "503 Error: send HELO first";
            if (rcpts_.empty())
                return "503 Error: need RCPT command";
            in_data_ = true;
            content_.clear();
            return "354 End data with <CR><LF>.<CR><LF>";
        }
        if (verb == "RSET") {
            reset_txn(); // plugin.h: the envelope is already reset when the hook runs
            return finish(run(ASIOSMTPD_HOOK_RSET, nullptr), "250 OK");
        }
        if (verb == "NOOP") {
            const asiosmtpd_command_args a{sizeof a, detail::str(verb), detail::str(arg), has_arg ? 1 : 0};
            return finish(run(ASIOSMTPD_HOOK_NOOP, &a), "250 OK");
        }
        if (verb == "QUIT") {
            const std::string r = finish(run(ASIOSMTPD_HOOK_QUIT, nullptr), "221 Bye");
            closed_ = true;
            return r;
        }
        if (verb == "VRFY") {
            if (!has_arg)
                return "501 Syntax: VRFY <address>";
            const asiosmtpd_address_args a{sizeof a, detail::str(arg), nullptr, 0};
            return finish(run(ASIOSMTPD_HOOK_VRFY, &a),
                          "252 Cannot VRFY user, but will accept message and attempt delivery");
        }
        if (verb == "HELP") {
            if (has_arg) {
                for (const auto& c : h_->commands_)
                    if (c.verb == detail::upper(arg) && !c.help.empty())
                        return "250 Syntax: " + c.help;
            }
            std::vector<std::string> verbs = {"AUTH", "DATA", "EHLO", "HELO", "HELP", "MAIL",
                                              "NOOP", "QUIT", "RCPT", "RSET", "VRFY"};
            for (const auto& c : h_->commands_)
                verbs.push_back(c.verb);
            std::sort(verbs.begin(), verbs.end());
            std::string r = "250 Supported commands:";
            for (const auto& v : verbs)
                r += " " + v;
            return r;
        }
        const asiosmtpd_command_args a{sizeof a, detail::str(verb), detail::str(arg), has_arg ? 1 : 0};
        return finish(run(ASIOSMTPD_HOOK_UNKNOWN, &a), "500 Error: command \"" + verb + "\" not recognized");
    }

    /// DATA with `content` as the message (CRLF line ends, already dot-unstuffed). Returns the
    /// final reply, or the refusal of DATA itself.
    std::string data(std::string_view content)
    {
        const std::string r = cmd("DATA");
        if (r.compare(0, 3, "354") != 0)
            return r;
        in_data_ = false;
        content_.assign(content.data(), content.size());
        return end_of_data();
    }

    /// MAIL FROM, each RCPT TO and DATA; returns the first reply that is not 2xx/3xx, or the
    /// reply to the message. Sends EHLO first when the session has not greeted yet.
    std::string send_mail(std::string_view from, std::initializer_list<std::string_view> to,
                          std::string_view content)
    {
        if (helo_.empty()) {
            const std::string r = cmd("EHLO client.example");
            if (r[0] != '2')
                return r;
        }
        std::string r = cmd("MAIL FROM:<" + std::string(from) + ">");
        if (r[0] != '2')
            return r;
        for (std::string_view t : to) {
            r = cmd("RCPT TO:<" + std::string(t) + ">");
            if (r[0] != '2')
                return r;
        }
        return data(content);
    }

    /// End the session: runs SESSION_CLOSE (verdict ignored) and frees every slot.
    void close()
    {
        if (!h_)
            return;
        run(ASIOSMTPD_HOOK_SESSION_CLOSE, nullptr);
        free_slots(0);
        h_ = nullptr;
        closed_ = true;
    }

    /// Run a hook chain directly with hand-made args (for hooks the conversation does not
    /// reach, or to test a handler in isolation). The session's state is not changed.
    outcome run(asiosmtpd_hook_id hook, const void* args)
    {
        outcome result;
        const auto it = h_->hooks_.find(hook);
        if (it == h_->hooks_.end())
            return result;
        for (const auto& e : it->second) {
            result = run_one(e, hook, args);
            if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
                continue; // a notification: every plugin sees it
            if (result.verdict != ASIOSMTPD_CONTINUE)
                return result;
        }
        if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
            return outcome{};
        return result;
    }

    // Read-only state, as the host API reports it to plugins.
    const std::string& helo_name() const noexcept { return helo_; }
    const std::string& mail_from() const noexcept { return mail_from_; }
    const std::vector<std::string>& rcpts() const noexcept { return rcpts_; }

private:
    friend class host;
    session(host& h, std::uint64_t id, std::string peer, std::uint16_t port)
        : h_(&h), id_(id), peer_(std::move(peer)), port_(port)
    {
        const asiosmtpd_connect_args a{sizeof a, detail::str(peer_), port_, detail::str("127.0.0.1"), 25};
        const outcome o = run(ASIOSMTPD_HOOK_CONNECT, &a);
        if (o.verdict == ASIOSMTPD_REJECT || o.verdict == ASIOSMTPD_REJECT_CLOSE)
            greeting_ = finish(o, "554 5.7.1 Rejected"); // real host: only QUIT is served then
        else
            greeting_ = finish(o, "220 " + h.hostname + " asiosmtpd-testkit");
    }

    static bool parse_path(std::string_view arg, std::string_view prefix, std::string& address,
                           std::vector<std::string>& params)
    {
        if (arg.size() < prefix.size() || detail::upper(arg.substr(0, prefix.size())) != prefix)
            return false;
        std::string_view rest = detail::trim(arg.substr(prefix.size()));
        std::string_view path;
        if (!rest.empty() && rest.front() == '<') {
            const std::size_t gt = rest.find('>');
            if (gt == std::string_view::npos)
                return false;
            path = rest.substr(1, gt - 1);
            rest = rest.substr(gt + 1);
        } else {
            const std::size_t sp = rest.find(' ');
            path = rest.substr(0, sp);
            rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp);
        }
        address = path.empty() ? "<>" : std::string(path);
        rest = detail::trim(rest);
        while (!rest.empty()) {
            const std::size_t sp = rest.find(' ');
            params.push_back(detail::upper(rest.substr(0, sp)));
            rest = sp == std::string_view::npos ? std::string_view() : detail::trim(rest.substr(sp));
        }
        return true;
    }

    std::string end_of_data()
    {
        const asiosmtpd_data_args a{sizeof a, reinterpret_cast<const std::uint8_t*>(content_.data()),
                                    content_.size(), ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF};
        const std::string r = finish(run(ASIOSMTPD_HOOK_DATA, &a), "250 OK");
        reset_txn();
        return r;
    }

    void reset_txn()
    {
        in_txn_ = false;
        mail_from_.clear();
        params_.clear();
        rcpts_.clear();
        free_slots(ASIOSMTPD_SCOPE_TXN);
    }

    // Frees the slots of `scope` (0: all), calling the plugins' destructors.
    void free_slots(std::int32_t scope)
    {
        for (auto it = slots_.begin(); it != slots_.end();) {
            if (scope != 0 && it->first.second != scope) {
                ++it;
                continue;
            }
            const detail::slot s = it->second;
            it = slots_.erase(it);
            if (s.dtor && s.data)
                s.dtor(s.data);
        }
    }

    // The reply text for an outcome: the plugin's, or the default of its verdict.
    std::string finish(const outcome& o, const std::string& dflt)
    {
        std::string r;
        if (o.code != 0) {
            const std::string code = std::to_string(o.code);
            std::string_view t = o.text;
            for (;;) {
                const std::size_t nl = t.find('\n');
                r += code + (nl == std::string_view::npos ? " " : "-");
                r.append(t.substr(0, nl));
                if (nl == std::string_view::npos)
                    break;
                r += '\n';
                t.remove_prefix(nl + 1);
            }
        } else {
            switch (o.verdict) {
            case ASIOSMTPD_REJECT:
            case ASIOSMTPD_REJECT_CLOSE: r = "550 5.7.1 Rejected"; break;
            case ASIOSMTPD_TEMPFAIL: r = "451 4.7.1 Try again later"; break;
            case ASIOSMTPD_TEMPFAIL_CLOSE: r = "421 4.7.0 " + h_->hostname + " Service not available, closing transmission channel"; break;
            default: r = dflt;
            }
        }
        if (o.verdict == ASIOSMTPD_REJECT_CLOSE || o.verdict == ASIOSMTPD_TEMPFAIL_CLOSE)
            closed_ = true;
        return r;
    }

    outcome internal_error(detail::instance* inst, const char* why)
    {
        h_->write_log(inst, nullptr, ASIOSMTPD_LOG_WARN, why);
        return outcome{ASIOSMTPD_TEMPFAIL, 451, "4.3.0 Error: internal"};
    }

    outcome run_one(const detail::hook_entry& e, asiosmtpd_hook_id hook, const void* args)
    {
        detail::call_state c;
        c.s = this;
        c.inst = e.inst;
        c.hook = hook;
        asiosmtpd_verdict v;
        {
            std::unique_lock<std::mutex> serial(e.inst->serial, std::defer_lock);
            if (!(e.inst->desc->flags & ASIOSMTPD_PF_THREAD_SAFE))
                serial.lock();
            v = e.fn(e.inst->self, reinterpret_cast<asiosmtpd_call*>(&c), args);
        }
        c.active = false;
        if (c.pending) {
            // Suspended: only complete() decides (the returned verdict is ignored).
            std::unique_lock<std::mutex> lock(c.pending->m);
            if (!c.pending->cv.wait_for(lock, h_->hook_timeout, [&] { return c.pending->done; })) {
                c.pending->gone = true;
                lock.unlock();
                std::lock_guard<std::mutex> reg(detail::token_registry::get().m);
                detail::token_registry::get().live.erase(c.token);
                return internal_error(e.inst, "a suspended hook was not completed within the hook timeout");
            }
            if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
                return outcome{};
            outcome o{c.pending->verdict, c.pending->code, c.pending->text};
            if (!detail::class_fits(o.verdict, o.code))
                return internal_error(e.inst, "the completion's reply class does not fit its verdict");
            return o;
        }
        if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
            return outcome{};
        if (v < ASIOSMTPD_CONTINUE || v >= ASIOSMTPD_PENDING)
            return internal_error(e.inst, "a hook returned PENDING without suspend(), or an unknown verdict");
        if (!detail::class_fits(v, c.code))
            return internal_error(e.inst, "the reply class does not fit the verdict");
        return outcome{v, c.code, c.text};
    }

    host* h_ = nullptr;
    std::uint64_t id_ = 0;
    std::string peer_;
    std::uint16_t port_ = 0;
    std::string greeting_;
    std::string helo_;
    bool extended_ = false;
    bool in_txn_ = false;
    std::string mail_from_;
    std::vector<std::string> params_;
    std::vector<std::string> rcpts_;
    bool in_data_ = false;
    std::string content_;
    bool closed_ = false;
    std::map<std::pair<detail::instance*, std::int32_t>, detail::slot> slots_;

    friend struct api_impl;
};

inline session host::open(std::string peer_address, std::uint16_t peer_port)
{
    return session(*this, next_session_++, std::move(peer_address), peer_port);
}

inline std::uint64_t host::session_id_of(detail::call_state* c) { return c->s ? c->s->id_ : 0; }

// The host API functions. Each checks what the real host checks and reports the same codes.
struct api_impl {
    using call = asiosmtpd_call;
    static detail::registrar_state* rs(asiosmtpd_registrar* r) { return reinterpret_cast<detail::registrar_state*>(r); }
    static const node* nd(const asiosmtpd_cfg* n) { return reinterpret_cast<const node*>(n); }
    static const asiosmtpd_cfg* cfg(const node* n) { return reinterpret_cast<const asiosmtpd_cfg*>(n); }

    static asiosmtpd_status register_hook(asiosmtpd_registrar* reg, asiosmtpd_hook_id hook, asiosmtpd_hook_fn fn)
    {
        if (!reg || !fn)
            return ASIOSMTPD_E_INVALID;
        host* h = rs(reg)->owner;
        if (h->frozen_)
            return ASIOSMTPD_E_FROZEN;
        if (hook < ASIOSMTPD_HOOK_CONNECT || hook > ASIOSMTPD_HOOK_SESSION_CLOSE)
            return ASIOSMTPD_E_UNSUPPORTED;
        h->hooks_[hook].push_back({rs(reg)->inst, fn});
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status register_command(asiosmtpd_registrar* reg, const asiosmtpd_command_desc* d)
    {
        if (!reg || !d || !d->handler)
            return ASIOSMTPD_E_INVALID;
        host* h = rs(reg)->owner;
        if (h->frozen_)
            return ASIOSMTPD_E_FROZEN;
        const std::string verb = detail::upper(detail::view(d->verb));
        if (verb.empty() || verb.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-") != std::string::npos)
            return ASIOSMTPD_E_INVALID;
        static const char* builtin[] = {"HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT",
                                        "VRFY", "HELP", "AUTH", "STARTTLS", "EXPN", "BDAT"};
        for (const char* b : builtin)
            if (verb == b)
                return ASIOSMTPD_E_CONFLICT;
        for (const auto& c : h->commands_)
            if (c.verb == verb)
                return ASIOSMTPD_E_CONFLICT;
        h->commands_.push_back({verb, std::string(detail::view(d->help)), d->flags, {rs(reg)->inst, d->handler}});
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status register_ehlo_keyword(asiosmtpd_registrar* reg, asiosmtpd_str line)
    {
        if (!reg)
            return ASIOSMTPD_E_INVALID;
        host* h = rs(reg)->owner;
        if (h->frozen_)
            return ASIOSMTPD_E_FROZEN;
        const std::string_view l = detail::view(line);
        if (l.empty() || l.size() > 500 || l.find_first_of("\r\n") != std::string_view::npos)
            return ASIOSMTPD_E_INVALID;
        h->keywords_.emplace_back(l);
        return ASIOSMTPD_OK;
    }
    static const asiosmtpd_cfg* cfg_root(asiosmtpd_registrar* reg)
    {
        static const node null_node;
        return cfg(reg && !rs(reg)->owner->frozen_ ? rs(reg)->root : &null_node);
    }
    static std::int32_t cfg_kind(const asiosmtpd_cfg* n) { return n ? nd(n)->kind() : ASIOSMTPD_CFG_NULL; }
    static asiosmtpd_str cfg_scalar(const asiosmtpd_cfg* n)
    {
        return (n && nd(n)->kind() == ASIOSMTPD_CFG_SCALAR) ? detail::str(nd(n)->text()) : detail::str("");
    }
    static std::size_t cfg_size(const asiosmtpd_cfg* n)
    {
        if (!n || (nd(n)->kind() != ASIOSMTPD_CFG_MAP && nd(n)->kind() != ASIOSMTPD_CFG_SEQUENCE))
            return 0;
        return nd(n)->children().size();
    }
    static const asiosmtpd_cfg* cfg_at(const asiosmtpd_cfg* n, std::size_t i)
    {
        return i < cfg_size(n) ? cfg(&nd(n)->children()[i].second) : nullptr;
    }
    static asiosmtpd_str cfg_key_at(const asiosmtpd_cfg* n, std::size_t i)
    {
        if (!n || nd(n)->kind() != ASIOSMTPD_CFG_MAP || i >= nd(n)->children().size())
            return detail::str("");
        return detail::str(nd(n)->children()[i].first);
    }
    static const asiosmtpd_cfg* cfg_get(const asiosmtpd_cfg* n, asiosmtpd_str key)
    {
        if (!n || nd(n)->kind() != ASIOSMTPD_CFG_MAP)
            return nullptr;
        for (const auto& [k, v] : nd(n)->children())
            if (k == detail::view(key))
                return cfg(&v);
        return nullptr;
    }

    static asiosmtpd_status session_info(call* c, asiosmtpd_session_info* out)
    {
        if (!c || !out || out->struct_size < sizeof(std::uint32_t))
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        const session& s = *st->s;
        asiosmtpd_session_info full;
        std::memset(&full, 0, sizeof full);
        full.session_id = s.id_;
        full.peer_address = detail::str(s.peer_);
        full.peer_port = s.port_;
        full.helo_name = detail::str(s.helo_);
        full.extended_smtp = s.extended_ ? 1 : 0;
        // The kit fills the ABI 1.0 view (no TLS): a plugin reads later fields only when
        // struct_size says they are there.
        const std::size_t n = std::min<std::size_t>(out->struct_size, detail::session_info_v1_0_size);
        std::memcpy(out, &full, n);
        out->struct_size = static_cast<std::uint32_t>(n);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status txn_info(call* c, asiosmtpd_txn_info* out)
    {
        if (!c || !out || out->struct_size < sizeof(std::uint32_t))
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        const session& s = *st->s;
        asiosmtpd_txn_info full;
        std::memset(&full, 0, sizeof full);
        full.mail_from = detail::str(s.mail_from_);
        full.mail_param_count = s.params_.size();
        full.rcpt_count = s.rcpts_.size();
        const std::size_t n = std::min<std::size_t>(out->struct_size, sizeof full);
        std::memcpy(out, &full, n);
        out->struct_size = static_cast<std::uint32_t>(n);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status txn_rcpt_at(call* c, std::size_t i, asiosmtpd_str* out)
    {
        if (!c || !out)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        if (i >= st->s->rcpts_.size())
            return ASIOSMTPD_E_INVALID;
        *out = detail::str(st->s->rcpts_[i]);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status txn_mail_param_at(call* c, std::size_t i, asiosmtpd_str* out)
    {
        if (!c || !out)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        if (i >= st->s->params_.size())
            return ASIOSMTPD_E_INVALID;
        *out = detail::str(st->s->params_[i]);
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status set_reply(call* c, std::uint16_t code, asiosmtpd_str text)
    {
        if (!c)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        if (!detail::valid_reply(code, detail::view(text)))
            return ASIOSMTPD_E_INVALID;
        st->code = code;
        st->text = std::string(detail::view(text));
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status slot_set(call* c, std::int32_t scope, void* data, void (*dtor)(void*))
    {
        if (!c || (scope != ASIOSMTPD_SCOPE_SESSION && scope != ASIOSMTPD_SCOPE_TXN))
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active)
            return ASIOSMTPD_E_STATE;
        detail::slot& s = st->s->slots_[{st->inst, scope}];
        const detail::slot old = s;
        s = detail::slot{data, dtor};
        if (old.dtor && old.data && old.data != data)
            old.dtor(old.data);
        return ASIOSMTPD_OK;
    }
    static void* slot_get(call* c, std::int32_t scope)
    {
        if (!c)
            return nullptr;
        detail::call_state* st = detail::cs(c);
        const auto it = st->s->slots_.find({st->inst, scope});
        return it == st->s->slots_.end() ? nullptr : it->second.data;
    }
    static asiosmtpd_status suspend(call* c, asiosmtpd_token* out)
    {
        if (!c || !out)
            return ASIOSMTPD_E_INVALID;
        detail::call_state* st = detail::cs(c);
        if (!st->active || st->pending || st->hook == ASIOSMTPD_HOOK_SESSION_CLOSE)
            return ASIOSMTPD_E_STATE;
        auto& reg = detail::token_registry::get();
        std::lock_guard<std::mutex> lock(reg.m);
        st->token = ++reg.last;
        st->pending = std::make_shared<detail::pending_state>();
        reg.live[st->token] = st->pending;
        *out = st->token;
        return ASIOSMTPD_OK;
    }
    static asiosmtpd_status complete(asiosmtpd_token token, asiosmtpd_verdict v, std::uint16_t code, asiosmtpd_str text)
    {
        if (v < ASIOSMTPD_CONTINUE || v >= ASIOSMTPD_PENDING)
            return ASIOSMTPD_E_INVALID;
        if (code != 0 && !detail::valid_reply(code, detail::view(text)))
            return ASIOSMTPD_E_INVALID;
        std::shared_ptr<detail::pending_state> p;
        {
            auto& reg = detail::token_registry::get();
            std::lock_guard<std::mutex> lock(reg.m);
            const auto it = reg.live.find(token);
            if (it == reg.live.end())
                return (token == 0 || token > reg.last) ? ASIOSMTPD_E_INVALID : ASIOSMTPD_E_GONE;
            p = it->second;
            reg.live.erase(it);
        }
        std::lock_guard<std::mutex> lock(p->m);
        if (p->gone)
            return ASIOSMTPD_E_GONE;
        p->verdict = v;
        p->code = code;
        p->text = std::string(detail::view(text));
        p->done = true;
        p->cv.notify_all();
        return ASIOSMTPD_OK;
    }
    static void log(asiosmtpd_ctx* ctx, call* c, std::int32_t level, asiosmtpd_str m)
    {
        auto* inst = reinterpret_cast<detail::instance*>(ctx);
        if (!inst || !inst->owner)
            return;
        detail::call_state* st = c ? detail::cs(c) : nullptr;
        inst->owner->write_log(inst, (st && st->active) ? st : nullptr, level, detail::view(m));
    }
};

inline void host::init_api()
{
    api_.struct_size = static_cast<std::uint32_t>(detail::host_api_v1_0_size);
    api_.abi_major = ASIOSMTPD_ABI_MAJOR;
    api_.abi_minor = ASIOSMTPD_ABI_MINOR;
    api_.host_version = detail::str("testkit");
    api_.register_hook = &api_impl::register_hook;
    api_.register_command = &api_impl::register_command;
    api_.register_ehlo_keyword = &api_impl::register_ehlo_keyword;
    api_.cfg_root = &api_impl::cfg_root;
    api_.cfg_kind = &api_impl::cfg_kind;
    api_.cfg_scalar = &api_impl::cfg_scalar;
    api_.cfg_size = &api_impl::cfg_size;
    api_.cfg_at = &api_impl::cfg_at;
    api_.cfg_key_at = &api_impl::cfg_key_at;
    api_.cfg_get = &api_impl::cfg_get;
    api_.session_info = &api_impl::session_info;
    api_.txn_info = &api_impl::txn_info;
    api_.txn_rcpt_at = &api_impl::txn_rcpt_at;
    api_.txn_mail_param_at = &api_impl::txn_mail_param_at;
    api_.set_reply = &api_impl::set_reply;
    api_.slot_set = &api_impl::slot_set;
    api_.slot_get = &api_impl::slot_get;
    api_.suspend = &api_impl::suspend;
    api_.complete = &api_impl::complete;
    api_.log = &api_impl::log;
}

} // namespace asiosmtpd::testkit

#endif // ASIOSMTPD_TESTKIT_HPP
