// The shared RocksDB tier: one cache directory used at once by many processes of one node (every
// DataLoader worker of a job, forked or spawned, coming and going each epoch), although RocksDB lets
// only one process open a database read-write. The directory (settings.rocksdb_path) holds slots:
//   slot-NNN/          a RocksDB database, written only by the process holding slot-NNN.lock
//   slot-NNN.lock      flock()ed by that process while it lives (the kernel drops the lock when it
//                      dies); its first 16 bytes publish the slot's entry bytes for the others
//   slot-NNN.readers/  the owner's secondary-instance directories (removed on close, or by the slot's
//                      next owner after a crash)
// A process claims the lowest free slot below rocksdb_shared_max_slots (none free: CacheError) and
// writes only there. It reads every other slot through a RocksDB secondary instance, caught up with
// its primary (TryCatchUpWithPrimary) at most every rocksdb_shared_refresh_ms, on a lookup; new slots
// are opened as soon as the directory changes (one stat() per lookup). The slot of an exited or
// crashed process stays readable (a secondary replays a closed database's log) and is reused, with
// its entries, by the next process.
//
// get: its own slot, then the others in slot order; a verified Entry or a miss. A corrupt value is
// counted; in its own slot it is deleted, in another it is skipped (a later prune of that slot deletes
// it). put: its own slot. erase: deletes from its own slot and remembers the key (up to 65536 keys) so
// this process stops serving it from other slots, whose copies stay until their slot is pruned.
//
// Size: rocksdb_max_bytes bounds the directory as a whole (entries' key + value bytes; the disk of
// deleted entries comes back when RocksDB compacts). A writer counts its own slot exactly and the
// others from what they publish. Past the limit, it prunes in one oldest-first pass its own slot
// together with every slot no live process holds (it locks them for the pass: "adopts" them), down to
// rocksdb_prune_to_fraction of the limit less what live processes hold, but not below that fraction of
// its share (limit / slots), so newcomers are not starved; live processes prune their own slots.
// prune(spec) also covers its own and every free slot: a process that can lock every slot prunes all.
//
// fork(): a child must not use its parent's databases (their threads do not exist in it, their locks
// are the parent's): every call compares getpid() with the slots' owner, and a child's first call
// closes only its copies of the parent's lock descriptors (the parent's own descriptors keep its flock
// locks), leaks every other parent handle untouched, and claims a slot of its own (none free: reads
// only). Databases run background work on the process's own threads (OwnThreadsEnv).
#include "cache/cache.h"

#ifdef JIT_HAVE_ROCKSDB

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_set>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>

#include "cache/cache_internal.h"

namespace jit::cache {
namespace {

namespace fs = std::filesystem;
using internal::key_bytes;

constexpr size_t kSlotLimit = 1000;                 // slot names have three digits
constexpr size_t kRememberedErasures = 65536;       // keys erase() hides from the other slots
constexpr uint64_t kSlotWriteBufferBytes = 8 << 20; // every reader replays each live writer's memtable

std::string slot_name(size_t slot) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "slot-%03zu", slot);
  return buf;
}

// "slot-NNN" (a slot's database directory) -> NNN.
bool parse_slot_name(const std::string &name, size_t *slot) {
  if (name.size() != 8 || name.compare(0, 5, "slot-") != 0 || !std::all_of(name.begin() + 5, name.end(), ::isdigit))
    return false;
  *slot = std::stoul(name.substr(5));
  return true;
}

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Host byte order: only processes of this node read it.
void publish_bytes(int fd, uint64_t bytes) {
  const uint64_t v[2] = {bytes, ~bytes};
  ssize_t n = ::pwrite(fd, v, sizeof v, 0);
  (void)n; // a failed publish only makes the others estimate this slot's size
}

// What the slot's owner last published; nullopt when never written or caught mid-write.
std::optional<uint64_t> read_published(int fd) {
  uint64_t v[2];
  if (::pread(fd, v, sizeof v, 0) != static_cast<ssize_t>(sizeof v) || v[0] != ~v[1]) return std::nullopt;
  return v[0];
}

// RocksDB's estimate of a database's entry bytes (its table files), when nothing was published.
uint64_t approximate_bytes(rocksdb::DB *db) {
  uint64_t live = 0;
  db->GetIntProperty("rocksdb.estimate-live-data-size", &live);
  return live;
}

