// SPDX-License-Identifier: Apache-2.0
// The SDK's worker pool (asiosmtpd/worker_pool.hpp): jobs taken in order of posting, N threads
// at once, what stop() and the destructor do with running and queued jobs, a throwing job
// function, post() after stop, and try_post() when memory is short (operator new below fails
// on request, on the test thread only). Waits are bounded; none sleeps to synchronise.
#include <asiosmtpd/worker_pool.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

// ---- allocation failure on request ----------------------------------------------------------
// Every form of the global operator new and delete a program may replace, on malloc/free (the
// sanitizer runtimes see consistent pairs). Allocations fail while the calling thread's flag
// is set; nothing else changes.
namespace {
thread_local bool fail_allocations = false;

void* allocate(std::size_t n)
{
    if (fail_allocations) return nullptr;
    return std::malloc(n == 0 ? 1 : n);
}
}  // namespace

void* operator new(std::size_t n)
{
    if (void* p = allocate(n)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n)
{
    if (void* p = allocate(n)) return p;
    throw std::bad_alloc();
}
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate(n); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

namespace sdk = asiosmtpd::sdk;
using namespace std::chrono_literals;

constexpr auto patience = 10s;  // a bound on every wait: a broken pool fails, never hangs

// What happened, in order, from any thread; waits (bounded) for a condition on it.
class recorder {
public:
    void note(std::string event)
    {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            events_.push_back(std::move(event));
        }
        cv_.notify_all();
    }
    std::vector<std::string> events() const
    {
        std::lock_guard<std::mutex> lock(mutex_);
        return events_;
    }
    bool wait_for(const std::string& event)
    {
        std::unique_lock<std::mutex> lock(mutex_);
        return cv_.wait_for(lock, patience, [&] {
            for (const auto& e : events_)
                if (e == event) return true;
            return false;
        });
    }
    bool wait_for_count(std::size_t n)
    {
        std::unique_lock<std::mutex> lock(mutex_);
        return cv_.wait_for(lock, patience, [&] { return events_.size() >= n; });
    }

private:
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::vector<std::string> events_;
};

// A door jobs wait at until the test opens it (bounded: a job never waits for ever).
class gate {
public:
    void open()
    {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            open_ = true;
        }
        cv_.notify_all();
    }
    bool pass()
    {
        std::unique_lock<std::mutex> lock(mutex_);
        return cv_.wait_for(lock, patience, [this] { return open_; });
    }

private:
    std::mutex mutex_;
    std::condition_variable cv_;
    bool open_ = false;
};

// A job that notes "destroy <id>" when it dies, unless it was moved from (as an sdk::pending
// completes when it dies).
struct tracked {
    tracked(int i, recorder& r) : id(i), rec(&r) {}
    tracked(tracked&& o) noexcept : id(o.id), rec(std::exchange(o.rec, nullptr)) {}
    tracked& operator=(tracked&&) = delete;
    ~tracked()
    {
        if (rec) rec->note("destroy " + std::to_string(id));
    }
    int id;
    recorder* rec;
};

// stopping() has no waiting form: poll it, bounded.
bool sees_stopping(const sdk::worker_pool<tracked>& pool)
{
    const auto until = std::chrono::steady_clock::now() + patience;
    while (!pool.stopping()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::sleep_for(1ms);
    }
    return true;
}

// One thread, busy with job 1 until the pool is stopping; jobs 2..n wait in the queue.
struct busy_pool {
    explicit busy_pool(int jobs)
    {
        pool.emplace(1, [this](tracked& t) {
            rec.note("run " + std::to_string(t.id));
            // Still running when stop() or the destructor begins; it finishes all the same.
            if (t.id == 1 && sees_stopping(*self)) rec.note("1 saw stopping");
        });
        self = &*pool;  // before the first post(), which the worker synchronises with
        for (int i = 1; i <= jobs; ++i) pool->post(tracked(i, rec));
    }
    recorder rec;
    sdk::worker_pool<tracked>* self = nullptr;
    std::optional<sdk::worker_pool<tracked>> pool;  // last: its worker uses the members above
};

using events = std::vector<std::string>;

// Posts 0..count-1 to a pool of `threads`; the numbers in the order the jobs ran (fewer if
// they did not all run within the bound).
std::vector<int> run_numbers(std::size_t threads, int count)
{
    std::mutex m;
    std::condition_variable cv;
    std::vector<int> seen;
    sdk::worker_pool<int> pool(threads, [&](int& n) {
        std::lock_guard<std::mutex> lock(m);
        seen.push_back(n);
        cv.notify_all();
    });
    for (int i = 0; i < count; ++i) EXPECT_TRUE(pool.post(i));
    {
        std::unique_lock<std::mutex> lock(m);
        EXPECT_TRUE(cv.wait_for(lock, patience, [&] { return seen.size() == static_cast<std::size_t>(count); }));
    }
    pool.stop();
    return seen;
}

