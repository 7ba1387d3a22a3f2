// SPDX-License-Identifier: Apache-2.0
// policy: a client of Postfix's SMTP access policy delegation protocol (postgrey, policyd-spf,
// policyd-rate-limit, ...). At each configured stage the hook builds the request Postfix would
// send (protocol.hpp), suspends, and one of the plugin's worker threads asks the server over a
// pooled connection (TCP or UNIX socket, non-blocking with poll and one deadline per request);
// the answer's action becomes the hook's verdict and reply. The event-loop thread never waits.
//
// Connections are reused: a worker takes an idle one (closing those idle longer than max_idle,
// or that the server closed or wrote to out of turn), and gives it back after a clean answer.
// A reused connection that turns out closed before the first byte of the answer is replaced
// once by a fresh one (the server may close idle connections). After a timeout or a garbled
// answer the connection is closed, never reused. An idle connection is closed after max_idle
// seconds by the plugin's reaper thread.
//
// When the server cannot be asked in time (down, slow, garbage, an action this client does not
// know) `default_action` decides: dunno (the default), defer (451 4.3.5) or reject (550 5.7.1).
// PREPEND (as Postfix: the header goes at the top of the message, several in the order they
// were given) uses message editing (plugin ABI 1.3): a PREPEND at CONNECT or HELO applies to
// every message of the session, one at MAIL, RCPT or VRFY to the transaction's message, one at
// END-OF-MESSAGE to that message; the plugin's DATA hook inserts them. With `prepend: false`
// the plugin is no editor and a PREPEND is only logged.
#define ASIOSMTPD_PLUGIN_MIN_ABI_MINOR 3u  // PREPEND: message editing
#include "delivery_common.hpp"
#include "protocol.hpp"

#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/reply_rules.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;
namespace ap = asiosmtpd::plugins;
namespace pp = asiosmtpd::plugins::policy;
using clock_type = std::chrono::steady_clock;

/// The server could not be asked. `closed`: the peer closed or reset the connection (a
/// reused connection may just have been closed while idle); otherwise a timeout or error.
struct io_error : std::runtime_error {
    io_error(const std::string& what, bool closed_by_peer) : std::runtime_error(what), closed(closed_by_peer) {}
    bool closed;
};

/// A connection to the endpoint, made before `deadline` (io_error otherwise).
ap::unique_fd open_connection(const pp::endpoint& e, clock_type::time_point deadline)
{
    sockaddr_storage storage{};
    socklen_t size = 0;
    int family = AF_UNIX;
    if (e.unix_socket) {
        auto* sun = reinterpret_cast<sockaddr_un*>(&storage);
        sun->sun_family = AF_UNIX;
        std::memcpy(sun->sun_path, e.path.data(), e.path.size());  // length checked by parse_endpoint
        size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + e.path.size() + 1);
    } else if (e.ipv6) {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(&storage);
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(e.port);
        ::inet_pton(AF_INET6, e.host.c_str(), &sin6->sin6_addr);
        size = sizeof *sin6;
        family = AF_INET6;
    } else {
        auto* sin = reinterpret_cast<sockaddr_in*>(&storage);
        sin->sin_family = AF_INET;
        sin->sin_port = htons(e.port);
        ::inet_pton(AF_INET, e.host.c_str(), &sin->sin_addr);
        size = sizeof *sin;
        family = AF_INET;
    }
    ap::unique_fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) throw io_error("socket: " + ap::errno_text(errno), false);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&storage), size) != 0) {
        // A UNIX socket whose listen queue is full says EAGAIN; wait for it like for TCP.
        if (errno != EINPROGRESS && errno != EAGAIN)
            throw io_error("cannot connect to " + e.text() + ": " + ap::errno_text(errno), false);
        if (!ap::wait_ready(fd.get(), POLLOUT, deadline))
            throw io_error("connecting to " + e.text() + " timed out", false);
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) throw io_error("cannot connect to " + e.text() + ": " + ap::errno_text(err), false);
    }
    return fd;
}

