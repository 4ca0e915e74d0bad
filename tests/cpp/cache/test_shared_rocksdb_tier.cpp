// The shared RocksDB tier across real processes (fork + waitpid) on a real directory: concurrent
// writers reading each other, slots of exited and killed processes, corruption in another process's
// slot, fork after open, running out of slots, the size limit and prune. Built only when CMake found
// RocksDB (JIT_WITH_ROCKSDB).
#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache/cache.h"
#include "cache/cache_internal.h"
#include "cache_test_util.h"

namespace jit::cache {
namespace {

using internal::key_bytes;
using testing::first_float;
using testing::make_sample;
using testing::Sample;
using testing::TempDir;

// Runs `fn` in a forked child and returns its pid. The child exits with fn's result (100 when it
// throws) without running the parent's destructors, and SIGALRM ends it after `seconds`: a hang fails
// the test rather than hanging it.
template <class Fn> pid_t spawn(Fn fn, unsigned seconds = 60) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::alarm(seconds);
    int rc = 100;
    try {
      rc = fn();
    } catch (const std::exception &e) {
      std::fprintf(stderr, "child %d: %s\n", ::getpid(), e.what());
    }
    ::_exit(rc);
  }
  return pid;
}

// The child's exit status, or 128 + the signal that ended it.
int wait_for(pid_t pid) {
  int st = 0;
  if (::waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

// One-byte signals between processes; wait() gives up after a timeout instead of blocking forever.
struct Pipe {
  int fds[2] = {-1, -1};
  Pipe() { EXPECT_EQ(::pipe(fds), 0); }
  ~Pipe() {
    ::close(fds[0]);
    ::close(fds[1]);
  }
  void signal(int n = 1) {
    for (int i = 0; i < n; ++i)
      EXPECT_EQ(::write(fds[1], "x", 1), 1);
  }
  bool wait(int timeout_ms = 30000) {
    pollfd p{fds[0], POLLIN, 0};
    char c;
    return ::poll(&p, 1, timeout_ms) == 1 && ::read(fds[0], &c, 1) == 1;
  }
};

CacheSettings shared_settings(const TempDir &dir, size_t max_slots = 8) {
  CacheSettings s;
  s.rocksdb_path = dir.path.string();
  s.rocksdb_shared = true;
  s.rocksdb_shared_max_slots = max_slots;
  s.rocksdb_shared_refresh_ms = 0; // every lookup sees the others' latest writes: deterministic tests
  return s;
}

// The slot databases in the directory, by name.
std::vector<std::string> slot_dirs(const TempDir &dir) {
  std::vector<std::string> out;
  for (const auto &e : std::filesystem::directory_iterator(dir.path)) {
    std::string name = e.path().filename().string();
    if (e.is_directory() && name.size() == 8 && name.rfind("slot-", 0) == 0) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<Sample> samples(const std::string &prefix, int n, float base, size_t floats = 256, int64_t created_ms = 0) {
  std::vector<Sample> out;
  for (int i = 0; i < n; ++i)
    out.push_back(make_sample(prefix + std::to_string(i), floats, base + static_cast<float>(i), "v1",
                              created_ms ? created_ms + i : 0));
  return out;
}

// True when `tier` serves every sample with its own value.
bool has_all(Tier &tier, const std::vector<Sample> &ss) {
  for (const auto &s : ss) {
    auto hit = tier.get(s.key);
    if (!hit || first_float(*hit) != s.data[0]) return false;
  }
  return true;
}

TEST(SharedRocksDbTier, TwoProcessesWriteConcurrentlyAndReadEachOther) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  const std::vector<Sample> mine[2] = {samples("a", 50, 1000), samples("b", 50, 2000)};
  Pipe opened, go;
  auto writer = [&](int me) {
    return spawn([&, me] {
      metrics::Registry reg;
      auto tier = make_shared_rocksdb_tier(s, reg);
      opened.signal();
      if (!go.wait()) return 2;
      for (const auto &smp : mine[me])
        tier->put(smp.key, smp.entry);
      // The other process writes at the same time: poll until all of its entries are visible.
      auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (!has_all(*tier, mine[1 - me])) {
        if (std::chrono::steady_clock::now() > deadline) return 3;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return has_all(*tier, mine[me]) ? 0 : 4;
    });
  };
  pid_t a = writer(0), b = writer(1);
  ASSERT_TRUE(opened.wait());
  ASSERT_TRUE(opened.wait());
  go.signal(2); // both open before either writes: the writes overlap
  EXPECT_EQ(wait_for(a), 0);
  EXPECT_EQ(wait_for(b), 0);
  EXPECT_EQ(slot_dirs(dir), (std::vector<std::string>{"slot-000", "slot-001"}));

  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  EXPECT_TRUE(has_all(*tier, mine[0]));
  EXPECT_TRUE(has_all(*tier, mine[1]));
}

TEST(SharedRocksDbTier, EntriesOfAnExitedOrCrashedWriterStayReadable) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto crashed = samples("crashed", 3, 10), closed = samples("closed", 3, 20);
  auto reader = std::make_unique<metrics::Registry>();
  auto tier = make_shared_rocksdb_tier(s, *reader); // slot 0, with a secondary of slot 1 once it appears

  // Exits without closing anything: its writes are only in the write-ahead log.
  pid_t c = spawn([&] {
    metrics::Registry reg;
    auto t = make_shared_rocksdb_tier(s, reg);
    for (const auto &smp : crashed)
      t->put(smp.key, smp.entry);
    ::_exit(0);
    return 1;
  });
  ASSERT_EQ(wait_for(c), 0);
  EXPECT_TRUE(has_all(*tier, crashed));

  // Reuses slot 1 (with the crashed writer's entries), then closes properly.
  pid_t d = spawn([&] {
    metrics::Registry reg;
    auto t = make_shared_rocksdb_tier(s, reg);
    if (!has_all(*t, crashed)) return 2;
    for (const auto &smp : closed)
      t->put(smp.key, smp.entry);
    return 0;
  });
  ASSERT_EQ(wait_for(d), 0);
  EXPECT_TRUE(has_all(*tier, closed));
  EXPECT_TRUE(has_all(*tier, crashed));
  EXPECT_EQ(slot_dirs(dir), (std::vector<std::string>{"slot-000", "slot-001"}));

  // A secondary opened after the owner exited reads the closed database too.
  tier.reset();
  metrics::Registry reg;
  auto fresh = make_shared_rocksdb_tier(s, reg);
  EXPECT_TRUE(has_all(*fresh, crashed));
  EXPECT_TRUE(has_all(*fresh, closed));
  fresh.reset(); // the secondaries' directories go with their owners (the crashed one's with slot 1's next)
  EXPECT_FALSE(std::filesystem::exists(dir.path / "slot-000.readers"));
  EXPECT_FALSE(std::filesystem::exists(dir.path / "slot-001.readers"));
}

TEST(SharedRocksDbTier, SlotOfAnExitedOrKilledProcessIsReused) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto x = make_sample("x", 64, 7), y = make_sample("y", 64, 8);
  Pipe ready;
  pid_t killed = spawn([&] {
    metrics::Registry reg;
    auto t = make_shared_rocksdb_tier(s, reg);
    t->put(x.key, x.entry);
    ready.signal();
    for (;;)
      ::pause(); // until SIGKILL: the kernel drops its lock
    return 1;
  });
  ASSERT_TRUE(ready.wait());
  ::kill(killed, SIGKILL);
  ASSERT_EQ(wait_for(killed), 128 + SIGKILL);
  EXPECT_EQ(slot_dirs(dir), std::vector<std::string>{"slot-000"});

  pid_t next = spawn([&] {
    metrics::Registry reg;
    auto t = make_shared_rocksdb_tier(s, reg);
    auto hit = t->get(x.key); // slot 0 again, with its entry
    if (!hit || first_float(*hit) != 7) return 2;
    t->put(y.key, y.entry);
    return 0;
  });
  ASSERT_EQ(wait_for(next), 0);
  EXPECT_EQ(slot_dirs(dir), std::vector<std::string>{"slot-000"}) << "the free slot 0 was not reused";

  // While slot 0 is held, the next process takes slot 1 and reads slot 0 through it.
  metrics::Registry reg;
  auto holder = make_shared_rocksdb_tier(s, reg);
  pid_t other = spawn([&] {
    metrics::Registry r;
    auto t = make_shared_rocksdb_tier(s, r);
    return t->get(x.key) && t->get(y.key) ? 0 : 3;
  });
  EXPECT_EQ(wait_for(other), 0);
  EXPECT_EQ(slot_dirs(dir), (std::vector<std::string>{"slot-000", "slot-001"}));
}

TEST(SharedRocksDbTier, CorruptValueInAnotherSlotIsACountedMissAndKept) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto a = make_sample("a"), b = make_sample("b");
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg); // slot 0
  pid_t w = spawn([&] {
    metrics::Registry r;
    auto t = make_shared_rocksdb_tier(s, r); // slot 1
    t->put(a.key, a.entry);
    t->put(b.key, b.entry);
    return 0;
  });
  ASSERT_EQ(wait_for(w), 0);
  const std::string slot1 = (dir.path / "slot-001").string();
  {
    rocksdb::DB *db = nullptr; // slot 1's owner is gone: the test plays a disk fault there
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), slot1, &db).ok());
    std::string v;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), key_bytes(a.key), &v).ok());
    v[v.size() - 5] ^= 0x10;
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key_bytes(a.key), v).ok());
    delete db;
  }
  EXPECT_FALSE(tier->get(a.key));
  EXPECT_TRUE(tier->get(b.key));
  TierStats st = tier->stats();
  EXPECT_EQ(st.tier, "rocksdb");
  EXPECT_EQ(st.corrupt, 1u);
  EXPECT_EQ(st.misses, 1u);
  EXPECT_EQ(st.hits, 1u);
  EXPECT_NE(reg.render().find("jit_cache_corrupt_total{tier=\"rocksdb\"} 1"), std::string::npos);
  tier.reset();
  rocksdb::DB *db = nullptr;
  ASSERT_TRUE(rocksdb::DB::OpenForReadOnly(rocksdb::Options(), slot1, &db).ok());
  std::string v;
  EXPECT_TRUE(db->Get(rocksdb::ReadOptions(), key_bytes(a.key), &v).ok()) << "another process's slot was written";
  delete db;
}

