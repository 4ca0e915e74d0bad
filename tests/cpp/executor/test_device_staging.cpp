// The staging pool's bookkeeping (executor/device_staging.h), on pageable memory: the same code
// runs on pinned memory in the CUDA path, where only the allocation policy differs. Blocks are
// reused and never handed out twice while leased, the budget bounds what the pool holds (idle
// blocks too small for a request are freed to make room; leased ones never are), fallbacks are
// counted, and leases outlive the pool.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "executor/device_staging.h"

namespace jit::executor {
namespace {

constexpr size_t kKiB = size_t{1} << 10;
constexpr size_t kMiB = size_t{1} << 20;

// Pageable memory that counts what it allocates and frees, standing in for pinned memory.
struct CountingAllocator {
  std::shared_ptr<std::atomic<int64_t>> live = std::make_shared<std::atomic<int64_t>>(0);
  std::shared_ptr<std::atomic<int64_t>> calls = std::make_shared<std::atomic<int64_t>>(0);
  HostAllocate policy() const {
    auto l = live, c = calls;
    return [l, c](size_t bytes) {
      ++*c;
      std::shared_ptr<void> block = allocate_pageable(bytes);
      ++*l;
      return std::shared_ptr<void>(block.get(), [l, block](void *) mutable {
        block.reset();
        --*l;
      });
    };
  }
};

TEST(StagingPool, BlockSizesArePowersOfTwoFrom64KiB) {
  EXPECT_EQ(StagingPool::block_size(0), 64 * kKiB);
  EXPECT_EQ(StagingPool::block_size(1), 64 * kKiB);
  EXPECT_EQ(StagingPool::block_size(64 * kKiB), 64 * kKiB);
  EXPECT_EQ(StagingPool::block_size(64 * kKiB + 1), 128 * kKiB);
  EXPECT_EQ(StagingPool::block_size(3 * kMiB), 4 * kMiB);
  EXPECT_EQ(StagingPool::block_size(256 * kMiB), 256 * kMiB);
}

TEST(StagingPool, AReleasedBlockIsReusedAndNothingIsAllocatedInSteadyState) {
  CountingAllocator alloc;
  StagingPool pool(16 * kMiB, alloc.policy());
  void *first = nullptr;
  for (int i = 0; i < 100; ++i) {
    StagingBuffer b = pool.acquire(100 * kKiB + static_cast<size_t>(i)); // sizes that share a block size
    ASSERT_NE(b.data, nullptr);
    EXPECT_TRUE(b.pooled);
    EXPECT_EQ(b.size, 100 * kKiB + static_cast<size_t>(i));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data) % 64, 0u) << "64-byte aligned";
    std::memset(b.data, 0xab, b.size); // the whole request is writable
    if (i == 0) first = b.data;
    EXPECT_EQ(b.data, first) << "the one idle block is handed out again";
    EXPECT_EQ(pool.stats().leased_bytes, 128 * kKiB);
  }
  const StagingStats s = pool.stats();
  EXPECT_EQ(*alloc.calls, 1);
  EXPECT_EQ(s.allocations, 1u);
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.pooled_bytes, 128 * kKiB);
  EXPECT_EQ(s.leased_bytes, 0u);
  EXPECT_EQ(s.fallbacks, 0u);
}

TEST(StagingPool, ALeasedBlockIsNeverHandedOutAgainUntilEveryCopyOfItsLeaseIsGone) {
  StagingPool pool(16 * kMiB, allocate_pageable);
  StagingBuffer a = pool.acquire(kKiB);
  // An aliasing pointer into the block (as an output slice is) keeps the lease, as copies do.
  std::shared_ptr<const void> slice(a.owner, static_cast<const uint8_t *>(a.data) + 128);
  std::shared_ptr<void> copy = a.owner;
  void *a_data = a.data;
  a = StagingBuffer();
  StagingBuffer b = pool.acquire(kKiB);
  EXPECT_NE(b.data, a_data);
  EXPECT_EQ(pool.stats().blocks, 2u);
  copy.reset();
  StagingBuffer c = pool.acquire(kKiB);
  EXPECT_NE(c.data, a_data) << "the slice still holds the first block";
  EXPECT_EQ(pool.stats().blocks, 3u);
  slice.reset();
  StagingBuffer d = pool.acquire(kKiB);
  EXPECT_EQ(d.data, a_data) << "released: the first block is idle again";
  EXPECT_EQ(pool.stats().blocks, 3u);
}

