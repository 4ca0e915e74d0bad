// The server application: a config wired to an engine and an HTTP front end.
//
// App owns the metrics registry, the engine and the HttpServer, and provides the HTTP layer's
// hooks: the encoder list, encoding (server/encode_handler.h), in-place loads and trace captures
// (GET /v1/trace over common/trace.h's process-wide tracer). How an EncoderEntry becomes an
// executor is the caller's ExecutorFactory, which keeps this file torch-free: the C++ binary
// passes a LibTorch factory (main.cpp), `jit-embedding serve` a Python one, tests a plain C++ one.
//
// In-place load (POST /v1/encoders/{name}/load, or load()): the factory builds the new executor
// beside the serving one; Engine::load then switches new requests to it atomically while the old
// version drains its queue. A factory failure leaves the old version serving. Loads of one name
// are serialised; loads of different names may run at once.
//
// GET /v1/encoders answers
//   {"encoders": [{"name": "clip", "version": "sha256:...",
//                  "inputs":  [{"name": "x", "dtype": "float32", "shape": [-1, 3, 224, 224], "seq_dim": null,
//                  "pad_value": 0}], "outputs": [{"name": "y", "dtype": "float32", "shape": [-1, 512], "seq_dim":
//                  null}], "batching": {"max_batch_size": 32, "max_queue_delay_us": 2000, "max_queue_size": 1024,
//                               "instances": 1, "length_buckets": [16, 32]},
//                  "queued_samples": 0}, ...]}
// in name order; a load answers {"encoder": name, "version": new, "previous_version": old or null}.
// Unloading (POST /v1/encoders/{name}/unload) and POST /v1/admin/drain are admin routes like the
// load (server/auth.h).
//
// The embedding cache (config `cache:`, server/cache_service.h) sits in front of the engine for
// every encoder whose entry does not say `cache: false`, and serves the /v1/cache/ routes.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "common/metrics.h"
#include "engine/engine.h"
#include "executor/executor.h"
#include "server/cache_service.h"
#include "server/config.h"
#include "server/gpu_monitor.h"
#include "server/http_server.h"

namespace jit::server {

// Builds the executor an entry describes. May throw anything; App reports the what() as the cause.
using ExecutorFactory = std::function<std::shared_ptr<executor::Executor>(const EncoderEntry &)>;

// What a load did.
struct LoadResult {
  std::string encoder;
  std::string version;
  std::string previous_version; // "" when the name was not served before
};

class App {
public:
  // Builds the registry, engine, cache and HTTP server from `config`; loads and binds nothing yet.
  // Throws ServerError(kBadRequest) when a cache tier cannot be opened.
  App(ServerConfig config, ExecutorFactory factory);
  // Stops HTTP without a drain, then drains the engine.
  ~App();
  App(const App &) = delete;
  App &operator=(const App &) = delete;

  // Loads every configured encoder through the factory, in config order, then starts HTTP and
  // sets ready. Returns the bound port. Throws ServerError(kUnprocessable) naming the encoder and
  // the cause when one fails to load (nothing is served then), and std::runtime_error when the
  // address cannot be bound.
  int start();

  // Serves `entry` under `name`, replacing the version serving it, if any (see the file comment).
  // entry.name is ignored. Throws ServerError(kUnprocessable) naming the encoder and the cause
  // when the factory fails (the old version keeps serving), ServerError(kNotReady) while draining.
  LoadResult load(const std::string &name, EncoderEntry entry);

  // POST /v1/encoders/{name}/load: parses `body` over the entry serving `name` (or a default
  // entry for a new name) with parse_load_request(), loads it, and returns the JSON answer.
  // Throws ServerError as parse_load_request() and load() do.
  std::string handle_load_request(const std::string &name, const std::string &body);

  // Stops serving `name` (POST /v1/encoders/{name}/unload): its queued requests finish, later
  // ones answer 404. Returns {"encoder": name, "unloaded_version": v}. Throws ServerError
  // kNotFound for a name not served, kBadRequest for an invalid name.
  std::string unload(const std::string &name);

  // What POST /v1/admin/drain calls (once): `fn` must return quickly and arrange for
  // begin_drain() to run, as the binary's main() does by waking its signal loop. Without one the
  // App drains on a thread of its own. Call before start().
  void on_drain_request(std::function<void()> fn) { drain_request_ = std::move(fn); }

  // The JSON array GET /v1/encoders lists (see the file comment).
  std::string encoders_json() const;

  // Graceful drain of HTTP (see HttpServer::begin_drain), then of the engine. Returns whether
  // every in-flight request finished within the grace period.
  bool begin_drain();
  // Blocks until the HTTP listener has returned.
  void wait();

  int port() const { return http_->port(); }
  const ServerConfig &config() const { return config_; }
  metrics::Registry &registry() { return registry_; }
  engine::Engine &engine() { return engine_; }
  // The embedding cache; null when the config disables it.
  CacheService *cache() { return cache_.get(); }
  HttpServer &http() { return *http_; }

private:
  bool has_encoder(const std::string &name) const;
  bool cacheable(const std::string &name) const; // the entry's `cache` setting
  static void check_name(const std::string &name);
  std::shared_ptr<std::mutex> load_lock(const std::string &name);
  // load() once the caller holds load_lock(name).
  LoadResult load_held(const std::string &name, EncoderEntry entry);
  // Before each /metrics scrape: the GPU gauges (NVML) and each encoder's pinned staging gauges
  // (jit_pinned_staging_bytes, _leased_bytes, _fallbacks {encoder}), for executors that stage.
  void refresh_device_metrics();

  const ServerConfig config_;
  const ExecutorFactory factory_;
  // Declaration order is destruction order in reverse: HTTP stops first, then the engine drains,
  // then the registry the other two count into goes.
  metrics::Registry registry_;
  engine::Engine engine_;
  std::unique_ptr<CacheService> cache_; // stores its last rows after HTTP has stopped
  std::unique_ptr<GpuMonitor> gpu_;     // null without an NVIDIA driver; outlives http_'s handlers
  std::unique_ptr<HttpServer> http_;

  std::function<void()> drain_request_;
  std::thread drainer_; // begin_drain() for POST /v1/admin/drain without drain_request_

  mutable std::mutex mu_;                                    // guards the two maps below
  std::map<std::string, EncoderEntry> entries_;              // what each served name was loaded from
  std::map<std::string, std::shared_ptr<std::mutex>> loads_; // one lock per name: loads serialise
};

} // namespace jit::server
