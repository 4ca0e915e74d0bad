// The RocksDB tier: entries on local disk under their 16-byte key, values are the entry frames.
//
// The size limit is enforced by the writer: when the tracked byte count passes rocksdb_max_bytes,
// one scan reads every entry's meta (its envelope only) and deletes the oldest until the rest fit in
// rocksdb_prune_to_fraction of the limit, so scans are rare. The byte count starts from RocksDB's
// own size estimate at open and is exact after each scan; in between it counts the bytes written.
//
// A write that fails (a full disk) is a later miss, counted in jit_cache_write_errors_total and
// reported on stderr; reads go on. RocksDB then refuses writes until its SstFileManager sees enough
// free space again (it wants 64 MiB) and clears the error by itself. RocksDB's own log goes to
// stderr, not to a LOG file on the same disk (see internal::stderr_logger).
#include "cache/cache.h"

#ifdef JIT_HAVE_ROCKSDB

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <map>
#include <mutex>
#include <vector>

#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/table.h>

#include "cache/cache_internal.h"

namespace jit::cache {

namespace internal {

PruneResult prune_rocksdb(const std::vector<rocksdb::DB *> &dbs, const PruneSpec &spec, TierMetrics &metrics,
                          std::vector<uint64_t> *bytes_left) {
  PruneResult res;
  struct Kept {
    int64_t created;
    size_t db;
    std::string key;
    uint64_t size;
  };
  std::vector<Kept> kept;
  std::vector<uint64_t> left(dbs.size(), 0);
  std::vector<rocksdb::WriteBatch> batches(dbs.size());
  uint64_t total = 0;
  for (size_t d = 0; d < dbs.size(); ++d) {
    std::unique_ptr<rocksdb::Iterator> it(dbs[d]->NewIterator(rocksdb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      rocksdb::Slice k = it->key(), v = it->value();
      uint64_t size = k.size() + v.size();
      auto meta = peek_meta(reinterpret_cast<const uint8_t *>(v.data()), v.size());
      auto key = key_from_bytes(std::string_view(k.data(), k.size()));
      if (!meta || !key || meta->key_hex != key->hex()) {
        metrics.corrupt.inc();
        batches[d].Delete(k);
        continue;
      }
      if (prune_selects(spec, *meta)) {
        batches[d].Delete(k);
        res.entries += 1;
        res.bytes += size;
        continue;
      }
      kept.push_back({meta->created_ms, d, k.ToString(), size});
      left[d] += size;
      total += size;
    }
  }
  if (spec.max_bytes && total > *spec.max_bytes) {
    std::sort(kept.begin(), kept.end(), [](const Kept &a, const Kept &b) { return a.created < b.created; });
    for (const Kept &k : kept) {
      if (total <= *spec.max_bytes) break;
      batches[k.db].Delete(k.key);
      total -= k.size;
      left[k.db] -= k.size;
      res.entries += 1;
      res.bytes += k.size;
    }
  }
  for (size_t d = 0; d < dbs.size(); ++d)
    if (batches[d].Count() > 0) dbs[d]->Write(rocksdb::WriteOptions(), &batches[d]);
  metrics.evictions.inc(static_cast<double>(res.entries));
  if (bytes_left) *bytes_left = std::move(left);
  return res;
}

namespace {

class StderrLogger final : public rocksdb::Logger {
public:
  explicit StderrLogger(std::string prefix)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), prefix_(std::move(prefix)) {}
  using rocksdb::Logger::Logv;
  void Logv(const char *format, va_list ap) override {
    char line[1024];
    std::vsnprintf(line, sizeof line, format, ap);
    std::fprintf(stderr, "%s%s\n", prefix_.c_str(), line); // one call: lines of two threads never mix
  }

private:
  std::string prefix_;
};

} // namespace

std::shared_ptr<rocksdb::Logger> stderr_logger(std::string prefix) {
  return std::make_shared<StderrLogger>(std::move(prefix));
}

void note_write(bool ok, const std::string &status, const std::string &what, TierMetrics &metrics,
                std::atomic<bool> &failing) {
  if (ok) {
    if (failing.exchange(false)) std::fprintf(stderr, "jit-embedding cache: %s: writes succeed again\n", what.c_str());
    return;
  }
  metrics.write_errors.inc();
  if (!failing.exchange(true)) {
    std::fprintf(stderr,
                 "jit-embedding cache: warning: %s: a write failed (%s); entries are not stored there until "
                 "writes succeed again (counted in jit_cache_write_errors_total); reads go on\n",
                 what.c_str(), status.c_str());
  }
}

} // namespace internal

namespace {

using internal::key_bytes;

class RocksDbTier final : public Tier {
public:
  RocksDbTier(const CacheSettings &s, metrics::Registry &registry) : settings_(s), metrics_(registry, name_) {
    rocksdb::Options options;
    options.create_if_missing = true;
    options.IncreaseParallelism(2);
    rocksdb::BlockBasedTableOptions table;
    table.block_cache = rocksdb::NewLRUCache(s.rocksdb_block_cache_bytes);
    options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
    options.info_log = internal::stderr_logger("jit-embedding cache: rocksdb " + s.rocksdb_path + ": ");
    std::error_code ec;
    std::filesystem::create_directories(s.rocksdb_path, ec); // else RocksDB logs an error for the missing folder
    rocksdb::DB *db = nullptr;
    rocksdb::Status st = rocksdb::DB::Open(options, s.rocksdb_path, &db);
    if (!st.ok()) throw CacheError("cannot open the RocksDB cache at '" + s.rocksdb_path + "': " + st.ToString());
    db_.reset(db);
    uint64_t live = 0, mem = 0;
    db_->GetIntProperty("rocksdb.estimate-live-data-size", &live);
    db_->GetIntProperty("rocksdb.cur-size-all-mem-tables", &mem);
    bytes_ = live + mem;
    metrics_.bytes.set(static_cast<double>(bytes_.load()));
  }

