// async_policy: decides each RCPT on a worker thread, the way a plugin waits for DNS, a
// database or a policy server without blocking the server's event loop (plugin.h T4).
//
//   plugins:
//     - path: async_policy.so
//       config: {deny: [spam.example, junk.example], delay_ms: 20}
//
// RCPT TO:<x@spam.example>  ->  550 5.7.1 x@spam.example: recipient domain refused
// RCPT TO:<x@ok.example>    ->  CONTINUE (the next plugin, or the host's 250 OK)
//
// The hook calls suspend(), hands the `pending` to the worker and returns verdict::pending;
// the worker completes it. The destructor stops and joins the worker (T7); a job it never
// ran is completed with 451 by the `pending` destructor.
#include <asiosmtpd/plugin.hpp>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;

class async_policy {
public:
    explicit async_policy(sdk::registrar& reg)
    {
        const sdk::config cfg = reg.config();
        cfg.check_keys({"deny", "delay_ms"});
        if (auto deny = cfg.get("deny"))
            deny_ = deny->as_string_list();
        delay_ = std::chrono::milliseconds(cfg.int_or("delay_ms", 0));
        reg.on<&async_policy::on_rcpt>(sdk::hook::rcpt);
        worker_ = std::thread([this] { run(); });
    }

    ~async_policy()
    {
        {
            std::lock_guard<std::mutex> lock(m_);
            stop_ = true;
        }
        cv_.notify_all();
        worker_.join();
    }

    sdk::verdict on_rcpt(sdk::call& c, const sdk::address_args& a)
    {
        job j{std::string(a.address), c.suspend()}; // copy: the args die with the hook
        {
            std::lock_guard<std::mutex> lock(m_);
            jobs_.push_back(std::move(j));
        }
        cv_.notify_one();
        return sdk::verdict::pending;
    }

private:
    struct job {
        std::string address;
        sdk::pending done;
    };

    void run()
    {
        std::unique_lock<std::mutex> lock(m_);
        for (;;) {
            cv_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
            if (stop_)
                return; // jobs_ dies with the plugin: each pending completes with 451
            job j = std::move(jobs_.front());
            jobs_.pop_front();
            lock.unlock();
            decide(j); // any thread may complete
            lock.lock();
        }
    }

    void decide(job& j) const
    {
        std::this_thread::sleep_for(delay_); // the "lookup"
        const std::string::size_type at = j.address.rfind('@');
        const std::string domain = at == std::string::npos ? std::string() : j.address.substr(at + 1);
        for (const std::string& d : deny_) {
            if (d == domain) {
                j.done.complete(sdk::verdict::reject, 550, "5.7.1 " + j.address + ": recipient domain refused");
                return;
            }
        }
        j.done.complete(sdk::verdict::continue_);
    }

    std::vector<std::string> deny_;
    std::chrono::milliseconds delay_{0};
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<job> jobs_;
    bool stop_ = false;
    std::thread worker_; // last: started after everything it uses
};

} // namespace

ASIOSMTPD_PLUGIN(async_policy, "async_policy", "1.0.0",
                 "RCPT policy decided on a worker thread (suspend/complete)", ASIOSMTPD_PF_THREAD_SAFE)
