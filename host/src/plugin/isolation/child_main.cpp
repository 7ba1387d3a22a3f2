// SPDX-License-Identifier: Apache-2.0
// asiosmtpd-plugin-host: the child process of a plugin configured with `isolation: process`.
// It loads the plugin's .so as the server would, hands it a host function table of its own
// and serves the server's hook calls that arrive over the socketpair on fd 3 (wire.hpp).
//
// The plugin cannot tell: every view it reads (session_info, txn_info, the recipients...) is
// answered from the snapshot that came with the call, so no query waits for the server; what
// it sets (the reply, per-recipient replies, edits, the AUTH identity) is checked here with the
// server's own rules, so that each function returns what it would in process, and goes back
// with the call's result, where the server checks it again. suspend() and complete() work on
// the server's token; data slots and keep_state() live here, in this process.
//
// One thread reads and runs the calls, each channel's in the order they came, and answers each
// on the channel it came on: fd 3 (the control channel: OPEN, CREATE, DESTROY, and ATTACH, which
// brings the server's further channels, one per event loop of the server) and those channels.
// What that thread answers while it works through what one poll() brought is written at the
// end, one write per channel. The plugin's own threads may complete() and log() at any time;
// they write at once (a lock per channel guards the socket).
//
//     asiosmtpd-plugin-host [--memory-limit BYTES] [--workdir DIR] (and child_limits.hpp's)
#include "plugin/draft.hpp"  // check_edit(): the server's edit rules
#include "plugin/isolation/child_limits.hpp"
#include "plugin/isolation/wire.hpp"
#include "plugin/registration_rules.hpp"

#include <asiosmtpd/plugin.h>
#include <asiosmtpd/reply_rules.hpp>

#include <algorithm>
#include <cerrno>
#include <deque>
#include <memory>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

namespace wire = asiosmtpd::plugin::wire;
namespace rules = asiosmtpd::plugin::rules;

// ---- the config tree, as the server sent it -------------------------------------------------
struct cfg_node {
    std::int32_t kind = ASIOSMTPD_CFG_NULL;
    std::string scalar;
    std::vector<std::string> keys;
    std::vector<cfg_node> items;
};
struct asiosmtpd_cfg {};  // never instantiated: a cfg_node* travels as asiosmtpd_cfg*

struct asiosmtpd_ctx {
    int unused = 0;
};

namespace {

constexpr int channel_fd = 3;
constexpr std::size_t max_entries_per_hook = 8;  // the adapter's trampolines per hook id

struct registered_command {
    std::string verb;
    asiosmtpd_hook_fn fn;
};
struct registered_mechanism {
    std::string name;
    asiosmtpd_hook_fn fn;
};

// One socket to the server. Its descriptor closes with the last holder (a suspended call's
// completion may still come after the server closed its end: the write then fails harmlessly).
struct channel {
    explicit channel(int f) : fd(f) {}
    channel(const channel&) = delete;
    channel& operator=(const channel&) = delete;
    ~channel()
    {
        if (fd != channel_fd) ::close(fd);
    }
    const int fd;
    std::mutex write_lock;
    bool dead = false;  // under write_lock: the server closed it
    std::string out;    // the serving thread's answers, written at the end of its round
    wire::framer in;    // the serving thread's
};

// True on the thread that reads the channels and runs the calls.
thread_local bool serving_thread = false;

}  // namespace

struct asiosmtpd_registrar {
    bool frozen = false;
    bool check_only = false;
    std::string base_dir;
    cfg_node* root = nullptr;
    std::vector<std::pair<std::int32_t, asiosmtpd_hook_fn>> hooks;
    struct command {
        std::string verb, help;
        std::uint32_t flags;
    };
    std::vector<command> commands;
    std::vector<registered_command> command_fns;
    std::vector<std::string> keywords;
    std::vector<registered_mechanism> mechanisms;
    bool editor = false;
    // names the other plugins of the server hold: verb or mechanism -> who ("registered by ...")
    std::map<std::string, std::string, std::less<>> taken_verbs, taken_mechanisms;
    std::string conflict;
    struct {
        bool given = false;
        std::vector<std::uint32_t> path;
        std::string key, message;
    } report;
};

namespace {

// ---- what came with a call --------------------------------------------------------------------
struct snapshot {
    std::uint64_t session_id = 0;
    std::string_view peer_address, helo, tls_version, tls_cipher, tls_subject, auth_login;
    std::uint16_t peer_port = 0;
    std::int32_t esmtp = 0, tls = 0, authenticated = 0;
    std::uint64_t envelope_serial = 0;
    std::string_view txn_id;
    bool lmtp = false, may_edit = false, has_draft = false;
    std::int32_t txn_status = ASIOSMTPD_OK;
    std::string_view mail_from;
    std::vector<asiosmtpd_str> mail_params;
    std::vector<asiosmtpd_str> rcpts;
    std::vector<std::vector<asiosmtpd_str>> rcpt_params;
};

struct edit_rec {
    std::int32_t op = 0;
    std::string name, value;
    std::uint64_t index = 0;
    std::vector<std::string> params;
};

using rcpt_replies = std::vector<std::pair<std::uint16_t, std::string>>;
using rcpt_refusals = std::vector<std::pair<std::size_t, std::string>>;

// A suspended call: what the plugin may still add before complete().
struct pending_rec {
    std::shared_ptr<channel> ch;  // where its RESULT goes
    std::int32_t hook = 0;
    std::size_t rcpt_count = 0;
    bool may_edit = false, lmtp = false;
    rcpt_replies replies;
    rcpt_refusals refusals;
    std::vector<edit_rec> edits;
    std::string identity;
};

asiosmtpd_str str(std::string_view s) noexcept { return {s.data() != nullptr ? s.data() : "", s.size()}; }
std::string_view view(asiosmtpd_str s) noexcept
{
    return s.data == nullptr ? std::string_view{} : std::string_view{s.data, s.size};
}

}  // namespace

struct asiosmtpd_call {
    std::mutex info_lock;  // active/session/txn: read by log() from any thread
    bool active = false;
    std::uint64_t id = 0;
    std::int32_t hook = 0;        // the ABI's id, or wire::hook_command / hook_auth_mechanism
    std::shared_ptr<channel> ch;  // the channel the call (the latest) came on; under info_lock
    snapshot snap;
    std::uint16_t code = 0;
    std::string text, refused_reply, challenge, identity;
    rcpt_replies replies;
    rcpt_refusals refusals;
    std::vector<edit_rec> edits;
    bool suspended = false;
};

