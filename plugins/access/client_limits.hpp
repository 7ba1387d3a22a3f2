// SPDX-License-Identifier: Apache-2.0
// client_limits: per-client counters across sessions (Postfix's anvil): open connections,
// connections and messages per minute, for the access plugin's `limits`. Keyed by the client
// (cidr.hpp client_key: the IPv4 address, the IPv6 /64). Thread-safe (one mutex per table).
//
// Rates use a fixed window per client, as anvil's time unit: the first event opens a 60-second
// window, every event in it counts (refused ones too: a client that keeps trying stays over),
// and the window starts again with the next event after it ends. Memory is bounded: an entry
// with no open connection whose windows have ended is dropped by a sweep (at most every 10 s,
// and whenever the table is full); with `max_entries` live entries a new client is not counted
// (it passes; the plugin logs that the table is full).
//
// The tables outlive the plugin instance that made them (registry below): a reload creates a
// new instance, and one with the same limits must go on with the same counters.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <unistd.h>
#include <unordered_map>
#include <vector>

namespace asiosmtpd::plugins::access {

using clock_type = std::chrono::steady_clock;

/// The configured limits; 0 = no limit.
struct limits {
    std::uint32_t connections_per_client = 0;
    std::uint32_t connections_per_minute = 0;
    std::uint32_t messages_per_minute = 0;
    std::uint32_t recipients_per_message = 0;
};

/// Whether two configurations count the same way (recipients_per_message needs no counter).
inline bool same_counters(const limits& a, const limits& b) noexcept
{
    return a.connections_per_client == b.connections_per_client &&
           a.connections_per_minute == b.connections_per_minute && a.messages_per_minute == b.messages_per_minute;
}

/// One client's counters.
struct client_counts {
    std::uint32_t open = 0;   ///< connections open now
    std::uint32_t conns = 0;  ///< connections in the window starting at conn_window
    std::uint32_t msgs = 0;   ///< messages in the window starting at msg_window
    clock_type::time_point conn_window{};
    clock_type::time_point msg_window{};
};

/// What a check decided. `limit` names the limit that was reached ("" when none was).
struct check_result {
    bool ok = true;
    const char* limit = "";
    std::uint32_t count = 0;  ///< the client's count, this event included
    std::uint32_t max = 0;
    bool untracked = false;  ///< the table was full: the client was let through uncounted
};

class counter_table {
public:
    static constexpr auto window = std::chrono::seconds(60);
    static constexpr auto sweep_interval = std::chrono::seconds(10);
    static constexpr std::size_t default_max_entries = 100000;

    explicit counter_table(std::size_t max_entries = default_max_entries) : max_entries_(max_entries) {}

    /// A new connection from `client`. When it passes, it counts as open until disconnect().
    check_result connect(const std::string& client, const limits& l, clock_type::time_point now)
    {
        const std::lock_guard guard(lock_);
        entry* e = find_or_add(client, now);
        if (e == nullptr) return untracked();
        const std::uint32_t rate = bump(e->conn_window, e->conns, now);
        if (l.connections_per_client != 0 && e->open >= l.connections_per_client)
            return {false, "connections_per_client", e->open + 1, l.connections_per_client};
        if (l.connections_per_minute != 0 && rate > l.connections_per_minute)
            return {false, "connections_per_minute", rate, l.connections_per_minute};
        ++e->open;
        return {true, "", e->open, l.connections_per_client};
    }

    /// The end of a connection connect() let through.
    void disconnect(const std::string& client)
    {
        const std::lock_guard guard(lock_);
        const auto it = entries_.find(client);
        if (it != entries_.end() && it->second.open > 0) --it->second.open;
    }

    /// A MAIL FROM from `client`.
    check_result message(const std::string& client, const limits& l, clock_type::time_point now)
    {
        const std::lock_guard guard(lock_);
        entry* e = find_or_add(client, now);
        if (e == nullptr) return untracked();
        const std::uint32_t rate = bump(e->msg_window, e->msgs, now);
        if (l.messages_per_minute != 0 && rate > l.messages_per_minute)
            return {false, "messages_per_minute", rate, l.messages_per_minute};
        return {true, "", rate, l.messages_per_minute};
    }

    /// Open connections of `client` (for tests and logs).
    std::uint32_t open(const std::string& client) const
    {
        const std::lock_guard guard(lock_);
        const auto it = entries_.find(client);
        return it == entries_.end() ? 0 : it->second.open;
    }

    std::size_t size() const
    {
        const std::lock_guard guard(lock_);
        return entries_.size();
    }

    /// Drops the entries that hold nothing any more.
    void sweep(clock_type::time_point now)
    {
        const std::lock_guard guard(lock_);
        sweep_locked(now);
    }

private:
    using entry = client_counts;

    static check_result untracked()
    {
        check_result r;
        r.untracked = true;
        return r;
    }

