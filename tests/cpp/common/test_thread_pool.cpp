// The process thread pool (common/thread_pool.h): every index runs exactly once, an error is
// rethrown only after every task has finished, max_threads caps the threads used, nested and
// concurrent calls neither deadlock nor mix their work, and a child process after fork() gets a
// working pool of its own.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/thread_pool.h"

namespace jit {
namespace {

// More threads than a small CI machine has cores, so that the pool has several workers to get
// wrong. parallel_threads() reads this once, on first use; an explicit JIT_NUM_THREADS wins.
[[maybe_unused]] const bool kManyThreads = [] { return setenv("JIT_NUM_THREADS", "4", /*overwrite=*/0) == 0; }();

using std::chrono::milliseconds;

// Kills the test process with SIGALRM if the scope is still running after `seconds`: a deadlock
// fails the test instead of hanging the suite.
class Deadline {
public:
  explicit Deadline(unsigned seconds) { alarm(seconds); }
  ~Deadline() { alarm(0); }
};

// Thread ids seen by tasks, for checking where they ran.
class ThreadSet {
public:
  void add() {
    std::lock_guard<std::mutex> lock(mu_);
    ids_.insert(std::this_thread::get_id());
  }
  std::set<std::thread::id> ids() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ids_;
  }

private:
  mutable std::mutex mu_;
  std::set<std::thread::id> ids_;
};

// Runs n tasks that each take `ms` milliseconds and returns the threads they ran on.
std::set<std::thread::id> threads_used(size_t n, int ms, size_t max_threads) {
  ThreadSet seen;
  parallel_for(
      n,
      [&](size_t) {
        seen.add();
        std::this_thread::sleep_for(milliseconds(ms));
      },
      max_threads);
  return seen.ids();
}

TEST(ThreadPool, EachIndexRunsExactlyOnce) {
  for (size_t n : {size_t{2}, size_t{3}, size_t{17}, size_t{1000}, size_t{100000}}) {
    std::vector<std::atomic<int>> hits(n);
    parallel_for(n, [&](size_t i) { hits[i].fetch_add(1); });
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
  }
}

TEST(ThreadPool, ZeroTasksNeverCallsFn) {
  std::atomic<int> calls{0};
  parallel_for(0, [&](size_t) { calls.fetch_add(1); });
  parallel_for(
      0, [&](size_t) { calls.fetch_add(1); }, 1);
  EXPECT_EQ(calls.load(), 0);
}

TEST(ThreadPool, OneTaskRunsOnTheCallingThread) {
  ThreadSet seen;
  size_t index = 99;
  parallel_for(1, [&](size_t i) {
    seen.add();
    index = i;
  });
  EXPECT_EQ(index, 0u);
  EXPECT_EQ(seen.ids(), std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST(ThreadPool, ParallelThreadsIsAtLeastOne) {
  EXPECT_GE(parallel_threads(), 1u);
}

TEST(ThreadPool, UsesSeveralThreadsWhenAllowed) {
  if (parallel_threads() < 2) GTEST_SKIP() << "JIT_NUM_THREADS=1";
  Deadline deadline(30);
  // Without this, the max_threads tests below could pass with a pool that never runs anything.
  EXPECT_GT(threads_used(64, 2, 0).size(), 1u);
}

TEST(ThreadPool, MaxThreadsOneRunsEverythingOnTheCaller) {
  Deadline deadline(30);
  EXPECT_EQ(threads_used(64, 1, 1), std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST(ThreadPool, MaxThreadsCapsTheThreadsUsedCallerIncluded) {
  if (parallel_threads() < 3) GTEST_SKIP() << "needs a pool of at least 3 threads";
  Deadline deadline(30);
  for (int round = 0; round < 5; ++round) {
    const std::set<std::thread::id> ids = threads_used(64, 1, 2);
    EXPECT_LE(ids.size(), 2u) << "round " << round;
    EXPECT_EQ(ids.count(std::this_thread::get_id()), 1u) << "the caller takes part";
  }
}

TEST(ThreadPool, RethrowsTheErrorOfAFailingTask) {
  for (size_t max_threads : {size_t{0}, size_t{1}}) {
    try {
      parallel_for(
          64,
          [](size_t i) {
            if (i == 13) throw std::runtime_error("boom 13");
          },
          max_threads);
      ADD_FAILURE() << "no exception with max_threads=" << max_threads;
    } catch (const std::runtime_error &e) {
      EXPECT_STREQ(e.what(), "boom 13");
    }
  }
}

TEST(ThreadPool, NoTaskIsStillRunningWhenTheErrorIsRethrown) {
  Deadline deadline(30);
  // Tasks on the workers are slow and tasks on the caller quick, so the caller runs out of tasks
  // while workers are still busy: parallel_for must wait for them before it rethrows.
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int> running{0};
  std::atomic<int> finished{0};
  std::atomic<int> on_workers{0};
  try {
    parallel_for(32, [&](size_t i) {
      running.fetch_add(1);
      const bool worker = std::this_thread::get_id() != caller;
      if (worker) on_workers.fetch_add(1);
      std::this_thread::sleep_for(milliseconds(worker ? 30 : 1));
      finished.fetch_add(1);
      running.fetch_sub(1);
      if (i == 0) throw std::runtime_error("first");
    });
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error &) {
    EXPECT_EQ(running.load(), 0) << "parallel_for rethrew while tasks were still running";
  }
  const int at_throw = finished.load();
  std::this_thread::sleep_for(milliseconds(50));
  EXPECT_EQ(finished.load(), at_throw) << "a task ran after parallel_for returned";
  EXPECT_EQ(at_throw, 32) << "every task runs, even after one has failed";
  if (parallel_threads() >= 2) {
    EXPECT_GT(on_workers.load(), 0) << "no task ran on a worker: the test proved nothing";
  }
}

TEST(ThreadPool, PoolStillWorksAfterAnError) {
  Deadline deadline(30);
  EXPECT_THROW(parallel_for(16, [](size_t) { throw std::logic_error("every task fails"); }), std::logic_error);
  std::vector<std::atomic<int>> hits(500);
  parallel_for(hits.size(), [&](size_t i) { hits[i].fetch_add(1); });
  for (auto &h : hits)
    ASSERT_EQ(h.load(), 1);
  if (parallel_threads() >= 2) {
    EXPECT_GT(threads_used(64, 2, 0).size(), 1u);
  }
}

TEST(ThreadPool, NestedCallsRunInlineWithoutDeadlock) {
  Deadline deadline(30);
  constexpr size_t kOuter = 8, kMid = 6, kInner = 16;
  std::vector<std::atomic<int>> hits(kOuter * kMid * kInner);
  std::atomic<int> foreign{0}; // inner tasks that ran on another thread than their outer task
  parallel_for(kOuter, [&](size_t o) {
    const std::thread::id outer_thread = std::this_thread::get_id();
    parallel_for(kMid, [&](size_t m) {
      parallel_for(kInner, [&](size_t i) {
        if (std::this_thread::get_id() != outer_thread) foreign.fetch_add(1);
        hits[(o * kMid + m) * kInner + i].fetch_add(1);
      });
    });
  });
  for (size_t i = 0; i < hits.size(); ++i)
    ASSERT_EQ(hits[i].load(), 1) << i;
  EXPECT_EQ(foreign.load(), 0) << "nested calls must run inline on the task's own thread";
}

TEST(ThreadPool, CallerUsesThePoolAgainAfterANestedCall) {
  if (parallel_threads() < 2) GTEST_SKIP() << "JIT_NUM_THREADS=1";
  Deadline deadline(30);
  parallel_for(4, [](size_t) { parallel_for(4, [](size_t) {}); });
  // The "inside a task" state must not leak out of the outer call.
  EXPECT_GT(threads_used(64, 2, 0).size(), 1u);
}

TEST(ThreadPool, ConcurrentCallersEachGetAllTheirIndices) {
  Deadline deadline(60);
  constexpr int kCallers = 6, kRounds = 200;
  std::atomic<int> bad{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int r = 0; r < kRounds; ++r) {
        const size_t n = 50 + static_cast<size_t>(c * 7 + r % 13);
        std::vector<std::atomic<int>> hits(n);
        parallel_for(n, [&](size_t i) { hits[i].fetch_add(1); });
        for (auto &h : hits) {
          if (h.load() != 1) bad.fetch_add(1);
        }
      }
    });
  }
  for (auto &t : callers)
    t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(ThreadPool, ConcurrentCallersDoNotReceiveEachOthersErrors) {
  Deadline deadline(60);
  constexpr int kRounds = 300;
  std::atomic<int> thrower_missed{0}, quiet_got{0}, quiet_wrong{0};
  std::thread thrower([&] {
    for (int r = 0; r < kRounds; ++r) {
      try {
        parallel_for(40, [](size_t i) {
          if (i == 7) throw std::runtime_error("thrower");
        });
        thrower_missed.fetch_add(1);
      } catch (const std::runtime_error &) {
      }
    }
  });
  std::thread quiet([&] {
    for (int r = 0; r < kRounds; ++r) {
      std::atomic<size_t> sum{0};
      try {
        parallel_for(40, [&](size_t i) { sum.fetch_add(i); });
      } catch (...) {
        quiet_got.fetch_add(1);
      }
      if (sum.load() != 40 * 39 / 2) quiet_wrong.fetch_add(1);
    }
  });
  thrower.join();
  quiet.join();
  EXPECT_EQ(thrower_missed.load(), 0);
  EXPECT_EQ(quiet_got.load(), 0) << "an error from one caller reached another";
  EXPECT_EQ(quiet_wrong.load(), 0);
}

// ---- fork ----------------------------------------------------------------------------------------

// Exit codes of the forked children below.
constexpr int kChildOk = 0, kChildWrongCounts = 2, kChildOneThread = 3;

// What a child does after fork(): run parallel_for, check every index ran once, and (when
// `want_parallel`) that more than one thread took part, i.e. that fresh workers started.
int child_body(bool want_parallel) {
  alarm(10); // a hung child dies instead of hanging; the parent sees the signal
  std::vector<std::atomic<int>> hits(256);
  ThreadSet seen;
  parallel_for(hits.size(), [&](size_t i) {
    seen.add();
    hits[i].fetch_add(1);
    std::this_thread::sleep_for(milliseconds(1));
  });
  for (auto &h : hits) {
    if (h.load() != 1) return kChildWrongCounts;
  }
  if (want_parallel && seen.ids().size() < 2) return kChildOneThread;
  return kChildOk;
}

// Waits up to `seconds` for `pid`, killing it if it is still running. Returns its wait status, or
// -1 if it had to be killed.
int wait_with_timeout(pid_t pid, int seconds) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  int status = 0;
  while (std::chrono::steady_clock::now() < until) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -2;
    std::this_thread::sleep_for(milliseconds(10));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

std::string describe_status(int status) {
  if (status == -1) return "child hung and was killed";
  if (status == -2) return "waitpid failed";
  if (WIFEXITED(status)) return "child exited with " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "child died of signal " + std::to_string(WTERMSIG(status));
  return "child status " + std::to_string(status);
}

TEST(ThreadPoolFork, ChildAfterForkRunsParallelForOnFreshWorkers) {
  if (parallel_threads() < 2) GTEST_SKIP() << "JIT_NUM_THREADS=1";
  // The parent's pool exists and its workers have run tasks.
  ASSERT_GT(threads_used(64, 1, 0).size(), 1u);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0) << "fork failed";
  if (pid == 0) _exit(child_body(/*want_parallel=*/true));
  const int status = wait_with_timeout(pid, 20);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == kChildOk) << describe_status(status);
  // The parent's pool is unaffected.
  EXPECT_GT(threads_used(64, 1, 0).size(), 1u);
}

TEST(ThreadPoolFork, GrandchildAfterTwoForksAlsoWorks) {
  ASSERT_GE(threads_used(64, 1, 0).size(), 1u);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int rc = child_body(parallel_threads() >= 2);
    if (rc != kChildOk) _exit(rc);
    const pid_t grandchild = fork();
    if (grandchild < 0) _exit(10);
    if (grandchild == 0) _exit(child_body(parallel_threads() >= 2));
    const int status = wait_with_timeout(grandchild, 10);
    _exit(status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : 11);
  }
  const int status = wait_with_timeout(pid, 30);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == kChildOk) << describe_status(status);
}

TEST(ThreadPoolFork, ForkWhileAnotherThreadIsInsideParallelForDoesNotHangTheChild) {
  if (parallel_threads() < 2) GTEST_SKIP() << "JIT_NUM_THREADS=1";
  // A thread keeps the pool busy; fork() copies the pool's locks in their held state.
  std::atomic<bool> started{false};
  std::thread busy([&] {
    parallel_for(200, [&](size_t) {
      started.store(true);
      std::this_thread::sleep_for(milliseconds(2));
    });
  });
  while (!started.load())
    std::this_thread::sleep_for(milliseconds(1));
  const pid_t pid = fork();
  if (pid == 0) _exit(child_body(/*want_parallel=*/false)); // inline is fine; hanging is not
  busy.join();
  ASSERT_GE(pid, 0) << "fork failed";
  const int status = wait_with_timeout(pid, 20);
  EXPECT_TRUE(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == kChildOk) << describe_status(status);
}

} // namespace
} // namespace jit
