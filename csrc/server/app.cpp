// App: config -> executors (through the factory) -> engine -> HTTP hooks.
#include "server/app.h"

#include <utility>

#include "common/trace.h"
#include "server/encode_handler.h"

namespace jit::server {

namespace {

using Code = ServerError::Code;

// A capture's bound for GET /v1/trace: a few seconds of a busy server (~10^5 events a second at
// ~20k requests a second), at a few hundred bytes an event.
constexpr size_t kTraceMaxEvents = size_t{1} << 19;

std::string json_int_list(const std::vector<int64_t> &values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i)
    out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

std::string tensor_specs_json(const std::vector<TensorSpec> &specs) {
  std::string out = "[";
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec &t = specs[i];
    out += (i ? ", " : "");
    out += "{\"name\": " + json_quote(t.name) + ", \"dtype\": " + json_quote(std::string(dtype_name(t.dtype))) +
           ", \"shape\": " + json_int_list(t.shape) +
           ", \"seq_dim\": " + (t.seq_dim < 0 ? std::string("null") : std::to_string(t.seq_dim)) +
           ", \"pad_value\": " + std::to_string(t.pad_value) + "}";
  }
  return out + "]";
}

// The cause of a failed load, for the message: a ServerError keeps its code (check_manifest's
// 422, say); anything else the factory throws is the artifact's problem, 422.
ServerError load_failure(const std::string &name, const std::string &cause, Code code = Code::kUnprocessable) {
  return ServerError(code, "cannot load encoder '" + name + "': " + cause);
}

} // namespace

App::App(ServerConfig config, ExecutorFactory factory)
    : config_(std::move(config)), factory_(std::move(factory)), engine_(&registry_) {
  if (config_.cache.enabled) cache_ = std::make_unique<CacheService>(config_.cache, engine_, registry_);
  ServerHooks hooks;
  hooks.has_encoder = [this](const std::string &name) { return has_encoder(name); };
  hooks.encoders_json = [this] { return encoders_json(); };
  hooks.encode = [this](const std::string &name, const codec::DecodedFrame &frame,
                        std::optional<std::chrono::system_clock::time_point> deadline) {
    ResponseOptions response;
    response.transport = parse_transport(frame.meta_msgpack, engine_, name);
    if (cache_) return cache_->encode(name, cacheable(name), frame, deadline, response);
    return handle_encode(engine_, name, frame, deadline, response, &registry_);
  };
  if (cache_) {
    hooks.cache_lookup = [this](const codec::DecodedFrame &frame) { return cache_->lookup(frame); };
    hooks.cache_stats = [this](bool versions) { return cache_->stats_json(versions); };
    hooks.cache_prune = [this](const std::string &body) { return cache_->prune(body); };
  }
  hooks.load_encoder = [this](const std::string &name, const std::string &body) {
    return handle_load_request(name, body);
  };
  hooks.unload_encoder = [this](const std::string &name) { return unload(name); };
  hooks.request_drain = [this] {
    if (drain_request_) {
      drain_request_();
    } else {
      drainer_ = std::thread([this] { begin_drain(); });
    }
  };
  // GPU gauges when the machine has an NVIDIA driver; without one /metrics simply lacks them.
  gpu_ = GpuMonitor::open(nullptr);
  hooks.refresh_metrics = [this] { refresh_device_metrics(); };
  // The tracer is process-wide: one capture at a time, whichever App asked for it.
  hooks.trace_start = [] { return trace::start(kTraceMaxEvents); };
  hooks.trace_stop = [] { return trace::to_chrome_json(trace::stop()); };
  http_ = std::make_unique<HttpServer>(config_.server, registry_, std::move(hooks));
}

App::~App() {
  if (drainer_.joinable()) drainer_.join(); // a drain asked for over HTTP finishes first
  // HTTP first, so no handler is left calling into the engine while it drains.
  http_->stop();
  http_->wait();
  engine_.drain();
}

int App::start() {
  for (const EncoderEntry &entry : config_.encoders)
    load(entry.name, entry);
  const int port = http_->start();
  http_->set_ready(true);
  return port;
}

bool App::cacheable(const std::string &name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  return it != entries_.end() && it->second.cache;
}

bool App::has_encoder(const std::string &name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(name) > 0;
}

std::shared_ptr<std::mutex> App::load_lock(const std::string &name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto &slot = loads_[name];
  if (!slot) slot = std::make_shared<std::mutex>();
  return slot;
}

void App::check_name(const std::string &name) {
  // Checked before load_lock(): a lock is kept per name, so junk names must not mint them.
  if (!valid_encoder_name(name)) {
    throw ServerError(Code::kBadRequest, "encoder name must be 1 to 128 of [A-Za-z0-9._-], got " + json_quote(name));
  }
}

LoadResult App::load(const std::string &name, EncoderEntry entry) {
  check_name(name);
  const std::shared_ptr<std::mutex> serial = load_lock(name);
  std::lock_guard<std::mutex> hold(*serial);
  return load_held(name, std::move(entry));
}

