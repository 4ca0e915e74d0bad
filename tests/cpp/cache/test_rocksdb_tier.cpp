// The RocksDB tier on a real database in a temporary directory: persistence across reopen, the size
// limit, corruption, and prune. Built only when CMake found RocksDB (JIT_WITH_ROCKSDB).
#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include "cache/cache.h"
#include "cache_test_util.h"

namespace jit::cache {
namespace {

using testing::make_sample;
using testing::TempDir;

std::string raw_key(const CacheKey &k) {
  std::string out(16, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(k.high() >> (56 - 8 * i));
    out[8 + i] = static_cast<char>(k.low() >> (56 - 8 * i));
  }
  return out;
}

// Opens the database directly (the tier closed) and applies `fn` to it: the test plays a disk fault.
template <class Fn> void with_raw_db(const std::string &path, Fn fn) {
  rocksdb::DB *db = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), path, &db).ok());
  fn(db);
  delete db;
}

CacheSettings settings_for(const TempDir &dir) {
  CacheSettings s;
  s.rocksdb_path = dir.path.string();
  return s;
}

TEST(RocksDbTier, RoundTripAndPersistenceAcrossReopen) {
  TempDir dir;
  auto a = make_sample("a", 64, 3.0f), b = make_sample("b", 64, 4.0f);
  {
    metrics::Registry reg;
    auto tier = make_rocksdb_tier(settings_for(dir), reg);
    EXPECT_FALSE(tier->get(a.key));
    tier->put(a.key, a.entry);
    tier->put(b.key, b.entry);
    auto hit = tier->get(a.key);
    ASSERT_TRUE(hit);
    EXPECT_EQ(testing::first_float(*hit), 3.0f);
    tier->erase(b.key);
    EXPECT_FALSE(tier->get(b.key));
  }
  metrics::Registry reg;
  auto tier = make_rocksdb_tier(settings_for(dir), reg);
  auto hit = tier->get(a.key);
  ASSERT_TRUE(hit);
  EXPECT_EQ(testing::first_float(*hit), 3.0f);
  EXPECT_EQ(hit->version(), "v1");
  EXPECT_FALSE(tier->get(b.key));
  EXPECT_EQ(tier->stats().hits, 1u);
}

TEST(RocksDbTier, SizeLimitPrunesTheOldest) {
  TempDir dir;
  CacheSettings s = settings_for(dir);
  std::vector<testing::Sample> samples;
  for (int i = 0; i < 20; ++i)
    samples.push_back(make_sample("s" + std::to_string(i), 256, static_cast<float>(i), "v1", 1000 + i));
  const uint64_t each = samples[0].entry.nbytes() + 16;
  s.rocksdb_max_bytes = 10 * each;
  s.rocksdb_prune_to_fraction = 0.5;
  metrics::Registry reg;
  auto tier = make_rocksdb_tier(s, reg);
  for (const auto &smp : samples)
    tier->put(smp.key, smp.entry);
  TierStats st = tier->stats();
  EXPECT_LE(st.bytes, s.rocksdb_max_bytes);
  EXPECT_GT(st.evictions, 0u);
  // The newest survive, the oldest are gone.
  EXPECT_TRUE(tier->get(samples.back().key));
  EXPECT_FALSE(tier->get(samples.front().key));
  size_t present = 0;
  for (const auto &smp : samples)
    present += tier->get(smp.key).has_value();
  EXPECT_LE(present * each, s.rocksdb_max_bytes);
}

TEST(RocksDbTier, CorruptValueIsAMissCountedAndErased) {
  TempDir dir;
  auto a = make_sample("a"), b = make_sample("b");
  {
    metrics::Registry reg;
    auto tier = make_rocksdb_tier(settings_for(dir), reg);
    tier->put(a.key, a.entry);
    tier->put(b.key, b.entry);
  }
  with_raw_db(dir.path.string(), [&](rocksdb::DB *db) {
    std::string v;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), raw_key(a.key), &v).ok());
    v[v.size() - 5] ^= 0x10; // one flipped bit in the payload
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), raw_key(a.key), v).ok());
    // b's slot gets a's (intact) bytes: a value under the wrong key.
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), raw_key(b.key), *a.entry.frame()).ok());
  });
  metrics::Registry reg;
  auto tier = make_rocksdb_tier(settings_for(dir), reg);
  EXPECT_FALSE(tier->get(a.key));
  EXPECT_FALSE(tier->get(b.key));
  TierStats st = tier->stats();
  EXPECT_EQ(st.corrupt, 2u);
  EXPECT_EQ(st.misses, 2u);
  EXPECT_NE(reg.render().find("jit_cache_corrupt_total{tier=\"rocksdb\"} 2"), std::string::npos) << reg.render();
  tier.reset();
  with_raw_db(dir.path.string(), [&](rocksdb::DB *db) {
    std::string v;
    EXPECT_TRUE(db->Get(rocksdb::ReadOptions(), raw_key(a.key), &v).IsNotFound()) << "the corrupt value was not erased";
    EXPECT_TRUE(db->Get(rocksdb::ReadOptions(), raw_key(b.key), &v).IsNotFound());
  });
}

TEST(RocksDbTier, TruncatedValueIsAMiss) {
  TempDir dir;
  auto a = make_sample("a");
  {
    metrics::Registry reg;
    make_rocksdb_tier(settings_for(dir), reg)->put(a.key, a.entry);
  }
  with_raw_db(dir.path.string(), [&](rocksdb::DB *db) {
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), raw_key(a.key), a.entry.frame()->substr(0, 50)).ok());
  });
  metrics::Registry reg;
  auto tier = make_rocksdb_tier(settings_for(dir), reg);
  EXPECT_FALSE(tier->get(a.key));
  EXPECT_EQ(tier->stats().corrupt, 1u);
}

TEST(RocksDbTier, PruneByVersionAndAge) {
  TempDir dir;
  metrics::Registry reg;
  auto tier = make_rocksdb_tier(settings_for(dir), reg);
  auto old1 = make_sample("x", 8, 1, "v1", 1000), old2 = make_sample("y", 8, 1, "v1", 5000);
  auto cur = make_sample("x", 8, 1, "v2", 2000), cur_new = make_sample("z", 8, 1, "v2", 9000);
  for (const auto *s : {&old1, &old2, &cur, &cur_new})
    tier->put(s->key, s->entry);
  PruneSpec by_version;
  by_version.version = "v1";
  EXPECT_EQ(tier->prune(by_version).entries, 2u);
  EXPECT_FALSE(tier->get(old1.key));
  EXPECT_FALSE(tier->get(old2.key));
  EXPECT_TRUE(tier->get(cur.key));
  PruneSpec by_age;
  by_age.older_than_unix_ms = 5000;
  EXPECT_EQ(tier->prune(by_age).entries, 1u);
  EXPECT_FALSE(tier->get(cur.key));
  EXPECT_TRUE(tier->get(cur_new.key));
}

TEST(RocksDbTier, UnopenablePathThrows) {
  CacheSettings s;
  s.rocksdb_path = "/proc/definitely/not/writable";
  metrics::Registry reg;
  EXPECT_THROW(make_rocksdb_tier(s, reg), CacheError);
}

} // namespace
} // namespace jit::cache
