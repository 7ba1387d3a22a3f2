// SPDX-License-Identifier: Apache-2.0
// access: what a server on a public address needs before it hands mail on (Postfix's smtpd
// restrictions, anvil and reject_rbl_client; Haraka's access, relay, limit and dnsbl plugins):
//  - CONNECT: reject_networks (554, then only QUIT); per-client connection limits (421, close);
//    the DNSBL lookups start here, in the background;
//  - MAIL: messages per minute per client (450); sender_login_map for authenticated clients
//    (553);
//  - RCPT: recipients per message (452); relay control: a recipient in local_domains (without
//    routing tricks, relay_rules.hpp) is accepted from anyone, any other only from
//    relay_networks or an authenticated client (554 Relay access denied); then, for the clients
//    that may not relay, the DNSBL verdict (554 with the list's text), waited for without
//    blocking: the hook suspends and the DNS thread completes it.
// Every check that passes answers CONTINUE, so that the plugins after this one still decide.
// Counters live in a process-wide table (client_limits.hpp) that a reload with the same limits
// keeps. README.md has every key.
// ABI 1.1: the authenticated login (session_info) and config_dir().
#define ASIOSMTPD_PLUGIN_MIN_ABI_MINOR 3u  // keep_state: counters across reloads

#include "cidr.hpp"
#include "client_limits.hpp"
#include "dnsbl.hpp"
#include "dnsbl_names.hpp"
#include "login_map.hpp"
#include "relay_rules.hpp"

#include <asiosmtpd/plugin.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace {

namespace sdk = asiosmtpd::sdk;
namespace ac = asiosmtpd::plugins::access;
using ac::clock_type;

// Peer text in replies and logs: control bytes as '?', at most `max` bytes.
std::string shown(std::string_view s, std::size_t max = 300)
{
    std::string out;
    for (const char c : s.substr(0, max)) {
        const auto u = static_cast<unsigned char>(c);
        out += (u < 0x20 || u == 0x7f) ? '?' : c;
    }
    if (s.size() > max) out += "...";
    return out;
}

// A value for a key=value log field: no blanks, quotes or control bytes.
std::string field(std::string_view s)
{
    std::string out;
    for (const char c : s.substr(0, 200)) {
        const auto u = static_cast<unsigned char>(c);
        out += (u <= 0x20 || u == 0x7f || c == '"' || c == '\\') ? '?' : c;
    }
    return out.empty() ? std::string("-") : out;
}

const char* ares_status_name(int status)
{
    switch (status) {
    case ARES_ETIMEOUT: return "timeout";
    case ARES_ESERVFAIL: return "servfail";
    case ARES_EREFUSED: return "refused";
    case ARES_ECONNREFUSED: return "connection_refused";
    case ARES_EFORMERR: return "formerr";
    case ARES_EBADRESP: return "bad_response";
    case ARES_ENOTIMP: return "notimp";
    case ARES_EDESTRUCTION: return "shutting_down";
    default: return "dns_error";
    }
}

// One client's DNSBL lookups: every zone in parallel; shared by the session (its slot) and the
// DNS thread (the queries' functions). All fields under `lock`.
struct dnsbl_check {
    std::mutex lock;
    ac::ip_address client;
    std::uint64_t session = 0;
    std::vector<bool> answered;  // per zone
    std::size_t left = 0;        // zones not answered yet
    bool done = false;
    std::string listed_zone;  // set: listed (the first zone that listed it)
    std::string listed_answer;
    std::string listed_text;
    std::vector<std::string> failures;  // "zone=reason" for zones that could not answer
    sdk::pending waiter;                // a RCPT waiting for the verdict
};

// What a check means for a RCPT.
struct outcome {
    sdk::verdict verdict = sdk::verdict::continue_;
    std::uint16_t code = 0;
    std::string text;
};

// What the access plugin keeps per session (a session slot; freed when the session ends).
struct session_state {
    std::optional<ac::ip_address> ip;  // nullopt: not an IP peer (no networks, limits, DNSBL)
    std::string ip_text;
    std::string key;  // ac::client_key
    bool relay_network = false;
    bool exempt = false;  // from the per-client limits
    ac::table_ref counted;
    std::shared_ptr<dnsbl_check> dnsbl;