void send_all(int fd, std::string_view data, clock_type::time_point deadline)
{
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
        if (n > 0) {
            done += static_cast<std::size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!ap::wait_ready(fd, POLLOUT, deadline)) throw io_error("timed out sending the request", false);
            continue;
        }
        const int err = errno;
        throw io_error("sending the request failed: " + ap::errno_text(err), err == EPIPE || err == ECONNRESET);
    }
}

/// Reads until the answer is complete or garbled (the reader's state says which).
void read_answer(int fd, pp::response_reader& reader, clock_type::time_point deadline)
{
    char buf[4096];
    for (;;) {
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            if (reader.feed(std::string_view(buf, static_cast<std::size_t>(n))) != pp::response_reader::state::more)
                return;
            continue;
        }
        if (n == 0) throw io_error("the policy server closed the connection without an answer", true);
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (!ap::wait_ready(fd, POLLIN, deadline)) throw io_error("timed out waiting for the answer", false);
            continue;
        }
        const int err = errno;
        throw io_error("reading the answer failed: " + ap::errno_text(err), err == ECONNRESET);
    }
}

/// True when nothing is waiting on an idle connection: the server neither closed it nor said
/// anything out of turn.
bool quiet(int fd) noexcept
{
    struct pollfd p {};
    p.fd = fd;
    p.events = POLLIN | POLLRDHUP;
    return ::poll(&p, 1, 0) == 0;
}

/// A value for a log field, control bytes as \xNN. The host's log escapes '"' in plugin lines,
/// so values are not quoted: a free text (a reply, an error) is the line's last field.
std::string field(std::string_view value) { return ap::escape_controls(value.substr(0, 400)); }

std::string hex(std::uint64_t v)
{
    static constexpr char digits[] = "0123456789ABCDEF";
    std::string out;
    do {
        out.insert(out.begin(), digits[v & 15]);
        v >>= 4;
    } while (v != 0);
    return out;
}

/// The address as the policy server wants it: without <>, empty for the null sender.
std::string bare(std::string_view address)
{
    if (address == "<>") return {};
    return std::string(address);
}

/// MAIL's SIZE=n, or 0.
std::uint64_t declared_size(const std::vector<std::string_view>& params)
{
    for (std::string_view p : params) {
        if (p.size() <= 5 || p.compare(0, 5, "SIZE=") != 0) continue;
        std::uint64_t n = 0;
        for (const char ch : p.substr(5)) {
            if (ch < '0' || ch > '9' || n > (UINT64_MAX - 9) / 10) return 0;
            n = n * 10 + static_cast<std::uint64_t>(ch - '0');
        }
        return n;
    }
    return 0;
}