// An Env whose background jobs run on threads of its own: one for flushes (HIGH), one for
// compactions (LOW), so a flush never waits behind a long compaction. RocksDB's default pools are
// process-wide and, in a forked child, count the parent's threads as running: the child's flushes
// would never run and its writes would stall once its memtables fill.
class OwnThreadsEnv final : public rocksdb::EnvWrapper {
public:
  OwnThreadsEnv() : rocksdb::EnvWrapper(rocksdb::Env::Default()) {
    for (int q = 0; q < 2; ++q)
      threads_[q] = std::thread([this, q] { run(q); });
  }
  ~OwnThreadsEnv() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    for (int q = 0; q < 2; ++q) {
      cv_[q].notify_all();
      threads_[q].join();
    }
  }

  const char *Name() const override { return "JitOwnThreadsEnv"; }
  void Schedule(void (*fn)(void *), void *arg, Priority pri, void *tag, void (*unsched)(void *)) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_[index(pri)].push_back({fn, arg, tag, unsched});
    }
    cv_[index(pri)].notify_one();
  }
  int UnSchedule(void *tag, Priority pri) override {
    std::vector<Job> removed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto &jobs = jobs_[index(pri)];
      auto keep = std::stable_partition(jobs.begin(), jobs.end(), [&](const Job &j) { return j.tag != tag; });
      removed.assign(keep, jobs.end());
      jobs.erase(keep, jobs.end());
    }
    for (const Job &j : removed)
      if (j.unsched) j.unsched(j.arg); // RocksDB's contract: each removed job's cleanup runs
    return static_cast<int>(removed.size());
  }
  unsigned int GetThreadPoolQueueLen(Priority pri) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<unsigned int>(jobs_[index(pri)].size());
  }
  // No BOTTOM (or USER) pool: RocksDB then schedules nothing there.
  int GetBackgroundThreads(Priority pri) override { return pri == HIGH || pri == LOW ? 1 : 0; }
  void SetBackgroundThreads(int, Priority) override {}
  void IncBackgroundThreadsIfNeeded(int, Priority) override {}
  int ReserveThreads(int, Priority) override { return 0; }
  int ReleaseThreads(int, Priority) override { return 0; }

private:
  struct Job {
    void (*fn)(void *);
    void *arg;
    void *tag;
    void (*unsched)(void *);
  };

  static int index(Priority pri) { return pri == HIGH ? 0 : 1; }

  void run(int q) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_[q].wait(lock, [&] { return stopping_ || !jobs_[q].empty(); });
      if (jobs_[q].empty()) return; // stopping, and nothing left to run
      Job j = jobs_[q].front();
      jobs_[q].pop_front();
      lock.unlock();
      j.fn(j.arg);
      lock.lock();
    }
  }

  mutable std::mutex mu_;
  std::condition_variable cv_[2];
  std::deque<Job> jobs_[2]; // [0]: flushes, [1]: the rest
  bool stopping_ = false;
  std::thread threads_[2];
};

struct Reader { // a secondary instance of another process's slot
  size_t slot;
  std::unique_ptr<rocksdb::DB> db;
  std::atomic<uint64_t> bytes{0}; // as published by its owner, else RocksDB's estimate
};

// Everything one process holds in the directory: its slot, the secondaries of the others, the
// threads of their databases. Used only by the process that created it (see the file comment).
class Slots {
public:
  // kClaim: claim a slot or throw CacheError. kClaimOrRead (never throws): claim a slot, else read the
  // others only, else (no usable directory) hold nothing: every get misses, every put is dropped.
  enum class Mode { kClaim, kClaimOrRead };

