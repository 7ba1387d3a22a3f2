// SPDX-License-Identifier: Apache-2.0
// One run of a hook chain (chain.hpp): arguments, calls, the blocking watchdog, and every rule
// about verdicts.
#include "plugin/chain.hpp"

#include <asiosmtpd/reply_rules.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <thread>

namespace asiosmtpd::plugin {

// The engine's hook kinds are the ABI's hook ids: a request becomes a chain without a table.
static_assert(static_cast<int>(proto::hook_kind::connect) == ASIOSMTPD_HOOK_CONNECT);
static_assert(static_cast<int>(proto::hook_kind::helo) == ASIOSMTPD_HOOK_HELO);
static_assert(static_cast<int>(proto::hook_kind::ehlo) == ASIOSMTPD_HOOK_EHLO);
static_assert(static_cast<int>(proto::hook_kind::mail) == ASIOSMTPD_HOOK_MAIL);
static_assert(static_cast<int>(proto::hook_kind::rcpt) == ASIOSMTPD_HOOK_RCPT);
static_assert(static_cast<int>(proto::hook_kind::data) == ASIOSMTPD_HOOK_DATA);
static_assert(static_cast<int>(proto::hook_kind::rset) == ASIOSMTPD_HOOK_RSET);
static_assert(static_cast<int>(proto::hook_kind::noop) == ASIOSMTPD_HOOK_NOOP);
static_assert(static_cast<int>(proto::hook_kind::quit) == ASIOSMTPD_HOOK_QUIT);
static_assert(static_cast<int>(proto::hook_kind::vrfy) == ASIOSMTPD_HOOK_VRFY);
static_assert(static_cast<int>(proto::hook_kind::unknown) == ASIOSMTPD_HOOK_UNKNOWN);
static_assert(static_cast<int>(proto::hook_kind::session_close) == ASIOSMTPD_HOOK_SESSION_CLOSE);
static_assert(static_cast<int>(proto::hook_kind::starttls) == ASIOSMTPD_HOOK_STARTTLS);
static_assert(static_cast<int>(proto::hook_kind::auth_check) == ASIOSMTPD_HOOK_AUTH_CHECK);
static_assert(static_cast<int>(proto::hook_kind::proxy) == ASIOSMTPD_HOOK_PROXY);
static_assert(static_cast<int>(proto::hook_kind::data_chunk) == ASIOSMTPD_HOOK_DATA_CHUNK);
static_assert(static_cast<int>(proto::hook_kind::txn_end) == ASIOSMTPD_HOOK_TXN_END);
static_assert(static_cast<std::size_t>(proto::hook_kind::txn_end) + 1 == hook_count);
// The two kinds past the ABI's ids are the host's own (a plugin's AUTH mechanism or verb).
static_assert(static_cast<std::size_t>(proto::hook_kind::auth_mechanism) >= hook_count);
static_assert(static_cast<std::size_t>(proto::hook_kind::command) >= hook_count);

std::string_view hook_label(std::int32_t hook, const void* args) noexcept
{
    const auto kind = static_cast<proto::hook_kind>(hook);
    if (kind == proto::hook_kind::command && args != nullptr) {
        // A plugin's command: named by its verb, in logs and metrics alike.
        const auto* c = static_cast<const asiosmtpd_command_args*>(args);
        if (c->verb.data != nullptr) return {c->verb.data, c->verb.size};
    }
    if (hook <= 0 || (static_cast<std::size_t>(hook) >= hook_count && kind != proto::hook_kind::auth_mechanism &&
                      kind != proto::hook_kind::command))
        return "?";
    return proto::hook_name(kind);
}

// --------------------------------------------------------------------------------------------
// Blocking hooks: a watchdog thread looks at the hook calls in progress
// --------------------------------------------------------------------------------------------

namespace {

using steady = std::chrono::steady_clock;

// The hook call one thread is running. Written by that thread around the call, read by the
// watchdog, both under `lock`. While `active`, `owner` and `args` are alive: the session
// making the call holds its generation, and the arguments live until the hook returns.
struct call_record {
    std::mutex lock;
    bool active = false;
    bool reported = false;  ///< the watchdog logged this call already (once per incident)
    steady::time_point started;
    const instance* owner = nullptr;
    std::int32_t hook = 0;
    const void* args = nullptr;
    std::uint64_t session = 0;
};

// Every thread that ever called a hook. Never destroyed: thread_local enrolments may end
// after static destructors ran.
struct call_records {
    std::mutex lock;
    std::vector<std::shared_ptr<call_record>> all;
    std::atomic<std::uint64_t> incidents{0};
};

call_records& records()
{
    static call_records* const r = new call_records;
    return *r;
}

// The watchdog thread: every blocking_check_interval, one warn line per call that has held
// its thread for blocking_threshold (a sync hook that sleeps, waits on a lock or loops). It
// can only tell: a blocked event-loop thread cannot be taken back from a plugin. Stopped and
// joined at exit.
class watchdog {
public:
    static void ensure_started() { static watchdog w; }