class policy_client {
public:
    explicit policy_client(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys(
            {"address", "stages", "timeout", "default_action", "workers", "max_idle", "policy_context", "prepend"});
        const std::string address = cfg.require("address").as_string();
        try {
            endpoint_ = pp::parse_endpoint(address, reg.config_dir());
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(std::string("address: ") + e.what());
        }
        if (const auto s = cfg.get("stages"); s && !s->is_null()) {
            s->expect_list();
            if (s->size() == 0) throw std::invalid_argument("stages: name at least one stage");
            for (const sdk::config& item : s->items()) {
                const std::string name = item.as_string();
                pp::stage st;
                try {
                    st = pp::parse_stage(name);
                } catch (const std::invalid_argument& e) {
                    throw std::invalid_argument(item.path() + ": " + e.what());
                }
                if (wants(st)) throw std::invalid_argument(item.path() + ": '" + name + "' is listed twice");
                stages_ |= bit(st);
            }
        } else {
            stages_ = bit(pp::stage::rcpt);
        }
        const auto t = cfg.get("timeout");
        const double timeout = t && !t->is_null() ? t->as_double() : 10.0;
        if (!(timeout > 0 && timeout <= 3600))
            throw std::invalid_argument("timeout: must be more than 0 and at most 3600 seconds");
        timeout_ = std::chrono::milliseconds(static_cast<long long>(timeout * 1000));
        std::string fallback = cfg.string_or("default_action", "dunno");
        for (char& ch : fallback)
            if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch - 'A' + 'a');
        if (fallback == "dunno") fallback_ = pp::fallback::dunno;
        else if (fallback == "defer") fallback_ = pp::fallback::defer;
        else if (fallback == "reject") fallback_ = pp::fallback::reject;
        else throw std::invalid_argument("default_action: expected dunno, defer or reject, got '" + fallback + "'");
        const auto w = cfg.get("workers");
        const std::int64_t workers = w && !w->is_null() ? w->as_int(1, 64) : 4;
        max_pooled_ = static_cast<std::size_t>(workers);
        const auto m = cfg.get("max_idle");
        const double max_idle = m && !m->is_null() ? m->as_double() : 300.0;
        if (!(max_idle > 0 && max_idle <= 86400))
            throw std::invalid_argument("max_idle: must be more than 0 and at most 86400 seconds");
        max_idle_ = std::chrono::milliseconds(static_cast<long long>(max_idle * 1000));
        policy_context_ = cfg.string_or("policy_context", "");
        if (const auto p = cfg.get("prepend"); p && !p->is_null()) prepend_ = p->as_bool();
        if (ap::has_control(policy_context_)) throw std::invalid_argument("policy_context: no control characters");
        instance_prefix_ = hex(static_cast<std::uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()) &
                               0xFFFFFFFFFFu);

        // CONNECT and MAIL always: the server address for every request, and the transaction
        // the `instance` attribute names, even when those stages are not asked.
        reg.on<&policy_client::on_connect>(sdk::hook::connect);
        reg.on<&policy_client::on_mail>(sdk::hook::mail);
        if (wants(pp::stage::helo)) {
            reg.on<&policy_client::on_helo>(sdk::hook::helo);
            reg.on<&policy_client::on_ehlo>(sdk::hook::ehlo);
        }
        if (wants(pp::stage::rcpt)) reg.on<&policy_client::on_rcpt>(sdk::hook::rcpt);
        if (wants(pp::stage::vrfy)) reg.on<&policy_client::on_vrfy>(sdk::hook::vrfy);
        if (prepend_) reg.editor();  // the DATA hook puts the PREPEND headers at the top
        if (wants(pp::stage::data) || prepend_) {
            reg.on<&policy_client::on_data>(sdk::hook::data);
            // A DATA hook without DATA_CHUNK would make the server hold every message whole for
            // all plugins; this one only needs the size, so it takes the chunks (and ignores them).
            (void)reg.try_on<&policy_client::on_chunk>(sdk::hook::data_chunk);
        }
        reaper_ = std::thread([this] { reap(); });
        try {
            pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { run(j); });
        } catch (...) {
            stop_reaper();
            throw;
        }
    }
    policy_client(const policy_client&) = delete;
    policy_client& operator=(const policy_client&) = delete;
    ~policy_client()
    {
        pool_.reset();  // each worker returns by its request's deadline
        stop_reaper();
    }

    // -- Hooks (event-loop threads: build the request, suspend, hand it to a worker) --------

    sdk::verdict on_connect(sdk::call& c, const sdk::connect_args& a)
    {
        auto& s = c.slot<session_state>(sdk::scope::session);
        s.server_address = std::string(a.local_address);
        s.server_port = std::to_string(a.local_port);
        if (!wants(pp::stage::connect)) return sdk::verdict::continue_;
        return ask(c, pp::stage::connect, base(c, "CONNECT", false));
    }

    sdk::verdict on_helo(sdk::call& c, const sdk::helo_args& a) { return helo(c, a, "HELO"); }
    sdk::verdict on_ehlo(sdk::call& c, const sdk::helo_args& a) { return helo(c, a, "EHLO"); }

    sdk::verdict on_mail(sdk::call& c, const sdk::address_args& a)
    {
        if (!wants(pp::stage::mail)) {
            (void)instance(c, true);
            return sdk::verdict::continue_;
        }
        pp::request r = base(c, "MAIL", true);
        r.sender = bare(a.address);
        r.size = declared_size(a.params.to_vector());
        return ask(c, pp::stage::mail, std::move(r));
    }

    sdk::verdict on_rcpt(sdk::call& c, const sdk::address_args& a)
    {
        pp::request r = base(c, "RCPT", false);
        r.recipient = bare(a.address);
        return ask(c, pp::stage::rcpt, std::move(r));
    }

    sdk::verdict on_vrfy(sdk::call& c, const sdk::address_args& a)
    {
        pp::request r = base(c, "VRFY", false);
        r.recipient = bare(a.address);
        return ask(c, pp::stage::vrfy, std::move(r));
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& a)
    {
        // The PREPEND headers of the session, then of the transaction, at the top in order.
        std::size_t top = 0;
        if (prepend_) {
            if (const session_state* s = c.find_slot<session_state>(sdk::scope::session))
                top = prepend_all(c, *s->prepends, top);
            if (const txn_state* t = c.find_slot<txn_state>(sdk::scope::txn)) top = prepend_all(c, *t->prepends, top);
        }
        if (!wants(pp::stage::data)) return sdk::verdict::continue_;
        pp::request r = base(c, "END-OF-MESSAGE", false);
        const std::vector<std::string_view> rcpts = c.rcpts();
        r.recipient_count = rcpts.size();
        if (rcpts.size() == 1) r.recipient = bare(rcpts.front());
        r.size = a.message_size;
        return ask(c, pp::stage::data, std::move(r), top);
    }

    sdk::verdict on_chunk(sdk::call&, const sdk::data_args&) { return sdk::verdict::continue_; }

