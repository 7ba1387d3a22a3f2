// SPDX-License-Identifier: Apache-2.0
// The access plugin: its pure parts (plugins/access/*.hpp, compiled in here: CIDR matching,
// the relay decision with every classic open-relay trick, the sender_login_map file, the
// per-client counters and their process-wide registry, DNSBL names and texts), then the plugin
// itself through the SDK test kit (relay control from outside, from a relay network and after
// AUTH; the login map; limits; config errors). DNSBL lookups need a DNS server: they are in
// tests/integration/test_access.py, with the rest end to end.
#include "access/cidr.hpp"
#include "access/client_limits.hpp"
#include "access/dnsbl_names.hpp"
#include "access/login_map.hpp"
#include "access/relay_rules.hpp"

#include <asiosmtpd/reply_rules.hpp>
#include <asiosmtpd/testkit.hpp>

#include <gtest/gtest.h>

#include <crypt.h>
#include <stdlib.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace ac = asiosmtpd::plugins::access;
namespace tk = asiosmtpd::testkit;
using std::chrono::seconds;

ac::ip_address ip(const char* text)
{
    const auto a = ac::parse_ip(text);
    if (!a) throw std::invalid_argument(std::string("not an address: ") + text);
    return *a;
}

ac::network net(const char* text)
{
    std::string why;
    const auto n = ac::parse_network(text, why);
    if (!n) throw std::invalid_argument(std::string(text) + ": " + why);
    return *n;
}

std::string net_problem(const char* text)
{
    std::string why;
    return ac::parse_network(text, why) ? std::string() : why;
}

// --- cidr ----------------------------------------------------------------------------------

TEST(access_cidr, addresses)
{
    EXPECT_FALSE(ip("192.0.2.1").v6);
    EXPECT_TRUE(ip("2001:db8::1").v6);
    EXPECT_EQ(ac::to_string(ip("::ffff:192.0.2.1")), "192.0.2.1");  // IPv4-mapped: the IPv4 address
    EXPECT_FALSE(ip("::ffff:192.0.2.1").v6);
    EXPECT_EQ(ac::to_string(ip("[2001:DB8::1]")), "2001:db8::1");
    EXPECT_EQ(ac::to_string(ip("fe80::1%eth0")), "fe80::1");
    for (const char* bad : {"", "example.org", "1.2.3", "1.2.3.4.5", "256.0.0.1", "::g", "1.2.3.4/8", " 1.2.3.4"})
        EXPECT_FALSE(ac::parse_ip(bad)) << bad;
}

TEST(access_cidr, networks_match_their_addresses_only)
{
    const ac::network ten = net("10.0.0.0/8");
    EXPECT_TRUE(ten.contains(ip("10.255.1.2")));
    EXPECT_FALSE(ten.contains(ip("11.0.0.1")));
    EXPECT_FALSE(ten.contains(ip("::ffff:11.0.0.1")));
    EXPECT_TRUE(ten.contains(ip("::ffff:10.0.0.1")));  // mapped addresses are IPv4
    EXPECT_FALSE(ten.contains(ip("::a00:1")));         // an IPv6 address is not in an IPv4 network
    const ac::network odd = net("192.0.2.128/25");
    EXPECT_TRUE(odd.contains(ip("192.0.2.200")));
    EXPECT_FALSE(odd.contains(ip("192.0.2.127")));
    const ac::network v6 = net("2001:db8:ab00::/40");
    EXPECT_TRUE(v6.contains(ip("2001:db8:abff::1")));
    EXPECT_FALSE(v6.contains(ip("2001:db8:ac00::1")));
    EXPECT_TRUE(net("192.0.2.1").contains(ip("192.0.2.1")));  // an address alone: /32
    EXPECT_FALSE(net("192.0.2.1").contains(ip("192.0.2.2")));
    EXPECT_TRUE(net("::1").contains(ip("::1")));
    EXPECT_EQ(net("::1").prefix, 128u);
    EXPECT_TRUE(net("0.0.0.0/0").everyone());
    EXPECT_TRUE(net("0.0.0.0/0").contains(ip("203.0.113.9")));
    EXPECT_FALSE(net("0.0.0.0/0").contains(ip("2001:db8::1")));
    EXPECT_TRUE(net("::/0").contains(ip("2001:db8::1")));
    EXPECT_TRUE(net("127.0.0.0/8").contains(ip("127.0.0.1")));
}

