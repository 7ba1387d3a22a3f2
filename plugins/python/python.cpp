// SPDX-License-Identifier: Apache-2.0
// python: runs an aiosmtpd handler object (handle_* hooks, an `authenticator`, extra commands,
// auth_* mechanisms) unchanged inside the server, in an embedded CPython.
//
// Threads. The server's threads never take the GIL: every hook copies its arguments into a job,
// suspends the call (SDK suspend/complete) and queues the job for an event loop thread of this
// instance; that thread (holding the GIL) runs the handler's hook, `def` or `async def`, on its
// asyncio loop and completes the call. All coroutines of all sessions interleave on that loop;
// a hook that blocks the loop (time.sleep, a busy loop, blocking I/O) stops it from beating
// (every 50 ms while it has hook calls in progress; an idle loop sleeps without timers), and
// once it has been silent with work for `stale_after` the next jobs, and the jobs it had not
// taken yet (moved by the next dispatch or the watchdog thread), go to another loop thread,
// started on demand (at most max_loops): a blocking or never-returning hook costs its own
// session (the plugin `timeout:` answers it 451), not the others.
//
// The interpreter: one per process (libpython is shared by every copy of this plugin that a
// reload loads), initialised by the first instance and never finalised. Each instance (config
// entry, generation) imports the handler's modules afresh, so a reload runs new code for new
// sessions while old sessions finish on the objects they started with.
//
// The Python side is bridge.py (compiled in): it holds the aiosmtpd Session and Envelope
// objects per session and turns the handler's status strings into verdicts and replies.
#define ASIOSMTPD_PLUGIN_MIN_ABI_MINOR 3u
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <asiosmtpd/plugin.hpp>

#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;
using clock_type = std::chrono::steady_clock;

const char bridge_source[] =
#include "bridge_py.inc"
    ;

constexpr std::size_t max_loops = 16;                  // event loop threads per instance, at most
constexpr std::chrono::milliseconds stale_after{500};  // a loop silent this long is blocked
constexpr std::chrono::seconds stop_wait{3};           // destroy(): per loop thread
constexpr std::chrono::milliseconds watch_every{100};  // the watchdog's look, while there is work

// Job kinds: the first item of each job tuple (bridge.py J_*).
enum job_kind : int {
    j_close,
    j_helo,
    j_ehlo,
    j_mail,
    j_rcpt,
    j_data,
    j_rset,
    j_noop,
    j_quit,
    j_vrfy,
    j_auth,
    j_command,
    j_mech,
    j_proxy
};

// One hook call handed to Python: everything copied (the hook's arguments die when it returns).
struct job {
    int kind = 0;
    bool pinned = false;  // an AUTH mechanism's next step: only its loop can take it
    asiosmtpd_token token = 0;
    std::uint64_t sid = 0;
    std::uint64_t gen = 0;
    // session_info (has_info false: unchanged since the session's last job)
    bool has_info = true;
    std::string peer, helo, tls_version, tls_cipher;
    int peer_port = 0;
    bool esmtp = false, tls = false, authenticated = false;
    // arguments
    std::string s1, s2, s3, s4;
    bool has_s1 = true;
    std::vector<std::string> params;
    std::string content;
    std::uint32_t flags = 0;
    std::uint32_t step = 0;
    // the transaction as the server holds it (for hooks the handler has not got)
    bool has_txn = false;
    std::string mail_from;
    std::vector<std::string> mail_params, rcpts;
    // the PROXY header (once per session, to build session.proxy_data)
    bool has_proxy = false;
    int proxy_version = 0, proxy_command = 0, proxy_family = 0, proxy_protocol = 0;
    std::string proxy_src, proxy_dst, proxy_tlvs;
    int proxy_src_port = 0, proxy_dst_port = 0;
};

// Under LeakSanitizer (the asan preset): the interpreter is never finalised, so what it holds
// at exit is no leak of ours. Allocations made while a thread holds the GIL are not reported.
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
void lsan_off() { __lsan_disable(); }
void lsan_on() { __lsan_enable(); }
#else
void lsan_off() {}
void lsan_on() {}
#endif

// RAII GIL for the control thread (create/destroy) and the loop threads.
class gil {
public:
    gil() : state_(PyGILState_Ensure()) { lsan_off(); }
    ~gil()
    {
        lsan_on();
        PyGILState_Release(state_);
    }
    gil(const gil&) = delete;
    gil& operator=(const gil&) = delete;

private:
    PyGILState_STATE state_;
};

// A new reference or nullptr; DECREF on destruction (with the GIL held).
struct pyref {
    PyObject* p = nullptr;
    pyref() = default;
    explicit pyref(PyObject* o) : p(o) {}
    pyref(pyref&& o) noexcept : p(std::exchange(o.p, nullptr)) {}
    pyref& operator=(pyref&& o) noexcept
    {
        if (this != &o) {
            Py_XDECREF(p);
            p = std::exchange(o.p, nullptr);
        }
        return *this;
    }
    pyref(const pyref&) = delete;
    pyref& operator=(const pyref&) = delete;
    ~pyref() { Py_XDECREF(p); }
    PyObject* get() const { return p; }
    PyObject* release() { return std::exchange(p, nullptr); }
    explicit operator bool() const { return p != nullptr; }
};

// The current Python exception as text (type: message), cleared.
std::string py_error_text(bool with_traceback = false)
{
    PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
    PyErr_Fetch(&type, &value, &tb);
    if (!type) return "unknown Python error";
    PyErr_NormalizeException(&type, &value, &tb);
    std::string out;
    pyref mod(PyImport_ImportModule("traceback"));
    if (mod) {
        pyref lines(with_traceback && tb ? PyObject_CallMethod(mod.get(), "format_exception", "OOO", type, value, tb)
                                         : PyObject_CallMethod(mod.get(), "format_exception_only", "OO", type, value));
        if (lines) {
            pyref empty(PyUnicode_FromString(""));
            pyref joined(PyUnicode_Join(empty.get(), lines.get()));
            if (joined) {
                Py_ssize_t n = 0;
                const char* s = PyUnicode_AsUTF8AndSize(joined.get(), &n);
                if (s) out.assign(s, static_cast<std::size_t>(n));
            }
        }
    }
    PyErr_Clear();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out.empty() ? "unknown Python error" : out;
}

PyObject* text(std::string_view s)
{
    return PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape");
}
PyObject* bytes(std::string_view s) { return PyBytes_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size())); }