TEST(SharedRocksDbTier, CorruptValueInItsOwnSlotIsErased) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto a = make_sample("a");
  {
    metrics::Registry reg;
    make_shared_rocksdb_tier(s, reg)->put(a.key, a.entry);
  }
  const std::string slot0 = (dir.path / "slot-000").string();
  {
    rocksdb::DB *db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(rocksdb::Options(), slot0, &db).ok());
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), key_bytes(a.key), a.entry.frame()->substr(0, 50)).ok());
    delete db;
  }
  {
    metrics::Registry reg;
    auto tier = make_shared_rocksdb_tier(s, reg); // slot 0 again: its own
    EXPECT_FALSE(tier->get(a.key));
    EXPECT_EQ(tier->stats().corrupt, 1u);
  }
  rocksdb::DB *db = nullptr;
  ASSERT_TRUE(rocksdb::DB::OpenForReadOnly(rocksdb::Options(), slot0, &db).ok());
  std::string v;
  EXPECT_TRUE(db->Get(rocksdb::ReadOptions(), key_bytes(a.key), &v).IsNotFound());
  delete db;
}

TEST(SharedRocksDbTier, ChildForkedAfterOpenWritesItsOwnSlot) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto p1 = make_sample("p1", 64, 1), p2 = make_sample("p2", 64, 2);
  // 24 MiB in 256 KiB entries: the child's memtables must be flushed by threads the child has.
  auto big = samples("child", 96, 100, 64 * 1024);
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  tier->put(p1.key, p1.entry);
  pid_t child = spawn([&] {
    if (!has_all(*tier, {p1})) return 2; // the parent's slot, read from the child
    for (const auto &smp : big)
      tier->put(smp.key, smp.entry);
    if (!has_all(*tier, big)) return 3;
    tier.reset(); // closes the child's slot; leaves the parent's handles alone
    return 0;
  });
  ASSERT_EQ(wait_for(child), 0);
  EXPECT_EQ(slot_dirs(dir), (std::vector<std::string>{"slot-000", "slot-001"}));
  tier->put(p2.key, p2.entry);
  EXPECT_TRUE(has_all(*tier, {p1, p2}));
  EXPECT_TRUE(has_all(*tier, big)) << "the child's slot is not readable from the parent";
  tier.reset();
  metrics::Registry reg2;
  auto reopened = make_shared_rocksdb_tier(s, reg2); // slot 0: the parent's database survived the child
  EXPECT_TRUE(has_all(*reopened, {p1, p2}));
}

