// POST /v1/encode over the engine: frame -> engine request -> response frame with timings.
#include "server/encode_handler.h"

#include <msgpack.hpp>

#include <cstdint>
#include <cstring>

#include "common/trace.h"
#include "server/cache_meta.h"

namespace jit::server {

namespace {

// serialize_us before it is known: msgpack float64 0xcb, then -1.0 big-endian.
constexpr uint8_t kPlaceholder[9] = {0xcb, 0xbf, 0xf0, 0, 0, 0, 0, 0, 0};

// Fills in serialize_us, which times the whole frame and so is known only once the frame is
// written: the placeholder is the meta's last value and the meta is the envelope's last, always
// 9 bytes. If the codec ever orders its envelope differently, the frame keeps saying -1.
void patch_serialize_us(std::string &frame, double us) {
  uint8_t value[9] = {0xcb};
  uint64_t bits;
  std::memcpy(&bits, &us, 8);
  for (int i = 0; i < 8; ++i)
    value[1 + i] = static_cast<uint8_t>(bits >> (56 - 8 * i)); // msgpack numbers are big-endian
  codec::patch_envelope_tail(frame, kPlaceholder, value, sizeof value);
}

ops::Transport transport_mode(const msgpack::object &o, const std::string &what) {
  const std::string name = cache_meta::as_text(o, what);
  const std::optional<ops::Transport> mode = ops::transport_from_name(name);
  if (!mode) cache_meta::bad(what + " must be one of " + ops::transport_names() + ", got \"" + name + "\"");
  return *mode;
}

// The outputs a request's transport changes, with their wire forms (kept alive until the frame is
// written) and the response meta's "transport" map.
struct Narrowed {
  struct Changed {
    TensorView original;
    ops::Transport mode;
    size_t saved_bytes; // the original's size minus its values' and scales'
  };
  std::vector<TensorView> views;
  std::vector<Tensor> owned;
  std::vector<Changed> changed;
};

Narrowed narrow_outputs(const std::vector<TensorView> &outputs, const TransportPlan &plan) {
  Narrowed n;
  n.views.reserve(outputs.size() + plan.size());
  for (const TensorView &o : outputs) {
    auto it = plan.find(o.name);
    // The plan follows the spec; an executor that returned another dtype sends it exactly.
    if (it == plan.end() || !ops::transport_applies(it->second, o.dtype)) {
      n.views.push_back(o);
      continue;
    }
    ops::WireTensor w = ops::encode_for_transport(o, it->second);
    size_t wire = w.values.nbytes;
    n.views.push_back(w.values.view());
    n.owned.push_back(std::move(w.values));
    if (w.scales) {
      w.scales->name = o.name + std::string(kScaleSuffix);
      wire += w.scales->nbytes;
      n.views.push_back(w.scales->view());
      n.owned.push_back(std::move(*w.scales));
    }
    n.changed.push_back({o, it->second, o.nbytes > wire ? o.nbytes - wire : 0});
  }
  return n;
}

} // namespace

TransportPlan parse_transport(const std::string &meta_msgpack, const engine::Engine &engine,
                              const std::string &encoder) {
  TransportPlan plan;
  if (meta_msgpack.empty()) return plan;
  msgpack::object_handle h = cache_meta::unpack_meta(meta_msgpack);
  const msgpack::object *field = cache_meta::field(h.get(), "transport");
  if (field == nullptr || field->type == msgpack::type::NIL) return plan;
  const std::optional<engine::EncoderInfo> info = engine.info(encoder);
  if (!info) return plan;
  const EncoderSpec &spec = info->spec;
  auto unprocessable = [](const std::string &msg) { throw ServerError(ServerError::Code::kUnprocessable, msg); };
  if (field->type == msgpack::type::MAP) {
    std::optional<ops::Transport> rest; // key "*": every floating-point output not named
    for (uint32_t i = 0; i < field->via.map.size; ++i) {
      const msgpack::object_kv &kv = field->via.map.ptr[i];
      const std::string name = cache_meta::as_text(kv.key, "meta.transport's keys");
      const ops::Transport mode = transport_mode(kv.val, "meta.transport[\"" + name + "\"]");
      if (name == "*") {
        rest = mode;
        continue;
      }
      const TensorSpec *out = nullptr;
      for (const TensorSpec &s : spec.outputs)
        if (s.name == name) out = &s;
      if (out == nullptr) unprocessable("meta.transport names '" + name + "', which is not an output of the encoder");
      if (mode != ops::Transport::kExact && !dtype_is_floating(out->dtype))
        unprocessable("meta.transport asks " + std::string(ops::transport_name(mode)) + " for output '" + name +
                      "', which is " + std::string(dtype_name(out->dtype)) + ", not floating-point");
      plan[name] = mode;
    }
    if (rest) {
      for (const TensorSpec &s : spec.outputs)
        if (dtype_is_floating(s.dtype)) plan.emplace(s.name, *rest);
    }
  } else {
    const ops::Transport mode = transport_mode(*field, "meta.transport");
    for (const TensorSpec &s : spec.outputs)
      if (dtype_is_floating(s.dtype)) plan[s.name] = mode;
  }
  for (auto it = plan.begin(); it != plan.end();) {
    if (it->second == ops::Transport::kExact) {
      it = plan.erase(it);
      continue;
    }
    const std::string scale_name = it->first + std::string(kScaleSuffix);
    if (ops::transport_has_scales(it->second)) {
      for (const TensorSpec &s : spec.outputs)
        if (s.name == scale_name)
          unprocessable("meta.transport: output '" + it->first + "' cannot carry scales: its scale entry name '" +
                        scale_name + "' is another output's");
    }
    ++it;
  }
  return plan;
}

ServerError from_engine_error(const engine::EngineError &e) {
  using C = engine::EngineError::Code;
  using S = ServerError::Code;
  switch (e.code()) {
  case C::kUnknownEncoder: return ServerError(S::kNotFound, e.what());
  case C::kInvalidInput: return ServerError(S::kUnprocessable, e.what());
  case C::kTooLarge: return ServerError(S::kPayloadTooLarge, e.what());
  case C::kQueueFull: return ServerError(S::kOverloaded, e.what());
  case C::kDraining: return ServerError(S::kNotReady, e.what());
  case C::kDeadline: return ServerError(S::kDeadlineExceeded, e.what());
  case C::kExecutor: return ServerError(S::kInternal, e.what());
  }
  return ServerError(S::kInternal, e.what());
}

std::future<engine::Result> submit_to_engine(engine::Engine &engine, const std::string &encoder,
                                             std::vector<Tensor> inputs,
                                             std::optional<std::chrono::system_clock::time_point> deadline,
                                             metrics::Registry *metrics) {
  // The engine's deadlines run on the steady clock; X-Deadline-Ms is wall-clock time.
  engine::Clock::time_point steady_deadline = engine::Clock::time_point::max();
  if (deadline) steady_deadline = engine::Clock::now() + (*deadline - std::chrono::system_clock::now());
  try {
    return engine.submit(encoder, std::move(inputs), steady_deadline);
  } catch (const engine::EngineError &e) {
    ServerError err = from_engine_error(e);
    // Refused at admission, so the engine counted nothing. Unknown names are not counted per
    // encoder: a client could otherwise mint one series per name it makes up.
    if (metrics != nullptr && err.code() != ServerError::Code::kNotFound) {
      metrics
          ->counter("jit_requests_total", "Requests by encoder and outcome.",
                    {{"encoder", encoder}, {"outcome", code_name(err.code())}})
          .inc();
    }
    throw err;
  }
}

engine::Result wait_for_engine(std::future<engine::Result> &pending) {
  try {
    return pending.get();
  } catch (const engine::EngineError &e) {
    throw from_engine_error(e);
  }
}

std::string encode_response(const std::string &encoder, const std::string &version,
                            const std::vector<TensorView> &outputs, const Timings &timings,
                            const std::vector<int64_t> *cache_hits, const ResponseOptions &response_options,
                            metrics::Registry *metrics) {
  trace::Scope span("serialize", "http");
  // A request in flight when a capture began has no traced "request" span to name its thread.
  if (span.active()) trace::name_thread_once("http");
  const auto t0 = std::chrono::steady_clock::now();
  const Narrowed narrowed = narrow_outputs(outputs, response_options.transport);
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(3 + (cache_hits ? 1 : 0) + (narrowed.changed.empty() ? 0 : 1));
  pk.pack(std::string_view("encoder"));
  pk.pack(std::string_view(encoder));
  pk.pack(std::string_view("version"));
  pk.pack(std::string_view(version));
  if (cache_hits) {
    pk.pack(std::string_view("cache_hits"));
    pk.pack(*cache_hits);
  }
  if (!narrowed.changed.empty()) {
    pk.pack(std::string_view("transport"));
    pk.pack_map(static_cast<uint32_t>(narrowed.changed.size()));
    for (const Narrowed::Changed &c : narrowed.changed) {
      const bool scales = ops::transport_has_scales(c.mode);
      pk.pack(c.original.name);
      pk.pack_map(scales ? 3 : 2);
      pk.pack(std::string_view("mode"));
      pk.pack(ops::transport_name(c.mode));
      pk.pack(std::string_view("dtype"));
      pk.pack(dtype_name(c.original.dtype));
      if (scales) {
        pk.pack(std::string_view("scales"));
        pk.pack(c.original.name + std::string(kScaleSuffix));
      }
    }
  }
  pk.pack(std::string_view("timings"));
  pk.pack_map(4);
  pk.pack(std::string_view("queue_us"));
  pk.pack_double(timings.queue_us);
  pk.pack(std::string_view("compute_us"));
  pk.pack_double(timings.compute_us);
  pk.pack(std::string_view("batch_samples"));
  pk.pack_uint64(timings.batch_samples);
  pk.pack(std::string_view("serialize_us"));
  sb.write(reinterpret_cast<const char *>(kPlaceholder), sizeof kPlaceholder); // must stay last: see the patch

  std::string out = codec::encode(narrowed.views, std::string(sb.data(), sb.size()), response_options.codec);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  patch_serialize_us(out, seconds * 1e6);
  if (metrics != nullptr) {
    static const std::vector<double> kBounds = metrics::exponential_buckets(1e-6, 2, 24);
    metrics
        ->histogram("jit_serialize_seconds", "Time to build a response frame (meta, compression, copy).", kBounds,
                    {{"encoder", encoder}})
        .observe(seconds);
    for (const Narrowed::Changed &c : narrowed.changed) {
      metrics
          ->counter("jit_transport_saved_bytes_total",
                    "Response bytes lossy transport saved (exact size minus values and scales).",
                    {{"encoder", encoder}, {"mode", std::string(ops::transport_name(c.mode))}})
          .inc(static_cast<double>(c.saved_bytes));
    }
  }
  return out;
}

std::vector<Tensor> borrow_inputs(const codec::DecodedFrame &frame) {
  std::vector<Tensor> inputs;
  inputs.reserve(frame.tensors.size());
  for (const auto &t : frame.tensors) {
    // Borrowed: the caller keeps the frame alive until the result is back.
    inputs.push_back(Tensor{t.name, t.dtype, t.shape, nullptr, t.data, t.nbytes});
  }
  return inputs;
}

std::string handle_encode(engine::Engine &engine, const std::string &encoder, const codec::DecodedFrame &frame,
                          std::optional<std::chrono::system_clock::time_point> deadline,
                          const ResponseOptions &response_options, metrics::Registry *metrics) {
  std::future<engine::Result> pending = submit_to_engine(engine, encoder, borrow_inputs(frame), deadline, metrics);
  engine::Result result = wait_for_engine(pending);
  std::vector<TensorView> views;
  views.reserve(result.outputs.size());
  for (const auto &o : result.outputs)
    views.push_back(o.view());
  return encode_response(encoder, result.version, views, {result.queue_us, result.compute_us, result.batch_samples},
                         nullptr, response_options, metrics);
}

} // namespace jit::server
