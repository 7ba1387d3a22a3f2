// SPDX-License-Identifier: Apache-2.0
// jetstream: publishes each accepted message (envelope + raw content) to a NATS JetStream
// stream and answers 250 only after JetStream's publish acknowledgement.
//
// The DATA hook never blocks: it copies the envelope and the content, suspends, and queues a
// job. Publisher threads (config `workers`) publish with js_PublishMsg (synchronous on that
// thread, bounded by `attempt_timeout`) and complete the suspended hook: ACCEPT after an ack,
// TEMPFAIL 451 when no ack came within `timeout` (all attempts together) or on an error.
// Every attempt of one message carries the same Nats-Msg-Id, so a publish repeated after a
// lost ack (timeout, reconnect) is stored once: JetStream drops the copy within the stream's
// duplicate window and acks it as a duplicate.
//
// The wire encoding (version 1) is documented in README.md next to this file.
#include "delivery_common.hpp"

#include <asiosmtpd/plugin.hpp>
#include <asiosmtpd/worker_pool.hpp>

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;
using clock_type = std::chrono::steady_clock;

constexpr const char* encoding_version = "1";

// ------------------------------------------------------------------------------------------
// libnats is a process-wide library with its own threads. The last instance to go closes it
// and waits for those threads, so that the plugin (and libnats with it) can be unloaded.
// Connection callbacks may still run on libnats threads after an instance let go of its
// connection; they reach the instance only through an `events` object that is switched off
// first and freed only after the library has closed.
// ------------------------------------------------------------------------------------------
struct events {
    std::mutex mutex;
    bool alive = true;
    sdk::logger log;
    explicit events(sdk::logger l) : log(l) {}
    void say(sdk::log_level level, const std::string& text)
    {
        std::lock_guard<std::mutex> lock(mutex);
        if (alive) log.log(level, text);
    }
    void off()
    {
        std::lock_guard<std::mutex> lock(mutex);
        alive = false;
    }
};

std::mutex library_mutex;
int library_users = 0;
std::vector<std::unique_ptr<events>> retired_events;  // freed once the library has closed

void library_acquire()
{
    std::lock_guard<std::mutex> lock(library_mutex);
    if (library_users == 0) {
        const natsStatus s = nats_Open(-1);
        if (s != NATS_OK) throw std::runtime_error(std::string("cannot initialise libnats: ") + natsStatus_GetText(s));
    }
    ++library_users;
}

void library_release(std::unique_ptr<events> ev)
{
    std::lock_guard<std::mutex> lock(library_mutex);
    if (ev) retired_events.push_back(std::move(ev));
    if (--library_users == 0) {
        nats_CloseAndWait(5000);
        retired_events.clear();
    }
}

std::string nats_error(natsStatus s, jsErrCode jerr = static_cast<jsErrCode>(0))
{
    std::string out = natsStatus_GetText(s);
    natsStatus ignored = NATS_OK;
    const char* last = nats_GetLastError(&ignored);
    if (last && *last && out.find(last) == std::string::npos) {
        out += ": ";
        out += last;
    }
    if (jerr != 0) out += " (JetStream error " + std::to_string(static_cast<int>(jerr)) + ")";
    return out;
}

