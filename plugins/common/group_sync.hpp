// SPDX-License-Identifier: Apache-2.0
// group_sync: a group commit for delivery plugins. Many deliveries made durable by one sync (the
// maildir plugin: one fsync(new/) for every rename made before it), without any thread waiting
// for another: the thread that finds no sync running becomes the syncer; it takes every item
// waiting, syncs once, hands each item the result, and goes round again while more came during
// its sync. The others leave their item and return at once (to their next job).
//
// The guarantee: an item is handed its result only by a sync that *began after* the item was
// submitted; so whatever its caller did before submit() (a rename) is covered by that sync.
// Header-only, standard library only; compiled into each plugin.
#ifndef ASIOSMTPD_PLUGINS_GROUP_SYNC_HPP
#define ASIOSMTPD_PLUGINS_GROUP_SYNC_HPP

#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace asiosmtpd::plugins {

/// @tparam Item what waits for a sync (for a plugin: the suspended hook and what to undo).
///
/// @par Thread Safety
/// submit() may be called from any number of threads at once.
template <class Item>
class group_sync {
public:
    /// Submits `item`. `sync()` returns 0 or an errno; `done(Item&, int err)` is called with its
    /// result, on the syncing thread (maybe this one), outside the lock; neither may throw (an
    /// exception would leave the items of that round unanswered and the group without a syncer).
    /// Returns how many items this call's thread answered (0: another thread syncs for it).
    template <class Sync, class Done>
    std::size_t submit(Item item, Sync&& sync, Done&& done)
    {
        std::unique_lock<std::mutex> lock(mutex_);
        queue_.push_back(std::move(item));
        if (syncing_) return 0;  // the syncer takes it in its next round
        syncing_ = true;
        std::size_t answered = 0;
        std::vector<Item> batch;
        while (!queue_.empty()) {
            batch.clear();
            batch.swap(queue_);
            lock.unlock();
            const int err = sync();  // begins after every item of `batch` was submitted
            for (Item& i : batch) done(i, err);
            answered += batch.size();
            ++syncs_;
            lock.lock();
        }
        syncing_ = false;
        return answered;
    }

    /// Syncs done so far (for tests and figures).
    std::size_t syncs() const
    {
        std::lock_guard<std::mutex> lock(mutex_);
        return syncs_;
    }

private:
    mutable std::mutex mutex_;
    std::vector<Item> queue_;
    bool syncing_ = false;
    std::size_t syncs_ = 0;
};

}  // namespace asiosmtpd::plugins

#endif
