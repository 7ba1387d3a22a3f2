// SPDX-License-Identifier: Apache-2.0
// proxy: relays each message with its envelope to an upstream SMTP server, as aiosmtpd's Proxy
// handler (X-Peer: <client ip> inserted before the first empty line), and answers with the
// upstream's verdict instead of aiosmtpd's unconditional 250: 250 only when the upstream took
// the message for at least one recipient; upstream down, slow, or speaking nonsense → 451 and
// the client keeps the message.
//
// The upstream transaction runs alongside the client's, as Haraka's smtp_proxy does: MAIL opens
// it (connect, EHLO, optional STARTTLS, MAIL FROM), each RCPT is asked upstream at once and a
// refusal goes back to the client as the RCPT's reply, and DATA sends the message (BDAT LAST
// when the upstream offers CHUNKING, RFC 3030; BODY=BINARYMIME only so). The upstream
// connection belongs to the client session (a session slot) and serves its next transactions
// (RSET upstream first); it is closed with QUIT when the session ends. Every step suspends its
// hook and runs on the plugin's worker threads over non-blocking sockets (poll) with one
// deadline (`timeout`) per step; the hooks never block an event-loop thread.
//
// At DATA the envelope the server accepted is compared with what the upstream accepted: the
// recipients the upstream has not seen (another plugin accepted them before this one was asked)
// are sent now, and if the upstream holds one the server refused (a later plugin refused it),
// or the sender differs, or 8-bit content needs BODY=8BITMIME, the upstream transaction starts
// over (RSET, MAIL, RCPT for each). Refusals at that point are listed in the DATA reply as before:
//  - some recipients accepted upstream, DATA accepted: 250 with the upstream's text; the
//    refused recipients are listed in further lines of the reply and logged (warn);
//  - no recipient accepted: 451 when any refusal was temporary (4xx), else 550 (or the
//    upstream's 5xx), listing every refusal;
//  - MAIL or DATA refused: the upstream's reply (4xx → TEMPFAIL, 5xx → REJECT; 421 → 451).
// A message with more than `max_hops` Received: header fields is refused (554 5.4.6 Too many
// hops) without being relayed: a mail loop.
// An envelope address with a control character (CR, LF, NUL, ... DEL) is never sent: in
// "MAIL FROM:<...>" or "RCPT TO:<...>" a CR LF would end the command and start one of the
// client's choosing. The server refuses such addresses (553) before any plugin sees them; should
// one arrive anyway (an envelope-rewriting plugin, a host without that check), a sender with one
// rejects the message with 553 5.1.7 and a recipient with one is refused (553 5.1.3, listed like
// the upstream's refusals) while the others are relayed.
// DSN (RFC 3461): the client's RET/ENVID and NOTIFY/ORCPT go on to an upstream that offers DSN
// (RFC 3461 §5.2.1: a relay passes them on); to one that does not they are dropped, as Postfix
// does (that upstream then sends DSNs by its own defaults).
// With `protocol: lmtp` the upstream is an LMTP server (RFC 2033: Dovecot, Cyrus): LHLO instead
// of EHLO, and after the dot one reply per accepted recipient, read in order. All accepted: 250;
// any deferred (4xx): 451 for the message (the client retries, so the recipients that took it
// may get it twice, none loses it); the rest refused for good (5xx): 250 listing them, as the
// DATA-time refusals above; none accepted: as above. A client on an LMTP listener gets each
// recipient's own reply (rcpt_reply): the upstream's after the dot, or a DATA-time refusal.
// Every reply text is built from the upstream's bytes through reply_text.hpp, so the host never
// refuses it (that would turn an upstream's 250 into a 451 and a duplicate); the upstream's
// name is resolved within the same deadline as the rest (resolver.hpp).
#include "delivery_common.hpp"
#include "hops.hpp"
#include "reply_text.hpp"
#include "resolver.hpp"

#include <asiosmtpd/dsn.hpp>
#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
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
namespace reply_text = asiosmtpd::plugins::proxy_text;
namespace dns = asiosmtpd::plugins::proxy_dns;
namespace hops = asiosmtpd::plugins::proxy_hops;
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
    explicit connection(clock_type::time_point deadline) : deadline_(deadline) {}
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

    // Connects to the UNIX socket at `path` (host: unix:<path>).
    void open_unix(const std::string& path)
    {
        ap::unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (fd.get() < 0) throw upstream_error("cannot connect to unix:" + path + ": " + ap::errno_text(errno));
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::copy(path.begin(), path.end(), addr.sun_path);  // its length is checked at create()
        if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
            // A UNIX socket connects at once, or says EAGAIN when its backlog is full.
            const int err = errno;
            if (err != EAGAIN && err != EINPROGRESS)
                throw upstream_error("cannot connect to unix:" + path + ": " + ap::errno_text(err));
            if (!wait(fd.get(), POLLOUT)) throw upstream_error("cannot connect to unix:" + path + ": timed out");
            int so = 0;
            socklen_t len = sizeof so;
            ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so, &len);
            if (so != 0) throw upstream_error("cannot connect to unix:" + path + ": " + ap::errno_text(so));
        }
        fd_ = std::move(fd);
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
            if (line.size() <= 3 || line[3] == ' ') {
                ++replies_;
                return r;
            }
        }
    }

    /// The deadline of what the connection does next (each step of a session has its own).
    void set_deadline(clock_type::time_point deadline) noexcept { deadline_ = deadline; }

    /// Complete replies read so far.
    std::size_t replies() const noexcept { return replies_; }

    /// True when an idle connection can take the next command: the upstream neither closed it
    /// nor said anything unasked (a 421 before closing, say).
    bool idle_ok() noexcept
    {
        if (!in_.empty() || (ssl_ && ::SSL_pending(ssl_) > 0)) return false;
        struct pollfd p {};
        p.fd = fd_.get();
        p.events = POLLIN | POLLRDHUP;
        return ::poll(&p, 1, 0) == 0;
    }

    reply command(const std::string& line)
    {
        send(line + "\r\n");
        return read_reply();
    }

