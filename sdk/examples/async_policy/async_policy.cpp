// SPDX-License-Identifier: Apache-2.0
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
// The hook calls suspend(), posts the `pending` to a worker thread of an sdk::worker_pool
// (asiosmtpd/worker_pool.hpp) and returns verdict::pending; the worker completes it. The pool
// is the last member: destroyed first, it stops and joins its thread before what the thread
// uses goes (T7); a job it never ran is completed with 451 by the `pending` destructor.
#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <chrono>
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
        if (auto deny = cfg.get("deny")) deny_ = deny->as_string_list();
        delay_ = std::chrono::milliseconds(cfg.int_or("delay_ms", 0));
        reg.on<&async_policy::on_rcpt>(sdk::hook::rcpt);
    }

    sdk::verdict on_rcpt(sdk::call& c, const sdk::address_args& a)
    {
        // Copy what the worker needs: the args die with the hook.
        pool_.post(job{std::string(a.address), c.suspend()});
        return sdk::verdict::pending;
    }

private:
    struct job {
        std::string address;
        sdk::pending done;
    };

    void decide(job& j) const
    {
        std::this_thread::sleep_for(delay_);  // the "lookup"
        const std::string::size_type at = j.address.rfind('@');
        const std::string domain = at == std::string::npos ? std::string() : j.address.substr(at + 1);
        for (const std::string& d : deny_) {
            if (d == domain) {
                j.done.complete(sdk::verdict::reject, 550, "5.7.1 " + j.address + ": recipient domain refused");
                return;
            }
        }
        j.done.complete(sdk::verdict::continue_);  // any thread may complete
    }

    std::vector<std::string> deny_;
    std::chrono::milliseconds delay_{0};
    sdk::worker_pool<job> pool_{1, [this](job& j) { decide(j); }};  // last: see above
};

}  // namespace

ASIOSMTPD_PLUGIN(async_policy, "async_policy", "1.0.0", "RCPT policy decided on a worker thread (suspend/complete)",
                 ASIOSMTPD_PF_THREAD_SAFE)