  Slots(const CacheSettings &s, TierMetrics &metrics, Mode mode)
      : pid_(::getpid()), settings_(s), metrics_(metrics), dir_(s.rocksdb_path),
        held_(new std::atomic<int>[kSlotLimit]) {
    for (size_t i = 0; i < kSlotLimit; ++i)
      held_[i] = -1;
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec && mode == Mode::kClaim)
      throw CacheError("cannot create the shared RocksDB cache directory '" + dir_ + "': " + ec.message());
    if (ec) return;
    env_ = std::make_unique<OwnThreadsEnv>();
    rocksdb::BlockBasedTableOptions table;
    table.block_cache = rocksdb::NewLRUCache(s.rocksdb_block_cache_bytes); // one for all the slots
    table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));          // a miss probes every slot: keep it cheap
    primary_options_.env = env_.get();
    primary_options_.create_if_missing = true;
    primary_options_.max_background_jobs = 2;
    primary_options_.write_buffer_size = kSlotWriteBufferBytes;
    // Every process keeps every table file of every slot open (max_open_files below): fewer, larger
    // files keep that within common descriptor limits.
    primary_options_.target_file_size_base = 256ull << 20;
    primary_options_.max_open_files = -1; // required of secondaries: they read files the primary deleted
    primary_options_.keep_log_file_num = 2;
    primary_options_.stats_dump_period_sec = 0;
    primary_options_.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
    // Not a LOG file per slot: a full disk would abort the process (internal::stderr_logger).
    primary_options_.info_log = internal::stderr_logger("jit-embedding cache: rocksdb " + dir_ + ": ");
    secondary_options_ = primary_options_;
    secondary_options_.create_if_missing = false;
    secondary_options_.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL; // each catch-up logs at INFO

    std::string why;
    size_t busy = 0;
    for (size_t i = 0; i < s.rocksdb_shared_max_slots && !own_; ++i)
      claim(i, &busy, &why);
    if (!own_) {
      std::string msg = "no slot of the shared RocksDB cache '" + dir_ + "' could be claimed: " + std::to_string(busy) +
                        " of rocksdb_shared_max_slots=" + std::to_string(s.rocksdb_shared_max_slots) +
                        " are held by live processes";
      if (!why.empty()) msg += "; last error: " + why;
      if (mode == Mode::kClaim) throw CacheError(msg);
      std::string tmpl = (fs::temp_directory_path(ec) / "jit-rocksdb-readers-XXXXXX").string();
      if (!ec && ::mkdtemp(tmpl.data())) readers_dir_ = tmpl; // else: no secondaries, every get misses
    }
    std::lock_guard<std::mutex> lock(refresh_mu_);
    refresh_locked(true);
  }

  // Closes its databases and frees its slot. Only ever run by the process that created it.
  ~Slots() {
    {
      std::unique_lock<std::shared_mutex> lock(readers_mu_);
      readers_.clear();
    }
    if (own_) {
      own_->Flush(rocksdb::FlushOptions()); // no log left for the readers to replay into memory
      publish_bytes(own_fd_, own_bytes_.load());
      own_.reset();
    }
    std::error_code ec;
    if (!readers_dir_.empty()) fs::remove_all(readers_dir_, ec);
    if (own_fd_ >= 0) {
      held_[own_slot_] = -1;
      ::close(own_fd_); // last: the slot is free once its readers directory is gone
    }
  }

  pid_t pid() const { return pid_; }

  // In a forked child, on the parent's object: closes the child's copies of the lock descriptors the
  // parent holds. The parent keeps its locks (they live until its own descriptors close) and the
  // child no longer keeps a slot busy after the parent exits. Nothing else is touched.
  void forget_inherited() {
    for (size_t i = 0; i < kSlotLimit; ++i) {
      int fd = held_[i].load();
      if (fd < 0) continue;
      struct stat a, b;
      // The child may have closed and reused the number since: close it only if it is still the lock.
      if (::fstat(fd, &a) == 0 && ::stat(lock_path(i).c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
        ::close(fd);
    }
  }

  std::optional<Entry> get(const CacheKey &key) {
    maybe_refresh();
    const std::string kb = key_bytes(key);
    std::string value;
    if (own_ && own_->Get(rocksdb::ReadOptions(), kb, &value).ok()) {
      const uint64_t n = value.size();
      if (auto e = Entry::parse(key, std::make_shared<const std::string>(std::move(value)))) {
        metrics_.hits.inc();
        return e;
      }
      metrics_.corrupt.inc();
      delete_own(kb, n); // another slot may still hold a good copy
    }
    if (!was_erased(key)) {
      std::shared_lock<std::shared_mutex> lock(readers_mu_);
      for (const auto &r : readers_) {
        std::string v;
        if (!r->db->Get(rocksdb::ReadOptions(), kb, &v).ok()) continue; // NotFound or I/O: try the next
        if (auto e = Entry::parse(key, std::make_shared<const std::string>(std::move(v)))) {
          metrics_.hits.inc();
          return e;
        }
        metrics_.corrupt.inc(); // not ours to delete: a prune of that slot will
      }
    }
    metrics_.misses.inc();
    return std::nullopt;
  }

  void put(const CacheKey &key, const Entry &entry) {
    if (!own_) return; // reading only: the write is dropped
    const std::string &frame = *entry.frame();
    const rocksdb::Status st =
        own_->Put(rocksdb::WriteOptions(), key_bytes(key), rocksdb::Slice(frame.data(), frame.size()));
    internal::note_write(st.ok(), st.ok() ? "" : st.ToString(), "rocksdb at " + dir_, metrics_, write_failing_);
    if (!st.ok()) return; // a failed write is a later miss
    forget_erasure(key);
    own_bytes_ += frame.size() + 16;
    publish_bytes(own_fd_, own_bytes_.load());
    metrics_.bytes.set(static_cast<double>(own_bytes_.load() + others_bytes_.load()));
    maybe_refresh(); // fresh sizes of the other slots for the limit
    enforce_limit();
  }

  void erase(const CacheKey &key) {
    const std::string kb = key_bytes(key);
    rocksdb::PinnableSlice value;
    if (own_ && own_->Get(rocksdb::ReadOptions(), own_->DefaultColumnFamily(), kb, &value).ok())
      delete_own(kb, value.size());
    remember_erasure(key);
  }

  TierStats stats(const std::string &name) const {
    TierStats st = metrics_.stats(name);
    uint64_t keys = 0, n = 0;
    if (own_ && own_->GetIntProperty("rocksdb.estimate-num-keys", &n)) keys += n;
    std::shared_lock<std::shared_mutex> lock(readers_mu_);
    for (const auto &r : readers_)
      if (r->db->GetIntProperty("rocksdb.estimate-num-keys", &n)) keys += n;
    st.entries = keys;
    st.bytes = own_bytes_.load() + others_bytes_.load();
    return st;
  }

  // Its own slot and every slot no live process holds; spec.max_bytes counts the live ones too.
  PruneResult prune(const PruneSpec &spec) {
    {
      std::lock_guard<std::mutex> lock(refresh_mu_);
      refresh_locked(true);
    }
    std::lock_guard<std::mutex> lock(prune_mu_);
    const std::optional<uint64_t> max = spec.max_bytes;
    auto budget = [max](uint64_t live) { return max ? std::optional<uint64_t>(*max > live ? *max - live : 0) : max; };
    prune_floor_ = 0;
    return prune_locked(spec, budget, false);
  }

private:
  struct Adopted {
    size_t slot;
    int fd;
    std::unique_ptr<rocksdb::DB> db;
  };

  std::string lock_path(size_t slot) const { return dir_ + "/" + slot_name(slot) + ".lock"; }
  std::string readers_path(size_t slot) const { return dir_ + "/" + slot_name(slot) + ".readers"; }

  // Takes slot `slot`'s lock without waiting and opens its database read-write. Returns the
  // descriptor holding the lock and fills *db, or returns -1 (counting a busy slot in *busy, an
  // error in *why).
  int lock_and_open(size_t slot, std::unique_ptr<rocksdb::DB> *db, size_t *busy, std::string *why) {
    const std::string path = lock_path(slot);
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      if (why) *why = path + ": " + std::strerror(errno);
      return -1;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd);
      if (busy) ++*busy;
      return -1;
    }
    held_[slot] = fd; // before anything can fork: a child must find every lock this process holds
    std::error_code ec;
    fs::remove_all(readers_path(slot), ec); // the slot's previous owner is gone: its secondaries are stale
    rocksdb::DB *raw = nullptr;
    rocksdb::Status st = rocksdb::DB::Open(primary_options_, dir_ + "/" + slot_name(slot), &raw);
    if (!st.ok()) {
      // e.g. the database is damaged, or (after fork) RocksDB thinks this process still locks it
      if (why) *why = slot_name(slot) + ": " + st.ToString();
      held_[slot] = -1;
      ::close(fd);
      return -1;
    }
    db->reset(raw);
    return fd;
  }

  void claim(size_t slot, size_t *busy, std::string *why) {
    int fd = lock_and_open(slot, &own_, busy, why);
    if (fd < 0) return;
    own_slot_ = slot;
    own_fd_ = fd;
    readers_dir_ = readers_path(slot);
    std::error_code ec;
    fs::create_directories(readers_dir_, ec);
    auto published = read_published(fd);
    own_bytes_ = published ? *published : approximate_bytes(own_.get());
    publish_bytes(fd, own_bytes_.load());
  }

  uint64_t slot_bytes(size_t slot, rocksdb::DB *db) const {
    int fd = ::open(lock_path(slot).c_str(), O_RDONLY | O_CLOEXEC);
    auto published = fd >= 0 ? read_published(fd) : std::nullopt;
    if (fd >= 0) ::close(fd); // flock locks belong to descriptions: closing this one releases nobody's
    return published ? *published : approximate_bytes(db);
  }

  int64_t dir_mtime() const {
    struct stat st;
    if (::stat(dir_.c_str(), &st) != 0) return -1;
    return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  }

  void maybe_refresh() {
    if (readers_dir_.empty()) return;
    const bool due = steady_ms() - last_refresh_ms_.load() >= settings_.rocksdb_shared_refresh_ms;
    if (!due && dir_mtime() == seen_mtime_.load()) return;
    std::unique_lock<std::mutex> lock(refresh_mu_, std::try_to_lock);
    if (!lock.owns_lock()) return; // another thread is refreshing: this call uses what is open now
    refresh_locked(due);
  }

  // Opens the secondaries of new slots; `full`: also retries the slots that failed to open, and
  // brings every secondary and size up to date. Needs refresh_mu_.
  void refresh_locked(bool full) {
    if (readers_dir_.empty()) return;
    seen_mtime_ = dir_mtime(); // before the scan: what appears during it is found by the next one
    std::vector<size_t> found;
    std::error_code ec;
    for (fs::directory_iterator it(dir_, ec), end; !ec && it != end; it.increment(ec)) {
      size_t slot = 0;
      if (parse_slot_name(it->path().filename().string(), &slot) && slot != own_slot_ &&
          ::access((it->path() / "CURRENT").c_str(), F_OK) == 0) // else not created yet
        found.push_back(slot);
    }
    std::unordered_set<size_t> have; // only this thread (holding refresh_mu_) changes readers_
    for (const auto &r : readers_)
      have.insert(r->slot);
    for (size_t slot : found) {
      if (have.count(slot) || (!full && failed_.count(slot))) continue;
      const std::string secondary = readers_dir_ + "/" + slot_name(slot);
      fs::create_directories(secondary, ec);
      rocksdb::DB *raw = nullptr;
      if (!rocksdb::DB::OpenAsSecondary(secondary_options_, dir_ + "/" + slot_name(slot), secondary, &raw).ok()) {
        failed_.insert(slot); // retried by the next full refresh
        continue;
      }
      failed_.erase(slot);
      auto r = std::make_unique<Reader>();
      r->slot = slot;
      r->db.reset(raw);
      r->bytes = slot_bytes(slot, raw);
      std::unique_lock<std::shared_mutex> lock(readers_mu_);
      auto pos = std::lower_bound(readers_.begin(), readers_.end(), slot,
                                  [](const std::unique_ptr<Reader> &a, size_t s) { return a->slot < s; });
      readers_.insert(pos, std::move(r));
    }
    if (full) {
      std::shared_lock<std::shared_mutex> lock(readers_mu_);
      for (const auto &r : readers_) {
        r->db->TryCatchUpWithPrimary(); // safe alongside lookups; a failure leaves the older view
        r->bytes = slot_bytes(r->slot, r->db.get());
      }
      last_refresh_ms_ = steady_ms();
    }
    update_bytes();
  }

  void update_bytes() {
    std::shared_lock<std::shared_mutex> lock(readers_mu_);
    uint64_t others = 0;
    for (const auto &r : readers_)
      others += r->bytes.load();
    others_bytes_ = others;
    slot_count_ = readers_.size() + (own_ ? 1 : 0);
    metrics_.bytes.set(static_cast<double>(own_bytes_.load() + others));
  }

  void delete_own(const std::string &kb, uint64_t value_size) {
    if (!own_->Delete(rocksdb::WriteOptions(), kb).ok()) return;
    uint64_t n = value_size + 16, cur = own_bytes_.load();
    while (!own_bytes_.compare_exchange_weak(cur, cur > n ? cur - n : 0)) {
    }
    publish_bytes(own_fd_, own_bytes_.load());
  }

  // Over the limit: prunes its own slot and the free ones (see the file comment), unless it already
  // did and ended at its floor because live processes hold the rest: then it waits to pass its share.
  void enforce_limit() {
    const uint64_t max = settings_.rocksdb_max_bytes;
    auto over = [&] {
      const uint64_t own = own_bytes_.load();
      return own + others_bytes_.load() > max && own > prune_floor_.load();
    };
    if (!over()) return;
    std::lock_guard<std::mutex> lock(prune_mu_);
    if (!over()) return; // another thread's prune just ran
    const double fraction = settings_.rocksdb_prune_to_fraction;
    const uint64_t share = max / std::max<size_t>(1, slot_count_.load());
    const auto target = static_cast<uint64_t>(static_cast<double>(max) * fraction);
    const auto floor = static_cast<uint64_t>(static_cast<double>(share) * fraction);
    prune_locked(
        PruneSpec{},
        [&](uint64_t live) -> std::optional<uint64_t> { return std::max(target > live ? target - live : 0, floor); },
        true);
    prune_floor_ = own_bytes_.load() + others_bytes_.load() > max ? share : 0;
  }

  // One joint prune of its own slot and the free slots it can lock now (only those holding entries
  // when `nonempty_only`); `budget` maps the bytes of the slots live processes hold to max_bytes.
  PruneResult prune_locked(PruneSpec spec, const std::function<std::optional<uint64_t>(uint64_t)> &budget,
                           bool nonempty_only) {
    std::vector<std::pair<size_t, uint64_t>> others;
    {
      std::shared_lock<std::shared_mutex> lock(readers_mu_);
      for (const auto &r : readers_)
        others.emplace_back(r->slot, r->bytes.load());
    }
    std::vector<Adopted> adopted;
    uint64_t live = 0;
    for (const auto &o : others) {
      Adopted a{o.first, -1, nullptr};
      if (!nonempty_only || o.second > 0) a.fd = lock_and_open(o.first, &a.db, nullptr, nullptr);
      if (a.fd < 0) {
        live += o.second;
        continue;
      }
      adopted.push_back(std::move(a));
    }
    spec.max_bytes = budget(live);
    std::vector<rocksdb::DB *> dbs;
    if (own_) dbs.push_back(own_.get());
    for (const auto &a : adopted)
      dbs.push_back(a.db.get());
    PruneResult res;
    std::vector<uint64_t> left(dbs.size(), 0);
    if (!dbs.empty()) res = internal::prune_rocksdb(dbs, spec, metrics_, &left);
    size_t k = 0;
    if (own_) {
      own_bytes_ = left[k++];
      publish_bytes(own_fd_, own_bytes_.load());
    }
    for (auto &a : adopted) {
      const uint64_t bytes = left[k++];
      publish_bytes(a.fd, bytes);
      a.db->Flush(rocksdb::FlushOptions());
      a.db.reset();
      held_[a.slot] = -1;
      ::close(a.fd); // the slot is free again
      std::shared_lock<std::shared_mutex> lock(readers_mu_);
      for (const auto &r : readers_) {
        if (r->slot != a.slot) continue;
        r->db->TryCatchUpWithPrimary(); // this process's lookups stop finding what was just deleted
        r->bytes = bytes;
      }
    }
    update_bytes();
    return res;
  }

  bool was_erased(const CacheKey &key) {
    std::lock_guard<std::mutex> lock(erased_mu_);
    return !erased_.empty() && erased_.count(key) > 0;
  }
  void remember_erasure(const CacheKey &key) {
    std::lock_guard<std::mutex> lock(erased_mu_);
    if (erased_.size() >= kRememberedErasures) erased_.clear(); // bounded memory: forget them all at once
    erased_.insert(key);
  }
  void forget_erasure(const CacheKey &key) {
    std::lock_guard<std::mutex> lock(erased_mu_);
    erased_.erase(key);
  }

  const pid_t pid_;
  const CacheSettings &settings_;
  TierMetrics &metrics_;
  const std::string dir_;
  std::unique_ptr<std::atomic<int>[]> held_; // by slot: the descriptor holding its lock, or -1

  // Declared before the databases: they are closed before their threads stop.
  std::unique_ptr<OwnThreadsEnv> env_;
  rocksdb::Options primary_options_, secondary_options_;

  size_t own_slot_ = SIZE_MAX; // SIZE_MAX: no slot of its own (reading only)
  int own_fd_ = -1;
  std::unique_ptr<rocksdb::DB> own_;
  std::string readers_dir_; // empty: no secondaries
  std::atomic<uint64_t> own_bytes_{0}, others_bytes_{0};
  std::atomic<bool> write_failing_{false}; // since the last failed write, until one succeeds
  std::atomic<size_t> slot_count_{1};

  mutable std::shared_mutex readers_mu_; // guards readers_ (added to under refresh_mu_, never removed)
  std::vector<std::unique_ptr<Reader>> readers_;

  std::mutex refresh_mu_; // one refresher at a time; guards failed_
  std::unordered_set<size_t> failed_;
  std::atomic<int64_t> last_refresh_ms_{0}, seen_mtime_{-1};

  std::mutex prune_mu_;
  std::atomic<uint64_t> prune_floor_{0};

  std::mutex erased_mu_;
  std::unordered_set<CacheKey, CacheKeyHash> erased_;
};