private:
    bool wait(int fd, short events) { return ap::wait_ready(fd, events, deadline_); }

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
    std::size_t replies_ = 0;
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
// `stuffed` false: the same message without the transparency (a BDAT chunk, RFC 3030).
std::string smtp_data(std::string_view msg, bool stuffed = true)
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
        if (stuffed && line_start && ch == '.') out += '.';
        out += ch;
        line_start = false;
    }
    if (!line_start) out += "\r\n";
    if (stuffed) out += ".\r\n";
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
// continue_ (code 0): the upstream agreed; the next plugin and the server's default decide.
struct outcome {
    sdk::verdict verdict = sdk::verdict::tempfail;
    std::uint16_t code = 451;
    std::string text;
};

outcome go_on()
{
    outcome o;
    o.verdict = sdk::verdict::continue_;
    o.code = 0;
    return o;
}

outcome unavailable()
{
    outcome o;
    o.text = "4.4.1 Upstream unavailable, try again later";
    return o;
}

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

// The upstream's refusal of MAIL or RCPT as the client's reply to the same command: its code
// (mapped as above) and its lines.
outcome passed_on(const reply& r)
{
    std::vector<std::string> rest;
    if (r.lines.size() > 1) rest.assign(r.lines.begin() + 1, r.lines.end());
    const std::string first = r.lines.empty() || r.lines.front().empty() ? "Refused by the upstream" : r.lines.front();
    return from_code(r.code, first, rest);
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

// MAIL's SIZE=n, or 0.
std::uint64_t declared_size(const std::vector<std::string>& params)
{
    for (const std::string& p : params) {
        if (p.size() <= 5 || p.compare(0, 5, "SIZE=") != 0) continue;
        std::uint64_t n = 0;
        for (const char ch : std::string_view(p).substr(5)) {
            if (ch < '0' || ch > '9' || n > (UINT64_MAX - 9) / 10) return 0;
            n = n * 10 + static_cast<std::uint64_t>(ch - '0');
        }
        return n;
    }
    return 0;
}

bool has_param(const std::vector<std::string>& params, std::string_view p)
{
    return std::find(params.begin(), params.end(), p) != params.end();
}

// RFC 3461 xtext, as XFORWARD values are sent: printable ASCII but '+' and '=' as is, every
// other byte as "+XX".
std::string xtext(std::string_view s)
{
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c > 0x20 && c < 0x7f && c != '+' && c != '=') {
            out += ch;
            continue;
        }
        out += '+';
        out += hex[c >> 4];
        out += hex[c & 15];
    }
    return out;
}

