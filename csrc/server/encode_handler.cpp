#include "server/encode_handler.h"

#include <msgpack.hpp>

namespace jit::server {

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

std::string handle_encode(engine::Engine &engine, const std::string &encoder, const codec::DecodedFrame &frame,
                          std::optional<std::chrono::system_clock::time_point> deadline,
                          const codec::EncodeOptions &response_options) {
  std::vector<Tensor> inputs;
  inputs.reserve(frame.tensors.size());
  for (const auto &t : frame.tensors) {
    // Borrowed: the caller keeps the frame alive until the result is back (see the header).
    inputs.push_back(Tensor{t.name, t.dtype, t.shape, nullptr, t.data, t.nbytes});
  }
  // The engine's deadlines run on the steady clock; X-Deadline-Ms is wall-clock time.
  engine::Clock::time_point steady_deadline = engine::Clock::time_point::max();
  if (deadline) steady_deadline = engine::Clock::now() + (*deadline - std::chrono::system_clock::now());

  engine::Result result;
  try {
    result = engine.submit(encoder, std::move(inputs), steady_deadline).get();
  } catch (const engine::EngineError &e) {
    throw from_engine_error(e);
  }

  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(3);
  pk.pack(std::string_view("encoder"));
  pk.pack(std::string_view(encoder));
  pk.pack(std::string_view("version"));
  pk.pack(std::string_view(result.version));
  pk.pack(std::string_view("timings"));
  pk.pack_map(3);
  pk.pack(std::string_view("queue_us"));
  pk.pack_double(result.queue_us);
  pk.pack(std::string_view("compute_us"));
  pk.pack_double(result.compute_us);
  pk.pack(std::string_view("batch_samples"));
  pk.pack_uint64(result.batch_samples);

  std::vector<TensorView> views;
  views.reserve(result.outputs.size());
  for (const auto &o : result.outputs)
    views.push_back(o.view());
  return codec::encode(views, std::string(sb.data(), sb.size()), response_options);
}

} // namespace jit::server
