// SPDX-License-Identifier: Apache-2.0
// proxy: relays each message with its envelope to an upstream SMTP server, as aiosmtpd's Proxy
// handler (X-Peer: <client ip> inserted before the first empty line), and answers with the
// upstream's verdict instead of aiosmtpd's unconditional 250: 250 only when the upstream took
// the message for at least one recipient; upstream down, slow, or speaking nonsense → 451 and
// the client keeps the message. The DATA hook copies the message and suspends; the SMTP
// conversation runs on the plugin's worker threads over blocking-with-deadline sockets (poll),
// optionally upgraded with STARTTLS (OpenSSL).
//
// One DATA verdict for all recipients (the SDK has no per-recipient DATA verdicts yet):
//  - some recipients accepted upstream, DATA accepted: 250 with the upstream's text; the
//    refused recipients are listed in further lines of the reply and logged (warn);
//  - no recipient accepted: 451 when any refusal was temporary (4xx), else 550 (or the
//    upstream's 5xx), listing every refusal;
//  - MAIL or DATA refused: the upstream's reply (4xx → TEMPFAIL, 5xx → REJECT; 421 → 451).
// An envelope address with a control character (CR, LF, NUL, ... DEL) is never sent: in
// "MAIL FROM:<...>" or "RCPT TO:<...>" a CR LF would end the command and start one of the
// client's choosing. The server refuses such addresses (553) before any plugin sees them; should
// one arrive anyway (an envelope-rewriting plugin, a host without that check), a sender with one
// rejects the message with 553 5.1.7 and a recipient with one is refused (553 5.1.3, listed like
// the upstream's refusals) while the others are relayed; no connection is made for nothing.
// Every reply text is built from the upstream's bytes through reply_text.hpp, so the host never
// refuses it (that would turn an upstream's 250 into a 451 and a duplicate); the upstream's
// name is resolved within the same deadline as the rest (resolver.hpp).
#include "delivery_common.hpp"
#include "reply_text.hpp"
#include "resolver.hpp"

#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;
namespace ap = asiosmtpd::plugins;
namespace reply_text = asiosmtpd::plugins::proxy_text;
namespace dns = asiosmtpd::plugins::proxy_dns;
using clock_type = std::chrono::steady_clock;