    watchdog(const watchdog&) = delete;
    watchdog& operator=(const watchdog&) = delete;
    ~watchdog()
    {
        {
            const std::lock_guard guard(lock_);
            stopped_ = true;
        }
        wake_.notify_one();
        if (thread_.joinable()) thread_.join();
    }

private:
    watchdog() : thread_([this] { run(); }) {}

    void run()
    {
        std::unique_lock lock(lock_);
        while (!stopped_) {
            wake_.wait_for(lock, blocking_check_interval, [this] { return stopped_; });
            if (stopped_) return;
            lock.unlock();
            scan();
            lock.lock();
        }
    }

    static void scan()
    {
        struct incident {
            const instance* owner;
            std::uint64_t session;
            std::string plugin, key, hook;
            long long ms;
        };
        std::vector<std::shared_ptr<call_record>> all;
        {
            const std::lock_guard guard(records().lock);
            all = records().all;
        }
        std::vector<incident> found;
        const auto now = steady::now();
        for (const auto& r : all) {
            const std::lock_guard guard(r->lock);
            if (!r->active || r->reported || now - r->started < blocking_threshold) continue;
            r->reported = true;
            found.push_back({r->owner, r->session, r->owner->name, r->owner->key,
                             std::string(hook_label(r->hook, r->args)),
                             std::chrono::duration_cast<std::chrono::milliseconds>(now - r->started).count()});
        }
        for (const incident& i : found) {
            records().incidents.fetch_add(1, std::memory_order_relaxed);
            log_sink& sink = log_for(i.owner);
            if (sink.enabled(log_level::warn))
                sink.write(log_level::warn, "session=" + std::to_string(i.session) +
                                                " event=plugin_blocking plugin=" + i.plugin + " key=" + i.key +
                                                " hook=" + escaped(i.hook, 40) + " ms=" + std::to_string(i.ms));
        }
    }

    std::mutex lock_;
    std::condition_variable wake_;
    bool stopped_ = false;
    std::thread thread_;  // last: starts after the members it uses exist
};

// This thread's record, enrolled on its first hook call and removed when the thread ends.
class enrolment {
public:
    enrolment() : record_(std::make_shared<call_record>())
    {
        watchdog::ensure_started();
        const std::lock_guard guard(records().lock);
        records().all.push_back(record_);
    }
    enrolment(const enrolment&) = delete;
    enrolment& operator=(const enrolment&) = delete;
    ~enrolment()
    {
        const std::lock_guard guard(records().lock);
        auto& all = records().all;
        all.erase(std::remove(all.begin(), all.end(), record_), all.end());
    }
    call_record& record() noexcept { return *record_; }

private:
    std::shared_ptr<call_record> record_;
};

call_record& this_thread_record()
{
    thread_local enrolment e;
    return e.record();
}

}  // namespace

std::uint64_t blocking_incidents() noexcept { return records().incidents.load(std::memory_order_relaxed); }

// --------------------------------------------------------------------------------------------
// Calls and verdicts
// --------------------------------------------------------------------------------------------

int32_t invoke(const hook_entry& e, asiosmtpd_call& call, const void* args) noexcept
{
    call.owner = e.owner;
    call_record& rec = this_thread_record();
    const auto started = steady::now();
    {
        const std::lock_guard guard(rec.lock);
        rec.active = true;
        rec.reported = false;
        rec.started = started;  // waiting for the instance lock counts: the thread is held all the same
        rec.owner = e.owner;
        rec.hook = call.hook;
        rec.args = args;
        rec.session = call.session != nullptr ? call.session->session_id() : 0;
    }
    int32_t verdict = 0;
    if (e.owner->thread_safe) {
        verdict = e.fn(e.owner->self, &call, args);
    } else {
        const std::lock_guard guard(e.owner->serial);
        verdict = e.fn(e.owner->self, &call, args);
    }
    bool reported = false;
    {
        const std::lock_guard guard(rec.lock);
        rec.active = false;
        reported = rec.reported;
    }
    if (reported) {
        // The end of an incident the watchdog logged: how long the thread was held in all.
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - started).count();
        log_sink& sink = log_for(e.owner);
        if (sink.enabled(log_level::warn))
            sink.write(log_level::warn, "session=" + std::to_string(rec.session) +
                                            " event=plugin_unblocked plugin=" + e.owner->name + " key=" + e.owner->key +
                                            " hook=" + escaped(hook_label(call.hook, args), 40) +
                                            " ms=" + std::to_string(ms));
    }
    return verdict;
}