TEST(access_cidr, bad_networks_say_why)
{
    EXPECT_EQ(net_problem("10.1.2.3/8"), "has host bits set below the prefix (did you mean 10.0.0.0/8?)");
    EXPECT_EQ(net_problem("2001:db8::1/64"), "has host bits set below the prefix (did you mean 2001:db8::/64?)");
    EXPECT_EQ(net_problem("10.0.0.0/33"), "prefix length must be 0..32");
    EXPECT_EQ(net_problem("::/129"), "prefix length must be 0..128");
    EXPECT_EQ(net_problem("10.0.0.0/"), "prefix length must be 0..32");
    EXPECT_EQ(net_problem("10.0.0.0/x"), "prefix length must be 0..32");
    EXPECT_EQ(net_problem("mail.example.org"), "not an IP address or network");
    EXPECT_EQ(net_problem("10.0.0.0/-1"), "prefix length must be 0..32");
}

TEST(access_cidr, lists_and_everyone)
{
    ac::network_list l;
    EXPECT_FALSE(l.contains(ip("127.0.0.1")));
    l.add(net("127.0.0.0/8"));
    l.add(net("::1/128"));
    EXPECT_TRUE(l.contains(ip("127.0.0.2")));
    EXPECT_TRUE(l.contains(ip("::1")));
    EXPECT_FALSE(l.contains(ip("192.0.2.1")));
    EXPECT_EQ(l.everyone(), nullptr);
    l.add(net("::/0"));
    ASSERT_NE(l.everyone(), nullptr);
    EXPECT_EQ(ac::to_string(*l.everyone()), "::/0");
}

TEST(access_cidr, clients_are_counted_per_ipv4_address_and_ipv6_64)
{
    EXPECT_EQ(ac::client_key(ip("192.0.2.1")), "192.0.2.1");
    EXPECT_EQ(ac::client_key(ip("::ffff:192.0.2.1")), "192.0.2.1");
    EXPECT_EQ(ac::client_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
    EXPECT_EQ(ac::client_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), "2001:db8:1:2::/64");
    EXPECT_NE(ac::client_key(ip("2001:db8:1:3::1")), ac::client_key(ip("2001:db8:1:2::1")));
}

// --- relay rules ---------------------------------------------------------------------------

ac::domain_set locals()
{
    ac::domain_set d;
    EXPECT_EQ(d.add("local.example"), "");
    EXPECT_EQ(d.add("Other.Example."), "");  // case and a trailing dot do not matter
    EXPECT_EQ(d.add(".sub.example"), "");    // every subdomain of sub.example
    EXPECT_EQ(d.add("[192.0.2.25]"), "");
    return d;
}

TEST(access_relay, split_dequotes_the_local_part)
{
    const ac::address_parts p = ac::split_address("\"user@foreign.example\"@Local.Example.");
    EXPECT_EQ(p.local, "user@foreign.example");
    EXPECT_EQ(p.domain, "local.example");
    EXPECT_TRUE(p.has_at);
    EXPECT_EQ(ac::split_address("\"a\\\"b\"@x.example").local, "a\"b");
    EXPECT_EQ(ac::split_address("postmaster").domain, "");
    EXPECT_FALSE(ac::split_address("postmaster").has_at);
    const ac::address_parts r = ac::split_address("@a.example,@b.example:user@c.example");
    EXPECT_TRUE(r.source_route);
    EXPECT_EQ(r.local, "user");
    EXPECT_EQ(r.domain, "c.example");
}

TEST(access_relay, local_domains)
{
    const ac::domain_set d = locals();
    using ac::destination;
    EXPECT_EQ(ac::classify("user@local.example", d), destination::local);
    EXPECT_EQ(ac::classify("User@LOCAL.EXAMPLE", d), destination::local);
    EXPECT_EQ(ac::classify("user@local.example.", d), destination::local);
    EXPECT_EQ(ac::classify("user@other.example", d), destination::local);
    EXPECT_EQ(ac::classify("user@a.sub.example", d), destination::local);
    EXPECT_EQ(ac::classify("user@b.a.sub.example", d), destination::local);
    EXPECT_EQ(ac::classify("user@sub.example", d), destination::foreign);  // ".sub.example": subdomains only
    EXPECT_EQ(ac::classify("user@[192.0.2.25]", d), destination::local);
    EXPECT_EQ(ac::classify("user@[192.0.2.26]", d), destination::foreign);
    EXPECT_EQ(ac::classify("\"first last\"@local.example", d), destination::local);
    EXPECT_EQ(ac::classify("user@foreign.example", d), destination::foreign);
    EXPECT_EQ(ac::classify("user@local.example.foreign.example", d), destination::foreign);
    EXPECT_EQ(ac::classify("user@xlocal.example", d), destination::foreign);
    EXPECT_EQ(ac::classify("Postmaster", d), destination::postmaster);  // RFC 5321 §4.5.1
    EXPECT_EQ(ac::classify("user", d), destination::no_domain);
    EXPECT_FALSE(ac::needs_relay(destination::local));
    EXPECT_FALSE(ac::needs_relay(destination::postmaster));
    EXPECT_TRUE(ac::needs_relay(destination::foreign));
    EXPECT_TRUE(ac::needs_relay(destination::no_domain));
}