TEST(SharedRocksDbTier, ParentsSlotIsFreedWhenItClosesWhileItsChildLives) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto x = make_sample("x"), y = make_sample("y");
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  tier->put(x.key, x.entry);
  Pipe ready, release;
  pid_t child = spawn([&] {
    if (!tier->get(x.key)) return 2; // its first call: slot 1, and lets go of its copy of slot 0's lock
    ready.signal();
    return release.wait() ? 0 : 3;
  });
  ASSERT_TRUE(ready.wait());
  tier.reset(); // the parent's lock on slot 0 is gone: the child must not keep it
  pid_t next = spawn([&] {
    metrics::Registry r;
    auto t = make_shared_rocksdb_tier(s, r);
    t->put(y.key, y.entry);
    return t->get(x.key) ? 0 : 4;
  });
  EXPECT_EQ(wait_for(next), 0);
  rocksdb::DB *db = nullptr;
  ASSERT_TRUE(rocksdb::DB::OpenForReadOnly(rocksdb::Options(), (dir.path / "slot-000").string(), &db).ok());
  std::string v;
  EXPECT_TRUE(db->Get(rocksdb::ReadOptions(), key_bytes(y.key), &v).ok()) << "slot 0 was not free for the next";
  delete db;
  release.signal();
  EXPECT_EQ(wait_for(child), 0);
}