/// The upstream could not be used (connect, timeout, TLS, protocol): the client gets 451.
struct upstream_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Upstream replies are kept within these bounds whatever the upstream sends (the rest is read
// and dropped, so that a chatty but accepting upstream is not turned into a 451).
constexpr std::size_t max_upstream_line = 4096;  // bytes of one line kept
constexpr std::size_t max_upstream_lines = 100;  // lines of one reply kept

struct reply {
    int code = 0;
    std::vector<std::string> lines;  // the text after "ddd-" / "ddd ", through clean()
    std::string text() const
    {
        std::string out;
        for (std::size_t i = 0; i < lines.size(); ++i) {
            if (i) out += ' ';
            out += lines[i];
        }
        return out;
    }
};

// A line of upstream text as we keep, log and answer it: control bytes (but HT) → '?', at most
// 506 bytes, cut on a UTF-8 boundary.
std::string clean(std::string_view s) { return reply_text::line(s); }

bool is_ip_literal(const std::string& host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return ::inet_pton(AF_INET, host.c_str(), buf) == 1 || ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string openssl_error()
{
    const unsigned long e = ::ERR_get_error();
    ::ERR_clear_error();
    if (e == 0) return "TLS error";
    char buf[256];
    ::ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

// One SMTP client connection with a deadline for everything it does.
class connection {
public:
    connection(clock_type::time_point deadline) : deadline_(deadline) {}
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection()
    {
        if (ssl_) ::SSL_free(ssl_);
    }

    // Connects to the first of `addresses` that answers (resolved by the caller, in time).
    void open(const std::vector<dns::address>& addresses, const std::string& host, std::uint16_t port)
    {
        const std::string service = std::to_string(port);
        std::string why = "no address";
        for (const dns::address& ai : addresses) {
            ap::unique_fd fd(::socket(ai.family, ai.socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai.protocol));
            if (fd.get() < 0) {
                why = ap::errno_text(errno);
                continue;
            }
            if (::connect(fd.get(), ai.sa(), ai.size) != 0) {
                if (errno != EINPROGRESS) {
                    why = ap::errno_text(errno);
                    continue;
                }
                if (!wait(fd.get(), POLLOUT)) {
                    why = "connect timed out";
                    continue;
                }
                int err = 0;
                socklen_t len = sizeof err;
                ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
                if (err != 0) {
                    why = ap::errno_text(err);
                    continue;
                }
            }
            fd_ = std::move(fd);
            break;
        }
        if (fd_.get() < 0) throw upstream_error("cannot connect to " + host + ":" + service + ": " + why);
    }

    void start_tls(SSL_CTX* ctx, const std::string& host, bool verify)
    {
        ssl_ = ::SSL_new(ctx);
        if (!ssl_ || ::SSL_set_fd(ssl_, fd_.get()) != 1) throw upstream_error("STARTTLS: " + openssl_error());
        if (is_ip_literal(host)) {
            if (verify && ::X509_VERIFY_PARAM_set1_ip_asc(::SSL_get0_param(ssl_), host.c_str()) != 1)
                throw upstream_error("STARTTLS: " + openssl_error());
        } else {
            // SNI (SSL_set_tlsext_host_name, without its C cast).
            ::SSL_ctrl(ssl_, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, const_cast<char*>(host.c_str()));
            if (verify && ::SSL_set1_host(ssl_, host.c_str()) != 1)
                throw upstream_error("STARTTLS: " + openssl_error());
        }
        for (;;) {
            const int r = ::SSL_connect(ssl_);
            if (r == 1) break;
            const int e = ::SSL_get_error(ssl_, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                if (!wait(fd_.get(), e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT))
                    throw upstream_error("STARTTLS: handshake timed out");
                continue;
            }
            std::string why = openssl_error();
            const long v = ::SSL_get_verify_result(ssl_);
            if (v != X509_V_OK) why += std::string(" (") + ::X509_verify_cert_error_string(v) + ")";
            throw upstream_error("STARTTLS: handshake failed: " + why);
        }
        in_.clear();
    }

    void send(std::string_view data)
    {
        std::size_t done = 0;
        while (done < data.size()) {
            const std::size_t chunk = std::min<std::size_t>(data.size() - done, 1 << 20);
            if (ssl_) {
                const int n = ::SSL_write(ssl_, data.data() + done, static_cast<int>(chunk));
                if (n > 0) {
                    done += static_cast<std::size_t>(n);
                    continue;
                }
                const int e = ::SSL_get_error(ssl_, n);
                if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) &&
                    wait(fd_.get(), e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT))
                    continue;
                throw upstream_error("write failed: " + openssl_error());
            }
            const ssize_t n = ::send(fd_.get(), data.data() + done, chunk, MSG_NOSIGNAL);
            if (n > 0) {
                done += static_cast<std::size_t>(n);
                continue;
            }
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                if (!wait(fd_.get(), POLLOUT)) throw upstream_error("timed out writing");
                continue;
            }
            throw upstream_error("write failed: " + ap::errno_text(errno));
        }
    }

    // One reply (all its lines); lines beyond max_upstream_lines are read and dropped.
    reply read_reply()
    {
        reply r;
        for (;;) {
            const std::string line = read_line();
            if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0])) ||
                !std::isdigit(static_cast<unsigned char>(line[1])) ||
                !std::isdigit(static_cast<unsigned char>(line[2])) ||
                (line.size() > 3 && line[3] != ' ' && line[3] != '-'))
                throw upstream_error("not an SMTP reply: \"" + clean(line.substr(0, 80)) + "\"");
            const int code = std::stoi(line.substr(0, 3));
            if (r.code != 0 && code != r.code) throw upstream_error("inconsistent multi-line reply");
            r.code = code;
            if (r.lines.size() < max_upstream_lines)
                r.lines.push_back(clean(line.size() > 4 ? std::string_view(line).substr(4) : std::string_view()));
            if (line.size() <= 3 || line[3] == ' ') return r;
        }
    }

    reply command(const std::string& line)
    {
        send(line + "\r\n");
        return read_reply();
    }

