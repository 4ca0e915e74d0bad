// TieredCache: fills of the upper tiers, writes that never block, prune through every tier.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "cache/cache.h"
#include "cache_test_util.h"

namespace jit::cache {
namespace {

using Clock = std::chrono::steady_clock;
using testing::make_sample;
using testing::TempDir;

// A tier whose writes wait until the test opens the gate: a stuck disk or a slow network, in a
// form the test controls. (A test double of the Tier interface only; RocksDB and Redis are real.)
class GatedTier final : public Tier {
public:
  const std::string &name() const override { return name_; }
  std::optional<Entry> get(const CacheKey &) override { return std::nullopt; }
  void put(const CacheKey &, const Entry &) override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return open_; });
    ++writes;
  }
  void erase(const CacheKey &) override {}
  TierStats stats() const override { return {}; }
  void open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  std::atomic<int> writes{0};

private:
  const std::string name_ = "gated";
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
};

TEST(TieredCache, FullQueueDropsWritesWithoutBlocking) {
  CacheSettings s;
  s.write_queue_max_entries = 4;
  metrics::Registry reg;
  std::vector<std::unique_ptr<Tier>> tiers;
  tiers.push_back(make_memory_tier(s, reg));
  auto gated = std::make_unique<GatedTier>();
  GatedTier *gate = gated.get();
  tiers.push_back(std::move(gated));
  TieredCache cache(std::move(tiers), s, reg);

  std::vector<testing::Sample> samples;
  for (int i = 0; i < 20; ++i)
    samples.push_back(make_sample("s" + std::to_string(i)));
  // The first write reaches the writer thread, which then hangs in the stuck tier.
  int accepted = cache.put(samples[0].key, samples[0].entry);
  for (int i = 0; i < 1000 && cache.write_queue_depth() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  auto t0 = Clock::now();
  for (size_t i = 1; i < samples.size(); ++i)
    accepted += cache.put(samples[i].key, samples[i].entry);
  auto elapsed = Clock::now() - t0;
  EXPECT_LT(elapsed, std::chrono::milliseconds(500)) << "put blocked on the stuck tier";
  // One write is in the stuck tier, four wait in the queue; the rest were dropped.
  EXPECT_EQ(accepted, 5);
  EXPECT_EQ(cache.dropped_writes(), 15u);
  EXPECT_EQ(cache.write_queue_depth(), 4u);
  std::string text = reg.render();
  EXPECT_NE(text.find("jit_cache_dropped_writes_total 15"), std::string::npos) << text;
  EXPECT_NE(text.find("jit_cache_write_queue_depth 4"), std::string::npos) << text;
  // The memory tier was written inline: every entry is served already.
  for (const auto &smp : samples)
    EXPECT_TRUE(cache.get(smp.key));

  gate->open();
  cache.flush();
  EXPECT_EQ(gate->writes.load(), 5);
  EXPECT_EQ(cache.write_queue_depth(), 0u);
}

TEST(TieredCache, RocksDbHitFillsTheMemoryTier) {
  if (!rocksdb_available()) GTEST_SKIP() << "built without RocksDB (JIT_WITH_ROCKSDB found no librocksdb-dev)";
  TempDir dir;
  CacheSettings s;
  s.rocksdb_path = dir.path.string();
  auto a = make_sample("a", 32, 7.0f);
  {
    metrics::Registry reg;
    auto cache = TieredCache::from_settings(s, reg);
    ASSERT_EQ(cache->tier_count(), 2u);
    cache->put(a.key, a.entry);
  } // the destructor finishes the queued write to RocksDB
  metrics::Registry reg;
  auto cache = TieredCache::from_settings(s, reg);
  EXPECT_FALSE(cache->tier(0).get(a.key)) << "a fresh memory tier is empty";
  auto hit = cache->get(a.key);
  ASSERT_TRUE(hit);
  EXPECT_EQ(testing::first_float(*hit), 7.0f);
  auto mem = cache->tier(0).get(a.key);
  ASSERT_TRUE(mem) << "the RocksDB hit did not fill the memory tier";
  EXPECT_EQ(testing::first_float(*mem), 7.0f);
  auto stats = cache->stats();
  EXPECT_EQ(stats[1].tier, "rocksdb");
  EXPECT_EQ(stats[1].hits, 1u);
  EXPECT_NE(reg.render().find("jit_cache_hits_total{tier=\"rocksdb\"} 1"), std::string::npos);
}

TEST(TieredCache, PruneByVersionRemovesOldEntriesFromEveryTier) {
  TempDir dir;
  CacheSettings s;
  if (rocksdb_available()) s.rocksdb_path = dir.path.string();
  metrics::Registry reg;
  auto cache = TieredCache::from_settings(s, reg);
  auto old_entry = make_sample("x", 16, 1, "v1"), new_entry = make_sample("x", 16, 2, "v2");
  ASSERT_NE(old_entry.key, new_entry.key) << "a version bump must change the key";
  cache->put(old_entry.key, old_entry.entry);
  cache->put(new_entry.key, new_entry.entry);
  PruneSpec spec;
  spec.version = "v1";
  PruneResult r = cache->prune(spec);
  EXPECT_EQ(r.entries, cache->tier_count()); // one entry per tier
  EXPECT_FALSE(cache->get(old_entry.key));
  auto hit = cache->get(new_entry.key);
  ASSERT_TRUE(hit);
  EXPECT_EQ(hit->version(), "v2");
}

TEST(TieredCache, EraseRemovesEverywhere) {
  TempDir dir;
  CacheSettings s;
  if (rocksdb_available()) s.rocksdb_path = dir.path.string();
  metrics::Registry reg;
  auto cache = TieredCache::from_settings(s, reg);
  auto a = make_sample("a");
  cache->put(a.key, a.entry);
  cache->flush();
  cache->erase(a.key);
  EXPECT_FALSE(cache->get(a.key));
  for (size_t i = 0; i < cache->tier_count(); ++i)
    EXPECT_FALSE(cache->tier(i).get(a.key)) << cache->tier(i).name();
}

TEST(TieredCache, ConcurrentWriterAndReaderOfOneKey) {
  TempDir dir;
  CacheSettings s;
  if (rocksdb_available()) s.rocksdb_path = dir.path.string();
  metrics::Registry reg;
  auto cache = TieredCache::from_settings(s, reg);
  auto a = make_sample("a", 64, 5.0f);
  std::atomic<bool> stop{false}, bad{false};
  std::atomic<int> puts{0};
  std::thread writer([&] {
    do {
      cache->put(a.key, a.entry);
      ++puts;
    } while (!stop);
  });
  int hits = 0;
  // Until both have run a while together, however the two threads are scheduled (bounded at 10 s).
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (int i = 0; (i < 2000 || puts < 200 || hits < 100) && std::chrono::steady_clock::now() < deadline; ++i) {
    auto hit = cache->get(a.key);
    hits += hit.has_value();
    if (hit && testing::first_float(*hit) != 5.0f) bad = true;
  }
  stop = true;
  writer.join();
  EXPECT_GT(hits, 0);
  EXPECT_FALSE(bad);
  EXPECT_TRUE(cache->get(a.key)) << [&] {
    std::string out;
    for (const auto &st : cache->stats())
      out += st.tier + " entries=" + std::to_string(st.entries) + " bytes=" + std::to_string(st.bytes) +
             " hits=" + std::to_string(st.hits) + " misses=" + std::to_string(st.misses) +
             " corrupt=" + std::to_string(st.corrupt) + "; ";
    return out;
  }();
}

} // namespace
} // namespace jit::cache
