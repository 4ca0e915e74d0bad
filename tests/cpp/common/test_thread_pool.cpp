// The process thread pool: every index runs exactly once, and errors propagate.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "common/thread_pool.h"

namespace jit {
namespace {

TEST(ThreadPool, EachIndexOnce) {
  std::vector<std::atomic<int>> hits(1000);
  parallel_for(hits.size(), [&](size_t i) { hits[i].fetch_add(1); });
  for (auto &h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ThreadPool, RethrowsFirstError) {
  EXPECT_THROW(parallel_for(64, [](size_t i) { if (i == 13) throw std::runtime_error("boom"); }), std::runtime_error);
}

} // namespace
} // namespace jit