TEST(access_relay, every_classic_trick_needs_relay_permission)
{
    const ac::domain_set d = locals();
    const char* tricks[] = {
        "user%foreign.example@local.example",                // the percent hack
        "\"user%foreign.example\"@local.example",            // ... quoted
        "\"user@foreign.example\"@local.example",            // a quoted '@'
        "\"user\\@foreign.example\"@local.example",          // ... escaped inside the quotes
        "user@foreign.example@local.example",                // two '@' (the server refuses it; defence)
        "foreign.example!user@local.example",                // a UUCP bang path
        "\"foreign.example!user\"@local.example",            // ... quoted
        "local.example!foreign.example!user",                // a bang path without a domain
        "@local.example:user@foreign.example",               // a source route (the server drops it)
        "@local.example,@local.example:user@local.example",  // even to a local mailbox
        "@local.example",                                    // nobody at all
    };
    for (const char* t : tricks) {
        const ac::destination kind = ac::classify(t, d);
        EXPECT_TRUE(ac::needs_relay(kind)) << t;
        const std::string text(t);
        if (text != "@local.example:user@foreign.example" && text != "local.example!foreign.example!user") {
            EXPECT_EQ(kind, ac::destination::routed) << t;
        }
    }
}

TEST(access_relay, bad_domain_entries)
{
    ac::domain_set d;
    EXPECT_EQ(d.add(""), "empty domain");
    EXPECT_EQ(d.add("."), "empty domain");
    EXPECT_NE(d.add("user@example.org"), "");
    EXPECT_NE(d.add("two words"), "");
    EXPECT_NE(d.add(".."), "");
    EXPECT_TRUE(d.empty());
}

// --- sender_login_map ---------------------------------------------------------------------

TEST(access_login_map, owners_by_address_then_domain)
{
    const ac::login_map m = ac::login_map::parse("# who may send as whom\n"
                                                 "\n"
                                                 "alice@example.org: alice\r\n"
                                                 "  Sales@Example.ORG. :  alice ,bob  \n"
                                                 "@example.org: admin\n"
                                                 "\t# indented comment\n"
                                                 "ceo@bank.example: ceo\n",
                                                 "senders.map");
    EXPECT_EQ(m.size(), 4u);
    EXPECT_TRUE(m.owns("alice", "alice@example.org"));
    EXPECT_TRUE(m.owns("ALICE", "Alice@Example.org"));  // Postfix compares case-insensitively
    EXPECT_FALSE(m.owns("bob", "alice@example.org"));
    EXPECT_FALSE(m.owns("admin", "alice@example.org"));  // the address's own entry wins
    EXPECT_TRUE(m.owns("bob", "sales@example.org."));
    EXPECT_TRUE(m.owns("alice", "sales@example.org"));
    EXPECT_TRUE(m.owns("admin", "anyone@example.org"));  // the domain's entry
    EXPECT_FALSE(m.owns("alice", "anyone@example.org"));
    EXPECT_FALSE(m.owns("alice", "ceo@bank.example"));
    EXPECT_TRUE(m.owns("ceo", "ceo@bank.example"));
    EXPECT_FALSE(m.owns("alice", "alice@elsewhere.example"));  // no owner: nobody's
    EXPECT_EQ(m.owners("nobody@elsewhere.example"), nullptr);
}

