// jit-embedding cache: every embedding computed once, reused by every later job (torch-free).
//
// A CacheKey is a 128-bit XXH3 hash over the encoder name, the encoder's version digest, the
// preprocessing params and the canonical input bytes (or a user's own stable sample key), so a
// changed encoder can never serve a stale embedding. An Entry is one sample's outputs stored as one
// codec frame (checksummed) whose meta names the key, the encoder and its version: a value under the
// wrong key, or a corrupted or truncated one, is detected, erased, counted and served as a miss.
//
// Tiers, tried in order by TieredCache: an in-memory LRU bounded in bytes, RocksDB on local disk,
// Redis shared between hosts. A hit in a lower tier fills the tiers above it. Writes never block the
// caller: the memory tier is written inline (a map insert), the others through a bounded queue that
// one background thread drains; a full queue drops the write and counts it.
//
// Errors: a tier never throws from get/put/erase (an outage or a corrupt value is a miss, counted in
// the metrics); constructors and prune throw CacheError for bad settings or an unopenable store.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "common/metrics.h"
#include "common/types.h"

namespace jit::cache {

// The one error type of the cache layer.
class CacheError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

// Every limit of the cache, with its default. Sizes are bytes, times milliseconds unless named.
struct CacheSettings {
  // Memory tier: an LRU over encoded entries, sharded by key to spread lock contention.
  uint64_t memory_max_bytes = 1ull << 30; // 0: no memory tier
  size_t memory_shards = 16;              // each shard holds memory_max_bytes / memory_shards

  // RocksDB tier (built with JIT_WITH_ROCKSDB).
  std::string rocksdb_path;                 // empty: no RocksDB tier
  uint64_t rocksdb_max_bytes = 64ull << 30; // when exceeded, the oldest entries are pruned...
  double rocksdb_prune_to_fraction = 0.9;   // ...down to this fraction of rocksdb_max_bytes
  uint64_t rocksdb_block_cache_bytes = 64ull << 20;
  // Shared mode: rocksdb_path is used at once by many processes of one node (DataLoader workers),
  // each writing a slot database of its own and reading the others' (make_shared_rocksdb_tier).
  bool rocksdb_shared = false;
  size_t rocksdb_shared_max_slots = 64; // processes that can write at once (1..1000)
  int rocksdb_shared_refresh_ms = 1000; // the other slots' new writes become visible within this

  // Redis tier (built with JIT_WITH_REDIS): redis://[:password@]host[:port][/db]
  std::string redis_url;      // empty: no Redis tier
  size_t redis_pool_size = 4; // connections kept open
  int redis_connect_timeout_ms = 200;
  int redis_io_timeout_ms = 500;        // per command; a slow Redis is a miss, never a hang
  int redis_pool_wait_ms = 50;          // waiting for a free connection; then a miss
  int redis_retry_after_ms = 1000;      // after a failure, Redis is skipped (a miss) this long
  uint64_t redis_ttl_s = 7 * 24 * 3600; // entries expire (Redis has no prune); 0: never
  std::string redis_key_prefix = "jit:";

  // The write queue in front of the tiers below the memory tier.
  size_t write_queue_max_entries = 1024;
  uint64_t write_queue_max_bytes = 256ull << 20;

  // Entries larger than this are not cached at all.
  uint64_t max_entry_bytes = 256ull << 20;
};

// A 128-bit cache key. Two keys are equal iff their hashes are; see the file comment for what is hashed.
class CacheKey {
public:
  CacheKey() = default;
  CacheKey(uint64_t high, uint64_t low) : hi_(high), lo_(low) {}

  // The key of one sample: bind(encoder, version, content_of_inputs(params, inputs)). `inputs`
  // are the sample's own tensors (no batch dimension), in any order: they are hashed in name
  // order, which must be unique. Throws CacheError on a duplicate input name or a size that does
  // not match shape x dtype.
  static CacheKey for_inputs(std::string_view encoder, std::string_view version, std::string_view params,
                             const std::vector<TensorView> &inputs);

  // The key of a user's own stable sample key (a file name, a row id) under encoder `encoder` at
  // `version`: bind(encoder, version, content_of_sample_key(sample_key)). Never equal to a
  // for_inputs() key.
  static CacheKey for_sample_key(std::string_view encoder, std::string_view version, std::string_view sample_key);

  // The content digest of one sample, independent of any encoder: the preprocessing params
  // `params` (opaque bytes, e.g. a canonical msgpack map) and each input's name, dtype, shape and
  // bytes. Every field is length-prefixed, so no two different samples frame to the same bytes.
  // Clients compute it to ask the server's cache before they upload (POST /v1/cache/lookup).
  // Throws CacheError as for_inputs().
  static CacheKey content_of_inputs(std::string_view params, const std::vector<TensorView> &inputs);

