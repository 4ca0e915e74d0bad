// Dynamic batching: batches go when full or when the oldest request has waited long enough,
// only compatible requests share a batch, the queue is bounded, deadlines expire, and close()
// drains. Waits that must end are made unbounded (an hour) so that a bug hangs the test (ctest
// times it out) instead of depending on timing.
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "engine/batcher.h"

namespace jit::engine {
namespace {

using std::chrono::hours;
using std::chrono::microseconds;
using std::chrono::milliseconds;

Pending req(const std::string &sig, size_t samples, int id) {
  Pending p;
  p.signature = sig;
  p.samples = samples;
  p.payload = std::make_shared<int>(id);
  return p;
}

int id_of(const Pending &p) {
  return *static_cast<int *>(p.payload.get());
}

TEST(Batcher, FullBatchGoesWithoutWaitingForTheDelay) {
  Batcher b({4, hours(1), 100});
  for (int i = 0; i < 4; ++i)
    ASSERT_EQ(b.push(req("a", 1, i)), Admit::kOk);
  std::vector<Pending> batch, expired;
  ASSERT_TRUE(b.pop(batch, expired));
  ASSERT_EQ(batch.size(), 4u);
  for (int i = 0; i < 4; ++i)
    EXPECT_EQ(id_of(batch[i]), i); // arrival order
  EXPECT_EQ(b.queued_samples(), 0u);
}

TEST(Batcher, PartialBatchGoesAfterTheDelay) {
  Batcher b({64, milliseconds(2), 100});
  ASSERT_EQ(b.push(req("a", 3, 1)), Admit::kOk);
  std::vector<Pending> batch, expired;
  ASSERT_TRUE(b.pop(batch, expired));
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0].samples, 3u);
}

TEST(Batcher, OnlyEqualSignaturesShareABatch) {
  Batcher b({8, milliseconds(1), 100});
  b.push(req("a", 1, 1));
  b.push(req("b", 1, 2));
  b.push(req("a", 1, 3));
  std::vector<Pending> batch, expired;
  ASSERT_TRUE(b.pop(batch, expired));
  ASSERT_EQ(batch.size(), 2u); // the oldest group first
  EXPECT_EQ(batch[0].signature, "a");
  EXPECT_EQ(batch[1].signature, "a");
  ASSERT_TRUE(b.pop(batch, expired));
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0].signature, "b");
}

TEST(Batcher, NeverExceedsMaxBatchSize) {
  Batcher b({8, hours(1), 100});
  for (int i = 0; i < 5; ++i)
    b.push(req("a", 3, i)); // 15 samples: batches of 6, 6, then 3 on close
  std::vector<Pending> batch, expired;
  ASSERT_TRUE(b.pop(batch, expired));
  EXPECT_EQ(batch.size(), 2u);
  ASSERT_TRUE(b.pop(batch, expired));
  EXPECT_EQ(batch.size(), 2u);
  b.close();
  ASSERT_TRUE(b.pop(batch, expired));
  EXPECT_EQ(batch.size(), 1u);
  EXPECT_FALSE(b.pop(batch, expired));
}

TEST(Batcher, RefusesWhenFullTooLargeOrClosed) {
  Batcher b({4, hours(1), 6});
  EXPECT_EQ(b.push(req("a", 5, 0)), Admit::kTooLarge);
  EXPECT_EQ(b.push(req("a", 4, 1)), Admit::kOk);
  EXPECT_EQ(b.push(req("b", 2, 2)), Admit::kOk);
  EXPECT_EQ(b.push(req("c", 1, 3)), Admit::kQueueFull);
  EXPECT_EQ(b.queued_samples(), 6u);
  EXPECT_EQ(b.queued_requests(), 2u);
  b.close();
  EXPECT_EQ(b.push(req("a", 1, 4)), Admit::kClosed);
}

TEST(Batcher, ExpiredRequestsComeBackSeparately) {
  Batcher b({8, hours(1), 100});
  Pending p = req("a", 1, 7);
  p.deadline = Clock::now() + milliseconds(1);
  b.push(std::move(p));
  b.push(req("a", 1, 8)); // no deadline: stays queued
  std::vector<Pending> batch, expired;
  ASSERT_TRUE(b.pop(batch, expired));
  EXPECT_TRUE(batch.empty());
  ASSERT_EQ(expired.size(), 1u);
  EXPECT_EQ(id_of(expired[0]), 7);
  EXPECT_EQ(b.queued_requests(), 1u);
}

TEST(Batcher, CloseDrainsEverythingThenStops) {
  Batcher b({4, hours(1), 100});
  b.push(req("a", 1, 1));
  b.push(req("b", 1, 2));
  b.close();
  std::vector<Pending> batch, expired;
  std::set<int> seen;
  while (b.pop(batch, expired)) {
    for (auto &p : batch)
      seen.insert(id_of(p));
  }
  EXPECT_EQ(seen, (std::set<int>{1, 2}));
}

TEST(Batcher, ManyProducersAndConsumersLoseNothing) {
  Batcher b({16, microseconds(200), 100000});
  constexpr int kProducers = 4, kPerProducer = 2000;
  std::atomic<int> popped{0};
  std::vector<std::atomic<int>> seen(kProducers * kPerProducer);
  std::vector<std::thread> consumers;
  for (int c = 0; c < 3; ++c) {
    consumers.emplace_back([&] {
      std::vector<Pending> batch, expired;
      while (b.pop(batch, expired)) {
        size_t samples = 0;
        for (auto &p : batch) {
          seen[id_of(p)].fetch_add(1);
          samples += p.samples;
          EXPECT_EQ(p.signature, batch[0].signature);
        }
        EXPECT_LE(samples, 16u);
        popped += static_cast<int>(batch.size());
      }
    });
  }
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        int id = p * kPerProducer + i;
        ASSERT_EQ(b.push(req(id % 3 ? "x" : "y", 1 + id % 4, id)), Admit::kOk);
      }
    });
  }
  for (auto &t : producers)
    t.join();
  b.close();
  for (auto &t : consumers)
    t.join();
  EXPECT_EQ(popped.load(), kProducers * kPerProducer);
  for (auto &s : seen)
    EXPECT_EQ(s.load(), 1);
}

} // namespace
} // namespace jit::engine
