// SPDX-License-Identifier: Apache-2.0
// milter: a client of the Sendmail milter protocol (version 6) as Postfix's smtpd implements it.
// One plugin entry is one milter. Per SMTP session the plugin opens one connection to the milter
// at CONNECT, negotiates (OPTNEG), and reports every stage: CONNECT, HELO/EHLO, MAIL, each RCPT,
// DATA, each header, end of headers, the body in chunks of at most 65535 bytes, end of message,
// ABORT before a new transaction, QUIT when the session ends; with Postfix's macros before each.
// The milter's verdicts become the SMTP replies; its changes at end of message become message
// edits (plugin ABI 1.3) that the plugins after this one (the delivering plugin) see.
//
// No hook blocks: every exchange with the milter runs on the plugin's worker threads while the
// hook is suspended. Commands whose reply the milter waives (NR_* flags) or that it does not
// want (NO* flags: only their macros go) are not waited for: they are queued and sent ahead of
// the next exchange. The message streams (DATA_CHUNK): each piece goes to the milter as it
// arrives, so a session holds one piece and one body chunk, not the message.
//
// Threads: a `link` (one per session) is shared by the session's slot and the job a worker runs
// on it. `io` is held by a worker for a whole exchange (socket, reader, message splitter); `m`
// guards the state the hooks read (phase, flags, queued bytes) and is only held for short,
// non-blocking sections. A hook that finds the previous exchange still running (the host gave up
// on it: plugins[].timeout shorter than the milter timeouts) treats the milter as failed.
#define ASIOSMTPD_PLUGIN_MIN_ABI_MINOR 3u  // message editing: needs a host of ABI 1.3

#include "delivery_common.hpp"
#include "message.hpp"
#include "protocol.hpp"

#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;
namespace ap = asiosmtpd::plugins;
namespace mp = asiosmtpd::plugins::milter;
using clock_type = std::chrono::steady_clock;
using millis = std::chrono::milliseconds;

/// The milter could not be used: unreachable, timed out, or broke the protocol.
struct milter_failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

enum class failure_action { tempfail, accept, reject };

const char* action_name(failure_action a)
{
    switch (a) {
    case failure_action::tempfail: return "tempfail";
    case failure_action::accept: return "accept";
    case failure_action::reject: return "reject";
    }
    return "?";
}

// Postfix's replies (milter8.c).
constexpr std::uint16_t reject_code = 550;
constexpr std::string_view reject_text = "5.7.1 Command rejected";
constexpr std::uint16_t tempfail_code = 451;
constexpr std::string_view tempfail_text = "4.7.1 Service unavailable - try again later";
constexpr std::string_view shutdown_text = "4.7.0 Server closing connection";
constexpr std::string_view failure_reject_text = "5.5.0 Service unavailable";
constexpr std::string_view edit_failed_text = "4.3.0 The mail filter's changes could not be applied - try again later";

// The stage names used in logs and in the macros config.
const char* stage_name(mp::stage s)
{
    switch (s) {
    case mp::stage::connect: return "connect";
    case mp::stage::helo: return "helo";
    case mp::stage::mail: return "mail";
    case mp::stage::rcpt: return "rcpt";
    case mp::stage::data: return "data";
    case mp::stage::eom: return "end_of_data";
    case mp::stage::eoh: return "end_of_header";
    }
    return "?";
}

// Postfix's default macro lists (milter_*_macros).
const std::array<std::string_view, mp::stage_count> default_macros = {
    "j {daemon_name} {daemon_addr} v _",                                                // connect
    "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",                // helo
    "i {auth_type} {auth_authen} {auth_author} {mail_addr} {mail_host} {mail_mailer}",  // mail
    "i {rcpt_addr} {rcpt_host} {rcpt_mailer}",                                          // rcpt
    "i",                                                                                // data
    "i",                                                                                // end of data
    "i",                                                                                // end of header
};

/// Known macro values at one moment: name as sent ("j", "{client_addr}") and value.
using macro_env = std::vector<std::pair<std::string, std::string>>;

/// What the client gets for one hook.
struct answer {
    sdk::verdict verdict = sdk::verdict::continue_;
    std::uint16_t code = 0;
    std::string text;

    static answer go_on() { return {}; }
    static answer refuse(std::uint16_t code, std::string text)
    {
        answer a;
        a.verdict = code == 421   ? sdk::verdict::tempfail_close
                    : code >= 500 ? sdk::verdict::reject
                                  : sdk::verdict::tempfail;
        a.code = code;
        a.text = std::move(text);
        return a;
    }
    bool refuses() const noexcept { return verdict != sdk::verdict::continue_ && verdict != sdk::verdict::accept; }
    std::string first_line() const { return std::to_string(code) + " " + text.substr(0, text.find('\n')); }
};

/// The milter's decision on one event.
struct decision {
    enum class kind { go_on, accept, discard, skip, refuse } what = kind::go_on;
    std::uint16_t code = 0;
    std::string text;
    char reply = 0;  // the reply packet ('c', 'r', 'y', ...), for logs
};

enum class phase {
    fresh,       // not connected yet
    ready,       // negotiated: events go to the milter
    failed,      // unusable for the rest of the session: default_action applies
    accept_con,  // the milter accepted the connection: no more events
    reject_con,  // the milter refused the connection: its reply persists
};

/// One milter connection: one SMTP session's.
struct link {
    link(std::string client_, std::uint64_t session_) : client(std::move(client_)), session(session_) {}

    // Set at creation, then read-only.
    const std::string client;  // the SMTP client's address, for logs
    const std::uint64_t session;

    // ---- worker side, under io -------------------------------------------------------------
    std::mutex io;
    ap::unique_fd fd;
    mp::reader in;
    std::optional<mp::message_splitter> split;  // the message being sent
    bool msg_done = false;                      // the milter decided on the message: no more message events
    bool body_skipped = false;                  // SMFIR_SKIP during the body
    bool replaced_body = false;                 // REPLBODY applied during end of message

    // ---- shared, under m ---------------------------------------------------------------------
    std::mutex m;
    phase ph = phase::fresh;
    mp::negotiated neg;
    std::optional<answer> persistent;  // the answer to MAIL/RCPT/DATA after a connection-level refusal or failure
    std::string outbuf;                // bytes to send ahead of the next exchange
    bool envelope_open = false;        // a MAIL went to the milter and no ABORT since
    bool busy = false;                 // an exchange is posted or running
    char skip_event = 0;               // SMFIR_SKIP: further events of this command are skipped
    // This transaction.
    std::string queue_id;
    bool accept_msg = false;  // the milter accepted the message: no more events for it
    bool discard = false;     // the milter asked to discard the message
    std::uint64_t fed = 0;    // message bytes handed over in pieces
    bool fed_last = false;    // the last piece was among them
    bool message_refused = false;

    void close_socket()
    {
        fd.reset();
        in.clear();
    }
};