private:
    bool wait(int fd, short events)
    {
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - clock_type::now());
            if (left.count() <= 0) return false;
            struct pollfd p {};
            p.fd = fd;
            p.events = events;
            const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count() + 1, 60000)));
            if (r > 0) return true;
            if (r < 0 && errno != EINTR) return false;
        }
    }

    // One line without its CRLF; of a longer line only the first max_upstream_line bytes are
    // kept (the rest is read and dropped: memory stays bounded, the deadline bounds the time).
    std::string read_line()
    {
        std::string line;
        for (;;) {
            const std::size_t eol = in_.find('\n');
            const std::size_t upto = eol == std::string::npos ? in_.size() : eol;
            if (line.size() < max_upstream_line) line.append(in_, 0, std::min(upto, max_upstream_line - line.size()));
            if (eol != std::string::npos) {
                in_.erase(0, eol + 1);
                if (!line.empty() && line.back() == '\r') line.pop_back();
                return line;
            }
            in_.clear();
            char buf[4096];
            if (ssl_) {
                const int n = ::SSL_read(ssl_, buf, sizeof buf);
                if (n > 0) {
                    in_.append(buf, static_cast<std::size_t>(n));
                    continue;
                }
                const int e = ::SSL_get_error(ssl_, n);
                if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)) {
                    if (!wait(fd_.get(), e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT))
                        throw upstream_error("timed out waiting for a reply");
                    continue;
                }
                throw upstream_error("connection closed by the upstream");
            }
            const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
            if (n > 0) {
                in_.append(buf, static_cast<std::size_t>(n));
                continue;
            }
            if (n == 0) throw upstream_error("connection closed by the upstream");
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!wait(fd_.get(), POLLIN)) throw upstream_error("timed out waiting for a reply");
                continue;
            }
            throw upstream_error("read failed: " + ap::errno_text(errno));
        }
    }

    clock_type::time_point deadline_;
    ap::unique_fd fd_;
    SSL* ssl_ = nullptr;
    std::string in_;
};

// aiosmtpd's Proxy.handle_DATA: "X-Peer: <ip>" + the line ending of the first empty line,
// inserted before that line; without one, before the last line (sic); an empty message gets
// it alone, with CRLF. Line splitting as bytes.splitlines(keepends=True).
std::string insert_x_peer(std::string_view content, std::string_view peer_ip)
{
    std::vector<std::string_view> lines;
    std::size_t start = 0;
    while (start < content.size()) {
        std::size_t eol = content.find_first_of("\r\n", start);
        if (eol == std::string_view::npos) {
            lines.push_back(content.substr(start));
            break;
        }
        std::size_t end = eol + 1;
        if (content[eol] == '\r' && end < content.size() && content[end] == '\n') ++end;
        lines.push_back(content.substr(start, end - start));
        start = end;
    }
    std::size_t at = 0;
    std::string_view ending = "\r\n";
    for (std::size_t i = 0; i < lines.size(); ++i) {
        at = i;
        if (lines[i].front() == '\r' || lines[i].front() == '\n') {
            ending = lines[i];
            break;
        }
    }
    std::string out;
    out.reserve(content.size() + peer_ip.size() + 16);
    for (std::size_t i = 0; i < lines.size(); ++i) {
        if (i == at) out.append("X-Peer: ").append(peer_ip).append(ending);
        out.append(lines[i]);
    }
    if (lines.empty()) out.append("X-Peer: ").append(peer_ip).append(ending);
    return out;
}

