// SPDX-License-Identifier: Apache-2.0
// mbox: appends each message to an mbox file: a "From <sender> <date>" line, the message as
// aiosmtpd's Message handler prepares it (X-Peer, X-MailFrom, X-RcptTo; "\n" line ends), body
// lines matching ">*From " quoted with one more '>' (mboxrd), and an empty line. Each append
// holds an exclusive fcntl lock on the whole file (an open-file-description lock: it excludes
// other threads of this process as well as other processes using fcntl/lockf locks), is
// fsync'd, and is cut back (ftruncate) if it failed half-way; the client gets 250 only after
// the fsync, 451 on any error. The blocking work runs on the plugin's worker threads.
//
// Streaming (ABI 1.2): the message is taken in DATA_CHUNK pieces, prepared and quoted as it
// arrives (message_preparer keeps a line cut between two pieces until its end is known), and
// written to a private spool: an unnamed file (O_TMPFILE; mkstemp + unlink where that is not
// supported) in the mbox file's folder, so a session holds about one piece, not the message.
// Each piece is suspended until a worker has written it (backpressure, and the order of the
// pieces). DATA then locks the mbox, writes the "From " line, copies the spool in (64 KiB
// blocks; the mbox stays O_APPEND, which copy_file_range refuses, so that a writer that does
// not take the lock can never overwrite ours), adds the rest and the empty line, and fsyncs: the same
// bytes as the whole-message path. A message of a single piece is kept until DATA and
// appended in one go. The spool lives in a transaction slot: a transaction that ends any
// other way (refused piece, 552, client gone, shutdown) closes it on a worker, and the mbox is
// never touched. With a host older than ABI 1.2 the DATA hook gets the whole message.
//
// A binary message (BODY=BINARYMIME, RFC 3030) is refused (555 at MAIL, 554 at its first piece
// or DATA): an mbox cannot hold arbitrary octets, and storing it would corrupt it.
#include "delivery_common.hpp"

#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace {

namespace sdk = asiosmtpd::sdk;
namespace ap = asiosmtpd::plugins;

constexpr std::string_view failure_text = "4.3.0 Requested action aborted: local error in processing";

// BODY=BINARYMIME (RFC 3030): refused, never stored. An mbox keeps a message as text lines: its
// separator is a "From " line, body lines are ">From"-quoted, line ends become "\n", and a
// reader takes the blank line before the next "From " as the end; arbitrary octets (bare CR,
// a last line without end) would not come back as they were sent. Refused at MAIL (555, as
// for a parameter the mailbox cannot honour) so the client can re-encode it; at DATA (554)
// should an earlier plugin have accepted MAIL before this one was asked.
constexpr std::string_view binary_refused =
    "5.6.3 BODY=BINARYMIME not supported: an mbox file cannot hold a binary message";

// Copies from the spool into the mbox go in blocks of this size.
constexpr std::size_t copy_block = 64 * 1024;

// "From sender Thu Jan  1 00:00:00 1970\n" (UTC, asctime layout, as Python's mailbox.mbox).
// The sender is one field of one line: blanks become '_', other control characters \xNN
// (ap::append_escaped), so that a CR or LF never ends the line early.
std::string from_line(std::string_view mail_from)
{
    std::string_view bare = mail_from;
    if (bare.size() >= 2 && bare.front() == '<' && bare.back() == '>') bare = bare.substr(1, bare.size() - 2);
    std::string spaced(bare);
    for (char& ch : spaced)
        if (ch == ' ' || ch == '\t') ch = '_';
    std::string sender = ap::escape_controls(spaced);
    if (sender.empty()) sender = "MAILER-DAEMON";
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    char date[64];
    const std::size_t n = std::strftime(date, sizeof date, "%a %b %e %H:%M:%S %Y", &tm);
    return "From " + sender + " " + std::string(date, n) + "\n";
}