TEST(StagingPool, TheSmallestIdleBlockThatFitsIsTaken) {
  StagingPool pool(16 * kMiB, allocate_pageable);
  StagingBuffer small = pool.acquire(64 * kKiB), mid = pool.acquire(256 * kKiB), big = pool.acquire(kMiB);
  void *mid_data = mid.data, *big_data = big.data;
  small = mid = big = StagingBuffer();
  EXPECT_EQ(pool.acquire(100 * kKiB).data, mid_data);
  EXPECT_EQ(pool.acquire(300 * kKiB).data, big_data);
  EXPECT_EQ(pool.stats().allocations, 3u);
}

TEST(StagingPool, OverTheBudgetLeasesFallBackToPageableMemoryAndAreCounted) {
  CountingAllocator alloc;
  StagingPool pool(kMiB, alloc.policy());
  // A request larger than the whole budget.
  StagingBuffer huge = pool.acquire(2 * kMiB);
  EXPECT_FALSE(huge.pooled);
  ASSERT_NE(huge.data, nullptr);
  std::memset(huge.data, 1, huge.size);
  StagingStats s = pool.stats();
  EXPECT_EQ(s.fallbacks, 1u);
  EXPECT_EQ(s.fallback_bytes, 2 * kMiB);
  EXPECT_EQ(s.pooled_bytes, 0u);
  EXPECT_EQ(*alloc.calls, 0) << "fallback memory does not come from the pool's allocator";

  // Leased blocks hold the budget: the next request falls back, and the leased block stays.
  StagingBuffer held = pool.acquire(512 * kKiB);
  EXPECT_TRUE(held.pooled);
  StagingBuffer over = pool.acquire(768 * kKiB);
  EXPECT_FALSE(over.pooled);
  s = pool.stats();
  EXPECT_EQ(s.fallbacks, 2u);
  EXPECT_EQ(s.pooled_bytes, 512 * kKiB);
  EXPECT_LE(s.pooled_bytes, kMiB);
  held = over = huge = StagingBuffer();
  EXPECT_EQ(pool.stats().leased_bytes, 0u);
}

TEST(StagingPool, IdleBlocksTooSmallAreFreedToMakeRoomWithinTheBudget) {
  CountingAllocator alloc;
  StagingPool pool(kMiB, alloc.policy());
  { StagingBuffer a = pool.acquire(256 * kKiB), b = pool.acquire(256 * kKiB); }
  EXPECT_EQ(*alloc.live, 2);
  StagingBuffer big = pool.acquire(kMiB); // 512 KiB idle + 1 MiB > budget: the idle ones go
  EXPECT_TRUE(big.pooled);
  const StagingStats s = pool.stats();
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.blocks, 1u);
  EXPECT_EQ(s.pooled_bytes, kMiB);
  EXPECT_EQ(s.fallbacks, 0u);
  EXPECT_EQ(*alloc.live, 1) << "evicted blocks are freed";
}

TEST(StagingPool, AfterFreeRunsOnceEachTimeBlocksAreFreedOutsideTheLock) {
  CountingAllocator alloc;
  int flushes = 0;
  StagingPool *live_pool = nullptr; // cleared before the pool is destroyed
  auto pool = std::make_unique<StagingPool>(kMiB, alloc.policy(), allocate_pageable, [&] {
    ++flushes;
    EXPECT_EQ(*alloc.live, 0) << "the freed blocks are gone before the hook runs";
    if (live_pool) (void)live_pool->stats(); // outside the lock: this would deadlock under it
  });
  live_pool = pool.get();
  { StagingBuffer a = pool->acquire(256 * kKiB), b = pool->acquire(256 * kKiB); }
  { StagingBuffer again = pool->acquire(200 * kKiB); } // reuse frees nothing
  EXPECT_EQ(flushes, 0);
  { StagingBuffer big = pool->acquire(kMiB); } // evicts both idle blocks, at once
  EXPECT_EQ(flushes, 1);
  EXPECT_EQ(pool->stats().evictions, 2u);
  live_pool = nullptr;
  pool.reset(); // the idle 1 MiB block is freed with the pool
  EXPECT_EQ(flushes, 2);
  EXPECT_EQ(*alloc.live, 0);
}

TEST(StagingPool, AFailingAfterFreeLeavesTheLeaseAndTheAccountsIntact) {
  CountingAllocator alloc;
  StagingPool pool(kMiB, alloc.policy(), allocate_pageable, [] { throw std::runtime_error("flush failed"); });
  { StagingBuffer a = pool.acquire(512 * kKiB); }
  StagingBuffer big = pool.acquire(kMiB);
  EXPECT_TRUE(big.pooled);
  const StagingStats s = pool.stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.pooled_bytes, kMiB);
  EXPECT_EQ(s.leased_bytes, kMiB);
}