// smtplib's data(): every line end as CRLF, leading dots doubled, ends with CRLF "." CRLF.
std::string smtp_data(std::string_view msg)
{
    std::string out;
    out.reserve(msg.size() + msg.size() / 32 + 8);
    bool line_start = true;
    for (std::size_t i = 0; i < msg.size(); ++i) {
        const char ch = msg[i];
        if (ch == '\r' || ch == '\n') {
            out += "\r\n";
            if (ch == '\r' && i + 1 < msg.size() && msg[i + 1] == '\n') ++i;
            line_start = true;
            continue;
        }
        if (line_start && ch == '.') out += '.';
        out += ch;
        line_start = false;
    }
    if (!line_start) out += "\r\n";
    out += ".\r\n";
    return out;
}

bool has_8bit(std::string_view s)
{
    for (char ch : s)
        if (static_cast<unsigned char>(ch) >= 0x80) return true;
    return false;
}

std::string upper(std::string s)
{
    for (char& ch : s)
        if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
    return s;
}

std::string own_hostname()
{
    char buf[256] = {0};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
    return buf;
}

// What the client gets. `text` is always made by reply_text::with_list(), so it is valid.
struct outcome {
    sdk::verdict verdict = sdk::verdict::tempfail;
    std::uint16_t code = 451;
    std::string text;
};

// The upstream's reply code as ours (reply_text::map_code: 2xx → 250, 4xx/5xx kept but 421 → 451,
// nonsense → 451), with `first` and `listed` as the reply's lines.
outcome from_code(int upstream_code, std::string_view first, const std::vector<std::string>& listed = {})
{
    const reply_text::local_reply l = reply_text::map_code(upstream_code);
    outcome o;
    o.verdict = l.verdict == reply_text::kind::accept   ? sdk::verdict::accept
                : l.verdict == reply_text::kind::reject ? sdk::verdict::reject
                                                        : sdk::verdict::tempfail;
    o.code = l.code;
    o.text = reply_text::with_list(first, listed);
    return o;
}

std::string code_and_text(const reply& r) { return std::to_string(r.code) + " " + r.text(); }

// Envelope addresses that are never sent upstream (a control character in them).
constexpr std::string_view sender_refused = "5.1.7 Sender address has a control character, not relayed";
constexpr std::string_view rcpt_refused = "553 5.1.3 Recipient address has a control character, not relayed";

// RFC 5321 §4.1.1.1: the EHLO argument is a domain or an address literal; never anything that
// could end the command early.
bool valid_helo(std::string_view name)
{
    if (name.empty() || name.size() > 255) return false;
    for (char ch : name) {
        const auto c = static_cast<unsigned char>(ch);
        if (c <= 0x20 || c >= 0x7f) return false;
    }
    return true;
}

