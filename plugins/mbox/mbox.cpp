// mbox: appends each message to an mbox file: a "From <sender> <date>" line, the message as
// aiosmtpd's Message handler prepares it (X-Peer, X-MailFrom, X-RcptTo; "\n" line ends), body
// lines matching ">*From " quoted with one more '>' (mboxrd), and an empty line. Each append
// holds an exclusive fcntl lock on the whole file (an open-file-description lock: it excludes
// other threads of this process as well as other processes using fcntl/lockf locks), is
// fsync'd, and is cut back (ftruncate) if it failed half-way; the client gets 250 only after
// the fsync, 451 on any error. The blocking work runs on the plugin's worker threads.
#include "delivery_common.hpp"

#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <ctime>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

namespace sdk = asiosmtpd::sdk;
namespace ap = asiosmtpd::plugins;

constexpr std::string_view failure_text = "4.3.0 Requested action aborted: local error in processing";

// "From sender Thu Jan  1 00:00:00 1970\n" (UTC, asctime layout, as Python's mailbox.mbox).
std::string from_line(std::string_view mail_from)
{
    std::string sender(mail_from);
    if (sender.size() >= 2 && sender.front() == '<' && sender.back() == '>')
        sender = sender.substr(1, sender.size() - 2);
    if (sender.empty())
        sender = "MAILER-DAEMON";
    for (char& ch : sender)
        if (ch == ' ' || ch == '\t')
            ch = '_';
    const std::time_t now = std::time(nullptr);
    std::tm tm {};
    ::gmtime_r(&now, &tm);
    char date[64];
    const std::size_t n = std::strftime(date, sizeof date, "%a %b %e %H:%M:%S %Y", &tm);
    return "From " + sender + " " + std::string(date, n) + "\n";
}

class mbox {
public:
    explicit mbox(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"path", "workers"});
        path_ = ap::resolve_path(cfg.require("path").as_string(), reg.config_dir());
        if (path_.empty())
            throw std::invalid_argument("path: must not be empty");
        const auto w = cfg.get("workers");
        const std::int64_t workers = w ? w->as_int(1, 64) : 2;
        // Fail at start-up, not at the first message, when the file cannot be opened.
        const ap::unique_fd fd(::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
        if (fd.get() < 0)
            throw std::invalid_argument("path: cannot open \"" + path_ + "\": " + ap::errno_text(errno));
        reg.on<&mbox::on_data>(sdk::hook::data);
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { deliver(j); });
    }
    mbox(const mbox&) = delete;
    mbox& operator=(const mbox&) = delete;
    ~mbox() { pool_.reset(); }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        std::string bytes = from_line(c.txn().mail_from);
        bytes += ap::prepare_message(args.content(), ap::message_headers(c), true);
        bytes += '\n';
        pool_->post(job{c.suspend(), std::move(bytes), c.session().id});
        return sdk::verdict::pending;
    }

private:
    struct job {
        sdk::pending pending;
        std::string bytes;
        std::uint64_t session = 0;
    };

    void fail(job& j, const std::string& what, int err)
    {
        log_.error("session=" + std::to_string(j.session) + " mbox " + path_ + ": " + what + ": " +
                   ap::errno_text(err) + "; answering 451");
        j.pending.complete(sdk::verdict::tempfail, 451, failure_text);
    }

    void deliver(job& j)
    {
        const ap::unique_fd fd(::open(path_.c_str(), O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600));
        if (fd.get() < 0)
            return fail(j, "cannot open", errno);
        struct flock lock {};
        lock.l_type = F_WRLCK;
        lock.l_whence = SEEK_SET;
        lock.l_start = 0;
        lock.l_len = 0; // the whole file
        while (::fcntl(fd.get(), F_OFD_SETLKW, &lock) != 0) {
            if (errno != EINTR)
                return fail(j, "cannot lock", errno);
        }
        // Closing fd releases the lock.
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0)
            return fail(j, "cannot stat", errno);
        const off_t start = st.st_size;
        std::string_view data = j.bytes;
        std::string fixed;
        if (start > 0) {
            // A previous writer that did not end with a line end: start on a new line.
            char last = '\n';
            if (::pread(fd.get(), &last, 1, start - 1) == 1 && last != '\n') {
                fixed = "\n" + j.bytes;
                data = fixed;
            }
        }
        std::size_t done = 0;
        while (done < data.size()) {
            const ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                const int err = n < 0 ? errno : EIO;
                // Take the partial message back, so that readers never see half of one.
                if (::ftruncate(fd.get(), start) != 0 || ::fsync(fd.get()) != 0)
                    log_.error("mbox " + path_ + ": cannot cut back a failed append: " + ap::errno_text(errno));
                return fail(j, "cannot write", err);
            }
            done += static_cast<std::size_t>(n);
        }
        if (::fsync(fd.get()) != 0) {
            const int err = errno;
            if (::ftruncate(fd.get(), start) != 0)
                log_.error("mbox " + path_ + ": cannot cut back a failed append: " + ap::errno_text(errno));
            return fail(j, "cannot fsync", err);
        }
        j.pending.complete(sdk::verdict::accept); // the host's "250 OK"
    }

    sdk::logger log_;
    std::string path_;
    std::optional<sdk::worker_pool<job>> pool_;
};

} // namespace

ASIOSMTPD_PLUGIN(mbox, "mbox", "1.0.0", "appends each message to an mbox file (fcntl lock, fsync)",
                 ASIOSMTPD_PF_THREAD_SAFE)