// ------------------------------------------------------------------------------------------
// Socket I/O with deadlines (worker threads only).
// ------------------------------------------------------------------------------------------
class channel {
public:
    channel(link& l, const std::atomic<bool>& stopping) : l_(l), stopping_(stopping) {}

    void open(const mp::endpoint& ep, millis timeout)
    {
        const auto deadline = clock_type::now() + timeout;
        std::string why = "no address";
        if (ep.type == mp::endpoint::kind::unix_socket) {
            ap::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
            if (fd.get() < 0) throw milter_failure("socket: " + ap::errno_text(errno));
            sockaddr_un sa{};
            sa.sun_family = AF_UNIX;
            std::memcpy(sa.sun_path, ep.path.data(), ep.path.size());
            if (try_connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa, deadline, why)) {
                l_.fd = std::move(fd);
                return;
            }
            throw milter_failure("cannot connect to unix:" + ep.path + ": " + why);
        }
        addrinfo hints{};
        hints.ai_family = ep.type == mp::endpoint::kind::inet6 ? AF_INET6 : AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_flags = AI_NUMERICSERV;
        addrinfo* res = nullptr;
        const std::string port = std::to_string(ep.port);
        if (const int rc = ::getaddrinfo(ep.host.c_str(), port.c_str(), &hints, &res); rc != 0)
            throw milter_failure("cannot resolve " + ep.host + ": " + ::gai_strerror(rc));
        std::unique_ptr<addrinfo, void (*)(addrinfo*)> guard(res, ::freeaddrinfo);
        for (addrinfo* ai = res; ai; ai = ai->ai_next) {
            ap::unique_fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
            if (fd.get() < 0) {
                why = ap::errno_text(errno);
                continue;
            }
            if (try_connect(fd.get(), ai->ai_addr, ai->ai_addrlen, deadline, why)) {
                const int one = 1;
                ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                l_.fd = std::move(fd);
                return;
            }
        }
        throw milter_failure("cannot connect to " + ep.host + ":" + port + ": " + why);
    }

    void send(std::string_view data, millis timeout)
    {
        auto deadline = clock_type::now() + timeout;
        std::size_t done = 0;
        while (done < data.size()) {
            const ssize_t n = ::send(l_.fd.get(), data.data() + done, data.size() - done, MSG_NOSIGNAL);
            if (n > 0) {
                done += static_cast<std::size_t>(n);
                deadline = clock_type::now() + timeout;  // progress
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (!wait(POLLOUT, deadline)) throw milter_failure("timed out writing to the milter");
                continue;
            }
            throw milter_failure("write to the milter failed: " + ap::errno_text(n < 0 ? errno : EPIPE));
        }
    }

    /// The next packet; `timeout` counts from now (a PROGRESS reply calls again: a new timeout).
    mp::reply_packet read(millis timeout)
    {
        const auto deadline = clock_type::now() + timeout;
        for (;;) {
            if (auto p = l_.in.next()) return std::move(*p);
            char buf[16384];
            const ssize_t n = ::recv(l_.fd.get(), buf, sizeof buf, 0);
            if (n > 0) {
                l_.in.feed(std::string_view(buf, static_cast<std::size_t>(n)));
                continue;
            }
            if (n == 0) throw milter_failure("the milter closed the connection");
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!wait(POLLIN, deadline))
                    throw milter_failure("timed out waiting for the milter's reply (" +
                                         std::to_string(timeout.count()) + " ms)");
                continue;
            }
            throw milter_failure("read from the milter failed: " + ap::errno_text(errno));
        }
    }

private:
    bool try_connect(int fd, const sockaddr* sa, socklen_t len, clock_type::time_point deadline, std::string& why)
    {
        if (::connect(fd, sa, len) == 0) return true;
        if (errno != EINPROGRESS && errno != EAGAIN) {
            why = ap::errno_text(errno);
            return false;
        }
        if (!wait_fd(fd, POLLOUT, deadline)) {
            why = "connect timed out";
            return false;
        }
        int err = 0;
        socklen_t elen = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0) {
            why = ap::errno_text(err);
            return false;
        }
        return true;
    }

    bool wait(short events, clock_type::time_point deadline) { return wait_fd(l_.fd.get(), events, deadline); }

    // Waits in slices, so that a plugin being destroyed does not wait for a whole timeout.
    bool wait_fd(int fd, short events, clock_type::time_point deadline)
    {
        for (;;) {
            if (stopping_.load(std::memory_order_acquire)) throw milter_failure("the server is stopping");
            const auto left = std::chrono::duration_cast<millis>(deadline - clock_type::now());
            if (left.count() <= 0) return false;
            pollfd p{};
            p.fd = fd;
            p.events = events;
            const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count() + 1, 200)));
            if (r > 0) return true;
            if (r < 0 && errno != EINTR) return false;
        }
    }

    link& l_;
    const std::atomic<bool>& stopping_;
};

// ------------------------------------------------------------------------------------------
// Macros
// ------------------------------------------------------------------------------------------
bool is_ipv6(std::string_view a) { return a.find(':') != std::string_view::npos; }

std::string domain_of(std::string_view address)
{
    const std::size_t at = address.rfind('@');
    return at == std::string_view::npos ? std::string() : std::string(address.substr(at + 1));
}

// The key length of a cipher, from its name (OpenSSL and IANA spellings), when it says so.
std::string cipher_bits(std::string_view cipher)
{
    auto has = [&](std::string_view s) { return cipher.find(s) != std::string_view::npos; };
    if (has("AES256") || has("AES_256") || has("CHACHA20") || has("CAMELLIA256") || has("ARIA256")) return "256";
    if (has("AES128") || has("AES_128") || has("CAMELLIA128") || has("ARIA128")) return "128";
    return {};
}

// The CN of an RFC 2253 subject ("CN=client.example,O=Example").
std::string common_name(std::string_view subject)
{
    std::size_t pos = 0;
    while (pos < subject.size()) {
        std::size_t end = subject.find(',', pos);
        if (end == std::string_view::npos) end = subject.size();
        std::string_view part = subject.substr(pos, end - pos);
        while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
        if (part.size() > 3 && (part.substr(0, 3) == "CN=" || part.substr(0, 3) == "cn="))
            return std::string(part.substr(3));
        pos = end + 1;
    }
    return {};
}

// Unique within the process: time and a counter, as 12 upper-case hex digits.
std::string make_queue_id()
{
    static std::atomic<std::uint32_t> counter{0};
    const std::uint64_t t = static_cast<std::uint64_t>(std::time(nullptr)) & 0xFFFFFFFFull;
    const std::uint64_t v = (t << 16) | (counter.fetch_add(1, std::memory_order_relaxed) & 0xFFFFu);
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out(12, '0');
    for (int i = 11; i >= 0; --i) out[static_cast<std::size_t>(i)] = hex[(v >> ((11 - i) * 4)) & 0xF];
    return out;
}