class proxy {
public:
    explicit proxy(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"host", "port", "starttls", "tls_verify", "ca_file", "timeout", "helo", "workers"});
        host_ = cfg.require("host").as_string();
        if (host_.empty()) throw std::invalid_argument("host: must not be empty");
        const auto p = cfg.get("port");
        port_ = static_cast<std::uint16_t>(p ? p->as_int(1, 65535) : 25);
        starttls_ = cfg.bool_or("starttls", false);
        tls_verify_ = cfg.bool_or("tls_verify", true);
        const auto t = cfg.get("timeout");
        timeout_ = t ? t->as_double() : 20.0;
        if (!(timeout_ > 0 && timeout_ <= 3600))
            throw std::invalid_argument("timeout: must be between 0 and 3600 seconds");
        helo_ = cfg.string_or("helo", "");
        if (helo_.empty()) helo_ = own_hostname();
        if (!valid_helo(helo_)) throw std::invalid_argument("helo: \"" + clean(helo_) + "\" is not a host name");
        const auto w = cfg.get("workers");
        const std::int64_t workers = w ? w->as_int(1, 256) : 8;
        if (starttls_) {
            ctx_ = ::SSL_CTX_new(::TLS_client_method());
            if (!ctx_) throw std::invalid_argument("starttls: " + openssl_error());
            ::SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION);
            if (tls_verify_) {
                ::SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
                const std::string ca = cfg.string_or("ca_file", "");
                const int ok = ca.empty() ? ::SSL_CTX_set_default_verify_paths(ctx_)
                                          : ::SSL_CTX_load_verify_locations(
                                                ctx_, ap::resolve_path(ca, reg.config_dir()).c_str(), nullptr);
                if (ok != 1) {
                    ::SSL_CTX_free(ctx_);
                    ctx_ = nullptr;
                    throw std::invalid_argument("ca_file: cannot load \"" + ca + "\": " + openssl_error());
                }
            }
        }
        // An IP literal needs no DNS; a name is resolved for each message, bounded by `timeout`
        // (one thread: there is one name, and lookups of it are shared).
        if (!is_ip_literal(host_)) resolver_ = std::make_unique<dns::resolver>(1);
        reg.on<&proxy::on_data>(sdk::hook::data);
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { relay(j); });
    }
    proxy(const proxy&) = delete;
    proxy& operator=(const proxy&) = delete;
    ~proxy()
    {
        pool_.reset();      // each worker returns by its deadline (timeout)
        resolver_.reset();  // then the lookup thread, once getaddrinfo() gives up (resolv.conf)
        if (ctx_) ::SSL_CTX_free(ctx_);
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        const sdk::session_info s = c.session();
        job j;
        j.session = s.id;
        const std::string_view mail_from = c.txn().mail_from;
        if (ap::has_control(mail_from)) {
            log_.warn("session=" + std::to_string(s.id) + " proxy: sender <" + ap::escape_controls(mail_from) +
                      "> has a control character; not relayed");
            return c.reject(553, sender_refused);
        }
        for (std::string_view r : c.rcpts()) {
            if (ap::has_control(r))
                j.refused.push_back("refused <" + ap::escape_controls(r) + ">: " + std::string(rcpt_refused));
            else j.rcpts.emplace_back(r);
        }
        if (j.rcpts.empty() && !j.refused.empty()) {
            for (const std::string& line : j.refused) log_.warn("session=" + std::to_string(s.id) + " proxy: " + line);
            const outcome o = from_code(553, "5.1.3 No recipient could be relayed", j.refused);
            return c.reject(o.code, o.text);
        }
        j.data = smtp_data(insert_x_peer(args.content(), ap::escape_controls(s.peer_address)));
        j.mail_from = std::string(mail_from);
        for (std::string_view p : c.mail_params()) j.params.emplace_back(p);
        j.eight_bit = has_8bit(args.content());
        j.pending = c.suspend();
        pool_->post(std::move(j));
        return sdk::verdict::pending;
    }

