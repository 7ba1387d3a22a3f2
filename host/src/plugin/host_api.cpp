// SPDX-License-Identifier: Apache-2.0
// The host function table (asiosmtpd_host_api): what plugins may call. Every function checks
// its arguments and state and answers with a status instead of trusting the plugin.
#include "plugin/chain.hpp"
#include "plugin/generation.hpp"
#include "plugin/log_sink.hpp"
#include "plugin/registration_rules.hpp"
#include "proto/trace.hpp"

#include <asiosmtpd/reply_rules.hpp>
#include <asiosmtpd/version.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <unordered_map>
#include <utility>

namespace asiosmtpd::plugin {
namespace {

using config::node;

std::string_view view(asiosmtpd_str s) noexcept
{
    return s.data == nullptr ? std::string_view{} : std::string_view{s.data, s.size};
}

asiosmtpd_str str(std::string_view s) noexcept
{
    static constexpr char empty[] = "";
    return s.data() == nullptr ? asiosmtpd_str{empty, 0} : asiosmtpd_str{s.data(), s.size()};
}

const node* as_node(const asiosmtpd_cfg* c) noexcept { return reinterpret_cast<const node*>(c); }
const asiosmtpd_cfg* as_cfg(const node* n) noexcept { return reinterpret_cast<const asiosmtpd_cfg*>(n); }

bool usable(const asiosmtpd_registrar* reg) noexcept { return reg != nullptr && !reg->frozen; }
bool usable(const asiosmtpd_call* call) noexcept { return call != nullptr && call->active && call->session != nullptr; }

// ---- suspended calls: token -> pending_call ------------------------------------------------
struct pending_table {
    std::mutex lock;
    std::unordered_map<asiosmtpd_token, std::shared_ptr<pending_call>> calls;
    std::uint64_t next = 1;
};

pending_table& table()
{
    // Never destroyed: plugin threads may call complete() until their destroy() joined them.
    static pending_table* const t = new pending_table;
    return *t;
}

// f(pending_call&) for a suspended call, under the table's and the call's locks: E_GONE for a
// token that was valid once (completed, timed out, session gone), E_INVALID for one never given.
template <class F>
asiosmtpd_status with_pending(asiosmtpd_token token, F&& f)
{
    auto& t = table();
    const std::lock_guard guard(t.lock);
    const auto it = t.calls.find(token);
    if (it == t.calls.end()) return token != 0 && token < t.next ? ASIOSMTPD_E_GONE : ASIOSMTPD_E_INVALID;
    pending_call& p = *it->second;
    const std::lock_guard call_guard(p.lock);
    return f(p);
}

// ---- registration ----------------------------------------------------------------------------

asiosmtpd_status register_hook(asiosmtpd_registrar* reg, asiosmtpd_hook_id hook, asiosmtpd_hook_fn fn)
{
    if (reg == nullptr || fn == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    if (hook < ASIOSMTPD_HOOK_CONNECT || hook > ASIOSMTPD_HOOK_TXN_END) return ASIOSMTPD_E_UNSUPPORTED;
    reg->gen->hooks[static_cast<std::size_t>(hook)].push_back({reg->owner, fn});
    return ASIOSMTPD_OK;
}

// "registered by plugins[0] (ping) already": who holds a name a registration wanted.
std::string holder(const asiosmtpd_registrar* reg, const instance* owner)
{
    if (owner == reg->owner) return "registered by this plugin already";
    if (owner == nullptr) return "registered already";
    return "registered by " + owner->key + " (" + owner->name + ") already";
}

asiosmtpd_status register_command(asiosmtpd_registrar* reg, const asiosmtpd_command_desc* desc)
{
    if (reg == nullptr || desc == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    if (desc->struct_size < offsetof(asiosmtpd_command_desc, handler) + sizeof desc->handler)
        return ASIOSMTPD_E_INVALID;
    if (!rules::valid_verb(view(desc->verb)) || desc->handler == nullptr) return ASIOSMTPD_E_INVALID;
    std::string verb = rules::upper(view(desc->verb));
    if (rules::builtin_verb(verb)) {
        reg->conflict = "cannot register command " + verb + ": a built-in command";
        return ASIOSMTPD_E_CONFLICT;
    }
    for (const auto& c : reg->gen->commands)
        if (c.verb == verb) {
            reg->conflict = "cannot register command " + verb + ": " + holder(reg, c.handler.owner);
            return ASIOSMTPD_E_CONFLICT;
        }
    const std::string_view help = view(desc->help);
    if (!rules::valid_help(help)) return ASIOSMTPD_E_INVALID;
    reg->gen->commands.push_back({std::move(verb), std::string(help), desc->flags, {reg->owner, desc->handler}});
    return ASIOSMTPD_OK;
}

asiosmtpd_status register_ehlo_keyword(asiosmtpd_registrar* reg, asiosmtpd_str line)
{
    if (reg == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    const std::string_view l = view(line);
    if (!rules::valid_ehlo_keyword(l)) return ASIOSMTPD_E_INVALID;
    reg->gen->ehlo_keywords.emplace_back(l);
    return ASIOSMTPD_OK;
}

asiosmtpd_status register_auth_mechanism(asiosmtpd_registrar* reg, asiosmtpd_str name, asiosmtpd_hook_fn fn)
{
    if (reg == nullptr || fn == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    const std::string_view n = view(name);
    if (!rules::valid_mechanism(n)) return ASIOSMTPD_E_INVALID;
    std::string upper = rules::upper(n);
    if (rules::builtin_mechanism(upper)) {
        reg->conflict = "cannot register AUTH mechanism " + upper + ": built in";
        return ASIOSMTPD_E_CONFLICT;
    }
    for (const auto& m : reg->gen->auth_mechanisms)
        if (m.name == upper) {
            reg->conflict = "cannot register AUTH mechanism " + upper + ": " + holder(reg, m.handler.owner);
            return ASIOSMTPD_E_CONFLICT;
        }
    reg->gen->auth_mechanisms.push_back({std::move(upper), {reg->owner, fn}});
    return ASIOSMTPD_OK;
}

asiosmtpd_status declare_editor(asiosmtpd_registrar* reg)
{
    if (reg == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    reg->owner->editor = true;
    return ASIOSMTPD_OK;
}

void* keep_state_api(asiosmtpd_registrar* reg, asiosmtpd_str key, void* candidate, void (*release)(void*))
{
    if (!usable(reg)) return nullptr;
    return keep_state(reg->owner, view(key), candidate, release);
}

asiosmtpd_str config_dir(asiosmtpd_registrar* reg)
{
    if (!usable(reg)) return str({});
    return str(reg->base_dir);
}

// ---- config ----------------------------------------------------------------------------------

const node null_node;  // the root of an instance without a tree

const asiosmtpd_cfg* cfg_root(asiosmtpd_registrar* reg)
{
    if (!usable(reg) || reg->config == nullptr) return as_cfg(&null_node);
    return as_cfg(reg->config);
}

asiosmtpd_status cfg_error(asiosmtpd_registrar* reg, const asiosmtpd_cfg* c, asiosmtpd_str key, asiosmtpd_str message)
{
    if (reg == nullptr) return ASIOSMTPD_E_INVALID;
    if (reg->frozen) return ASIOSMTPD_E_FROZEN;
    if (reg->config == nullptr) return ASIOSMTPD_E_INVALID;
    const node* n = c == nullptr || as_node(c) == &null_node ? reg->config : as_node(c);
    if (!config::locate(*reg->config, n)) return ASIOSMTPD_E_INVALID;
    // Bounded: the message is one line of a start-up error.
    reg->report = {true, n, std::string(view(key).substr(0, 256)), std::string(view(message).substr(0, 1024))};
    return ASIOSMTPD_OK;
}

int32_t is_check_only(asiosmtpd_registrar* reg) { return usable(reg) && reg->check_only ? 1 : 0; }

int32_t cfg_kind(const asiosmtpd_cfg* c)
{
    if (c == nullptr) return ASIOSMTPD_CFG_NULL;
    switch (as_node(c)->type) {
    case node::kind::null: return ASIOSMTPD_CFG_NULL;
    case node::kind::scalar: return ASIOSMTPD_CFG_SCALAR;
    case node::kind::sequence: return ASIOSMTPD_CFG_SEQUENCE;
    case node::kind::map: return ASIOSMTPD_CFG_MAP;
    }
    return ASIOSMTPD_CFG_NULL;
}

asiosmtpd_str cfg_scalar(const asiosmtpd_cfg* c)
{
    if (c == nullptr || as_node(c)->type != node::kind::scalar) return str({});
    return str(as_node(c)->scalar);
}

size_t cfg_size(const asiosmtpd_cfg* c) { return c == nullptr ? 0 : as_node(c)->items.size(); }

const asiosmtpd_cfg* cfg_at(const asiosmtpd_cfg* c, size_t index)
{
    if (c == nullptr || index >= as_node(c)->items.size()) return nullptr;
    return as_cfg(&as_node(c)->items[index]);
}

asiosmtpd_str cfg_key_at(const asiosmtpd_cfg* c, size_t index)
{
    if (c == nullptr || index >= as_node(c)->keys.size()) return str({});
    return str(as_node(c)->keys[index]);
}

const asiosmtpd_cfg* cfg_get(const asiosmtpd_cfg* c, asiosmtpd_str key)
{
    if (c == nullptr) return nullptr;
    const node* n = as_node(c)->get(view(key));
    return n == nullptr ? nullptr : as_cfg(n);
}

// ---- session views ---------------------------------------------------------------------------

// Copy the fields both sides know: the caller said its capacity in struct_size.
template <class T>
void fill(T* inout, const T& full) noexcept
{
    const std::uint32_t cap = inout->struct_size;
    const std::uint32_t n = std::min<std::uint32_t>(cap, sizeof(T));
    std::memcpy(static_cast<void*>(inout), &full, n);
    inout->struct_size = n;
}

asiosmtpd_status session_info(asiosmtpd_call* call, asiosmtpd_session_info* inout)
{
    if (!usable(call) || inout == nullptr || inout->struct_size < sizeof(std::uint32_t)) return ASIOSMTPD_E_INVALID;
    const auto& s = *call->session;
    asiosmtpd_session_info full{};
    full.struct_size = sizeof full;
    full.session_id = s.session_id();
    full.peer_address = str(s.peer_address());
    full.peer_port = s.peer_port();
    full.helo_name = str(s.smtp().helo_name());
    full.extended_smtp = s.smtp().extended_smtp() ? 1 : 0;
    full.tls_active = s.smtp().tls_active() ? 1 : 0;
    full.authenticated = s.smtp().authenticated() ? 1 : 0;
    full.tls_version = str(s.tls_version());
    full.tls_cipher = str(s.tls_cipher());
    full.tls_peer_subject = str(s.tls_peer_subject());
    full.auth_login = str(s.smtp().auth_login());
    fill(inout, full);
    return ASIOSMTPD_OK;
}

// The transaction views read the draft in a DATA chain with an editor (the edits of the plugins
// before the caller), else the client's envelope. In TXN_END the envelope is gone.
asiosmtpd_status txn_info(asiosmtpd_call* call, asiosmtpd_txn_info* inout)
{
    if (!usable(call) || inout == nullptr || inout->struct_size < sizeof(std::uint32_t)) return ASIOSMTPD_E_INVALID;
    if (call->hook == ASIOSMTPD_HOOK_TXN_END) return ASIOSMTPD_E_STATE;
    asiosmtpd_txn_info full{};
    full.struct_size = sizeof full;
    if (const draft* d = call->draft) {
        full.mail_from = str(d->mail_from());
        full.mail_param_count = d->mail_params().size();
        full.rcpt_count = d->rcpts().size();
    } else {
        const auto& env = call->session->smtp().current_envelope();
        full.mail_from = str(env.mail_from);
        full.mail_param_count = env.mail_options.size();
        full.rcpt_count = env.rcpt_tos.size();
    }
    fill(inout, full);
    return ASIOSMTPD_OK;
}

asiosmtpd_status txn_rcpt_at(asiosmtpd_call* call, size_t index, asiosmtpd_str* out)
{
    if (!usable(call) || out == nullptr) return ASIOSMTPD_E_INVALID;
    if (call->hook == ASIOSMTPD_HOOK_TXN_END) return ASIOSMTPD_E_STATE;
    if (const draft* d = call->draft) {
        if (index >= d->rcpts().size()) return ASIOSMTPD_E_INVALID;
        *out = str(d->rcpts()[index].address);
        return ASIOSMTPD_OK;
    }
    const auto& rcpts = call->session->smtp().current_envelope().rcpt_tos;
    if (index >= rcpts.size()) return ASIOSMTPD_E_INVALID;
    *out = str(rcpts[index]);
    return ASIOSMTPD_OK;
}

asiosmtpd_status txn_mail_param_at(asiosmtpd_call* call, size_t index, asiosmtpd_str* out)
{
    if (!usable(call) || out == nullptr) return ASIOSMTPD_E_INVALID;
    if (call->hook == ASIOSMTPD_HOOK_TXN_END) return ASIOSMTPD_E_STATE;
    const auto& params =
        call->draft != nullptr ? call->draft->mail_params() : call->session->smtp().current_envelope().mail_options;
    if (index >= params.size()) return ASIOSMTPD_E_INVALID;
    *out = str(params[index]);
    return ASIOSMTPD_OK;
}

asiosmtpd_status txn_rcpt_param_at(asiosmtpd_call* call, size_t rcpt_index, size_t param_index, asiosmtpd_str* out)
{
    if (!usable(call) || out == nullptr) return ASIOSMTPD_E_INVALID;
    if (call->hook == ASIOSMTPD_HOOK_TXN_END) return ASIOSMTPD_E_STATE;
    if (call->draft == nullptr) {
        // The client's recipients: their parameters (DSN's NOTIFY and ORCPT; none without DSN).
        const auto& options = call->session->smtp().current_envelope().rcpt_options;
        if (rcpt_index >= options.size() || param_index >= options[rcpt_index].size()) return ASIOSMTPD_E_INVALID;
        *out = str(options[rcpt_index][param_index]);
        return ASIOSMTPD_OK;
    }
    const auto& rcpts = call->draft->rcpts();
    if (rcpt_index >= rcpts.size() || param_index >= rcpts[rcpt_index].params.size()) return ASIOSMTPD_E_INVALID;
    *out = str(rcpts[rcpt_index].params[param_index]);
    return ASIOSMTPD_OK;
}

// ---- message editing (ABI 1.3) ---------------------------------------------------------------

// One edit for a call of `owner`'s in `hook`: E_STATE unless an editor's DATA call in a chain
// that holds a draft (an edit to the client's recipients is also E_STATE on LMTP), E_INVALID
// for a malformed edit (nothing recorded).
asiosmtpd_status record(edit_batch& batch, const asiosmtpd_edit* e, bool may_edit, bool lmtp,
                        const spool_settings& spool)
{
    if (e == nullptr) return ASIOSMTPD_E_INVALID;
    if (!may_edit) return ASIOSMTPD_E_STATE;
    edit_op op;
    if (std::string problem = check_edit(*e, op); !problem.empty()) return ASIOSMTPD_E_INVALID;
    if (lmtp && lmtp_refuses(op.op)) return ASIOSMTPD_E_STATE;
    record_edit(batch, std::move(op), spool);
    return ASIOSMTPD_OK;
}

bool may_edit(const asiosmtpd_call& call) noexcept
{
    return call.hook == ASIOSMTPD_HOOK_DATA && call.draft != nullptr && call.owner != nullptr && call.owner->editor;
}

asiosmtpd_status edit_message(asiosmtpd_call* call, const asiosmtpd_edit* e)
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    const bool lmtp = call->session->smtp().config().lmtp;
    if (call->pending) {
        // Suspended already: suspend() moved the edits to the pending call.
        pending_call& p = *call->pending;
        const std::lock_guard guard(p.lock);
        if (p.done) return ASIOSMTPD_E_GONE;
        return record(p.edits, e, p.may_edit, lmtp, p.spool);
    }
    return record(call->edits, e, may_edit(*call), lmtp, call->spool != nullptr ? *call->spool : spool_settings{});
}

asiosmtpd_status edit_message_pending(asiosmtpd_token token, const asiosmtpd_edit* e)
{
    return with_pending(token, [e](pending_call& p) {
        if (p.done) return ASIOSMTPD_E_GONE;
        return record(p.edits, e, p.may_edit, p.lmtp, p.spool);
    });
}

asiosmtpd_status set_reply(asiosmtpd_call* call, uint16_t code, asiosmtpd_str text)
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    // A refusal changes nothing but is remembered: a verdict given without a later accepted
    // reply costs the session 451 4.3.0 (invoke()), never a default reply the plugin did not mean.
    if (std::string problem = sdk::reply_problem(code, view(text)); !problem.empty()) {
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
    if (!usable(call) || call->hook != auth_mechanism_call) return ASIOSMTPD_E_STATE;
    // The 334 line must fit the 1001-byte line limit once base64-encoded.
    if (challenge.size > 700) return ASIOSMTPD_E_INVALID;
    call->auth_challenge.assign(view(challenge));
    return ASIOSMTPD_OK;
}

asiosmtpd_status set_auth_identity(asiosmtpd_call* call, asiosmtpd_str login)
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    if (call->hook != auth_mechanism_call && call->hook != ASIOSMTPD_HOOK_AUTH_CHECK) return ASIOSMTPD_E_STATE;
    const std::string_view l = view(login);
    if (l.size() > 512 || l.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
        return ASIOSMTPD_E_INVALID;
    call->auth_identity.assign(l);
    return ASIOSMTPD_OK;
}

// ---- per-recipient replies (LMTP) ------------------------------------------------------------

using rcpt_replies = std::vector<std::pair<std::uint16_t, std::string>>;
using rcpt_refusals = std::vector<std::pair<std::size_t, std::string>>;

// One set_rcpt_reply[_pending]() call (plugin.h): per recipient the last call counts. A reply
// for a recipient past the last one, or one breaking the one-line reply rules (`problem`,
// checked by the caller before taking any lock), is refused with E_INVALID and remembered with
// the reason the log will give, until a later call for the same recipient succeeds. Refusals
// of recipients past the last share one entry, so the list stays within rcpt_count + 1.
asiosmtpd_status put_rcpt_reply(rcpt_replies& replies, rcpt_refusals& refused, std::size_t rcpt_count,
                                std::string_view origin, std::size_t index, std::uint16_t code, std::string_view text,
                                std::string problem)
{
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
    std::string problem = sdk::reply_problem(code, view(text), false);
    if (call->pending) {
        // Suspended already: suspend() moved the replies to the pending call, where complete()
        // decides on them with those of set_rcpt_reply_pending().
        pending_call& p = *call->pending;
        const std::lock_guard guard(p.lock);
        if (p.done) return ASIOSMTPD_E_GONE;
        return put_rcpt_reply(p.rcpt_replies, p.refused_rcpt_replies, p.rcpt_count, "set_rcpt_reply", index, code,
                              view(text), std::move(problem));
    }
    return put_rcpt_reply(call->rcpt_replies, call->refused_rcpt_replies,
                          call->session->smtp().current_envelope().rcpt_tos.size(), "set_rcpt_reply", index, code,
                          view(text), std::move(problem));
}

asiosmtpd_status set_rcpt_reply_pending(asiosmtpd_token token, size_t index, uint16_t code, asiosmtpd_str text)
{
    std::string problem = sdk::reply_problem(code, view(text), false);
    return with_pending(token, [&](pending_call& p) {
        if (p.hook != ASIOSMTPD_HOOK_DATA) return ASIOSMTPD_E_STATE;
        return put_rcpt_reply(p.rcpt_replies, p.refused_rcpt_replies, p.rcpt_count, "set_rcpt_reply_pending", index,
                              code, view(text), std::move(problem));
    });
}

asiosmtpd_status slot_set(asiosmtpd_call* call, int32_t scope, void* data, void (*dtor)(void*))
{
    if (!usable(call)) return ASIOSMTPD_E_INVALID;
    if (scope != ASIOSMTPD_SCOPE_SESSION && scope != ASIOSMTPD_SCOPE_TXN) return ASIOSMTPD_E_INVALID;
    call->session->data_slots().set(call->owner, scope, slot{data, dtor});
    return ASIOSMTPD_OK;
}

void* slot_get(asiosmtpd_call* call, int32_t scope)
{
    if (!usable(call)) return nullptr;
    const slot* s = call->session->data_slots().find(call->owner, scope);
    return s == nullptr ? nullptr : s->data;
}

// ---- asynchronous completion -------------------------------------------------------------

asiosmtpd_status suspend(asiosmtpd_call* call, asiosmtpd_token* out)
{
    if (!usable(call) || out == nullptr) return ASIOSMTPD_E_INVALID;
    if (call->token != 0) return ASIOSMTPD_E_STATE;  // one suspension per call
    if (call->hook == ASIOSMTPD_HOOK_SESSION_CLOSE || call->hook == ASIOSMTPD_HOOK_TXN_END) return ASIOSMTPD_E_STATE;
    auto p = std::make_shared<pending_call>();
    p->hook = call->hook;
    if (call->hook == ASIOSMTPD_HOOK_DATA) {
        // From here on the per-recipient replies (and refusals) are the pending call's:
        // set_rcpt_reply[_pending]() add to them, complete() decides on them.
        p->rcpt_count = call->session->smtp().current_envelope().rcpt_tos.size();
        p->rcpt_replies = std::exchange(call->rcpt_replies, {});
        p->refused_rcpt_replies = std::exchange(call->refused_rcpt_replies, {});
        p->may_edit = may_edit(*call);
        p->lmtp = call->session->smtp().config().lmtp;
        p->edits = std::exchange(call->edits, {});
        if (call->spool != nullptr) p->spool = *call->spool;
    }
    auto& t = table();
    {
        const std::lock_guard guard(t.lock);
        call->token = t.next++;
        t.calls.emplace(call->token, p);
    }
    call->pending = std::move(p);
    *out = call->token;
    return ASIOSMTPD_OK;
}

asiosmtpd_status complete(asiosmtpd_token token, asiosmtpd_verdict verdict, uint16_t code, asiosmtpd_str text)
{
    if (verdict == ASIOSMTPD_PENDING) return ASIOSMTPD_E_INVALID;  // the token stays valid
    std::shared_ptr<pending_call> p;
    std::function<void()> notify;
    asiosmtpd_status status = ASIOSMTPD_OK;
    auto& t = table();
    {
        // Fill the call while the table is locked, so that a concurrent cancel() (timeout)
        // either happens before (we answer E_GONE) or sees the call done.
        const std::lock_guard guard(t.lock);
        const auto it = t.calls.find(token);
        if (it == t.calls.end()) return token != 0 && token < t.next ? ASIOSMTPD_E_GONE : ASIOSMTPD_E_INVALID;
        p = std::move(it->second);
        t.calls.erase(it);
        const std::lock_guard call_guard(p->lock);
        p->done = true;
        if (std::string problem = verdict_problem(verdict, code, view(text), p->hook == auth_mechanism_call);
            !problem.empty()) {
            // The call ends now as a plugin error (451 4.3.0 and a log line), rather than
            // waiting for the hook timeout: a C++ sdk::pending has given up its token already.
            p->refused = "complete() refused: " + problem;
            status = ASIOSMTPD_E_INVALID;
        } else if (!p->refused_rcpt_replies.empty()) {
            // A recipient's reply was refused and not replaced: the verdict would answer that
            // recipient in its stead (a 250, say). A plugin error, as on the hook's return.
            p->refused = std::move(p->refused_rcpt_replies.front().second);
            status = ASIOSMTPD_E_INVALID;
        }
        p->verdict = verdict;
        p->code = code;
        p->text.assign(view(text));
        notify = p->notify;
    }
    if (notify) notify();
    return status;
}

// ---- logging -----------------------------------------------------------------------------

void plugin_log_fields(asiosmtpd_ctx* ctx, asiosmtpd_call* call, int32_t level, asiosmtpd_str message,
                       const asiosmtpd_str* keys, const asiosmtpd_str* values, size_t count);

void plugin_log(asiosmtpd_ctx* ctx, asiosmtpd_call* call, int32_t level, asiosmtpd_str message)
{
    plugin_log_fields(ctx, call, level, message, nullptr, nullptr, 0);
}

// " key=value": a key the log can carry ([a-z0-9_], 1..32 bytes; else "field"), the value
// escaped as peer text and quoted when empty or holding a space.
void append_field(std::string& line, std::string_view key, std::string_view value)
{
    const bool good = !key.empty() && key.size() <= 32 && std::all_of(key.begin(), key.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    });
    std::string v = escaped(value, 1000);
    if (!line.empty()) line.push_back(' ');
    line.append(good ? key : std::string_view("field")).push_back('=');
    if (v.empty() || v.find(' ') != std::string::npos) line.append("\"").append(v).append("\"");
    else line.append(v);
}

log_level level_of(int32_t level) noexcept
{
    return level <= ASIOSMTPD_LOG_DEBUG  ? log_level::debug
           : level == ASIOSMTPD_LOG_INFO ? log_level::info
           : level == ASIOSMTPD_LOG_WARN ? log_level::warn
                                         : log_level::error;
}

// "plugin=<name> <message> key=value...", after the session's part of the line.
void finish_log_line(std::string& line, const asiosmtpd_ctx* who, std::string_view message, const asiosmtpd_str* keys,
                     const asiosmtpd_str* values, size_t count)
{
    line += "plugin=" + (who != nullptr ? who->name : std::string("?"));
    if (!message.empty()) line += " " + escaped(message, 2000);
    if (keys != nullptr && values != nullptr)
        for (size_t i = 0; i < count && i < 64; ++i) append_field(line, view(keys[i]), view(values[i]));
}

void plugin_log_fields(asiosmtpd_ctx* ctx, asiosmtpd_call* call, int32_t level, asiosmtpd_str message,
                       const asiosmtpd_str* keys, const asiosmtpd_str* values, size_t count)
{
    const log_level l = level_of(level);
    const asiosmtpd_ctx* who = ctx != nullptr ? ctx : (call != nullptr ? call->owner : nullptr);
    log_sink& sink = log_for(who);
    if (!sink.enabled(l)) return;
    // `call` may be stale when used from another thread; only read it when it is active.
    std::string line;
    if (call != nullptr && call->active && call->session != nullptr) {
        const proto::engine& smtp = call->session->smtp();
        line = "session=" + std::to_string(call->session->session_id()) + " ";
        // Every line of a transaction carries its id (the mail log's txn=, the Received id).
        if (smtp.in_transaction())
            line += "txn=" + proto::transaction_id(call->session->session_id(), smtp.transaction_number()) + " ";
    }
    finish_log_line(line, who, view(message), keys, values, count);
    sink.write(l, line);
}

}  // namespace

void cancel(asiosmtpd_token token) noexcept
{
    std::function<void()> told;
    {
        auto& t = table();
        const std::lock_guard guard(t.lock);
        const auto it = t.calls.find(token);
        if (it == t.calls.end()) return;
        {
            const std::lock_guard call_guard(it->second->lock);
            told = std::move(it->second->on_cancel);
        }
        t.calls.erase(it);
    }
    if (told) {
        try {
            told();
        } catch (...) {}
    }
}

asiosmtpd_status complete_remote(asiosmtpd_token token, asiosmtpd_verdict verdict, std::uint16_t code,
                                 std::string_view text, std::string_view identity, std::string_view error,
                                 bool returned)
{
    if (verdict == ASIOSMTPD_PENDING && error.empty()) return ASIOSMTPD_E_INVALID;
    std::shared_ptr<pending_call> p;
    std::function<void()> notify;
    asiosmtpd_status status = ASIOSMTPD_OK;
    auto& t = table();
    {
        const std::lock_guard guard(t.lock);
        const auto it = t.calls.find(token);
        if (it == t.calls.end()) return token != 0 && token < t.next ? ASIOSMTPD_E_GONE : ASIOSMTPD_E_INVALID;
        p = std::move(it->second);
        t.calls.erase(it);
        const std::lock_guard call_guard(p->lock);
        p->done = true;
        p->on_cancel = nullptr;
        if (!error.empty()) {
            p->refused.assign(error);
            status = ASIOSMTPD_E_INVALID;
        } else if (std::string problem = verdict_problem(verdict, code, text, p->hook == auth_mechanism_call);
                   !problem.empty()) {
            p->refused = returned ? problem : "complete() refused: " + problem;
            status = ASIOSMTPD_E_INVALID;
        } else if (!p->refused_rcpt_replies.empty()) {
            p->refused = std::move(p->refused_rcpt_replies.front().second);
            status = ASIOSMTPD_E_INVALID;
        }
        p->verdict = verdict;
        p->code = code;
        p->text.assign(text);
        p->identity.assign(identity);
        notify = p->notify;
    }
    if (notify) notify();
    return status;
}

void write_plugin_log(const instance* who, std::int32_t level, std::uint64_t session, std::string_view txn,
                      std::string_view message, const asiosmtpd_str* keys, const asiosmtpd_str* values,
                      std::size_t count)
{
    log_sink& sink = log_for(who);
    const log_level l = level_of(level);
    if (!sink.enabled(l)) return;
    std::string line;
    if (session != 0) {
        line = "session=" + std::to_string(session) + " ";
        if (!txn.empty()) line += "txn=" + std::string(txn) + " ";
    }
    finish_log_line(line, who, message, keys, values, count);
    sink.write(l, line);
}

const asiosmtpd_host_api& host_api() noexcept
{
    static const asiosmtpd_host_api api = [] {
        asiosmtpd_host_api a{};
        a.struct_size = sizeof a;
        a.abi_major = ASIOSMTPD_ABI_MAJOR;
        a.abi_minor = ASIOSMTPD_ABI_MINOR;
        a.host_version = str(ASIOSMTPD_VERSION_STRING);
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
        a.log = plugin_log;
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
        a.log_fields = plugin_log_fields;
        a.keep_state = keep_state_api;
        a.cfg_error = cfg_error;
        a.is_check_only = is_check_only;
        return a;
    }();
    return api;
}

}  // namespace asiosmtpd::plugin