std::string verdict_problem(int32_t verdict, std::uint16_t code, std::string_view text, bool auth_mechanism)
{
    unsigned fits = 0;  // the reply class the verdict takes; 0: any (CONTINUE ignores its reply)
    switch (verdict) {
    case ASIOSMTPD_CONTINUE: break;
    case ASIOSMTPD_ACCEPT: fits = 2; break;
    case ASIOSMTPD_REJECT:
    case ASIOSMTPD_REJECT_CLOSE: fits = 5; break;
    case ASIOSMTPD_TEMPFAIL:
    case ASIOSMTPD_TEMPFAIL_CLOSE: fits = 4; break;
    case ASIOSMTPD_AUTH_CHALLENGE:
        if (!auth_mechanism) return "AUTH_CHALLENGE outside an AUTH mechanism";
        // The challenge (set_auth_challenge, or complete()'s text): the 334 line must fit the
        // 1001-byte line limit once base64-encoded.
        if (text.size() > 700) return "AUTH challenge of " + std::to_string(text.size()) + " bytes (at most 700)";
        return {};
    default: return "unknown verdict " + std::to_string(verdict);
    }
    if (code == 0) return {};  // no reply: the verdict's default; the text is ignored
    // A reply the host would not send is a plugin error whatever the verdict.
    if (std::string problem = sdk::reply_problem(code, text); !problem.empty()) return problem;
    const unsigned cls = code / 100u;
    // ACCEPT takes 2xx, and 3xx (a command of a plugin's own may ask for more input).
    if (fits == 0 || cls == fits || (fits == 2 && cls == 3)) return {};
    static constexpr std::string_view names[] = {"", "", "ACCEPT", "", "TEMPFAIL", "REJECT"};
    return std::string(names[fits]) + " with reply code " + std::to_string(code);
}

proto::hook_result judge(int32_t verdict, std::uint16_t code, std::string text, bool auth_mechanism,
                         std::string_view refused, std::string& why)
{
    const auto fail = [&why](std::string reason) {
        why = std::move(reason);
        proto::hook_result r;
        r.verdict = proto::verdict::error;
        return r;
    };
    // A verdict given after a reply the host refused: answering the verdict's default (a 550
    // the operator never sees, say) would hide the bug; the session gets 451 and the log why.
    if (!refused.empty()) return fail(std::string(refused));
    if (verdict == ASIOSMTPD_AUTH_CHALLENGE) {
        if (std::string problem = verdict_problem(verdict, 0, {}, auth_mechanism); !problem.empty())
            return fail(std::move(problem));
        proto::hook_result r;
        r.verdict = proto::verdict::challenge;
        return r;
    }
    if (std::string problem = verdict_problem(verdict, code, text, auth_mechanism); !problem.empty())
        return fail(std::move(problem));
    proto::hook_result r;
    switch (verdict) {
    case ASIOSMTPD_CONTINUE: return r;  // verdict::none, no reply
    case ASIOSMTPD_ACCEPT: r.verdict = proto::verdict::accept; break;
    case ASIOSMTPD_REJECT: r.verdict = proto::verdict::reject; break;
    case ASIOSMTPD_REJECT_CLOSE: r.verdict = proto::verdict::reject_close; break;
    case ASIOSMTPD_TEMPFAIL: r.verdict = proto::verdict::tempfail; break;
    case ASIOSMTPD_TEMPFAIL_CLOSE: r.verdict = proto::verdict::tempfail_close; break;
    default: return fail("unknown verdict " + std::to_string(verdict));  // verdict_problem said so already
    }
    r.code = code;
    if (code != 0) r.text = std::move(text);
    return r;
}