LoadResult App::load_held(const std::string &name, EncoderEntry entry) {
  entry.name = name;

  LoadResult result;
  result.encoder = name;
  for (const auto &info : engine_.encoders()) {
    if (info.name == name) result.previous_version = info.version;
  }

  std::shared_ptr<executor::Executor> exec;
  try {
    exec = factory_(entry);
  } catch (const ServerError &e) {
    throw load_failure(name, e.what(), e.code());
  } catch (const std::exception &e) {
    throw load_failure(name, e.what());
  } catch (...) {
    throw load_failure(name, "unknown exception from the executor factory");
  }
  if (!exec) throw load_failure(name, "the executor factory returned nothing");
  result.version = exec->version();

  // Series for the admission refusals, present (at 0) from the first scrape, as the engine's are.
  for (Code c : {Code::kUnprocessable, Code::kPayloadTooLarge, Code::kOverloaded, Code::kNotReady}) {
    registry_.counter("jit_requests_total", "Requests by encoder and outcome.",
                      {{"encoder", name}, {"outcome", code_name(c)}});
  }

  try {
    engine_.load(name, std::move(exec), entry.engine);
  } catch (const engine::EngineError &e) {
    throw from_engine_error(e); // draining: 503
  } catch (const std::exception &e) {
    throw load_failure(name, e.what());
  }
  registry_.show("encoder", name); // its series, hidden by an earlier unload, count on
  std::lock_guard<std::mutex> lock(mu_);
  entries_[name] = std::move(entry);
  return result;
}

std::string App::handle_load_request(const std::string &name, const std::string &body) {
  check_name(name);
  const std::shared_ptr<std::mutex> serial = load_lock(name);
  // Held from reading the serving entry to the swap, so overrides always apply over the entry
  // that the previous load of this name left behind.
  std::lock_guard<std::mutex> hold(*serial);
  EncoderEntry base;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it != entries_.end()) base = it->second;
  }
  const LoadResult r = load_held(name, parse_load_request(body, name, base, config_.artifact_root));
  return "{\"encoder\": " + json_quote(r.encoder) + ", \"version\": " + json_quote(r.version) +
         ", \"previous_version\": " + (r.previous_version.empty() ? "null" : json_quote(r.previous_version)) + "}";
}

std::string App::unload(const std::string &name) {
  check_name(name);
  const std::shared_ptr<std::mutex> serial = load_lock(name);
  std::lock_guard<std::mutex> hold(*serial); // not while a load of the same name runs
  const std::optional<engine::EncoderInfo> info = engine_.info(name);
  if (!info) throw ServerError(Code::kNotFound, "unknown encoder '" + name + "'");
  try {
    engine_.unload(name);
  } catch (const engine::EngineError &e) {
    throw from_engine_error(e);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.erase(name);
  }
  registry_.hide("encoder", name); // until it is loaded again
  return "{\"encoder\": " + json_quote(name) + ", \"unloaded_version\": " + json_quote(info->version) + "}";
}

void App::refresh_device_metrics() {
  if (gpu_) gpu_->update(registry_);
  for (const auto &[name, stats] : engine_.device_stats()) {
    const metrics::Labels labels{{"encoder", name}};
    registry_.gauge("jit_pinned_staging_bytes", "Page-locked host memory the encoder holds for staging.", labels)
        .set(static_cast<double>(stats.pinned_bytes));
    registry_.gauge("jit_pinned_staging_leased_bytes", "Of it, in use by a batch or by outputs still held.", labels)
        .set(static_cast<double>(stats.pinned_leased_bytes));
    registry_
        .gauge("jit_pinned_staging_fallbacks", "Batches staged in pageable memory because the pool was full (a count).",
               labels)
        .set(static_cast<double>(stats.pinned_fallbacks));
  }
}

std::string App::encoders_json() const {
  std::string out = "[";
  bool first = true;
  for (const engine::EncoderInfo &info : engine_.encoders()) {
    const engine::EncoderConfig &c = info.config;
    out += first ? "" : ", ";
    first = false;
    out += "{\"name\": " + json_quote(info.name) + ", \"version\": " + json_quote(info.version) +
           ", \"inputs\": " + tensor_specs_json(info.spec.inputs) +
           ", \"outputs\": " + tensor_specs_json(info.spec.outputs) +
           ", \"batching\": {\"max_batch_size\": " + std::to_string(c.batching.max_batch_size) +
           ", \"max_queue_delay_us\": " + std::to_string(c.batching.max_queue_delay.count()) +
           ", \"max_queue_size\": " + std::to_string(c.batching.max_queue_size) +
           ", \"instances\": " + std::to_string(c.instances) +
           ", \"length_buckets\": " + json_int_list(c.length_buckets) +
           "}, \"queued_samples\": " + std::to_string(info.queued_samples) + "}";
  }
  return out + "]";
}

bool App::begin_drain() {
  const bool clean = http_->begin_drain();
  engine_.drain();
  return clean;
}

void App::wait() {
  http_->wait();
}

} // namespace jit::server
