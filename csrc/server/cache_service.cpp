// CacheService: rows -> keys -> tiers, misses -> engine, outputs -> entries (see cache_service.h).
#include "server/cache_service.h"

#include <msgpack.hpp>

#include <algorithm>
#include <future>
#include <map>
#include <stdexcept>
#include <unordered_map>

#include "common/rows.h"
#include "common/trace.h"
#include "server/cache_meta.h"
#include "server/encode_handler.h"
#include "server/errors.h"

namespace jit::server {

namespace {

using Code = ServerError::Code;
using namespace cache_meta;

enum class Mode { kUse, kRefresh, kBypass };

// The cache's part of a request's meta.
struct CacheMeta {
  Mode mode = Mode::kUse;
  std::vector<std::string> keys; // empty or one per row
  std::vector<int64_t> lengths;  // empty or one per row
  std::string params;            // hashed into every content digest as is
};

CacheMeta parse_cache_meta(const std::string &meta_msgpack, size_t rows) {
  CacheMeta m;
  msgpack::object_handle h = unpack_meta(meta_msgpack);
  const msgpack::object &meta = h.get();
  if (meta.type == msgpack::type::NIL) return m;
  if (meta.type != msgpack::type::MAP) bad("meta must be a map");
  if (const msgpack::object *o = field(meta, "cache")) {
    const std::string mode = as_text(*o, "meta.cache");
    if (mode == "use")
      m.mode = Mode::kUse;
    else if (mode == "refresh")
      m.mode = Mode::kRefresh;
    else if (mode == "bypass")
      m.mode = Mode::kBypass;
    else
      bad("meta.cache must be \"use\", \"refresh\" or \"bypass\", got \"" + mode + "\"");
  }
  if (const msgpack::object *o = field(meta, "keys"); o && o->type != msgpack::type::NIL) {
    const auto &a = array_of(*o, "meta.keys", rows);
    for (uint32_t i = 0; i < a.size; ++i) {
      m.keys.push_back(as_text(a.ptr[i], "meta.keys[" + std::to_string(i) + "]"));
      if (m.keys.back().empty()) bad("meta.keys[" + std::to_string(i) + "] is empty");
    }
  }
  if (const msgpack::object *o = field(meta, "lengths"); o && o->type != msgpack::type::NIL) {
    const auto &a = array_of(*o, "meta.lengths", rows);
    for (uint32_t i = 0; i < a.size; ++i) {
      if (a.ptr[i].type != msgpack::type::POSITIVE_INTEGER)
        bad("meta.lengths[" + std::to_string(i) + "] must be a non-negative integer");
      m.lengths.push_back(static_cast<int64_t>(std::min<uint64_t>(a.ptr[i].via.u64, INT64_MAX)));
    }
  }
  if (const msgpack::object *o = field(meta, "params"); o && o->type != msgpack::type::NIL)
    m.params = as_text(*o, "meta.params");
  return m;
}

const TensorSpec *spec_of(const std::vector<TensorSpec> &specs, const std::string &name) {
  for (const TensorSpec &s : specs) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

// A row's output as stored: the batch dimension dropped.
Tensor without_batch_dim(Tensor t) {
  t.shape.erase(t.shape.begin());
  return t;
}

Tensor with_batch_dim_owned(Tensor t) {
  t.shape.insert(t.shape.begin(), 1);
  return t;
}

TensorView with_batch_dim(const Tensor &t) {
  TensorView v = t.view();
  v.shape.insert(v.shape.begin(), 1);
  return v;
}

} // namespace

// The rows one request computes while others wait for them (single flight). Every claimed row is
// delivered or, when the request fails first, abandoned with an exception, so no waiter hangs.
class CacheService::Flights {
public:
  explicit Flights(CacheService &service) : s_(service) {}
  ~Flights() {
    std::lock_guard<std::mutex> lock(s_.flights_mu_);
    for (Owned &o : owned_) {
      if (!o.done)
        o.promise->set_exception(std::make_exception_ptr(std::runtime_error("the computing request failed")));
      // A flight handed to the writer lands when its entry is stored; any other ends here.
      if (!o.handed_off) s_.flights_.erase(o.key);
    }
  }
  Flights(const Flights &) = delete;
  Flights &operator=(const Flights &) = delete;

