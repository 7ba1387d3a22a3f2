// SPDX-License-Identifier: Apache-2.0
// Shared by the delivery plugins (maildir, mbox, proxy; jetstream for escape_controls): an owned
// file descriptor, errno texts, config paths, envelope text made safe for a header or a line,
// and aiosmtpd's Message-handler preparation of a message for a mailbox. Their worker threads
// (hooks never block, plugin.h T4) are the SDK's asiosmtpd/worker_pool.hpp.
// Header-only; compiled into each plugin (nothing here crosses the ABI).
#ifndef ASIOSMTPD_PLUGINS_DELIVERY_COMMON_HPP
#define ASIOSMTPD_PLUGINS_DELIVERY_COMMON_HPP

#include <asiosmtpd/plugin.hpp>

#include <poll.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace asiosmtpd::plugins {

/// A file descriptor closed on destruction.
class unique_fd {
public:
    unique_fd() noexcept = default;
    explicit unique_fd(int fd) noexcept : fd_(fd) {}
    unique_fd(unique_fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    unique_fd& operator=(unique_fd&& o) noexcept
    {
        reset(std::exchange(o.fd_, -1));
        return *this;
    }
    unique_fd(const unique_fd&) = delete;
    unique_fd& operator=(const unique_fd&) = delete;
    ~unique_fd() { reset(); }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }
    void reset(int fd = -1) noexcept
    {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

/// poll() `fd` for `events` until `deadline` (again after EINTR, in slices of at most a minute):
/// true when ready, or in error (the next read or write says which); false at the deadline.
inline bool wait_ready(int fd, short events, std::chrono::steady_clock::time_point deadline)
{
    for (;;) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        struct pollfd p {};
        p.fd = fd;
        p.events = events;
        const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count() + 1, 60000)));
        if (r > 0) return true;
        if (r < 0 && errno != EINTR) return false;
    }
}

/// write(2) all of `data` to `fd` (at its offset, or at the end for an O_APPEND file), again
/// after EINTR and short writes; false with errno set on failure.
inline bool write_all(int fd, std::string_view data)
{
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0) errno = EIO;
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    return true;
}

/// strerror_r as a std::string (thread-safe).
inline std::string errno_text(int err)
{
    char buf[256];
    buf[0] = '\0';
    // GNU strerror_r returns the message (maybe not in buf).
    const char* msg = strerror_r(err, buf, sizeof buf);
    return msg ? std::string(msg) : std::string("errno ") + std::to_string(err);
}

/// A path from the plugin's config: absolute as given, relative to the config file's folder.
inline std::string resolve_path(std::string path, std::string_view config_dir)
{
    if (!path.empty() && path.front() != '/' && !config_dir.empty()) path = std::string(config_dir) + "/" + path;
    return path;
}

/// For a configuration check (registrar::check_only(), asiosmtpd --check-config), which must
/// change nothing on disk: why `path` (a file or folder that does not exist yet) could not be
/// created as a start would create it (with its missing parent folders), or "" when it could:
/// its nearest existing parent is a folder this process may write to and enter.
inline std::string creation_problem(const std::string& path)
{
    std::string dir = path;
    for (;;) {
        const std::size_t slash = dir.find_last_of('/');
        dir = slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : dir.substr(0, slash);
        struct stat st {};
        if (::stat(dir.c_str(), &st) == 0) {
            if (!S_ISDIR(st.st_mode)) return "cannot create \"" + path + "\": \"" + dir + "\" is not a folder";
            if (::access(dir.c_str(), W_OK | X_OK) != 0)
                return "cannot create \"" + path + "\": \"" + dir + "\": " + errno_text(errno);
            return {};
        }
        if (errno != ENOENT && errno != ENOTDIR)
            return "cannot create \"" + path + "\": \"" + dir + "\": " + errno_text(errno);
        if (dir == "/" || dir == ".") return "cannot create \"" + path + "\": no existing parent folder";
    }
}

/// A control character: C0 (NUL, TAB, CR, LF, ...) or DEL. Bytes >= 0x80 (UTF-8) are not.
constexpr bool is_control(char c) noexcept
{
    return static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) == 0x7F;
}