PyObject* text_tuple(const std::vector<std::string>& v)
{
    PyObject* t = PyTuple_New(static_cast<Py_ssize_t>(v.size()));
    if (!t) return nullptr;
    for (std::size_t i = 0; i < v.size(); ++i) {
        PyObject* s = text(v[i]);
        if (!s) {
            Py_DECREF(t);
            return nullptr;
        }
        PyTuple_SET_ITEM(t, static_cast<Py_ssize_t>(i), s);
    }
    return t;
}

// -- The interpreter -------------------------------------------------------------------------

#ifndef ASIOSMTPD_PYTHON_EXECUTABLE
#define ASIOSMTPD_PYTHON_EXECUTABLE "/usr/bin/python3"
#endif

// Once per process: libpython made global (C extension modules such as _asyncio resolve its
// symbols through the global scope, and this plugin was loaded RTLD_LOCAL) and never unloaded,
// then the interpreter started without signal handlers (the server owns the signals) and with
// unbuffered stdio (aiosmtpd's Debugging prints), and the GIL released.
void start_interpreter()
{
    Dl_info info{};
    if (::dladdr(reinterpret_cast<void*>(&Py_IsInitialized), &info) != 0 && info.dli_fname)
        ::dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL | RTLD_NODELETE);
    if (Py_IsInitialized()) return;
    lsan_off();
    struct lsan_guard {
        ~lsan_guard() { lsan_on(); }
    } guard;
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;
    config.buffered_stdio = 0;
    config.parse_argv = 0;
    PyStatus st = PyConfig_SetBytesString(&config, &config.program_name, ASIOSMTPD_PYTHON_EXECUTABLE);
    if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st))
        throw std::runtime_error(std::string("cannot start the Python interpreter: ") +
                                 (st.err_msg ? st.err_msg : "?"));
    PyEval_SaveThread();
}

// -- The instance ----------------------------------------------------------------------------

struct core;

// One event loop thread: its queue of jobs, its eventfd, its heartbeat.
struct loop_thread {
    core* owner = nullptr;
    std::size_t index = 0;
    int efd = -1;
    std::mutex m;
    std::deque<job> queue;
    bool stopping = false;
    // The watchdog (dispatch()): a loop with work (busy: hook calls in progress; or jobs
    // queued) that showed no sign of life (a beat, a take, work queued to it while idle) for
    // stale_after is blocked. An idle loop beats no more: it sleeps until a job comes.
    std::atomic<std::int64_t> last_beat{0};
    std::atomic<bool> busy{false};
    std::thread th;
    std::promise<void> finished;
    std::future<void> finished_f = finished.get_future();
    pyref capsule;  // with the GIL
};

std::int64_t now_ns()
{
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch()).count();
}

// What the loop threads share with the instance. Outlives the instance when a loop thread
// cannot be stopped (a hook that never returns): then it is leaked with that thread.
struct core {
    const asiosmtpd_host_api* host = nullptr;
    sdk::logger log;
    std::atomic<bool> alive{true};  // false once destroy() gave up on a thread: no more log()
    pyref bridge;                   // the bridge module
    pyref inst;                     // bridge.Instance
    std::mutex loops_m;
    std::vector<std::unique_ptr<loop_thread>> loops;

    void say(std::int32_t level, std::string_view m) const
    {
        if (alive.load(std::memory_order_acquire)) log.log(static_cast<sdk::log_level>(level), m);
    }

    core() = default;
    core(const core&) = delete;
    core& operator=(const core&) = delete;
    ~core()
    {
        // Python references go with the GIL (also when create() failed half-way).
        if (!Py_IsInitialized()) return;
        gil g;
        for (auto& L : loops) L->capsule = pyref();
        inst = pyref();
        bridge = pyref();
    }
};

void loop_main(core* c, loop_thread* L);

// The functions the bridge calls (api.take() ...): PyCFunctions whose `self` is a capsule
// holding the loop_thread.
loop_thread* loop_of(PyObject* self) { return static_cast<loop_thread*>(PyCapsule_GetPointer(self, "asiosmtpd.loop")); }

PyObject* job_tuple(const job& j)
{
    pyref proxy;
    if (j.has_proxy)
        proxy = pyref(Py_BuildValue("(iiiiNiNiN)", j.proxy_version, j.proxy_command, j.proxy_family, j.proxy_protocol,
                                    text(j.proxy_src), j.proxy_src_port, text(j.proxy_dst), j.proxy_dst_port,
                                    bytes(j.proxy_tlvs)));
    else proxy = pyref((Py_INCREF(Py_None), Py_None));
    if (!proxy) return nullptr;
    pyref info(j.has_info
                   ? Py_BuildValue("(NiNiiiNNO)", text(j.peer), j.peer_port, text(j.helo), int(j.esmtp), int(j.tls),
                                   int(j.authenticated), text(j.tls_version), text(j.tls_cipher), proxy.get())
                   : (Py_INCREF(Py_None), Py_None));
    if (!info) return nullptr;
    pyref txn;
    if (j.has_txn)
        txn = pyref(Py_BuildValue("(NNN)", j.mail_from.empty() ? (Py_INCREF(Py_None), Py_None) : text(j.mail_from),
                                  text_tuple(j.mail_params), text_tuple(j.rcpts)));
    else txn = pyref((Py_INCREF(Py_None), Py_None));
    if (!txn) return nullptr;
    auto opt_text = [&](bool has, const std::string& s) -> PyObject* {
        if (!has) {
            Py_INCREF(Py_None);
            return Py_None;
        }
        return text(s);
    };
    const unsigned long long tok = j.token;
    const unsigned long long sid = j.sid;
    const unsigned long long gen = j.gen;
    switch (j.kind) {
    case j_helo:
    case j_vrfy: return Py_BuildValue("(iKKKON)", j.kind, tok, sid, gen, info.get(), text(j.s1));
    case j_ehlo: return Py_BuildValue("(iKKKONi)", j.kind, tok, sid, gen, info.get(), text(j.s1), int(j.esmtp));
    case j_mail: return Py_BuildValue("(iKKKONN)", j.kind, tok, sid, gen, info.get(), text(j.s1), text_tuple(j.params));
    case j_rcpt: return Py_BuildValue("(iKKKONO)", j.kind, tok, sid, gen, info.get(), text(j.s1), txn.get());
    case j_data:
        return Py_BuildValue("(iKKKONIO)", j.kind, tok, sid, gen, info.get(), bytes(j.content), j.flags, txn.get());
    case j_rset:
    case j_proxy:
    case j_quit: return Py_BuildValue("(iKKKO)", j.kind, tok, sid, gen, info.get());
    case j_noop: return Py_BuildValue("(iKKKON)", j.kind, tok, sid, gen, info.get(), opt_text(j.has_s1, j.s1));
    case j_auth:
        return Py_BuildValue("(iKKKONNNN)", j.kind, tok, sid, gen, info.get(), text(j.s1), bytes(j.s2), bytes(j.s3),
                             bytes(j.s4));
    case j_command:
        return Py_BuildValue("(iKKKONN)", j.kind, tok, sid, gen, info.get(), text(j.s1),
                             opt_text((j.flags & 1) != 0, j.s2));
    case j_mech:
        return Py_BuildValue("(iKKKONNI)", j.kind, tok, sid, gen, info.get(), text(j.s1),
                             j.has_s1 ? bytes(j.s2) : (Py_INCREF(Py_None), Py_None), j.step);
    default: return Py_BuildValue("(iKK)", int(j_close), 0ULL, sid);
    }
}