TEST(StagingPool, IdleBlocksAreKeptWhenFreeingThemWouldNotMakeRoom) {
  CountingAllocator alloc;
  StagingPool pool(kMiB, alloc.policy());
  StagingBuffer held = pool.acquire(512 * kKiB);
  void *idle_data = nullptr;
  {
    StagingBuffer idle = pool.acquire(256 * kKiB);
    idle_data = idle.data;
  }
  // A 1 MiB block cannot fit beside the leased 512 KiB whatever is freed: the idle block stays.
  StagingBuffer over = pool.acquire(768 * kKiB);
  EXPECT_FALSE(over.pooled);
  StagingStats s = pool.stats();
  EXPECT_EQ(s.evictions, 0u);
  EXPECT_EQ(s.blocks, 2u);
  EXPECT_EQ(pool.acquire(200 * kKiB).data, idle_data) << "the kept block serves the next small request";
  // 512 KiB does fit beside the leased block once the idle 256 KiB one is freed.
  StagingBuffer fits = pool.acquire(512 * kKiB);
  EXPECT_TRUE(fits.pooled);
  s = pool.stats();
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.pooled_bytes, kMiB);
  EXPECT_EQ(s.fallbacks, 1u);
  EXPECT_EQ(*alloc.live, 2);
}

TEST(StagingPool, AZeroBudgetSendsEverythingToFallback) {
  CountingAllocator alloc;
  StagingPool pool(0, alloc.policy());
  for (size_t n : {size_t{0}, size_t{1}, 64 * kKiB}) {
    StagingBuffer b = pool.acquire(n);
    EXPECT_FALSE(b.pooled);
    EXPECT_NE(b.data, nullptr);
  }
  EXPECT_EQ(pool.stats().fallbacks, 3u);
  EXPECT_EQ(*alloc.calls, 0);
}

TEST(StagingPool, AFailedAllocationFallsBackAndReleasesItsReservation) {
  int calls = 0;
  StagingPool pool(kMiB, [&calls](size_t) -> std::shared_ptr<void> {
    ++calls;
    throw std::runtime_error("cudaHostAlloc failed");
  });
  StagingBuffer b = pool.acquire(kKiB);
  EXPECT_FALSE(b.pooled);
  ASSERT_NE(b.data, nullptr);
  const StagingStats s = pool.stats();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(s.fallbacks, 1u);
  EXPECT_EQ(s.pooled_bytes, 0u);
  EXPECT_EQ(s.leased_bytes, 0u);
  EXPECT_EQ(s.blocks, 0u);
}

TEST(StagingPool, LeasesOutliveThePoolAndAreFreedWhenReleased) {
  CountingAllocator alloc;
  StagingBuffer kept;
  {
    StagingPool pool(kMiB, alloc.policy());
    kept = pool.acquire(kKiB);
    { StagingBuffer idle = pool.acquire(kKiB); }
    EXPECT_EQ(*alloc.live, 2);
  }
  EXPECT_EQ(*alloc.live, 1) << "the pool's idle block is freed with the pool";
  std::memset(kept.data, 7, kept.size);
  kept = StagingBuffer();
  EXPECT_EQ(*alloc.live, 0) << "a lease released after the pool frees its block";
}

// Threads lease, fill with their own pattern, hold for a while (some across later leases), and
// check the pattern before releasing: a block handed out twice would be overwritten.
TEST(StagingPool, ConcurrentLeasesNeverShareMemory) {
  CountingAllocator alloc;
  StagingPool pool(32 * kMiB, alloc.policy());
  std::atomic<int> corrupted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      std::vector<std::pair<StagingBuffer, uint8_t>> held;
      for (int i = 0; i < 2000; ++i) {
        const size_t n = 1 + rng() % (300 * kKiB);
        const auto tag = static_cast<uint8_t>(rng());
        StagingBuffer b = pool.acquire(n);
        std::memset(b.data, tag, n);
        held.emplace_back(std::move(b), tag);
        if (held.size() > 3 || rng() % 2 == 0) {
          const size_t k = rng() % held.size();
          const auto &[buf, want] = held[k];
          const auto *p = static_cast<const uint8_t *>(buf.data);
          for (size_t j = 0; j < buf.size; j += 997)
            if (p[j] != want) ++corrupted;
          if (p[buf.size - 1] != want) ++corrupted;
          held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
        }
      }
    });
  }
  for (auto &th : threads)
    th.join();
  EXPECT_EQ(corrupted.load(), 0);
  const StagingStats s = pool.stats();
  EXPECT_EQ(s.leased_bytes, 0u);
  EXPECT_LE(s.pooled_bytes, 32 * kMiB);
  EXPECT_EQ(static_cast<int64_t>(s.blocks), *alloc.live);
  EXPECT_LT(s.allocations, 200u) << "blocks are reused, not allocated per lease";
}

} // namespace
} // namespace jit::executor
