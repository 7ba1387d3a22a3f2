// SPDX-License-Identifier: Apache-2.0
// plugins/common/group_sync.hpp, the maildir plugin's group commit of new/: every item answered
// exactly once, and only by a sync that began after it was submitted (the durability rule: no
// 250 before the fsync that covers the rename); concurrent items share syncs; a failed sync
// fails every item of its round and only those; a lone item is synced at once by its own thread.
#include "common/group_sync.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace {

namespace ap = asiosmtpd::plugins;

struct item {
    std::size_t id = 0;
    std::uint64_t submitted_after = 0;  // the sync counter's value when it was submitted
};

TEST(GroupSync, LoneItemIsSyncedByItsOwnThread)
{
    ap::group_sync<item> g;
    int syncs = 0, answers = 0, result = -1;
    const std::size_t answered = g.submit(
        item{1, 0}, [&]() noexcept { return ++syncs, 0; },
        [&](item&, int err) noexcept {
            ++answers;
            result = err;
        });
    EXPECT_EQ(answered, 1u);
    EXPECT_EQ(syncs, 1);
    EXPECT_EQ(answers, 1);
    EXPECT_EQ(result, 0);
    EXPECT_EQ(g.syncs(), 1u);
}

// Many threads submit at once while syncs are slow: each item is answered once, by a sync that
// started after its submission, and far fewer syncs than items are made.
TEST(GroupSync, ConcurrentItemsShareSyncsAndNeverPrecedeTheirSync)
{
    constexpr std::size_t threads = 8, per_thread = 200;
    ap::group_sync<item> g;
    std::atomic<std::uint64_t> started{0};  // syncs begun
    std::mutex m;
    std::vector<int> answered(threads * per_thread, 0);
    std::atomic<bool> order_ok{true};
    auto sync = [&]() noexcept {
        started.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::microseconds(300));  // a disk flush
        return 0;
    };
    // The sync that answers an item began after its submission: the number of syncs begun when
    // it is answered exceeds the number begun before it was submitted.
    auto done = [&](item& i, int err) noexcept {
        if (err != 0 || started.load() <= i.submitted_after) order_ok = false;
        std::lock_guard<std::mutex> lock(m);
        ++answered[i.id];
    };
    std::vector<std::thread> pool;
    for (std::size_t t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            for (std::size_t k = 0; k < per_thread; ++k) g.submit(item{t * per_thread + k, started.load()}, sync, done);
        });
    for (std::thread& th : pool) th.join();
    EXPECT_TRUE(order_ok);
    for (std::size_t i = 0; i < answered.size(); ++i) ASSERT_EQ(answered[i], 1) << "item " << i;
    EXPECT_EQ(g.syncs(), started.load());
    EXPECT_LT(g.syncs(), threads * per_thread / 2) << "concurrent items should share syncs";
}

// A failing sync fails the items of its round; the next round syncs again and succeeds.
TEST(GroupSync, AFailedSyncFailsItsRoundOnly)
{
    ap::group_sync<item> g;
    std::atomic<int> calls{0};
    std::atomic<int> failed{0}, ok{0};
    std::atomic<bool> in_first{false}, release{false};
    auto sync = [&]() noexcept {
        if (calls.fetch_add(1) == 0) {
            in_first = true;
            while (!release) std::this_thread::yield();
            return EIO;
        }
        return 0;
    };
    auto done = [&](item&, int err) noexcept { (err ? failed : ok)++; };
    std::thread first([&] { g.submit(item{0, 0}, sync, done); });
    while (!in_first) std::this_thread::yield();
    // Submitted during the failing sync: not covered by it, so answered by the next one.
    std::vector<std::thread> later;
    for (std::size_t i = 1; i <= 3; ++i) later.emplace_back([&, i] { g.submit(item{i, 1}, sync, done); });
    for (std::thread& t : later) t.join();  // they return at once: the first thread syncs for them
    EXPECT_EQ(ok.load(), 0);
    release = true;
    first.join();
    EXPECT_EQ(failed.load(), 1);
    EXPECT_EQ(ok.load(), 3);
    EXPECT_EQ(calls.load(), 2);
}

}  // namespace
