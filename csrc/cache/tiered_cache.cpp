// TieredCache: lookups through the tiers in order, fills of the tiers above a hit, and the bounded
// write queue that keeps every write off the caller's path.
//
// Writes to inline tiers (the memory LRU: a map insert) happen on the caller's thread, so a get
// right after a put hits. Writes to the others (disk, network) are queued as (key, entry, tier
// mask) and applied by one writer thread in order; when the queue is over either bound, the write
// is dropped and counted rather than making the caller wait.
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "cache/cache.h"

namespace jit::cache {

struct TieredCache::Impl {
  struct Write {
    CacheKey key;
    Entry entry;
    std::vector<size_t> tiers; // indexes of the tiers to write
  };

  Impl(std::vector<std::unique_ptr<Tier>> t, const CacheSettings &s, metrics::Registry &r)
      : tiers(std::move(t)), settings(s),
        queue_depth(r.gauge("jit_cache_write_queue_depth", "Writes waiting for the slower cache tiers")),
        dropped(r.counter("jit_cache_dropped_writes_total", "Cache writes dropped because the write queue was full")) {
    writer = std::thread([this] { run(); });
  }

  ~Impl() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stopping = true;
    }
    cv.notify_all();
    writer.join();
  }

  // Queues `w` unless the queue is over a bound. Returns false when dropped.
  bool enqueue(Write w) {
    uint64_t n = w.entry.nbytes();
    {
      std::lock_guard<std::mutex> lock(mu);
      if (queue.size() >= settings.write_queue_max_entries ||
          (!queue.empty() && queued_bytes + n > settings.write_queue_max_bytes)) {
        dropped.inc();
        return false;
      }
      queued_bytes += n;
      queue.push_back(std::move(w));
      queue_depth.set(static_cast<double>(queue.size()));
    }
    cv.notify_all();
    return true;
  }

  // Writes `entry` into the tiers in `which`: inline tiers now, the others through the queue.
  bool write(const CacheKey &key, const Entry &entry, const std::vector<size_t> &which) {
    Write w{key, entry, {}};
    for (size_t i : which) {
      if (tiers[i]->inline_writes())
        tiers[i]->put(key, entry);
      else
        w.tiers.push_back(i);
    }
    return w.tiers.empty() || enqueue(std::move(w));
  }

  void run() {
    std::unique_lock<std::mutex> lock(mu);
    for (;;) {
      cv.wait(lock, [&] { return stopping || !queue.empty(); });
      if (queue.empty()) return; // stopping, and every queued write is done
      Write w = std::move(queue.front());
      queue.pop_front();
      in_flight = true;
      lock.unlock();
      for (size_t i : w.tiers)
        tiers[i]->put(w.key, w.entry); // tiers never throw
      lock.lock();
      in_flight = false;
      queued_bytes -= w.entry.nbytes();
      queue_depth.set(static_cast<double>(queue.size()));
      if (queue.empty()) idle_cv.notify_all();
    }
  }

  std::vector<std::unique_ptr<Tier>> tiers;
  CacheSettings settings;
  metrics::Gauge &queue_depth;
  metrics::Counter &dropped;

  mutable std::mutex mu;
  std::condition_variable cv, idle_cv;
  std::deque<Write> queue;
  uint64_t queued_bytes = 0;
  bool in_flight = false;
  bool stopping = false;
  std::thread writer; // last: started once everything above exists
};

TieredCache::TieredCache(std::vector<std::unique_ptr<Tier>> tiers, const CacheSettings &settings,
                         metrics::Registry &registry) {
  for (const auto &t : tiers)
    if (!t) throw CacheError("a cache tier is null");
  impl_ = std::make_unique<Impl>(std::move(tiers), settings, registry);
}

std::unique_ptr<TieredCache> TieredCache::from_settings(const CacheSettings &settings, metrics::Registry &registry) {
  std::vector<std::unique_ptr<Tier>> tiers;
  if (settings.memory_max_bytes > 0) tiers.push_back(make_memory_tier(settings, registry));
  if (!settings.rocksdb_path.empty())
    tiers.push_back(settings.rocksdb_shared ? make_shared_rocksdb_tier(settings, registry)
                                            : make_rocksdb_tier(settings, registry));
  if (!settings.redis_url.empty()) tiers.push_back(make_redis_tier(settings, registry));
  return std::make_unique<TieredCache>(std::move(tiers), settings, registry);
}

TieredCache::~TieredCache() = default;

std::optional<Entry> TieredCache::get(const CacheKey &key) {
  for (size_t i = 0; i < impl_->tiers.size(); ++i) {
    auto hit = impl_->tiers[i]->get(key);
    if (!hit) continue;
    if (i > 0) {
      std::vector<size_t> above(i);
      for (size_t j = 0; j < i; ++j)
        above[j] = j;
      impl_->write(key, *hit, above); // a dropped fill only costs a later lower-tier hit
    }
    return hit;
  }
  return std::nullopt;
}

bool TieredCache::put(const CacheKey &key, const Entry &entry) {
  if (entry.nbytes() > impl_->settings.max_entry_bytes || !entry.frame())
    return true; // not cached by design, not a dropped write
  std::vector<size_t> all(impl_->tiers.size());
  for (size_t i = 0; i < all.size(); ++i)
    all[i] = i;
  return impl_->write(key, entry, all);
}

void TieredCache::erase(const CacheKey &key) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (auto it = impl_->queue.begin(); it != impl_->queue.end();) {
      if (it->key == key) {
        impl_->queued_bytes -= it->entry.nbytes();
        it = impl_->queue.erase(it);
      } else {
        ++it;
      }
    }
    impl_->queue_depth.set(static_cast<double>(impl_->queue.size()));
  }
  for (auto &t : impl_->tiers)
    t->erase(key);
}

void TieredCache::flush() {
  std::unique_lock<std::mutex> lock(impl_->mu);
  impl_->idle_cv.wait(lock, [&] { return impl_->queue.empty() && !impl_->in_flight; });
}

PruneResult TieredCache::prune(const PruneSpec &spec) {
  flush();
  PruneResult total;
  for (auto &t : impl_->tiers) {
    PruneResult r = t->prune(spec);
    total.entries += r.entries;
    total.bytes += r.bytes;
  }
  return total;
}

std::vector<TierStats> TieredCache::stats() const {
  std::vector<TierStats> out;
  for (const auto &t : impl_->tiers)
    out.push_back(t->stats());
  return out;
}

std::vector<std::vector<VersionStats>> TieredCache::versions() {
  flush();
  std::vector<std::vector<VersionStats>> out;
  for (const auto &t : impl_->tiers)
    out.push_back(t->versions());
  return out;
}

size_t TieredCache::write_queue_depth() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->queue.size();
}

uint64_t TieredCache::dropped_writes() const {
  return static_cast<uint64_t>(impl_->dropped.value());
}

size_t TieredCache::tier_count() const {
  return impl_->tiers.size();
}

Tier &TieredCache::tier(size_t i) {
  return *impl_->tiers.at(i);
}

} // namespace jit::cache