    session_state() = default;
    session_state(const session_state&) = delete;
    session_state& operator=(const session_state&) = delete;
    ~session_state()
    {
        if (counted) counted->disconnect(key);
    }
};

// (Not named `access`: that is unistd.h's access(2).)
class access_plugin {
public:
    explicit access_plugin(sdk::registrar& reg) : log_(reg.logger())
    {
        const sdk::config cfg = reg.config();
        cfg.check_keys({"local_domains", "relay_networks", "relay_authenticated", "reject_networks", "sender_login_map",
                        "limits", "dnsbl", "dns_servers", "dnsbl_fail", "dnsbl_timeout"});
        if (const auto d = cfg.get("local_domains"); d && !d->is_null()) {
            for (const sdk::config& item : d->expect_list().items()) {
                const std::string problem = local_domains_.add(item.as_string());
                if (!problem.empty())
                    throw std::invalid_argument(item.path() + ": \"" + shown(item.scalar()) + "\": " + problem);
            }
        }
        relay_networks_ = networks(cfg, "relay_networks");
        reject_networks_ = networks(cfg, "reject_networks");
        relay_authenticated_ = cfg.bool_or("relay_authenticated", true);
        if (const auto m = cfg.get("sender_login_map"); m && !m->is_null()) load_login_map(*m, reg.config_dir());
        read_limits(reg, cfg);
        read_dnsbl(cfg);
        reg.on<&access_plugin::on_connect>(sdk::hook::connect);
        reg.on<&access_plugin::on_mail>(sdk::hook::mail);
        reg.on<&access_plugin::on_rcpt>(sdk::hook::rcpt);
    }
    access_plugin(const access_plugin&) = delete;
    access_plugin& operator=(const access_plugin&) = delete;
    ~access_plugin()
    {
        // The DNS thread first: its last functions (ARES_EDESTRUCTION, the timers) use the rest.
        dns_.reset();
    }

    sdk::verdict on_connect(sdk::call& c, const sdk::connect_args& a)
    {
        session_state& s = c.emplace_slot<session_state>(sdk::scope::session);
        describe(s, a.peer_address);
        if (!s.ip) return sdk::verdict::continue_;
        if (reject_networks_.contains(*s.ip)) {
            c.log(sdk::log_level::info, "event=client_rejected client=" + s.ip_text + " reason=reject_networks");
            return c.reject(554, "5.7.1 Client host [" + s.ip_text + "] rejected: Access denied");
        }
        if (table_ && !s.exempt) {
            const ac::check_result r = table_->connect(s.key, limits_, clock_type::now());
            if (r.untracked) {
                table_full(c);
            } else if (!r.ok) {
                over_limit(c, s, r);
                return c.tempfail_close(421, "4.7.0 Error: too many connections from " + s.ip_text);
            } else {
                s.counted = table_;
            }
        }
        if (!zones_.empty() && !s.relay_network) s.dnsbl = start_dnsbl(*s.ip, c.session().id);
        return sdk::verdict::continue_;
    }

    sdk::verdict on_mail(sdk::call& c, const sdk::address_args& a)
    {
        session_state& s = state(c);
        if (table_ && s.ip && !s.exempt && limits_.messages_per_minute != 0) {
            const ac::check_result r = table_->message(s.key, limits_, clock_type::now());
            if (r.untracked) table_full(c);
            else if (!r.ok) {
                over_limit(c, s, r);
                return c.tempfail(450, "4.7.1 Error: too much mail from " + s.ip_text);
            }
        }
        if (login_map_ && a.address != "<>") {
            const sdk::session_info info = c.session();
            // Unauthenticated clients are not checked: an inbound MX gets mail from the whole
            // world, with any sender (sender authentication is SPF/DKIM/DMARC's business).
            if (info.authenticated && !login_map_->owns(info.auth_login, a.address)) {
                c.log(sdk::log_level::info, "event=sender_login_mismatch client=" + field(s.ip_text) +
                                                " login=" + field(info.auth_login) + " sender=" + field(a.address));
                return c.reject(553, "5.7.1 <" + shown(a.address) + ">: Sender address rejected: not owned by user " +
                                         shown(info.auth_login, 100));
            }
        }
        return sdk::verdict::continue_;
    }

