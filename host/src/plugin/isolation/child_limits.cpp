// SPDX-License-Identifier: Apache-2.0
// The plugin process's limits and surroundings, the child's side (child_limits.hpp).
#include "plugin/isolation/child_limits.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string_view>

#include <grp.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <unistd.h>

namespace asiosmtpd::plugin::isolation::child {
namespace {

std::atomic<std::uint64_t> cpu_limit{0};

std::uint64_t number(const char* s) { return std::strtoull(s, nullptr, 10); }

// The calling thread's CPU-time timer, made on its first call (hooks run on one thread).
struct thread_timer {
    timer_t id{};
    bool made = false;
    bool failed = false;
};
thread_local thread_timer call_timer;

bool set_timer(std::uint64_t ns) noexcept
{
    itimerspec spec{};
    spec.it_value.tv_sec = static_cast<time_t>(ns / 1000000000u);
    spec.it_value.tv_nsec = static_cast<long>(ns % 1000000000u);
    return ::timer_settime(call_timer.id, 0, &spec, nullptr) == 0;
}

}  // namespace

options parse(int argc, char** argv)
{
    options o;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string_view a = argv[i];
        const char* v = argv[i + 1];
        if (a == "--memory-limit") o.memory_limit = number(v);
        else if (a == "--workdir") o.workdir = v;
        else if (a == "--cpu-limit-ns") o.cpu_limit_ns = number(v);
        else if (a == "--uid") {
            o.switch_user = true;
            o.uid = static_cast<uid_t>(number(v));
        } else if (a == "--gid") o.gid = static_cast<gid_t>(number(v));
        else if (a == "--parent") o.parent = static_cast<pid_t>(number(v));
    }
    return o;
}

bool start(const options& o, std::string& why, bool& gone)
{
    gone = false;
    if (o.switch_user) {
        // No supplementary groups (they need root to drop), then the gid, then the uid; real,
        // effective and saved alike.
        if (::setgroups(0, nullptr) != 0 || ::setresgid(o.gid, o.gid, o.gid) != 0 ||
            ::setresuid(o.uid, o.uid, o.uid) != 0) {
            why = std::string("cannot become the plugin's user: ") + std::strerror(errno);
            return false;
        }
        uid_t r = 0, e = 0, s = 0;
        gid_t rg = 0, eg = 0, sg = 0;
        if (::getresuid(&r, &e, &s) != 0 || r != o.uid || e != o.uid || s != o.uid || ::getresgid(&rg, &eg, &sg) != 0 ||
            rg != o.gid || eg != o.gid || sg != o.gid || (o.uid != 0 && ::setuid(0) == 0)) {
            why = "the switch to the plugin's user did not hold";
            return false;
        }
        (void)::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    // Ends with the server, whatever way the server ends. The signal follows the thread that
    // started this process, which the server keeps for its whole life (adapter.cpp); a change
    // of credentials clears it, so it is set after the switch above.
    (void)::prctl(PR_SET_PDEATHSIG, SIGKILL);
    const pid_t parent = ::getppid();
    if (o.parent != 0 ? parent != o.parent : parent == 1) {
        gone = true;  // the server ended before the signal was set
        return false;
    }
    if (o.cpu_limit_ns != 0) {
        // The limit's signal must end the process (default action) and reach it.
        std::signal(SIGXCPU, SIG_DFL);
        sigset_t xcpu;
        sigemptyset(&xcpu);
        sigaddset(&xcpu, SIGXCPU);
        (void)::pthread_sigmask(SIG_UNBLOCK, &xcpu, nullptr);
    }
    set_cpu_limit(o.cpu_limit_ns);
    return true;
}

void set_cpu_limit(std::uint64_t ns) noexcept { cpu_limit.store(ns, std::memory_order_relaxed); }

call_budget::call_budget() noexcept
{
    const std::uint64_t ns = cpu_limit.load(std::memory_order_relaxed);
    if (ns == 0 || call_timer.failed) return;
    if (!call_timer.made) {
        // SIGXCPU, the kernel's own signal for "CPU time limit exceeded", whose default action
        // ends the process: the server reads it from the exit status.
        sigevent ev{};
        ev.sigev_notify = SIGEV_SIGNAL;
        ev.sigev_signo = SIGXCPU;
        if (::timer_create(CLOCK_THREAD_CPUTIME_ID, &ev, &call_timer.id) != 0) {
            call_timer.failed = true;
            return;
        }
        call_timer.made = true;
    }
    armed_ = set_timer(ns);
}

call_budget::~call_budget()
{
    if (armed_) (void)set_timer(0);
}

}  // namespace asiosmtpd::plugin::isolation::child
