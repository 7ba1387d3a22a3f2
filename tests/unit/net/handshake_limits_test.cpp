// SPDX-License-Identifier: Apache-2.0
// The TLS handshake caps (server.max_tls_handshakes, server.max_tls_handshakes_per_client).
#include "net/handshake_limits.hpp"
#include "net/metrics.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

namespace asiosmtpd::net {
namespace {

using refusal = handshake_limits::refusal;

TEST(handshake_limits, caps_per_client_and_server_wide)
{
    const auto limits = std::make_shared<handshake_limits>();
    limits->set_limits(5, 3);
    refusal why = refusal::none;
    std::vector<handshake_limits::slot> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(limits->try_acquire("192.0.2.1", why));
        EXPECT_TRUE(held.back());
        EXPECT_EQ(why, refusal::none);
    }
    EXPECT_FALSE(limits->try_acquire("192.0.2.1", why));
    EXPECT_EQ(why, refusal::client);
    held.push_back(limits->try_acquire("192.0.2.2", why));
    held.push_back(limits->try_acquire("192.0.2.3", why));
    EXPECT_EQ(limits->in_progress(), 5u);
    EXPECT_FALSE(limits->try_acquire("192.0.2.4", why));
    EXPECT_EQ(why, refusal::server);
    EXPECT_EQ(limits->in_progress("192.0.2.1"), 3u);
    EXPECT_EQ(limits->in_progress("192.0.2.4"), 0u);  // a refusal leaves nothing behind
    EXPECT_EQ(limits->limit(refusal::server), 5u);
    EXPECT_EQ(limits->limit(refusal::client), 3u);
}

TEST(handshake_limits, every_way_out_gives_the_slot_back)
{
    const auto limits = std::make_shared<handshake_limits>();
    limits->set_limits(2, 2);
    refusal why = refusal::none;
    {
        const handshake_limits::slot a = limits->try_acquire("192.0.2.1", why);
        EXPECT_EQ(limits->in_progress(), 1u);
    }
    EXPECT_EQ(limits->in_progress(), 0u);  // destroyed
    handshake_limits::slot b = limits->try_acquire("192.0.2.1", why);
    handshake_limits::slot c = std::move(b);  // moved: still one
    EXPECT_FALSE(b);                          // NOLINT(bugprone-use-after-move): a moved-from slot is empty
    EXPECT_TRUE(c);
    EXPECT_EQ(limits->in_progress(), 1u);
    c.release();
    c.release();  // twice: nothing more
    EXPECT_EQ(limits->in_progress(), 0u);
    handshake_limits::slot d = limits->try_acquire("192.0.2.1", why);
    d = limits->try_acquire("192.0.2.2", why);  // assigned over: the first is given back
    EXPECT_EQ(limits->in_progress(), 1u);
    EXPECT_EQ(limits->in_progress("192.0.2.1"), 0u);
    EXPECT_EQ(limits->in_progress("192.0.2.2"), 1u);
}

TEST(handshake_limits, a_slot_outlives_the_limits_it_came_from)
{
    auto limits = std::make_shared<handshake_limits>();
    refusal why = refusal::none;
    handshake_limits::slot s = limits->try_acquire("192.0.2.1", why);
    limits.reset();  // the server is gone, a session frame is not yet
    s.release();
}

TEST(handshake_limits, zero_is_no_limit_and_new_limits_apply_to_new_handshakes)
{
    const auto limits = std::make_shared<handshake_limits>();
    refusal why = refusal::none;
    std::vector<handshake_limits::slot> held;
    for (int i = 0; i < 100; ++i) held.push_back(limits->try_acquire("192.0.2.1", why));
    EXPECT_EQ(why, refusal::none);
    limits->set_limits(10, 0);  // lowered: those in progress go on, new ones are refused
    EXPECT_FALSE(limits->try_acquire("192.0.2.9", why));
    EXPECT_EQ(why, refusal::server);
    held.resize(9);
    EXPECT_TRUE(limits->try_acquire("192.0.2.1", why));
}

TEST(handshake_limits, ipv6_clients_count_by_their_64)
{
    EXPECT_EQ(handshake_limits::client_key("192.0.2.1"), "192.0.2.1");
    EXPECT_EQ(handshake_limits::client_key("::ffff:192.0.2.1"), "192.0.2.1");
    EXPECT_EQ(handshake_limits::client_key("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
    EXPECT_EQ(handshake_limits::client_key("not an address"), "not an address");
    const auto limits = std::make_shared<handshake_limits>();
    limits->set_limits(0, 2);
    refusal why = refusal::none;
    const auto a = limits->try_acquire("2001:db8::1", why);
    const auto b = limits->try_acquire("2001:db8::ffff:2", why);
    EXPECT_FALSE(limits->try_acquire("2001:db8:0:0:1::3", why));
    EXPECT_EQ(why, refusal::client);
    EXPECT_TRUE(limits->try_acquire("2001:db8:0:1::1", why));  // another /64
}

TEST(handshake_limits, counted_in_the_metrics)
{
    metrics& m = metrics::get();
    const auto client_before = m.tls_refused_client.load();
    const auto server_before = m.tls_refused_server.load();
    const auto pending_before = m.tls_handshaking.load();
    const auto limits = std::make_shared<handshake_limits>();
    limits->set_limits(2, 1);
    refusal why = refusal::none;
    {
        const auto a = limits->try_acquire("192.0.2.1", why);
        const auto b = limits->try_acquire("192.0.2.1", why);
        const auto c = limits->try_acquire("192.0.2.2", why);
        const auto d = limits->try_acquire("192.0.2.3", why);
        EXPECT_EQ(m.tls_handshaking.load(), pending_before + 2);
        const std::string text = m.render(0);
        EXPECT_NE(text.find("# TYPE asiosmtpd_tls_handshakes_in_progress gauge\n"), std::string::npos);
        EXPECT_NE(text.find("# TYPE asiosmtpd_tls_handshakes_refused_total counter\n"), std::string::npos);
    }
    EXPECT_EQ(m.tls_refused_client.load(), client_before + 1);
    EXPECT_EQ(m.tls_refused_server.load(), server_before + 1);
    EXPECT_EQ(m.tls_handshaking.load(), pending_before);
}

TEST(handshake_limits, threads_share_the_counts)
{
    const auto limits = std::make_shared<handshake_limits>();
    limits->set_limits(1000, 0);
    std::vector<std::thread> threads;
    std::atomic<int> refused{0};
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 10000; ++i) {
                refusal why = refusal::none;
                if (!limits->try_acquire("192.0.2.1", why)) refused.fetch_add(1);
            }
        });
    for (auto& t : threads) t.join();
    EXPECT_EQ(refused.load(), 0);
    EXPECT_EQ(limits->in_progress(), 0u);
}

}  // namespace
}  // namespace asiosmtpd::net