class SharedRocksDbTier final : public Tier {
public:
  SharedRocksDbTier(const CacheSettings &s, metrics::Registry &registry)
      : settings_(s), metrics_(registry, name_), slots_(new Slots(settings_, metrics_, Slots::Mode::kClaim)) {}

  ~SharedRocksDbTier() override {
    Slots *s = slots_.load();
    // Inherited through fork() and never replaced: the parent's databases are not ours to close.
    if (s->pid() == ::getpid()) delete s;
  }

  const std::string &name() const override { return name_; }
  std::optional<Entry> get(const CacheKey &key) override { return current().get(key); }
  void put(const CacheKey &key, const Entry &entry) override { current().put(key, entry); }
  void erase(const CacheKey &key) override { current().erase(key); }
  TierStats stats() const override { return current().stats(name_); }
  PruneResult prune(const PruneSpec &spec) override { return current().prune(spec); }

private:
  // This process's slots: after a fork, the child's first call replaces its parent's (leaked).
  Slots &current() const {
    const pid_t me = ::getpid();
    for (;;) {
      Slots *s = slots_.load(std::memory_order_acquire);
      if (s->pid() == me) return *s;
      // Not a mutex: one held by a parent thread at the fork would stay locked in the child forever.
      pid_t other = reopening_.load();
      if (other != me && reopening_.compare_exchange_strong(other, me)) {
        s = slots_.load(); // another thread may have just finished: its store precedes its reset below
        if (s->pid() != me) {
          s->forget_inherited();
          s = new Slots(settings_, metrics_, Slots::Mode::kClaimOrRead);
          slots_.store(s, std::memory_order_release);
        }
        reopening_ = 0;
        return *s;
      }
      std::this_thread::yield(); // another thread of this process is reopening
    }
  }