  const std::string &name() const override { return name_; }

  std::optional<Entry> get(const CacheKey &key) override {
    std::string value;
    rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), key_bytes(key), &value);
    if (!st.ok()) {
      metrics_.misses.inc(); // NotFound, or an I/O error: either way a miss
      return std::nullopt;
    }
    uint64_t n = value.size();
    auto entry = Entry::parse(key, std::make_shared<const std::string>(std::move(value)));
    if (!entry) {
      metrics_.corrupt.inc();
      metrics_.misses.inc();
      delete_key(key, n);
      return std::nullopt;
    }
    metrics_.hits.inc();
    return entry;
  }

  void put(const CacheKey &key, const Entry &entry) override {
    const std::string &frame = *entry.frame();
    rocksdb::Status st = db_->Put(rocksdb::WriteOptions(), key_bytes(key), rocksdb::Slice(frame.data(), frame.size()));
    internal::note_write(st.ok(), st.ok() ? "" : st.ToString(), where_, metrics_, write_failing_);
    if (!st.ok()) return; // a failed write is a later miss
    uint64_t now = bytes_.fetch_add(frame.size() + 16) + frame.size() + 16;
    metrics_.bytes.set(static_cast<double>(now));
    if (now > settings_.rocksdb_max_bytes) {
      PruneSpec spec;
      spec.max_bytes =
          static_cast<uint64_t>(static_cast<double>(settings_.rocksdb_max_bytes) * settings_.rocksdb_prune_to_fraction);
      prune(spec);
    }
  }

  void erase(const CacheKey &key) override {
    rocksdb::PinnableSlice value;
    rocksdb::Status st = db_->Get(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), key_bytes(key), &value);
    if (st.ok()) delete_key(key, value.size());
  }

  TierStats stats() const override {
    TierStats st = metrics_.stats(name_);
    uint64_t keys = 0;
    db_->GetIntProperty("rocksdb.estimate-num-keys", &keys);
    st.entries = keys;
    st.bytes = bytes_.load();
    return st;
  }

  std::vector<VersionStats> versions() const override {
    std::map<std::pair<std::string, std::string>, VersionStats> by;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const rocksdb::Slice v = it->value();
      auto meta = internal::peek_meta(reinterpret_cast<const uint8_t *>(v.data()), v.size());
      if (!meta) continue; // unreadable: prune removes it, stats count it when it is read
      VersionStats &s = by[{meta->encoder, meta->version}];
      s.entries += 1;
      s.bytes += it->key().size() + v.size();
    }
    std::vector<VersionStats> out;
    for (auto &[id, s] : by) {
      s.encoder = id.first;
      s.version = id.second;
      out.push_back(std::move(s));
    }
    return out;
  }

  // One scan: deletes what `spec` selects and unreadable values, then the oldest entries over
  // spec.max_bytes. Recomputes the byte count exactly.
  PruneResult prune(const PruneSpec &spec) override {
    std::lock_guard<std::mutex> lock(prune_mu_);
    std::vector<uint64_t> left;
    PruneResult res = internal::prune_rocksdb({db_.get()}, spec, metrics_, &left);
    bytes_ = left[0];
    metrics_.bytes.set(static_cast<double>(left[0]));
    return res;
  }

private:
  void delete_key(const CacheKey &key, uint64_t value_size) {
    if (db_->Delete(rocksdb::WriteOptions(), key_bytes(key)).ok()) {
      uint64_t n = value_size + 16, cur = bytes_.load();
      while (!bytes_.compare_exchange_weak(cur, cur > n ? cur - n : 0)) {
      }
      metrics_.bytes.set(static_cast<double>(bytes_.load()));
    }
  }

  const std::string name_ = "rocksdb";
  CacheSettings settings_;
  TierMetrics metrics_;
  std::unique_ptr<rocksdb::DB> db_;
  std::atomic<uint64_t> bytes_{0};
  const std::string where_ = "rocksdb at " + settings_.rocksdb_path;
  std::atomic<bool> write_failing_{false}; // since the last failed write, until one succeeds
  std::mutex prune_mu_;
};

} // namespace

bool rocksdb_available() {
  return true;
}

std::unique_ptr<Tier> make_rocksdb_tier(const CacheSettings &settings, metrics::Registry &registry) {
  if (settings.rocksdb_path.empty()) throw CacheError("rocksdb_path is empty");
  if (settings.rocksdb_prune_to_fraction <= 0 || settings.rocksdb_prune_to_fraction > 1)
    throw CacheError("rocksdb_prune_to_fraction must be in (0, 1]");
  return std::make_unique<RocksDbTier>(settings, registry);
}

} // namespace jit::cache

#else // built without RocksDB

namespace jit::cache {

bool rocksdb_available() {
  return false;
}

std::unique_ptr<Tier> make_rocksdb_tier(const CacheSettings &, metrics::Registry &) {
  throw CacheError("this build has no RocksDB (CMake JIT_WITH_ROCKSDB found no librocksdb-dev)");
}

} // namespace jit::cache

#endif