  // The content digest of row `row` of batched `inputs` (each [rows, ...]): equal to
  // content_of_inputs() over the row's own tensors (shape without the batch dimension), cut to
  // `length` along dimension seq_dims[i] of input i when seq_dims[i] >= 1 and length >= 0 (the
  // row's true length before the batch was padded). `seq_dims` is parallel to `inputs` or empty.
  // Throws CacheError for a row out of range, a length past the padded one, or bad tensors.
  static CacheKey content_of_row(std::string_view params, const std::vector<TensorView> &inputs, int64_t row,
                                 const std::vector<int> &seq_dims, int64_t length);

  // The content digest of a user's stable sample key. Never equal to a content_of_inputs() digest.
  static CacheKey content_of_sample_key(std::string_view sample_key);

  // The cache key of content digest `content` under encoder `encoder` at version `version`: the
  // version is bound in here, on the server, so a client that knows only the content never reads
  // an entry of another version.
  static CacheKey bind(std::string_view encoder, std::string_view version, const CacheKey &content);

  // 32 lowercase hex digits, high half first.
  std::string hex() const;
  // Parses hex(); nullopt for anything else.
  static std::optional<CacheKey> from_hex(std::string_view hex);

  uint64_t high() const { return hi_; }
  uint64_t low() const { return lo_; }
  bool operator==(const CacheKey &o) const { return hi_ == o.hi_ && lo_ == o.lo_; }
  bool operator!=(const CacheKey &o) const { return !(*this == o); }

private:
  uint64_t hi_ = 0, lo_ = 0;
};

struct CacheKeyHash {
  size_t operator()(const CacheKey &k) const {
    return static_cast<size_t>(k.low() ^ (k.high() * 0x9e3779b97f4a7c15ull));
  }
};

// One cached value: a sample's outputs as one codec frame. Cheap to copy (the frame is shared), and
// its tensors alias the frame, which they keep alive.
class Entry {
public:
  // Encodes `outputs` (names unique) for `key`, tagging it with the encoder, its version and the
  // creation time (Unix milliseconds; 0: now). Throws CacheError when the codec refuses the tensors.
  static Entry make(const CacheKey &key, std::string_view encoder, std::string_view version,
                    const std::vector<TensorView> &outputs, int64_t created_unix_ms = 0);

  // Decodes a stored frame and checks it: the checksums, and that its meta names `key`. Returns
  // nullopt, and the reason in *why, for a corrupted, truncated or misplaced value. Never throws.
  static std::optional<Entry> parse(const CacheKey &key, std::shared_ptr<const std::string> frame,
                                    std::string *why = nullptr);

