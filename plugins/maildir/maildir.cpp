// SPDX-License-Identifier: Apache-2.0
// maildir: delivers each message into a Maildir as aiosmtpd's Mailbox handler does (X-Peer,
// X-MailFrom and X-RcptTo appended to the headers, "\n" line ends), durably: the file is
// written to tmp/ under a unique name (time, pid, counter, host), fsync'd, renamed into new/,
// and new/ is fsync'd (one fsync for every message renamed meanwhile: group_sync.hpp); only
// then does the client get 250. Any error answers 451 and leaves nothing in new/. Hooks never
// block: they copy what they need and suspend; the blocking I/O runs on the plugin's worker
// threads, which complete the hook.
//
// Streaming (ABI 1.2): the message is taken in DATA_CHUNK pieces and written to tmp/ as it
// arrives, so a session holds about one piece, not the message. The first piece creates the
// file (the envelope, and so the X- headers, is known by then); each piece is suspended until
// a worker has written it, so pieces of one message are written one at a time and in order
// (the host reads nothing more from the client meanwhile). DATA then finishes the file, syncs
// and renames it; a message of a single piece is kept until DATA and written in one go. The
// file lives in a transaction slot: a transaction that ends any other way (refused piece, 552,
// client gone, shutdown) gets its tmp/ file closed and removed by a worker. With a host older
// than ABI 1.2 the DATA hook gets the whole message, as before.
//
// A binary message (BODY=BINARYMIME, RFC 3030) is stored byte for byte: the three headers on
// top, with CRLF, then its octets as they came (no line end rewritten), never corrupted.
#include "delivery_common.hpp"
#include "group_sync.hpp"

#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
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

// Unique per process, also across instances delivering into one folder (the pid makes it
// unique across processes, O_EXCL catches the rest).
std::atomic<std::uint64_t> delivery_counter{0};

constexpr std::string_view failure_text = "4.3.0 Requested action aborted: local error in processing";

// mkdir -p: the folder and its missing parents.
// Problems are the `path:` key's (`at`): the host names the config file, line and key.
void mkdir_if_absent(const sdk::config& at, const std::string& dir)
{
    const std::size_t slash = dir.find_last_of('/');
    if (slash != std::string::npos && slash > 0 && ::access(dir.c_str(), F_OK) != 0)
        mkdir_if_absent(at, dir.substr(0, slash));
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        throw at.error("cannot create \"" + dir + "\": " + ap::errno_text(errno));
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) throw at.error("\"" + dir + "\" is not a folder");
}

// For a configuration check: what mkdir_if_absent() and the start would need, changing
// nothing. `dir` is a folder or could be made, and (`written`) may be written to.
void check_folder(const sdk::config& at, const std::string& dir, bool written)
{
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0) {
        if (errno != ENOENT && errno != ENOTDIR) throw at.error("cannot use \"" + dir + "\": " + ap::errno_text(errno));
        if (const std::string why = ap::creation_problem(dir); !why.empty()) throw at.error(why);
        return;
    }
    if (!S_ISDIR(st.st_mode)) throw at.error("\"" + dir + "\" is not a folder");
    if (::access(dir.c_str(), (written ? W_OK : 0) | X_OK | R_OK) != 0)
        throw at.error("cannot use \"" + dir + "\": " + ap::errno_text(errno));
}

int open_dir(const sdk::config& at, const std::string& dir)
{
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw at.error("cannot open \"" + dir + "\": " + ap::errno_text(errno));
    return fd;
}

// The host part of a Maildir name: '/' and ':' are written \057 and \072 (maildir(5)).
std::string maildir_host()
{
    char buf[256] = {0};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
    std::string out;
    for (const char* p = buf; *p; ++p) {
        if (*p == '/') out += "\\057";
        else if (*p == ':') out += "\\072";
        else out += *p;
    }
    return out;
}

// A file in tmp/ being written; removed on destruction unless release()d (renamed away).
class tmp_file {
public:
    tmp_file() noexcept = default;
    tmp_file(int dir, std::string name, int fd) noexcept : dir_(dir), name_(std::move(name)), fd_(fd) {}
    tmp_file(tmp_file&& o) noexcept : dir_(o.dir_), name_(std::move(o.name_)), fd_(std::move(o.fd_))
    {
        o.name_.clear();
    }
    tmp_file& operator=(tmp_file&& o) noexcept
    {
        if (this != &o) {
            remove();
            dir_ = o.dir_;
            name_ = std::exchange(o.name_, std::string());
            fd_ = std::move(o.fd_);
        }
        return *this;
    }
    tmp_file(const tmp_file&) = delete;
    tmp_file& operator=(const tmp_file&) = delete;
    ~tmp_file() { remove(); }