class proxy {
public:
    explicit proxy(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"host", "port", "starttls", "tls_verify", "ca_file", "timeout", "helo", "workers", "max_hops",
                        "protocol", "xforward"});
        host_ = cfg.require("host").as_string();
        if (host_.empty()) throw std::invalid_argument("host: must not be empty");
        const auto p = cfg.get("port");
        port_ = static_cast<std::uint16_t>(p ? p->as_int(1, 65535) : 25);
        where_ = host_ + ":" + std::to_string(port_);
        if (host_.compare(0, 5, "unix:") == 0) {
            // An upstream on a UNIX socket: host: unix:<path> (relative to the config's folder).
            if (p) throw std::invalid_argument("port: not with host: unix:<path> (a UNIX socket has no port)");
            unix_path_ = host_.substr(5);
            if (unix_path_.empty()) throw std::invalid_argument("host: unix: needs a socket path (unix:/run/x.sock)");
            unix_path_ = ap::resolve_path(unix_path_, reg.config_dir());
            if (unix_path_.size() >= sizeof(sockaddr_un::sun_path))
                throw std::invalid_argument("host: \"" + clean(unix_path_) +
                                            "\" is too long for a UNIX socket (at most " +
                                            std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes)");
            host_ = "localhost";  // the TLS name, should starttls be asked for
            where_ = "unix:" + unix_path_;
        }
        xforward_ = cfg.bool_or("xforward", false);
        starttls_ = cfg.bool_or("starttls", false);
        tls_verify_ = cfg.bool_or("tls_verify", true);
        const auto t = cfg.get("timeout");
        timeout_ = t ? t->as_double() : 20.0;
        if (!(timeout_ > 0 && timeout_ <= 3600))
            throw std::invalid_argument("timeout: must be between 0 and 3600 seconds");
        helo_ = cfg.string_or("helo", "");
        if (helo_.empty()) helo_ = own_hostname();
        if (!valid_helo(helo_)) throw std::invalid_argument("helo: \"" + clean(helo_) + "\" is not a host name");
        const std::string protocol = cfg.string_or("protocol", "smtp");
        if (protocol != "smtp" && protocol != "lmtp")
            throw std::invalid_argument("protocol: must be smtp or lmtp, not \"" + clean(protocol) + "\"");
        lmtp_ = protocol == "lmtp";
        const auto w = cfg.get("workers");
        const std::int64_t workers = w ? w->as_int(1, 256) : 8;
        const auto h = cfg.get("max_hops");
        max_hops_ = static_cast<std::size_t>(h && !h->is_null() ? h->as_int(1, 10000) : 50);
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
        // An IP literal needs no DNS; a name is resolved for each new connection, bounded by
        // `timeout` (one thread: there is one name, and lookups of it are shared).
        if (!is_ip_literal(host_) && unix_path_.empty()) resolver_ = std::make_unique<dns::resolver>(1);
        reg.on<&proxy::on_mail>(sdk::hook::mail);
        reg.on<&proxy::on_rcpt>(sdk::hook::rcpt);
        reg.on<&proxy::on_data>(sdk::hook::data);
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { work(j); });
    }
    proxy(const proxy&) = delete;
    proxy& operator=(const proxy&) = delete;
    ~proxy()
    {
        pool_.reset();      // each worker returns by its deadline (timeout)
        resolver_.reset();  // then the lookup thread, once getaddrinfo() gives up (resolv.conf)
        if (ctx_) ::SSL_CTX_free(ctx_);
    }

    // -- Hooks (event-loop threads): copy what the step needs, suspend, hand it to a worker --

    sdk::verdict on_mail(sdk::call& c, const sdk::address_args& a)
    {
        const std::uint64_t session = c.session().id;
        if (ap::has_control(a.address)) {
            log_.warn("session=" + std::to_string(session) + " proxy: sender <" + ap::escape_controls(a.address) +
                      "> has a control character; not relayed");
            return c.reject(553, sender_refused);
        }
        session_link& link = link_of(c);
        const std::uint64_t txn = ++link.next_txn;
        c.emplace_slot<txn_mark>(sdk::scope::txn, txn_mark{txn});
        job j = make_job(step::mail, link, txn, session);
        j.mail_from = std::string(a.address);
        for (std::string_view p : a.params) j.params.emplace_back(p);
        j.eight_bit = has_param(j.params, "BODY=8BITMIME");
        j.binary = has_param(j.params, "BODY=BINARYMIME");
        return post(c, std::move(j));
    }

    sdk::verdict on_rcpt(sdk::call& c, const sdk::address_args& a)
    {
        const std::uint64_t session = c.session().id;
        if (ap::has_control(a.address)) {
            log_.warn("session=" + std::to_string(session) + " proxy: refused <" + ap::escape_controls(a.address) +
                      ">: " + std::string(rcpt_refused));
            return c.reject(553, rcpt_refused.substr(4));
        }
        session_link& link = link_of(c);
        job j = make_job(step::rcpt, link, current_txn(c, link), session);
        j.mail_from = std::string(c.txn().mail_from);
        for (std::string_view p : c.mail_params()) j.params.emplace_back(p);
        j.eight_bit = has_param(j.params, "BODY=8BITMIME");
        j.binary = has_param(j.params, "BODY=BINARYMIME");
        j.rcpts.emplace_back(a.address);
        j.rcpt_params.emplace_back(a.params.begin(), a.params.end());
        return post(c, std::move(j));
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        const sdk::session_info s = c.session();
        const std::string who = "session=" + std::to_string(s.id);
        // RFC 5321 §6.3: a message that has passed more relays than any sane route is looping.
        if (const std::size_t hops = hops::received_fields(args.content(), max_hops_); hops > max_hops_) {
            log_.warn(who + " proxy: more than max_hops (" + std::to_string(max_hops_) +
                      ") Received: header fields, a mail loop; refused, not relayed");
            return c.reject(554, "5.4.6 Too many hops");
        }
        const std::string_view mail_from = c.txn().mail_from;
        if (ap::has_control(mail_from)) {
            log_.warn(who + " proxy: sender <" + ap::escape_controls(mail_from) +
                      "> has a control character; not relayed");
            return c.reject(553, sender_refused);
        }
        session_link& link = link_of(c);
        job j = make_job(step::data, link, current_txn(c, link), s.id);
        const std::vector<std::string_view> rcpts = c.rcpts();
        for (std::size_t i = 0; i < rcpts.size(); ++i) {
            const std::string_view r = rcpts[i];
            if (ap::has_control(r)) {
                j.refused.push_back("refused <" + ap::escape_controls(r) + ">: " + std::string(rcpt_refused));
                j.answers.push_back({i, 553, std::string(rcpt_refused.substr(4))});
                continue;
            }
            j.rcpts.emplace_back(r);
            j.rcpt_index.push_back(i);
            const std::vector<std::string_view> params = c.rcpt_params(i);
            j.rcpt_params.emplace_back(params.begin(), params.end());
        }
        if (j.rcpts.empty() && !j.refused.empty()) {
            for (const std::string& line : j.refused) log_.warn(who + " proxy: " + line);
            const outcome o = from_code(553, "5.1.3 No recipient could be relayed", j.refused);
            return c.reject(o.code, o.text);
        }
        // As it came; the worker sends it by DATA or BDAT, whichever the upstream takes.
        j.data = insert_x_peer(args.content(), ap::escape_controls(s.peer_address));
        j.mail_from = std::string(mail_from);
        for (std::string_view p : c.mail_params()) j.params.emplace_back(p);
        j.binary = has_param(j.params, "BODY=BINARYMIME");
        j.eight_bit = !j.binary && (has_8bit(args.content()) || has_param(j.params, "BODY=8BITMIME"));
        return post(c, std::move(j));
    }