    sdk::verdict on_rcpt(sdk::call& c, const sdk::address_args& a)
    {
        session_state& s = state(c);
        // RFC 5321 §4.5.3.1.8 and §4.5.3.1.10: 452 for too many recipients.
        if (limits_.recipients_per_message != 0 && c.txn().rcpt_count >= limits_.recipients_per_message) {
            c.log(sdk::log_level::warn,
                  "event=limit client=" + field(s.ip_text) +
                      " limit=recipients_per_message max=" + std::to_string(limits_.recipients_per_message));
            return c.tempfail(452, "4.5.3 Error: too many recipients");
        }
        if (s.relay_network || (relay_authenticated_ && c.session().authenticated)) return sdk::verdict::continue_;
        const ac::destination d = ac::classify(a.address, local_domains_);
        if (ac::needs_relay(d)) {
            c.log(sdk::log_level::info, "event=relay_denied client=" + field(s.ip_text) + " rcpt=" + field(a.address) +
                                            " destination=" + ac::destination_name(d));
            return c.reject(554, "5.7.1 <" + shown(a.address) + ">: Relay access denied");
        }
        if (zones_.empty() || !s.ip) return sdk::verdict::continue_;
        if (!s.dnsbl) s.dnsbl = start_dnsbl(*s.ip, c.session().id);  // no CONNECT of ours ran
        const std::shared_ptr<dnsbl_check> check = s.dnsbl;
        std::unique_lock guard(check->lock);
        if (check->done) {
            const outcome o = verdict_of(*check);
            guard.unlock();
            if (o.code == 0) return o.verdict;
            return c.reply(o.verdict, o.code, o.text);
        }
        check->waiter = c.suspend();  // under the lock: the DNS thread cannot finish in between
        return sdk::verdict::pending;
    }

private:
    // --- configuration -----------------------------------------------------------------

    static ac::network_list networks(const sdk::config& cfg, std::string_view key)
    {
        ac::network_list out;
        const auto list = cfg.get(key);
        if (!list || list->is_null()) return out;
        for (const sdk::config& item : list->expect_list().items()) {
            std::string why;
            const auto n = ac::parse_network(item.as_string(), why);
            if (!n) throw std::invalid_argument(item.path() + ": \"" + shown(item.scalar(), 60) + "\": " + why);
            out.add(*n);
        }
        return out;
    }

    void load_login_map(const sdk::config& node, std::string_view config_dir)
    {
        std::string path = node.as_string();
        if (path.empty()) throw std::invalid_argument(node.path() + ": must not be empty");
        if (path.front() != '/' && !config_dir.empty()) path = std::string(config_dir) + "/" + path;
        std::ifstream in(path, std::ios::binary);
        if (!in) {
            const int err = errno;
            throw std::invalid_argument(node.path() + ": cannot read \"" + path + "\": " + std::strerror(err));
        }
        std::ostringstream text;
        text << in.rdbuf();
        login_map_.emplace(ac::login_map::parse(text.str(), path));
        log_.info("event=sender_login_map file=" + field(path) + " entries=" + std::to_string(login_map_->size()));
    }