private:
    /// PREPEND headers ("Name: value") a worker found, for the DATA hook.
    struct prepend_list {
        std::mutex lock;
        std::vector<std::string> headers;
    };
    struct session_state {
        std::string server_address;
        std::string server_port;
        std::uint64_t transactions = 0;
        std::shared_ptr<prepend_list> prepends = std::make_shared<prepend_list>();  // CONNECT, HELO
    };
    struct txn_state {
        std::string instance;
        std::shared_ptr<prepend_list> prepends = std::make_shared<prepend_list>();  // MAIL, RCPT, VRFY
    };

    struct job {
        sdk::pending pending;
        std::string request;
        clock_type::time_point deadline;
        std::uint64_t session = 0;
        pp::stage stage = pp::stage::rcpt;
        std::string client;
        std::string sender;
        std::string recipient;
        std::shared_ptr<prepend_list> prepends;  ///< where a PREPEND goes (not at END-OF-MESSAGE)
        std::size_t prepend_at = 0;              ///< END-OF-MESSAGE: the position for its PREPEND
    };

    struct pooled {
        ap::unique_fd fd;
        clock_type::time_point idle_since;
    };

    static unsigned bit(pp::stage s) noexcept { return 1u << static_cast<unsigned>(s); }
    bool wants(pp::stage s) const noexcept { return (stages_ & bit(s)) != 0; }

    sdk::verdict helo(sdk::call& c, const sdk::helo_args& a, const char* state)
    {
        pp::request r = base(c, state, false);
        r.helo_name = std::string(a.hostname);
        if (std::string_view(state) == "EHLO") r.protocol_name = "ESMTP";
        return ask(c, pp::stage::helo, std::move(r));
    }

    /// The `instance` attribute: one per transaction (a new one at each MAIL), "<prefix>.0" outside a transaction.
    std::string instance(sdk::call& c, bool new_transaction)
    {
        session_state& s = c.slot<session_state>(sdk::scope::session);
        const std::string prefix = instance_prefix_ + "." + hex(c.session().id) + ".";
        if (!new_transaction) {
            if (const txn_state* t = c.find_slot<txn_state>(sdk::scope::txn)) return t->instance;
            if (c.txn().mail_from.empty()) return prefix + "0";
        }
        txn_state& t = c.emplace_slot<txn_state>(sdk::scope::txn);
        t.instance = prefix + std::to_string(++s.transactions);
        return t.instance;
    }

    /// What every request says about the session and the transaction so far.
    pp::request base(sdk::call& c, const char* state, bool new_transaction)
    {
        const sdk::session_info s = c.session();
        pp::request r;
        r.protocol_state = state;
        r.protocol_name = s.extended_smtp ? "ESMTP" : "SMTP";
        r.helo_name = std::string(s.helo_name);
        if (s.peer_address.substr(0, 5) == "unix:") {
            // A client on a UNIX listener: what Postfix's smtpd says of a client that is not on
            // the Internet (smtpd_peer_not_inet): local, name "localhost", 127.0.0.1 port 0,
            // so that policy servers written for Postfix see an address they can parse.
            r.client_address = "127.0.0.1";
            r.client_port = "0";
            r.client_name = "localhost";
            r.reverse_client_name = "localhost";
        } else {
            r.client_address = std::string(s.peer_address);
            r.client_port = std::to_string(s.peer_port);
        }
        if (const session_state* ss = c.find_slot<session_state>(sdk::scope::session)) {
            r.server_address = ss->server_address;
            r.server_port = ss->server_port;
        }
        r.instance = instance(c, new_transaction);
        if (s.authenticated) r.sasl_username = std::string(s.auth_login);
        if (s.tls_active) {
            r.encryption_protocol = std::string(s.tls_version);
            r.encryption_cipher = std::string(s.tls_cipher);
            r.encryption_keysize = pp::cipher_bits(s.tls_cipher);
        }
        r.policy_context = policy_context_;
        if (!new_transaction) {
            const sdk::txn_info t = c.txn();
            if (!t.mail_from.empty()) {
                r.sender = bare(t.mail_from);
                r.size = declared_size(c.mail_params());
            }
        }
        return r;
    }

    /// Insert the list's headers at positions top, top + 1, ... (in the DATA hook).
    std::size_t prepend_all(sdk::call& c, prepend_list& list, std::size_t top)
    {
        std::vector<std::string> headers;
        {
            std::lock_guard<std::mutex> lock(list.lock);
            headers = list.headers;
        }
        for (const std::string& h : headers) {
            const std::size_t colon = h.find(':');
            try {
                c.edit(sdk::edit::insert_header(top, h.substr(0, colon), h.substr(colon + 1)));
                ++top;
            } catch (const sdk::error& e) {
                c.log(sdk::log_level::warn, "",
                      {{"event", "policy_prepend_refused"}, {"header", h}, {"error", sdk::status_name(e.status())}});
            }
        }
        return top;
    }

    sdk::verdict ask(sdk::call& c, pp::stage st, pp::request r, std::size_t prepend_at = 0)
    {
        job j;
        j.prepend_at = prepend_at;
        if (prepend_ && st != pp::stage::data) {
            if (st == pp::stage::connect || st == pp::stage::helo) {
                j.prepends = c.slot<session_state>(sdk::scope::session).prepends;
            } else if (txn_state* t = c.find_slot<txn_state>(sdk::scope::txn)) {
                j.prepends = t->prepends;
            }
        }
        j.request = pp::encode(r);
        j.deadline = clock_type::now() + timeout_;
        j.session = c.session().id;
        j.stage = st;
        j.client = std::move(r.client_address);
        j.sender = std::move(r.sender);
        j.recipient = std::move(r.recipient);
        j.pending = c.suspend();
        pool_->post(std::move(j));
        return sdk::verdict::pending;
    }

    // -- Workers ----------------------------------------------------------------------------

    void run(job& j)
    {
        pp::decision d;
        std::string error;
        if (clock_type::now() >= j.deadline) {
            error = "no worker was free within timeout";
        } else {
            try {
                d = pp::decide(exchange(j.request, j.deadline, j.session));
                if (d.what == pp::kind::unknown) error = "unknown action: " + d.note_text;
            } catch (const std::exception& e) {
                error = e.what();
            }
        }
        const std::string who = "session=" + std::to_string(j.session);
        const std::string where = " stage=" + std::string(pp::stage_config_name(j.stage)) +
                                  " client=" + field(j.client) + " sender=<" + field(j.sender) + ">" +
                                  (j.recipient.empty() ? std::string() : " rcpt=<" + field(j.recipient) + ">");
        bool from_default = false;
        if (!error.empty()) {
            d = pp::fallback_decision(fallback_);
            from_default = true;
            log_.warn(who + " event=policy_error server=" + field(endpoint_.text()) + where +
                      " default_action=" + d.name + " error=" + field(error));
        }
        switch (d.extra) {
        case pp::note::none: break;
        case pp::note::info: log_.info(who + " event=policy_info" + where + " text=" + field(d.note_text)); break;
        case pp::note::warn: log_.warn(who + " event=policy_warn" + where + " text=" + field(d.note_text)); break;
        case pp::note::prepend: prepend(j, d.note_text, who + where); break;
        case pp::note::unsupported:
            log_.warn(who + " event=policy_action_unsupported" + where + " action=" + field(d.note_text));
            break;
        case pp::note::ignored: log_.debug(who + " event=policy_ignored" + where + " action=" + d.name); break;
        }
        if (d.refuses()) {
            log_.info(who + " event=policy action=" + d.name + where + (from_default ? " source=default_action" : "") +
                      " reply=" + field(std::to_string(d.code) + " " + d.text));
        }
        complete(j, d);
    }

    /// A PREPEND action: at END-OF-MESSAGE an edit of this message now (from the worker,
    /// before the completion), earlier kept for the DATA hook; a header that is no
    /// "Name: value" is refused and logged.
    void prepend(job& j, const std::string& header, const std::string& where)
    {
        const std::size_t colon = header.find(':');
        const bool shaped =
            colon != std::string::npos && colon > 0 && header.find_first_of("\r\n") == std::string::npos;
        if (!prepend_ || !shaped) {
            log_.info(where.substr(0, where.find(' ')) + " event=policy_prepend_ignored" +
                      where.substr(where.find(' ')) +
                      " reason=" + (prepend_ ? "not a header field" : "prepend is off") + " header=" + field(header));
            return;
        }
        if (j.stage == pp::stage::data) {
            const asiosmtpd_status st = j.pending.edit(
                sdk::edit::insert_header(j.prepend_at, header.substr(0, colon), header.substr(colon + 1)));
            if (st != ASIOSMTPD_OK)
                log_.warn(where.substr(0, where.find(' ')) + " event=policy_prepend_refused" +
                          where.substr(where.find(' ')) + " status=" + sdk::status_name(st) +
                          " header=" + field(header));
            return;
        }
        if (!j.prepends) {
            log_.info(where.substr(0, where.find(' ')) + " event=policy_prepend_ignored" +
                      where.substr(where.find(' ')) + " reason=no transaction header=" + field(header));
            return;
        }
        std::lock_guard<std::mutex> lock(j.prepends->lock);
        j.prepends->headers.push_back(header);
    }

    void complete(job& j, const pp::decision& d)
    {
        sdk::verdict v = sdk::verdict::continue_;
        switch (d.what) {
        case pp::kind::dunno:
        case pp::kind::unknown: v = sdk::verdict::continue_; break;
        case pp::kind::accept: v = sdk::verdict::accept; break;
        case pp::kind::reject: v = sdk::verdict::reject; break;
        case pp::kind::tempfail: v = sdk::verdict::tempfail; break;
        case pp::kind::reject_close: v = sdk::verdict::reject_close; break;
        case pp::kind::tempfail_close: v = sdk::verdict::tempfail_close; break;
        }
        std::uint16_t code = d.refuses() ? d.code : 0;
        std::string text = d.text;
        if (code != 0 && !sdk::reply_problem(code, text, false).empty()) {
            // Cannot happen (reply_text() builds one valid line); should it, the verdict stays.
            text = code / 100 == 4 ? "4.7.1 Service unavailable" : "5.7.1 Access denied";
        }
        const asiosmtpd_status st = j.pending.complete(v, code, text);
        if (st != ASIOSMTPD_OK && st != ASIOSMTPD_E_GONE)
            log_.warn("session=" + std::to_string(j.session) +
                      " event=policy_error error=the host refused the verdict (" + sdk::status_name(st) + ")");
    }

    /// Sends the request and returns the answer's action, or throws.
    std::string exchange(const std::string& request, clock_type::time_point deadline, std::uint64_t session)
    {
        for (int attempt = 0;; ++attempt) {
            std::optional<pooled> c = take_idle();
            const bool reused = c.has_value();
            if (!c) {
                c.emplace();
                c->fd = open_connection(endpoint_, deadline);
                log_.debug("session=" + std::to_string(session) +
                           " event=policy_connect server=" + field(endpoint_.text()));
            }
            pp::response_reader reader;
            try {
                send_all(c->fd.get(), request, deadline);
                read_answer(c->fd.get(), reader, deadline);
            } catch (const io_error& e) {
                // The server closed an idle connection just now: once more on a fresh one.
                if (reused && e.closed && !reader.started() && attempt == 0 && clock_type::now() < deadline) continue;
                throw;
            }
            if (reader.feed({}) == pp::response_reader::state::bad)
                throw std::runtime_error("garbled answer: " + reader.error());
            if (!reader.extra()) give_back(std::move(*c));
            return reader.action();
        }
    }

    // -- The connection pool ------------------------------------------------------------------

    std::optional<pooled> take_idle()
    {
        std::lock_guard<std::mutex> lock(idle_mutex_);
        const auto now = clock_type::now();
        while (!idle_.empty()) {
            pooled p = std::move(idle_.back());
            idle_.pop_back();
            if (now - p.idle_since < max_idle_ && quiet(p.fd.get())) return p;
        }
        return std::nullopt;
    }

    void give_back(pooled p)
    {
        {
            std::lock_guard<std::mutex> lock(idle_mutex_);
            if (stopping_ || idle_.size() >= max_pooled_) return;
            p.idle_since = clock_type::now();
            idle_.push_back(std::move(p));
        }
        idle_cv_.notify_all();
    }

    // Closes connections idle for max_idle (Postfix's smtpd_policy_service_max_idle).
    void reap()
    {
        std::unique_lock<std::mutex> lock(idle_mutex_);
        while (!stopping_) {
            const auto now = clock_type::now();
            idle_.erase(std::remove_if(idle_.begin(), idle_.end(),
                                       [&](const pooled& p) { return now - p.idle_since >= max_idle_; }),
                        idle_.end());
            if (idle_.empty()) {
                idle_cv_.wait(lock, [this] { return stopping_ || !idle_.empty(); });
                continue;
            }
            auto first = idle_.front().idle_since;
            for (const pooled& p : idle_) first = std::min(first, p.idle_since);
            idle_cv_.wait_until(lock, first + max_idle_);
        }
        idle_.clear();
    }

    void stop_reaper() noexcept
    {
        {
            std::lock_guard<std::mutex> lock(idle_mutex_);
            stopping_ = true;
        }
        idle_cv_.notify_all();
        if (reaper_.joinable()) reaper_.join();
    }

    sdk::logger log_;
    pp::endpoint endpoint_;
    unsigned stages_ = 0;
    std::chrono::milliseconds timeout_{10000};
    pp::fallback fallback_ = pp::fallback::dunno;
    std::chrono::milliseconds max_idle_{300000};
    std::size_t max_pooled_ = 4;
    std::string policy_context_;
    std::string instance_prefix_;
    bool prepend_ = true;

    std::mutex idle_mutex_;  // guards idle_ and stopping_
    std::condition_variable idle_cv_;
    std::vector<pooled> idle_;
    bool stopping_ = false;
    std::thread reaper_;
    std::optional<sdk::worker_pool<job>> pool_;
};

}  // namespace

ASIOSMTPD_PLUGIN(policy_client, "policy", "1.1.0",
                 "asks a Postfix SMTP access policy server (postgrey, policyd-spf, ...) at the configured stages",
                 ASIOSMTPD_PF_THREAD_SAFE)