private:
    // What the upstream knows of one client session. Shared by the session's slot and the job
    // running for it; a worker holds `mutex` for the whole step, so the steps of one session
    // run one after the other even when a hook timed out and the next one came (each step's
    // deadline bounds the wait).
    struct upstream {
        std::mutex mutex;
        std::unique_ptr<connection> conn;  // greeted, EHLO'd (and STARTTLS'd); null when none
        std::vector<std::string> keywords;
        std::uint64_t txn = 0;           // the client transaction the upstream one belongs to; 0: none open
        std::string sender;              // its MAIL FROM
        bool body_8bit = false;          // sent with BODY=8BITMIME
        bool body_binary = false;        // sent with BODY=BINARYMIME
        std::vector<std::string> rcpts;  // accepted upstream, in order
    };

    // The session slot: the upstream, and the numbering of the session's transactions. When
    // the session ends, the connection is handed to a worker to say QUIT (never on the
    // session's thread).
    struct session_link {
        explicit session_link(proxy* p) : owner(p), up(std::make_shared<upstream>()) {}
        session_link(const session_link&) = delete;
        session_link& operator=(const session_link&) = delete;
        ~session_link() { owner->retire(std::move(up)); }
        proxy* owner;
        std::shared_ptr<upstream> up;
        std::uint64_t next_txn = 0;
    };

    // The transaction slot: which client transaction this is (the slot ends with it).
    struct txn_mark {
        std::uint64_t id = 0;
    };

    enum class step { mail, rcpt, data, quit };

    struct job {
        sdk::pending pending;
        step what = step::data;
        std::shared_ptr<upstream> up;
        std::uint64_t session = 0;
        std::uint64_t txn = 0;
        clock_type::time_point deadline;
        std::string data;  // DATA: the message with X-Peer (stuffed for DATA by the worker)
        std::string mail_from;
        std::vector<std::string> rcpts;       // RCPT: the one; DATA: the ones to relay
        std::vector<std::size_t> rcpt_index;  // DATA: each of rcpts' index among the server's recipients
        struct rcpt_answer {
            std::size_t index;  // among the server's recipients (rcpt_reply())
            std::uint16_t code;
            std::string text;
        };
        std::vector<rcpt_answer> answers;  // DATA: each recipient's own reply, for LMTP clients
        std::vector<std::string> refused;  // DATA: "refused <rcpt>: ..." for those never sent (control characters)
        std::vector<std::string> params;
        std::vector<std::vector<std::string>> rcpt_params;  // each of rcpts' ESMTP parameters (DSN)
        bool eight_bit = false;                             // BODY=8BITMIME wanted (asked for, or 8-bit content)
        bool binary = false;                                // BODY=BINARYMIME (RFC 3030): BDAT only, bytes as they came
        struct {
            std::string address;  // the session's peer: an IP address, or "unix:<path>"
            std::uint16_t port = 0;
            std::string helo;
            bool esmtp = false;
        } client;  // with xforward: who the client is, for XFORWARD
    };

    session_link& link_of(sdk::call& c)
    {
        if (session_link* l = c.find_slot<session_link>(sdk::scope::session)) return *l;
        return c.emplace_slot<session_link>(sdk::scope::session, this);
    }

    // This client transaction's number; a new one when this plugin's MAIL hook did not run
    // (an earlier plugin accepted MAIL and stopped the chain).
    std::uint64_t current_txn(sdk::call& c, session_link& link)
    {
        if (const txn_mark* m = c.find_slot<txn_mark>(sdk::scope::txn)) return m->id;
        const std::uint64_t id = ++link.next_txn;
        c.emplace_slot<txn_mark>(sdk::scope::txn, txn_mark{id});
        return id;
    }

    job make_job(step what, session_link& link, std::uint64_t txn, std::uint64_t session) const
    {
        job j;
        j.what = what;
        j.up = link.up;
        j.txn = txn;
        j.session = session;
        j.deadline = clock_type::now() + std::chrono::milliseconds(static_cast<long long>(timeout_ * 1000));
        return j;
    }

    sdk::verdict post(sdk::call& c, job j)
    {
        if (xforward_) {
            const sdk::session_info s = c.session();
            j.client.address = std::string(s.peer_address);
            j.client.port = s.peer_port;
            j.client.helo = std::string(s.helo_name);
            j.client.esmtp = s.extended_smtp;
        }
        j.pending = c.suspend();
        pool_->post(std::move(j));
        return sdk::verdict::pending;
    }

    void retire(std::shared_ptr<upstream> up) noexcept
    {
        if (!up || !pool_) return;
        try {
            job j;
            j.what = step::quit;
            j.up = std::move(up);
            // Refused while the pool stops: the connection is simply closed here.
            (void)pool_->try_post(j);
        } catch (...) {}
    }

    // -- Workers ------------------------------------------------------------------------------

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

    // The DSN parameters (RFC 3461) for the upstream's MAIL FROM or a RCPT TO, when it offers
    // DSN: " RET=HDRS ENVID=...", " NOTIFY=... ORCPT=..." (xtext the server checked: no blank,
    // no control byte); nothing when it does not.
    static std::string dsn_mail(const upstream& up, const std::vector<std::string>& params)
    {
        std::string out;
        if (offers(up.keywords, "DSN"))
            for (const std::string& p : asiosmtpd::sdk::dsn::mail_params(asiosmtpd::sdk::dsn::parse_mail(params)))
                out += " " + p;
        return out;
    }
    static std::string dsn_rcpt(const upstream& up, const job& j, std::size_t index)
    {
        std::string out;
        if (index < j.rcpt_params.size() && offers(up.keywords, "DSN"))
            for (const std::string& p :
                 asiosmtpd::sdk::dsn::rcpt_params(asiosmtpd::sdk::dsn::parse_rcpt(j.rcpt_params[index])))
                out += " " + p;
        return out;
    }

    std::vector<std::string> hello(connection& conn)
    {
        if (lmtp_) {  // RFC 2033: LHLO only (an LMTP server refuses EHLO and HELO)
            const reply l = conn.command("LHLO " + helo_);
            if (l.code != 250) throw upstream_error("LHLO refused: " + code_and_text(l));
            return keywords(l);
        }
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

    static void forget(upstream& up) noexcept
    {
        up.conn.reset();
        up.keywords.clear();
        up.txn = 0;
        up.sender.clear();
        up.body_8bit = false;
        up.body_binary = false;
        up.rcpts.clear();
    }

    // The session's connection when it is still usable (true), else a new one: connect, greeting,
    // EHLO, STARTTLS when configured (false).
    bool ensure_connection(upstream& up, clock_type::time_point deadline, std::uint64_t session)
    {
        if (up.conn) {
            if (up.conn->idle_ok()) {
                up.conn->set_deadline(deadline);
                return true;
            }
            log_.info("session=" + std::to_string(session) + " proxy " + where_ +
                      ": the upstream closed the connection between commands; connecting again");
            forget(up);
        }
        auto conn = std::make_unique<connection>(deadline);
        if (!unix_path_.empty()) conn->open_unix(unix_path_);
        else conn->open(addresses(deadline), host_, port_);
        const reply greeting = conn->read_reply();
        if (greeting.code != 220) throw upstream_error("greeting: " + code_and_text(greeting));
        std::vector<std::string> kw = hello(*conn);
        if (starttls_) {
            if (!offers(kw, "STARTTLS")) throw upstream_error("the upstream does not offer STARTTLS");
            const reply r = conn->command("STARTTLS");
            if (r.code != 220) throw upstream_error("STARTTLS refused: " + code_and_text(r));
            conn->start_tls(ctx_, host_, tls_verify_);
            kw = hello(*conn);
        }
        up.conn = std::move(conn);
        up.keywords = std::move(kw);
        return false;
    }

    // RSET what the upstream has open, then MAIL FROM for the job's transaction. The upstream's
    // refusal as the outcome (`wrapped`: "upstream refused the sender: ..." for DATA, else its
    // own reply for the client's MAIL or RCPT), or nothing when it took the sender.
    std::optional<outcome> open_transaction(upstream& up, const job& j, bool eight_bit, std::uint64_t size,
                                            bool wrapped)
    {
        if (ap::has_control(j.mail_from)) {  // from another plugin's envelope: never sent
            log_.warn("session=" + std::to_string(j.session) + " proxy: sender <" + ap::escape_controls(j.mail_from) +
                      "> has a control character; not relayed");
            return from_code(553, sender_refused);
        }
        if (up.txn != 0) {
            const reply r = up.conn->command("RSET");
            if (r.code / 100 != 2) throw upstream_error("RSET: " + code_and_text(r));
            up.txn = 0;
            up.rcpts.clear();
        }
        // RFC 3030 §3: a binary message can only go to an upstream that takes it as it is.
        if (j.binary && !(offers(up.keywords, "CHUNKING") && offers(up.keywords, "BINARYMIME")))
            return from_code(554, "5.6.3 The upstream does not accept BODY=BINARYMIME");
        if (xforward_) send_xforward(up, j);
        std::string mail = "MAIL FROM:" + (j.mail_from == "<>" ? std::string("<>") : "<" + j.mail_from + ">");
        if (size > 0 && offers(up.keywords, "SIZE")) mail += " SIZE=" + std::to_string(size);
        const bool body_8bit = !j.binary && eight_bit && offers(up.keywords, "8BITMIME");
        if (body_8bit) mail += " BODY=8BITMIME";
        if (j.binary) mail += " BODY=BINARYMIME";
        if (has_param(j.params, "SMTPUTF8") && offers(up.keywords, "SMTPUTF8")) mail += " SMTPUTF8";
        mail += dsn_mail(up, j.params);
        const reply m = up.conn->command(mail);
        if (m.code / 100 != 2) {
            outcome o = wrapped ? from_code(m.code, "upstream refused the sender: " + code_and_text(m)) : passed_on(m);
            if (m.code == 421) forget(up);  // the upstream closes the connection
            return o;
        }
        up.txn = j.txn;
        up.sender = j.mail_from;
        up.body_8bit = body_8bit;
        up.body_binary = j.binary;
        up.rcpts.clear();
        return std::nullopt;
    }

    // xforward: true, and the upstream offers XFORWARD (Postfix's XFORWARD_README): who the
    // client is, before each MAIL (the upstream forgets it when a transaction ends), in two
    // commands as Postfix's smtp client sends them (each stays far below 512 bytes), with only
    // the attributes the upstream lists. There is no client host name (the server does no
    // reverse lookups): NAME is [UNAVAILABLE]. A refusal is logged; the message goes on.
    void send_xforward(upstream& up, const job& j)
    {
        std::vector<std::string> attrs;
        for (const std::string& k : up.keywords)
            if (k.compare(0, 9, "XFORWARD ") == 0) {
                std::size_t i = 9;
                while (i < k.size()) {
                    const std::size_t sp = std::min(k.find(' ', i), k.size());
                    if (sp > i) attrs.push_back(k.substr(i, sp - i));
                    i = sp + 1;
                }
            }
        if (attrs.empty()) return;
        const auto listed = [&](std::string_view a) { return std::find(attrs.begin(), attrs.end(), a) != attrs.end(); };
        const bool ip = is_ip_literal(j.client.address);
        std::string first;
        std::string second;
        const auto add = [&](std::string& cmd, std::string_view name, const std::string& value) {
            if (listed(name)) cmd += " " + std::string(name) + "=" + xtext(value.substr(0, 255));
        };
        add(first, "NAME", "[UNAVAILABLE]");
        add(first, "ADDR",
            !ip                                               ? std::string("[UNAVAILABLE]")
            : j.client.address.find(':') != std::string::npos ? "IPV6:" + j.client.address
                                                              : j.client.address);
        add(first, "PORT", ip ? std::to_string(j.client.port) : std::string("[UNAVAILABLE]"));
        add(second, "PROTO", j.client.esmtp ? "ESMTP" : "SMTP");
        add(second, "HELO", j.client.helo.empty() || !valid_helo(j.client.helo) ? "[UNAVAILABLE]" : j.client.helo);
        add(second, "SOURCE", ip ? "REMOTE" : "LOCAL");
        for (const std::string* cmd : {&first, &second}) {
            if (cmd->empty()) continue;
            const reply r = up.conn->command("XFORWARD" + *cmd);
            if (r.code / 100 != 2)
                log_.warn("session=" + std::to_string(j.session) + " proxy " + where_ +
                          ": XFORWARD refused: " + clean(code_and_text(r)) + "; relaying without it");
        }
    }

    outcome mail_step(job& j)
    {
        upstream& up = *j.up;
        if (auto refused = open_transaction(up, j, j.eight_bit, declared_size(j.params), false)) return *refused;
        return go_on();
    }

    outcome rcpt_step(job& j)
    {
        upstream& up = *j.up;
        if (up.txn != j.txn) {
            // The upstream has another (or no) transaction: the client's MAIL was accepted without
            // this plugin, or the upstream connection was lost since.
            if (auto refused = open_transaction(up, j, j.eight_bit, declared_size(j.params), false)) return *refused;
        }
        const std::string& rcpt = j.rcpts.front();
        const reply r = up.conn->command("RCPT TO:<" + rcpt + ">" + dsn_rcpt(up, j, 0));
        if (r.code / 100 == 2) {
            up.rcpts.push_back(rcpt);
            return go_on();
        }
        log_.info("session=" + std::to_string(j.session) + " proxy " + where_ + ": refused <" + rcpt +
                  ">: " + clean(code_and_text(r)));
        outcome o = passed_on(r);
        if (r.code == 421) forget(up);
        return o;
    }

    outcome data_step(job& j)
    {
        upstream& up = *j.up;
        const bool want_8bit = j.eight_bit && offers(up.keywords, "8BITMIME");
        bool fresh = up.txn == 0 || up.txn != j.txn || up.sender != j.mail_from || (want_8bit && !up.body_8bit) ||
                     up.body_binary != j.binary;
        std::vector<std::size_t> to_send;  // indexes into j.rcpts
        if (!fresh) {
            // The server's recipients against the upstream's: send the ones it has not seen; one
            // it holds that the server does not (refused by a later plugin) means starting over.
            std::vector<std::string> left = up.rcpts;
            for (std::size_t i = 0; i < j.rcpts.size(); ++i) {
                const auto it = std::find(left.begin(), left.end(), j.rcpts[i]);
                if (it != left.end()) left.erase(it);
                else to_send.push_back(i);
            }
            fresh = !left.empty();
        }
        // The message as the upstream gets it: CRLF lines (a binary one as it came). Its size is
        // SIZE= (RFC 1870: without dot-stuffing and the final dot) and the BDAT chunk's.
        const std::string lines = j.binary ? std::string() : smtp_data(j.data, false);
        const std::string_view message = j.binary ? std::string_view(j.data) : std::string_view(lines);
        if (fresh) {
            if (auto refused = open_transaction(up, j, j.eight_bit, message.size(), true)) return *refused;
            to_send.clear();
            for (std::size_t i = 0; i < j.rcpts.size(); ++i) to_send.push_back(i);
        }
        std::vector<std::string> refusals = j.refused;
        std::vector<bool> refused_now(j.rcpts.size(), false);  // by index into j.rcpts
        bool any_temporary = false;
        int first_permanent = j.refused.empty() ? 0 : 553;
        for (const std::size_t index : to_send) {
            const std::string& rcpt = j.rcpts[index];
            const reply r = up.conn->command("RCPT TO:<" + rcpt + ">" + dsn_rcpt(up, j, index));
            if (r.code / 100 == 2) {
                up.rcpts.push_back(rcpt);
                continue;
            }
            refused_now[index] = true;
            answer(j, index, r);
            if (r.code / 100 == 5) {
                if (first_permanent == 0) first_permanent = r.code;
            } else {
                any_temporary = true;  // 4xx, or a code RCPT cannot have: not known to be final
            }
            refusals.push_back("refused <" + rcpt + ">: " + code_and_text(r));
        }
        // The log is the record of who did not get the message: every refusal, one line each.
        for (const std::string& line : refusals)
            log_.warn("session=" + std::to_string(j.session) + " proxy " + where_ + ": " + clean(line));
        if (up.rcpts.empty()) {
            end_transaction(up);
            if (any_temporary || first_permanent == 0)
                return from_code(451, "4.4.0 Upstream accepted no recipient", refusals);
            return from_code(first_permanent, "5.1.1 Upstream accepted no recipient", refusals);
        }
        // RFC 3030: one BDAT LAST chunk when the upstream offers CHUNKING (the message as DATA
        // would deliver it, CRLF lines, no dot-stuffing; a binary one as it came), else DATA.
        const bool chunking = offers(up.keywords, "CHUNKING");
        if (chunking) {
            up.conn->send("BDAT " + std::to_string(message.size()) + " LAST\r\n");
            up.conn->send(message);
        } else {
            const reply d = up.conn->command("DATA");
            if (d.code != 354) {
                // Only a refusal is an answer; 2xx or 3xx here means nothing was sent (or the
                // upstream is confused): the client keeps the message.
                if (d.code / 100 != 4 && d.code / 100 != 5)
                    throw upstream_error("DATA: unexpected " + code_and_text(d));
                end_transaction(up);
                return from_code(d.code, "upstream refused DATA: " + code_and_text(d));
            }
            up.conn->send(smtp_data(j.data));
        }
        if (lmtp_) return lmtp_replies(up, j, std::move(refusals), std::move(refused_now));
        const reply done = up.conn->read_reply();
        // After a refused BDAT the upstream's state is not known (RFC 3030 §2): RSET.
        if (chunking && done.code / 100 != 2 && done.code != 421) end_transaction(up);
        // The upstream transaction is over, whatever the reply.
        up.txn = 0;
        up.sender.clear();
        up.rcpts.clear();
        if (done.code == 421) forget(up);
        if (done.code / 100 == 2)
            return from_code(done.code, done.text().empty() ? std::string("2.0.0 OK") : done.text(), refusals);
        // After the dot, anything but 2xx/4xx/5xx leaves the message's fate unknown: 451 (a
        // duplicate at worst, never a loss).
        if (done.code / 100 != 4 && done.code / 100 != 5)
            throw upstream_error("end of data: unexpected " + code_and_text(done));
        return from_code(done.code, "upstream: " + done.text());
    }

    // An LMTP client of ours (RFC 2033 §4.2) gets each recipient's own outcome after the dot:
    // the upstream's reply for the j.rcpts[at] (its code mapped as for the message, its text
    // made one valid line), set by finish() with rcpt_reply() (on SMTP listeners the host
    // ignores it). Without it a recipient the upstream refused would get the message's 250.
    static void answer(job& j, std::size_t at, const reply& r)
    {
        if (at >= j.rcpt_index.size()) return;
        const std::string text = clean(r.text());
        j.answers.push_back({j.rcpt_index[at], reply_text::map_code(r.code).code,
                             text.empty() ? (r.code / 100 == 2 ? "2.0.0 OK" : "Refused by the upstream") : text});
    }

    // LMTP after the dot: one reply per recipient the upstream accepted, in their order.
    // `taken`: the j.rcpts refused before the dot (the others are matched to the upstream's in order).
    outcome lmtp_replies(upstream& up, job& j, std::vector<std::string> refusals, std::vector<bool> taken)
    {
        const std::vector<std::string> rcpts = std::move(up.rcpts);
        // The upstream transaction is over, whatever the replies.
        up.txn = 0;
        up.sender.clear();
        up.rcpts.clear();
        const std::size_t logged = refusals.size();  // the RCPT refusals: data_step logged them
        std::string first_text;
        std::size_t delivered = 0;
        bool any_temporary = false, closing = false;
        int first_permanent = 0;
        for (const std::string& rcpt : rcpts) {
            const reply r = up.conn->read_reply();
            // Which of the server's recipients this is: the first not yet answered (duplicates
            // are answered in order).
            for (std::size_t at = 0; at < j.rcpts.size() && at < taken.size(); ++at)
                if (!taken[at] && j.rcpts[at] == rcpt) {
                    taken[at] = true;
                    answer(j, at, r);
                    break;
                }
            if (r.code == 421) closing = true;
            if (r.code / 100 == 2) {
                if (delivered++ == 0) first_text = r.text();
                continue;
            }
            // Anything but 2xx/4xx/5xx leaves that delivery unknown: treated as deferred (a
            // duplicate at worst, never a loss).
            if (r.code / 100 == 5) {
                if (first_permanent == 0) first_permanent = r.code;
            } else {
                any_temporary = true;
            }
            refusals.push_back("refused <" + rcpt + ">: " + code_and_text(r));
        }
        if (closing) forget(up);
        for (std::size_t i = logged; i < refusals.size(); ++i)
            log_.warn("session=" + std::to_string(j.session) + " proxy " + where_ + ": " + clean(refusals[i]));
        if (any_temporary)
            return from_code(451,
                             delivered ? "4.4.0 Upstream deferred some recipients; the others may get it twice"
                                       : "4.4.0 Upstream accepted no recipient",
                             refusals);
        if (delivered == 0) return from_code(first_permanent, "5.1.1 Upstream accepted no recipient", refusals);
        return from_code(250, first_text.empty() ? std::string("2.0.0 OK") : first_text, refusals);
    }

    // Ends the upstream transaction (RSET) so that the connection can serve the next one; a
    // connection that does not take it is closed.
    void end_transaction(upstream& up) noexcept
    {
        if (!up.conn || up.txn == 0) return;
        try {
            const reply r = up.conn->command("RSET");
            if (r.code / 100 == 2) {
                up.txn = 0;
                up.sender.clear();
                up.rcpts.clear();
                return;
            }
        } catch (...) {}
        forget(up);
    }

    // The session ended: QUIT (a lost QUIT changes nothing) and close.
    void say_goodbye(upstream& up) noexcept
    {
        std::lock_guard<std::mutex> lock(up.mutex);
        if (!up.conn) return;
        const double seconds = std::min(timeout_, 5.0);
        up.conn->set_deadline(clock_type::now() + std::chrono::milliseconds(static_cast<long long>(seconds * 1000)));
        try {
            up.conn->command("QUIT");
        } catch (...) {}
        forget(up);
    }

    outcome run_step(job& j)
    {
        upstream& up = *j.up;
        for (int round = 0;; ++round) {
            if (clock_type::now() >= j.deadline) throw upstream_error("timed out before the step could start");
            const bool kept = ensure_connection(up, j.deadline, j.session);
            connection* const conn = up.conn.get();
            const std::size_t replies = conn->replies();
            try {
                switch (j.what) {
                case step::mail: return mail_step(j);
                case step::rcpt: return rcpt_step(j);
                case step::data: return data_step(j);
                case step::quit: break;
                }
                return go_on();
            } catch (const upstream_error& e) {
                // A kept connection the upstream closed just before this step (no reply came at
                // all): the step once more on a fresh one. What the upstream had open is gone with
                // it, and the steps rebuild it (MAIL again; at DATA every recipient).
                if (round == 0 && kept && up.conn.get() == conn && conn->replies() == replies &&
                    clock_type::now() < j.deadline) {
                    log_.info("session=" + std::to_string(j.session) + " proxy " + where_ + ": " + e.what() +
                              " on the kept connection; connecting again");
                    forget(up);
                    continue;
                }
                throw;
            }
        }
    }

    void work(job& j)
    {
        if (j.what == step::quit) return say_goodbye(*j.up);
        std::unique_lock<std::mutex> lock(j.up->mutex);
        outcome o;
        try {
            o = run_step(j);
        } catch (const std::exception& e) {
            forget(*j.up);      // the upstream's state is unknown: never reuse this connection
            j.answers.clear();  // every recipient gets the 451
            log_.fields(sdk::log_level::error, "",
                        {{"session", std::to_string(j.session)},
                         {"event", "upstream_error"},
                         {"upstream", where_},
                         {"error", e.what()},
                         {"action", "answering 451"}});
            o = unavailable();
        }
        lock.unlock();
        finish(j, o);
    }

    void finish(job& j, outcome& o)
    {
        if (o.code != 0 && !reply_text::valid(o.code, o.text)) {
            // Cannot happen (from_code() builds valid replies); if it did, the host would turn
            // the verdict into 451 - after an upstream 250, a duplicate. Keep the verdict.
            log_.error("session=" + std::to_string(j.session) + " proxy: invalid reply " + std::to_string(o.code) +
                       " \"" + clean(o.text) + "\" replaced");
            o.code = o.verdict == sdk::verdict::accept ? 250 : o.verdict == sdk::verdict::reject ? 554 : 451;
            o.text = o.verdict == sdk::verdict::accept ? "2.0.0 OK" : "Error";
        }
        if (j.what == step::data) {
            const std::size_t first_end = o.text.find('\n');
            const std::size_t more = static_cast<std::size_t>(std::count(o.text.begin(), o.text.end(), '\n'));
            // One key=value line per relayed message (the host quotes and escapes the values).
            log_.fields(sdk::log_level::info, "",
                        {{"session", std::to_string(j.session)},
                         {"event", "upstream_reply"},
                         {"upstream", where_},
                         {"reply", std::to_string(o.code) + " " + o.text.substr(0, first_end)},
                         {"more_lines", std::to_string(more)}});
        }
        // Each recipient's own reply (LMTP clients); one the host would refuse is left out (the
        // recipient then gets the message's reply), never sent.
        if (j.what == step::data && o.code != 0)
            for (const job::rcpt_answer& a : j.answers)
                if (reply_text::valid(a.code, a.text)) (void)j.pending.rcpt_reply(a.index, a.code, a.text);
        const asiosmtpd_status st = j.pending.complete(o.verdict, o.code, o.text);
        if (st != ASIOSMTPD_OK)
            log_.warn("session=" + std::to_string(j.session) + " proxy: the host refused the completion (" +
                      sdk::status_name(st) + ")");
    }

    sdk::logger log_;
    std::string host_;
    std::string where_;      // "host:port" or "unix:<path>", for logs
    std::string unix_path_;  // host: unix:<path>
    bool xforward_ = false;
    std::uint16_t port_ = 25;
    bool starttls_ = false;
    bool tls_verify_ = true;
    bool lmtp_ = false;  // protocol: lmtp (RFC 2033)
    double timeout_ = 20;
    std::string helo_;
    std::size_t max_hops_ = 50;
    SSL_CTX* ctx_ = nullptr;
    std::unique_ptr<dns::resolver> resolver_;  // null for an IP literal
    std::optional<sdk::worker_pool<job>> pool_;
};

}  // namespace

ASIOSMTPD_PLUGIN(proxy, "proxy", "1.1.0",
                 "relays each message to an upstream SMTP server, asking it about each recipient at RCPT time",
                 ASIOSMTPD_PF_THREAD_SAFE)