inline bool has_control(std::string_view s) noexcept
{
    for (const char c : s)
        if (is_control(c)) return true;
    return false;
}

/// Appends envelope text (an address, a MAIL parameter, a HELO name, a peer) to `out` so that it
/// can go into a header or a line: each control character becomes `\xNN` (two lower-case hex
/// digits: CR is `\x0d`, NUL `\x00`, TAB `\x09`), every other byte is kept, UTF-8 included.
/// The server refuses addresses and parameters with control characters (553/501), so this
/// changes nothing it hands over today; it is the defence for whatever else could hand a plugin
/// such text (a plugin that rewrites the envelope, a host or test kit without that check, a
/// HELO name). Why this encoding: a CR, LF or NUL as-is would end the header or line and start
/// a forged one (X-MailFrom: "x\rX-RcptTo: ceo@..."); dropping them or writing '?' would make a
/// different, valid-looking address ('?' is atext); an RFC 2047 encoded word would be decoded
/// back into the CR by the mail reader. `\x0d` is plain printable ASCII, visibly not an
/// address, and reads as Python's repr does (the debugging plugin prints aiosmtpd's repr()).
inline void append_escaped(std::string& out, std::string_view s)
{
    static constexpr char hex[] = "0123456789abcdef";
    for (const char c : s) {
        if (!is_control(c)) {
            out += c;
            continue;
        }
        const auto u = static_cast<unsigned char>(c);
        out += "\\x";
        out += hex[u >> 4];
        out += hex[u & 0xF];
    }
}

/// escape_controls(s): append_escaped() into a new string.
inline std::string escape_controls(std::string_view s)
{
    std::string out;
    out.reserve(s.size());
    append_escaped(out, s);
    return out;
}

/// repr(session.peer) as aiosmtpd prints it: ('127.0.0.1', 40000), ('::1', 40000, 0, 0).
/// (The host's peer addresses are IP literals; control characters would be escaped anyway.)
inline std::string python_peer_repr(std::string_view address, std::uint16_t port)
{
    std::string out = "('" + escape_controls(address) + "', " + std::to_string(port);
    if (address.find(':') != std::string_view::npos) out += ", 0, 0";
    out += ")";
    return out;
}

/// The three headers aiosmtpd's Message handler appends (prepare_message), each ending "\n":
///   X-Peer: ('127.0.0.1', 40000)
///   X-MailFrom: a@b.example
///   X-RcptTo: c@d.example, e@f.example
/// Envelope values go through append_escaped(): a control character in one never ends the
/// header (aiosmtpd writes them as they are).
inline std::string message_headers(sdk::call& c)
{
    const sdk::session_info s = c.session();
    std::string out = "X-Peer: " + python_peer_repr(s.peer_address, s.peer_port) + "\n";
    out += "X-MailFrom: ";
    append_escaped(out, c.txn().mail_from);
    out += "\nX-RcptTo: ";
    const auto rcpts = c.rcpts();
    for (std::size_t i = 0; i < rcpts.size(); ++i) {
        if (i) out += ", ";
        append_escaped(out, rcpts[i]);
    }
    out += "\n";
    return out;
}

/// Whether the transaction's message is binary: MAIL had BODY=BINARYMIME (RFC 3030 §3; the
/// server takes it only with CHUNKING, and sends it only by BDAT). Its bytes are the message:
/// any octet, lines need not end in CRLF, so nothing may rewrite its line ends.
template <class Params>
bool binary_body(const Params& mail_params)
{
    for (const auto& p : mail_params)
        if (std::string_view(p) == "BODY=BINARYMIME") return true;
    return false;
}

/// message_headers() with CRLF line ends: the trace headers written on top of a binary message,
/// whose own header section ends its lines in CRLF (RFC 3030 keeps the header section text).
inline std::string crlf_lines(std::string_view lf_text)
{
    std::string out;
    out.reserve(lf_text.size() + 8);
    for (const char ch : lf_text) {
        if (ch == '\n') out += '\r';
        out += ch;
    }
    return out;
}

