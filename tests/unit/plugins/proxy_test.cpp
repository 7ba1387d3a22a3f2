// SPDX-License-Identifier: Apache-2.0
// The proxy plugin's helpers (plugins/proxy/*.hpp, header-only, compiled in here): reply texts
// made from untrusted upstream bytes always pass the host's reply rules (the test kit's copy
// of them), upstream codes map to sane local ones, and name resolution keeps its deadline with
// an injected slow resolver (no DNS, no network), and the Received: fields counted for max_hops. The plugin end to end:
// tests/integration/test_delivery_proxy.py.
#include "proxy/hops.hpp"
#include "proxy/reply_text.hpp"
#include "proxy/resolver.hpp"

#include <asiosmtpd/reply_rules.hpp>
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace text = asiosmtpd::plugins::proxy_text;
namespace dns = asiosmtpd::plugins::proxy_dns;
namespace hops = asiosmtpd::plugins::proxy_hops;
using std::chrono::milliseconds;
using steady = std::chrono::steady_clock;
namespace tk = asiosmtpd::testkit;
std::string plugin(const char* name) { return std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/" + name + ".so"; }

std::string host_problem(std::uint16_t code, const std::string& t)
{
    return asiosmtpd::sdk::reply_problem(code, t);  // the host's rule (set_reply)
}

std::vector<std::string> split_lines(const std::string& t)
{
    std::vector<std::string> out;
    std::size_t start = 0;
    for (;;) {
        const std::size_t nl = t.find('\n', start);
        out.push_back(t.substr(start, nl - start));
        if (nl == std::string::npos) return out;
        start = nl + 1;
    }
}

TEST(proxy_text, control_bytes_become_question_marks)
{
    using namespace std::string_literals;
    const std::string upstream = "2.0.0 Ok\x01\x07\x1b[31m\0queued\x7f\r\n\tas X\xc3\xa9\xff"s;
    const std::string l = text::line(upstream);
    EXPECT_EQ(l, "2.0.0 Ok???[31m?queued???\tas X\xc3\xa9\xff"s);
    EXPECT_EQ(host_problem(250, l), "");
    EXPECT_NE(host_problem(250, upstream), "");  // what the old clean() handed on
}

TEST(proxy_text, long_lines_are_cut_on_a_utf8_boundary)
{
    EXPECT_EQ(text::line(std::string(1000, 'x')).size(), text::max_line);
    // 505 ASCII bytes, then a 2-byte character that would straddle the 506-byte limit.
    EXPECT_EQ(text::line(std::string(505, 'a') + "\xc3\xa9z"), std::string(505, 'a'));
    // A 4-byte character ending exactly at the limit stays; one byte further it goes.
    const std::string four = "\xf0\x9f\x93\xa7";
    EXPECT_EQ(text::line(std::string(502, 'a') + four + "z"), std::string(502, 'a') + four);
    EXPECT_EQ(text::line(std::string(503, 'a') + four), std::string(503, 'a'));
    // Not UTF-8 (continuation bytes only): cut at the limit, bytes as they are.
    EXPECT_EQ(text::line(std::string(600, '\x80')).size(), text::max_line);
    EXPECT_EQ(text::line(""), "");
}

TEST(proxy_text, a_long_list_is_capped_with_a_count)
{
    std::vector<std::string> refusals;
    for (int i = 0; i < 3000; ++i)
        refusals.push_back("refused <user" + std::to_string(i) + "@d.example>: 550 5.1.1 " + std::string(900, 'n'));
    const std::string t = text::with_list("2.0.0 Ok: queued", refusals);
    EXPECT_EQ(host_problem(250, t), "");
    const auto lines = split_lines(t);
    ASSERT_EQ(lines.size(), 1 + text::max_listed + 1);
    EXPECT_EQ(lines.front(), "2.0.0 Ok: queued");
    EXPECT_EQ(lines.back(), "... and 2900 more");
    for (const std::string& l : lines) EXPECT_LE(l.size(), text::max_line);
    // Short lists are complete, without a count.
    EXPECT_EQ(text::with_list("first", {"a", "b\r\x01"}), "first\na\nb??");
    EXPECT_EQ(text::with_list("first", {}), "first");
}

TEST(proxy_text, the_byte_budget_holds_before_the_line_count)
{
    const std::vector<std::string> items(50, std::string(400, 'r'));
    const std::string t = text::with_list("first", items, 100, 2000);
    EXPECT_LE(t.size(), 2000u);
    const auto lines = split_lines(t);
    EXPECT_EQ(lines.back(), "... and " + std::to_string(50 - (lines.size() - 2)) + " more");
    EXPECT_GE(lines.size(), 5u);
}

TEST(proxy_text, valid_agrees_with_the_host_rules)
{
    const std::vector<std::pair<std::uint16_t, std::string>> cases = {{250, "ok"},
                                                                      {199, "ok"},
                                                                      {600, "ok"},
                                                                      {451, ""},
                                                                      {250, "a\rb"},
                                                                      {250, std::string("a\0b", 3)},
                                                                      {250, "tab\there"},
                                                                      {250, "del\x7f"},
                                                                      {250, "a\nb"},
                                                                      {250, std::string(506, 'x')},
                                                                      {250, std::string(507, 'x')},
                                                                      {250, std::string(65536, '\n')},
                                                                      {250, std::string(65537, '\n')},
                                                                      {550, "\xc3\xa9\xff"}};
    for (const auto& [code, t] : cases)
        EXPECT_EQ(text::valid(code, t), host_problem(code, t).empty()) << code << " size " << t.size();
}

TEST(proxy_text, random_upstream_bytes_always_make_a_valid_reply)
{
    std::mt19937 rng(20240607);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_int_distribution<int> len(0, 1500);
    std::uniform_int_distribution<int> count(0, 300);
    for (int round = 0; round < 200; ++round) {
        auto random_text = [&] {
            std::string s(static_cast<std::size_t>(len(rng)), '\0');
            for (char& ch : s) ch = static_cast<char>(byte(rng));
            return s;
        };
        std::vector<std::string> items(static_cast<std::size_t>(count(rng)));
        for (std::string& i : items) i = random_text();
        const std::string t = text::with_list(random_text(), items);
        ASSERT_EQ(host_problem(250, t), "") << "round " << round;
        ASSERT_TRUE(text::valid(250, t));
    }
}

TEST(proxy_text, upstream_codes_map_to_sane_local_replies)
{
    struct expect {
        int upstream;
        text::kind verdict;
        std::uint16_t code;
    };
    const expect cases[] = {
        {250, text::kind::accept, 250},   {251, text::kind::accept, 250},   {200, text::kind::accept, 250},
        {299, text::kind::accept, 250},   {450, text::kind::tempfail, 450}, {421, text::kind::tempfail, 451},
        {499, text::kind::tempfail, 499}, {550, text::kind::reject, 550},   {599, text::kind::reject, 599},
        {354, text::kind::tempfail, 451}, {199, text::kind::tempfail, 451}, {0, text::kind::tempfail, 451},
        {999, text::kind::tempfail, 451}, {600, text::kind::tempfail, 451}, {-1, text::kind::tempfail, 451}};
    for (const expect& e : cases) {
        const text::local_reply r = text::map_code(e.upstream);
        EXPECT_EQ(r.verdict, e.verdict) << e.upstream;
        EXPECT_EQ(r.code, e.code) << e.upstream;
        EXPECT_TRUE(r.code >= 200 && r.code <= 599);
    }
}

// A resolver that answers only when the test lets it: a dead DNS server on demand.
struct gate {
    std::mutex m;
    std::condition_variable cv;
    bool open = false;
    std::atomic<int> calls{0};

    dns::lookup_fn lookup()
    {
        return [this](const std::string& host, const std::string&, std::vector<dns::address>& out) {
            ++calls;
            std::unique_lock<std::mutex> lock(m);
            cv.wait(lock, [this] { return open; });
            if (host == "nx.example") return EAI_NONAME;
            dns::address a;
            auto* sin = reinterpret_cast<sockaddr_in*>(&a.storage);
            sin->sin_family = AF_INET;
            sin->sin_port = htons(25);
            sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            a.family = AF_INET;
            a.socktype = SOCK_STREAM;
            a.size = sizeof(sockaddr_in);
            out.push_back(a);
            return 0;
        };
    }
    void release()
    {
        {
            const std::lock_guard<std::mutex> lock(m);
            open = true;
        }
        cv.notify_all();
    }
};

// Declared after the resolver, so destroyed before it: its destructor joins the lookup thread,
// which must not wait for a gate nobody opens (also when an ASSERT leaves the test early).
struct opens_at_exit {
    gate& g;
    ~opens_at_exit() { g.release(); }
};

TEST(proxy_hops, received_fields_of_the_header_section_only)
{
    const std::string r = "Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n";
    EXPECT_EQ(hops::received_fields("", 50), 0u);
    EXPECT_EQ(hops::received_fields(r + r + "Subject: x\r\n\r\n" + r + r, 50), 2u);  // the body's do not count
    // Any case, "Received :" (obsolete syntax), folded fields counted once, LF and CR line ends.
    EXPECT_EQ(hops::received_fields("RECEIVED: x\n\ty\nreceived : z\rReceived:w\r\n\r\n", 50), 3u);
    // Not Received: X-Received, Received-SPF, a field with a space in its name.
    EXPECT_EQ(hops::received_fields("X-Received: a\r\nReceived-SPF: pass\r\nReceived by: x\r\n\r\n", 50), 0u);
    // The header section ends at a line that is not a field, and cannot start with a continuation.
    EXPECT_EQ(hops::received_fields(r + "not a header line\r\n" + r, 50), 1u);
    EXPECT_EQ(hops::received_fields(" " + r + r, 50), 0u);
    // No empty line: the whole message is the header section.
    EXPECT_EQ(hops::received_fields(r + r + r, 50), 3u);
    // Counting stops once past the limit.
    std::string many;
    for (int i = 0; i < 1000; ++i) many += r;
    EXPECT_EQ(hops::received_fields(many, 50), 51u);
    EXPECT_EQ(hops::received_fields(many, 5000), 1000u);
}

TEST(proxy_resolver, a_silent_resolver_costs_the_caller_no_more_than_its_deadline)
{
    gate g;
    dns::resolver r(1, g.lookup());
    opens_at_exit guard{g};
    const auto started = steady::now();
    const dns::answer a = r.resolve("mx.example", "25", started + milliseconds(200));
    const auto took = steady::now() - started;
    EXPECT_EQ(a.state, dns::answer::status::timed_out);
    EXPECT_GE(took, milliseconds(200));
    EXPECT_LT(took, milliseconds(2000));
    // Once the resolver answers, the next caller gets the addresses.
    g.release();
    const dns::answer b = r.resolve("mx.example", "25", steady::now() + milliseconds(2000));
    ASSERT_EQ(b.state, dns::answer::status::ok);
    ASSERT_EQ(b.addresses.size(), 1u);
    EXPECT_EQ(b.addresses[0].family, AF_INET);
}

TEST(proxy_resolver, concurrent_lookups_of_one_name_share_one_call)
{
    gate g;
    dns::resolver r(2, g.lookup());
    opens_at_exit guard{g};
    std::vector<std::thread> callers;
    std::atomic<int> timed_out{0};
    for (int i = 0; i < 8; ++i)
        callers.emplace_back([&] {
            if (r.resolve("mx.example", "25", steady::now() + milliseconds(150)).state ==
                dns::answer::status::timed_out)
                ++timed_out;
        });
    for (std::thread& t : callers) t.join();
    EXPECT_EQ(timed_out, 8);
    EXPECT_EQ(g.calls, 1);  // a dead DNS server holds one thread, not one per message
}

TEST(proxy_resolver, failures_and_other_names)
{
    gate g;
    g.release();
    dns::resolver r(1, g.lookup());
    const dns::answer nx = r.resolve("nx.example", "25", steady::now() + milliseconds(2000));
    EXPECT_EQ(nx.state, dns::answer::status::failed);
    EXPECT_EQ(nx.error, EAI_NONAME);
    EXPECT_EQ(r.resolve("mx.example", "25", steady::now() + milliseconds(2000)).state, dns::answer::status::ok);
    EXPECT_EQ(g.calls, 2);
}

TEST(proxy_resolver, a_deadline_already_past_does_not_wait)
{
    gate g;
    dns::resolver r(1, g.lookup());
    opens_at_exit guard{g};
    const auto started = steady::now();
    EXPECT_EQ(r.resolve("mx.example", "25", started - milliseconds(1)).state, dns::answer::status::timed_out);
    EXPECT_LT(steady::now() - started, milliseconds(500));
}

TEST(proxy_resolver, the_system_lookup_takes_ip_literals_without_dns)
{
    std::vector<dns::address> out;
    ASSERT_EQ(dns::system_lookup("127.0.0.1", "2525", out, true), 0);
    ASSERT_FALSE(out.empty());
    EXPECT_EQ(out[0].family, AF_INET);
    std::vector<dns::address> none;
    EXPECT_NE(dns::system_lookup("not-an-address", "25", none, true), 0);
    EXPECT_TRUE(none.empty());
}

// The plugin through the test kit (the server's engine, no sockets): a host name goes through
// the resolver thread, which the unload joins; an EHLO name that could inject commands is refused.
TEST(proxy_plugin, a_host_name_is_resolved_and_unloading_joins_the_resolver)
{
    {
        tk::host h;
        h.load(plugin("proxy"), tk::node::map({{"host", "localhost"}, {"port", 1}, {"timeout", 2}}));
        auto s = h.open();
        s.cmd("EHLO c.example");
        EXPECT_EQ(s.send_mail("a@b.example", {"c@d.example"}, "x\r\n"),
                  "451 4.4.1 Upstream unavailable, try again later");
        EXPECT_TRUE(h.logged("cannot connect to localhost:1"));
    }
    tk::host h;
    EXPECT_NE(h.refusal(plugin("proxy"), tk::node::map({{"host", "x"}, {"helo", "a.example\r\nRSET"}})).find("helo:"),
              std::string::npos);
    EXPECT_NE(h.refusal(plugin("proxy"), tk::node::map({{"host", "x"}, {"helo", "a b"}})).find("not a host name"),
              std::string::npos);
}

}  // namespace