    bool open() const noexcept { return !name_.empty(); }
    int fd() const noexcept { return fd_.get(); }
    const std::string& name() const noexcept { return name_; }
    /// close(2), keeping the name (for the rename); returns its errno, 0 on success.
    int close() noexcept
    {
        const int fd = fd_.release();
        return fd >= 0 && ::close(fd) != 0 ? errno : 0;
    }
    /// The file was renamed away: nothing left to remove.
    void release() noexcept
    {
        fd_.reset();
        name_.clear();
    }
    /// Close and unlink it (a delivery that failed or was abandoned).
    void remove() noexcept
    {
        fd_.reset();
        if (!name_.empty()) ::unlinkat(dir_, name_.c_str(), 0);
        name_.clear();
    }

private:
    int dir_ = -1;  // borrowed: the plugin's tmp/, open as long as any file of it
    std::string name_;
    ap::unique_fd fd_;
};

// A message being streamed into tmp/ (ABI 1.2). Shared by its transaction slot and the job a
// worker runs on it; whoever lets go last closes the file and, unless it went to new/, removes
// it. The fields under `lock` belong to the workers; the hook-side ones to the session's hooks,
// which the host runs one after the other.
struct stream {
    explicit stream(std::string h) : headers(h), preparer(std::move(h)) {}

    const std::string headers;  // message_headers(): for a binary message, written with CRLF

    std::mutex lock;  // one job at a time (pieces come one after another anyway)
    tmp_file file;    // created by the first piece's job (DATA's, for one piece)
    ap::message_preparer preparer;
    std::string out;                   // the prepared bytes of the piece being written (reused)
    std::string held;                  // a message of one piece: DATA's job writes it, in one go
    bool failed = false;               // a write failed: the piece was refused, the file removed
    std::atomic<bool> settled{false};  // renamed into new/ or removed: nothing left to clean up

    // Hook side.
    std::uint64_t received = 0;  // unstuffed bytes taken so far
    bool last_seen = false;      // the LAST_CHUNK piece was taken
    bool missed = false;         // a piece went by without us (the host should not let that happen)
    bool typed = false;          // `binary` was set (by the first piece)
    bool binary = false;         // BODY=BINARYMIME: stored as it came (set before any job of it runs)
};

class maildir {
public:
    explicit maildir(sdk::registrar& reg) : log_(reg.logger()), host_(maildir_host()), pid_(std::to_string(::getpid()))
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"path", "workers"});
        const sdk::config path = cfg.require("path");
        path_ = ap::resolve_path(path.as_string(), reg.config_dir());
        if (path_.empty()) throw path.error("must not be empty");
        const std::int64_t workers = cfg.int_or("workers", 4, 1, 64);
        // A configuration check (--check-config) changes nothing on disk: it only checks that
        // the folders are there or could be made.
        const bool check_only = reg.check_only();
        if (check_only) {
            check_folder(path, path_, false);
            for (const char* sub : {"tmp", "new", "cur"}) check_folder(path, path_ + "/" + sub, true);
        } else {
            mkdir_if_absent(path, path_);
            for (const char* sub : {"tmp", "new", "cur"}) mkdir_if_absent(path, path_ + "/" + sub);
        }
        // A host older than ABI 1.2 has no DATA_CHUNK: DATA then gets the whole message.
        const asiosmtpd_status st = reg.try_on<&maildir::on_chunk>(sdk::hook::data_chunk);
        if (st != ASIOSMTPD_OK && st != ASIOSMTPD_E_UNSUPPORTED) throw sdk::error(st, "register_hook(DATA_CHUNK)");
        streaming_ = st == ASIOSMTPD_OK;
        if (!streaming_)
            log_.info("maildir " + path_ +
                      ": the host has no DATA_CHUNK (ABI < 1.2): each message is "
                      "taken whole");
        reg.on<&maildir::on_data>(sdk::hook::data);
        if (check_only) return;  // destroyed right after; no hook runs
        tmp_fd_.reset(open_dir(path, path_ + "/tmp"));
        new_fd_.reset(open_dir(path, path_ + "/new"));
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { run(j); });
    }
    maildir(const maildir&) = delete;
    maildir& operator=(const maildir&) = delete;
    ~maildir()
    {
        pool_.reset();  // joins the workers before the folders close (queued streams are removed)
    }

    // ABI 1.2: the next piece of the message. Copied, then written by a worker; the hook stays
    // suspended until it is (backpressure, and the order of the pieces).
    sdk::verdict on_chunk(sdk::call& c, const sdk::data_args& args)
    {
        const auto [slot, step] = ap::take_piece<txn_stream, stream>(c, args, this);
        if (step == ap::piece_step::skip) return sdk::verdict::continue_;
        stream& st = *slot->s;
        if (!st.typed) {  // before the stream's first job is posted: the workers see it
            st.binary = ap::binary_body(c.mail_params());
            st.typed = true;
        }
        if (step != ap::piece_step::write) return sdk::verdict::continue_;
        const std::uint64_t session = c.session().id;
        std::string copy(args.content());  // the piece's bytes die when this hook returns
        pool_->post(job{job::kind::piece, c.suspend(), std::move(copy), slot->s, session});
        return sdk::verdict::pending;
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        if (streaming_) {
            txn_stream* slot = c.find_slot<txn_stream>(sdk::scope::txn);
            if (slot && slot->s->last_seen && !slot->s->missed && slot->s->received == args.message_size) {
                const std::uint64_t session = c.session().id;
                pool_->post(job{job::kind::finish, c.suspend(), {}, slot->s, session});
                return sdk::verdict::pending;
            }
            if (slot) c.clear_slot(sdk::scope::txn);
            if (args.streamed()) {
                log_.error("session=" + std::to_string(c.session().id) + " maildir " + path_ +
                           ": the message's pieces did not all reach this plugin; answering 451");
                return c.tempfail(451, failure_text);
            }
            // The whole message is here too (another DATA hook takes no pieces): store it so.
        }
        // A binary message (BODY=BINARYMIME) as it came, under the trace headers.
        std::string bytes = ap::binary_body(c.mail_params())
                                ? ap::crlf_lines(ap::message_headers(c)).append(args.content())
                                : ap::prepare_message(args.content(), ap::message_headers(c));
        const std::uint64_t session = c.session().id;
        pool_->post(job{job::kind::whole, c.suspend(), std::move(bytes), nullptr, session});
        return sdk::verdict::pending;
    }