// ------------------------------------------------------------------------------------------
// The plugin
// ------------------------------------------------------------------------------------------
class milter {
public:
    explicit milter(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"address", "default_action", "connect_timeout", "command_timeout", "content_timeout", "macros",
                        "hostname", "workers"});
        address_ = cfg.require("address").as_string();
        try {
            endpoint_ = mp::parse_endpoint(address_);
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument("address: \"" + mp::clean_line(address_) + "\": " + e.what());
        }
        if (endpoint_.type == mp::endpoint::kind::unix_socket)
            endpoint_.path = ap::resolve_path(endpoint_.path, reg.config_dir());
        const std::string action = cfg.string_or("default_action", "tempfail");
        if (action == "tempfail") default_action_ = failure_action::tempfail;
        else if (action == "accept") default_action_ = failure_action::accept;
        else if (action == "reject") default_action_ = failure_action::reject;
        else
            throw std::invalid_argument("default_action: \"" + mp::clean_line(action) +
                                        "\" is not tempfail, accept or reject");
        connect_timeout_ = seconds(cfg, "connect_timeout", 5);
        command_timeout_ = seconds(cfg, "command_timeout", 30);
        content_timeout_ = seconds(cfg, "content_timeout", 300);
        for (std::size_t i = 0; i < mp::stage_count; ++i) macros_[i] = mp::split_names(default_macros[i]);
        if (const auto m = cfg.get("macros"); m && !m->is_null()) {
            m->expect_map();
            m->check_keys({"connect", "helo", "mail", "rcpt", "data", "end_of_header", "end_of_data"});
            for (const auto& [key, node] : m->entries()) {
                std::vector<std::string> names;
                if (node.is_null()) {
                } else if (node.is_scalar()) {
                    names = mp::split_names(node.scalar());
                } else {
                    for (const std::string& n : node.as_string_list()) {
                        for (std::string& one : mp::split_names(n)) names.push_back(std::move(one));
                    }
                }
                for (const std::string& n : names) {
                    for (char ch : n) {
                        if (static_cast<unsigned char>(ch) <= 0x20 || static_cast<unsigned char>(ch) >= 0x7F)
                            throw std::invalid_argument(node.path() + ": bad macro name \"" + mp::clean_line(n) + "\"");
                    }
                }
                for (std::size_t i = 0; i < mp::stage_count; ++i) {
                    if (key == stage_name(static_cast<mp::stage>(i))) macros_[i] = names;
                }
            }
        }
        hostname_ = cfg.string_or("hostname", "");
        if (hostname_.empty()) {
            char buf[256] = {0};
            hostname_ = ::gethostname(buf, sizeof buf - 1) == 0 && buf[0] ? buf : "localhost";
        }
        if (ap::has_control(hostname_) || hostname_.find(' ') != std::string::npos)
            throw std::invalid_argument("hostname: \"" + mp::clean_line(hostname_) + "\" is not a host name");
        const auto w = cfg.get("workers");
        const std::int64_t workers = w ? w->as_int(1, 1024) : 32;
        version_ = "asiosmtpd " + std::string(sdk::to_view(reg.host()->host_version));

        reg.editor();  // throws on a host older than ABI 1.3
        reg.on<&milter::on_connect>(sdk::hook::connect);
        reg.on<&milter::on_helo>(sdk::hook::helo);
        reg.on<&milter::on_helo>(sdk::hook::ehlo);
        reg.on<&milter::on_mail>(sdk::hook::mail);
        reg.on<&milter::on_rcpt>(sdk::hook::rcpt);
        reg.on<&milter::on_chunk>(sdk::hook::data_chunk);
        reg.on<&milter::on_data>(sdk::hook::data);
        reg.on<&milter::on_txn_end>(sdk::hook::txn_end);
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { run(j); });
    }
    milter(const milter&) = delete;
    milter& operator=(const milter&) = delete;
    ~milter()
    {
        stopping_.store(true, std::memory_order_release);  // running exchanges give up within 200 ms
        pool_.reset();
    }

    // -- Hooks --------------------------------------------------------------------------------

    sdk::verdict on_connect(sdk::call& c, const sdk::connect_args& args)
    {
        const sdk::session_info s = c.session();
        auto l = std::make_shared<link>(ap::escape_controls(s.peer_address), s.id);
        session_slot& slot = c.emplace_slot<session_slot>(sdk::scope::session, l, this);
        slot.local_address.assign(args.local_address);
        slot.local_port = args.local_port;
        job j;
        j.what = job::kind::connect;
        j.l = l;
        j.env = environment(c, nullptr, nullptr);
        // SMFIC_CONNECT: "[address]" as the host name (no reverse lookup here), as Postfix does for
        // an unknown name; the PROXY protocol's client when there was one (session_info).
        // A UNIX socket client ("unix:<path>"): SMFIA_UNIX with the socket's path, as Postfix sends.
        std::string addr(s.peer_address);
        if (addr.compare(0, 5, "unix:") == 0) addr.erase(0, 5);
        unsigned char buf[sizeof(in6_addr)];
        char family = mp::family_unknown;
        if (::inet_pton(AF_INET, addr.c_str(), buf) == 1) family = mp::family_inet;
        else if (::inet_pton(AF_INET6, addr.c_str(), buf) == 1) family = mp::family_inet6;
        else if (!addr.empty() && addr.front() == '/') family = mp::family_unix;
        j.bytes = mp::connect(family == mp::family_unix || addr.empty() ? std::string("localhost") : "[" + addr + "]",
                              family, s.peer_port, addr);
        {
            std::lock_guard<std::mutex> g(l->m);
            l->busy = true;
        }
        return post(c, std::move(j));
    }

    sdk::verdict on_helo(sdk::call& c, const sdk::helo_args& args)
    {
        link* l = find(c);
        if (!l) return sdk::verdict::continue_;
        std::string name(args.hostname);
        return event(c, *l, mp::stage::helo, mp::cmd_helo, mp::strings(mp::cmd_helo, {ap::escape_controls(name)}),
                     mp::p_nohelo, mp::p_nr_helo, environment(c, nullptr, nullptr));
    }

    sdk::verdict on_mail(sdk::call& c, const sdk::address_args& args)
    {
        link* l = find(c);
        if (!l) return sdk::verdict::continue_;
        {
            std::lock_guard<std::mutex> g(l->m);
            reset_txn(*l);
            l->queue_id = make_queue_id();
        }
        std::vector<std::string> argv{args.address == "<>" ? std::string("<>") : "<" + std::string(args.address) + ">"};
        for (std::string_view p : args.params) argv.emplace_back(p);
        return event(c, *l, mp::stage::mail, mp::cmd_mail, mp::strings(mp::cmd_mail, argv), mp::p_nomail, mp::p_nr_mail,
                     environment(c, &args.address, nullptr));
    }

    sdk::verdict on_rcpt(sdk::call& c, const sdk::address_args& args)
    {
        link* l = find(c);
        if (!l) return sdk::verdict::continue_;
        const std::string_view from = c.txn().mail_from;
        return event(c, *l, mp::stage::rcpt, mp::cmd_rcpt,
                     mp::strings(mp::cmd_rcpt, {"<" + std::string(args.address) + ">"}), mp::p_norcpt, mp::p_nr_rcpt,
                     environment(c, &from, &args.address));
    }

    // The next piece of the message: to the milter as it arrives.
    sdk::verdict on_chunk(sdk::call& c, const sdk::data_args& args)
    {
        link* l = find(c);
        if (!l) return sdk::verdict::continue_;
        const bool first = args.message_size == args.size;
        std::optional<answer> now;
        {
            std::lock_guard<std::mutex> g(l->m);
            if (first) {
                l->fed = 0;
                l->fed_last = false;
                l->message_refused = false;
            }
            l->fed += args.size;
            l->fed_last = args.last_chunk();
            now = precheck(*l, mp::stage::data, 0);
            if (!now) l->busy = true;
        }
        if (now) return give(c, *now);
        const std::string_view from = c.txn().mail_from;
        job j;
        j.what = job::kind::piece;
        j.l = c.find_slot<session_slot>(sdk::scope::session)->l;
        j.env = environment(c, &from, nullptr);
        j.bytes.assign(args.content());
        j.first = first;
        j.last = args.last_chunk();
        return post(c, std::move(j));
    }

    // The whole message is in: end of message, the milter's changes and its verdict.
    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        link* l = find(c);
        if (!l) return sdk::verdict::continue_;
        std::optional<answer> now;
        bool streamed = false;
        {
            std::lock_guard<std::mutex> g(l->m);
            streamed = l->fed_last && l->fed == args.message_size;
            if (l->discard && l->ph == phase::ready) {
                now = answer{sdk::verdict::accept, 250, "OK"};
            } else {
                now = precheck(*l, mp::stage::eom, 0);
            }
            if (!now) l->busy = true;
        }
        if (now) {
            if (now->verdict == sdk::verdict::accept) {
                log_.info("event=milter action=discard stage=end_of_data client=" + l->client + " milter=" + address_ +
                          " session=" + std::to_string(l->session) + " (the client got 250; the message was dropped)");
            }
            return give(c, *now);
        }
        const std::string_view from = c.txn().mail_from;
        job j;
        j.what = job::kind::finish;
        j.l = c.find_slot<session_slot>(sdk::scope::session)->l;
        j.env = environment(c, &from, nullptr);
        if (!streamed) {
            if (args.content().empty() && args.message_size > 0) {
                std::lock_guard<std::mutex> g(l->m);
                l->busy = false;
                log_.error("session=" + std::to_string(l->session) + " milter " + address_ +
                           ": the message's pieces did not all reach this plugin; answering 451");
                return c.tempfail(451, "4.3.0 Error: internal");
            }
            j.bytes.assign(args.content());
            j.whole = true;
        }
        return post(c, std::move(j));
    }

    sdk::verdict on_txn_end(sdk::call& c, const sdk::txn_end_args&)
    {
        if (link* l = find(c)) {
            std::lock_guard<std::mutex> g(l->m);
            reset_txn(*l);
        }
        return sdk::verdict::continue_;
    }