private:
    struct job {
        sdk::pending pending;
        std::uint64_t session = 0;
        std::string data;  // dot-stuffed, CRLF, with the final "."
        std::string mail_from;
        std::vector<std::string> rcpts;    // the ones to relay
        std::vector<std::string> refused;  // "refused <rcpt>: ..." for those never sent (control characters)
        std::vector<std::string> params;
        bool eight_bit = false;
    };

    static std::vector<std::string> keywords(const reply& ehlo)
    {
        std::vector<std::string> out;
        for (std::size_t i = 1; i < ehlo.lines.size(); ++i) out.push_back(upper(ehlo.lines[i]));
        return out;
    }
    static bool offers(const std::vector<std::string>& kw, std::string_view name)
    {
        for (const std::string& k : kw)
            if (k.compare(0, name.size(), name) == 0 && (k.size() == name.size() || k[name.size()] == ' ')) return true;
        return false;
    }

    std::vector<std::string> hello(connection& conn)
    {
        const reply r = conn.command("EHLO " + helo_);
        if (r.code == 250) return keywords(r);
        const reply h = conn.command("HELO " + helo_);
        if (h.code != 250) throw upstream_error("HELO refused: " + std::to_string(h.code) + " " + h.text());
        return {};
    }

    // The upstream's addresses, found before `deadline` or never (upstream_error: 451).
    std::vector<dns::address> addresses(clock_type::time_point deadline) const
    {
        const std::string service = std::to_string(port_);
        if (!resolver_) {
            std::vector<dns::address> out;
            if (const int rc = dns::system_lookup(host_, service, out, true); rc != 0)
                throw upstream_error("cannot use address " + host_ + ": " + ::gai_strerror(rc));
            return out;
        }
        const auto started = clock_type::now();
        dns::answer a = resolver_->resolve(host_, service, deadline);
        switch (a.state) {
        case dns::answer::status::ok: return std::move(a.addresses);
        case dns::answer::status::timed_out:
            throw upstream_error(
                "resolving " + host_ + " timed out after " +
                std::to_string(
                    std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - started).count()) +
                " ms (the DNS server did not answer within timeout)");
        case dns::answer::status::failed: break;
        }
        throw upstream_error("cannot resolve " + host_ + ": " + ::gai_strerror(a.error));
    }

    outcome transact(job& j)
    {
        const auto deadline = clock_type::now() + std::chrono::milliseconds(static_cast<long long>(timeout_ * 1000));
        connection conn(deadline);
        conn.open(addresses(deadline), host_, port_);
        const reply greeting = conn.read_reply();
        if (greeting.code != 220) throw upstream_error("greeting: " + code_and_text(greeting));
        std::vector<std::string> kw = hello(conn);
        if (starttls_) {
            if (!offers(kw, "STARTTLS")) throw upstream_error("the upstream does not offer STARTTLS");
            const reply r = conn.command("STARTTLS");
            if (r.code != 220) throw upstream_error("STARTTLS refused: " + code_and_text(r));
            conn.start_tls(ctx_, host_, tls_verify_);
            kw = hello(conn);
        }
        std::string mail = "MAIL FROM:" + (j.mail_from == "<>" ? std::string("<>") : "<" + j.mail_from + ">");
        if (offers(kw, "SIZE")) mail += " SIZE=" + std::to_string(j.data.size());
        if (j.eight_bit && offers(kw, "8BITMIME")) mail += " BODY=8BITMIME";
        for (const std::string& p : j.params)
            if (p == "SMTPUTF8" && offers(kw, "SMTPUTF8")) mail += " SMTPUTF8";
        const reply m = conn.command(mail);
        if (m.code / 100 != 2) {
            quit(conn);
            return from_code(m.code, "upstream refused the sender: " + code_and_text(m));
        }
        std::vector<std::string> refusals = j.refused;
        bool any_temporary = false;
        int first_permanent = j.refused.empty() ? 0 : 553;
        std::size_t accepted = 0;
        for (const std::string& rcpt : j.rcpts) {
            const reply r = conn.command("RCPT TO:<" + rcpt + ">");
            if (r.code / 100 == 2) {
                ++accepted;
                continue;
            }
            if (r.code / 100 == 5) {
                if (first_permanent == 0) first_permanent = r.code;
            } else {
                any_temporary = true;  // 4xx, or a code RCPT cannot have: not known to be final
            }
            refusals.push_back("refused <" + rcpt + ">: " + code_and_text(r));
        }
        // The log is the record of who did not get the message: every refusal, one line each.
        for (const std::string& line : refusals)
            log_.warn("session=" + std::to_string(j.session) + " proxy " + host_ + ": " + clean(line));
        if (accepted == 0) {
            quit(conn);
            if (any_temporary || first_permanent == 0)
                return from_code(451, "4.4.0 Upstream accepted no recipient", refusals);
            return from_code(first_permanent, "5.1.1 Upstream accepted no recipient", refusals);
        }
        const reply d = conn.command("DATA");
        if (d.code != 354) {
            quit(conn);
            // Only a refusal is an answer; 2xx or 3xx here means nothing was sent (or the
            // upstream is confused): the client keeps the message.
            if (d.code / 100 != 4 && d.code / 100 != 5) throw upstream_error("DATA: unexpected " + code_and_text(d));
            return from_code(d.code, "upstream refused DATA: " + code_and_text(d));
        }
        conn.send(j.data);
        const reply done = conn.read_reply();
        quit(conn);
        if (done.code / 100 == 2)
            return from_code(done.code, done.text().empty() ? std::string("2.0.0 OK") : done.text(), refusals);
        // After the dot, anything but 2xx/4xx/5xx leaves the message's fate unknown: 451 (a
        // duplicate at worst, never a loss).
        if (done.code / 100 != 4 && done.code / 100 != 5)
            throw upstream_error("end of data: unexpected " + code_and_text(done));
        return from_code(done.code, "upstream: " + done.text());
    }

    static void quit(connection& conn) noexcept
    {
        try {
            conn.command("QUIT");
        } catch (...) {  // the transaction is decided; a lost QUIT changes nothing
        }
    }

    void relay(job& j)
    {
        outcome o;
        try {
            o = transact(j);
        } catch (const std::exception& e) {
            log_.error("session=" + std::to_string(j.session) + " proxy " + host_ + ":" + std::to_string(port_) + ": " +
                       e.what() + "; answering 451");
            o.verdict = sdk::verdict::tempfail;
            o.code = 451;
            o.text = "4.4.1 Upstream unavailable, try again later";
        }
        if (!reply_text::valid(o.code, o.text)) {
            // Cannot happen (from_code() builds valid replies); if it did, the host would turn
            // the verdict into 451 - after an upstream 250, a duplicate. Keep the verdict.
            log_.error("session=" + std::to_string(j.session) + " proxy: invalid reply " + std::to_string(o.code) +
                       " \"" + clean(o.text) + "\" replaced");
            o.code = o.verdict == sdk::verdict::accept ? 250 : o.verdict == sdk::verdict::reject ? 554 : 451;
            o.text = o.verdict == sdk::verdict::accept ? "2.0.0 OK" : "Error";
        }
        const std::size_t first_end = o.text.find('\n');
        const std::size_t more = static_cast<std::size_t>(std::count(o.text.begin(), o.text.end(), '\n'));
        log_.info("session=" + std::to_string(j.session) + " proxy " + host_ + ":" + std::to_string(port_) + ": " +
                  std::to_string(o.code) + " " + o.text.substr(0, first_end) +
                  (more ? " (+" + std::to_string(more) + " lines)" : ""));
        const asiosmtpd_status st = j.pending.complete(o.verdict, o.code, o.text);
        if (st != ASIOSMTPD_OK)
            log_.warn("session=" + std::to_string(j.session) + " proxy: the host refused the completion (" +
                      sdk::status_name(st) + ")");
    }

    sdk::logger log_;
    std::string host_;
    std::uint16_t port_ = 25;
    bool starttls_ = false;
    bool tls_verify_ = true;
    double timeout_ = 20;
    std::string helo_;
    SSL_CTX* ctx_ = nullptr;
    std::unique_ptr<dns::resolver> resolver_;  // null for an IP literal
    std::optional<sdk::worker_pool<job>> pool_;
};

}  // namespace

ASIOSMTPD_PLUGIN(proxy, "proxy", "1.0.0", "relays each message to an upstream SMTP server and answers with its verdict",
                 ASIOSMTPD_PF_THREAD_SAFE)