PyObject* api_take(PyObject* self, PyObject*)
{
    loop_thread* L = loop_of(self);
    if (!L) return nullptr;
    std::uint64_t v = 0;
    [[maybe_unused]] const auto n = ::read(L->efd, &v, sizeof v);
    std::deque<job> jobs;
    {
        std::lock_guard lock(L->m);
        if (L->stopping) Py_RETURN_NONE;
        jobs.swap(L->queue);
    }
    L->last_beat.store(now_ns(), std::memory_order_release);
    for (const job& j : jobs)
        if (j.token) {
            L->busy.store(true, std::memory_order_release);
            break;
        }
    pyref list(PyList_New(0));
    if (!list) return nullptr;
    for (const job& j : jobs) {
        pyref t(job_tuple(j));
        if (!t) {
            L->owner->say(ASIOSMTPD_LOG_ERROR, "cannot hand a hook call to Python: " + py_error_text());
            if (j.token) L->owner->host->complete(j.token, ASIOSMTPD_TEMPFAIL, 451, {"4.3.0 Error: internal", 21});
            continue;
        }
        if (PyList_Append(list.get(), t.get()) != 0) return nullptr;
    }
    return list.release();
}

// complete_many([(token, verdict, code, text), ...]): the answers of one round of the loop.
PyObject* api_complete_many(PyObject* self, PyObject* list)
{
    loop_thread* L = loop_of(self);
    if (!L) return nullptr;
    pyref seq(PySequence_Fast(list, "complete_many(): a list of (token, verdict, code, text)"));
    if (!seq) return nullptr;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.get());
    for (Py_ssize_t i = 0; i < n; ++i) {
        unsigned long long token = 0;
        int verdict = 0, code = 0;
        const char* data = nullptr;
        Py_ssize_t size = 0;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq.get(), i), "Kiiy#", &token, &verdict, &code, &data, &size)) {
            // A malformed entry is a bug of the bridge: that call is answered by its timeout.
            L->owner->say(ASIOSMTPD_LOG_ERROR, "cannot complete a hook call: " + py_error_text());
            continue;
        }
        L->owner->host->complete(token, verdict, static_cast<std::uint16_t>(code),
                                 {data, static_cast<std::size_t>(size)});
    }
    Py_RETURN_NONE;
}

PyObject* api_complete(PyObject* self, PyObject* args)
{
    loop_thread* L = loop_of(self);
    unsigned long long token = 0;
    int verdict = 0, code = 0;
    const char* data = nullptr;
    Py_ssize_t size = 0;
    if (!L || !PyArg_ParseTuple(args, "Kiiy#", &token, &verdict, &code, &data, &size)) return nullptr;
    const asiosmtpd_status st = L->owner->host->complete(token, verdict, static_cast<std::uint16_t>(code),
                                                         {data, static_cast<std::size_t>(size)});
    return PyLong_FromLong(st);
}

// edit(token, op, name, value, index, params, what): one message edit of a suspended DATA call
// (params: a sequence of bytes, CHANGE_SENDER and ADD_RCPT; what: the envelope attribute, for
// the log line of a refused edit). Returns the host's status.
PyObject* api_edit(PyObject* self, PyObject* args)
{
    loop_thread* L = loop_of(self);
    unsigned long long token = 0;
    int op = 0;
    const char *name = nullptr, *value = nullptr, *what = nullptr;
    Py_ssize_t name_size = 0, value_size = 0, index = 0;
    PyObject* params = nullptr;
    if (!L || !PyArg_ParseTuple(args, "Kiy#y#nOs", &token, &op, &name, &name_size, &value, &value_size, &index, &params,
                                &what))
        return nullptr;
    pyref seq(PySequence_Fast(params, "edit(): params must be a sequence of bytes"));
    if (!seq) return nullptr;
    const Py_ssize_t count = PySequence_Fast_GET_SIZE(seq.get());
    std::vector<asiosmtpd_str> strs;
    strs.reserve(static_cast<std::size_t>(count));
    for (Py_ssize_t i = 0; i < count; ++i) {
        char* p = nullptr;
        Py_ssize_t n = 0;
        if (PyBytes_AsStringAndSize(PySequence_Fast_GET_ITEM(seq.get(), i), &p, &n) != 0) return nullptr;
        strs.push_back({p, static_cast<std::size_t>(n)});
    }
    asiosmtpd_edit e{};
    e.struct_size = sizeof e;
    e.op = op;
    e.name = {name, static_cast<std::size_t>(name_size)};
    e.value = {value, static_cast<std::size_t>(value_size)};
    e.index = static_cast<std::size_t>(index);
    e.params = strs.empty() ? nullptr : strs.data();
    e.param_count = strs.size();
    const asiosmtpd_status st = L->owner->host->edit_message_pending(token, &e);
    if (st != ASIOSMTPD_OK && st != ASIOSMTPD_E_GONE)
        L->owner->say(ASIOSMTPD_LOG_WARN, std::string(what) + ": an edit was refused (status " + std::to_string(st) +
                                              "): the message goes on without it");
    return PyLong_FromLong(st);
}