  const std::string name_ = "rocksdb";
  const CacheSettings settings_;
  mutable TierMetrics metrics_;
  mutable std::atomic<Slots *> slots_;
  mutable std::atomic<pid_t> reopening_{0};
};

} // namespace

std::unique_ptr<Tier> make_shared_rocksdb_tier(const CacheSettings &settings, metrics::Registry &registry) {
  if (settings.rocksdb_path.empty()) throw CacheError("rocksdb_path is empty");
  if (settings.rocksdb_prune_to_fraction <= 0 || settings.rocksdb_prune_to_fraction > 1)
    throw CacheError("rocksdb_prune_to_fraction must be in (0, 1]");
  if (settings.rocksdb_shared_max_slots < 1 || settings.rocksdb_shared_max_slots > kSlotLimit)
    throw CacheError("rocksdb_shared_max_slots must be in [1, " + std::to_string(kSlotLimit) + "]");
  if (settings.rocksdb_shared_refresh_ms < 0) throw CacheError("rocksdb_shared_refresh_ms must be >= 0");
  return std::make_unique<SharedRocksDbTier>(settings, registry);
}

} // namespace jit::cache

#else // built without RocksDB

namespace jit::cache {

std::unique_ptr<Tier> make_shared_rocksdb_tier(const CacheSettings &, metrics::Registry &) {
  throw CacheError("this build has no RocksDB (CMake JIT_WITH_ROCKSDB found no librocksdb-dev)");
}

} // namespace jit::cache

#endif
