#include "common/thread_pool.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <vector>

namespace jit {
namespace {

thread_local bool tls_in_pool_task = false;

// One parallel_for call: tasks are claimed with an atomic counter, so there is no per-task queueing.
struct Job {
  const std::function<void(size_t)> *fn = nullptr;
  size_t n = 0;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};
  size_t helpers_wanted = 0;
  std::mutex err_mu;
  std::exception_ptr error;

  void run_tasks() {
    tls_in_pool_task = true;
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
      try {
        (*fn)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(err_mu);
        if (!error) error = std::current_exception();
      }
      done.fetch_add(1, std::memory_order_acq_rel);
    }
    tls_in_pool_task = false;
  }
};

class Pool {
public:
  explicit Pool(size_t workers) {
    for (size_t i = 0; i < workers; ++i)
      threads_.emplace_back([this] { loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto &t : threads_)
      t.join();
  }

  size_t workers() const { return threads_.size(); }

  void run(Job &job) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      ++generation_;
      claimed_ = 0;
    }
    cv_.notify_all();
    job.run_tasks();
    // Wait until every task has finished and no worker still holds a pointer to the job.
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return job.done.load() == job.n && active_ == 0; });
    job_ = nullptr;
  }

private:
  void loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return stop_ || (job_ != nullptr && generation_ != seen); });
      if (stop_) return;
      seen = generation_;
      Job *job = job_;
      if (claimed_ >= job->helpers_wanted) continue;
      ++claimed_;
      ++active_;
      lock.unlock();
      job->run_tasks();
      lock.lock();
      --active_;
      done_cv_.notify_all();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable done_cv_;
  Job *job_ = nullptr;
  uint64_t generation_ = 0;
  size_t claimed_ = 0;
  size_t active_ = 0;
  bool stop_ = false;
};

std::mutex g_pool_mu; // serialises parallel_for callers: one job at a time
Pool *g_pool = nullptr;
pid_t g_pool_pid = 0;

} // namespace

size_t parallel_threads() {
  static const size_t n = [] {
    if (const char *env = std::getenv("JIT_NUM_THREADS")) {
      long v = std::strtol(env, nullptr, 10);
      if (v >= 1) return static_cast<size_t>(v);
    }
    unsigned hw = std::thread::hardware_concurrency();
    return static_cast<size_t>(hw == 0 ? 1 : hw);
  }();
  return n;
}

void parallel_for(size_t n, const std::function<void(size_t)> &fn, size_t max_threads) {
  size_t threads = max_threads == 0 ? parallel_threads() : std::min(max_threads, parallel_threads());
  if (n <= 1 || threads <= 1 || tls_in_pool_task) {
    for (size_t i = 0; i < n; ++i)
      fn(i);
    return;
  }
  // Another caller holds the pool: run inline rather than queue behind it.
  std::unique_lock<std::mutex> lock(g_pool_mu, std::try_to_lock);
  if (!lock.owns_lock()) {
    for (size_t i = 0; i < n; ++i)
      fn(i);
    return;
  }
  if (g_pool == nullptr || g_pool_pid != getpid()) {
    // After fork the old pool's threads do not exist in this process; its memory is leaked on
    // purpose, because destroying it would join threads that are not there.
    g_pool = new Pool(parallel_threads() - 1);
    g_pool_pid = getpid();
  }
  Job job;
  job.fn = &fn;
  job.n = n;
  job.helpers_wanted = std::min(threads - 1, n - 1);
  g_pool->run(job);
  if (job.error) std::rethrow_exception(job.error);
}

} // namespace jit