namespace detail {
// A header line as Python's email feedparser sees one (headerRE, minus the "From " unix-from
// and leading-whitespace forms, which would lose bytes): a name of printable ASCII but ':',
// then ':'. A continuation (leading space or tab) only after a header line.
inline bool header_line(std::string_view line, bool after_header) noexcept
{
    if (line.empty()) return false;
    if (line.front() == ' ' || line.front() == '\t') return after_header;
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return false;
    for (std::size_t i = 0; i < colon; ++i) {
        const auto ch = static_cast<unsigned char>(line[i]);
        if (ch < 0x21 || ch > 0x7E) return false;
    }
    return true;
}

// Whether a body line must be quoted for mbox (mboxrd: ">*From " gets one more '>').
inline bool from_line(std::string_view line) noexcept
{
    std::size_t i = 0;
    while (i < line.size() && line[i] == '>') ++i;
    return line.substr(i).substr(0, 5) == "From ";
}
}  // namespace detail

/// The message as aiosmtpd's Mailbox handler stores it (email parser + mailbox.Maildir):
/// lines end in "\n" (CRLF, bare CR and bare LF all become LF, as Python's splitlines); the
/// `headers` (see message_headers) are appended to the header block, which ends at the first
/// empty line or at the first line that is not a header; a separating empty line is always
/// there. Unlike Python no byte of the content is dropped: a malformed first line (a unix
/// "From " line, a leading continuation line) is kept as the first body line. mbox: body
/// lines matching ">*From " get one more '>' (mboxrd) and the result ends with "\n".
inline std::string prepare_message(std::string_view content, std::string_view headers, bool mbox = false)
{
    std::string out;
    out.reserve(content.size() + headers.size() + content.size() / 32 + 8);
    bool in_headers = true;
    bool after_header = false;
    bool ended_with_eol = true;
    std::size_t start = 0;
    while (start < content.size()) {
        std::size_t eol = content.find_first_of("\r\n", start);
        const bool has_eol = eol != std::string_view::npos;
        if (!has_eol) eol = content.size();
        const std::string_view line = content.substr(start, eol - start);
        start = eol;
        if (has_eol) {
            ++start;
            if (content[eol] == '\r' && start < content.size() && content[start] == '\n') ++start;
        }
        if (in_headers) {
            if (line.empty()) {  // the separator: our headers go just before it
                out += headers;
                out += '\n';
                in_headers = false;
                continue;
            }
            if (detail::header_line(line, after_header)) {
                out += line;
                out += '\n';  // a last header without line end gets one
                after_header = true;
                continue;
            }
            out += headers;  // the body starts without separator: insert one (as Python)
            out += '\n';
            in_headers = false;
        }
        if (mbox && detail::from_line(line)) out += '>';
        out += line;
        if (has_eol) out += '\n';
        ended_with_eol = has_eol;
    }
    if (in_headers) {  // headers only (or nothing at all)
        out += headers;
        out += '\n';
    } else if (mbox && !ended_with_eol) {
        out += '\n';
    }
    return out;
}

/// prepare_message() one piece at a time, for a message that arrives in DATA_CHUNK pieces
/// (ABI 1.2): feed() each piece in order, then finish() once; what they append to `out`,
/// concatenated, is prepare_message(the whole content, headers, mbox), wherever the pieces
/// were cut (a CR ending one piece and an LF starting the next are one line end). It keeps at
/// most one unfinished line: one in the header block, or with mbox a body line (which may
/// still turn out to start with ">*From "); other body bytes go straight through.
class message_preparer {
public:
    explicit message_preparer(std::string headers, bool mbox = false) : headers_(std::move(headers)), mbox_(mbox) {}

    void feed(std::string_view piece, std::string& out)
    {
        std::size_t start = 0;
        if (skip_lf_ && !piece.empty()) {
            skip_lf_ = false;
            if (piece.front() == '\n') start = 1;  // the second half of a CRLF cut between two pieces
        }
        while (start < piece.size()) {
            const std::size_t eol = piece.find_first_of("\r\n", start);
            if (eol == std::string_view::npos) {
                if (in_headers_ || mbox_) partial_.append(piece.substr(start));
                else out.append(piece.substr(start));  // a body line: its bytes never change
                return;
            }
            const std::string_view rest = piece.substr(start, eol - start);
            if (partial_.empty()) {
                line(rest, true, out);
            } else {
                partial_.append(rest);
                line(partial_, true, out);
                partial_.clear();
            }
            start = eol + 1;
            if (piece[eol] == '\r') {
                if (start == piece.size()) skip_lf_ = true;
                else if (piece[start] == '\n') ++start;
            }
        }
    }