  const std::vector<Tensor> &tensors() const { return tensors_; }
  const std::string &encoder() const { return encoder_; }
  const std::string &version() const { return version_; }
  int64_t created_unix_ms() const { return created_ms_; }
  // The encoded frame, as the tiers store it.
  const std::shared_ptr<const std::string> &frame() const { return frame_; }
  uint64_t nbytes() const { return frame_ ? frame_->size() : 0; }

private:
  std::shared_ptr<const std::string> frame_;
  std::vector<Tensor> tensors_;
  std::string encoder_, version_;
  int64_t created_ms_ = 0;
};

// What prune() removes: entries matching any of the given conditions, then, with max_bytes, the
// oldest entries until the tier holds at most max_bytes.
struct PruneSpec {
  std::optional<std::string> version;        // entries of this encoder version...
  std::optional<std::string> encoder;        // ...(only of this encoder, when set)
  std::optional<int64_t> older_than_unix_ms; // entries created before this time
  std::optional<uint64_t> max_bytes;         // keep the newest entries within this many bytes
  // encoder -> the version it serves now: entries of these encoders under any OTHER version
  // (stale after an in-place update) are selected.
  std::map<std::string, std::string> stale_except;
};

struct PruneResult {
  uint64_t entries = 0;
  uint64_t bytes = 0;
};

struct TierStats {
  std::string tier;     // "memory", "rocksdb", "redis", ...
  uint64_t entries = 0; // approximate for RocksDB and Redis
  uint64_t bytes = 0;   // approximate for RocksDB; 0 when unknown (Redis)
  uint64_t hits = 0, misses = 0, evictions = 0, corrupt = 0;
};

// What one tier holds of one encoder version.
struct VersionStats {
  std::string encoder, version;
  uint64_t entries = 0, bytes = 0;
};

// The per-tier metric series. Tiers update them; stats() reads them back.
struct TierMetrics {
  TierMetrics(metrics::Registry &registry, const std::string &tier);
  // The stats of a tier named `tier` with these counters; entries and bytes are the tier's to fill.
  TierStats stats(const std::string &tier) const;
  metrics::Counter &hits, &misses, &evictions, &corrupt;
  metrics::Counter &write_errors; // writes the tier could not store (a full disk, Redis down): later misses
  metrics::Gauge &bytes;
};

// One storage tier. get/put/erase are thread-safe and never throw.
class Tier {
public:
  virtual ~Tier() = default;
  virtual const std::string &name() const = 0;
  // A hit is a verified entry; a corrupt value is erased, counted and returned as a miss.
  virtual std::optional<Entry> get(const CacheKey &key) = 0;
  virtual void put(const CacheKey &key, const Entry &entry) = 0;
  virtual void erase(const CacheKey &key) = 0;
  virtual TierStats stats() const = 0;
  // Entries and bytes per (encoder, version), by name. A scan over every entry (RocksDB reads each
  // entry's envelope), for reports rather than hot paths. Tiers that cannot (Redis) return {}.
  virtual std::vector<VersionStats> versions() const { return {}; }
  // Removes what `spec` selects. Tiers that cannot (Redis: entries expire by TTL) return {}.
  virtual PruneResult prune(const PruneSpec &) { return {}; }
  // Writes to this tier cost no I/O (the memory tier): TieredCache performs them inline.
  virtual bool inline_writes() const { return false; }
};

// The in-memory LRU, bounded in bytes (settings.memory_max_bytes over settings.memory_shards).
std::unique_ptr<Tier> make_memory_tier(const CacheSettings &settings, metrics::Registry &registry);

// True when this build has RocksDB / Redis support (CMake JIT_WITH_ROCKSDB / JIT_WITH_REDIS).
bool rocksdb_available();
bool redis_available();

// RocksDB at settings.rocksdb_path (created if missing). Throws CacheError when it cannot be opened
// or the build has no RocksDB.
std::unique_ptr<Tier> make_rocksdb_tier(const CacheSettings &settings, metrics::Registry &registry);

// RocksDB at settings.rocksdb_path shared by many processes at once (settings.rocksdb_shared; the
// design is in shared_rocksdb_tier.cpp): this process claims a free slot database of its own, written
// only by it, and reads every other slot. The tier is named "rocksdb"; a process that forks gives the
// child a slot of its own on the child's first call. Throws CacheError for bad settings, an unusable
// directory, no free slot (all rocksdb_shared_max_slots held by live processes), or a build without
// RocksDB.
std::unique_ptr<Tier> make_shared_rocksdb_tier(const CacheSettings &settings, metrics::Registry &registry);

// Redis at settings.redis_url. Throws CacheError for a malformed URL or a build without Redis; an
// unreachable server is not an error: it serves misses until it comes back.
std::unique_ptr<Tier> make_redis_tier(const CacheSettings &settings, metrics::Registry &registry);

// The tiers in order, the write queue and its writer thread.
class TieredCache {
public:
  // `tiers` in lookup order (fastest first). The registry must outlive the cache.
  TieredCache(std::vector<std::unique_ptr<Tier>> tiers, const CacheSettings &settings, metrics::Registry &registry);
  // The tiers the settings enable: memory, RocksDB, Redis. Throws CacheError (see the factories).
  static std::unique_ptr<TieredCache> from_settings(const CacheSettings &settings, metrics::Registry &registry);
  // Finishes the queued writes, then stops the writer (bounded by the tiers' own timeouts).
  ~TieredCache();

  TieredCache(const TieredCache &) = delete;
  TieredCache &operator=(const TieredCache &) = delete;

  // Tries each tier in order; a hit in tier i is written (asynchronously) into tiers 0..i-1.
  std::optional<Entry> get(const CacheKey &key);
  // Writes `entry` into every tier without blocking. Returns false when the write queue was full and
  // the write to the lower tiers was dropped (counted in jit_cache_dropped_writes_total).
  bool put(const CacheKey &key, const Entry &entry);
  // Erases `key` from every tier now, and drops its queued writes (a write the writer thread is
  // applying at that moment may still land after it).
  void erase(const CacheKey &key);
  // Waits until every queued write has been applied.
  void flush();
  // Prunes every tier (after flush()). Returns the totals.
  PruneResult prune(const PruneSpec &spec);

  std::vector<TierStats> stats() const;
  // Tier::versions() of each tier, in tier order (after flush()).
  std::vector<std::vector<VersionStats>> versions();
  size_t write_queue_depth() const;
  uint64_t dropped_writes() const;
  size_t tier_count() const;
  Tier &tier(size_t i);

  struct Impl;

private:
  std::unique_ptr<Impl> impl_;
};

// Current time in Unix milliseconds.
int64_t now_unix_ms();

} // namespace jit::cache