PyObject* api_log(PyObject* self, PyObject* args)
{
    loop_thread* L = loop_of(self);
    int level = 0;
    const char* data = nullptr;
    Py_ssize_t size = 0;
    if (!L || !PyArg_ParseTuple(args, "is#", &level, &data, &size)) return nullptr;
    std::string_view all(data, static_cast<std::size_t>(size));
    // One log line per line of the text (a traceback).
    while (!all.empty()) {
        const std::size_t nl = all.find('\n');
        L->owner->say(level, all.substr(0, nl));
        if (nl == std::string_view::npos) break;
        all.remove_prefix(nl + 1);
    }
    Py_RETURN_NONE;
}

// beat(busy): the loop is alive; busy: hook calls of it are still in progress (it beats again).
PyObject* api_beat(PyObject* self, PyObject* arg)
{
    loop_thread* L = loop_of(self);
    if (!L) return nullptr;
    const int busy = PyObject_IsTrue(arg);
    if (busy < 0) return nullptr;
    L->last_beat.store(now_ns(), std::memory_order_release);
    L->busy.store(busy != 0, std::memory_order_release);
    Py_RETURN_NONE;
}

PyMethodDef api_methods[] = {
    {"take", api_take, METH_NOARGS, nullptr},
    {"complete", api_complete, METH_VARARGS, nullptr},
    {"complete_many", api_complete_many, METH_O, nullptr},
    {"edit", api_edit, METH_VARARGS, nullptr},
    {"log", api_log, METH_VARARGS, nullptr},
    {"beat", api_beat, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

// types.SimpleNamespace(take=..., complete=..., ...) bound to one loop thread.
PyObject* make_api(loop_thread* L)
{
    pyref types(PyImport_ImportModule("types"));
    if (!types) return nullptr;
    pyref ns_type(PyObject_GetAttrString(types.get(), "SimpleNamespace"));
    pyref kw(PyDict_New());
    if (!ns_type || !kw) return nullptr;
    for (PyMethodDef* d = api_methods; d->ml_name; ++d) {
        pyref f(PyCFunction_New(d, L->capsule.get()));
        if (!f || PyDict_SetItemString(kw.get(), d->ml_name, f.get()) != 0) return nullptr;
    }
    pyref noargs(PyTuple_New(0));
    return PyObject_Call(ns_type.get(), noargs.get(), kw.get());
}

void loop_main(core* c, loop_thread* L)
{
    ::pthread_setname_np(::pthread_self(), "py-loop");  // for top -H, gdb, perf
    // SCHED_BATCH (no privilege needed): a job queued wakes this thread without preempting the
    // server's thread that queued it, which goes on with its other sessions and queues their
    // jobs too; the loop then takes them all in one round (on a busy CPU: fewer context
    // switches per hook call, the main cost of the hand-over). Its share of the CPU is the same.
    sched_param sp{};
    [[maybe_unused]] const int batch = ::pthread_setschedparam(::pthread_self(), SCHED_BATCH, &sp);
    {
        gil g;
        L->capsule = pyref(PyCapsule_New(L, "asiosmtpd.loop", nullptr));
        pyref api(L->capsule ? make_api(L) : nullptr);
        pyref runner;
        if (api) {
            pyref cls(PyObject_GetAttrString(c->bridge.get(), "Runner"));
            if (cls) runner = pyref(PyObject_CallFunctionObjArgs(cls.get(), c->inst.get(), api.get(), nullptr));
        }
        if (!runner) {
            c->say(ASIOSMTPD_LOG_ERROR, "cannot start a Python event loop: " + py_error_text(true));
        } else {
            pyref r(PyObject_CallMethod(runner.get(), "run", "i", L->efd));
            if (!r) c->say(ASIOSMTPD_LOG_ERROR, "a Python event loop ended: " + py_error_text(true));
        }
    }
    L->finished.set_value();
}

// The session's bookkeeping: a transaction counter (a new aiosmtpd Envelope per transaction)
// and the loop an AUTH mechanism's coroutine waits on.
struct session_state {
    std::uint64_t gen = 1;
    std::size_t mech_loop = 0;
    bool seen = false;           // some job went to Python: SESSION_CLOSE tells it to forget the session
    std::unique_ptr<job> proxy;  // the PROXY header, until a job carries it to Python
    std::uint64_t txn_sent = 0;  // the transaction (gen) whose sender went to Python already
    // The session as Python last heard of it: a job carries the session's state (peer, HELO
    // name, TLS, AUTH) only when it changed.
    std::string peer, helo, tls_version, tls_cipher;
    int peer_port = 0;
    bool esmtp = false, tls = false, authenticated = false;
};

// A config node as a Python value: maps and lists as dict and list, scalars typed as YAML 1.2's
// core schema reads them (null, true/false, integers, floats, else the text).
PyObject* to_python(const sdk::config& n)
{
    if (n.is_map()) {
        pyref d(PyDict_New());
        for (const auto& [k, v] : n.entries()) {
            pyref key(text(k));
            pyref val(to_python(v));
            if (!key || !val || PyDict_SetItem(d.get(), key.get(), val.get()) != 0) return nullptr;
        }
        return d.release();
    }
    if (n.is_sequence()) {
        pyref l(PyList_New(0));
        for (const auto& v : n.items()) {
            pyref val(to_python(v));
            if (!val || PyList_Append(l.get(), val.get()) != 0) return nullptr;
        }
        return l.release();
    }
    if (n.is_null()) Py_RETURN_NONE;
    const std::string s(n.scalar());
    if (s == "~" || s == "null" || s == "Null" || s == "NULL") Py_RETURN_NONE;
    if (s == "true" || s == "True" || s == "TRUE") Py_RETURN_TRUE;
    if (s == "false" || s == "False" || s == "FALSE") Py_RETURN_FALSE;
    if (!s.empty() && s.find_first_not_of("+-0123456789") == std::string::npos && s != "+" && s != "-") {
        PyObject* v = PyLong_FromString(s.c_str(), nullptr, 10);
        if (v) return v;
        PyErr_Clear();
    }
    if (!s.empty() && s.find_first_not_of("+-0123456789.eE") == std::string::npos &&
        s.find_first_of("0123456789") != std::string::npos) {
        char* end = nullptr;
        const double d = std::strtod(s.c_str(), &end);
        if (end && *end == '\0') return PyFloat_FromDouble(d);
    }
    return text(s);
}

class python_plugin {
public:
    explicit python_plugin(sdk::registrar& reg) : c_(std::make_shared<core>())
    {
        c_->host = reg.host();
        c_->log = reg.logger();
        const sdk::config cfg = reg.config();
        cfg.expect_map();
        cfg.check_keys({"handler", "args", "path", "authenticator", "commands", "hostname", "data_size_limit"});
        const sdk::config handler = cfg.require("handler");
        if (!handler.is_scalar() || handler.scalar().empty()) throw handler.error("expected \"module.path:Name\"");
        std::vector<std::string> path;
        if (auto p = cfg.get("path"); p && !p->is_null())
            path = p->is_scalar() ? std::vector<std::string>{p->as_string()} : p->as_string_list();
        const std::optional<sdk::config> args = cfg.get("args");
        if (args && !args->is_null()) args->expect_map();
        const std::optional<sdk::config> commands = cfg.get("commands");
        if (commands && !commands->is_null()) {
            commands->expect_map();
            for (const auto& [verb, spec] : commands->entries()) {
                if (verb.empty() ||
                    verb.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-") !=
                        std::string_view::npos)
                    throw commands->key_error(verb, "a verb is letters, digits and '-'");
                if (!spec.is_scalar()) throw spec.error("expected \"module:coroutine\"");
            }
        }
        const std::string hostname = cfg.string_or("hostname", "");
        const std::int64_t size_limit = cfg.int_or("data_size_limit", -1, 0, INT64_MAX);  // -1: the server's
        const std::string config_dir(reg.config_dir());

        start_interpreter();
        gil g;
        c_->bridge = load_bridge();
        pyref py_args(args && !args->is_null() ? to_python(*args) : PyDict_New());
        pyref py_commands(commands && !commands->is_null() ? to_python(*commands) : PyDict_New());
        pyref py_path(PyList_New(0));
        for (const std::string& p : path) {
            pyref s(text(p));
            PyList_Append(py_path.get(), s.get());
        }
        pyref cls(PyObject_GetAttrString(c_->bridge.get(), "Instance"));
        if (!py_args || !py_commands || !py_path || !cls) throw std::runtime_error(py_error_text());
        const std::optional<sdk::config> auth = cfg.get("authenticator");
        pyref py_auth(auth && !auth->is_null() ? text(auth->as_string()) : (Py_INCREF(Py_None), Py_None));
        pyref none((Py_INCREF(Py_None), Py_None));
        c_->inst = pyref(PyObject_CallFunction(cls.get(), "ONOOOONNLsO", none.get(), text(handler.scalar()),
                                               py_args.get(), py_path.get(), py_auth.get(), py_commands.get(),
                                               text(config_dir), text(hostname), static_cast<long long>(size_limit),
                                               "asiosmtpd", reg.check_only() ? Py_True : Py_False));
        if (!c_->inst) throw config_failure(cfg);
        pyref wants(PyObject_CallMethod(c_->inst.get(), "wants", nullptr));
        if (!wants) throw std::runtime_error(py_error_text(true));
        register_hooks(reg, wants.get());
        if (reg.check_only()) return;
        start_loop();
        watchdog_ = std::thread([this] { watch(); });
    }

    ~python_plugin() { stop(); }
    python_plugin(const python_plugin&) = delete;
    python_plugin& operator=(const python_plugin&) = delete;

    // -- hooks: copy, suspend, queue ---------------------------------------------------------

    sdk::verdict on_helo(sdk::call& c, const sdk::helo_args& a)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        ++ss.gen;
        if (!hook_helo_) return sdk::verdict::continue_;
        job j = start(c, j_helo, ss);
        j.s1.assign(a.hostname);
        return post(c, std::move(j));
    }
    sdk::verdict on_ehlo(sdk::call& c, const sdk::helo_args& a)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        ++ss.gen;
        if (!hook_ehlo_) return sdk::verdict::continue_;
        job j = start(c, j_ehlo, ss);
        j.s1.assign(a.hostname);
        return post(c, std::move(j));
    }
    sdk::verdict on_mail(sdk::call& c, const sdk::address_args& a)
    {
        job j = start(c, j_mail, c.slot<session_state>(sdk::scope::session));
        j.s1.assign(a.address);
        for (std::string_view p : a.params) j.params.emplace_back(p);
        return post(c, std::move(j));
    }
    // Without handle_MAIL the envelope's sender comes with the transaction's first RCPT (or
    // DATA); without handle_RCPT its recipients come with DATA.
    sdk::verdict on_rcpt(sdk::call& c, const sdk::address_args& a)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        job j = start(c, j_rcpt, ss);
        j.s1.assign(a.address);
        if (!hook_mail_ && ss.txn_sent != ss.gen) {
            add_txn(c, j);
            ss.txn_sent = ss.gen;
        }
        return post(c, std::move(j));
    }
    sdk::verdict on_data(sdk::call& c, const sdk::data_args& a)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        job j = start(c, j_data, ss);
        j.content.assign(a.content());
        j.flags = a.flags;
        if (!hook_rcpt_ || (!hook_mail_ && ss.txn_sent != ss.gen)) {
            add_txn(c, j);
            ss.txn_sent = ss.gen;
        }
        return post(c, std::move(j));
    }
    sdk::verdict on_rset(sdk::call& c)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        ++ss.gen;
        if (!hook_rset_) return sdk::verdict::continue_;
        return post(c, start(c, j_rset, ss));
    }
    sdk::verdict on_noop(sdk::call& c, const sdk::command_args& a)
    {
        job j = start(c, j_noop, c.slot<session_state>(sdk::scope::session));
        j.s1.assign(a.argument);
        j.has_s1 = a.has_argument;
        return post(c, std::move(j));
    }
    sdk::verdict on_quit(sdk::call& c) { return post(c, start(c, j_quit, c.slot<session_state>(sdk::scope::session))); }
    sdk::verdict on_vrfy(sdk::call& c, const sdk::address_args& a)
    {
        job j = start(c, j_vrfy, c.slot<session_state>(sdk::scope::session));
        j.s1.assign(a.address);
        return post(c, std::move(j));
    }
    sdk::verdict on_auth(sdk::call& c, const sdk::auth_args& a)
    {
        job j = start(c, j_auth, c.slot<session_state>(sdk::scope::session));
        j.s1.assign(a.mechanism);
        j.s2.assign(a.authzid);
        j.s3.assign(a.login);
        j.s4.assign(a.password);
        return post(c, std::move(j));
    }
    sdk::verdict on_mechanism(sdk::call& c, const sdk::auth_args& a)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        job j = start(c, j_mech, ss);
        j.s1.assign(a.mechanism);
        j.s2.assign(a.response);
        j.has_s1 = a.has_response;
        j.step = a.step;
        if (a.step == 0) return post(c, std::move(j), &ss.mech_loop);
        return post(c, std::move(j), nullptr, ss.mech_loop);
    }
    sdk::verdict on_command(sdk::call& c, const sdk::command_args& a)
    {
        job j = start(c, j_command, c.slot<session_state>(sdk::scope::session));
        j.s1.assign(a.verb);
        j.s2.assign(a.argument);
        j.flags = a.has_argument ? 1 : 0;
        return post(c, std::move(j));
    }
    sdk::verdict on_proxy(sdk::call& c, const sdk::proxy_args& a)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        ss.proxy = std::make_unique<job>();
        job& p = *ss.proxy;
        p.has_proxy = true;
        p.proxy_version = a.version;
        p.proxy_command = a.command;
        p.proxy_family = a.family;
        p.proxy_protocol = a.protocol;
        p.proxy_src.assign(a.src_address);
        p.proxy_src_port = a.src_port;
        p.proxy_dst.assign(a.dst_address);
        p.proxy_dst_port = a.dst_port;
        p.proxy_tlvs.assign(a.tlvs);
        if (!hook_proxy_) return sdk::verdict::continue_;
        return post(c, start(c, j_proxy, ss));
    }
    sdk::verdict on_txn_end(sdk::call& c)
    {
        ++c.slot<session_state>(sdk::scope::session).gen;
        return sdk::verdict::continue_;
    }
    sdk::verdict on_close(sdk::call& c)
    {
        auto& ss = c.slot<session_state>(sdk::scope::session);
        if (!ss.seen) return sdk::verdict::continue_;
        job j;
        j.kind = j_close;
        j.sid = c.session().id;
        dispatch(std::move(j), nullptr, std::nullopt);
        return sdk::verdict::continue_;
    }