    // Counts one event in the window starting at `start`; returns the count, this one included.
    static std::uint32_t bump(clock_type::time_point& start, std::uint32_t& count, clock_type::time_point now)
    {
        if (count == 0 || now - start >= window) {
            start = now;
            count = 0;
        }
        if (count < UINT32_MAX) ++count;
        return count;
    }

    static bool idle(const entry& e, clock_type::time_point now)
    {
        return e.open == 0 && (e.conns == 0 || now - e.conn_window >= window) &&
               (e.msgs == 0 || now - e.msg_window >= window);
    }

    void sweep_locked(clock_type::time_point now)
    {
        last_sweep_ = now;
        for (auto it = entries_.begin(); it != entries_.end();) {
            if (idle(it->second, now)) it = entries_.erase(it);
            else ++it;
        }
    }

    entry* find_or_add(const std::string& client, clock_type::time_point now)
    {
        if (now - last_sweep_ >= sweep_interval) sweep_locked(now);
        const auto it = entries_.find(client);
        if (it != entries_.end()) return &it->second;
        if (entries_.size() >= max_entries_) {
            sweep_locked(now);
            if (entries_.size() >= max_entries_) return nullptr;
        }
        return &entries_[client];
    }

    mutable std::mutex lock_;
    std::unordered_map<std::string, entry> entries_;
    clock_type::time_point last_sweep_{};
    std::size_t max_entries_;
};

// ------------------------------------------------------------------------------------------
// The process-wide registry of tables, one per distinct `limits`, reference-counted.
//
// It must outlive a reload: the server loads a private copy of the plugin file for every
// (re)load, so each generation's access.so has statics of its own. The host keeps it for us
// (ABI 1.3 keep_state, registrar::keep_state): the first access instance makes it, every later
// one (also after a reload) gets the same object. Every loaded copy of the plugin works on the
// same memory with code of its own, so nothing shared may point into one copy (no virtual
// functions, no std::function, no shared_ptr control block: the copy that made it may be
// unloaded first): plain data and a manual reference count. The key carries a layout tag; a
// plugin built with another layout gets a registry of its own rather than misreading this one.
// ------------------------------------------------------------------------------------------

struct shared_table {
    limits key;
    std::uint64_t refs = 0;  // guarded by the registry's lock
    counter_table table;
};

struct table_registry {
    std::mutex lock;
    std::vector<shared_table*> tables;
};

/// The keep_state key: the layout version (v1: bump it whenever the meaning of the shared data
/// changes without its size changing) and the sizes of what is shared.
inline std::string registry_key()
{
    return "counters.v1." + std::to_string(sizeof(table_registry)) + "." + std::to_string(sizeof(shared_table)) + "." +
           std::to_string(sizeof(client_counts)) + "." +
           std::to_string(sizeof(std::unordered_map<std::string, client_counts>));
}

/// A counted reference to a shared table (copyable; any thread).
class table_ref {
public:
    table_ref() noexcept = default;
    /// The table counting as `l` does (same_counters) in `r`, made when no live one exists; `reused` says which.
    table_ref(table_registry& r, const limits& l, bool* reused = nullptr) : registry_(&r)
    {
        const std::lock_guard guard(r.lock);
        for (shared_table* t : r.tables)
            if (same_counters(t->key, l)) table_ = t;
        if (reused) *reused = table_ != nullptr;
        if (!table_) {
            table_ = new shared_table;
            table_->key = l;
            r.tables.push_back(table_);
        }
        ++table_->refs;
    }
    table_ref(const table_ref& o) noexcept : registry_(o.registry_), table_(o.table_)
    {
        if (table_) {
            const std::lock_guard guard(registry_->lock);
            ++table_->refs;
        }
    }
    table_ref& operator=(const table_ref& o) noexcept
    {
        if (this != &o) {
            table_ref copy(o);
            std::swap(registry_, copy.registry_);
            std::swap(table_, copy.table_);
        }
        return *this;
    }
    ~table_ref() { release(); }

    counter_table* operator->() const noexcept { return &table_->table; }
    counter_table& operator*() const noexcept { return table_->table; }
    explicit operator bool() const noexcept { return table_ != nullptr; }

private:
    void release() noexcept
    {
        if (!table_) return;
        shared_table* gone = nullptr;
        {
            const std::lock_guard guard(registry_->lock);
            if (--table_->refs == 0) {
                gone = table_;
                auto& v = registry_->tables;
                for (auto it = v.begin(); it != v.end(); ++it)
                    if (*it == gone) {
                        v.erase(it);
                        break;
                    }
            }
        }
        delete gone;
        table_ = nullptr;
    }

    table_registry* registry_ = nullptr;
    shared_table* table_ = nullptr;
};

}  // namespace asiosmtpd::plugins::access