private:
    struct job {
        enum class kind { connect, command, piece, finish, quit } what = kind::command;
        std::shared_ptr<link> l;
        sdk::pending pending;
        mp::stage stage = mp::stage::connect;
        char cmd = 0;
        std::string bytes;  // connect: the CONNECT packet; command: what to send; piece/finish: message bytes
        macro_env env;
        bool first = false;
        bool last = false;
        bool whole = false;  // finish: `bytes` is the whole message (it did not come in pieces)
        clock_type::time_point started;
    };

    /// Suspend the call and hand `j` to a worker, which completes it.
    sdk::verdict post(sdk::call& c, job j)
    {
        j.started = clock_type::now();
        j.pending = c.suspend();
        pool_->post(std::move(j));
        return sdk::verdict::pending;
    }

    // The session's slot: holds the link; when the session ends, a worker says QUIT and closes.
    struct session_slot {
        session_slot(std::shared_ptr<link> lk, milter* o) : l(std::move(lk)), owner(o) {}
        session_slot(const session_slot&) = delete;
        session_slot& operator=(const session_slot&) = delete;
        ~session_slot()
        {
            job j;
            j.what = job::kind::quit;
            j.l = std::move(l);
            owner->pool_->try_post(j);  // refused (stopping, no memory): the link closes here
        }
        std::shared_ptr<link> l;
        milter* owner;
        std::string local_address;
        std::uint16_t local_port = 0;
    };

    static millis seconds(const sdk::config& cfg, std::string_view key, double fallback)
    {
        const auto v = cfg.get(key);
        const double s = v && !v->is_null() ? v->as_double() : fallback;
        if (!(s > 0 && s <= 3600))
            throw std::invalid_argument(std::string(key) + ": must be more than 0 and at most 3600 seconds");
        return millis(static_cast<long long>(s * 1000));
    }

    link* find(sdk::call& c) const
    {
        session_slot* s = c.find_slot<session_slot>(sdk::scope::session);
        return s ? s->l.get() : nullptr;
    }

    static void reset_txn(link& l)
    {
        l.accept_msg = false;
        l.discard = false;
        l.fed = 0;
        l.fed_last = false;
        l.message_refused = false;
        if (l.skip_event == mp::cmd_rcpt || l.skip_event == mp::cmd_body || l.skip_event == mp::cmd_header)
            l.skip_event = 0;
    }

    // Every macro value we know now (sent: those the stage's list names).
    macro_env environment(sdk::call& c, const std::string_view* mail, const std::string_view* rcpt) const
    {
        const sdk::session_info s = c.session();
        macro_env env;
        env.emplace_back("j", hostname_);
        env.emplace_back("{daemon_name}", hostname_);
        env.emplace_back("v", version_);
        if (session_slot* slot = c.find_slot<session_slot>(sdk::scope::session)) {
            if (!slot->local_address.empty()) {
                env.emplace_back("{daemon_addr}", ap::escape_controls(slot->local_address));
                env.emplace_back("{daemon_port}", std::to_string(slot->local_port));
            }
            std::lock_guard<std::mutex> g(slot->l->m);
            if (!slot->l->queue_id.empty()) env.emplace_back("i", slot->l->queue_id);
        }
        const std::string addr = ap::escape_controls(s.peer_address);
        env.emplace_back("_", "unknown [" + addr + "]");
        env.emplace_back("{client_addr}", is_ipv6(addr) ? "IPv6:" + addr : addr);
        env.emplace_back("{client_port}", std::to_string(s.peer_port));
        env.emplace_back("{client_name}", "unknown");
        env.emplace_back("{client_ptr}", "unknown");
        if (s.tls_active) {
            if (!s.tls_version.empty()) env.emplace_back("{tls_version}", ap::escape_controls(s.tls_version));
            if (!s.tls_cipher.empty()) {
                env.emplace_back("{cipher}", ap::escape_controls(s.tls_cipher));
                if (std::string bits = cipher_bits(s.tls_cipher); !bits.empty())
                    env.emplace_back("{cipher_bits}", bits);
            }
            if (std::string cn = common_name(s.tls_peer_subject); !cn.empty())
                env.emplace_back("{cert_subject}", ap::escape_controls(cn));
        }
        if (s.authenticated && !s.auth_login.empty())
            env.emplace_back("{auth_authen}", ap::escape_controls(s.auth_login));
        if (mail) {
            const std::string m = *mail == "<>" ? std::string() : ap::escape_controls(*mail);
            env.emplace_back("{mail_addr}", m);
            env.emplace_back("{mail_host}", domain_of(m));
            env.emplace_back("{mail_mailer}", "smtp");
        }
        if (rcpt) {
            const std::string r = ap::escape_controls(*rcpt);
            env.emplace_back("{rcpt_addr}", r);
            env.emplace_back("{rcpt_host}", domain_of(r));
            env.emplace_back("{rcpt_mailer}", "smtp");
        }
        return env;
    }

    // The SMFIC_MACRO packet of a stage: the names the milter asked for (SETSYMLIST) or ours.
    std::string macro_packet(const mp::negotiated& neg, mp::stage st, char cmd, const macro_env& env) const
    {
        const auto idx = static_cast<std::size_t>(st);
        const std::vector<std::string>& names = neg.symlists[idx] ? *neg.symlists[idx] : macros_[idx];
        std::vector<std::pair<std::string, std::string>> pairs;
        for (const std::string& n : names) {
            for (const auto& [k, v] : env) {
                if (k == n) {
                    pairs.emplace_back(k, v);
                    break;
                }
            }
        }
        return mp::macros(cmd, pairs);
    }

    // The failure reply of default_action (Postfix's), or none for accept.
    std::optional<answer> failure_answer() const
    {
        switch (default_action_) {
        case failure_action::tempfail: return answer::refuse(tempfail_code, std::string(tempfail_text));
        case failure_action::reject: return answer::refuse(reject_code, std::string(failure_reject_text));
        case failure_action::accept: break;
        }
        return std::nullopt;
    }

    // Under l.m: the milter failed (on a worker, or a hook found it still busy).
    void mark_failed(link& l, mp::stage st, const std::string& why)
    {
        if (l.ph == phase::failed) return;
        l.ph = phase::failed;
        l.persistent = failure_answer();
        log_.warn("event=milter action=failure stage=" + std::string(stage_name(st)) + " client=" + l.client +
                  " milter=" + address_ + " session=" + std::to_string(l.session) + " reason='" + mp::clean_line(why) +
                  "' default_action=" + action_name(default_action_));
    }

    // Under l.m: the answer at a stage for a link that takes no more events (or nullopt: go on
    // to the milter). Connection-level stages get 250 after a persistent refusal (Postfix
    // answers HELO/EHLO that way; the refusal applies from MAIL on).
    std::optional<answer> precheck(link& l, mp::stage st, char cmd)
    {
        if (l.busy)
            mark_failed(
                l, st,
                "the previous exchange is still running (plugins[].timeout shorter than the milter's timeouts?)");
        switch (l.ph) {
        case phase::fresh: return answer::go_on();
        case phase::accept_con: return answer::go_on();
        case phase::failed:
        case phase::reject_con:
            if (!l.persistent || st == mp::stage::helo) return answer::go_on();
            return l.persistent;
        case phase::ready: break;
        }
        if (st != mp::stage::helo && st != mp::stage::mail && (l.accept_msg || l.discard)) return answer::go_on();
        if (l.message_refused && (st == mp::stage::data || st == mp::stage::eom)) return answer::go_on();
        if (cmd != 0) {
            if (l.skip_event == cmd) return answer::go_on();
            l.skip_event = 0;
        }
        return std::nullopt;
    }

    sdk::verdict give(sdk::call& c, const answer& a)
    {
        if (a.verdict == sdk::verdict::continue_) return sdk::verdict::continue_;
        return c.reply(a.verdict, a.code, a.text);
    }

    // HELO, MAIL, RCPT: send (now, or queued when no reply will come) and answer.
    sdk::verdict event(sdk::call& c, link& l, mp::stage st, char cmd, std::string command, std::uint32_t no_flag,
                       std::uint32_t nr_flag, macro_env env)
    {
        std::string bytes;
        {
            std::lock_guard<std::mutex> g(l.m);
            if (auto now = precheck(l, st, cmd)) return give(c, *now);
            if ((st == mp::stage::mail || st == mp::stage::helo) && l.envelope_open) {
                bytes += mp::packet(mp::cmd_abort);
                l.envelope_open = false;
            }
            if (st == mp::stage::mail) l.envelope_open = true;
            bytes += macro_packet(l.neg, st, cmd, env);
            const bool skipped = (l.neg.protocol & no_flag) != 0;
            if (!skipped) bytes += command;
            if (skipped || (l.neg.protocol & nr_flag) != 0) {
                l.outbuf += bytes;
                return sdk::verdict::continue_;
            }
            l.busy = true;
        }
        job j;
        j.what = job::kind::command;
        j.l = c.find_slot<session_slot>(sdk::scope::session)->l;
        j.stage = st;
        j.cmd = cmd;
        j.bytes = std::move(bytes);
        return post(c, std::move(j));
    }

    // -- Worker side --------------------------------------------------------------------------

    void run(job& j)
    {
        link& l = *j.l;
        std::lock_guard<std::mutex> io(l.io);
        if (j.what == job::kind::quit) return quit(l);
        channel ch(l, stopping_);
        answer a;
        mp::stage st = j.stage;
        try {
            switch (j.what) {
            case job::kind::connect: a = connect(l, ch, j); break;
            case job::kind::command: a = command(l, ch, j); break;
            case job::kind::piece:
                st = mp::stage::data;
                a = piece(l, ch, j);
                break;
            case job::kind::finish:
                st = mp::stage::eom;
                a = finish(l, ch, j);
                break;
            case job::kind::quit: break;
            }
        } catch (const std::exception& e) {
            l.close_socket();
            std::lock_guard<std::mutex> g(l.m);
            mark_failed(l, st, e.what());
            a = l.persistent ? *l.persistent : answer::go_on();
            if (st == mp::stage::connect || st == mp::stage::helo) a = connection_answer(st, a);
            if (j.what == job::kind::finish && l.replaced_body && a.verdict == sdk::verdict::continue_) {
                // Part of a new body went in: never deliver that half-replaced message.
                a = answer::refuse(tempfail_code, std::string(tempfail_text));
            }
            if (j.what == job::kind::piece && a.refuses()) l.message_refused = true;
        }
        finish_job(l, j, st, a);
    }

    void finish_job(link& l, job& j, mp::stage st, const answer& a)
    {
        const auto ms = std::chrono::duration_cast<millis>(clock_type::now() - j.started).count();
        std::string qid;
        {
            std::lock_guard<std::mutex> g(l.m);
            l.busy = false;
            qid = l.queue_id;
        }
        const std::string where = "stage=" + std::string(stage_name(st)) + " client=" + l.client +
                                  " milter=" + address_ + " session=" + std::to_string(l.session) +
                                  (qid.empty() ? "" : " queue_id=" + qid);
        if (a.refuses()) {
            log_.info("event=milter action=" + std::string(a.code >= 500 ? "reject" : "tempfail") + " " + where +
                      " reply='" + mp::clean_line(a.first_line()) + "' ms=" + std::to_string(ms));
        } else {
            log_.debug("event=milter action=" + std::string(a.verdict == sdk::verdict::accept ? "accept" : "continue") +
                       " " + where + " ms=" + std::to_string(ms));
        }
        const asiosmtpd_status stc = j.pending.complete(a.verdict, a.code, a.text);
        if (stc == ASIOSMTPD_E_GONE) {
            std::lock_guard<std::mutex> g(l.m);
            mark_failed(l, st, "the server gave up waiting (plugins[].timeout) for this exchange");
        } else if (stc != ASIOSMTPD_OK) {
            log_.warn("session=" + std::to_string(l.session) + " milter " + address_ +
                      ": the host refused the completion (" + sdk::status_name(stc) + ")");
        }
    }

    // A refusal at CONNECT or HELO, as Postfix answers it there: 421 closes; at CONNECT a 5xx
    // refuses the connection (554 <hostname> ESMTP not accepting connections); otherwise the
    // client gets its 220/250 and the refusal answers MAIL, RCPT and DATA from then on.
    answer connection_answer(mp::stage st, const answer& a) const
    {
        if (!a.refuses() || a.code == 421) return a;
        if (st == mp::stage::connect && a.code >= 500) {
            answer r;
            r.verdict = sdk::verdict::reject;
            r.code = 554;
            r.text = hostname_ + " ESMTP not accepting connections";
            return r;
        }
        return answer::go_on();
    }

    answer connect(link& l, channel& ch, job& j)
    {
        ch.open(endpoint_, connect_timeout_);
        ch.send(mp::optneg(), command_timeout_);
        mp::reply_packet p = ch.read(command_timeout_);
        if (p.cmd != mp::cmd_optneg)
            throw mp::protocol_error("unexpected reply '" + mp::clean_line(std::string(1, p.cmd)) +
                                     "' to option negotiation");
        mp::negotiated neg = mp::parse_optneg(p.data);
        std::string bytes;
        {
            std::lock_guard<std::mutex> g(l.m);
            l.neg = neg;
            l.ph = phase::ready;
        }
        bytes += macro_packet(neg, mp::stage::connect, mp::cmd_connect, j.env);
        if (neg.protocol & mp::p_noconnect) {
            std::lock_guard<std::mutex> g(l.m);
            l.outbuf += bytes;
            return answer::go_on();
        }
        bytes += j.bytes;
        if (neg.protocol & mp::p_nr_conn) {
            ch.send(bytes, command_timeout_);
            return answer::go_on();
        }
        ch.send(bytes, command_timeout_);
        const decision d = decide(ch, mp::cmd_connect, command_timeout_, nullptr);
        return apply(l, mp::stage::connect, mp::cmd_connect, d);
    }

    answer command(link& l, channel& ch, job& j)
    {
        std::string bytes = take_outbuf(l);
        bytes += j.bytes;
        ch.send(bytes, command_timeout_);
        const decision d = decide(ch, j.cmd, command_timeout_, nullptr);
        return apply(l, j.stage, j.cmd, d);
    }

    std::string take_outbuf(link& l)
    {
        std::lock_guard<std::mutex> g(l.m);
        std::string out = std::move(l.outbuf);
        l.outbuf.clear();
        return out;
    }

    mp::negotiated negotiated_of(link& l)
    {
        std::lock_guard<std::mutex> g(l.m);
        return l.neg;
    }

    // A message piece: DATA first, then headers, end of headers and body chunks as they complete.
    answer piece(link& l, channel& ch, job& j)
    {
        const mp::negotiated neg = negotiated_of(l);
        if (j.first || !l.split) {
            l.split.emplace((neg.protocol & mp::p_hdr_leadspc) != 0);
            l.msg_done = false;
            l.body_skipped = false;
            l.replaced_body = false;
            std::string bytes = take_outbuf(l);
            const bool skipped = (neg.protocol & mp::p_nodata) != 0 || neg.version < 4;
            if (neg.version >= 4) bytes += macro_packet(neg, mp::stage::data, mp::cmd_data, j.env);
            if (!skipped) bytes += mp::packet(mp::cmd_data);
            if (!bytes.empty()) ch.send(bytes, command_timeout_);
            if (!skipped && !(neg.protocol & mp::p_nr_data)) {
                const decision d = decide(ch, mp::cmd_data, command_timeout_, nullptr);
                answer a = apply(l, mp::stage::data, mp::cmd_data, d);
                if (d.what != decision::kind::go_on && d.what != decision::kind::skip) l.msg_done = true;
                if (a.refuses()) return refused_message(l, a);
            }
        }
        if (l.msg_done) return answer::go_on();
        std::vector<mp::message_event> events;
        l.split->feed(j.bytes, events);
        if (j.last) l.split->finish(events);
        std::string().swap(j.bytes);
        answer a = send_events(l, ch, neg, events, j.env);
        if (a.refuses()) return refused_message(l, a);
        return a;
    }

    answer refused_message(link& l, const answer& a)
    {
        std::lock_guard<std::mutex> g(l.m);
        l.message_refused = true;
        return a;
    }

    answer send_events(link& l, channel& ch, const mp::negotiated& neg, std::vector<mp::message_event>& events,
                       const macro_env& env)
    {
        for (mp::message_event& ev : events) {
            if (l.msg_done) break;
            char cmd = 0;
            std::uint32_t no_flag = 0, nr_flag = 0;
            mp::stage st = mp::stage::eoh;
            std::string command;
            switch (ev.what) {
            case mp::message_event::kind::header:
                cmd = mp::cmd_header;
                no_flag = mp::p_nohdrs;
                nr_flag = mp::p_nr_hdr;
                command = mp::header(ev.name, ev.data);
                break;
            case mp::message_event::kind::eoh:
                cmd = mp::cmd_eoh;
                no_flag = mp::p_noeoh;
                nr_flag = mp::p_nr_eoh;
                command = mp::packet(mp::cmd_eoh);
                break;
            case mp::message_event::kind::body:
                if (l.body_skipped) continue;
                cmd = mp::cmd_body;
                st = mp::stage::eom;
                no_flag = mp::p_nobody;
                nr_flag = mp::p_nr_body;
                command = mp::packet(mp::cmd_body, ev.data);
                break;
            }
            if (neg.protocol & no_flag) continue;  // not wanted: nor its macros (as Postfix)
            std::string bytes = take_outbuf(l);
            bytes += macro_packet(neg, st, cmd, env);
            bytes += command;
            std::string().swap(ev.data);
            ch.send(bytes, content_timeout_);
            if (neg.protocol & nr_flag) continue;
            const decision d = decide(ch, cmd, content_timeout_, nullptr);
            if (d.what == decision::kind::skip) {
                if (cmd == mp::cmd_body) l.body_skipped = true;
                continue;
            }
            answer a = apply(l, cmd == mp::cmd_body ? mp::stage::eom : mp::stage::eoh, cmd, d);
            if (d.what != decision::kind::go_on) l.msg_done = true;
            if (a.refuses()) return a;
        }
        return answer::go_on();
    }

    // End of message: the rest of the message if it did not come in pieces, then SMFIC_BODYEOB,
    // the changes, the verdict.
    answer finish(link& l, channel& ch, job& j)
    {
        const mp::negotiated neg = negotiated_of(l);
        if (j.whole) {
            job p;
            p.bytes = std::move(j.bytes);
            p.env = j.env;
            p.first = true;
            p.last = true;
            answer a = piece(l, ch, p);
            if (a.refuses() || l.msg_done) return final_answer(l, a);
        } else if (l.msg_done) {
            return final_answer(l, answer::go_on());
        }
        std::string bytes = take_outbuf(l);
        bytes += macro_packet(neg, mp::stage::eom, mp::cmd_eob, j.env);
        bytes += mp::packet(mp::cmd_eob);
        ch.send(bytes, content_timeout_);
        edits pending_edits;
        const decision d = decide(ch, mp::cmd_eob, content_timeout_, &pending_edits, &j);
        answer a = apply(l, mp::stage::eom, mp::cmd_eob, d);
        l.msg_done = true;
        if (a.refuses()) return a;
        {
            std::lock_guard<std::mutex> g(l.m);
            if (l.discard) {
                log_.info("event=milter action=discard stage=end_of_data client=" + l.client + " milter=" + address_ +
                          " session=" + std::to_string(l.session) + " queue_id=" + l.queue_id +
                          " (the client got 250; the message was dropped)");
                return answer{sdk::verdict::accept, 250, "OK"};
            }
        }
        // Keep the changes: the header and envelope ones now (the body went already).
        std::string failed;
        for (const sdk::edit& e : pending_edits.list) {
            const asiosmtpd_status st = j.pending.edit(e);
            if (st == ASIOSMTPD_OK) continue;
            if (st == ASIOSMTPD_E_INVALID && e.raw().op == ASIOSMTPD_EDIT_DELETE_RCPT) {
                log_.warn("session=" + std::to_string(l.session) + " milter " + address_ + ": delete recipient <" +
                          mp::clean_line(sdk::to_view(e.raw().name)) + ">: no such recipient; ignored");
                continue;
            }
            failed = std::string(edit_name(e.raw().op)) + " refused (" + sdk::status_name(st) + ")";
            break;
        }
        if (failed.empty() && !pending_edits.failed.empty()) failed = pending_edits.failed;
        if (!pending_edits.quarantine.empty() && failed.empty()) {
            log_.info("event=milter action=quarantine stage=end_of_data client=" + l.client + " milter=" + address_ +
                      " session=" + std::to_string(l.session) + " reason='" + pending_edits.quarantine + "'");
            const asiosmtpd_status st = j.pending.edit(sdk::edit::add_header("X-Quarantine", pending_edits.quarantine));
            if (st != ASIOSMTPD_OK) failed = std::string("quarantine header refused (") + sdk::status_name(st) + ")";
        }
        if (!failed.empty()) {
            log_.error("event=milter action=tempfail stage=end_of_data client=" + l.client + " milter=" + address_ +
                       " session=" + std::to_string(l.session) +
                       " reason='the changes could not be applied: " + mp::clean_line(failed) + "'");
            return answer::refuse(tempfail_code, std::string(edit_failed_text));
        }
        return a;
    }

    answer final_answer(link& l, const answer& a)
    {
        if (a.refuses()) return a;
        std::lock_guard<std::mutex> g(l.m);
        if (l.discard) return answer{sdk::verdict::accept, 250, "OK"};
        return a;
    }

    static const char* edit_name(std::int32_t op)
    {
        switch (op) {
        case ASIOSMTPD_EDIT_ADD_HEADER: return "add header";
        case ASIOSMTPD_EDIT_INSERT_HEADER: return "insert header";
        case ASIOSMTPD_EDIT_CHANGE_HEADER: return "change header";
        case ASIOSMTPD_EDIT_DELETE_HEADER: return "delete header";
        case ASIOSMTPD_EDIT_REPLACE_BODY: return "replace body";
        case ASIOSMTPD_EDIT_CHANGE_SENDER: return "change sender";
        case ASIOSMTPD_EDIT_ADD_RCPT: return "add recipient";
        case ASIOSMTPD_EDIT_DELETE_RCPT: return "delete recipient";
        }
        return "edit";
    }

    // The changes of one end of message. Header and envelope changes wait for the verdict (they
    // are small: bounded below); body pieces go to the host as they come (bounded memory).
    struct edits {
        std::vector<sdk::edit> list;
        std::vector<std::unique_ptr<std::string>> owned;  // what list's views point into
        std::size_t bytes = 0;
        std::string quarantine;
        std::string failed;  // a body piece the host refused
    };

    static constexpr std::size_t max_edit_bytes = 16u << 20;
    static constexpr std::size_t max_edits = 100000;

    // Reads replies to `cmd` until the decision; at end of message, changes go to `ed`.
    decision decide(channel& ch, char cmd, millis timeout, edits* ed, job* j = nullptr)
    {
        for (;;) {
            mp::reply_packet p = ch.read(timeout);
            auto no_data = [&] {
                if (!p.data.empty())
                    throw mp::protocol_error(std::string("reply '") + p.cmd + "' with " +
                                             std::to_string(p.data.size()) + " data bytes");
            };
            decision d;
            d.reply = p.cmd;
            switch (p.cmd) {
            case mp::rep_progress: no_data(); continue;
            case mp::rep_continue: no_data(); return d;
            case mp::rep_accept:
                no_data();
                d.what = decision::kind::accept;
                return d;
            case mp::rep_discard:
                no_data();
                d.what = decision::kind::discard;
                return d;
            case mp::rep_skip:
                no_data();
                d.what = decision::kind::skip;
                return d;
            case mp::rep_reject:
                no_data();
                d.what = decision::kind::refuse;
                d.code = reject_code;
                d.text = reject_text;
                return d;
            case mp::rep_tempfail:
                no_data();
                d.what = decision::kind::refuse;
                d.code = tempfail_code;
                d.text = tempfail_text;
                return d;
            case mp::rep_shutdown:
                no_data();
                d.what = decision::kind::refuse;
                d.code = 421;
                d.text = shutdown_text;
                return d;
            case mp::rep_replycode: {
                const mp::smtp_reply r = mp::parse_replycode(p.data);
                d.what = decision::kind::refuse;
                d.code = r.code;
                d.text = r.text;
                return d;
            }
            case mp::rep_quarantine:
            case mp::rep_addheader:
            case mp::rep_insheader:
            case mp::rep_chgheader:
            case mp::rep_replbody:
            case mp::rep_chgfrom:
            case mp::rep_addrcpt:
            case mp::rep_addrcpt_par:
            case mp::rep_delrcpt: {
                if (!ed || !j)
                    throw mp::protocol_error(std::string("change '") + mp::clean_line(std::string(1, p.cmd)) +
                                             "' outside end of message");
                take_change(*ed, *j, mp::parse_modification(p.cmd, p.data));
                continue;
            }
            default:
                throw mp::protocol_error("unexpected reply '" + mp::clean_line(std::string(1, p.cmd)) + "' to '" + cmd +
                                         "'");
            }
        }
    }

    void take_change(edits& ed, job& j, mp::modification&& m)
    {
        if (m.what == mp::rep_quarantine) {
            ed.quarantine = m.value.empty() ? "milter quarantine" : m.value;
            return;
        }
        if (m.what == mp::rep_replbody) {
            j.l->replaced_body = true;
            if (!ed.failed.empty()) return;
            const asiosmtpd_status st = j.pending.edit(sdk::edit::replace_body(m.value));
            if (st != ASIOSMTPD_OK) ed.failed = std::string("replace body refused (") + sdk::status_name(st) + ")";
            return;
        }
        ed.bytes += m.name.size() + m.value.size() + 64;
        if (ed.list.size() >= max_edits || ed.bytes > max_edit_bytes)
            throw mp::protocol_error("more than " + std::to_string(max_edits) + " changes or " +
                                     std::to_string(max_edit_bytes) + " bytes of them");
        auto keep = [&](std::string s) -> std::string_view {
            ed.owned.push_back(std::make_unique<std::string>(std::move(s)));
            return *ed.owned.back();
        };
        switch (m.what) {
        case mp::rep_addheader: ed.list.push_back(sdk::edit::add_header(keep(m.name), keep(m.value))); break;
        case mp::rep_insheader:
            ed.list.push_back(sdk::edit::insert_header(m.index, keep(m.name), keep(m.value)));
            break;
        case mp::rep_chgheader: {
            const std::size_t index = m.index == 0 ? 1 : m.index;  // Sendmail: 0 means the first
            if (m.value.empty()) ed.list.push_back(sdk::edit::delete_header(keep(m.name), index));
            else ed.list.push_back(sdk::edit::change_header(keep(m.name), index, keep(m.value)));
            break;
        }
        case mp::rep_chgfrom:
        case mp::rep_addrcpt_par: {
            const std::string_view addr = keep(mp::bare_address(m.name));
            std::vector<std::string_view> params;
            for (std::string& a : mp::split_args(m.value)) params.push_back(keep(std::move(a)));
            ed.list.push_back(m.what == mp::rep_chgfrom ? sdk::edit::change_sender(addr, std::move(params))
                                                        : sdk::edit::add_rcpt(addr, std::move(params)));
            break;
        }
        case mp::rep_addrcpt: ed.list.push_back(sdk::edit::add_rcpt(keep(mp::bare_address(m.name)))); break;
        case mp::rep_delrcpt: ed.list.push_back(sdk::edit::delete_rcpt(keep(mp::bare_address(m.name)))); break;
        default: break;
        }
    }

    // The state change a decision makes (under l.m), and the client's answer.
    answer apply(link& l, mp::stage st, char cmd, const decision& d)
    {
        std::lock_guard<std::mutex> g(l.m);
        const bool connection_level = st == mp::stage::connect || st == mp::stage::helo;
        switch (d.what) {
        case decision::kind::go_on: return answer::go_on();
        case decision::kind::skip: l.skip_event = cmd; return answer::go_on();
        case decision::kind::accept:
            if (connection_level) {
                l.ph = phase::accept_con;
                l.close_socket();
            } else {
                l.accept_msg = true;
            }
            return answer::go_on();
        case decision::kind::discard:
            if (connection_level) {
                log_.warn("session=" + std::to_string(l.session) + " milter " + address_ +
                          ": DISCARD is not allowed at connect or helo; ignored");
            } else {
                l.discard = true;
            }
            return answer::go_on();
        case decision::kind::refuse: break;
        }
        answer a = answer::refuse(d.code, d.text);
        if (!connection_level) return a;
        // Postfix: the milter is done with this connection; its refusal persists.
        l.ph = phase::reject_con;
        l.persistent = a;
        l.close_socket();
        const answer now = connection_answer(st, a);
        if (!now.refuses()) {
            // Logged here: the client's reply to this command is the usual one.
            log_.info("event=milter action=" + std::string(d.code >= 500 ? "reject" : "tempfail") +
                      " stage=" + stage_name(st) + " client=" + l.client + " milter=" + address_ +
                      " session=" + std::to_string(l.session) + " reply='" + mp::clean_line(a.first_line()) +
                      "' (applies from MAIL on)");
        }
        return now;
    }

    void quit(link& l)
    {
        std::string bytes;
        {
            std::lock_guard<std::mutex> g(l.m);
            if (l.ph != phase::ready) {
                l.close_socket();
                return;
            }
            bytes = std::move(l.outbuf);
            if (l.envelope_open) bytes += mp::packet(mp::cmd_abort);
            bytes += mp::packet(mp::cmd_quit);
        }
        if (l.fd.get() >= 0) {
            try {
                channel ch(l, stopping_);
                ch.send(bytes, millis(std::min<long long>(command_timeout_.count(), 2000)));
            } catch (const std::exception&) {  // the session is over either way
            }
        }
        l.close_socket();
    }

    sdk::logger log_;
    std::string address_;
    mp::endpoint endpoint_;
    failure_action default_action_ = failure_action::tempfail;
    millis connect_timeout_{5000};
    millis command_timeout_{30000};
    millis content_timeout_{300000};
    std::array<std::vector<std::string>, mp::stage_count> macros_;
    std::string hostname_;
    std::string version_;
    std::atomic<bool> stopping_{false};
    std::optional<sdk::worker_pool<job>> pool_;
};

}  // namespace

ASIOSMTPD_PLUGIN(milter, "milter", "1.0.0", "a Sendmail milter protocol (v6) client, as Postfix's",
                 ASIOSMTPD_PF_THREAD_SAFE)