// --------------------------------------------------------------------------------------------
// The chain
// --------------------------------------------------------------------------------------------

namespace {

std::span<const hook_entry> entries_for(const generation& gen, const proto::hook_request& req)
{
    switch (req.kind) {
    case proto::hook_kind::command: return {&gen.commands.at(req.command_index).handler, 1};
    case proto::hook_kind::auth_mechanism: return {&gen.auth_mechanisms.at(req.command_index).handler, 1};
    case proto::hook_kind::data_chunk: {
        // Live pieces go to the DATA_CHUNK plugins up to the first editor; those after it get
        // the edited message in the DATA chain (plugin.h "Message editing").
        std::span<const hook_entry> all = gen.hooks[ASIOSMTPD_HOOK_DATA_CHUNK];
        const std::size_t editor = gen.first_editor();
        if (editor == std::string::npos) return all;
        std::size_t n = 0;
        while (n < all.size() && gen.position(all[n].owner) <= editor) ++n;
        return all.first(n);
    }
    default: return gen.hooks.at(static_cast<std::size_t>(req.kind));
    }
}

asiosmtpd_str str(std::string_view v) noexcept { return asiosmtpd_str{v.data() != nullptr ? v.data() : "", v.size()}; }

}  // namespace

chain::chain(const generation& gen, const proto::hook_request& req, session_view& session, chain_events& events)
    : gen_(gen),
      req_(req),
      session_(session),
      events_(events),
      entries_(entries_for(gen, req))
{}

chain::chain(const generation& gen, const proto::hook_request& req, session_view& session, chain_events& events,
             const void* args)
    : gen_(gen),
      req_(req),
      session_(session),
      events_(events),
      entries_(entries_for(gen, req)),
      args_ptr_(args),
      args_given_(true)
{}

chain::~chain()
{
    abandon();
    if (req_.kind == proto::hook_kind::data) {
        // The message is over for the plugins: the held copy (its file) goes now.
        draft_.reset();
        session_.held.reset();
    }
}

std::chrono::milliseconds chain::timeout() const noexcept { return call_.owner->timeout; }

