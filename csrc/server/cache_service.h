// The server's embedding cache, in front of the engine: every sample computed once.
//
// A request of POST /v1/encode/{encoder} is split into its rows (samples, dimension 0). Each row
// gets a key: its content digest (cache::CacheKey::content_of_row over the request's "params" and
// the row's inputs, cut to its own length) or the user's own sample key, bound to the encoder and
// the version serving it now. Rows found in the cache tiers are served from there; the others go to
// the engine; their outputs are stored, after the response, by a background thread (Entry frames,
// then TieredCache's own write queue for RocksDB and Redis). A response says which rows came from
// the cache (meta "cache_hits"). A row that another request is computing at the same moment is
// awaited rather than computed twice (single flight), and a row repeated within one request is
// computed once.
//
// Request meta (all optional; docs/wire-format.md, "Cache"):
//   "cache":   "use" (default) | "refresh" (compute and overwrite) | "bypass" (neither read nor write)
//   "keys":    [str, ...] one per row: the user's stable sample keys, used instead of content digests
//   "lengths": [int, ...] one per row: the row's own length along the sequence dimension of the
//              token inputs, which the client padded; rows are hashed and stored at that length
//   "params":  str or bin: preprocessing params, hashed into every content digest as they are
//
// POST /v1/cache/lookup: the cache-first protocol. A client sends the content digests (or sample
// keys) of its rows, before any inputs:
//   request meta  {"encoder": name, "digests": [bin(16) | 32 hex digits, ...]} or {..., "keys": [str, ...]}
//   response meta {"encoder": name, "version": serving version, "hits": [row index, ...]}
//   response tensors "<row index>/<output name>", each the row's output without a batch dimension
// and uploads inputs only for the rows that missed.
//
// Versions: a key binds the version serving at lookup time; outputs are stored under the version
// that computed them. When an in-place update lands between the two, the request is recomputed
// whole on the new version, so one response never mixes versions and an old entry is never
// served for a new version.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cache/cache.h"
#include "codec/codec.h"
#include "common/metrics.h"
#include "engine/engine.h"
#include "server/config.h"
#include "server/encode_handler.h"

namespace jit::server {

class CacheService {
public:
  // Opens the tiers `config` enables. The engine and registry must outlive the service.
  // Throws ServerError(kBadRequest) naming the setting when a tier cannot be opened (a RocksDB
  // folder that cannot be created, a tier this build lacks, a malformed Redis URL).
  CacheService(const CacheConfig &config, engine::Engine &engine, metrics::Registry &registry);
  // Stores the outputs still waiting, then flushes the tiers' write queue.
  ~CacheService();
  CacheService(const CacheService &) = delete;
  CacheService &operator=(const CacheService &) = delete;

  // POST /v1/encode/{encoder} through the cache (see the file comment). `cacheable` false (the
  // encoder opted out) or meta "cache": "bypass" run the plain handle_encode().
  // `frame` (and the body it points into) must stay alive until this returns.
  // Throws ServerError: 400 malformed cache meta, 413 more rows than max_batch_size, and the
  // engine's errors as handle_encode() does.
  std::string encode(const std::string &encoder, bool cacheable, const codec::DecodedFrame &frame,
                     std::optional<std::chrono::system_clock::time_point> deadline,
                     const ResponseOptions &response_options);

  // POST /v1/cache/lookup (see the file comment). Throws ServerError: 400 malformed meta or more
  // than max_lookup_keys keys, 404 unknown encoder.
  std::string lookup(const codec::DecodedFrame &frame);

  // GET /v1/cache/stats: {"tiers": [{"tier", "entries", "bytes", "hits", "misses", "hit_rate",
  // "evictions", "corrupt"}, ...], "write_queue_depth", "dropped_writes", "pending_entries",
  // "pending_bytes", "encoders": [{"name", "version", "rows_hit", "rows_missed"}, ...]}, and with
  // `versions` (a scan of every tier that can) "versions": [{"tier", "encoder", "version",
  // "entries", "bytes", "serving"}, ...], "serving" telling the version served now from a stale one.
  std::string stats_json(bool versions = false);

  // POST /v1/cache/prune with a JSON body {"version": str, "encoder": str, "older_than_s": n,
  // "max_bytes": n, "stale": true} (any subset; "stale" selects every entry of a served encoder
  // under a version other than the one serving now). Answers {"entries": n, "bytes": n}.
  // Throws ServerError(kBadRequest) for malformed JSON, unknown keys or an empty selection.
  std::string prune(const std::string &body);

  // Waits until every computed row is stored in every tier.
  void flush();

  cache::TieredCache &tiers() { return *cache_; }

private:
  struct Pending {
    cache::CacheKey key;
    std::string encoder, version;
    std::vector<Tensor> outputs; // the row's outputs, without a batch dimension
    uint64_t nbytes = 0;
    uint64_t flight = 0; // the flight this row lands once stored (0: none)
  };

  // One computed row for the requests that waited for it (single flight).
  struct RowResult {
    std::vector<Tensor> outputs; // [1, ...] each, spec order
    std::string version;
  };
  class Flights; // cache_service.cpp

  // jit_cache_rows_total{encoder, result="hit"|"miss"}: samples looked up, by encode and lookup.
  metrics::Counter &rows_counter(const std::string &encoder, bool hit);

  // Queues a computed row for storing; drops it (counted) when pending_bytes would be exceeded.
  void store(Pending p);
  void writer_loop();

  const CacheConfig config_;
  engine::Engine &engine_;
  metrics::Registry &registry_;
  std::unique_ptr<cache::TieredCache> cache_;
  metrics::Counter &dropped_;
  metrics::Gauge &pending_gauge_;

  std::mutex flights_mu_; // guards flights_
  // A row being computed, until its entry is in the cache: later requests find one or the other.
  struct Flight {
    uint64_t id;
    std::shared_future<RowResult> result;
  };
  std::unordered_map<cache::CacheKey, Flight, cache::CacheKeyHash> flights_;
  uint64_t next_flight_ = 1;
  // Ends the flight `id` of `key` (its entry is stored, or will not be).
  void land(const cache::CacheKey &key, uint64_t id);

  std::mutex mu_; // guards the queue below
  std::condition_variable cv_, idle_cv_;
  std::deque<Pending> queue_;
  uint64_t queued_bytes_ = 0;
  size_t writing_ = 0; // rows taken off the queue, not yet stored
  bool stop_ = false;
  std::thread writer_;
};

} // namespace jit::server