TEST(SharedRocksDbTier, ForkWhileAnotherThreadUsesTheTier) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    for (int i = 0; !stop; ++i) {
      auto smp = make_sample("busy" + std::to_string(i % 200), 64, static_cast<float>(i % 200));
      tier->put(smp.key, smp.entry);
      tier->get(smp.key);
    }
  });
  for (int round = 0; round < 4; ++round) {
    auto mine = samples("round" + std::to_string(round) + "-", 5, 10);
    pid_t child = spawn([&] {
      for (const auto &smp : mine)
        tier->put(smp.key, smp.entry);
      return has_all(*tier, mine) ? 0 : 2;
    });
    EXPECT_EQ(wait_for(child), 0) << "round " << round;
    EXPECT_TRUE(has_all(*tier, mine));
  }
  stop = true;
  busy.join();
  auto last = make_sample("busy0", 64, 0);
  EXPECT_TRUE(tier->get(last.key));
}

TEST(SharedRocksDbTier, NewSlotIsSeenAtOnceNewWritesWithinTheRefreshInterval) {
  TempDir dir;
  CacheSettings s = shared_settings(dir);
  s.rocksdb_shared_refresh_ms = 200;
  auto a = make_sample("a", 64, 1), b = make_sample("b", 64, 2);
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  Pipe wrote_a, write_b, wrote_b;
  pid_t writer = spawn([&] {
    metrics::Registry r;
    auto t = make_shared_rocksdb_tier(s, r);
    t->put(a.key, a.entry);
    wrote_a.signal();
    if (!write_b.wait()) return 2;
    t->put(b.key, b.entry);
    wrote_b.signal();
    return 0;
  });
  ASSERT_TRUE(wrote_a.wait());
  EXPECT_TRUE(tier->get(a.key)) << "a new slot directory was not opened on the next lookup";
  write_b.signal();
  ASSERT_TRUE(wrote_b.wait());
  auto start = std::chrono::steady_clock::now();
  while (!tier->get(b.key) && std::chrono::steady_clock::now() - start < std::chrono::seconds(5))
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_LT(waited, std::chrono::seconds(2)) << "the secondaries did not catch up within the refresh interval";
  EXPECT_EQ(wait_for(writer), 0);
}

TEST(SharedRocksDbTier, ErasedKeyIsNotServedFromAnotherSlotByThisProcess) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto a = make_sample("a", 64, 3);
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg); // slot 0
  pid_t w = spawn([&] {
    metrics::Registry r;
    make_shared_rocksdb_tier(s, r)->put(a.key, a.entry); // slot 1
    return 0;
  });
  ASSERT_EQ(wait_for(w), 0);
  ASSERT_TRUE(tier->get(a.key));
  tier->erase(a.key);
  EXPECT_FALSE(tier->get(a.key));
  // Documented: slot 1's copy stays for the other processes until that slot is pruned.
  pid_t other = spawn([&] {
    metrics::Registry r;
    return make_shared_rocksdb_tier(s, r)->get(a.key) ? 0 : 2;
  });
  EXPECT_EQ(wait_for(other), 0);
  tier->put(a.key, a.entry); // written again: served again
  EXPECT_TRUE(tier->get(a.key));
}