// The argument struct of plugin.h for this hook. Views point into the engine and the session.
const void* chain::build_arguments()
{
    arguments& a = args_;
    switch (req_.kind) {
    case proto::hook_kind::connect:
        a.connect = {sizeof a.connect, str(session_.peer_address()), session_.peer_port(),
                     str(session_.local_address()), session_.local_port()};
        return &a.connect;
    case proto::hook_kind::helo:
    case proto::hook_kind::ehlo: a.helo = {sizeof a.helo, str(req_.argument)}; return &a.helo;
    case proto::hook_kind::mail:
    case proto::hook_kind::rcpt:
    case proto::hook_kind::vrfy:
        for (const auto& p : req_.params) a.params.push_back(str(p));
        a.address = {sizeof a.address, str(req_.argument), a.params.empty() ? nullptr : a.params.data(),
                     a.params.size()};
        return &a.address;
    case proto::hook_kind::data:
    case proto::hook_kind::data_chunk: {
        const proto::settings& s = session_.smtp().config();
        a.data = {};
        a.data.struct_size = sizeof a.data;
        a.data.content = req_.streamed ? nullptr : reinterpret_cast<const std::uint8_t*>(req_.content.data());
        a.data.size = req_.streamed ? 0 : req_.content.size();
        a.data.flags = ASIOSMTPD_DATA_DOT_UNSTUFFED | ASIOSMTPD_DATA_CRLF |
                       (s.decode_data ? ASIOSMTPD_DATA_DECODED : 0u) |
                       (s.decode_data && s.enable_smtputf8 ? ASIOSMTPD_DATA_UTF8 : 0u) |
                       (req_.streamed ? ASIOSMTPD_DATA_STREAMED : 0u) |
                       (req_.kind == proto::hook_kind::data_chunk && req_.last_chunk ? ASIOSMTPD_DATA_LAST_CHUNK : 0u);
        a.data.message_size = req_.content_size;
        return &a.data;
    }
    case proto::hook_kind::noop:
    case proto::hook_kind::unknown:
    case proto::hook_kind::command:
        a.command = {sizeof a.command, str(req_.verb), str(req_.argument), req_.has_argument ? 1 : 0};
        return &a.command;
    case proto::hook_kind::auth_check:
    case proto::hook_kind::auth_mechanism:
        a.auth = {};
        a.auth.struct_size = sizeof a.auth;
        if (req_.kind == proto::hook_kind::auth_check) {
            a.auth.mechanism = str(req_.argument);
            a.auth.authzid = str(req_.authzid);
            a.auth.login = str(req_.login);
            a.auth.password = str(req_.password);
            a.auth.response = str({});
        } else {
            a.auth.mechanism = str(req_.verb);
            a.auth.authzid = a.auth.login = a.auth.password = str({});
            a.auth.response = str(req_.argument);
            a.auth.has_response = req_.has_argument ? 1 : 0;
            a.auth.step = req_.step;
        }
        return &a.auth;
    case proto::hook_kind::proxy:
        a.proxy = {};
        a.proxy.struct_size = sizeof a.proxy;
        if (const proxy::header* h = session_.proxy_header()) {
            for (const auto& t : h->tlvs) {
                a.tlv_bytes.push_back(static_cast<char>(t.type));
                a.tlv_bytes.push_back(static_cast<char>((t.value.size() >> 8) & 0xff));
                a.tlv_bytes.push_back(static_cast<char>(t.value.size() & 0xff));
                a.tlv_bytes += t.value;
            }
            a.proxy.version = h->version;
            a.proxy.command = h->command;
            a.proxy.family = h->family;
            a.proxy.protocol = h->protocol;
            a.proxy.src_address = str(h->src_address);
            a.proxy.src_port = h->src_port;
            a.proxy.dst_address = str(h->dst_address);
            a.proxy.dst_port = h->dst_port;
            a.proxy.tlvs = str(a.tlv_bytes);
            a.proxy.proxy_address = str(session_.proxy_via());
        }
        return &a.proxy;
    case proto::hook_kind::rset:
    case proto::hook_kind::quit:
    case proto::hook_kind::session_close:
    case proto::hook_kind::txn_end:
    case proto::hook_kind::starttls: return nullptr;
    }
    return nullptr;
}

void chain::fail_host(std::string why)
{
    events_.host_failed(proto::hook_name(req_.kind), why);
    result_ = proto::hook_result{};
    result_.verdict = proto::verdict::error;
    plan_.clear();
    entries_ = {};
}

// Before the first call: with an editor configured, the live pieces are held (when the DATA
// hooks take the message in pieces) and the DATA chain is planned. False: the chain is over.
bool chain::prepare_editing()
{
    if (args_given_ || (req_.kind != proto::hook_kind::data && req_.kind != proto::hook_kind::data_chunk)) return true;
    const std::size_t editor = gen_.first_editor();
    if (editor == std::string::npos) return true;
    const bool whole = session_.smtp().config().data_whole_message;
    if (req_.kind == proto::hook_kind::data_chunk) {
        if (whole) return true;  // the engine keeps the message
        std::string error;
        if (req_.content_size == req_.content.size() || !session_.held)
            session_.held = std::make_unique<spool>(gen_.spool);  // the first piece
        if (!session_.held->append(req_.content, error)) {
            session_.held.reset();
            fail_host("the message could not be held for the plugins after an editor: " + error);
            return false;
        }
        return true;
    }
    if (req_.streamed && !session_.held) return true;  // nothing held: nothing to edit
    draft_ = std::make_unique<draft>(session_.smtp().current_envelope(), req_.content,
                                     req_.streamed ? session_.held.get() : nullptr, gen_.spool);
    for (std::size_t i = 0; i < gen_.instances.size(); ++i) {
        const instance* inst = gen_.instances[i].get();
        if (i > editor)
            for (const hook_entry& c : gen_.hooks[ASIOSMTPD_HOOK_DATA_CHUNK])
                if (c.owner == inst) plan_.push_back({&c, true});
        for (const hook_entry& d : gen_.hooks[ASIOSMTPD_HOOK_DATA])
            if (d.owner == inst) plan_.push_back({&d, false});
    }
    return true;
}

