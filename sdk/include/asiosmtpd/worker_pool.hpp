// SPDX-License-Identifier: Apache-2.0
// asiosmtpd/worker_pool.hpp: N threads that run a function for each posted job, taken in order
// of posting. It is where a plugin's blocking work goes (a password hash, a disk fsync, an
// upstream server) while the hook that needs it is suspended (plugin.h T4); the job's
// sdk::pending is then completed from the worker thread. Header-only, C++17, standard library
// only; compiled into the plugin, so nothing of it crosses the ABI.
//
// Stopping (stop(), or the destructor) lets each thread finish the job it is running and take
// no other, then joins every thread (plugin.h T7). Jobs still queued are never run: they are
// handed to stop()'s function, if any, and destroyed in order of posting (a job's uncompleted
// sdk::pending then answers 451 by itself). A job function that throws ends neither its thread
// nor the server. Not here: a bound on the queue (the host's hook timeout answers 451 for a
// job that waits too long), priorities, cancelling a running job.
#ifndef ASIOSMTPD_WORKER_POOL_HPP
#define ASIOSMTPD_WORKER_POOL_HPP

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace asiosmtpd::sdk {

/// A fixed set of threads running `run(job)` for each posted job, first posted, first taken.
///
/// @par Thread Safety
/// post(), try_post() and stopping() may be called from any thread, jobs of this pool
/// included, at any time before the destructor starts. stop() may be called from any thread
/// but the pool's own (a job that stops its own pool would wait for itself), also more than
/// once. The destructor stops the pool as stop() does: destroy it from a thread that is not
/// one of its workers (for a plugin: its destructor, plugin.h T1/T7).
///
/// @tparam Job what a worker receives: movable without throwing (sdk::pending, strings,
///         vectors, smart pointers are). One value per piece of work; it is destroyed on the
///         worker right after `run` returns (or throws).
template <class Job>
class worker_pool {
    static_assert(std::is_nothrow_move_constructible_v<Job>, "worker_pool: Job must be nothrow move constructible");

public:
    /// What a worker does with a job; it owns the job meanwhile and may complete it.
    using run_function = std::function<void(Job&)>;
    /// Called on the worker, with the job and the exception, when `run` throws.
    using error_function = std::function<void(Job&, std::exception_ptr)>;

    /// Starts `threads` threads, each waiting for jobs.
    /// @param threads how many jobs may run at once; at least 1.
    /// @param run the job function, called on a worker thread for each job, by several
    ///        threads at once when `threads` > 1.
    /// @param on_error optional: called on the worker with the job and the exception when
    ///        `run` throws (to log it, or to complete the job with a reply of its own). An
    ///        exception from `on_error` itself is swallowed. Either way the thread goes on with
    ///        the next job, and the failed job is destroyed as usual: an sdk::pending it holds
    ///        and nobody completed answers "451 4.3.0 Error: internal" and logs a warning.
    /// @throw std::invalid_argument when `threads` is 0 or `run` is empty; std::system_error
    ///        when a thread cannot be started (those already started are joined first).
    worker_pool(std::size_t threads, run_function run, error_function on_error = {})
        : run_(std::move(run)),
          on_error_(std::move(on_error))
    {
        if (threads == 0) throw std::invalid_argument("worker_pool: at least one thread");
        if (!run_) throw std::invalid_argument("worker_pool: no job function");
        threads_.reserve(threads);
        try {
            for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
        } catch (...) {
            stop();
            throw;
        }
    }

    worker_pool(const worker_pool&) = delete;
    worker_pool& operator=(const worker_pool&) = delete;

    /// stop(): waits for the jobs running, joins the threads, destroys the queued jobs unrun.
    ~worker_pool() { stop(); }

    /// Queues `job` for the next free thread and returns true. When the pool is stopping it
    /// returns false instead and the job is destroyed unrun at once, like a job still queued
    /// at stop(). Throws what making room in the queue throws (std::bad_alloc); the job is
    /// then destroyed unrun.
    bool post(Job job) { return enqueue(job); }

    /// post() that never throws and takes the job only when it returns true. On false (the
    /// pool is stopping, or no memory for the queue) `job` is left as it was, still the
    /// caller's: for places that must not throw, such as a destructor.
    bool try_post(Job& job) noexcept
    {
        try {
            return enqueue(job);
        } catch (...) {
            return false;
        }
    }

    /// True once stop() (or the destructor) has begun: a long job may check it to give up
    /// early (its thread is being waited for).
    bool stopping() const noexcept { return stop_.load(std::memory_order_acquire); }

    /// Stops the pool: each thread finishes the job it is running and takes no other; returns
    /// once all are joined and every job still queued was passed, one at a time and in order
    /// of posting, to `unrun(job)` (on this thread, e.g. to complete it with a reply of its
    /// own; an exception from it is swallowed) and destroyed. post() refuses jobs from the
    /// start of the first call on; a second call finds nothing left to do.
    template <class Unrun>
    void stop(Unrun&& unrun)
    {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_.store(true, std::memory_order_release);
        }
        cv_.notify_all();
        {
            std::lock_guard<std::mutex> lock(join_mutex_);
            for (auto& t : threads_) {
                if (t.joinable()) t.join();
            }
        }
        // No lock is held while a job is handled or destroyed: its destructor may post() (it
        // is refused) or complete an sdk::pending.
        for (;;) {
            std::unique_lock<std::mutex> lock(mutex_);
            if (jobs_.empty()) return;
            Job job = std::move(jobs_.front());
            jobs_.pop_front();
            lock.unlock();
            try {
                unrun(job);
            } catch (...) {}
        }
    }

    /// stop() that destroys the queued jobs unrun.
    void stop()
    {
        stop([](Job&) noexcept {});
    }

private:
    // Moves `job` into the queue, or leaves it alone: when stopping (false), or when the queue
    // cannot grow (push_back's strong guarantee, with a move that cannot throw).
    bool enqueue(Job& job)
    {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (stop_.load(std::memory_order_relaxed)) return false;
            jobs_.push_back(std::move(job));
        }
        cv_.notify_one();
        return true;
    }

    void loop() noexcept
    {
        for (;;) {
            std::unique_lock<std::mutex> lock(mutex_);
            cv_.wait(lock, [this] { return stop_.load(std::memory_order_relaxed) || !jobs_.empty(); });
            if (stop_.load(std::memory_order_relaxed)) return;
            Job job = std::move(jobs_.front());
            jobs_.pop_front();
            lock.unlock();
            execute(job);
        }  // the job is destroyed here, on the worker, without the lock
    }

    void execute(Job& job) noexcept
    {
        try {
            run_(job);
        } catch (...) {
            // A plugin must not take the server down: the job fails alone.
            if (on_error_) {
                try {
                    on_error_(job, std::current_exception());
                } catch (...) {}
            }
        }
    }

    const run_function run_;
    const error_function on_error_;
    std::mutex mutex_;  // guards jobs_ and the writes of stop_
    std::condition_variable cv_;
    std::deque<Job> jobs_;
    std::atomic<bool> stop_{false};
    std::mutex join_mutex_;  // two stop() calls at once join each thread once
    std::vector<std::thread> threads_;
};

}  // namespace asiosmtpd::sdk

#endif  // ASIOSMTPD_WORKER_POOL_HPP