  // Splits `rows` into the rows this request looks up and computes (`own`), rows equal to an
  // earlier row of this request (`dup_of`: row -> that row) and rows another request is looking
  // up or computing (`waits`).
  void claim(const std::string &encoder, const std::string &version, const std::vector<cache::CacheKey> &digests,
             std::vector<size_t> rows, std::vector<size_t> &own, std::map<size_t, size_t> &dup_of,
             std::vector<std::pair<size_t, std::shared_future<RowResult>>> &waits) {
    own.clear();
    std::unordered_map<cache::CacheKey, size_t, cache::CacheKeyHash> first;
    std::lock_guard<std::mutex> lock(s_.flights_mu_);
    for (size_t r : rows) {
      const cache::CacheKey key = cache::CacheKey::bind(encoder, version, digests[r]);
      if (auto f = first.find(key); f != first.end()) {
        dup_of[r] = f->second;
        continue;
      }
      first.emplace(key, r);
      if (auto it = s_.flights_.find(key); it != s_.flights_.end()) {
        waits.emplace_back(r, it->second.result);
        continue;
      }
      auto promise = std::make_shared<std::promise<RowResult>>();
      const uint64_t id = s_.next_flight_++;
      s_.flights_.emplace(key, Flight{id, promise->get_future().share()});
      owned_.push_back({key, r, id, std::move(promise), false, false});
      own.push_back(r);
    }
  }

  // Hands the computed rows to their waiters.
  void deliver(const std::map<size_t, std::vector<Tensor>> &computed, const std::map<size_t, std::string> &versions) {
    std::lock_guard<std::mutex> lock(s_.flights_mu_);
    for (Owned &o : owned_) {
      auto it = computed.find(o.row);
      if (o.done || it == computed.end()) continue;
      o.promise->set_value(RowResult{it->second, versions.at(o.row)});
      o.done = true;
    }
  }

  // Hands the rows found in the cache to their waiters (their flights end with this request).
  void deliver_hits(const std::vector<std::optional<cache::Entry>> &hits, const std::string &version) {
    std::lock_guard<std::mutex> lock(s_.flights_mu_);
    for (Owned &o : owned_) {
      if (o.done || !hits[o.row]) continue;
      RowResult got{{}, version};
      for (const Tensor &t : hits[o.row]->tensors())
        got.outputs.push_back(with_batch_dim_owned(t));
      o.promise->set_value(std::move(got));
      o.done = true;
    }
  }

  // The flight of row `row`, now handed to the writer (which lands it), or 0 when this request
  // owns none for it.
  uint64_t hand_off(size_t row) {
    std::lock_guard<std::mutex> lock(s_.flights_mu_);
    for (Owned &o : owned_) {
      if (o.row != row || !o.done) continue;
      o.handed_off = true;
      return o.id;
    }
    return 0;
  }

private:
  struct Owned {
    cache::CacheKey key;
    size_t row;
    uint64_t id;
    std::shared_ptr<std::promise<RowResult>> promise;
    bool done, handed_off;
  };
  CacheService &s_;
  std::vector<Owned> owned_;
};

CacheService::CacheService(const CacheConfig &config, engine::Engine &engine, metrics::Registry &registry)
    : config_(config), engine_(engine), registry_(registry),
      dropped_(
          registry.counter("jit_cache_dropped_writes_total", "Cache writes dropped because the write queue was full")),
      pending_gauge_(registry.gauge("jit_cache_pending_bytes", "Computed outputs waiting to be stored as entries")) {
  try {
    cache_ = cache::TieredCache::from_settings(config_.settings, registry_);
  } catch (const cache::CacheError &e) {
    throw ServerError(Code::kBadRequest, std::string("cache: ") + e.what());
  }
  writer_ = std::thread([this] {
    trace::name_thread("cache writer");
    writer_loop();
  });
}

CacheService::~CacheService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  writer_.join();
  cache_->flush();
}

metrics::Counter &CacheService::rows_counter(const std::string &encoder, bool hit) {
  return registry_.counter("jit_cache_rows_total", "Samples looked up in the cache, by encoder and result",
                           {{"encoder", encoder}, {"result", hit ? "hit" : "miss"}});
}

void CacheService::store(Pending p) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (queued_bytes_ + p.nbytes > config_.pending_bytes) {
      dropped_.inc();
      land(p.key, p.flight);
      return;
    }
    queued_bytes_ += p.nbytes;
    pending_gauge_.set(static_cast<double>(queued_bytes_));
    queue_.push_back(std::move(p));
  }
  cv_.notify_one();
}