private:
    struct job {
        enum class kind {
            whole,    // `bytes`: the prepared message, delivered at once (no streaming)
            piece,    // `bytes`: the next piece as received, for `s`
            finish,   // DATA after the pieces: finish, sync and deliver `s`
            discard,  // the transaction of `s` ended: let go of it here, not on the event loop
        };
        kind what = kind::whole;
        sdk::pending pending;
        std::string bytes;
        std::shared_ptr<stream> s;
        std::uint64_t session = 0;
    };

    // The transaction slot: lets go of its stream on a worker (close and unlink block).
    struct txn_stream {
        txn_stream(std::shared_ptr<stream> st, maildir* o) : s(std::move(st)), owner(o) {}
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
        maildir* owner;  // outlives every session, and so every slot
    };

    std::string unique_name() const
    {
        struct timeval tv {};
        ::gettimeofday(&tv, nullptr);
        return std::to_string(tv.tv_sec) + ".M" + std::to_string(tv.tv_usec) + "P" + pid_ + "Q" +
               std::to_string(++delivery_counter) + "." + host_;
    }

    void fail(job& j, const std::string& what, int err) { fail(j.pending, j.session, what, err); }
    void fail(sdk::pending& pending, std::uint64_t session, const std::string& what, int err)
    {
        log_.error("session=" + std::to_string(session) + " maildir " + path_ + ": " + what + ": " +
                   ap::errno_text(err) + "; answering 451");
        pending.complete(sdk::verdict::tempfail, 451, failure_text);
    }

    void run(job& j)
    {
        switch (j.what) {
        case job::kind::whole: return deliver(j);
        case job::kind::piece: return write_piece(j);
        case job::kind::finish: return finish(j);
        case job::kind::discard: return;  // j.s goes with the job, here
        }
    }

    // A new file in tmp/ (O_EXCL) into `file`; 0, or the errno of the failure (and the name
    // tried in `name`).
    int create(tmp_file& file, std::string& name)
    {
        int fd = -1;
        for (int attempt = 0; attempt < 5 && fd < 0; ++attempt) {
            name = unique_name();
            fd = ::openat(tmp_fd_.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd < 0 && errno != EEXIST) break;
        }
        if (fd < 0) return errno;
        file = tmp_file(tmp_fd_.get(), name, fd);
        return 0;
    }

    // The written file, synced, into new/; then 250. On error it is removed and 451 answers.
    void commit(job& j, tmp_file& file)
    {
        const std::string name = file.name();
        if (::fsync(file.fd()) != 0) {
            const int err = errno;
            file.remove();
            return fail(j, "cannot write tmp/" + name, err);
        }
        if (const int err = file.close(); err != 0) {
            file.remove();
            return fail(j, "cannot write tmp/" + name, err);
        }
        // rename(2) is atomic: new/ holds the whole file or nothing, also after a crash.
        if (::renameat(tmp_fd_.get(), name.c_str(), new_fd_.get(), name.c_str()) != 0) {
            const int err = errno;
            file.remove();
            return fail(j, "cannot rename tmp/" + name + " into new/", err);
        }
        file.release();
        sync_new(renamed{std::move(j.pending), name, j.session});
    }

    // Group commit of new/ (group_sync.hpp): one fsync(new/) makes every rename made before it
    // durable, so deliveries renamed meanwhile share one sync instead of one each; no worker waits
    // for another. Each 250 follows an fsync(new/) that began after that message's rename.
    struct renamed {
        sdk::pending pending;
        std::string name;  // in new/
        std::uint64_t session = 0;
    };

    void sync_new(renamed r)
    {
        synced_.submit(
            std::move(r), [this]() noexcept { return ::fsync(new_fd_.get()) == 0 ? 0 : errno; },
            [this](renamed& d, int err) noexcept {
                if (err == 0) {
                    d.pending.complete(sdk::verdict::accept);  // the host's "250 OK", as aiosmtpd's Mailbox
                    return;
                }
                // Not known to be durable: take it back, so that 451 means "not delivered".
                ::unlinkat(new_fd_.get(), d.name.c_str(), 0);
                try {
                    fail(d.pending, d.session, "cannot fsync new/", err);
                } catch (...) {}  // no memory for the log line: the pending answers 451 as it goes
            });
    }

    // No streaming: the whole prepared message at once.
    void deliver(job& j)
    {
        tmp_file file;
        std::string name;
        if (const int err = create(file, name); err != 0) return fail(j, "cannot create tmp/" + name, err);
        if (!ap::write_all(file.fd(), j.bytes)) {
            const int err = errno;
            file.remove();
            return fail(j, "cannot write tmp/" + name, err);
        }
        commit(j, file);
    }

    // A write failed: the file goes, the piece (and so the message) gets 451.
    void fail_stream(job& j, stream& st, const std::string& what, int err)
    {
        st.failed = true;
        st.file.remove();
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
        const bool created = !st.file.open();
        if (created) {
            std::string name;
            if (const int err = create(st.file, name); err != 0)
                return fail_stream(j, st, "cannot create tmp/" + name, err);
        }
        if (st.binary) {
            if (!write_raw(st, created, j.bytes)) {
                const int err = errno;
                return fail_stream(j, st, "cannot write tmp/" + st.file.name(), err);
            }
            j.pending.complete(sdk::verdict::continue_);
            return;
        }
        st.out.clear();
        st.preparer.feed(j.bytes, st.out);
        if (!ap::write_all(st.file.fd(), st.out)) {
            const int err = errno;
            return fail_stream(j, st, "cannot write tmp/" + st.file.name(), err);
        }
        j.pending.complete(sdk::verdict::continue_);  // later plugins get the piece too
    }

    // BODY=BINARYMIME: the bytes as they came, nothing changed; the first write of the file
    // (`head`) puts the trace headers on top, with CRLF. False with errno set on failure.
    static bool write_raw(stream& st, bool head, std::string_view bytes)
    {
        if (head && !ap::write_all(st.file.fd(), ap::crlf_lines(st.headers))) return false;
        return ap::write_all(st.file.fd(), bytes);
    }

    void finish(job& j)
    {
        stream& st = *j.s;
        std::lock_guard<std::mutex> lock(st.lock);
        if (st.failed) {  // not reached: DATA does not run after a refused piece
            j.pending.complete(sdk::verdict::tempfail, 451, failure_text);
            return;
        }
        const bool created = !st.file.open();
        if (created) {  // a message of one piece
            std::string name;
            if (const int err = create(st.file, name); err != 0)
                return fail_stream(j, st, "cannot create tmp/" + name, err);
        }
        st.out.clear();
        bool written = true;
        if (st.binary) {
            written = write_raw(st, created, st.held);
        } else {
            st.preparer.feed(st.held, st.out);
            st.preparer.finish(st.out);
            written = ap::write_all(st.file.fd(), st.out);
        }
        const int err = written ? 0 : errno;
        st.held = std::string();
        if (!written) {
            return fail_stream(j, st, "cannot write tmp/" + st.file.name(), err);
        }
        st.out = std::string();
        st.settled.store(true, std::memory_order_release);  // commit() renames or removes it
        commit(j, st.file);
    }

    sdk::logger log_;
    std::string host_;
    std::string pid_;
    std::string path_;
    bool streaming_ = false;
    ap::unique_fd tmp_fd_;
    ap::unique_fd new_fd_;
    ap::group_sync<renamed> synced_;             // the group commit of new/ (sync_new)
    std::optional<sdk::worker_pool<job>> pool_;  // last: its workers stop before the rest goes
};

}  // namespace

ASIOSMTPD_PLUGIN(maildir, "maildir", "1.0.0", "delivers each message into a Maildir (tmp/, fsync, rename into new/)",
                 ASIOSMTPD_PF_THREAD_SAFE)
