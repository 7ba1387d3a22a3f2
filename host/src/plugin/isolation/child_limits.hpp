// SPDX-License-Identifier: Apache-2.0
// The child's side of a plugin process's limits and surroundings (asiosmtpd-plugin-host): its
// command line, becoming plugins[].user, its lifetime tied to the server, and cpu_limit.
//
//     asiosmtpd-plugin-host [--memory-limit BYTES] [--workdir DIR] [--cpu-limit-ns NS]
//                           [--uid UID --gid GID] [--parent PID]
//
// cpu_limit is per hook call: the CPU time of the thread that runs the plugin's hook function,
// from the call's start to its return (a verdict, or PENDING after suspend()). The child runs
// hook functions one at a time on one thread, so that time is the call's own, however many
// sessions the child serves. A thread CPU-time timer (timer_create(CLOCK_THREAD_CPUTIME_ID))
// armed for each call ends the process with SIGXCPU when the call goes past it; the server sees
// the signal and reports the crash as reason=cpu. Work the plugin does on its own threads after
// suspend() is nobody's call and is not counted (the hook's timeout and memory_limit bound it).
#pragma once

#include <cstdint>
#include <string>

#include <sys/types.h>

namespace asiosmtpd::plugin::isolation::child {

struct options {
    std::uint64_t memory_limit = 0;  // RLIMIT_AS, bytes (0: none; a cgroup is the server's to set)
    const char* workdir = nullptr;
    std::uint64_t cpu_limit_ns = 0;  // per hook call (0: none)
    bool switch_user = false;        // --uid/--gid given: become them
    uid_t uid = 0;
    gid_t gid = 0;
    pid_t parent = 0;  // the server (0: not given)
};

/// The command line (unknown arguments are ignored; the server wrote it).
[[nodiscard]] options parse(int argc, char** argv);

/// The first steps of the child, before anything else: become --uid/--gid (no supplementary
/// groups; no new privileges after), then end with the server (PR_SET_PDEATHSIG, set after the
/// switch, which clears it), and check that the server is still the parent. False with `why`:
/// the child must exit. `gone` is set when the server ended already (exit quietly).
bool start(const options& o, std::string& why, bool& gone);

/// Sets the per-call CPU limit used by call_budget (0: none).
void set_cpu_limit(std::uint64_t ns) noexcept;

/// Armed for one hook call on the calling thread, disarmed at its end.
class call_budget {
public:
    call_budget() noexcept;
    ~call_budget();
    call_budget(const call_budget&) = delete;
    call_budget& operator=(const call_budget&) = delete;

private:
    bool armed_ = false;
};

}  // namespace asiosmtpd::plugin::isolation::child
