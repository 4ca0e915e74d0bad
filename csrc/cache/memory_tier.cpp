// The in-memory tier: an LRU over entries, bounded in bytes, sharded by key so that concurrent
// lookups of different keys rarely share a lock. Each shard holds an equal share of the budget and
// evicts its least recently used entries when a put would exceed it.
#include <algorithm>
#include <list>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/cache.h"
#include "cache/cache_internal.h"

namespace jit::cache {

namespace {

// Bookkeeping bytes charged per entry on top of its frame (list node, map slot, key, Entry): small
// entries must still count, or a byte bound would admit unbounded numbers of tiny ones.
constexpr uint64_t kEntryOverhead = 160;

uint64_t charge_of(const Entry &e) {
  return e.nbytes() + kEntryOverhead;
}

class MemoryTier final : public Tier {
public:
  MemoryTier(const CacheSettings &s, metrics::Registry &registry) : metrics_(registry, name_) {
    size_t n = std::max<size_t>(1, s.memory_shards);
    shards_ = std::vector<Shard>(n);
    for (auto &sh : shards_)
      sh.capacity = s.memory_max_bytes / n;
  }

  const std::string &name() const override { return name_; }
  bool inline_writes() const override { return true; }

  std::optional<Entry> get(const CacheKey &key) override {
    Shard &sh = shard(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    auto it = sh.index.find(key);
    if (it == sh.index.end()) {
      metrics_.misses.inc();
      return std::nullopt;
    }
    sh.lru.splice(sh.lru.begin(), sh.lru, it->second); // most recently used first
    metrics_.hits.inc();
    return it->second->second;
  }

  void put(const CacheKey &key, const Entry &entry) override {
    uint64_t charge = charge_of(entry);
    Shard &sh = shard(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    remove_locked(sh, key);
    if (charge > sh.capacity) return; // larger than the whole shard: caching it would evict everything for one entry
    while (sh.bytes + charge > sh.capacity && !sh.lru.empty()) {
      remove_node_locked(sh, std::prev(sh.lru.end()));
      metrics_.evictions.inc();
    }
    sh.lru.emplace_front(key, entry);
    sh.index[key] = sh.lru.begin();
    sh.bytes += charge;
    metrics_.bytes.add(static_cast<double>(charge));
  }

  void erase(const CacheKey &key) override {
    Shard &sh = shard(key);
    std::lock_guard<std::mutex> lock(sh.mu);
    remove_locked(sh, key);
  }

  TierStats stats() const override {
    TierStats st = metrics_.stats(name_);
    for (const auto &sh : shards_) {
      std::lock_guard<std::mutex> lock(sh.mu);
      st.entries += sh.lru.size();
      st.bytes += sh.bytes;
    }
    return st;
  }

  std::vector<VersionStats> versions() const override {
    std::map<std::pair<std::string, std::string>, VersionStats> by;
    for (const auto &sh : shards_) {
      std::lock_guard<std::mutex> lock(sh.mu);
      for (const auto &[key, e] : sh.lru) {
        VersionStats &v = by[{e.encoder(), e.version()}];
        v.entries += 1;
        v.bytes += e.nbytes();
      }
    }
    std::vector<VersionStats> out;
    for (auto &[id, v] : by) {
      v.encoder = id.first;
      v.version = id.second;
      out.push_back(std::move(v));
    }
    return out;
  }

  PruneResult prune(const PruneSpec &spec) override {
    PruneResult res;
    uint64_t per_shard_max = spec.max_bytes ? *spec.max_bytes / shards_.size() : 0;
    for (auto &sh : shards_) {
      std::lock_guard<std::mutex> lock(sh.mu);
      for (auto it = sh.lru.begin(); it != sh.lru.end();) {
        const Entry &e = it->second;
        internal::EntryMeta m{"", e.encoder(), e.version(), e.created_unix_ms()};
        auto next = std::next(it);
        if (internal::prune_selects(spec, m)) {
          res.entries += 1;
          res.bytes += e.nbytes();
          remove_node_locked(sh, it);
        }
        it = next;
      }
      // max_bytes: the least recently used go first (recency is what an LRU knows of age).
      while (spec.max_bytes && sh.bytes > per_shard_max && !sh.lru.empty()) {
        auto last = std::prev(sh.lru.end());
        res.entries += 1;
        res.bytes += last->second.nbytes();
        remove_node_locked(sh, last);
      }
    }
    metrics_.evictions.inc(static_cast<double>(res.entries));
    return res;
  }

private:
  using Lru = std::list<std::pair<CacheKey, Entry>>;
  struct Shard {
    mutable std::mutex mu;
    Lru lru;
    std::unordered_map<CacheKey, Lru::iterator, CacheKeyHash> index;
    uint64_t bytes = 0;
    uint64_t capacity = 0;
  };

  Shard &shard(const CacheKey &key) {
    // The high half: CacheKeyHash (used inside a shard's map) mixes mostly the low half.
    return shards_[static_cast<size_t>(key.high() % shards_.size())];
  }

  void remove_node_locked(Shard &sh, Lru::iterator node) {
    uint64_t charge = charge_of(node->second);
    sh.index.erase(node->first);
    sh.lru.erase(node);
    sh.bytes -= charge;
    metrics_.bytes.add(-static_cast<double>(charge));
  }

  void remove_locked(Shard &sh, const CacheKey &key) {
    auto it = sh.index.find(key);
    if (it != sh.index.end()) remove_node_locked(sh, it->second);
  }

  const std::string name_ = "memory";
  TierMetrics metrics_;
  std::vector<Shard> shards_;
};

} // namespace

std::unique_ptr<Tier> make_memory_tier(const CacheSettings &settings, metrics::Registry &registry) {
  if (settings.memory_shards == 0) throw CacheError("memory_shards must be at least 1");
  return std::make_unique<MemoryTier>(settings, registry);
}

} // namespace jit::cache