void CacheService::writer_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return; // stopping, and everything queued is stored
    Pending p = std::move(queue_.front());
    queue_.pop_front();
    ++writing_;
    lock.unlock();
    try {
      trace::Scope span("store", "cache");
      span.arg("encoder", p.encoder);
      std::vector<TensorView> views;
      for (const Tensor &t : p.outputs)
        views.push_back(t.view());
      const cache::Entry entry = cache::Entry::make(p.key, p.encoder, p.version, views);
      if (entry.nbytes() <= config_.settings.max_entry_bytes) cache_->put(p.key, entry);
    } catch (const std::exception &) {
      dropped_.inc(); // outputs the codec cannot frame are simply not cached
    }
    land(p.key, p.flight);
    const uint64_t n = p.nbytes;
    p.outputs.clear(); // frees the batch's outputs outside the lock
    lock.lock();
    --writing_;
    queued_bytes_ -= n;
    pending_gauge_.set(static_cast<double>(queued_bytes_));
    if (queue_.empty() && writing_ == 0) idle_cv_.notify_all();
  }
}

void CacheService::land(const cache::CacheKey &key, uint64_t id) {
  if (id == 0) return;
  std::lock_guard<std::mutex> lock(flights_mu_);
  auto it = flights_.find(key);
  if (it != flights_.end() && it->second.id == id) flights_.erase(it);
}

void CacheService::flush() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    idle_cv_.wait(lock, [&] { return queue_.empty() && writing_ == 0; });
  }
  cache_->flush();
}