std::string map_error(const char* text)
{
    try {
        ac::login_map::parse(text, "/etc/asiosmtpd/senders.map");
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    return "";
}

TEST(access_login_map, errors_name_file_and_line)
{
    EXPECT_EQ(map_error("a@b.example: a\nno colon here\n"),
              "/etc/asiosmtpd/senders.map:2: expected \"address-or-@domain: login[, login...]\", found no ':'");
    EXPECT_EQ(map_error("# c\nalice: alice\n"), "/etc/asiosmtpd/senders.map:2: \"alice\" is not an address or @domain");
    EXPECT_EQ(map_error("a@: x\n"), "/etc/asiosmtpd/senders.map:1: \"a@\" is not an address or @domain");
    EXPECT_EQ(map_error("a@b.example:\n"), "/etc/asiosmtpd/senders.map:1: empty login for a@b.example");
    EXPECT_EQ(map_error("a@b.example: x,\n"), "/etc/asiosmtpd/senders.map:1: empty login for a@b.example");
    EXPECT_EQ(map_error("a@b.example: x y\n"), "/etc/asiosmtpd/senders.map:1: logins are separated by ',': \"x y\"");
    EXPECT_EQ(map_error("a@b.example: x\n\nA@B.example.: y\n"),
              "/etc/asiosmtpd/senders.map:3: duplicate entry for A@B.example. (first on line 1)");
    EXPECT_EQ(map_error("a@b.example: x\x01y\n"), "/etc/asiosmtpd/senders.map:1: control character in the line");
    EXPECT_EQ(map_error(""), "");
}

// --- per-client counters ---------------------------------------------------------------------

TEST(access_limits, concurrent_connections_per_client)
{
    ac::counter_table t;
    ac::limits l;
    l.connections_per_client = 2;
    const auto now = ac::clock_type::now();
    EXPECT_TRUE(t.connect("192.0.2.1", l, now).ok);
    EXPECT_TRUE(t.connect("192.0.2.1", l, now).ok);
    const ac::check_result third = t.connect("192.0.2.1", l, now);
    EXPECT_FALSE(third.ok);
    EXPECT_STREQ(third.limit, "connections_per_client");
    EXPECT_EQ(third.count, 3u);
    EXPECT_EQ(third.max, 2u);
    EXPECT_TRUE(t.connect("192.0.2.2", l, now).ok);  // another client
    EXPECT_EQ(t.open("192.0.2.1"), 2u);
    t.disconnect("192.0.2.1");
    EXPECT_TRUE(t.connect("192.0.2.1", l, now).ok);
    t.disconnect("192.0.2.9");  // unknown: nothing happens
}

TEST(access_limits, connection_rate_in_a_fixed_window)
{
    ac::counter_table t;
    ac::limits l;
    l.connections_per_minute = 3;
    const auto t0 = ac::clock_type::now();
    for (int i = 0; i < 3; ++i) {
        EXPECT_TRUE(t.connect("c", l, t0 + seconds(i)).ok);
        t.disconnect("c");
    }
    const ac::check_result over = t.connect("c", l, t0 + seconds(30));
    EXPECT_FALSE(over.ok);
    EXPECT_STREQ(over.limit, "connections_per_minute");
    EXPECT_EQ(over.count, 4u);
    EXPECT_FALSE(t.connect("c", l, t0 + seconds(59)).ok);  // refused attempts count too
    EXPECT_TRUE(t.connect("c", l, t0 + seconds(60)).ok);   // a new window
}

TEST(access_limits, messages_per_minute)
{
    ac::counter_table t;
    ac::limits l;
    l.messages_per_minute = 2;
    const auto t0 = ac::clock_type::now();
    EXPECT_TRUE(t.message("c", l, t0).ok);
    EXPECT_TRUE(t.message("c", l, t0 + seconds(1)).ok);
    const ac::check_result r = t.message("c", l, t0 + seconds(2));
    EXPECT_FALSE(r.ok);
    EXPECT_STREQ(r.limit, "messages_per_minute");
    EXPECT_TRUE(t.message("other", l, t0 + seconds(2)).ok);
    EXPECT_TRUE(t.message("c", l, t0 + seconds(61)).ok);
    l.messages_per_minute = 0;  // no limit: counted, never refused
    for (int i = 0; i < 100; ++i) EXPECT_TRUE(t.message("c", l, t0 + seconds(62)).ok);
}

TEST(access_limits, entries_expire_and_memory_is_bounded)
{
    ac::counter_table t(3);
    ac::limits l;
    l.connections_per_minute = 10;
    const auto t0 = ac::clock_type::now();
    EXPECT_TRUE(t.connect("a", l, t0).ok);  // stays open
    EXPECT_TRUE(t.connect("b", l, t0).ok);
    t.disconnect("b");
    EXPECT_TRUE(t.message("c", l, t0).ok);
    EXPECT_EQ(t.size(), 3u);
    // Full: a fourth client is let through uncounted while the others' windows run.
    const ac::check_result d = t.connect("d", l, t0 + seconds(1));
    EXPECT_TRUE(d.ok);
    EXPECT_TRUE(d.untracked);
    EXPECT_EQ(t.size(), 3u);
    // A minute later b and c hold nothing: swept; a (open) stays.
    EXPECT_FALSE(t.connect("d", l, t0 + seconds(61)).untracked);
    EXPECT_EQ(t.size(), 2u);
    EXPECT_EQ(t.open("a"), 1u);
    t.disconnect("a");
    t.disconnect("d");
    t.sweep(t0 + seconds(200));
    EXPECT_EQ(t.size(), 0u);
}

TEST(access_limits, the_registry_shares_a_table_per_configuration)
{
    ac::table_registry r;
    ac::limits a;
    a.connections_per_client = 5;
    ac::limits a2 = a;
    a2.recipients_per_message = 7;  // counts nothing: the same table
    ac::limits b;
    b.connections_per_client = 6;
    bool reused = true;
    {
        ac::table_ref one(r, a, &reused);
        EXPECT_FALSE(reused);
        ac::table_ref two(r, a2, &reused);
        EXPECT_TRUE(reused);
        EXPECT_EQ(&*one, &*two);
        ac::table_ref other(r, b, &reused);
        EXPECT_FALSE(reused);
        EXPECT_NE(&*one, &*other);
        EXPECT_EQ(r.tables.size(), 2u);
        const ac::table_ref copy = one;  // what a session holds
        one = ac::table_ref();
        two = ac::table_ref();
        EXPECT_EQ(r.tables.size(), 2u);  // the copy still holds it
    }
    EXPECT_TRUE(r.tables.empty());  // freed with the last reference
    ac::table_ref again(r, a, &reused);
    EXPECT_FALSE(reused);
}

TEST(access_limits, the_keep_state_key_names_the_layout)
{
    // A build with another layout of the shared data gets a registry of its own.
    EXPECT_EQ(ac::registry_key().rfind("counters.v1.", 0), 0u);
    EXPECT_LE(ac::registry_key().size(), 128u);
}

// --- DNSBL names and texts -----------------------------------------------------------------

TEST(access_dnsbl, query_names)
{
    EXPECT_EQ(ac::dnsbl_query_name(ip("192.0.2.99"), "zen.example"), "99.2.0.192.zen.example");
    EXPECT_EQ(ac::dnsbl_query_name(ip("127.0.0.2"), "zen.example."), "2.0.0.127.zen.example");
    // RFC 5782 §2.4's example.
    EXPECT_EQ(ac::dnsbl_query_name(ip("2001:db8:1:2:3:4:567:89ab"), "ugly.example.com"),
              "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com");
}

TEST(access_dnsbl, zones_answers_and_texts)
{
    EXPECT_EQ(ac::dnsbl_zone_problem("zen.spamhaus.org"), "");
    EXPECT_EQ(ac::dnsbl_zone_problem("bl.example."), "");
    EXPECT_NE(ac::dnsbl_zone_problem(""), "");
    EXPECT_NE(ac::dnsbl_zone_problem("a..b"), "");
    EXPECT_NE(ac::dnsbl_zone_problem(".a"), "");
    EXPECT_NE(ac::dnsbl_zone_problem("bad zone"), "");
    EXPECT_NE(ac::dnsbl_zone_problem(std::string(64, 'a') + ".example"), "");
    EXPECT_TRUE(ac::dnsbl_listing(ip("127.0.0.2")));
    EXPECT_TRUE(ac::dnsbl_listing(ip("127.0.0.11")));
    EXPECT_FALSE(ac::dnsbl_listing(ip("127.255.255.254")));  // "query refused", not a listing
    EXPECT_FALSE(ac::dnsbl_listing(ip("192.0.2.1")));
    EXPECT_EQ(ac::dnsbl_clean_text(" Listed\r\n\x01 see x \xc3\xa9 "), "Listed??? see x \xc3\xa9");
    const std::string cut = ac::dnsbl_clean_text(std::string(299, 'a') + "\xc3\xa9", 300);
    EXPECT_EQ(cut, std::string(299, 'a'));  // never half a UTF-8 character
    EXPECT_EQ(ac::dnsbl_reply_text(ip("192.0.2.1"), "zen.example", "Listed; see https://x.example/192.0.2.1"),
              "5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.example; "
              "Listed; see https://x.example/192.0.2.1");
    EXPECT_EQ(ac::dnsbl_reply_text(ip("2001:db8::1"), "zen.example", ""),
              "5.7.1 Service unavailable; client [2001:db8::1] blocked using zen.example");
    // Whatever a list puts in its TXT record, the server takes the reply.
    const std::string hostile = std::string("x\r\n250 OK\n\0\x7f", 12) + std::string(5000, 'y');
    EXPECT_EQ(asiosmtpd::sdk::reply_problem(554, ac::dnsbl_reply_text(ip("192.0.2.1"), "zen.example", hostile), false),
              "");
}

// --- the plugin through the test kit --------------------------------------------------------

const std::string access_so = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/access.so";
const std::string authfile_so = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/authfile.so";
const std::string sink_so = std::string(ASIOSMTPD_BUILD_PLUGIN_DIR) + "/sink.so";

std::string sha512(const std::string& password)
{
    auto data = std::make_unique<crypt_data>();
    std::memset(data.get(), 0, sizeof *data);
    const char* out = crypt_rn(password.c_str(), "$6$accesstestsalt$", data.get(), static_cast<int>(sizeof *data));
    return out ? std::string(out) : std::string();
}

// A folder with users.txt (alice, bob) and senders.map, removed afterwards.
class access_plugin : public ::testing::Test {
protected:
    void SetUp() override
    {
        char tmpl[] = "/tmp/access_test.XXXXXX";
        ASSERT_NE(mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        std::ofstream(dir_ + "/users.txt") << "alice:" << sha512("wonderland") << "\nbob:" << sha512("builder") << "\n";
        std::ofstream(dir_ + "/senders.map") << "# test map\nalice@local.example: alice\n@bank.example: ceo\n"
                                                "shared@local.example: alice, bob\n";
        h_.config_dir = dir_;
        h_.auth_require_tls = false;
    }
    void TearDown() override
    {
        if (!dir_.empty()) std::filesystem::remove_all(dir_);
    }

    void load(tk::node access_config)
    {
        h_.load(authfile_so, tk::node::map({{"users_file", "users.txt"}, {"workers", 1}}));
        h_.load(access_so, access_config);
        h_.load(sink_so);
    }

    static tk::node mx_config()
    {
        return tk::node::map({{"local_domains", tk::node::list({"local.example"})},
                              {"relay_networks", tk::node::list({"198.51.100.0/24", "2001:db8:aa::/48"})},
                              {"sender_login_map", "senders.map"}});
    }

    std::string dir_;
    tk::host h_;
};

const char* const tricks[] = {
    "<user%foreign.example@local.example>",     "<\"user@foreign.example\"@local.example>",
    "<@local.example:user@foreign.example>",    "<foreign.example!user@local.example>",
    "<\"user%foreign.example\"@local.example>", "<user@foreign.example>",
};

TEST_F(access_plugin, nobody_relays_from_outside)
{
    load(mx_config());
    auto s = h_.open("203.0.113.5");
    EXPECT_EQ(s.cmd("EHLO client.example").substr(0, 4), "250-");
    EXPECT_EQ(s.cmd("MAIL FROM:<someone@foreign.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<user@local.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<User@LOCAL.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<postmaster>"), "250 OK");
    for (const char* t : tricks) {
        const std::string rcpt = std::string(t);
        const std::string r = s.cmd("RCPT TO:" + rcpt);
        EXPECT_EQ(r.substr(0, 10), "554 5.7.1 ") << rcpt;
        EXPECT_NE(r.find(">: Relay access denied"), std::string::npos) << r;
    }
    EXPECT_EQ(s.cmd("RCPT TO:<user%foreign.example@local.example>"),
              "554 5.7.1 <user%foreign.example@local.example>: Relay access denied");
    EXPECT_EQ(s.cmd("RCPT TO:<user@foreign@local.example>"), "553 5.1.3 Error: malformed address");  // the server
    EXPECT_TRUE(h_.logged("event=relay_denied client=203.0.113.5 rcpt=user%foreign.example@local.example"
                          " destination=routed"));
}

TEST_F(access_plugin, relay_networks_and_authenticated_clients_relay)
{
    load(mx_config());
    for (const char* peer : {"198.51.100.7", "2001:db8:aa:1::25"}) {
        auto s = h_.open(peer);
        s.cmd("EHLO client.example");
        EXPECT_EQ(s.cmd("MAIL FROM:<someone@local.example>"), "250 OK") << peer;
        for (const char* t : tricks) EXPECT_EQ(s.cmd(std::string("RCPT TO:") + t), "250 OK") << peer << " " << t;
    }
    auto s = h_.open("203.0.113.5");
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.auth("PLAIN", "alice", "wonderland"), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.cmd("MAIL FROM:<alice@local.example>"), "250 OK");
    for (const char* t : tricks) EXPECT_EQ(s.cmd(std::string("RCPT TO:") + t), "250 OK") << t;
}

TEST_F(access_plugin, relay_authenticated_false)
{
    tk::node cfg = mx_config();
    cfg = tk::node::map({{"local_domains", tk::node::list({"local.example"})}, {"relay_authenticated", false}});
    load(cfg);
    auto s = h_.open("203.0.113.5");
    s.cmd("EHLO client.example");
    EXPECT_EQ(s.auth("PLAIN", "alice", "wonderland"), "235 2.7.0 Authentication successful");
    s.cmd("MAIL FROM:<alice@local.example>");
    EXPECT_EQ(s.cmd("RCPT TO:<user@foreign.example>"), "554 5.7.1 <user@foreign.example>: Relay access denied");
    EXPECT_EQ(s.cmd("RCPT TO:<user@local.example>"), "250 OK");
}

TEST_F(access_plugin, sender_login_map)
{
    load(mx_config());
    auto s = h_.open("203.0.113.5");
    s.cmd("EHLO client.example");
    // Not authenticated: the map does not apply (an MX takes mail from anyone, as anyone).
    EXPECT_EQ(s.cmd("MAIL FROM:<ceo@bank.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RSET"), "250 OK");
    EXPECT_EQ(s.auth("PLAIN", "alice", "wonderland"), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.cmd("MAIL FROM:<ceo@bank.example>"),
              "553 5.7.1 <ceo@bank.example>: Sender address rejected: not owned by user alice");
    EXPECT_EQ(s.cmd("MAIL FROM:<nobody@elsewhere.example>"),
              "553 5.7.1 <nobody@elsewhere.example>: Sender address rejected: not owned by user alice");
    EXPECT_EQ(s.cmd("MAIL FROM:<shared@local.example>"), "250 OK");
    EXPECT_EQ(s.cmd("RSET"), "250 OK");
    EXPECT_EQ(s.cmd("MAIL FROM:<>"), "250 OK");  // bounces carry no sender to own
    EXPECT_EQ(s.cmd("RSET"), "250 OK");
    EXPECT_EQ(s.cmd("MAIL FROM:<Alice@Local.Example>"), "250 OK");
    EXPECT_EQ(s.cmd("RCPT TO:<friend@foreign.example>"), "250 OK");
    EXPECT_EQ(s.data("Subject: hi\r\n\r\nhello\r\n"), "250 OK");
    EXPECT_TRUE(h_.logged("event=sender_login_mismatch client=203.0.113.5 login=alice sender=ceo@bank.example"));
}

TEST_F(access_plugin, reject_networks_get_554_then_only_quit)
{
    load(tk::node::map({{"reject_networks", tk::node::list({"203.0.113.0/24"})}}));
    auto s = h_.open("203.0.113.5");
    EXPECT_EQ(s.greeting(), "554 5.7.1 Client host [203.0.113.5] rejected: Access denied");
    EXPECT_EQ(s.cmd("EHLO client.example").substr(0, 4), "503 ");
    EXPECT_EQ(s.cmd("QUIT").substr(0, 4), "221 ");
    auto other = h_.open("192.0.2.1");
    EXPECT_EQ(other.greeting().substr(0, 4), "220 ");
}

TEST_F(access_plugin, limits_per_client)
{
    load(tk::node::map(
        {{"local_domains", tk::node::list({"local.example"})},
         {"relay_networks", tk::node::list({"198.51.100.0/24"})},
         {"limits",
          tk::node::map({{"connections_per_client", 2}, {"messages_per_minute", 2}, {"recipients_per_message", 2}})}}));
    auto a1 = h_.open("192.0.2.1");
    auto a2 = h_.open("192.0.2.1");
    auto a3 = h_.open("192.0.2.1");
    EXPECT_EQ(a1.greeting().substr(0, 4), "220 ");
    EXPECT_EQ(a2.greeting().substr(0, 4), "220 ");
    EXPECT_EQ(a3.greeting(), "421 4.7.0 Error: too many connections from 192.0.2.1");
    EXPECT_TRUE(a3.closed());
    EXPECT_TRUE(h_.logged("event=limit client=192.0.2.1 key=192.0.2.1 limit=connections_per_client count=3 max=2"));
    auto b = h_.open("192.0.2.2");  // another client
    EXPECT_EQ(b.greeting().substr(0, 4), "220 ");
    auto v6a = h_.open("2001:db8:1:2::a");
    auto v6b = h_.open("2001:db8:1:2::b");
    EXPECT_EQ(h_.open("2001:db8:1:2::c").greeting(), "421 4.7.0 Error: too many connections from 2001:db8:1:2::c");
    EXPECT_EQ(h_.open("2001:db8:1:3::c").greeting().substr(0, 4), "220 ");  // another /64
    a1.close();
    auto a4 = h_.open("192.0.2.1");  // one slot free again
    EXPECT_EQ(a4.greeting().substr(0, 4), "220 ");
    // The relay network is exempt (Postfix: smtpd_client_event_limit_exceptions = $mynetworks).
    std::vector<tk::session> mine;
    for (int i = 0; i < 4; ++i) {
        mine.push_back(h_.open("198.51.100.1"));
        EXPECT_EQ(mine.back().greeting().substr(0, 4), "220 ");
    }
    // Messages per minute and recipients per message.
    a2.cmd("EHLO client.example");
    EXPECT_EQ(a2.cmd("MAIL FROM:<x@foreign.example>"), "250 OK");
    EXPECT_EQ(a2.cmd("RCPT TO:<a@local.example>"), "250 OK");
    EXPECT_EQ(a2.cmd("RCPT TO:<b@local.example>"), "250 OK");
    EXPECT_EQ(a2.cmd("RCPT TO:<c@local.example>"), "452 4.5.3 Error: too many recipients");
    EXPECT_EQ(a2.cmd("RSET"), "250 OK");
    EXPECT_EQ(a2.cmd("MAIL FROM:<x@foreign.example>"), "250 OK");
    EXPECT_EQ(a2.cmd("RSET"), "250 OK");
    EXPECT_EQ(a2.cmd("MAIL FROM:<x@foreign.example>"), "450 4.7.1 Error: too much mail from 192.0.2.1");
    EXPECT_TRUE(h_.logged("limit=messages_per_minute count=3 max=2"));
    EXPECT_TRUE(h_.logged("event=limit client=192.0.2.1 limit=recipients_per_message max=2"));
}

std::string refusal(tk::host& h, tk::node cfg) { return h.refusal(access_so, cfg); }

TEST_F(access_plugin, config_errors_name_the_key)
{
    const auto check = [&](tk::node cfg, const std::string& expected) {
        const std::string why = refusal(h_, cfg);
        EXPECT_NE(why.find(expected), std::string::npos) << why;
    };
    check(tk::node::map({{"relay_network", tk::node::list({})}}),
          "relay_network: unknown key (did you mean 'relay_networks'?)");
    check(tk::node::map({{"relay_networks", tk::node::list({"10.1.2.3/8"})}}),
          "relay_networks[0]: \"10.1.2.3/8\": has host bits set below the prefix (did you mean 10.0.0.0/8?)");
    check(tk::node::map({{"reject_networks", "10.0.0.0/8"}}), "reject_networks: expected a list");
    check(tk::node::map({{"local_domains", tk::node::list({"a@b"})}}), "local_domains[0]: \"a@b\": not a domain");
    check(tk::node::map({{"limits", tk::node::map({{"connections_per_client", -1}})}}),
          "limits.connections_per_client: must be between 0 and 1000000");
    check(tk::node::map({{"limits", tk::node::map({{"connections", 1}})}}),
          "limits.connections: unknown key (known: connections_per_client");
    check(tk::node::map({{"dnsbl", tk::node::list({"bad zone"})}}), "dnsbl[0]: \"bad zone\": not a DNS zone");
    check(tk::node::map({{"dnsbl_fail", "maybe"}}), "dnsbl_fail: expected open or closed");
    check(tk::node::map({{"dnsbl_timeout", 0}}), "dnsbl_timeout: must be between 0.1 and 60 seconds");
    check(tk::node::map({{"dns_servers", tk::node::list({"ns.example:53"})}}),
          "dns_servers[0]: \"ns.example:53\": not an IP address");
    check(tk::node::map({{"dns_servers", tk::node::list({"127.0.0.1:0"})}}), "port must be 1..65535");
    check(tk::node::map({{"sender_login_map", "missing.map"}}),
          "sender_login_map: cannot read \"" + dir_ + "/missing.map\": No such file or directory");
    std::ofstream(dir_ + "/bad.map") << "ok@example.org: ok\n\nbad line\n";
    check(tk::node::map({{"sender_login_map", "bad.map"}}), dir_ + "/bad.map:3: expected \"address-or-@domain:");
}

TEST_F(access_plugin, without_configuration_only_authenticated_clients_send)
{
    load(tk::node());
    auto s = h_.open("192.0.2.1");
    s.cmd("EHLO client.example");
    s.cmd("MAIL FROM:<x@y.example>");
    EXPECT_EQ(s.cmd("RCPT TO:<a@b.example>"), "554 5.7.1 <a@b.example>: Relay access denied");
    EXPECT_EQ(s.cmd("RCPT TO:<postmaster>"), "250 OK");
    EXPECT_EQ(s.auth("PLAIN", "bob", "builder"), "235 2.7.0 Authentication successful");
    EXPECT_EQ(s.cmd("RCPT TO:<a@b.example>"), "250 OK");
}

}  // namespace