std::vector<int> zero_to(int count)
{
    std::vector<int> out;
    for (int i = 0; i < count; ++i) out.push_back(i);
    return out;
}

TEST(worker_pool, one_thread_runs_each_job_once_in_order_of_posting) { EXPECT_EQ(run_numbers(1, 1000), zero_to(1000)); }

TEST(worker_pool, many_threads_run_every_job_once)
{
    std::vector<int> seen = run_numbers(4, 2000);
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, zero_to(2000));
}

TEST(worker_pool, runs_as_many_jobs_at_once_as_it_has_threads)
{
    constexpr std::size_t threads = 3;
    std::mutex m;
    std::condition_variable cv;
    std::size_t running = 0, most = 0, done = 0;
    std::set<std::thread::id> ids;
    gate g;
    sdk::worker_pool<int> pool(threads, [&](int&) {
        {
            std::lock_guard<std::mutex> lock(m);
            ids.insert(std::this_thread::get_id());
            most = std::max(most, ++running);
            cv.notify_all();
        }
        g.pass();
        std::lock_guard<std::mutex> lock(m);
        --running;
        ++done;
        cv.notify_all();
    });
    for (int i = 0; i < 7; ++i) pool.post(i);
    {
        // All threads are inside a job at the same moment: none can finish before the gate.
        std::unique_lock<std::mutex> lock(m);
        ASSERT_TRUE(cv.wait_for(lock, patience, [&] { return running == threads; }));
    }
    g.open();
    std::unique_lock<std::mutex> lock(m);
    ASSERT_TRUE(cv.wait_for(lock, patience, [&] { return done == 7; }));
    EXPECT_EQ(most, threads);  // never more than its threads
    EXPECT_EQ(ids.size(), threads);
    EXPECT_EQ(ids.count(std::this_thread::get_id()), 0u);
}

TEST(worker_pool, destructor_waits_for_the_running_job_and_destroys_queued_ones_unrun_in_order)
{
    busy_pool b(4);
    ASSERT_TRUE(b.rec.wait_for("run 1"));
    b.pool.reset();
    EXPECT_EQ(b.rec.events(), (events{"run 1", "1 saw stopping", "destroy 1", "destroy 2", "destroy 3", "destroy 4"}));
}

TEST(worker_pool, stop_hands_queued_jobs_over_in_order_then_refuses_new_ones)
{
    busy_pool b(3);
    recorder& rec = b.rec;
    auto& pool = b.pool;
    EXPECT_FALSE(pool->stopping());
    ASSERT_TRUE(rec.wait_for("run 1"));
    pool->stop([&](tracked& t) { rec.note("unrun " + std::to_string(t.id)); });
    EXPECT_TRUE(pool->stopping());
    EXPECT_EQ(rec.events(),
              (events{"run 1", "1 saw stopping", "destroy 1", "unrun 2", "destroy 2", "unrun 3", "destroy 3"}));

    // post() after stop: refused, the job destroyed unrun at once.
    EXPECT_FALSE(pool->post(tracked(4, rec)));
    EXPECT_EQ(rec.events().back(), "destroy 4");
    // try_post() after stop: refused, the job still the caller's.
    {
        tracked t(5, rec);
        EXPECT_FALSE(pool->try_post(t));
        EXPECT_EQ(t.rec, &rec);
        EXPECT_EQ(t.id, 5);
        EXPECT_EQ(rec.events().back(), "destroy 4");
    }
    EXPECT_EQ(rec.events().back(), "destroy 5");

    // A second stop() and the destructor find nothing to do.
    const std::size_t before = rec.events().size();
    pool->stop([&](tracked&) { rec.note("unexpected"); });
    pool.reset();
    EXPECT_EQ(rec.events().size(), before);
}

TEST(worker_pool, stop_goes_on_when_the_unrun_function_throws_or_posts)
{
    busy_pool b(3);
    recorder& rec = b.rec;
    ASSERT_TRUE(rec.wait_for("run 1"));
    // No lock is held while a queued job is handed over: posting from there is refused, not a
    // deadlock; an exception from there is swallowed and the job destroyed all the same.
    b.pool->stop([&](tracked& t) {
        const bool queued = b.self->post(tracked(10 + t.id, rec));
        rec.note(queued ? "queued" : "refused");
        throw std::runtime_error("unrun fails");
    });
    EXPECT_EQ(rec.events(), (events{"run 1", "1 saw stopping", "destroy 1",  //
                                    "destroy 12", "refused", "destroy 2",    //
                                    "destroy 13", "refused", "destroy 3"}));
}