namespace {

// ---- process state ---------------------------------------------------------------------------
struct session_state {
    void* sess_data = nullptr;
    void (*sess_dtor)(void*) = nullptr;
    void* txn_data = nullptr;
    void (*txn_dtor)(void*) = nullptr;
    std::uint64_t serial = 0;
};

struct kept {
    void* data;
    void (*release)(void*);
};

struct process {
    std::vector<std::shared_ptr<channel>> channels;  // [0]: the control channel (serving thread only)
    std::deque<int> received_fds;                    // descriptors for the ATTACH frames to come
    void* lib = nullptr;
    const asiosmtpd_plugin_descriptor* desc = nullptr;
    void* self = nullptr;
    bool created = false;
    asiosmtpd_ctx ctx;
    cfg_node config;
    asiosmtpd_registrar reg;
    std::unordered_map<std::uint64_t, session_state> sessions;
    std::map<std::string, kept, std::less<>> kept_states;
    std::mutex pending_lock;
    std::unordered_map<std::uint64_t, pending_rec> pending;
    std::uint64_t highest_id = 0;
    asiosmtpd_call call;  // hooks run one at a time, on the reading thread
};

process& proc()
{
    static process* const p = new process;  // never destroyed: plugin threads may log until _exit
    return *p;
}

// Write all of `data` (under the channel's lock). The control channel failing means the server
// is gone: nobody to serve. Another channel failing means the server closed it.
void write_all(channel& ch, std::string_view data)
{
    const std::lock_guard guard(ch.write_lock);
    for (std::size_t at = 0; at < data.size() && !ch.dead;) {
        const ssize_t n = ::send(ch.fd, data.data() + at, data.size() - at, MSG_NOSIGNAL);
        if (n > 0) at += static_cast<std::size_t>(n);
        else if (n < 0 && errno == EINTR) continue;
        else if (ch.fd == channel_fd) _exit(0);
        else ch.dead = true;
    }
}

// A frame for the server: the serving thread's wait for the end of its round (one write for
// all its answers), another thread's go at once.
void send(channel& ch, std::string& frame)
{
    if (serving_thread) ch.out += frame;
    else write_all(ch, frame);
}

void flush(channel& ch)
{
    if (ch.out.empty()) return;
    write_all(ch, ch.out);
    ch.out.clear();
}

channel& control() { return *proc().channels.front(); }

// ---- the checks the server makes ---------------------------------------------------------------
std::string verdict_problem(std::int32_t verdict, std::uint16_t code, std::string_view text, bool mechanism)
{
    unsigned fits = 0;
    switch (verdict) {
    case ASIOSMTPD_CONTINUE: break;
    case ASIOSMTPD_ACCEPT: fits = 2; break;
    case ASIOSMTPD_REJECT:
    case ASIOSMTPD_REJECT_CLOSE: fits = 5; break;
    case ASIOSMTPD_TEMPFAIL:
    case ASIOSMTPD_TEMPFAIL_CLOSE: fits = 4; break;
    case ASIOSMTPD_AUTH_CHALLENGE:
        if (!mechanism) return "AUTH_CHALLENGE outside an AUTH mechanism";
        if (text.size() > 700) return "AUTH challenge too long";
        return {};
    default: return "unknown verdict";
    }
    if (code == 0) return {};
    if (std::string problem = asiosmtpd::sdk::reply_problem(code, text); !problem.empty()) return problem;
    const unsigned cls = code / 100u;
    if (fits == 0 || cls == fits || (fits == 2 && cls == 3)) return {};
    return "reply class does not fit the verdict";
}

bool usable(const asiosmtpd_call* c) noexcept { return c != nullptr && c->active; }
bool usable(const asiosmtpd_registrar* r) noexcept { return r != nullptr && !r->frozen; }
const cfg_node* as_node(const asiosmtpd_cfg* c) noexcept { return reinterpret_cast<const cfg_node*>(c); }
const asiosmtpd_cfg* as_cfg(const cfg_node* n) noexcept { return reinterpret_cast<const asiosmtpd_cfg*>(n); }

using rules::upper;

// ---- registration ------------------------------------------------------------------------------
asiosmtpd_status register_hook(asiosmtpd_registrar* reg, asiosmtpd_hook_id hook, asiosmtpd_hook_fn fn)
{
    if (reg == nullptr || fn == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    if (hook < ASIOSMTPD_HOOK_CONNECT || hook > ASIOSMTPD_HOOK_TXN_END) return ASIOSMTPD_E_UNSUPPORTED;
    const auto same =
        std::count_if(reg->hooks.begin(), reg->hooks.end(), [hook](const auto& h) { return h.first == hook; });
    if (static_cast<std::size_t>(same) >= max_entries_per_hook) return ASIOSMTPD_E_INVALID;
    reg->hooks.emplace_back(hook, fn);
    return ASIOSMTPD_OK;
}

asiosmtpd_status register_command(asiosmtpd_registrar* reg, const asiosmtpd_command_desc* desc)
{
    if (reg == nullptr || desc == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    if (desc->struct_size < offsetof(asiosmtpd_command_desc, handler) + sizeof desc->handler)
        return ASIOSMTPD_E_INVALID;
    if (!rules::valid_verb(view(desc->verb)) || desc->handler == nullptr) return ASIOSMTPD_E_INVALID;
    std::string verb = upper(view(desc->verb));
    if (rules::builtin_verb(verb)) {
        reg->conflict = "cannot register command " + verb + ": a built-in command";
        return ASIOSMTPD_E_CONFLICT;
    }
    if (const auto it = reg->taken_verbs.find(verb); it != reg->taken_verbs.end()) {
        reg->conflict = "cannot register command " + verb + ": " + it->second;
        return ASIOSMTPD_E_CONFLICT;
    }
    for (const auto& c : reg->commands)
        if (c.verb == verb) {
            reg->conflict = "cannot register command " + verb + ": registered by this plugin already";
            return ASIOSMTPD_E_CONFLICT;
        }
    const std::string_view help = view(desc->help);
    if (!rules::valid_help(help)) return ASIOSMTPD_E_INVALID;
    reg->commands.push_back({verb, std::string(help), desc->flags});
    reg->command_fns.push_back({std::move(verb), desc->handler});
    return ASIOSMTPD_OK;
}

asiosmtpd_status register_ehlo_keyword(asiosmtpd_registrar* reg, asiosmtpd_str line)
{
    if (reg == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    const std::string_view l = view(line);
    if (!rules::valid_ehlo_keyword(l)) return ASIOSMTPD_E_INVALID;
    reg->keywords.emplace_back(l);
    return ASIOSMTPD_OK;
}

asiosmtpd_status register_auth_mechanism(asiosmtpd_registrar* reg, asiosmtpd_str name, asiosmtpd_hook_fn fn)
{
    if (reg == nullptr || fn == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    const std::string_view n = view(name);
    if (!rules::valid_mechanism(n)) return ASIOSMTPD_E_INVALID;
    std::string u = upper(n);
    if (rules::builtin_mechanism(u)) {
        reg->conflict = "cannot register AUTH mechanism " + u + ": built in";
        return ASIOSMTPD_E_CONFLICT;
    }
    if (const auto it = reg->taken_mechanisms.find(u); it != reg->taken_mechanisms.end()) {
        reg->conflict = "cannot register AUTH mechanism " + u + ": " + it->second;
        return ASIOSMTPD_E_CONFLICT;
    }
    for (const auto& m : reg->mechanisms)
        if (m.name == u) {
            reg->conflict = "cannot register AUTH mechanism " + u + ": registered by this plugin already";
            return ASIOSMTPD_E_CONFLICT;
        }
    reg->mechanisms.push_back({std::move(u), fn});
    return ASIOSMTPD_OK;
}

asiosmtpd_status declare_editor(asiosmtpd_registrar* reg)
{
    if (reg == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    reg->editor = true;
    return ASIOSMTPD_OK;
}

// keep_state(): per process. This process serves one instance, and its state ends with it.
void* keep_state(asiosmtpd_registrar* reg, asiosmtpd_str key, void* candidate, void (*release)(void*))
{
    const std::string_view k = view(key);
    const bool good = !k.empty() && k.size() <= 128 && std::all_of(k.begin(), k.end(), [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
               c == ':' || c == '-';
    });
    if (!usable(reg) || candidate == nullptr || !good) return nullptr;
    auto& states = proc().kept_states;
    const auto it = states.find(k);
    if (it != states.end()) return it->second.data;
    states.emplace(std::string(k), kept{candidate, release});
    return candidate;
}

asiosmtpd_str config_dir(asiosmtpd_registrar* reg) { return usable(reg) ? str(reg->base_dir) : str({}); }
int32_t is_check_only(asiosmtpd_registrar* reg) { return usable(reg) && reg->check_only ? 1 : 0; }

// ---- config ----------------------------------------------------------------------------------
const cfg_node null_node;

const asiosmtpd_cfg* cfg_root(asiosmtpd_registrar* reg)
{
    if (!usable(reg) || reg->root == nullptr) return as_cfg(&null_node);
    return as_cfg(reg->root);
}
int32_t cfg_kind(const asiosmtpd_cfg* c) { return c == nullptr ? ASIOSMTPD_CFG_NULL : as_node(c)->kind; }
asiosmtpd_str cfg_scalar(const asiosmtpd_cfg* c)
{
    if (c == nullptr || as_node(c)->kind != ASIOSMTPD_CFG_SCALAR) return str({});
    return str(as_node(c)->scalar);
}
size_t cfg_size(const asiosmtpd_cfg* c) { return c == nullptr ? 0 : as_node(c)->items.size(); }
const asiosmtpd_cfg* cfg_at(const asiosmtpd_cfg* c, size_t i)
{
    if (c == nullptr || i >= as_node(c)->items.size()) return nullptr;
    return as_cfg(&as_node(c)->items[i]);
}
asiosmtpd_str cfg_key_at(const asiosmtpd_cfg* c, size_t i)
{
    if (c == nullptr || i >= as_node(c)->keys.size()) return str({});
    return str(as_node(c)->keys[i]);
}
const asiosmtpd_cfg* cfg_get(const asiosmtpd_cfg* c, asiosmtpd_str key)
{
    if (c == nullptr || as_node(c)->kind != ASIOSMTPD_CFG_MAP) return nullptr;
    const cfg_node& n = *as_node(c);
    for (std::size_t i = 0; i < n.keys.size() && i < n.items.size(); ++i)
        if (n.keys[i] == view(key)) return as_cfg(&n.items[i]);
    return nullptr;
}

// The path of `target` below `at` as item indexes (the server resolves it in its own tree).
bool find_path(const cfg_node& at, const cfg_node* target, std::vector<std::uint32_t>& path)
{
    if (&at == target) return true;
    for (std::size_t i = 0; i < at.items.size(); ++i) {
        path.push_back(static_cast<std::uint32_t>(i));
        if (find_path(at.items[i], target, path)) return true;
        path.pop_back();
    }
    return false;
}

asiosmtpd_status cfg_error(asiosmtpd_registrar* reg, const asiosmtpd_cfg* c, asiosmtpd_str key, asiosmtpd_str message)
{
    if (reg == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    if (reg->root == nullptr) return ASIOSMTPD_E_INVALID;
    const cfg_node* n = c == nullptr || as_node(c) == &null_node ? reg->root : as_node(c);
    std::vector<std::uint32_t> path;
    if (!find_path(*reg->root, n, path)) return ASIOSMTPD_E_INVALID;
    reg->report.given = true;
    reg->report.path = std::move(path);
    reg->report.key.assign(view(key).substr(0, 256));
    reg->report.message.assign(view(message).substr(0, 1024));
    return ASIOSMTPD_OK;
}

// ---- views -----------------------------------------------------------------------------------
template <class T>
void fill(T* inout, const T& full) noexcept
{
    const std::uint32_t n = std::min<std::uint32_t>(inout->struct_size, sizeof(T));
    std::memcpy(static_cast<void*>(inout), &full, n);
    inout->struct_size = n;
}

asiosmtpd_status session_info(asiosmtpd_call* call, asiosmtpd_session_info* inout)
{
    if (!usable(call) || inout == nullptr || inout->struct_size < sizeof(std::uint32_t)) return ASIOSMTPD_E_INVALID;
    const snapshot& s = call->snap;
    asiosmtpd_session_info full{};
    full.struct_size = sizeof full;
    full.session_id = s.session_id;
    full.peer_address = str(s.peer_address);
    full.peer_port = s.peer_port;
    full.helo_name = str(s.helo);
    full.extended_smtp = s.esmtp;
    full.tls_active = s.tls;
    full.authenticated = s.authenticated;
    full.tls_version = str(s.tls_version);
    full.tls_cipher = str(s.tls_cipher);
    full.tls_peer_subject = str(s.tls_subject);
    full.auth_login = str(s.auth_login);
    fill(inout, full);
    return ASIOSMTPD_OK;
}

asiosmtpd_status txn_info(asiosmtpd_call* call, asiosmtpd_txn_info* inout)
{
    if (!usable(call) || inout == nullptr || inout->struct_size < sizeof(std::uint32_t)) return ASIOSMTPD_E_INVALID;
    if (call->snap.txn_status != ASIOSMTPD_OK) return call->snap.txn_status;
    asiosmtpd_txn_info full{};
    full.struct_size = sizeof full;
    full.mail_from = str(call->snap.mail_from);
    full.mail_param_count = call->snap.mail_params.size();
    full.rcpt_count = call->snap.rcpts.size();
    fill(inout, full);
    return ASIOSMTPD_OK;
}

// One item of the transaction's snapshot: `pick(snapshot)` gives the list the item is in
// (nullptr: none to read), `index` which.
template <class Pick>
asiosmtpd_status snapshot_item(asiosmtpd_call* call, size_t index, asiosmtpd_str* out, Pick pick)
{
    if (!usable(call) || out == nullptr) return ASIOSMTPD_E_INVALID;
    if (call->snap.txn_status != ASIOSMTPD_OK) return call->snap.txn_status;
    const std::vector<asiosmtpd_str>* items = pick(call->snap);
    if (items == nullptr || index >= items->size()) return ASIOSMTPD_E_INVALID;
    *out = (*items)[index];
    return ASIOSMTPD_OK;
}

asiosmtpd_status txn_rcpt_at(asiosmtpd_call* call, size_t index, asiosmtpd_str* out)
{
    return snapshot_item(call, index, out, [](const snapshot& s) { return &s.rcpts; });
}

asiosmtpd_status txn_mail_param_at(asiosmtpd_call* call, size_t index, asiosmtpd_str* out)
{
    return snapshot_item(call, index, out, [](const snapshot& s) { return &s.mail_params; });
}

asiosmtpd_status txn_rcpt_param_at(asiosmtpd_call* call, size_t r, size_t p, asiosmtpd_str* out)
{
    return snapshot_item(call, p, out, [r](const snapshot& s) -> const std::vector<asiosmtpd_str>* {
        return r < s.rcpt_params.size() ? &s.rcpt_params[r] : nullptr;
    });
}

// ---- replies, AUTH ---------------------------------------------------------------------------
asiosmtpd_status set_reply(asiosmtpd_call* call, uint16_t code, asiosmtpd_str text)
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    if (std::string problem = asiosmtpd::sdk::reply_problem(code, view(text)); !problem.empty()) {
        call->refused_reply = "set_reply() refused: " + problem;
        return ASIOSMTPD_E_INVALID;
    }
    call->refused_reply.clear();
    call->code = code;
    call->text.assign(view(text));
    return ASIOSMTPD_OK;
}

asiosmtpd_status set_auth_challenge(asiosmtpd_call* call, asiosmtpd_str challenge)
{
    if (!usable(call) || call->hook != wire::hook_auth_mechanism) return ASIOSMTPD_E_STATE;
    if (challenge.size > 700) return ASIOSMTPD_E_INVALID;
    call->challenge.assign(view(challenge));
    return ASIOSMTPD_OK;
}

asiosmtpd_status set_auth_identity(asiosmtpd_call* call, asiosmtpd_str login)
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    if (call->hook != wire::hook_auth_mechanism && call->hook != ASIOSMTPD_HOOK_AUTH_CHECK) return ASIOSMTPD_E_STATE;
    const std::string_view l = view(login);
    if (l.size() > 512 || l.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
        return ASIOSMTPD_E_INVALID;
    call->identity.assign(l);
    return ASIOSMTPD_OK;
}

asiosmtpd_status put_rcpt_reply(rcpt_replies& replies, rcpt_refusals& refused, std::size_t rcpt_count,
                                std::string_view origin, std::size_t index, std::uint16_t code, std::string_view text)
{
    std::string problem = asiosmtpd::sdk::reply_problem(code, text, false);
    const std::size_t key = std::min(index, rcpt_count);
    const auto same = [key](const auto& r) { return r.first == key; };
    if (index >= rcpt_count)
        problem =
            "the transaction has " + std::to_string(rcpt_count) + (rcpt_count == 1 ? " recipient" : " recipients");
    if (!problem.empty()) {
        std::string why = std::string(origin) + "() refused: recipient " + std::to_string(index) + ": " + problem;
        if (const auto it = std::find_if(refused.begin(), refused.end(), same); it != refused.end())
            it->second = std::move(why);
        else refused.emplace_back(key, std::move(why));
        return ASIOSMTPD_E_INVALID;
    }
    std::erase_if(refused, same);
    if (replies.size() <= index) replies.resize(index + 1);
    replies[index] = {code, std::string(text)};
    return ASIOSMTPD_OK;
}

asiosmtpd_status set_rcpt_reply(asiosmtpd_call* call, size_t index, uint16_t code, asiosmtpd_str text)
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    if (call->hook != ASIOSMTPD_HOOK_DATA) return ASIOSMTPD_E_STATE;
    if (call->suspended) {
        process& p = proc();
        const std::lock_guard guard(p.pending_lock);
        const auto it = p.pending.find(call->id);
        if (it == p.pending.end()) return ASIOSMTPD_E_GONE;
        return put_rcpt_reply(it->second.replies, it->second.refusals, it->second.rcpt_count, "set_rcpt_reply", index,
                              code, view(text));
    }
    return put_rcpt_reply(call->replies, call->refusals, call->snap.rcpts.size(), "set_rcpt_reply", index, code,
                          view(text));
}

// f(pending_rec&) under the lock; E_GONE for a token once valid, E_INVALID for one never given.
template <class F>
asiosmtpd_status with_pending(asiosmtpd_token token, F&& f)
{
    process& p = proc();
    const std::lock_guard guard(p.pending_lock);
    const auto it = p.pending.find(token);
    if (it == p.pending.end()) return token != 0 && token <= p.highest_id ? ASIOSMTPD_E_GONE : ASIOSMTPD_E_INVALID;
    return f(it->second);
}

asiosmtpd_status set_rcpt_reply_pending(asiosmtpd_token token, size_t index, uint16_t code, asiosmtpd_str text)
{
    return with_pending(token, [&](pending_rec& r) {
        if (r.hook != ASIOSMTPD_HOOK_DATA) return ASIOSMTPD_E_STATE;
        return put_rcpt_reply(r.replies, r.refusals, r.rcpt_count, "set_rcpt_reply_pending", index, code, view(text));
    });
}

// ---- editing ---------------------------------------------------------------------------------
asiosmtpd_status record(std::vector<edit_rec>& edits, const asiosmtpd_edit* e, bool may_edit, bool lmtp)
{
    if (e == nullptr) return ASIOSMTPD_E_INVALID;
    if (!may_edit) return ASIOSMTPD_E_STATE;
    asiosmtpd::plugin::edit_op op;
    if (std::string problem = asiosmtpd::plugin::check_edit(*e, op); !problem.empty()) return ASIOSMTPD_E_INVALID;
    if (lmtp && asiosmtpd::plugin::lmtp_refuses(op.op)) return ASIOSMTPD_E_STATE;
    edit_rec r;
    r.op = e->op;
    r.name.assign(view(e->name));
    r.value.assign(view(e->value));
    r.index = e->index;
    for (std::size_t i = 0; e->params != nullptr && i < e->param_count; ++i) r.params.emplace_back(view(e->params[i]));
    edits.push_back(std::move(r));
    return ASIOSMTPD_OK;
}

asiosmtpd_status edit_message(asiosmtpd_call* call, const asiosmtpd_edit* e)
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    if (call->suspended) {
        process& p = proc();
        const std::lock_guard guard(p.pending_lock);
        const auto it = p.pending.find(call->id);
        if (it == p.pending.end()) return ASIOSMTPD_E_GONE;
        return record(it->second.edits, e, it->second.may_edit, it->second.lmtp);
    }
    return record(call->edits, e, call->snap.may_edit, call->snap.lmtp);
}

asiosmtpd_status edit_message_pending(asiosmtpd_token token, const asiosmtpd_edit* e)
{
    return with_pending(token, [&](pending_rec& r) { return record(r.edits, e, r.may_edit, r.lmtp); });
}

// ---- slots -----------------------------------------------------------------------------------
asiosmtpd_status slot_set(asiosmtpd_call* call, int32_t scope, void* data, void (*dtor)(void*))
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    if (scope != ASIOSMTPD_SCOPE_SESSION && scope != ASIOSMTPD_SCOPE_TXN) return ASIOSMTPD_E_INVALID;
    session_state& s = proc().sessions[call->snap.session_id];
    void*& d = scope == ASIOSMTPD_SCOPE_SESSION ? s.sess_data : s.txn_data;
    void (*&f)(void*) = scope == ASIOSMTPD_SCOPE_SESSION ? s.sess_dtor : s.txn_dtor;
    void* old = d;
    void (*old_dtor)(void*) = f;
    d = data;
    f = dtor;
    if (old_dtor != nullptr && old != nullptr && old != data) old_dtor(old);
    return ASIOSMTPD_OK;
}

void* slot_get(asiosmtpd_call* call, int32_t scope)
{
    if (!usable(call)) return nullptr;
    const auto it = proc().sessions.find(call->snap.session_id);
    if (it == proc().sessions.end()) return nullptr;
    if (scope == ASIOSMTPD_SCOPE_SESSION) return it->second.sess_data;
    if (scope == ASIOSMTPD_SCOPE_TXN) return it->second.txn_data;
    return nullptr;
}

void end_txn(session_state& s)
{
    void* d = std::exchange(s.txn_data, nullptr);
    void (*f)(void*) = std::exchange(s.txn_dtor, nullptr);
    if (f != nullptr && d != nullptr) f(d);
}

void end_session(std::uint64_t id)
{
    const auto it = proc().sessions.find(id);
    if (it == proc().sessions.end()) return;
    session_state s = it->second;
    proc().sessions.erase(it);
    end_txn(s);
    if (s.sess_dtor != nullptr && s.sess_data != nullptr) s.sess_dtor(s.sess_data);
}

// ---- suspend / complete ------------------------------------------------------------------------
void put_result(wire::writer& w, std::int32_t verdict, std::uint16_t code, std::string_view text,
                std::string_view challenge, std::string_view identity, std::string_view error,
                const rcpt_replies& replies, const std::vector<edit_rec>& edits)
{
    w.i32(verdict).u16(code).str(text).str(challenge).str(identity).str(error);
    std::uint32_t n = 0;
    for (const auto& r : replies)
        if (r.first != 0) ++n;
    w.u32(n);
    for (std::size_t i = 0; i < replies.size(); ++i)
        if (replies[i].first != 0) w.u64(i).u16(replies[i].first).str(replies[i].second);
    w.u32(static_cast<std::uint32_t>(edits.size()));
    for (const edit_rec& e : edits) {
        w.i32(e.op).str(e.name).str(e.value).u64(e.index).u32(static_cast<std::uint32_t>(e.params.size()));
        for (const auto& p : e.params) w.str(p);
    }
}

asiosmtpd_status suspend(asiosmtpd_call* call, asiosmtpd_token* out)
{
    if (!usable(call) || out == nullptr) return ASIOSMTPD_E_INVALID;
    if (call->suspended) return ASIOSMTPD_E_STATE;
    if (call->hook == ASIOSMTPD_HOOK_SESSION_CLOSE || call->hook == ASIOSMTPD_HOOK_TXN_END || call->id == 0)
        return ASIOSMTPD_E_STATE;
    pending_rec r;
    r.ch = call->ch;
    r.hook = call->hook;
    if (call->hook == ASIOSMTPD_HOOK_DATA) {
        r.rcpt_count = call->snap.rcpts.size();
        r.replies = std::exchange(call->replies, {});
        r.refusals = std::exchange(call->refusals, {});
        r.may_edit = call->snap.may_edit;
        r.lmtp = call->snap.lmtp;
        r.edits = std::exchange(call->edits, {});
    }
    {
        process& p = proc();
        const std::lock_guard guard(p.pending_lock);
        p.pending[call->id] = std::move(r);
    }
    call->suspended = true;
    *out = call->id;
    return ASIOSMTPD_OK;
}

asiosmtpd_status complete(asiosmtpd_token token, asiosmtpd_verdict verdict, uint16_t code, asiosmtpd_str text)
{
    if (verdict == ASIOSMTPD_PENDING) return ASIOSMTPD_E_INVALID;
    pending_rec r;
    {
        process& p = proc();
        const std::lock_guard guard(p.pending_lock);
        const auto it = p.pending.find(token);
        if (it == p.pending.end()) return token != 0 && token <= p.highest_id ? ASIOSMTPD_E_GONE : ASIOSMTPD_E_INVALID;
        r = std::move(it->second);
        p.pending.erase(it);
    }
    asiosmtpd_status status = ASIOSMTPD_OK;
    std::string error;
    if (!verdict_problem(verdict, code, view(text), r.hook == wire::hook_auth_mechanism).empty()) {
        status = ASIOSMTPD_E_INVALID;  // the server judges the verdict again and says why
    } else if (!r.refusals.empty()) {
        error = r.refusals.front().second;
        status = ASIOSMTPD_E_INVALID;
    }
    wire::writer w(wire::result);
    w.u64(token).u8(0);
    put_result(w, verdict, code, view(text), {}, r.identity, error, r.replies, r.edits);
    w.u8(0).u64(0);
    send(r.ch != nullptr ? *r.ch : control(), w.finish());
    return status;
}

// ---- logs ------------------------------------------------------------------------------------
void log_fields(asiosmtpd_ctx*, asiosmtpd_call* call, int32_t level, asiosmtpd_str message, const asiosmtpd_str* keys,
                const asiosmtpd_str* values, size_t count)
{
    wire::writer w(wire::log);
    w.i32(level);
    bool in_call = false;
    std::uint64_t session = 0;
    std::string txn;
    // On the channel of the call in progress, or of the latest one: a line a plugin thread logs
    // before its complete() is written before that completion (the same socket, in order).
    std::shared_ptr<channel> ch;
    {
        asiosmtpd_call& latest = proc().call;  // the only call object (calls run one at a time)
        const std::lock_guard guard(latest.info_lock);
        ch = latest.ch;
        if (call != nullptr && call->active) {
            in_call = true;
            session = call->snap.session_id;
            txn.assign(call->snap.txn_id);
        }
    }
    if (ch != nullptr) {
        const std::lock_guard guard(ch->write_lock);
        if (ch->dead) ch = nullptr;  // closed by the server: the control channel takes it
    }
    w.u8(in_call ? 1 : 0).u64(session).str(txn).str(view(message).substr(0, 4096));
    const std::size_t n = keys != nullptr && values != nullptr ? std::min<std::size_t>(count, 64) : 0;
    w.u32(static_cast<std::uint32_t>(n));
    for (std::size_t i = 0; i < n; ++i) w.str(view(keys[i]).substr(0, 64)).str(view(values[i]).substr(0, 2048));
    send(ch != nullptr ? *ch : control(), w.finish());
}

void log_line(asiosmtpd_ctx* ctx, asiosmtpd_call* call, int32_t level, asiosmtpd_str message)
{
    log_fields(ctx, call, level, message, nullptr, nullptr, 0);
}

const asiosmtpd_host_api& host_api()
{
    static const asiosmtpd_host_api api = [] {
        asiosmtpd_host_api a{};
        a.struct_size = sizeof a;
        a.abi_major = ASIOSMTPD_ABI_MAJOR;
        a.abi_minor = ASIOSMTPD_ABI_MINOR;
        a.host_version = str(ASIOSMTPD_CHILD_VERSION);
        a.register_hook = register_hook;
        a.register_command = register_command;
        a.register_ehlo_keyword = register_ehlo_keyword;
        a.cfg_root = cfg_root;
        a.cfg_kind = cfg_kind;
        a.cfg_scalar = cfg_scalar;
        a.cfg_size = cfg_size;
        a.cfg_at = cfg_at;
        a.cfg_key_at = cfg_key_at;
        a.cfg_get = cfg_get;
        a.session_info = session_info;
        a.txn_info = txn_info;
        a.txn_rcpt_at = txn_rcpt_at;
        a.txn_mail_param_at = txn_mail_param_at;
        a.set_reply = set_reply;
        a.slot_set = slot_set;
        a.slot_get = slot_get;
        a.suspend = suspend;
        a.complete = complete;
        a.log = log_line;
        a.register_auth_mechanism = register_auth_mechanism;
        a.set_auth_challenge = set_auth_challenge;
        a.set_auth_identity = set_auth_identity;
        a.config_dir = config_dir;
        a.set_rcpt_reply = set_rcpt_reply;
        a.set_rcpt_reply_pending = set_rcpt_reply_pending;
        a.declare_editor = declare_editor;
        a.edit_message = edit_message;
        a.edit_message_pending = edit_message_pending;
        a.txn_rcpt_param_at = txn_rcpt_param_at;
        a.log_fields = log_fields;
        a.keep_state = keep_state;
        a.cfg_error = cfg_error;
        a.is_check_only = is_check_only;
        return a;
    }();
    return api;
}

// ---- messages from the server ------------------------------------------------------------------
void read_tree(wire::reader& r, cfg_node& n, int depth)
{
    n.kind = r.i32();
    if (depth > 64) {
        n.kind = ASIOSMTPD_CFG_NULL;
        return;
    }
    if (n.kind == ASIOSMTPD_CFG_SCALAR) n.scalar.assign(r.str());
    const std::uint32_t items = r.count(4);
    const bool map = n.kind == ASIOSMTPD_CFG_MAP;
    n.items.resize(items);
    if (map) n.keys.resize(items);
    for (std::uint32_t i = 0; i < items && r.ok(); ++i) {
        if (map) n.keys[i].assign(r.str());
        read_tree(r, n.items[i], depth + 1);
    }
}

void on_open(wire::reader& r)
{
    process& p = proc();
    const std::string file(r.str());
    wire::writer w(wire::opened);
    p.lib = ::dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
    const char* problem = nullptr;
    std::string why;
    if (p.lib == nullptr) {
        why = std::string("cannot load: ") + ::dlerror();
    } else if (auto* entry = reinterpret_cast<asiosmtpd_entry_fn>(::dlsym(p.lib, ASIOSMTPD_ENTRY_SYMBOL));
               entry == nullptr) {
        problem = "not an asiosmtpd plugin: no " ASIOSMTPD_ENTRY_SYMBOL " (built for another ABI major?)";
    } else {
        p.desc = entry();
    }
    // The server checks the rest of the descriptor (versions, fields) as it does in process.
    const asiosmtpd_plugin_descriptor* d = p.desc;
    if (problem != nullptr) why = problem;
    else if (why.empty() && d == nullptr) why = "the entry returned no descriptor";
    else if (why.empty() && d->struct_size < ASIOSMTPD_DESCRIPTOR_V1_0_SIZE) why = "descriptor truncated";
    if (!why.empty()) {
        w.u8(0).str(why);
    } else {
        w.u8(1).u32(d->struct_size).u32(d->abi_major).u32(d->abi_minor).u32(d->flags);
        w.u8(d->name != nullptr).str(d->name != nullptr ? d->name : "");
        w.u8(d->version != nullptr).str(d->version != nullptr ? d->version : "");
        w.str(d->description != nullptr ? d->description : "");
        w.u8(d->create != nullptr && d->destroy != nullptr);
        w.u32(wire::protocol);
    }
    send(control(), w.finish());
}

void on_create(wire::reader& r)
{
    process& p = proc();
    asiosmtpd_registrar& reg = p.reg;
    reg.check_only = r.u8() != 0;
    reg.base_dir.assign(r.str());
    read_tree(r, p.config, 0);
    for (std::uint32_t i = 0, n = r.count(8); i < n; ++i) {
        std::string name(r.str());
        reg.taken_verbs.emplace(std::move(name), std::string(r.str()));
    }
    for (std::uint32_t i = 0, n = r.count(8); i < n; ++i) {
        std::string name(r.str());
        reg.taken_mechanisms.emplace(std::move(name), std::string(r.str()));
    }
    reg.root = &p.config;
    char reason[512] = {};
    asiosmtpd_errbuf err{reason, sizeof reason};
    asiosmtpd_status st = ASIOSMTPD_E_INVALID;
    if (r.ok() && p.desc != nullptr && p.desc->create != nullptr)
        st = p.desc->create(&host_api(), &p.ctx, &reg, &p.self, &err);
    reg.frozen = true;
    reason[sizeof reason - 1] = '\0';
    p.created = st == ASIOSMTPD_OK;
    wire::writer w(wire::created);
    w.i32(st).str(reason).str(reg.conflict);
    w.u8(reg.report.given ? 1 : 0).u32(static_cast<std::uint32_t>(reg.report.path.size()));
    for (const auto i : reg.report.path) w.u32(i);
    w.str(reg.report.key).str(reg.report.message);
    w.u32(static_cast<std::uint32_t>(reg.hooks.size()));
    for (const auto& h : reg.hooks) w.i32(h.first);
    w.u32(static_cast<std::uint32_t>(reg.commands.size()));
    for (const auto& c : reg.commands) w.str(c.verb).str(c.help).u32(c.flags);
    w.u32(static_cast<std::uint32_t>(reg.keywords.size()));
    for (const auto& k : reg.keywords) w.str(k);
    w.u32(static_cast<std::uint32_t>(reg.mechanisms.size()));
    for (const auto& m : reg.mechanisms) w.str(m.name);
    w.u8(reg.editor ? 1 : 0);
    send(control(), w.finish());
}

void read_snapshot(wire::reader& r, snapshot& s)
{
    s.session_id = r.u64();
    s.peer_address = r.str();
    s.peer_port = r.u16();
    s.helo = r.str();
    s.esmtp = r.u8();
    s.tls = r.u8();
    s.authenticated = r.u8();
    s.tls_version = r.str();
    s.tls_cipher = r.str();
    s.tls_subject = r.str();
    s.auth_login = r.str();
    s.envelope_serial = r.u64();
    s.txn_id = r.str();
    const std::uint8_t flags = r.u8();
    s.lmtp = (flags & 1) != 0;
    s.may_edit = (flags & 2) != 0;
    s.has_draft = (flags & 4) != 0;
    s.txn_status = r.i32();
    s.mail_from = r.str();
    s.mail_params.clear();
    for (std::uint32_t i = 0, n = r.count(4); i < n; ++i) s.mail_params.push_back(str(r.str()));
    s.rcpts.clear();
    s.rcpt_params.clear();
    for (std::uint32_t i = 0, n = r.count(8); i < n; ++i) {
        s.rcpts.push_back(str(r.str()));
        auto& params = s.rcpt_params.emplace_back();
        for (std::uint32_t j = 0, m = r.count(4); j < m; ++j) params.push_back(str(r.str()));
    }
}

// The hook's argument struct, rebuilt from the frame (views into the frame's body).
struct arguments {
    union {
        asiosmtpd_connect_args connect;
        asiosmtpd_helo_args helo;
        asiosmtpd_address_args address;
        asiosmtpd_data_args data;
        asiosmtpd_command_args command;
        asiosmtpd_proxy_args proxy;
        asiosmtpd_auth_args auth;
        asiosmtpd_txn_end_args txn_end;
    };
    std::vector<asiosmtpd_str> params;
};

const void* read_arguments(wire::reader& r, std::int32_t hook, arguments& a)
{
    if (r.u8() == 0) return nullptr;  // the hook had no arguments
    switch (hook) {
    case ASIOSMTPD_HOOK_CONNECT:
        a.connect = {sizeof a.connect, str(r.str()), r.u16(), {}, 0};
        a.connect.local_address = str(r.str());
        a.connect.local_port = r.u16();
        return &a.connect;
    case ASIOSMTPD_HOOK_HELO:
    case ASIOSMTPD_HOOK_EHLO: a.helo = {sizeof a.helo, str(r.str())}; return &a.helo;
    case ASIOSMTPD_HOOK_MAIL:
    case ASIOSMTPD_HOOK_RCPT:
    case ASIOSMTPD_HOOK_VRFY: {
        const asiosmtpd_str address = str(r.str());
        for (std::uint32_t i = 0, n = r.count(4); i < n; ++i) a.params.push_back(str(r.str()));
        a.address = {sizeof a.address, address, a.params.empty() ? nullptr : a.params.data(), a.params.size()};
        return &a.address;
    }
    case ASIOSMTPD_HOOK_DATA:
    case ASIOSMTPD_HOOK_DATA_CHUNK: {
        a.data = {};
        a.data.struct_size = sizeof a.data;
        const bool has = r.u8() != 0;
        const std::string_view content = r.str();
        a.data.content = has ? reinterpret_cast<const std::uint8_t*>(content.data()) : nullptr;
        a.data.size = has ? content.size() : 0;
        a.data.flags = r.u32();
        a.data.message_size = r.u64();
        return &a.data;
    }
    case ASIOSMTPD_HOOK_NOOP:
    case ASIOSMTPD_HOOK_UNKNOWN:
    case wire::hook_command:
        a.command = {sizeof a.command, str(r.str()), {}, 0};
        a.command.argument = str(r.str());
        a.command.has_argument = r.i32();
        return &a.command;
    case ASIOSMTPD_HOOK_AUTH_CHECK:
    case wire::hook_auth_mechanism:
        a.auth = {};
        a.auth.struct_size = sizeof a.auth;
        a.auth.mechanism = str(r.str());
        a.auth.authzid = str(r.str());
        a.auth.login = str(r.str());
        a.auth.password = str(r.str());
        a.auth.response = str(r.str());
        a.auth.has_response = r.i32();
        a.auth.step = r.u32();
        return &a.auth;
    case ASIOSMTPD_HOOK_PROXY:
        a.proxy = {};
        a.proxy.struct_size = sizeof a.proxy;
        a.proxy.version = r.i32();
        a.proxy.command = r.i32();
        a.proxy.family = r.i32();
        a.proxy.protocol = r.i32();
        a.proxy.src_address = str(r.str());
        a.proxy.src_port = r.u16();
        a.proxy.dst_address = str(r.str());
        a.proxy.dst_port = r.u16();
        a.proxy.tlvs = str(r.str());
        a.proxy.proxy_address = str(r.str());
        return &a.proxy;
    case ASIOSMTPD_HOOK_TXN_END:
        a.txn_end = {};
        a.txn_end.struct_size = sizeof a.txn_end;
        a.txn_end.outcome = r.i32();
        a.txn_end.code = r.u16();
        a.txn_end.reply = str(r.str());
        a.txn_end.reason = str(r.str());
        a.txn_end.mail_from = str(r.str());
        a.txn_end.rcpt_count = static_cast<size_t>(r.u64());
        a.txn_end.size = r.u64();
        return &a.txn_end;
    default: return nullptr;
    }
}

// The plugin function a call is for: the index-th registration of a hook, or a command or
// AUTH mechanism by its name.
asiosmtpd_hook_fn find_fn(std::int32_t hook, std::uint32_t index, const void* args)
{
    const asiosmtpd_registrar& reg = proc().reg;
    if (hook == wire::hook_command && args != nullptr) {
        const std::string verb = upper(view(static_cast<const asiosmtpd_command_args*>(args)->verb));
        for (const auto& c : reg.command_fns)
            if (c.verb == verb) return c.fn;
        return nullptr;
    }
    if (hook == wire::hook_auth_mechanism && args != nullptr) {
        const std::string name = upper(view(static_cast<const asiosmtpd_auth_args*>(args)->mechanism));
        for (const auto& m : reg.mechanisms)
            if (m.name == name) return m.fn;
        return nullptr;
    }
    std::uint32_t seen = 0;
    for (const auto& h : reg.hooks)
        if (h.first == hook && seen++ == index) return h.second;
    return nullptr;
}

void on_call(const std::shared_ptr<channel>& ch, wire::reader& r)
{
    process& p = proc();
    const std::uint64_t id = r.u64();
    const std::int32_t hook = r.i32();
    const std::uint32_t index = r.u32();
    asiosmtpd_call& call = p.call;
    call.id = id;
    call.hook = hook;
    call.code = 0;
    call.text.clear();
    call.refused_reply.clear();
    call.challenge.clear();
    call.identity.clear();
    call.replies.clear();
    call.refusals.clear();
    call.edits.clear();
    call.suspended = false;
    {
        const std::lock_guard guard(call.info_lock);
        call.ch = ch;
    }
    read_snapshot(r, call.snap);
    arguments a;
    const void* args = read_arguments(r, hook, a);
    if (id > p.highest_id) {
        const std::lock_guard guard(p.pending_lock);
        p.highest_id = id;
    }
    // Transaction slots end with their transaction, as in the server (after TXN_END).
    if (hook != ASIOSMTPD_HOOK_TXN_END) {
        const auto it = p.sessions.find(call.snap.session_id);
        if (it != p.sessions.end() && it->second.serial != call.snap.envelope_serial) {
            end_txn(it->second);
            it->second.serial = call.snap.envelope_serial;
        }
    }
    const asiosmtpd_hook_fn fn = r.ok() && p.created ? find_fn(hook, index, args) : nullptr;
    std::int32_t verdict = ASIOSMTPD_CONTINUE;
    if (fn != nullptr) {
        {
            const std::lock_guard guard(call.info_lock);
            call.active = true;
        }
        {
            const asiosmtpd::plugin::isolation::child::call_budget budget;  // cpu_limit
            verdict = fn(p.self, &call, args);
        }
        const std::lock_guard guard(call.info_lock);
        call.active = false;
    }
    if (auto it = p.sessions.find(call.snap.session_id); it != p.sessions.end() && it->second.serial == 0)
        it->second.serial = call.snap.envelope_serial;
    if (id == 0) {
        // The server calls SESSION_CLOSE once per registration (once when the plugin has none):
        // the session's slots go after the last.
        const auto closes = std::count_if(p.reg.hooks.begin(), p.reg.hooks.end(),
                                          [](const auto& h) { return h.first == ASIOSMTPD_HOOK_SESSION_CLOSE; });
        if (hook == ASIOSMTPD_HOOK_SESSION_CLOSE &&
            static_cast<std::int64_t>(index) + 1 >= std::max<std::int64_t>(closes, 1))
            end_session(call.snap.session_id);
        wire::writer w(wire::done);
        send(*ch, w.finish());
        return;
    }
    // Whether the session holds a transaction slot here: the server then says when the
    // transaction ends (END_TXN), so that it goes at once.
    const auto held = p.sessions.find(call.snap.session_id);
    const std::uint8_t holds = held != p.sessions.end() && held->second.txn_data != nullptr ? 1 : 0;
    std::string error;
    if (!r.ok()) error = "malformed call from the server";
    else if (fn == nullptr) error = "no such hook in the plugin process";
    if (error.empty() && verdict == ASIOSMTPD_PENDING) {
        if (call.suspended) {
            wire::writer w(wire::pending);
            w.u64(id).u8(holds).u64(call.snap.session_id);
            send(*ch, w.finish());
            return;
        }
        error = "returned PENDING without suspend()";
    } else if (error.empty() && call.suspended) {
        // It suspended but answered: the token is void (as the server's cancel()).
        {
            const std::lock_guard guard(p.pending_lock);
            p.pending.erase(id);
        }
        error = "suspended the call but returned a verdict";
    }
    if (error.empty() && !call.refused_reply.empty()) error = call.refused_reply;
    if (error.empty() && !call.refusals.empty()) error = call.refusals.front().second;
    wire::writer w(wire::result);
    w.u64(id).u8(1);
    put_result(w, verdict, call.code, call.text, call.challenge, call.identity, error, call.replies, call.edits);
    w.u8(holds).u64(call.snap.session_id);
    send(*ch, w.finish());
}

[[noreturn]] void on_destroy()
{
    process& p = proc();
    for (const auto& ch : p.channels) flush(*ch);
    while (!p.sessions.empty()) end_session(p.sessions.begin()->first);
    if (p.created && p.desc != nullptr && p.desc->destroy != nullptr) p.desc->destroy(p.self);
    for (auto& [key, k] : p.kept_states)
        if (k.release != nullptr) k.release(k.data);
    std::fflush(nullptr);
    _exit(0);
}

// Read what the control channel has, with the descriptors that came along (ATTACH's).
ssize_t receive_control(std::vector<char>& buf)
{
    iovec iov{buf.data(), buf.size()};
    alignas(cmsghdr) char space[CMSG_SPACE(sizeof(int) * 16)];
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = space;
    m.msg_controllen = sizeof space;
    const ssize_t n = ::recvmsg(channel_fd, &m, MSG_CMSG_CLOEXEC);
    if (n <= 0) return n;
    for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
            int fd = -1;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
            proc().received_fds.push_back(fd);
        }
    }
    if ((m.msg_flags & MSG_CTRUNC) != 0) _exit(3);  // a channel lost on the way: the server must know
    return n;
}

// One frame from the server, on `ch`.
void dispatch(const std::shared_ptr<channel>& ch, std::string_view body)
{
    process& p = proc();
    wire::reader r(body.substr(1));
    switch (static_cast<std::uint8_t>(body[0])) {
    case wire::open: on_open(r); break;
    case wire::create: on_create(r); break;
    case wire::call: on_call(ch, r); break;
    case wire::cancel: {
        const std::uint64_t id = r.u64();
        const std::lock_guard guard(p.pending_lock);
        p.pending.erase(id);
        break;
    }
    case wire::end_txn: {
        const auto it = p.sessions.find(r.u64());
        if (it != p.sessions.end()) end_txn(it->second);
        break;
    }
    case wire::attach:
        if (ch->fd != channel_fd || p.received_fds.empty()) _exit(3);  // a broken server
        p.channels.push_back(std::make_shared<channel>(p.received_fds.front()));
        p.received_fds.pop_front();
        break;
    case wire::destroy: on_destroy();
    default: break;
    }
}

// The serving thread: wait for any channel, run what came, answer in one write per channel.
[[noreturn]] void serve()
{
    process& p = proc();
    serving_thread = true;
    p.channels.push_back(std::make_shared<channel>(channel_fd));
    std::vector<char> buf(256 * 1024);
    std::string body;
    std::vector<pollfd> polled;
    for (;;) {
        polled.clear();
        for (const auto& ch : p.channels) polled.push_back({ch->fd, POLLIN, 0});
        if (::poll(polled.data(), polled.size(), -1) < 0) {
            if (errno == EINTR) continue;
            _exit(3);
        }
        bool closed = false;
        for (std::size_t i = 0; i < polled.size(); ++i) {  // an ATTACH adds one: polled next round
            if ((polled[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
            const std::shared_ptr<channel> ch = p.channels[i];
            const ssize_t n = i == 0 ? receive_control(buf) : ::read(ch->fd, buf.data(), buf.size());
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n <= 0) {
                if (i == 0) {
                    for (const auto& c : p.channels) flush(*c);
                    std::fflush(nullptr);
                    _exit(0);  // the server is gone: nobody to serve
                }
                const std::lock_guard guard(ch->write_lock);
                ch->dead = true;  // the server closed this one (an event loop's, idle)
                closed = true;
                continue;
            }
            ch->in.feed(buf.data(), static_cast<std::size_t>(n));
            while (ch->in.next(body)) dispatch(ch, body);
            if (ch->in.broken()) _exit(3);
        }
        for (const auto& ch : p.channels) flush(*ch);
        if (closed)
            std::erase_if(p.channels, [](const std::shared_ptr<channel>& ch) {
                const std::lock_guard guard(ch->write_lock);
                return ch->dead && ch->fd != channel_fd;
            });
    }
}

}  // namespace

int main(int argc, char** argv)
{
    namespace child = asiosmtpd::plugin::isolation::child;
    const child::options opts = child::parse(argc, argv);
    {
        // plugins[].user, then the server's lifetime (child_limits.hpp).
        std::string why;
        bool gone = false;
        if (!child::start(opts, why, gone)) {
            if (gone) return 0;
            std::fprintf(stderr, "asiosmtpd-plugin-host: %s\n", why.c_str());
            return 2;
        }
    }
    std::signal(SIGPIPE, SIG_IGN);
    // A stop is the server's to decide (SIGTERM to the whole group, systemd's control-group
    // kill, ^C in a terminal): the server lets its sessions finish, then ends this process
    // (DESTROY, or the channel's end).
    std::signal(SIGTERM, SIG_IGN);
    std::signal(SIGINT, SIG_IGN);
    std::signal(SIGHUP, SIG_IGN);
    const std::uint64_t memory_limit = opts.memory_limit;
    const char* workdir = opts.workdir;
    // Nothing of the server's but the channel and the standard streams: no listening socket,
    // no client connection (they are close-on-exec; this makes sure).
    for (int fd = channel_fd + 1; fd < 65536; ++fd) {
        if (::fcntl(fd, F_GETFD) >= 0) ::close(fd);
        else if (fd > 1024) break;
    }
    if (workdir != nullptr && ::chdir(workdir) != 0) {
        std::fprintf(stderr, "asiosmtpd-plugin-host: cannot enter %s: %s\n", workdir, std::strerror(errno));
        return 2;
    }
    if (memory_limit > 0) {
        const rlimit lim{memory_limit, memory_limit};
        if (::setrlimit(RLIMIT_AS, &lim) != 0) {
            std::fprintf(stderr, "asiosmtpd-plugin-host: cannot set the memory limit: %s\n", std::strerror(errno));
            return 2;
        }
    }
    serve();
}