// A DATA call's arguments with the message as the plugins before it left it.
const void* chain::data_arguments(std::string& error)
{
    asiosmtpd_data_args& d = args_.data;
    d.message_size = draft_->size();
    if (req_.streamed) return &d;
    std::string_view whole;
    if (!draft_->whole(whole, error)) return nullptr;
    d.content = reinterpret_cast<const std::uint8_t*>(whole.data());
    d.size = whole.size();
    return &d;
}

// The next piece of the edited message for the replay step plan_[next_].
const void* chain::next_piece(std::string& error)
{
    const std::size_t chunk = std::max<std::size_t>(session_.smtp().config().data_chunk_size, 1);
    piece_.clear();
    if (!draft_->read(replay_at_, chunk, piece_, error)) return nullptr;
    const std::uint64_t total = draft_->size();
    replay_at_ += piece_.size();
    const bool last = replay_at_ >= total;
    piece_args_ = args_.data;
    piece_args_.content = reinterpret_cast<const std::uint8_t*>(piece_.data());
    piece_args_.size = piece_.size();
    piece_args_.flags = (args_.data.flags & ~ASIOSMTPD_DATA_STREAMED) | (last ? ASIOSMTPD_DATA_LAST_CHUNK : 0u);
    piece_args_.message_size = replay_at_;
    if (last) {
        replay_at_ = 0;
        ++next_;
    }
    return &piece_args_;
}

bool chain::run()
{
    if (!started_) {
        started_ = true;
        if (!entries_.empty() && !args_given_) args_ptr_ = build_arguments();
        if (!prepare_editing()) return false;
    }
    const std::size_t steps = plan_.empty() ? entries_.size() : plan_.size();
    while (next_ < steps) {
        const hook_entry* entry = nullptr;
        std::int32_t hook = static_cast<std::int32_t>(req_.kind);
        if (plan_.empty()) {
            entry = &entries_[next_++];
        } else {
            const step s = plan_[next_];
            entry = s.entry;
            std::string error;
            if (s.replay) {
                hook = ASIOSMTPD_HOOK_DATA_CHUNK;
                args_ptr_ = next_piece(error);
            } else {
                ++next_;
                args_ptr_ = data_arguments(error);
            }
            if (args_ptr_ == nullptr) {
                fail_host("the edited message could not be read: " + error);
                return false;
            }
        }
        call_ = asiosmtpd_call{};
        call_.session = &session_;
        call_.hook = hook;
        call_.draft = draft_.get();
        call_.spool = &gen_.spool;
        started_at_ = std::chrono::steady_clock::now();
        const std::int32_t verdict = invoke(*entry, call_, args_ptr_);
        call_.active = false;
        std::string why;
        if (verdict == ASIOSMTPD_PENDING) {
            if (call_.pending) return true;  // the driver waits, then resume()
            why = "returned PENDING without suspend()";
        } else if (call_.pending) {
            cancel(std::exchange(call_.token, 0));
            call_.pending.reset();
            why = "suspended the call but returned a verdict";
        }
        if (finish_entry(verdict, std::move(why))) return false;
    }
    return false;
}

bool chain::resume(std::string_view not_completed)
{
    cancel(std::exchange(call_.token, 0));  // from here on, complete() answers E_GONE
    const std::shared_ptr<pending_call> p = std::move(call_.pending);
    int32_t verdict = ASIOSMTPD_CONTINUE;
    std::string why;
    {
        const std::lock_guard guard(p->lock);
        p->notify = nullptr;
        if (!p->done) {
            why = not_completed.empty() ? std::string("did not complete") : std::string(not_completed);
        } else {
            verdict = p->verdict;
            call_.code = p->code;
            call_.text = std::move(p->text);
            call_.refused_reply = std::move(p->refused);
            for (std::size_t i = 0; i < p->rcpt_replies.size(); ++i) {
                if (p->rcpt_replies[i].first == 0) continue;
                if (call_.rcpt_replies.size() <= i) call_.rcpt_replies.resize(i + 1);
                call_.rcpt_replies[i] = std::move(p->rcpt_replies[i]);
            }
            if (!p->edits.empty()) call_.edits = std::move(p->edits);
            if (!p->identity.empty()) call_.auth_identity = std::move(p->identity);
            if (verdict == ASIOSMTPD_AUTH_CHALLENGE) {
                // From complete(), a challenge travels as the text (plugin.h).
                call_.auth_challenge = std::exchange(call_.text, {});
                call_.code = 0;
            }
        }
    }
    if (finish_entry(verdict, std::move(why))) return false;
    return run();
}