    void read_limits(sdk::registrar& reg, const sdk::config& cfg)
    {
        const auto l = cfg.get("limits");
        exempt_ = relay_networks_;  // Postfix's smtpd_client_event_limit_exceptions = $mynetworks
        if (!l || l->is_null()) return;
        l->expect_map();
        l->check_keys({"connections_per_client", "connections_per_minute", "messages_per_minute",
                       "recipients_per_message", "exempt_networks"});
        const auto number = [&](std::string_view key) -> std::uint32_t {
            const auto v = l->get(key);
            return v && !v->is_null() ? static_cast<std::uint32_t>(v->as_int(0, 1000000)) : 0;
        };
        limits_.connections_per_client = number("connections_per_client");
        limits_.connections_per_minute = number("connections_per_minute");
        limits_.messages_per_minute = number("messages_per_minute");
        limits_.recipients_per_message = number("recipients_per_message");
        if (const auto e = l->get("exempt_networks"); e && !e->is_null()) exempt_ = networks(*l, "exempt_networks");
        if (limits_.connections_per_client == 0 && limits_.connections_per_minute == 0 &&
            limits_.messages_per_minute == 0)
            return;
        bool reused = false;
        table_ = ac::table_ref(reg.keep_state<ac::table_registry>(ac::registry_key()), limits_, &reused);
        log_.info(std::string("event=client_limits counters=") + (reused ? "kept" : "new") +
                  " connections_per_client=" + std::to_string(limits_.connections_per_client) +
                  " connections_per_minute=" + std::to_string(limits_.connections_per_minute) +
                  " messages_per_minute=" + std::to_string(limits_.messages_per_minute));
    }

    void read_dnsbl(const sdk::config& cfg)
    {
        if (const auto z = cfg.get("dnsbl"); z && !z->is_null()) {
            for (const sdk::config& item : z->expect_list().items()) {
                std::string zone = item.as_string();
                const std::string problem = ac::dnsbl_zone_problem(zone);
                if (!problem.empty())
                    throw std::invalid_argument(item.path() + ": \"" + shown(zone, 60) + "\": " + problem);
                if (zone.back() == '.') zone.pop_back();
                zones_.push_back(ac::lower(zone));
            }
        }
        const std::string fail = cfg.string_or("dnsbl_fail", "open");
        if (fail != "open" && fail != "closed")
            throw std::invalid_argument("dnsbl_fail: expected open or closed, got \"" + shown(fail, 40) + "\"");
        fail_closed_ = fail == "closed";
        if (const auto t = cfg.get("dnsbl_timeout"); t && !t->is_null()) {
            const double v = t->as_double();
            if (!(v >= 0.1 && v <= 60))
                throw std::invalid_argument("dnsbl_timeout: must be between 0.1 and 60 seconds");
            timeout_ = std::chrono::milliseconds(static_cast<long long>(v * 1000));
        }
        std::string servers;
        if (const auto s = cfg.get("dns_servers"); s && !s->is_null()) {
            for (const sdk::config& item : s->expect_list().items()) {
                const std::string server = server_spec(item);
                servers += (servers.empty() ? "" : ",") + server;
            }
            if (servers.empty()) throw std::invalid_argument("dns_servers: empty list (leave it out for the system's)");
        }
        if (zones_.empty()) return;
        // Two tries per server within the lookup's time (c-ares doubles the second).
        const auto per_try = std::max<std::chrono::milliseconds>(std::chrono::milliseconds(50), timeout_ / 3);
        try {
            dns_ = std::make_unique<ac::dns_client>(servers, per_try);
        } catch (const std::exception& e) {
            throw std::invalid_argument(std::string("dnsbl: ") + e.what());
        }
    }

    // "127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:5353" → c-ares' "host:port" form.
    static std::string server_spec(const sdk::config& item)
    {
        const std::string text = item.as_string();
        const auto bad = [&](const std::string& why) {
            return std::invalid_argument(item.path() + ": \"" + shown(text, 60) + "\": " + why);
        };
        std::string host = text;
        std::string port;
        if (!text.empty() && text.front() == '[') {
            const auto close = text.find(']');
            if (close == std::string::npos) throw bad("missing ']'");
            host = text.substr(1, close - 1);
            if (close + 1 < text.size()) {
                if (text[close + 1] != ':') throw bad("expected ]:port");
                port = text.substr(close + 2);
            }
        } else if (std::count(text.begin(), text.end(), ':') == 1) {
            host = text.substr(0, text.find(':'));
            port = text.substr(text.find(':') + 1);
        }
        const auto ip = ac::parse_ip(host);
        if (!ip) throw bad("not an IP address (name servers are given by address)");
        if (!port.empty()) {
            int value = 0;
            for (const char ch : port) value = ch >= '0' && ch <= '9' && value < 100000 ? value * 10 + (ch - '0') : -1;
            if (value < 1 || value > 65535) throw bad("port must be 1..65535");
        }
        const std::string h = ac::to_string(*ip);
        const std::string p = port.empty() ? "53" : port;
        return ip->v6 ? "[" + h + "]:" + p : h + ":" + p;
    }