private:
    sdk::config_error config_failure(const sdk::config& cfg)
    {
        // bridge.ConfigError(key, message): the key names the config entry; else the traceback.
        PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        pyref t(type), v(value), b(tb);
        pyref ce(PyObject_GetAttrString(c_->bridge.get(), "ConfigError"));
        if (ce && v && PyObject_IsInstance(v.get(), ce.get()) == 1) {
            pyref key(PyObject_GetAttrString(v.get(), "key"));
            pyref msg(PyObject_Str(v.get()));
            const char* k = key ? PyUnicode_AsUTF8(key.get()) : nullptr;
            const char* m = msg ? PyUnicode_AsUTF8(msg.get()) : nullptr;
            std::string ks = k ? k : "handler", ms = m ? m : "invalid";
            PyErr_Clear();
            if (ks.rfind("commands.", 0) == 0) {
                if (auto cm = cfg.get("commands")) return cm->key_error(ks.substr(9), ms);
            }
            return cfg.key_error(ks, ms);
        }
        PyErr_Restore(t.release(), v.release(), b.release());
        std::string why = py_error_text();
        for (char& ch : why)
            if (ch == '\n') ch = ' ';
        return cfg.key_error("handler", why);
    }

    pyref load_bridge()
    {
        pyref code(Py_CompileString(bridge_source, "<asiosmtpd python plugin bridge>", Py_file_input));
        if (!code) throw std::runtime_error("the plugin's bridge does not compile: " + py_error_text());
        pyref mod(PyImport_ExecCodeModuleEx("_asiosmtpd_bridge", code.get(), "<asiosmtpd python plugin bridge>"));
        if (!mod) throw std::runtime_error("the plugin's bridge failed: " + py_error_text(true));
        // Not kept in sys.modules: each instance has its own copy (a reload may bring a new one).
        PyObject* modules = PyImport_GetModuleDict();
        if (PyDict_DelItemString(modules, "_asiosmtpd_bridge") != 0) PyErr_Clear();
        return mod;
    }

    static bool has(PyObject* seq, const char* name)
    {
        pyref s(PyUnicode_FromString(name));
        return PySequence_Contains(seq, s.get()) == 1;
    }

    void register_hooks(sdk::registrar& reg, PyObject* wants)
    {
        PyObject* hooks = PyTuple_GetItem(wants, 0);
        const bool authenticator = PyObject_IsTrue(PyTuple_GetItem(wants, 1)) == 1;
        PyObject* commands = PyTuple_GetItem(wants, 2);
        PyObject* mechanisms = PyTuple_GetItem(wants, 3);
        hook_helo_ = has(hooks, "HELO");
        hook_ehlo_ = has(hooks, "EHLO");
        hook_mail_ = has(hooks, "MAIL");
        hook_rcpt_ = has(hooks, "RCPT");
        hook_rset_ = has(hooks, "RSET");
        hook_proxy_ = has(hooks, "PROXY");
        reg.on<&python_plugin::on_proxy>(sdk::hook::proxy);  // session.proxy_data
        // Always: a new Envelope per transaction as aiosmtpd (HELO, EHLO, RSET, end of DATA).
        reg.on<&python_plugin::on_helo>(sdk::hook::helo);
        reg.on<&python_plugin::on_ehlo>(sdk::hook::ehlo);
        reg.on<&python_plugin::on_rset>(sdk::hook::rset);
        reg.on<&python_plugin::on_txn_end>(sdk::hook::txn_end);
        reg.on<&python_plugin::on_close>(sdk::hook::session_close);
        if (hook_mail_) reg.on<&python_plugin::on_mail>(sdk::hook::mail);
        if (hook_rcpt_) reg.on<&python_plugin::on_rcpt>(sdk::hook::rcpt);
        if (has(hooks, "DATA")) {
            reg.editor();  // envelope.content changed in handle_DATA: the plugins after it see it
            reg.on<&python_plugin::on_data>(sdk::hook::data);
        }
        if (has(hooks, "NOOP")) reg.on<&python_plugin::on_noop>(sdk::hook::noop);
        if (has(hooks, "QUIT")) reg.on<&python_plugin::on_quit>(sdk::hook::quit);
        if (has(hooks, "VRFY")) reg.on<&python_plugin::on_vrfy>(sdk::hook::vrfy);
        // handle_AUTH without an authenticator: it still sees AUTH PLAIN and LOGIN.
        if (authenticator || has(hooks, "AUTH")) reg.on<&python_plugin::on_auth>(sdk::hook::auth_check);
        for (Py_ssize_t i = 0; i < PySequence_Size(commands); ++i) {
            pyref v(PySequence_GetItem(commands, i));  // (verb, help: aiosmtpd's @syntax text)
            const char* verb = PyUnicode_AsUTF8(PyTuple_GetItem(v.get(), 0));
            const char* help = PyUnicode_AsUTF8(PyTuple_GetItem(v.get(), 1));
            if (!verb || !help) throw std::runtime_error("commands: " + py_error_text());
            reg.command<&python_plugin::on_command>(verb, help);
        }
        for (Py_ssize_t i = 0; i < PySequence_Size(mechanisms); ++i) {
            pyref v(PySequence_GetItem(mechanisms, i));
            const char* name = PyUnicode_AsUTF8(v.get());
            reg.auth_mechanism<&python_plugin::on_mechanism>(name ? name : "");
        }
    }

    job start(sdk::call& c, int kind, session_state& ss)
    {
        job j;
        j.kind = kind;
        j.gen = ss.gen;
        const sdk::session_info s = c.session();
        j.sid = s.id;
        if (ss.seen && !ss.proxy && ss.peer == s.peer_address && ss.peer_port == s.peer_port &&
            ss.helo == s.helo_name && ss.esmtp == s.extended_smtp && ss.tls == s.tls_active &&
            ss.authenticated == s.authenticated && ss.tls_version == s.tls_version && ss.tls_cipher == s.tls_cipher) {
            j.has_info = false;
            return j;
        }
        ss.seen = true;
        ss.peer.assign(s.peer_address);
        ss.peer_port = s.peer_port;
        ss.helo.assign(s.helo_name);
        ss.esmtp = s.extended_smtp;
        ss.tls = s.tls_active;
        ss.authenticated = s.authenticated;
        ss.tls_version.assign(s.tls_version);
        ss.tls_cipher.assign(s.tls_cipher);
        j.peer = ss.peer;
        j.peer_port = s.peer_port;
        j.helo = ss.helo;
        j.esmtp = s.extended_smtp;
        j.tls = s.tls_active;
        j.authenticated = s.authenticated;
        j.tls_version = ss.tls_version;
        j.tls_cipher = ss.tls_cipher;
        if (ss.proxy) {
            job& p = *ss.proxy;
            j.has_proxy = true;
            j.proxy_version = p.proxy_version;
            j.proxy_command = p.proxy_command;
            j.proxy_family = p.proxy_family;
            j.proxy_protocol = p.proxy_protocol;
            j.proxy_src = std::move(p.proxy_src);
            j.proxy_src_port = p.proxy_src_port;
            j.proxy_dst = std::move(p.proxy_dst);
            j.proxy_dst_port = p.proxy_dst_port;
            j.proxy_tlvs = std::move(p.proxy_tlvs);
            ss.proxy.reset();
        }
        return j;
    }

    static void add_txn(sdk::call& c, job& j)
    {
        const sdk::txn_info t = c.txn();
        j.has_txn = true;
        j.mail_from.assign(t.mail_from);
        for (std::string_view p : c.mail_params()) j.mail_params.emplace_back(p);
        for (std::string_view r : c.rcpts()) j.rcpts.emplace_back(r);
    }

    sdk::verdict post(sdk::call& c, job j, std::size_t* chosen = nullptr, std::optional<std::size_t> pin = std::nullopt)
    {
        const asiosmtpd_token token = c.suspend().release();
        j.token = token;
        try {
            dispatch(std::move(j), chosen, pin);
        } catch (const std::exception& e) {  // no memory, no thread: this call only
            c_->say(ASIOSMTPD_LOG_ERROR, std::string("cannot hand a hook call to Python: ") + e.what());
            c_->host->complete(token, ASIOSMTPD_TEMPFAIL, 451, {"4.3.0 Error: internal", 21});
        }
        return sdk::verdict::pending;
    }

    // Queue the job on a loop that is not blocked (or the pinned one); start a loop when all
    // are blocked.
    void dispatch(job j, std::size_t* chosen, std::optional<std::size_t> pin)
    {
        loop_thread* target = nullptr;
        std::deque<job> orphans;
        {
            std::lock_guard lock(c_->loops_m);
            if (pin && *pin < c_->loops.size()) {
                target = c_->loops[*pin].get();
                j.pinned = true;
            } else {
                target = pick_locked(orphans, true);
            }
            if (chosen) *chosen = target->index;
        }
        hand(target, std::move(orphans), &j);
        if (watchdog_sleeping_.load()) {
            {
                std::lock_guard w(watch_m_);
                watchdog_sleeping_.store(false);
            }
            watch_cv_.notify_one();
        }
    }

    // With loops_m: the first loop that is not blocked. The jobs queued on blocked loops (and
    // not pinned there) are taken back into `orphans`. None left: another loop is started (at
    // most max_loops); with `always` false, nullptr then if there is nothing to move.
    loop_thread* pick_locked(std::deque<job>& orphans, bool always)
    {
        const std::int64_t now = now_ns();
        const std::int64_t stale = std::chrono::duration_cast<std::chrono::nanoseconds>(stale_after).count();
        loop_thread* target = nullptr;
        for (auto& L : c_->loops) {
            if (!blocked(*L, now, stale)) {
                if (!target) target = L.get();
                continue;
            }
            std::lock_guard ql(L->m);
            for (auto it = L->queue.begin(); it != L->queue.end();) {
                if (it->pinned) {
                    ++it;
                    continue;
                }
                orphans.push_back(std::move(*it));
                it = L->queue.erase(it);
            }
        }
        if (target || (!always && orphans.empty())) return target;
        if (c_->loops.size() < max_loops) {
            c_->say(ASIOSMTPD_LOG_WARN, "every Python event loop is blocked in a hook for " +
                                            std::to_string(stale_after.count()) + " ms or more: starting another (" +
                                            std::to_string(c_->loops.size() + 1) + ")");
            return new_loop_locked();
        }
        return c_->loops.back().get();  // wait: the hook timeout answers 451
    }

    // Queue jobs on a loop, and wake it if its queue was empty.
    static void hand(loop_thread* target, std::deque<job> orphans, job* j)
    {
        bool notify = false;
        {
            std::lock_guard ql(target->m);
            notify = target->queue.empty();
            // Work for an idle loop: it has stale_after from now to take it.
            if (notify && !target->busy.load(std::memory_order_acquire))
                target->last_beat.store(now_ns(), std::memory_order_release);
            for (job& o : orphans) target->queue.push_back(std::move(o));
            if (j) target->queue.push_back(std::move(*j));
            notify = notify && !target->queue.empty();
        }
        if (notify) {
            const std::uint64_t one = 1;
            [[maybe_unused]] const auto n = ::write(target->efd, &one, sizeof one);
        }
    }

    static bool blocked(loop_thread& L, std::int64_t now, std::int64_t stale)
    {
        if (now - L.last_beat.load(std::memory_order_acquire) < stale) return false;
        if (L.busy.load(std::memory_order_acquire)) return true;
        std::lock_guard ql(L.m);
        return !L.queue.empty();
    }

    // Something for the watchdog to watch: jobs queued, or a loop with hook calls in progress
    // that is not known to be blocked yet (one that is stays so until it beats again).
    bool has_work()
    {
        const std::int64_t now = now_ns();
        const std::int64_t stale = std::chrono::duration_cast<std::chrono::nanoseconds>(stale_after).count();
        std::lock_guard lock(c_->loops_m);
        for (auto& L : c_->loops) {
            if (L->busy.load(std::memory_order_acquire) && now - L->last_beat.load(std::memory_order_acquire) < stale)
                return true;
            std::lock_guard ql(L->m);
            if (!L->queue.empty()) return true;
        }
        return false;
    }

    // The watchdog thread: while some loop has work, every watch_every it moves the jobs queued
    // on a blocked loop to one that is not (starting one if needed), so that they do not wait
    // for the next dispatch(). Without work it sleeps until dispatch() wakes it: an idle
    // instance costs no wake-ups.
    void watch()
    {
        ::pthread_setname_np(::pthread_self(), "py-watch");
        std::unique_lock lk(watch_m_);
        while (!watch_stop_) {
            lk.unlock();
            const bool work = has_work();
            lk.lock();
            if (watch_stop_) break;
            if (!work) {
                watchdog_sleeping_.store(true);
                lk.unlock();
                const bool again = has_work();  // a job queued meanwhile did not see the flag
                lk.lock();
                if (!again) watch_cv_.wait(lk, [&] { return watch_stop_ || !watchdog_sleeping_.load(); });
                watchdog_sleeping_.store(false);
                continue;
            }
            if (watch_cv_.wait_for(lk, watch_every, [&] { return watch_stop_; })) break;
            lk.unlock();
            try {
                std::deque<job> orphans;
                loop_thread* target = nullptr;
                {
                    std::lock_guard lock(c_->loops_m);
                    target = pick_locked(orphans, false);
                }
                if (target && !orphans.empty()) hand(target, std::move(orphans), nullptr);
            } catch (const std::exception& e) {  // no thread for a new loop: the timeouts answer
                c_->say(ASIOSMTPD_LOG_ERROR, std::string("cannot start a Python event loop: ") + e.what());
            }
            lk.lock();
        }
    }

    void start_loop()
    {
        std::lock_guard lock(c_->loops_m);
        new_loop_locked();
    }

    loop_thread* new_loop_locked()
    {
        auto L = std::make_unique<loop_thread>();
        L->owner = c_.get();
        L->index = c_->loops.size();
        L->efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (L->efd < 0) throw std::runtime_error("eventfd() failed");
        L->last_beat.store(now_ns());  // starting: counts as beating
        loop_thread* raw = L.get();
        core* c = c_.get();
        L->th = std::thread([c, raw] { loop_main(c, raw); });
        c_->loops.push_back(std::move(L));
        return raw;
    }

    void stop()
    {
        if (watchdog_.joinable()) {
            {
                std::lock_guard w(watch_m_);
                watch_stop_ = true;
            }
            watch_cv_.notify_one();
            watchdog_.join();
        }
        std::vector<loop_thread*> loops;
        {
            std::lock_guard lock(c_->loops_m);
            for (auto& L : c_->loops) loops.push_back(L.get());
        }
        for (loop_thread* L : loops) {
            std::lock_guard ql(L->m);
            L->stopping = true;
            const std::uint64_t one = 1;
            [[maybe_unused]] const auto n = ::write(L->efd, &one, sizeof one);
        }
        bool stuck = false;
        for (loop_thread* L : loops) {
            if (L->finished_f.wait_for(stop_wait) == std::future_status::ready) {
                L->th.join();
            } else {
                stuck = true;
                L->th.detach();
            }
        }
        if (stuck) {
            // A hook never returned: its thread keeps running this library's code and the
            // core. Keep both forever (the library pinned in memory, the core leaked).
            c_->say(ASIOSMTPD_LOG_WARN, "a Python hook did not return: its event loop thread is left running (and this "
                                        "copy of the plugin stays loaded)");
            c_->alive.store(false, std::memory_order_release);
            Dl_info info{};
            if (::dladdr(reinterpret_cast<void*>(&loop_main), &info) != 0 && info.dli_fname)
                ::dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
            // Kept on purpose, reachable (no destructor at exit: the thread may still use it).
            static auto* abandoned = new std::vector<std::shared_ptr<core>>;
            abandoned->push_back(c_);
            return;
        }
        for (loop_thread* L : loops) {
            for (job& j : L->queue)
                if (j.token) c_->host->complete(j.token, ASIOSMTPD_TEMPFAIL, 0, {"", 0});
            ::close(L->efd);
        }
        // ~core (with the GIL) drops the Python objects.
    }

    std::shared_ptr<core> c_;
    std::mutex watch_m_;
    std::condition_variable watch_cv_;
    bool watch_stop_ = false;
    std::atomic<bool> watchdog_sleeping_{false};
    std::thread watchdog_;
    bool hook_helo_ = false, hook_ehlo_ = false, hook_mail_ = false, hook_rcpt_ = false, hook_rset_ = false,
         hook_proxy_ = false;
};

}  // namespace

ASIOSMTPD_PLUGIN(python_plugin, "python", "1.0.0", "runs aiosmtpd handlers in an embedded CPython",
                 ASIOSMTPD_PF_THREAD_SAFE)