TEST(SharedRocksDbTier, MoreProcessesThanSlotsIsACacheError) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir, 2);
  Pipe ready, release;
  auto holder = [&] {
    return spawn([&] {
      metrics::Registry reg;
      auto t = make_shared_rocksdb_tier(s, reg);
      ready.signal();
      return release.wait() ? 0 : 2;
    });
  };
  pid_t h1 = holder(), h2 = holder();
  ASSERT_TRUE(ready.wait());
  ASSERT_TRUE(ready.wait());
  metrics::Registry reg;
  try {
    make_shared_rocksdb_tier(s, reg);
    ADD_FAILURE() << "a third process got a slot of two";
  } catch (const CacheError &e) {
    EXPECT_NE(std::string(e.what()).find("rocksdb_shared_max_slots=2"), std::string::npos) << e.what();
  }
  release.signal(2);
  EXPECT_EQ(wait_for(h1), 0);
  EXPECT_EQ(wait_for(h2), 0);
  EXPECT_NO_THROW(make_shared_rocksdb_tier(s, reg)); // the slots are free again
}

TEST(SharedRocksDbTier, ForkedChildWithoutAFreeSlotOnlyReads) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir, 1);
  auto a = make_sample("a", 64, 5), b = make_sample("b", 64, 6);
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  tier->put(a.key, a.entry);
  pid_t child = spawn([&] {
    if (!tier->get(a.key)) return 2;
    tier->put(b.key, b.entry); // dropped: the only slot is the parent's
    if (tier->get(b.key)) return 3;
    tier.reset();
    return 0;
  });
  EXPECT_EQ(wait_for(child), 0);
  EXPECT_EQ(slot_dirs(dir), std::vector<std::string>{"slot-000"});
  EXPECT_TRUE(tier->get(a.key));
  EXPECT_FALSE(tier->get(b.key));
}

TEST(SharedRocksDbTier, StatsCountEverySlot) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto mine = samples("mine", 3, 1), theirs = samples("theirs", 2, 10);
  const uint64_t each = mine[0].entry.nbytes() + 16;
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  for (const auto &smp : mine)
    tier->put(smp.key, smp.entry);
  pid_t w = spawn([&] {
    metrics::Registry r;
    auto t = make_shared_rocksdb_tier(s, r);
    for (const auto &smp : theirs)
      t->put(smp.key, smp.entry);
    return 0;
  });
  ASSERT_EQ(wait_for(w), 0);
  EXPECT_TRUE(has_all(*tier, mine));
  EXPECT_TRUE(has_all(*tier, theirs));
  EXPECT_FALSE(tier->get(make_sample("absent").key));
  TierStats st = tier->stats();
  EXPECT_EQ(st.tier, "rocksdb");
  EXPECT_EQ(st.entries, 5u);
  EXPECT_EQ(st.bytes, 5 * each);
  EXPECT_EQ(st.hits, 5u);
  EXPECT_EQ(st.misses, 1u);
}