// NATS subject tokens: '.'-separated, no whitespace; `*` one token, `>` the rest.
std::vector<std::string> tokens(const std::string& subject)
{
    std::vector<std::string> out;
    std::size_t start = 0;
    for (;;) {
        const std::size_t dot = subject.find('.', start);
        out.push_back(subject.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
        if (dot == std::string::npos) return out;
        start = dot + 1;
    }
}

bool valid_subject(const std::string& s, bool wildcards)
{
    if (s.empty() || s.size() > 255) return false;
    for (const char ch : s)
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') return false;
    const auto t = tokens(s);
    for (std::size_t i = 0; i < t.size(); ++i) {
        if (t[i].empty()) return false;
        const bool wild = t[i] == "*" || t[i] == ">";
        if (wild && !wildcards) return false;
        if (t[i] == ">" && i + 1 != t.size()) return false;
        if (!wild && (t[i].find('*') != std::string::npos || t[i].find('>') != std::string::npos)) return false;
    }
    return true;
}

bool subject_matches(const std::string& pattern, const std::string& subject)
{
    const auto p = tokens(pattern);
    const auto s = tokens(subject);
    for (std::size_t i = 0; i < p.size(); ++i) {
        if (p[i] == ">") return s.size() > i;
        if (i >= s.size()) return false;
        if (p[i] != "*" && p[i] != s[i]) return false;
    }
    return p.size() == s.size();
}

// A header value: one line, no control characters (NATS headers are MIME-like lines: a CR or LF
// would end the header and start one of the sender's choosing). Each control character is
// written \xNN, as the other plugins write envelope text (delivery_common.hpp).
std::string header_value(std::string_view v) { return asiosmtpd::plugins::escape_controls(v); }

std::string utc_now()
{
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[96];
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
    return buf;
}

std::int64_t to_ms(double seconds) { return static_cast<std::int64_t>(seconds * 1000.0 + 0.5); }

struct tls_settings {
    bool enabled = false;
    std::string ca_file, cert_file, key_file, hostname;
    bool insecure_skip_verify = false;
};

struct settings {
    std::vector<std::string> servers;
    std::string stream;
    std::vector<std::string> subjects;
    std::string subject;
    std::int64_t replicas = 1;
    bool memory_storage = false;
    double duplicate_window = 120;
    bool create_stream = true;
    double timeout = 10;
    double attempt_timeout = 2;
    double connect_timeout = 5;
    std::int64_t workers = 16;
    std::string name = "asiosmtpd";
    std::string user, password, token, credentials;
    tls_settings tls;
};

std::string resolve(std::string_view dir, std::string path)
{
    if (!path.empty() && path.front() != '/' && !dir.empty()) return std::string(dir) + "/" + path;
    return path;
}

settings read_settings(sdk::registrar& reg)
{
    const sdk::config cfg = reg.config();
    cfg.expect_map();
    cfg.check_keys({"servers", "stream", "subjects", "subject", "replicas", "storage", "duplicate_window",
                    "create_stream", "timeout", "attempt_timeout", "connect_timeout", "workers", "name", "user",
                    "password", "token", "credentials", "tls"});
    settings s;
    const sdk::config servers = cfg.require("servers");
    if (servers.kind() == sdk::node_kind::scalar) s.servers.push_back(servers.as_string());
    else s.servers = servers.as_string_list();
    if (s.servers.empty()) throw std::invalid_argument("servers: at least one URL (nats://host:port)");
    for (const auto& url : s.servers)
        if (url.empty() || url.find_first_of(" \t,") != std::string::npos)
            throw std::invalid_argument("servers: not a server URL: \"" + url + "\"");

    s.stream = cfg.require("stream").as_string();
    if (s.stream.empty() || s.stream.find_first_of(" \t.*>/\\") != std::string::npos)
        throw std::invalid_argument("stream: a stream name without spaces, '.', '*', '>', '/' or '\\'");

    if (const auto v = cfg.get("subjects")) {
        s.subjects =
            v->kind() == sdk::node_kind::scalar ? std::vector<std::string>{v->as_string()} : v->as_string_list();
        for (const auto& subj : s.subjects)
            if (!valid_subject(subj, true))
                throw std::invalid_argument("subjects: not a NATS subject: \"" + subj + "\"");
    }
    if (const auto v = cfg.get("subject")) {
        s.subject = v->as_string();
    } else if (s.subjects.size() == 1 && valid_subject(s.subjects.front(), false)) {
        s.subject = s.subjects.front();
    } else {
        throw std::invalid_argument("subject: required (the subject each message is published to) unless "
                                    "`subjects` is a single subject without wildcards");
    }
    if (!valid_subject(s.subject, false))
        throw std::invalid_argument("subject: not a NATS subject without wildcards: \"" + s.subject + "\"");
    if (s.subjects.empty()) s.subjects.push_back(s.subject);
    if (std::none_of(s.subjects.begin(), s.subjects.end(),
                     [&](const std::string& p) { return subject_matches(p, s.subject); }))
        throw std::invalid_argument("subject: \"" + s.subject + "\" is not covered by `subjects`");

    if (const auto v = cfg.get("replicas")) s.replicas = v->as_int(1, 5);
    if (const auto v = cfg.get("storage")) {
        const std::string st = v->as_string();
        if (st != "file" && st != "memory") throw std::invalid_argument("storage: file or memory, got \"" + st + "\"");
        s.memory_storage = st == "memory";
    }
    if (const auto v = cfg.get("create_stream")) s.create_stream = v->as_bool();
    auto seconds = [&](const char* key, double& out, double min, double max) {
        if (const auto v = cfg.get(key)) {
            out = v->as_double();
            if (out < min || out > max)
                throw std::invalid_argument(std::string(key) + ": seconds between " + std::to_string(min) + " and " +
                                            std::to_string(max));
        }
    };
    seconds("timeout", s.timeout, 0.1, 3600);
    s.attempt_timeout = std::min(s.timeout, 2.0);
    seconds("attempt_timeout", s.attempt_timeout, 0.05, 3600);
    if (s.attempt_timeout > s.timeout) throw std::invalid_argument("attempt_timeout: must not exceed timeout");
    seconds("connect_timeout", s.connect_timeout, 0.1, 600);
    seconds("duplicate_window", s.duplicate_window, 1, 86400 * 7);
    if (s.duplicate_window < s.timeout)
        throw std::invalid_argument("duplicate_window: must be at least `timeout`, or a retried publish could "
                                    "be stored twice");
    if (const auto v = cfg.get("workers")) s.workers = v->as_int(1, 1024);
    s.name = cfg.string_or("name", s.name);
    s.user = cfg.string_or("user", "");
    s.password = cfg.string_or("password", "");
    s.token = cfg.string_or("token", "");
    if (const auto v = cfg.get("credentials")) s.credentials = resolve(reg.config_dir(), v->as_string());
    if (!s.token.empty() && !s.user.empty()) throw std::invalid_argument("token: use either user/password or token");
    if (const auto v = cfg.get("tls")) {
        if (v->kind() == sdk::node_kind::scalar) {
            s.tls.enabled = v->as_bool();
        } else {
            v->expect_map();
            v->check_keys({"ca_file", "cert_file", "key_file", "hostname", "insecure_skip_verify"});
            s.tls.enabled = true;
            if (const auto f = v->get("ca_file")) s.tls.ca_file = resolve(reg.config_dir(), f->as_string());
            if (const auto f = v->get("cert_file")) s.tls.cert_file = resolve(reg.config_dir(), f->as_string());
            if (const auto f = v->get("key_file")) s.tls.key_file = resolve(reg.config_dir(), f->as_string());
            s.tls.hostname = v->string_or("hostname", "");
            s.tls.insecure_skip_verify = v->bool_or("insecure_skip_verify", false);
            if (s.tls.cert_file.empty() != s.tls.key_file.empty())
                throw std::invalid_argument("tls: cert_file and key_file go together");
        }
    }
    return s;
}

// Owns a libnats object and frees it with `destroy`.
template <class T, void (*Destroy)(T*)>
struct nats_ptr {
    T* p = nullptr;
    nats_ptr() = default;
    nats_ptr(const nats_ptr&) = delete;
    nats_ptr& operator=(const nats_ptr&) = delete;
    ~nats_ptr() { reset(); }
    void reset() noexcept
    {
        if (p) Destroy(p);
        p = nullptr;
    }
};

class jetstream {
public:
    explicit jetstream(sdk::registrar& reg)
        : log_(reg.logger()),
          cfg_(read_settings(reg)),
          check_only_(reg.check_only())
    {
        std::random_device rd;
        const std::uint64_t r = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
        char buf[24];
        std::snprintf(buf, sizeof buf, "%016" PRIx64, r);
        id_prefix_ = std::string("asiosmtpd-") + buf + "-";

        library_acquire();
        events_ = std::make_unique<events>(log_);
        try {
            connect();
            prepare_stream();
            pool_.emplace(static_cast<std::size_t>(cfg_.workers), [this](job& j) { publish(j); });
        } catch (...) {
            disconnect();
            throw;
        }
        reg.on<&jetstream::on_data>(sdk::hook::data);
    }

    jetstream(const jetstream&) = delete;
    jetstream& operator=(const jetstream&) = delete;

    ~jetstream()
    {
        // Publishes in progress end after their current attempt (stopping()); jobs still
        // queued were never published: 451, nothing claimed stored.
        pool_->stop([](job& j) {
            j.pending.complete(sdk::verdict::tempfail, 451, "4.3.0 Error: message not stored, try again later");
        });
        disconnect();
    }

    sdk::verdict on_data(sdk::call& c, const sdk::data_args& a)
    {
        const std::size_t max_payload =
            static_cast<std::size_t>(std::max<int64_t>(natsConnection_GetMaxPayload(nc_.p), 0));
        if (max_payload != 0 && a.size + 4096 > max_payload)
            return c.reject(552, "5.3.4 Error: message too big for the message bus (" + std::to_string(max_payload) +
                                     " bytes at most)");
        job j;
        j.content.assign(a.content());
        const sdk::session_info s = c.session();
        const sdk::txn_info t = c.txn();
        j.mail_from = header_value(t.mail_from);
        const std::vector<std::string_view> rcpts = c.rcpts();
        for (std::size_t i = 0; i < rcpts.size(); ++i) {
            j.rcpt_to.push_back(header_value(rcpts[i]));
            // Each recipient's parameters (DSN's NOTIFY and ORCPT with server.enable_dsn), with
            // the recipient's position among the Rcpt-To values.
            for (auto p : c.rcpt_params(i)) j.rcpt_params.push_back(std::to_string(i) + " " + header_value(p));
        }
        for (auto p : c.mail_params()) j.mail_params.push_back(header_value(p));
        const bool v6 = s.peer_address.find(':') != std::string_view::npos;
        j.peer = (v6 ? "[" : "") + header_value(s.peer_address) + (v6 ? "]:" : ":") + std::to_string(s.peer_port);
        j.helo = header_value(s.helo_name);
        j.auth = header_value(s.auth_login);
        j.tls = header_value(s.tls_version);
        j.session = std::to_string(s.id);
        j.received_at = utc_now();
        j.msg_id = id_prefix_ + std::to_string(counter_.fetch_add(1, std::memory_order_relaxed) + 1);
        j.deadline = clock_type::now() + std::chrono::milliseconds(to_ms(cfg_.timeout));
        j.pending = c.suspend();
        pool_->post(std::move(j));
        return sdk::verdict::pending;
    }

private:
    struct job {
        sdk::pending pending;
        std::string content;
        std::string mail_from;
        std::vector<std::string> rcpt_to;
        std::vector<std::string> mail_params;
        std::vector<std::string> rcpt_params;  // "<rcpt index> KEY=VALUE"
        std::string peer, helo, auth, tls, session, received_at;
        std::string msg_id;
        clock_type::time_point deadline;
    };

    // -- connection -------------------------------------------------------------------------
    static void on_disconnected(natsConnection*, void* closure)
    {
        static_cast<events*>(closure)->say(sdk::log_level::warn, "disconnected from NATS; reconnecting");
    }
    static void on_reconnected(natsConnection* nc, void* closure)
    {
        char url[256] = "";
        natsConnection_GetConnectedUrl(nc, url, sizeof url);
        static_cast<events*>(closure)->say(sdk::log_level::info, std::string("reconnected to NATS at ") + url);
    }
    static void on_closed(natsConnection*, void* closure)
    {
        static_cast<events*>(closure)->say(sdk::log_level::info, "NATS connection closed");
    }
    static void on_error(natsConnection*, natsSubscription*, natsStatus err, void* closure)
    {
        static_cast<events*>(closure)->say(sdk::log_level::warn, std::string("NATS error: ") + natsStatus_GetText(err));
    }

    void check(natsStatus s, const char* what) const
    {
        if (s != NATS_OK) throw std::runtime_error(std::string(what) + ": " + nats_error(s));
    }

    void connect()
    {
        nats_ptr<natsOptions, natsOptions_Destroy> opts;
        check(natsOptions_Create(&opts.p), "natsOptions_Create");
        std::vector<const char*> urls;
        for (const auto& u : cfg_.servers) urls.push_back(u.c_str());
        check(natsOptions_SetServers(opts.p, urls.data(), static_cast<int>(urls.size())), "servers");
        check(natsOptions_SetName(opts.p, cfg_.name.c_str()), "name");
        check(natsOptions_SetTimeout(opts.p, to_ms(cfg_.connect_timeout)), "connect_timeout");
        // Reconnect for ever: a NATS outage costs 451s, never a dead instance.
        check(natsOptions_SetAllowReconnect(opts.p, true), "reconnect");
        check(natsOptions_SetMaxReconnect(opts.p, -1), "reconnect");
        check(natsOptions_SetReconnectWait(opts.p, 250), "reconnect");
        check(natsOptions_SetReconnectBufSize(opts.p, 64 * 1024 * 1024), "reconnect buffer");
        // Requests in flight fail at once on a disconnect, so a publish is retried (same
        // Nats-Msg-Id) on the next server instead of waiting for its timeout.
        check(natsOptions_SetFailRequestsOnDisconnect(opts.p, true), "fail requests on disconnect");
        check(natsOptions_SetPingInterval(opts.p, 5000), "ping interval");
        check(natsOptions_SetMaxPingsOut(opts.p, 2), "max pings out");
        check(natsOptions_SetDisconnectedCB(opts.p, &on_disconnected, events_.get()), "callbacks");
        check(natsOptions_SetReconnectedCB(opts.p, &on_reconnected, events_.get()), "callbacks");
        check(natsOptions_SetClosedCB(opts.p, &on_closed, events_.get()), "callbacks");
        check(natsOptions_SetErrorHandler(opts.p, &on_error, events_.get()), "callbacks");
        if (!cfg_.user.empty())
            check(natsOptions_SetUserInfo(opts.p, cfg_.user.c_str(), cfg_.password.c_str()), "user");
        if (!cfg_.token.empty()) check(natsOptions_SetToken(opts.p, cfg_.token.c_str()), "token");
        if (!cfg_.credentials.empty())
            check(natsOptions_SetUserCredentialsFromFiles(opts.p, cfg_.credentials.c_str(), nullptr), "credentials");
        if (cfg_.tls.enabled) {
            check(natsOptions_SetSecure(opts.p, true), "tls");
            if (!cfg_.tls.ca_file.empty())
                check(natsOptions_LoadCATrustedCertificates(opts.p, cfg_.tls.ca_file.c_str()), "tls.ca_file");
            if (!cfg_.tls.cert_file.empty())
                check(natsOptions_LoadCertificatesChain(opts.p, cfg_.tls.cert_file.c_str(), cfg_.tls.key_file.c_str()),
                      "tls.cert_file");
            if (!cfg_.tls.hostname.empty())
                check(natsOptions_SetExpectedHostname(opts.p, cfg_.tls.hostname.c_str()), "tls.hostname");
            if (cfg_.tls.insecure_skip_verify)
                check(natsOptions_SkipServerVerification(opts.p, true), "tls.insecure_skip_verify");
        }
        std::string list;
        for (const auto& u : cfg_.servers) list += (list.empty() ? "" : ",") + u;
        const natsStatus s = natsConnection_Connect(&nc_.p, opts.p);
        if (s != NATS_OK) throw std::runtime_error("cannot connect to NATS (" + list + "): " + nats_error(s));

        jsOptions jo;
        check(jsOptions_Init(&jo), "jsOptions_Init");
        jo.Wait = to_ms(cfg_.connect_timeout);
        check(natsConnection_JetStream(&js_.p, nc_.p, &jo), "JetStream context");
        char url[256] = "";
        natsConnection_GetConnectedUrl(nc_.p, url, sizeof url);
        log_.info(std::string("connected to NATS at ") + url);
    }

    void prepare_stream()
    {
        nats_ptr<jsStreamInfo, jsStreamInfo_Destroy> si;
        jsErrCode jerr = static_cast<jsErrCode>(0);
        natsStatus s = js_GetStreamInfo(&si.p, js_.p, cfg_.stream.c_str(), nullptr, &jerr);
        if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
            if (!cfg_.create_stream)
                throw std::runtime_error("stream " + cfg_.stream + " does not exist (create_stream: false)");
            if (check_only_) {
                // --check-config changes nothing: the broker answered, a start creates the stream.
                log_.info("stream " + cfg_.stream + " does not exist; a start creates it (create_stream: true)");
                return;
            }
            jsStreamConfig sc;
            check(jsStreamConfig_Init(&sc), "jsStreamConfig_Init");
            std::vector<const char*> subjects;
            for (const auto& subj : cfg_.subjects) subjects.push_back(subj.c_str());
            sc.Name = cfg_.stream.c_str();
            sc.Description = "mail accepted by asiosmtpd (jetstream plugin, encoding v1)";
            sc.Subjects = subjects.data();
            sc.SubjectsLen = static_cast<int>(subjects.size());
            sc.Storage = cfg_.memory_storage ? js_MemoryStorage : js_FileStorage;
            sc.Replicas = cfg_.replicas;
            sc.Duplicates = to_ms(cfg_.duplicate_window) * 1000000;  // nanoseconds
            jerr = static_cast<jsErrCode>(0);
            s = js_AddStream(&si.p, js_.p, &sc, nullptr, &jerr);
            if (s == NATS_OK) {
                log_.info("created stream " + cfg_.stream + " (replicas " + std::to_string(cfg_.replicas) + ")");
            } else if (jerr == JSStreamNameExistErr) {
                // Another instance created it at the same moment with another config: use it.
                jerr = static_cast<jsErrCode>(0);
                s = js_GetStreamInfo(&si.p, js_.p, cfg_.stream.c_str(), nullptr, &jerr);
            }
        }
        if (s != NATS_OK) throw std::runtime_error("stream " + cfg_.stream + ": " + nats_error(s, jerr));
        const jsStreamConfig* have = si.p->Config;
        bool covered = false;
        std::string list;
        for (int i = 0; have && i < have->SubjectsLen; ++i) {
            list += (list.empty() ? "" : " ") + std::string(have->Subjects[i]);
            covered = covered || subject_matches(have->Subjects[i], cfg_.subject);
        }
        if (!covered)
            throw std::runtime_error("stream " + cfg_.stream + " does not take subject " + cfg_.subject +
                                     " (its subjects: " + list + ")");
        if (have && have->Replicas != cfg_.replicas)
            log_.warn("stream " + cfg_.stream + " has " + std::to_string(have->Replicas) + " replica(s), config says " +
                      std::to_string(cfg_.replicas) + "; using the stream as it is");
        if (have && have->Duplicates > 0 && have->Duplicates < to_ms(cfg_.timeout) * 1000000)
            log_.warn("stream " + cfg_.stream +
                      ": its duplicate window is shorter than `timeout`; a retried publish "
                      "could be stored twice");
    }

    void disconnect() noexcept
    {
        if (events_) events_->off();
        js_.reset();
        if (nc_.p) natsConnection_Close(nc_.p);
        nc_.reset();
        library_release(std::move(events_));
    }

    // -- publishing -------------------------------------------------------------------------
    void publish(job& j)
    {
        nats_ptr<natsMsg, natsMsg_Destroy> msg;
        natsStatus s =
            natsMsg_Create(&msg.p, cfg_.subject.c_str(), nullptr, j.content.data(), static_cast<int>(j.content.size()));
        auto header = [&](const char* key, const std::string& value, bool add = false) {
            if (s == NATS_OK)
                s = add ? natsMsgHeader_Add(msg.p, key, value.c_str()) : natsMsgHeader_Set(msg.p, key, value.c_str());
        };
        header("Asiosmtpd-Version", encoding_version);
        header("Mail-From", j.mail_from);
        for (const auto& r : j.rcpt_to) header("Rcpt-To", r, true);
        for (const auto& p : j.mail_params) header("Mail-Param", p, true);
        for (const auto& p : j.rcpt_params) header("Rcpt-Param", p, true);
        header("Peer", j.peer);
        if (!j.helo.empty()) header("Helo", j.helo);
        if (!j.auth.empty()) header("Auth-Login", j.auth);
        if (!j.tls.empty()) header("Tls", j.tls);
        header("Session-Id", j.session);
        header("Received-At", j.received_at);
        if (s != NATS_OK) {
            log_.error("cannot build the NATS message: " + nats_error(s));
            j.pending.complete(sdk::verdict::tempfail, 451, "4.3.0 Error: message not stored (internal)");
            return;
        }

        std::string last_error = "no attempt before the deadline";
        int attempts = 0;
        std::chrono::milliseconds pause(25);
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(j.deadline - clock_type::now());
            if (left.count() <= 0 || (attempts > 0 && pool_->stopping())) break;
            // While the client reconnects, a publish would wait in its reconnect buffer and
            // could be stored after we gave up and answered 451: publish only when connected.
            const natsConnStatus cs = natsConnection_Status(nc_.p);
            if (cs == NATS_CONN_STATUS_CLOSED) {
                last_error = "the NATS connection is closed";
                break;
            }
            if (cs != NATS_CONN_STATUS_CONNECTED) {
                last_error = "not connected to NATS";
                std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(std::chrono::milliseconds(20), left));
                continue;
            }
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MsgId = j.msg_id.c_str();
            po.ExpectStream = cfg_.stream.c_str();
            po.MaxWait = std::max<std::int64_t>(1, std::min<std::int64_t>(left.count(), to_ms(cfg_.attempt_timeout)));
            jsPubAck* ack = nullptr;
            jsErrCode jerr = static_cast<jsErrCode>(0);
            ++attempts;
            s = js_PublishMsg(&ack, js_.p, msg.p, &po, &jerr);
            if (s == NATS_OK) {
                const std::uint64_t seq = ack ? ack->Sequence : 0;
                const bool dup = ack && ack->Duplicate;
                jsPubAck_Destroy(ack);
                log_.debug("stored " + j.msg_id + " as " + cfg_.stream + " seq " + std::to_string(seq) +
                           (dup ? " (duplicate of an earlier attempt)" : "") + " after " + std::to_string(attempts) +
                           " attempt(s)");
                j.pending.complete(sdk::verdict::accept);
                return;
            }
            last_error = nats_error(s, jerr);
            if (s == NATS_MAX_PAYLOAD) {
                j.pending.complete(sdk::verdict::reject, 552, "5.3.4 Error: message too big for the message bus");
                return;
            }
            if (s == NATS_CONNECTION_CLOSED) break;
            // A timeout retries at once; anything else (no responders while a stream leader is
            // elected, a disconnect, a JetStream error) after a short, growing pause.
            if (s != NATS_TIMEOUT) {
                const auto wait = std::min<std::chrono::milliseconds>(pause, left);
                std::this_thread::sleep_for(wait);
                pause = std::min<std::chrono::milliseconds>(pause * 2, std::chrono::milliseconds(500));
            }
        }
        log_.warn("not stored " + j.msg_id + " after " + std::to_string(attempts) + " attempt(s): " + last_error +
                  "; answering 451");
        j.pending.complete(sdk::verdict::tempfail, 451, "4.3.0 Error: message not stored, try again later");
    }

    sdk::logger log_;
    settings cfg_;
    bool check_only_;  // --check-config: the stream is looked at, never created
    std::string id_prefix_;
    std::atomic<std::uint64_t> counter_{0};
    std::unique_ptr<events> events_;
    nats_ptr<natsConnection, natsConnection_Destroy> nc_;
    nats_ptr<jsCtx, jsCtx_Destroy> js_;
    std::optional<sdk::worker_pool<job>> pool_;  // stopped by the destructor before disconnect()
};

}  // namespace

ASIOSMTPD_PLUGIN(jetstream, "jetstream", "1.0.0",
                 "publishes each message to a NATS JetStream stream; 250 only after the ack", ASIOSMTPD_PF_THREAD_SAFE)
