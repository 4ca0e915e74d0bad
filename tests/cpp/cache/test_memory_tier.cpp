// The memory LRU: its byte bound, its eviction order, and the bound under concurrent writers.
#include <atomic>
#include <thread>

#include <gtest/gtest.h>

#include "cache/cache.h"
#include "cache_test_util.h"

namespace jit::cache {
namespace {

using testing::make_sample;

TEST(MemoryTier, EvictsLeastRecentlyUsedWithinByteBound) {
  auto a = make_sample("a"), b = make_sample("b"), c = make_sample("c"), d = make_sample("d");
  CacheSettings s;
  s.memory_shards = 1;
  // Room for three entries and a bit, not four (each is charged its frame plus bookkeeping).
  s.memory_max_bytes = 3 * (a.entry.nbytes() + 160) + 100;
  metrics::Registry reg;
  auto tier = make_memory_tier(s, reg);
  tier->put(a.key, a.entry);
  tier->put(b.key, b.entry);
  tier->put(c.key, c.entry);
  ASSERT_TRUE(tier->get(a.key)); // a is now the most recently used; b the least
  tier->put(d.key, d.entry);
  EXPECT_TRUE(tier->get(a.key));
  EXPECT_FALSE(tier->get(b.key));
  EXPECT_TRUE(tier->get(c.key));
  EXPECT_TRUE(tier->get(d.key));
  TierStats st = tier->stats();
  EXPECT_EQ(st.entries, 3u);
  EXPECT_LE(st.bytes, s.memory_max_bytes);
  EXPECT_EQ(st.evictions, 1u);
  EXPECT_EQ(st.hits, 4u);
  EXPECT_EQ(st.misses, 1u);
  EXPECT_NE(reg.render().find("jit_cache_evictions_total{tier=\"memory\"} 1"), std::string::npos);

  tier->erase(a.key);
  EXPECT_FALSE(tier->get(a.key));
}

TEST(MemoryTier, TooLargeEntryIsNotCached) {
  auto big = make_sample("big", 4096);
  CacheSettings s;
  s.memory_shards = 1;
  s.memory_max_bytes = 1024;
  metrics::Registry reg;
  auto tier = make_memory_tier(s, reg);
  tier->put(big.key, big.entry);
  EXPECT_FALSE(tier->get(big.key));
  EXPECT_EQ(tier->stats().bytes, 0u);
}

TEST(MemoryTier, ConcurrentWritersAndReadersStayWithinBound) {
  CacheSettings s;
  s.memory_shards = 4;
  s.memory_max_bytes = 64 << 10;
  metrics::Registry reg;
  auto tier = make_memory_tier(s, reg);
  std::vector<testing::Sample> samples;
  for (int i = 0; i < 400; ++i)
    samples.push_back(make_sample("s" + std::to_string(i), 32, static_cast<float>(i)));
  std::atomic<bool> wrong{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t i = t; i < samples.size(); i += 2) {
          tier->put(samples[i].key, samples[i].entry);
          auto hit = tier->get(samples[(i * 7) % samples.size()].key);
          if (hit && testing::first_float(*hit) != static_cast<float>((i * 7) % samples.size())) wrong = true;
        }
      }
    });
  }
  for (auto &th : threads)
    th.join();
  EXPECT_FALSE(wrong);
  TierStats st = tier->stats();
  EXPECT_LE(st.bytes, s.memory_max_bytes);
  EXPECT_GT(st.entries, 0u);
  EXPECT_GT(st.evictions, 0u);
  // The gauge agrees with the shards' own count.
  EXPECT_NE(reg.render().find("jit_cache_bytes{tier=\"memory\"} " + std::to_string(st.bytes)), std::string::npos);
}

} // namespace
} // namespace jit::cache