TEST(SharedRocksDbTier, SizeLimitPrunesTheOldestAcrossFreeSlots) {
  TempDir dir;
  CacheSettings s = shared_settings(dir);
  auto older = samples("older", 30, 0, 256, 1000), newer = samples("newer", 30, 100, 256, 5000);
  const uint64_t each = older[0].entry.nbytes() + 16;
  s.rocksdb_max_bytes = 20 * each;
  s.rocksdb_prune_to_fraction = 0.5;
  auto write_all = [&](const std::vector<Sample> &ss) {
    return spawn([&] {
      metrics::Registry reg;
      auto t = make_shared_rocksdb_tier(s, reg);
      for (const auto &smp : ss)
        t->put(smp.key, smp.entry);
      return t->stats().evictions > 0 ? 0 : 2;
    });
  };
  // A process holding slot 0 sends the older writer to slot 1; once both are gone, the newer writer
  // gets slot 0 and finds slot 1 free, over the limit and older: it prunes both slots together.
  Pipe ready, release;
  pid_t holder = spawn([&] {
    metrics::Registry reg;
    auto t = make_shared_rocksdb_tier(s, reg);
    ready.signal();
    return release.wait() ? 0 : 2;
  });
  ASSERT_TRUE(ready.wait());
  ASSERT_EQ(wait_for(write_all(older)), 0);
  release.signal();
  ASSERT_EQ(wait_for(holder), 0);
  ASSERT_EQ(wait_for(write_all(newer)), 0);
  EXPECT_EQ(slot_dirs(dir), (std::vector<std::string>{"slot-000", "slot-001"}));

  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg);
  size_t present_older = 0, present_newer = 0;
  for (const auto &smp : older)
    present_older += tier->get(smp.key).has_value();
  for (const auto &smp : newer)
    present_newer += tier->get(smp.key).has_value();
  EXPECT_EQ(present_older, 0u) << "the free slot of the older writer was not pruned with the newer one's";
  EXPECT_GT(present_newer, 0u);
  EXPECT_LE((present_older + present_newer) * each, s.rocksdb_max_bytes);
  EXPECT_LE(tier->stats().bytes, s.rocksdb_max_bytes);
  EXPECT_TRUE(tier->get(newer.back().key));
  EXPECT_FALSE(tier->get(older.front().key));
}

TEST(SharedRocksDbTier, PruneCoversItsOwnAndFreeSlotsNotLiveOnes) {
  TempDir dir;
  const CacheSettings s = shared_settings(dir);
  auto held = make_sample("held"), gone = make_sample("gone"), old_own = make_sample("own");
  auto cur = make_sample("cur", 64, 1, "v2");
  Pipe ready, release;
  pid_t holder = spawn([&] { // slot 0, alive during the prune
    metrics::Registry reg;
    auto t = make_shared_rocksdb_tier(s, reg);
    t->put(held.key, held.entry);
    ready.signal();
    return release.wait() ? 0 : 2;
  });
  ASSERT_TRUE(ready.wait());
  metrics::Registry reg;
  auto tier = make_shared_rocksdb_tier(s, reg); // slot 1
  pid_t exited = spawn([&] {                    // slot 2, free during the prune
    metrics::Registry r;
    make_shared_rocksdb_tier(s, r)->put(gone.key, gone.entry);
    return 0;
  });
  ASSERT_EQ(wait_for(exited), 0);
  tier->put(old_own.key, old_own.entry);
  tier->put(cur.key, cur.entry);

  PruneSpec spec;
  spec.version = "v1";
  EXPECT_EQ(tier->prune(spec).entries, 2u); // its own v1 entry and the exited process's
  EXPECT_FALSE(tier->get(old_own.key));
  EXPECT_FALSE(tier->get(gone.key));
  EXPECT_TRUE(tier->get(held.key)) << "a live process's slot was pruned";
  EXPECT_TRUE(tier->get(cur.key));
  release.signal();
  EXPECT_EQ(wait_for(holder), 0);
}

TEST(SharedRocksDbTier, FromSettingsPicksTheSharedTier) {
  TempDir dir;
  CacheSettings s = shared_settings(dir);
  s.memory_max_bytes = 0;
  auto a = make_sample("a", 64, 4);
  metrics::Registry r1, r2;
  // Two caches on one directory in one process: the plain RocksDB tier would refuse the second.
  auto c1 = TieredCache::from_settings(s, r1);
  auto c2 = TieredCache::from_settings(s, r2);
  ASSERT_EQ(c1->tier_count(), 1u);
  EXPECT_EQ(c1->tier(0).name(), "rocksdb");
  c1->put(a.key, a.entry);
  c1->flush();
  auto hit = c2->get(a.key);
  ASSERT_TRUE(hit);
  EXPECT_EQ(first_float(*hit), 4.0f);
}

TEST(SharedRocksDbTier, BadSettingsAndUnusableDirectoryThrow) {
  metrics::Registry reg;
  CacheSettings s;
  s.rocksdb_shared = true;
  EXPECT_THROW(make_shared_rocksdb_tier(s, reg), CacheError); // no path
  s.rocksdb_path = "/proc/definitely/not/writable";
  EXPECT_THROW(make_shared_rocksdb_tier(s, reg), CacheError);
  TempDir dir;
  s = shared_settings(dir, 0);
  EXPECT_THROW(make_shared_rocksdb_tier(s, reg), CacheError);
}

} // namespace
} // namespace jit::cache