TEST(worker_pool, a_throwing_job_fails_alone)
{
    recorder rec;
    sdk::worker_pool<tracked> pool(
        1,
        [&](tracked& t) {
            rec.note("run " + std::to_string(t.id));
            if (t.id == 1) throw std::runtime_error("disk on fire");
            if (t.id == 2) throw 42;  // not a std::exception
            if (t.id == 3) throw std::logic_error("and the handler throws too");
        },
        [&](tracked& t, std::exception_ptr e) {
            std::string what = "error " + std::to_string(t.id) + ": ";
            try {
                std::rethrow_exception(e);
            } catch (const std::exception& x) {
                what += x.what();
            } catch (...) {
                what += "something else";
            }
            rec.note(what);
            if (t.id == 3) throw std::runtime_error("from on_error");
        });
    for (int i = 1; i <= 4; ++i) pool.post(tracked(i, rec));
    ASSERT_TRUE(rec.wait_for("destroy 4"));
    // The failed job reaches on_error alive, then dies as any job (an sdk::pending in it would
    // answer 451); the same thread goes on with the next one.
    EXPECT_EQ(rec.events(), (events{"run 1", "error 1: disk on fire", "destroy 1",                //
                                    "run 2", "error 2: something else", "destroy 2",              //
                                    "run 3", "error 3: and the handler throws too", "destroy 3",  //
                                    "run 4", "destroy 4"}));
}

TEST(worker_pool, a_throwing_job_without_an_error_function_is_dropped)
{
    recorder rec;
    sdk::worker_pool<tracked> pool(1, [&](tracked& t) {
        if (t.id == 1) throw std::runtime_error("lost");
        rec.note("run " + std::to_string(t.id));
    });
    pool.post(tracked(1, rec));
    pool.post(tracked(2, rec));
    ASSERT_TRUE(rec.wait_for("destroy 2"));
    EXPECT_EQ(rec.events(), (events{"destroy 1", "run 2", "destroy 2"}));
}

TEST(worker_pool, a_job_may_post_to_its_own_pool)
{
    recorder rec;
    sdk::worker_pool<int>* self = nullptr;
    sdk::worker_pool<int> pool(1, [&](int& n) {
        rec.note("run " + std::to_string(n));
        if (n < 3) self->post(n + 1);  // no lock is held while a job runs
    });
    self = &pool;
    pool.post(1);
    ASSERT_TRUE(rec.wait_for("run 3"));
    EXPECT_EQ(rec.events(), (events{"run 1", "run 2", "run 3"}));
}

// A job that only stores its id when it dies (tracked's note would allocate, which fails here).
struct marker {
    marker(int i, std::atomic<int>& d) : id(i), died(&d) {}
    marker(marker&& o) noexcept : id(o.id), died(std::exchange(o.died, nullptr)) {}
    marker& operator=(marker&&) = delete;
    ~marker()
    {
        if (died) died->store(id);
    }
    int id;
    std::atomic<int>* died;
};

TEST(worker_pool, try_post_leaves_the_job_with_the_caller_when_memory_is_short)
{
    std::atomic<int> died{0};
    gate g;
    sdk::worker_pool<marker> pool(1, [&](marker&) { g.pass(); });
    pool.post(marker(1, died));  // the thread waits at the gate: the queue only grows

    // The queue allocates a block now and then: post until it needs one and cannot have it.
    bool refused = false;
    int id = 2;
    std::optional<marker> kept;
    fail_allocations = true;
    for (; id < 100000; ++id) {
        marker m(id, died);
        if (!pool.try_post(m)) {
            refused = true;
            kept.emplace(std::move(m));
            break;
        }
    }
    fail_allocations = false;
    ASSERT_TRUE(refused);
    ASSERT_TRUE(kept);
    EXPECT_EQ(kept->died, &died);  // not moved from: still the caller's
    EXPECT_EQ(kept->id, id);
    EXPECT_EQ(died.load(), 0);

    // post() in the same situation throws, and the job dies unrun.
    fail_allocations = true;
    bool threw = false;
    try {
        pool.post(std::move(*kept));
    } catch (const std::bad_alloc&) {
        threw = true;
    }
    fail_allocations = false;
    EXPECT_TRUE(threw);
    EXPECT_EQ(died.load(), id);

    // With memory again, both work; every job runs once the gate opens.
    marker again(-1, died);
    EXPECT_TRUE(pool.try_post(again));
    EXPECT_EQ(again.died, nullptr);
    EXPECT_TRUE(pool.post(marker(-2, died)));
    g.open();
    const auto until = std::chrono::steady_clock::now() + patience;
    while (died.load() != -2 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    EXPECT_EQ(died.load(), -2);
}

TEST(worker_pool, refuses_no_threads_and_no_function)
{
    EXPECT_THROW(sdk::worker_pool<int>(0, [](int&) {}), std::invalid_argument);
    EXPECT_THROW(sdk::worker_pool<int>(1, nullptr), std::invalid_argument);
}

}  // namespace
