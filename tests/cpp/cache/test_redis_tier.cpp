// The Redis tier against a real redis-server that the test starts on a free port (no persistence),
// kills mid-test, and restarts. Skipped when redis-server is not installed (make setup installs it).
#include <chrono>

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include "cache/cache.h"
#include "cache_test_util.h"

namespace jit::cache {
namespace {

using Clock = std::chrono::steady_clock;
using testing::make_sample;
using testing::RedisServer;

class RedisTierTest : public ::testing::Test {
protected:
  void SetUp() override {
    if (!redis_available()) GTEST_SKIP() << "built without Redis support (JIT_WITH_REDIS found no libhiredis-dev)";
    std::string bin = testing::find_redis_server();
    if (bin.empty()) GTEST_SKIP() << "redis-server is not installed (apt-get install redis-server)";
    server_ = std::make_unique<RedisServer>(bin, testing::free_port());
    ASSERT_TRUE(server_->start()) << "redis-server did not start on port " << server_->port();
    settings_.redis_url = server_->url();
    settings_.redis_retry_after_ms = 100;
    settings_.redis_io_timeout_ms = 300;
  }

  // A raw command through hiredis, as another host (or a disk fault) would write.
  void raw_set(const std::string &key, const std::string &value) {
    redisContext *c = redisConnect("127.0.0.1", server_->port());
    ASSERT_TRUE(c && !c->err);
    const char *argv[] = {"SET", key.c_str(), value.data()};
    size_t lens[] = {3, key.size(), value.size()};
    auto *r = static_cast<redisReply *>(redisCommandArgv(c, 3, argv, lens));
    ASSERT_TRUE(r);
    freeReplyObject(r);
    redisFree(c);
  }

  std::unique_ptr<RedisServer> server_;
  CacheSettings settings_;
};

TEST_F(RedisTierTest, RoundTripAndErase) {
  metrics::Registry reg;
  auto tier = make_redis_tier(settings_, reg);
  auto a = make_sample("a", 64, 9.0f);
  EXPECT_FALSE(tier->get(a.key));
  tier->put(a.key, a.entry);
  auto hit = tier->get(a.key);
  ASSERT_TRUE(hit);
  EXPECT_EQ(testing::first_float(*hit), 9.0f);
  tier->erase(a.key);
  EXPECT_FALSE(tier->get(a.key));
  EXPECT_EQ(tier->stats().hits, 1u);
  EXPECT_EQ(tier->stats().misses, 2u);
}

TEST_F(RedisTierTest, TruncatedValueIsAMissCountedAndErased) {
  metrics::Registry reg;
  auto tier = make_redis_tier(settings_, reg);
  auto a = make_sample("a");
  raw_set(settings_.redis_key_prefix + a.key.hex(), a.entry.frame()->substr(0, a.entry.nbytes() - 10));
  EXPECT_FALSE(tier->get(a.key));
  EXPECT_EQ(tier->stats().corrupt, 1u);
  EXPECT_NE(reg.render().find("jit_cache_corrupt_total{tier=\"redis\"} 1"), std::string::npos);
  // Erased: the next lookup is a plain miss, not another corruption.
  EXPECT_FALSE(tier->get(a.key));
  EXPECT_EQ(tier->stats().corrupt, 1u);
}

TEST_F(RedisTierTest, OutageDegradesToQuickMissesAndReconnects) {
  metrics::Registry reg;
  auto tier = make_redis_tier(settings_, reg);
  auto a = make_sample("a"), b = make_sample("b");
  tier->put(a.key, a.entry);
  ASSERT_TRUE(tier->get(a.key));

  server_->kill_now();
  auto t0 = Clock::now();
  for (int i = 0; i < 50; ++i) {
    EXPECT_FALSE(tier->get(a.key));
    tier->put(b.key, b.entry); // must not throw or hang either
  }
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(2)) << "lookups hung on a dead Redis";

  // The same port again, empty (no persistence): after retry_after_ms the tier reconnects.
  ASSERT_TRUE(server_->start());
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {
    tier->put(b.key, b.entry);
    back = tier->get(b.key).has_value();
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(back) << "the tier did not reconnect after redis-server came back";
}

TEST_F(RedisTierTest, TieredCacheServesRedisHitsAndFillsMemory) {
  metrics::Registry reg;
  CacheSettings s = settings_;
  auto a = make_sample("a", 16, 4.0f);
  {
    auto writer = TieredCache::from_settings(s, reg); // memory + redis: "another host"
    writer->put(a.key, a.entry);
  }
  metrics::Registry reg2;
  auto cache = TieredCache::from_settings(s, reg2);
  ASSERT_TRUE(cache->get(a.key));
  EXPECT_TRUE(cache->tier(0).get(a.key));
}

TEST(RedisUrl, MalformedUrlThrows) {
  if (!redis_available()) GTEST_SKIP() << "built without Redis support";
  metrics::Registry reg;
  CacheSettings s;
  for (const char *url : {"http://x:1", "redis://host:notaport/0", "redis://host:1/x"}) {
    s.redis_url = url;
    EXPECT_THROW(make_redis_tier(s, reg), CacheError) << url;
  }
  s.redis_url = "redis://127.0.0.1:1/0"; // nothing listens: not an error, just misses
  auto tier = make_redis_tier(s, reg);
  EXPECT_FALSE(tier->get(CacheKey(1, 2)));
}

} // namespace
} // namespace jit::cache