    void finish(std::string& out)
    {
        if (!partial_.empty()) {  // the last line, without line end
            line(partial_, false, out);
            partial_.clear();
        }
        if (in_headers_) {  // headers only (or nothing at all)
            out += headers_;
            out += '\n';
            in_headers_ = false;
        } else if (mbox_ && !ended_with_eol_) {
            out += '\n';
        }
    }

private:
    // One line of the content, as prepare_message's loop handles it.
    void line(std::string_view text, bool has_eol, std::string& out)
    {
        if (in_headers_) {
            if (text.empty()) {
                out += headers_;
                out += '\n';
                in_headers_ = false;
                return;
            }
            if (detail::header_line(text, after_header_)) {
                out += text;
                out += '\n';
                after_header_ = true;
                return;
            }
            out += headers_;
            out += '\n';
            in_headers_ = false;
        }
        if (mbox_ && detail::from_line(text)) out += '>';
        out += text;
        if (has_eol) out += '\n';
        ended_with_eol_ = has_eol;
    }

    std::string headers_;
    std::string partial_;  // an unfinished line (header block, or mbox body)
    bool mbox_;
    bool in_headers_ = true;
    bool after_header_ = false;
    bool ended_with_eol_ = true;
    bool skip_lf_ = false;  // the last piece ended with CR: an LF starting the next belongs to it
};

/// What a delivery plugin does with a DATA_CHUNK piece (ABI 1.2); see take_piece.
enum class piece_step {
    skip,   ///< a piece of a message missed earlier: nothing (DATA answers 451)
    held,   ///< a message of one piece, kept in the stream's `held`: DATA's job takes it
    write,  ///< copy the piece and hand it to a worker, suspended until written
};

/// The hook side of a message taken in DATA_CHUNK pieces (ABI 1.2), shared by the plugins that
/// stream into a file: which stream a piece belongs to, and what to do with it. The message
/// lives in a transaction slot `Slot`, made from (std::shared_ptr<Stream>, Owner*) and holding
/// it as `s`; a `Stream` is made from the headers to prepend (message_headers) and has the
/// members `received`, `last_seen`, `missed`, `lock` and `held`. A first piece (or one after a
/// finished message: the envelope outlives a DATA refused after its pieces) starts a new
/// stream; replacing the slot lets go of the older one. A gap in the pieces (the host should
/// never leave one) replaces the stream by a missed one, so that DATA answers 451 and what was
/// written goes now.
template <class Slot, class Stream, class Owner>
std::pair<Slot*, piece_step> take_piece(sdk::call& c, const sdk::data_args& args, Owner* owner)
{
    // message_size counts the bytes so far: equal to this piece's size on the first one.
    const bool first = args.message_size == args.size;
    Slot* slot = c.find_slot<Slot>(sdk::scope::txn);
    if (first || !slot || slot->s->last_seen) {
        slot = &c.emplace_slot<Slot>(sdk::scope::txn, std::make_shared<Stream>(message_headers(c)), owner);
        slot->s->missed = !first;
    }
    if (!slot->s->missed && slot->s->received + args.size != args.message_size) {
        slot = &c.emplace_slot<Slot>(sdk::scope::txn, std::make_shared<Stream>(std::string()), owner);
        slot->s->missed = true;
    }
    Stream& st = *slot->s;
    st.received = args.message_size;
    st.last_seen = args.last_chunk();
    if (st.missed) return {slot, piece_step::skip};
    if (first && st.last_seen) {
        // A message of one piece (most are): one trip to a worker (DATA's) instead of two.
        std::lock_guard<std::mutex> lock(st.lock);
        st.held.assign(args.content());
        return {slot, piece_step::held};
    }
    return {slot, piece_step::write};
}

}  // namespace asiosmtpd::plugins

#endif  // ASIOSMTPD_PLUGINS_DELIVERY_COMMON_HPP