std::string CacheService::encode(const std::string &encoder, bool cacheable, const codec::DecodedFrame &frame,
                                 std::optional<std::chrono::system_clock::time_point> deadline,
                                 const ResponseOptions &response_options) {
  const std::vector<Tensor> inputs = borrow_inputs(frame);
  size_t rows = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].shape.empty())
      throw ServerError(Code::kUnprocessable, "input '" + inputs[i].name + "' has no batch dimension");
    if (i > 0 && static_cast<size_t>(inputs[i].shape[0]) != rows)
      throw ServerError(Code::kUnprocessable, "inputs disagree on the number of samples: '" + inputs[0].name +
                                                  "' has " + std::to_string(rows) + ", '" + inputs[i].name + "' has " +
                                                  std::to_string(inputs[i].shape[0]));
    rows = static_cast<size_t>(inputs[i].shape[0]);
  }
  const CacheMeta meta = parse_cache_meta(frame.meta_msgpack, rows);
  std::optional<engine::EncoderInfo> info = engine_.info(encoder);
  if (!info) throw ServerError(Code::kNotFound, "unknown encoder '" + encoder + "'");
  if (!cacheable || meta.mode == Mode::kBypass || inputs.empty())
    return handle_encode(engine_, encoder, frame, deadline, response_options, &registry_);
  if (rows > info->config.batching.max_batch_size)
    throw ServerError(Code::kPayloadTooLarge, "request has " + std::to_string(rows) + " samples, more than encoder '" +
                                                  encoder + "' takes at once (max_batch_size " +
                                                  std::to_string(info->config.batching.max_batch_size) + ")");

  // Sequence dimensions of the inputs (hashing and per-row cuts) and of the outputs.
  std::vector<int> seq_dims(inputs.size(), -1);
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec *s = spec_of(info->spec.inputs, inputs[i].name);
    if (s && s->seq_dim >= 1 && static_cast<size_t>(s->seq_dim) < inputs[i].shape.size()) seq_dims[i] = s->seq_dim;
  }
  const bool cut = !meta.lengths.empty();
  if (cut) {
    if (std::all_of(seq_dims.begin(), seq_dims.end(), [](int d) { return d < 0; }))
      bad("meta.lengths given, but encoder '" + encoder + "' has no sequence input");
    for (size_t r = 0; r < rows; ++r) {
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (seq_dims[i] >= 0 && meta.lengths[r] > inputs[i].shape[static_cast<size_t>(seq_dims[i])])
          bad("meta.lengths[" + std::to_string(r) + "] = " + std::to_string(meta.lengths[r]) +
              " is longer than input '" + inputs[i].name + "' (" +
              std::to_string(inputs[i].shape[static_cast<size_t>(seq_dims[i])]) + ")");
      }
    }
  }
  std::vector<TensorView> views;
  for (const Tensor &t : inputs)
    views.push_back(t.view());
  std::vector<cache::CacheKey> digests(rows);
  try {
    for (size_t r = 0; r < rows; ++r) {
      digests[r] = meta.keys.empty() ? cache::CacheKey::content_of_row(meta.params, views, static_cast<int64_t>(r),
                                                                       seq_dims, cut ? meta.lengths[r] : -1)
                                     : cache::CacheKey::content_of_sample_key(meta.keys[r]);
    }
  } catch (const cache::CacheError &e) {
    throw ServerError(Code::kUnprocessable, e.what());
  }
  metrics::Counter &rows_hit = rows_counter(encoder, true);
  metrics::Counter &rows_missed = rows_counter(encoder, false);

  // Two rounds at most: the second recomputes everything when a version switch raced the first.
  for (int round = 0;; ++round) {
    const bool read = meta.mode == Mode::kUse && round == 0;
    std::string version = info->version;
    std::vector<std::optional<cache::Entry>> hits(rows);

    // Single flight: each row is claimed before the cache is read, and a flight ends only once its
    // entry is stored, so a row is either found in the cache, awaited from the request computing
    // it right now, or computed here; a row repeated within this request is computed once.
    std::vector<size_t> own(rows);
    for (size_t r = 0; r < rows; ++r)
      own[r] = r;
    std::map<size_t, size_t> dup_of;
    std::vector<std::pair<size_t, std::shared_future<RowResult>>> waits;
    Flights flights(*this);
    if (read) flights.claim(encoder, version, digests, own, own, dup_of, waits);
    std::vector<size_t> misses;
    {
      trace::Scope span("cache lookup", "cache");
      span.arg("rows", static_cast<int64_t>(own.size()));
      for (size_t r : own) {
        if (read) hits[r] = cache_->get(cache::CacheKey::bind(encoder, version, digests[r]));
        if (!hits[r]) misses.push_back(r);
      }
      span.arg("misses", static_cast<int64_t>(misses.size()));
    }
    if (read) {
      flights.deliver_hits(hits, version);
      rows_hit.inc(static_cast<double>(own.size() - misses.size()));
      rows_missed.inc(static_cast<double>(misses.size()));
    }
    own = misses;

    // Computed rows' outputs, in spec order, each [1, ...] cut to the row's length.
    std::map<size_t, std::vector<Tensor>> computed;
    std::vector<std::string> computed_versions;
    Timings timings;
    std::optional<engine::Result> whole; // all rows computed by one engine request

    auto row_inputs = [&](size_t r) {
      std::vector<Tensor> row;
      for (size_t i = 0; i < inputs.size(); ++i)
        row.push_back(slice_rows(inputs[i], r, 1, seq_dims[i], cut ? meta.lengths[r] : -1));
      return row;
    };
    std::map<size_t, std::string> row_version;
    auto take = [&](size_t r, engine::Result res) {
      row_version[r] = res.version;
      timings.queue_us = std::max(timings.queue_us, res.queue_us);
      timings.compute_us = std::max(timings.compute_us, res.compute_us);
      timings.batch_samples = std::max(timings.batch_samples, res.batch_samples);
      computed_versions.push_back(res.version);
      computed[r] = std::move(res.outputs);
    };
    if (own.size() == rows) {
      std::future<engine::Result> f = submit_to_engine(engine_, encoder, inputs, deadline, &registry_);
      whole = wait_for_engine(f);
      timings = {whole->queue_us, whole->compute_us, whole->batch_samples};
      computed_versions.push_back(whole->version);
      for (size_t r = 0; r < rows; ++r) {
        row_version[r] = whole->version;
        for (size_t k = 0; k < whole->outputs.size(); ++k) {
          const TensorSpec *s = spec_of(info->spec.outputs, whole->outputs[k].name);
          computed[r].push_back(slice_rows(whole->outputs[k], r, 1, s ? s->seq_dim : -1, cut ? meta.lengths[r] : -1));
        }
      }
    } else if (!own.empty()) {
      std::vector<std::future<engine::Result>> futures;
      for (size_t r : own)
        futures.push_back(submit_to_engine(engine_, encoder, row_inputs(r), deadline, &registry_));
      for (size_t j = 0; j < own.size(); ++j)
        take(own[j], wait_for_engine(futures[j]));
    }
    flights.deliver(computed, row_version);
    for (auto &[r, flight] : waits) {
      // A wait honours this request's own deadline, as its queueing would.
      if (deadline && flight.wait_until(*deadline) != std::future_status::ready) {
        registry_
            .counter("jit_requests_total", "Requests by encoder and outcome.",
                     {{"encoder", encoder}, {"outcome", "deadline"}})
            .inc();
        throw ServerError(Code::kDeadlineExceeded, "deadline exceeded while waiting for encoder '" + encoder +
                                                       "' (the same sample, computed for another request)");
      }
      try {
        RowResult got = flight.get();
        computed_versions.push_back(got.version);
        computed[r] = std::move(got.outputs);
      } catch (const std::exception &) {
        // The request computing it failed (its own deadline, say): compute it for this one.
        std::future<engine::Result> f = submit_to_engine(engine_, encoder, row_inputs(r), deadline, &registry_);
        take(r, wait_for_engine(f));
        own.push_back(r);
      }
    }
    for (const auto &[r, first] : dup_of) {
      if (hits[first])
        hits[r] = hits[first];
      else
        computed[r] = computed.at(first);
    }

    // An in-place update raced this request: its rows came from two versions. Recompute it whole,
    // in one engine request, so that one answer never mixes versions.
    const bool hits_present = misses.size() < rows;
    bool mixed = false;
    for (const std::string &v : computed_versions)
      mixed = mixed || v != computed_versions[0] || (hits_present && v != version);
    if (mixed && round == 0) {
      info = engine_.info(encoder);
      if (!info) throw ServerError(Code::kNotFound, "unknown encoder '" + encoder + "'");
      continue;
    }
    if (!computed_versions.empty()) version = computed_versions[0];

    // Store what this request computed, after the response is built; the Pending rows share the
    // outputs. Awaited and repeated rows are stored by the request that computed them.
    for (size_t r : own) {
      const std::vector<Tensor> &outs = computed.at(r);
      Pending p{cache::CacheKey::bind(encoder, version, digests[r]), encoder, version, {}, 0, flights.hand_off(r)};
      for (const Tensor &t : outs) {
        p.outputs.push_back(without_batch_dim(t));
        p.nbytes += t.nbytes;
      }
      store(std::move(p));
    }

    std::vector<int64_t> hit_rows;
    for (size_t r = 0; r < rows; ++r) {
      if (hits[r]) hit_rows.push_back(static_cast<int64_t>(r));
    }
    if (whole && !cut) {
      std::vector<TensorView> out;
      for (const Tensor &t : whole->outputs)
        out.push_back(t.view());
      return encode_response(encoder, version, out, timings, &hit_rows, response_options, &registry_);
    }
    // Rows from the cache and from the engine side by side, padded to the longest row.
    std::vector<Tensor> stacked;
    std::vector<TensorView> out;
    for (size_t k = 0; k < info->spec.outputs.size(); ++k) {
      const TensorSpec &s = info->spec.outputs[k];
      std::vector<TensorView> parts;
      for (size_t r = 0; r < rows; ++r) {
        if (hits[r]) {
          const auto &ts = hits[r]->tensors();
          if (k >= ts.size() || ts[k].name != s.name) {
            // An entry that does not fit the spec cannot come from this version; defensive.
            throw ServerError(Code::kInternal,
                              "cache entry for encoder '" + encoder + "' lacks output '" + s.name + "'");
          }
          parts.push_back(with_batch_dim(ts[k]));
        } else {
          parts.push_back(computed[r][k].view());
        }
      }
      try {
        stacked.push_back(concat_rows(s.name, parts, s.seq_dim, 0));
      } catch (const std::invalid_argument &e) {
        throw ServerError(Code::kInternal, std::string("cannot assemble the response: ") + e.what());
      }
      out.push_back(stacked.back().view());
    }
    return encode_response(encoder, version, out, timings, &hit_rows, response_options, &registry_);
  }
}

} // namespace jit::server