    // --- per session -------------------------------------------------------------------

    void describe(session_state& s, std::string_view peer) const
    {
        s.ip = ac::parse_ip(peer);
        s.ip_text = s.ip ? ac::to_string(*s.ip) : shown(peer, 100);
        if (!s.ip) return;
        s.key = ac::client_key(*s.ip);
        s.relay_network = relay_networks_.contains(*s.ip);
        s.exempt = exempt_.contains(*s.ip);
    }

    // The session's state; made here when our CONNECT hook did not run (a plugin before this
    // one answered the connection): then nothing was counted at connect.
    session_state& state(sdk::call& c) const
    {
        if (session_state* s = c.find_slot<session_state>(sdk::scope::session)) return *s;
        session_state& s = c.emplace_slot<session_state>(sdk::scope::session);
        describe(s, c.session().peer_address);
        return s;
    }

    void over_limit(sdk::call& c, const session_state& s, const ac::check_result& r) const
    {
        c.log(sdk::log_level::warn, "event=limit client=" + s.ip_text + " key=" + s.key + " limit=" + r.limit +
                                        " count=" + std::to_string(r.count) + " max=" + std::to_string(r.max));
    }

    void table_full(sdk::call& c)
    {
        // At most one line a minute: the table is full because of many clients.
        const auto now = clock_type::now().time_since_epoch().count();
        auto last = last_full_warning_.load(std::memory_order_relaxed);
        const auto minute = std::chrono::duration_cast<clock_type::duration>(std::chrono::minutes(1)).count();
        if (last != 0 && now - last < minute) return;
        if (!last_full_warning_.compare_exchange_strong(last, now, std::memory_order_relaxed)) return;
        c.log(sdk::log_level::warn,
              "event=limit_table_full clients=" + std::to_string(table_->size()) + " action=not_counted");
    }

    // --- DNSBL -------------------------------------------------------------------------

    std::shared_ptr<dnsbl_check> start_dnsbl(const ac::ip_address& ip, std::uint64_t session)
    {
        auto check = std::make_shared<dnsbl_check>();
        check->client = ip;
        check->session = session;
        check->answered.assign(zones_.size(), false);
        check->left = zones_.size();
        for (std::size_t i = 0; i < zones_.size(); ++i) {
            const std::string name = ac::dnsbl_query_name(ip, zones_[i]);
            dns_->query(name, ns_t_a, [this, check, i, name](int status, const unsigned char* abuf, int alen) {
                on_a_answer(check, i, name, status, abuf, alen);
            });
        }
        dns_->after(clock_type::now() + timeout_, [this, check] {
            std::unique_lock guard(check->lock);
            if (check->done) return;
            for (std::size_t i = 0; i < zones_.size(); ++i)
                if (!check->answered[i]) check->failures.push_back(zones_[i] + "=timeout");
            finish(check, guard);
        });
        return check;
    }

    // On the DNS thread.
    void on_a_answer(const std::shared_ptr<dnsbl_check>& check, std::size_t zone, const std::string& name, int status,
                     const unsigned char* abuf, int alen)
    {
        if (status == ARES_SUCCESS) {
            const std::vector<ac::ip_address> addresses = ac::parse_a_answer(abuf, alen);
            for (const ac::ip_address& a : addresses) {
                if (!ac::dnsbl_listing(a)) continue;
                // Listed: the list's text (RFC 5782 §2.2) is in the TXT record of the same name.
                dns_->query(name, ns_t_txt,
                            [this, check, zone, answer = ac::to_string(a)](int st, const unsigned char* b, int n) {
                                const std::string txt = st == ARES_SUCCESS ? ac::parse_txt_answer(b, n) : "";
                                answered(check, zone, [&](dnsbl_check& ch) {
                                    if (!ch.listed_zone.empty()) return;
                                    ch.listed_zone = zones_[zone];
                                    ch.listed_answer = answer;
                                    ch.listed_text = txt;
                                });
                            });
                return;
            }
            if (!addresses.empty()) {
                answered(check, zone, [&](dnsbl_check& ch) {
                    ch.failures.push_back(zones_[zone] + "=unexpected_answer_" + ac::to_string(addresses.front()));
                });
                return;
            }
            answered(check, zone, [](dnsbl_check&) {});
            return;
        }
        if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {  // NXDOMAIN: not listed
            answered(check, zone, [](dnsbl_check&) {});
            return;
        }
        answered(check, zone,
                 [&](dnsbl_check& ch) { ch.failures.push_back(zones_[zone] + "=" + ares_status_name(status)); });
    }

