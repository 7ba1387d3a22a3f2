// maildir: delivers each message into a Maildir as aiosmtpd's Mailbox handler does (X-Peer,
// X-MailFrom and X-RcptTo appended to the headers, "\n" line ends), durably: the file is
// written to tmp/ under a unique name (time, pid, counter, host), fsync'd, renamed into new/,
// and new/ is fsync'd; only then does the client get 250. Any error answers 451 and leaves
// nothing in new/. The DATA hook only prepares the bytes and suspends; the blocking I/O runs
// on the plugin's worker threads, which complete the hook.
#include "delivery_common.hpp"

#include <asiosmtpd/plugin.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <optional>
#include <cerrno>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace {

namespace sdk = asiosmtpd::sdk;
namespace ap = asiosmtpd::plugins;

// Unique per process, also across instances delivering into one folder (the pid makes it
// unique across processes, O_EXCL catches the rest).
std::atomic<std::uint64_t> delivery_counter{0};

constexpr std::string_view failure_text = "4.3.0 Requested action aborted: local error in processing";

// mkdir -p: the folder and its missing parents.
void mkdir_if_absent(const std::string& dir)
{
    const std::size_t slash = dir.find_last_of('/');
    if (slash != std::string::npos && slash > 0 && ::access(dir.c_str(), F_OK) != 0)
        mkdir_if_absent(dir.substr(0, slash));
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        throw std::invalid_argument("path: cannot create \"" + dir + "\": " + ap::errno_text(errno));
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw std::invalid_argument("path: \"" + dir + "\" is not a folder");
}

int open_dir(const std::string& dir)
{
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        throw std::invalid_argument("path: cannot open \"" + dir + "\": " + ap::errno_text(errno));
    return fd;
}

// The host part of a Maildir name: '/' and ':' are written \057 and \072 (maildir(5)).
std::string maildir_host()
{
    char buf[256] = {0};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0')
        return "localhost";
    std::string out;
    for (const char* p = buf; *p; ++p) {
        if (*p == '/')
            out += "\\057";
        else if (*p == ':')
            out += "\\072";
        else
            out += *p;
    }
    return out;
}

bool write_all(int fd, const std::string& data)
{
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    return true;
}

class maildir {
public:
    explicit maildir(sdk::registrar& reg)
        : log_(reg.logger()), host_(maildir_host()), pid_(std::to_string(::getpid()))
    {
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"path", "workers"});
        path_ = ap::resolve_path(cfg.require("path").as_string(), reg.config_dir());
        if (path_.empty())
            throw std::invalid_argument("path: must not be empty");
        const auto w = cfg.get("workers");
        const std::int64_t workers = w ? w->as_int(1, 64) : 4;
        mkdir_if_absent(path_);
        for (const char* sub : {"tmp", "new", "cur"})
            mkdir_if_absent(path_ + "/" + sub);
        reg.on<&maildir::on_data>(sdk::hook::data);
        tmp_fd_.reset(open_dir(path_ + "/tmp"));
        new_fd_.reset(open_dir(path_ + "/new"));
        pool_.emplace(static_cast<std::size_t>(workers), [this](job& j) { deliver(j); });
    }
    maildir(const maildir&) = delete;
    maildir& operator=(const maildir&) = delete;
    ~maildir()
    {
        pool_.reset(); // joins the workers before the folders close
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& args)
    {
        std::string bytes = ap::prepare_message(args.content(), ap::message_headers(c));
        pool_->post(job{c.suspend(), std::move(bytes), c.session().id});
        return sdk::verdict::pending;
    }

private:
    struct job {
        sdk::pending pending;
        std::string bytes;
        std::uint64_t session = 0;
    };

    std::string unique_name() const
    {
        struct timeval tv {};
        ::gettimeofday(&tv, nullptr);
        return std::to_string(tv.tv_sec) + ".M" + std::to_string(tv.tv_usec) + "P" + pid_ + "Q" +
               std::to_string(++delivery_counter) + "." + host_;
    }

    void fail(job& j, const std::string& what, int err)
    {
        log_.error("session=" + std::to_string(j.session) + " maildir " + path_ + ": " + what + ": " +
                   ap::errno_text(err) + "; answering 451");
        j.pending.complete(sdk::verdict::tempfail, 451, failure_text);
    }

    void deliver(job& j)
    {
        std::string name;
        int fd = -1;
        for (int attempt = 0; attempt < 5 && fd < 0; ++attempt) {
            name = unique_name();
            fd = ::openat(tmp_fd_.get(), name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            if (fd < 0 && errno != EEXIST)
                break;
        }
        if (fd < 0)
            return fail(j, "cannot create tmp/" + name, errno);
        if (!write_all(fd, j.bytes) || ::fsync(fd) != 0) {
            const int err = errno;
            ::close(fd);
            ::unlinkat(tmp_fd_.get(), name.c_str(), 0);
            return fail(j, "cannot write tmp/" + name, err);
        }
        if (::close(fd) != 0) {
            const int err = errno;
            ::unlinkat(tmp_fd_.get(), name.c_str(), 0);
            return fail(j, "cannot write tmp/" + name, err);
        }
        // rename(2) is atomic: new/ holds the whole file or nothing, also after a crash.
        if (::renameat(tmp_fd_.get(), name.c_str(), new_fd_.get(), name.c_str()) != 0) {
            const int err = errno;
            ::unlinkat(tmp_fd_.get(), name.c_str(), 0);
            return fail(j, "cannot rename tmp/" + name + " into new/", err);
        }
        if (::fsync(new_fd_.get()) != 0) {
            // Not known to be durable: take it back, so that 451 means "not delivered".
            const int err = errno;
            ::unlinkat(new_fd_.get(), name.c_str(), 0);
            return fail(j, "cannot fsync new/", err);
        }
        j.pending.complete(sdk::verdict::accept); // the host's "250 OK", as aiosmtpd's Mailbox
    }

    sdk::logger log_;
    std::string host_;
    std::string pid_;
    std::string path_;
    ap::unique_fd tmp_fd_;
    ap::unique_fd new_fd_;
    std::optional<ap::worker_pool<job>> pool_;
};

} // namespace

ASIOSMTPD_PLUGIN(maildir, "maildir", "1.0.0",
                 "delivers each message into a Maildir (tmp/, fsync, rename into new/)",
                 ASIOSMTPD_PF_THREAD_SAFE)