// The folder of a file path ("." for a bare name).
std::string folder_of(const std::string& path)
{
    const std::size_t slash = path.find_last_of('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

// The first `size` bytes of `in` appended to `out`, in 64 KiB blocks. False with errno set on
// failure.
bool copy_spool(int in, std::uint64_t size, int out)
{
    std::array<char, copy_block> buf;
    off_t in_off = 0;
    while (static_cast<std::uint64_t>(in_off) < size) {
        const std::uint64_t left = size - static_cast<std::uint64_t>(in_off);
        const std::size_t want = left < buf.size() ? static_cast<std::size_t>(left) : buf.size();
        const ssize_t n = ::pread(in, buf.data(), want, in_off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            if (n == 0)  // the spool is shorter than written: not expected
                errno = EIO;
            return false;
        }
        if (!ap::write_all(out, std::string_view(buf.data(), static_cast<std::size_t>(n)))) return false;
        in_off += n;
    }
    return true;
}

// A message being streamed into its spool (ABI 1.2). Shared by its transaction slot and the
// job a worker runs on it; whoever lets go last closes the spool (unnamed: nothing to remove).
// The fields under `lock` belong to the workers; the hook-side ones to the session's hooks,
// which the host runs one after the other.
struct stream {
    explicit stream(std::string headers) : preparer(std::move(headers), true) {}

    std::mutex lock;            // one job at a time (pieces come one after another anyway)
    ap::unique_fd spool;        // created by the first piece's job; never by a single piece
    std::uint64_t spooled = 0;  // bytes written to it
    ap::message_preparer preparer;
    std::string out;                   // the prepared bytes of the piece being written (reused)
    std::string held;                  // a message of one piece: DATA's job appends it, in one go
    bool failed = false;               // a write failed: the piece was refused, the spool closed
    std::atomic<bool> settled{false};  // appended or failed: the spool is closed

    // Hook side.
    std::uint64_t received = 0;  // unstuffed bytes taken so far
    bool last_seen = false;      // the LAST_CHUNK piece was taken
    bool missed = false;         // a piece went by without us (the host should not let that happen)
};

class mbox {
public:
    explicit mbox(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"path", "workers"});
        const sdk::config path = cfg.require("path");
        path_ = ap::resolve_path(path.as_string(), reg.config_dir());
        if (path_.empty()) throw path.error("must not be empty");
        folder_ = folder_of(path_);
        const std::int64_t workers = cfg.int_or("workers", 2, 1, 64);
        if (reg.check_only()) {
            // --check-config changes nothing on disk: the file is writable, or could be created.
            if (::access(path_.c_str(), F_OK) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
                if (const std::string why = ap::creation_problem(path_); !why.empty()) throw path.error(why);
            } else if (::access(path_.c_str(), W_OK) != 0) {
                throw path.error("cannot open \"" + path_ + "\": " + ap::errno_text(errno));
            }
        } else {
            // Fail at start-up, not at the first message, when the file cannot be opened.
            const ap::unique_fd fd(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
            if (fd.get() < 0) throw path.error("cannot open \"" + path_ + "\": " + ap::errno_text(errno));
        }
        // A host older than ABI 1.2 has no DATA_CHUNK: DATA then gets the whole message.
        const asiosmtpd_status st = reg.try_on<&mbox::on_chunk>(sdk::hook::data_chunk);
        if (st != ASIOSMTPD_OK && st != ASIOSMTPD_E_UNSUPPORTED) throw sdk::error(st, "register_hook(DATA_CHUNK)");
        streaming_ = st == ASIOSMTPD_OK;
        if (!streaming_)
            log_.info("mbox " + path_ + ": the host has no DATA_CHUNK (ABI < 1.2): each message is taken whole");
        reg.on<&mbox::on_mail>(sdk::hook::mail);
        reg.on<&mbox::on_data>(sdk::hook::data);
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { run(j); });
    }
    mbox(const mbox&) = delete;
    mbox& operator=(const mbox&) = delete;
    ~mbox() { pool_.reset(); }

    // MAIL: a binary message is refused before any octet of it comes (binary_refused).
    sdk::verdict on_mail(sdk::call& c, const sdk::address_args& args)
    {
        if (ap::binary_body(args.params)) return c.reject(555, binary_refused);
        return sdk::verdict::continue_;
    }

    // ABI 1.2: the next piece of the message. Copied, then prepared and spooled by a worker; the hook stays
    // suspended until it is (backpressure, and the order of the pieces).
    sdk::verdict on_chunk(sdk::call& c, const sdk::data_args& args)
    {
        // The first piece (message_size counts the bytes so far): refused whole if binary.
        if (args.message_size == args.size && ap::binary_body(c.mail_params())) return c.reject(554, binary_refused);
        const auto [slot, step] = ap::take_piece<txn_stream, stream>(c, args, this);
        if (step != ap::piece_step::write) return sdk::verdict::continue_;
        const std::uint64_t session = c.session().id;
        std::string copy(args.content());  // the piece's bytes die when this hook returns
        pool_->post(job{job::kind::piece, c.suspend(), std::move(copy), slot->s, session});
        return sdk::verdict::pending;
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        if (ap::binary_body(c.mail_params())) return c.reject(554, binary_refused);
        if (streaming_) {
            txn_stream* slot = c.find_slot<txn_stream>(sdk::scope::txn);
            if (slot && slot->s->last_seen && !slot->s->missed && slot->s->received == args.message_size) {
                const std::uint64_t session = c.session().id;
                pool_->post(job{job::kind::finish, c.suspend(), from_line(c.txn().mail_from), slot->s, session});
                return sdk::verdict::pending;
            }
            if (slot) c.clear_slot(sdk::scope::txn);
            if (args.streamed()) {
                log_.error("session=" + std::to_string(c.session().id) + " mbox " + path_ +
                           ": the message's pieces did not all reach this plugin; answering 451");
                return c.tempfail(451, failure_text);
            }
            // The whole message is here too (another DATA hook takes no pieces): append it so.
        }
        std::string bytes = from_line(c.txn().mail_from);
        bytes += ap::prepare_message(args.content(), ap::message_headers(c), true);
        bytes += '\n';
        pool_->post(job{job::kind::whole, c.suspend(), std::move(bytes), nullptr, c.session().id});
        return sdk::verdict::pending;
    }

private:
    struct job {
        enum class kind {
            whole,    // `bytes`: the message with its "From " line and end, appended at once
            piece,    // `bytes`: the next piece as received, for `s`
            finish,   // DATA after the pieces; `bytes`: the "From " line. Append `s`
            discard,  // the transaction of `s` ended: let go of it here, not on the event loop
        };
        kind what = kind::whole;
        sdk::pending pending;
        std::string bytes;
        std::shared_ptr<stream> s;
        std::uint64_t session = 0;
    };

    // The transaction slot: lets go of its stream on a worker (closing a big spool frees its
    // blocks, which may take a while). Nothing visible to remove: the spool has no name.
    struct txn_stream {
        txn_stream(std::shared_ptr<stream> st, mbox* o) : s(std::move(st)), owner(o) {}
        txn_stream(const txn_stream&) = delete;
        txn_stream& operator=(const txn_stream&) = delete;
        ~txn_stream()
        {
            if (!s || s->settled.load(std::memory_order_acquire)) return;
            job j{job::kind::discard, {}, {}, std::move(s), 0};
            // No memory for the job: try_post leaves it here, and the stream goes with it, on
            // the session's thread.
            owner->pool_->try_post(j);
        }
        std::shared_ptr<stream> s;
        mbox* owner;  // outlives every session, and so every slot
    };

    void fail(job& j, const std::string& what, int err)
    {
        log_.error("session=" + std::to_string(j.session) + " mbox " + path_ + ": " + what + ": " +
                   ap::errno_text(err) + "; answering 451");
        j.pending.complete(sdk::verdict::tempfail, 451, failure_text);
    }

    void run(job& j)
    {
        switch (j.what) {
        case job::kind::whole: return append(j, j.bytes, -1, 0, {});
        case job::kind::piece: return write_piece(j);
        case job::kind::finish: return finish(j);
        case job::kind::discard: return;  // j.s goes with the job, here
        }
    }

    // An unnamed file in the mbox's folder (the mail volume, whose free space the message
    // needs anyway), or in $TMPDIR (/tmp) when that folder does not let us create files (a
    // /var/mail where only the mbox file itself is ours); -1 with errno set on failure.
    int create_spool() const
    {
        const int fd = spool_in(folder_);
        if (fd >= 0 || (errno != EACCES && errno != EPERM && errno != EROFS)) return fd;
        const char* tmp = std::getenv("TMPDIR");
        return spool_in(tmp != nullptr && *tmp == '/' ? std::string(tmp) : std::string("/tmp"));
    }

    static int spool_in(const std::string& dir)
    {
        const int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)) return fd;
        // No O_TMPFILE (kernel or file system): a named file, unlinked at once.
        std::string name = dir + "/.asiosmtpd-mbox-XXXXXX";
        const int named = ::mkostemp(name.data(), O_CLOEXEC);
        if (named >= 0 && ::unlink(name.c_str()) != 0) {
            const int err = errno;
            ::close(named);
            errno = err;
            return -1;
        }
        return named;
    }

    // A spool write failed: it goes, the piece (and so the message) gets 451.
    void fail_stream(job& j, stream& st, const std::string& what, int err)
    {
        st.failed = true;
        st.spool.reset();
        st.out = std::string();
        st.settled.store(true, std::memory_order_release);
        fail(j, what, err);
    }

    void write_piece(job& j)
    {
        stream& st = *j.s;
        std::lock_guard<std::mutex> lock(st.lock);
        if (st.failed) {  // not reached: no piece comes after a refused one
            j.pending.complete(sdk::verdict::tempfail, 451, failure_text);
            return;
        }
        if (st.spool.get() < 0) {
            st.spool.reset(create_spool());
            if (st.spool.get() < 0) return fail_stream(j, st, "cannot create a spool file in " + folder_, errno);
        }
        st.out.clear();
        st.preparer.feed(j.bytes, st.out);
        if (!ap::write_all(st.spool.get(), st.out)) return fail_stream(j, st, "cannot write the spool file", errno);
        st.spooled += st.out.size();
        j.pending.complete(sdk::verdict::continue_);  // later plugins get the piece too
    }

    void finish(job& j)
    {
        stream& st = *j.s;
        std::lock_guard<std::mutex> lock(st.lock);
        if (st.failed) {  // not reached: DATA does not run after a refused piece
            j.pending.complete(sdk::verdict::tempfail, 451, failure_text);
            return;
        }
        // The rest: a message of one piece whole, the last line of a longer one.
        st.out.clear();
        st.preparer.feed(st.held, st.out);
        st.held = std::string();
        st.preparer.finish(st.out);
        st.out += '\n';
        const std::string tail = std::move(st.out);
        st.out = std::string();
        if (st.spool.get() < 0) {  // a message of one piece: no spool
            std::string bytes = std::move(j.bytes);
            bytes += tail;
            append(j, bytes, -1, 0, {});
        } else {
            append(j, j.bytes, st.spool.get(), st.spooled, tail);
        }
        st.spool.reset();  // here, not on the event loop
        st.settled.store(true, std::memory_order_release);
    }

    // Appends `head`, the first `spooled` bytes of `spool` (if >= 0) and `tail` to the mbox,
    // under the lock, synced; cut back on failure. Completes the job: 250 or 451.
    void append(job& j, std::string_view head, int spool, std::uint64_t spooled, std::string_view tail)
    {
        // O_APPEND: every write goes at the end, whoever wrote last; the lock keeps other
        // lock-takers out, O_APPEND keeps a writer that ignores locks from overwriting us.
        const ap::unique_fd fd(::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
        if (fd.get() < 0) return fail(j, "cannot open", errno);
        struct flock lock {};
        lock.l_type = F_WRLCK;
        lock.l_whence = SEEK_SET;
        lock.l_start = 0;
        lock.l_len = 0;  // the whole file
        while (::fcntl(fd.get(), F_OFD_SETLKW, &lock) != 0) {
            if (errno != EINTR) return fail(j, "cannot lock", errno);
        }
        // Closing fd releases the lock.
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0) return fail(j, "cannot stat", errno);
        const off_t start = st.st_size;
        bool ok = true;
        if (start > 0) {
            // A previous writer that did not end with a line end: start on a new line.
            char last = '\n';
            if (::pread(fd.get(), &last, 1, start - 1) == 1 && last != '\n') ok = ap::write_all(fd.get(), "\n");
        }
        ok = ok && ap::write_all(fd.get(), head);
        ok = ok && (spool < 0 || copy_spool(spool, spooled, fd.get()));
        ok = ok && ap::write_all(fd.get(), tail);
        if (!ok) {
            const int err = errno;
            // Take the partial message back, so that readers never see half of one.
            if (::ftruncate(fd.get(), start) != 0 || ::fsync(fd.get()) != 0)
                log_.error("mbox " + path_ + ": cannot cut back a failed append: " + ap::errno_text(errno));
            return fail(j, "cannot write", err);
        }
        if (::fsync(fd.get()) != 0) {
            const int err = errno;
            if (::ftruncate(fd.get(), start) != 0)
                log_.error("mbox " + path_ + ": cannot cut back a failed append: " + ap::errno_text(errno));
            return fail(j, "cannot fsync", err);
        }
        j.pending.complete(sdk::verdict::accept);  // the host's "250 OK"
    }

    sdk::logger log_;
    std::string path_;
    std::string folder_;
    bool streaming_ = false;
    std::optional<sdk::worker_pool<job>> pool_;
};

}  // namespace

ASIOSMTPD_PLUGIN(mbox, "mbox", "1.0.0", "appends each message to an mbox file (fcntl lock, fsync)",
                 ASIOSMTPD_PF_THREAD_SAFE)