    template <class F>
    void answered(const std::shared_ptr<dnsbl_check>& check, std::size_t zone, F&& record)
    {
        std::unique_lock guard(check->lock);
        if (check->done || check->answered[zone]) return;
        check->answered[zone] = true;
        --check->left;
        record(*check);
        // A listing decides at once; otherwise every zone must have answered.
        if (!check->listed_zone.empty() || check->left == 0) finish(check, guard);
    }

    // Marks the check done, logs it and completes a waiting RCPT. `guard` holds check->lock.
    void finish(const std::shared_ptr<dnsbl_check>& check, std::unique_lock<std::mutex>& guard)
    {
        check->done = true;
        const outcome o = verdict_of(*check);
        sdk::pending waiter = std::move(check->waiter);
        const std::string who = "session=" + std::to_string(check->session) + " client=" + ac::to_string(check->client);
        std::vector<std::string> lines;
        if (!check->listed_zone.empty())
            lines.push_back("event=dnsbl_listed " + who + " zone=" + check->listed_zone +
                            " answer=" + check->listed_answer);
        else
            for (const std::string& f : check->failures)
                lines.push_back("event=dnsbl_failed " + who + " zone=" + f.substr(0, f.find('=')) + " reason=" +
                                field(f.substr(f.find('=') + 1)) + " policy=" + (fail_closed_ ? "closed" : "open"));
        guard.unlock();
        for (const std::string& l : lines) {
            if (l.rfind("event=dnsbl_listed", 0) == 0) log_.info(l);
            else log_.warn(l);
        }
        if (!waiter) return;
        const asiosmtpd_status st =
            o.code == 0 ? waiter.complete(o.verdict) : waiter.complete(o.verdict, o.code, o.text);
        if (st != ASIOSMTPD_OK && st != ASIOSMTPD_E_GONE)
            log_.warn("event=dnsbl_complete_failed " + who + " status=" + sdk::status_name(st));
    }

    // The RCPT verdict of a finished check. Caller holds its lock.
    outcome verdict_of(const dnsbl_check& check) const
    {
        outcome o;
        if (!check.listed_zone.empty()) {
            o.verdict = sdk::verdict::reject;
            o.code = 554;
            o.text = ac::dnsbl_reply_text(check.client, check.listed_zone, check.listed_text);
        } else if (!check.failures.empty() && fail_closed_) {
            o.verdict = sdk::verdict::tempfail;
            o.code = 451;
            o.text = "4.7.1 Service unavailable; client [" + ac::to_string(check.client) +
                     "]: DNSBL lookup failed, try again later";
        }
        return o;
    }

    sdk::logger log_;
    ac::domain_set local_domains_;
    ac::network_list relay_networks_;
    ac::network_list reject_networks_;
    ac::network_list exempt_;
    bool relay_authenticated_ = true;
    std::optional<ac::login_map> login_map_;
    ac::limits limits_;
    ac::table_ref table_;  // empty without connection/message limits
    std::atomic<clock_type::rep> last_full_warning_{0};
    std::vector<std::string> zones_;
    bool fail_closed_ = false;
    std::chrono::milliseconds timeout_{5000};
    std::unique_ptr<ac::dns_client> dns_;  // null without zones
};

}  // namespace

ASIOSMTPD_PLUGIN(access_plugin, "access", "1.0.0",
                 "relay control, local domains, sender/login ownership, per-client limits and DNSBL",
                 ASIOSMTPD_PF_THREAD_SAFE)