void chain::abandon() noexcept
{
    if (call_.token == 0) return;
    cancel(std::exchange(call_.token, 0));
    if (call_.pending) {
        const std::lock_guard guard(call_.pending->lock);
        call_.pending->notify = nullptr;
    }
    call_.pending.reset();
}

// One entry answered (`why`: it failed before giving a verdict). True when the chain ends here.
bool chain::finish_entry(int32_t verdict, std::string why)
{
    // A reply the host refused (set_reply(), set_rcpt_reply(), complete()) and that was not
    // replaced: the verdict came without the reply the plugin meant.
    std::string refused = std::move(call_.refused_reply);
    if (refused.empty() && !call_.refused_rcpt_replies.empty())
        refused = std::move(call_.refused_rcpt_replies.front().second);
    proto::hook_result r;
    if (why.empty())
        r = judge(verdict, call_.code, std::move(call_.text), req_.kind == proto::hook_kind::auth_mechanism, refused,
                  why);
    else r.verdict = proto::verdict::error;
    if (r.verdict != proto::verdict::error) {
        r.challenge = std::move(call_.auth_challenge);
        r.identity = std::move(call_.auth_identity);
        r.rcpt_replies = std::move(call_.rcpt_replies);
    }
    // An editor's edits count when its call goes on (or accepts): the plugins after it see them.
    if ((r.verdict == proto::verdict::none || r.verdict == proto::verdict::accept) && !call_.edits.empty()) {
        std::string error;
        if (draft_ == nullptr || !draft_->apply(std::exchange(call_.edits, {}), error)) {
            r = proto::hook_result{};
            r.verdict = proto::verdict::error;
            why = "its edits could not be applied: " + error;
        }
    }
    const instance& owner = *call_.owner;
    events_.answered(owner, hook_label(call_.hook, args_ptr_), std::chrono::steady_clock::now() - started_at_, r, why);
    if (r.verdict != proto::verdict::none) decided_by_ = owner.name;
    // A piece of the message goes to every plugin that takes pieces: ACCEPT goes on, as
    // CONTINUE does (plugin.h, DATA_CHUNK); only a refusal ends the chain.
    if (call_.hook == ASIOSMTPD_HOOK_DATA_CHUNK && r.verdict == proto::verdict::accept) return false;
    if (r.verdict == proto::verdict::none) return false;
    result_ = std::move(r);
    return true;
}

slots& session_view::data_slots() noexcept
{
    // Transaction slots end with their transaction (RSET, HELO/EHLO, end of DATA), after TXN_END.
    if (!ending_ && smtp().envelope_serial() != slots_serial_) {
        own_slots_.clear_transaction();
        slots_serial_ = smtp().envelope_serial();
    }
    return own_slots_;
}

void end_transactions(const generation& gen, session_view& session, proto::engine& engine) noexcept
{
    if (engine.has_transaction_ends()) {
        for (const proto::transaction_end& e : engine.take_transaction_ends()) {
            asiosmtpd_txn_end_args a{};
            a.struct_size = sizeof a;
            a.outcome = static_cast<std::int32_t>(e.outcome);
            a.code = e.code;
            a.reply = str(e.reply);
            a.reason = str(e.reason);
            a.mail_from = str(e.mail_from);
            a.rcpt_count = e.rcpts;
            a.size = e.size;
            session.ending_ = true;  // the ended transaction's slots stay for its TXN_END
            notify(gen, ASIOSMTPD_HOOK_TXN_END, session, &a);
            session.ending_ = false;
        }
    }
    (void)session.data_slots();  // frees the ended transactions' slots
}

void notify(const generation& gen, std::int32_t hook, session_view& session, const void* args) noexcept
{
    for (const hook_entry& entry : gen.hooks[static_cast<std::size_t>(hook)]) {
        asiosmtpd_call call;
        call.session = &session;
        call.hook = hook;
        (void)invoke(entry, call, args);  // a notification: the verdict is ignored
        call.active = false;
        if (call.token != 0) cancel(call.token);
    }
}

}  // namespace asiosmtpd::plugin
