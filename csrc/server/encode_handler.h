// The request/response protocol of POST /v1/encode/{encoder}, over the engine.
//
// Request frame: one entry per encoder input, named as in the encoder's spec, each [samples, ...];
// meta is optional ({"params": ..., "ids": ...} are reserved for later use and ignored today).
// Response frame: one entry per encoder output, in spec order, each [samples, ...], and meta
//   {"encoder": name, "version": digest,
//    "timings": {"queue_us", "compute_us", "batch_samples", "serialize_us"}}.
// docs/wire-format.md specifies the frame itself.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "codec/codec.h"
#include "common/metrics.h"
#include "engine/engine.h"
#include "server/errors.h"

namespace jit::server {

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
                          const codec::EncodeOptions &response_options, metrics::Registry *metrics = nullptr);

// An engine failure as a ServerError: the engine layer's codes mapped once, here.
ServerError from_engine_error(const engine::EngineError &e);

} // namespace jit::server
