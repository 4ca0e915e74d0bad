// The request/response protocol of POST /v1/encode/{encoder}, over the engine.
//
// Request frame: one entry per encoder input, named as in the encoder's spec, each [samples, ...];
// meta is optional; the cache's keys ("keys", "lengths", "params", "cache") are read by
// server/cache_service.h, which runs in front of this handler when the cache is enabled.
// Response frame: one entry per encoder output, in spec order, each [samples, ...], and meta
//   {"encoder": name, "version": digest,
//    "timings": {"queue_us", "compute_us", "batch_samples", "serialize_us"}}.
// Lossy transport (docs/transport.md): request meta "transport" asks for it; each output it changed
// travels narrowed (plus an entry "<output>.scale" for the scaled modes) and is listed in the
// response meta "transport": {output: {"mode", "dtype" (to restore), "scales" (entry name)}}.
// docs/wire-format.md specifies the frame itself.
#pragma once

#include <chrono>
#include <future>
#include <map>
#include <optional>
#include <string>

#include "codec/codec.h"
#include "common/metrics.h"
#include "engine/engine.h"
#include "ops/transport.h"
#include "server/errors.h"

namespace jit::server {

// How a response carries its outputs: output name -> lossy transport mode. Outputs not listed, and
// outputs a mode does not change (ops::transport_applies), travel exactly.
using TransportPlan = std::map<std::string, ops::Transport>;

// The suffix of the entry that carries an output's scales: "<output>.scale".
inline constexpr std::string_view kScaleSuffix = ".scale";

struct ResponseOptions {
  codec::EncodeOptions codec; // compression of the response payloads
  TransportPlan transport;
};

// Reads a request's meta "transport" against the outputs of `encoder` on `engine`: either one mode
// name, applied to every floating-point output, or a map output name -> mode name, where the key
// "*" names the mode of every floating-point output the map does not name. Absent or nil: exact,
// without looking the encoder up. An unknown encoder gives an empty plan (the engine answers 404).
// Throws ServerError: 400 for a malformed field or an unknown mode name (the message lists the
// modes), 422 for an output the encoder does not have, a lossy mode named for an output that is
// not floating-point, or an output whose scale entry name is another output's name.
TransportPlan parse_transport(const std::string &meta_msgpack, const engine::Engine &engine,
                              const std::string &encoder);

// Runs one decoded request through `engine` and returns the encoded response frame.
// `frame` (and the request body it points into) must stay alive until this returns: inputs are
// passed to the engine without a copy, and this call waits for the result.
// `metrics` may be null. When given, it records jit_serialize_seconds{encoder} (building the
// response frame) and counts requests the engine refuses at admission in
// jit_requests_total{encoder, outcome=<server error code name>} (the engine itself counts the
// outcomes ok, error and deadline of the requests it admitted).
// Throws ServerError: 404 unknown encoder, 422 inputs that do not match the spec, 413 more samples
// than max_batch_size, 429 queue full, 503 draining, 504 deadline passed while queued, 500 when the
// encoder fails.
std::string handle_encode(engine::Engine &engine, const std::string &encoder, const codec::DecodedFrame &frame,
                          std::optional<std::chrono::system_clock::time_point> deadline,
                          const ResponseOptions &response_options, metrics::Registry *metrics = nullptr);

// The pieces handle_encode() is made of, for callers (server/cache_service.h) that split a
// request into rows.

// Queues `inputs` on the engine. Throws ServerError at admission (and counts it as handle_encode
// does); the future throws engine::EngineError (see wait_for_engine()).
std::future<engine::Result> submit_to_engine(engine::Engine &engine, const std::string &encoder,
                                             std::vector<Tensor> inputs,
                                             std::optional<std::chrono::system_clock::time_point> deadline,
                                             metrics::Registry *metrics);
// The result of submit_to_engine(); throws ServerError (504 deadline, 500 encoder failure).
engine::Result wait_for_engine(std::future<engine::Result> &pending);

struct Timings {
  double queue_us = 0;      // admission to batch start
  double compute_us = 0;    // the batch's stacking, forward and splitting
  size_t batch_samples = 0; // samples in the batch (0 when nothing was computed)
};

// Builds a response frame: `outputs` ([samples, ...] each, spec order) and the meta above, plus
// "cache_hits" (the sample indices served from the cache) when `cache_hits` is given, each output
// narrowed as response_options.transport asks (jit_transport_saved_bytes_total{encoder, mode} counts the
// bytes saved).
// Throws codec::CodecError when the tensors cannot be framed.
std::string encode_response(const std::string &encoder, const std::string &version,
                            const std::vector<TensorView> &outputs, const Timings &timings,
                            const std::vector<int64_t> *cache_hits, const ResponseOptions &response_options,
                            metrics::Registry *metrics);

// The frame's tensors as engine inputs that borrow its bytes (no owner: keep the frame alive).
std::vector<Tensor> borrow_inputs(const codec::DecodedFrame &frame);

// An engine failure as a ServerError: the engine layer's codes mapped once, here.
ServerError from_engine_error(const engine::EngineError &e);

} // namespace jit::server
