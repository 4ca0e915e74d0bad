// POST /v1/encode end to end inside one process: a real HttpServer on 127.0.0.1, the engine and a
// real CPU executor behind it, and httplib's client. Responses are frames whose outputs equal the
// directly computed ones and whose meta names the version; engine errors map to their statuses.
#include <gtest/gtest.h>

#include <httplib.h>
#include <msgpack.hpp>

#include <thread>

#include "../engine/affine_executor.h"
#include "server/encode_handler.h"
#include "server/http_server.h"

namespace jit::server {
namespace {

using namespace engine::testing_util;
using std::chrono::milliseconds;

engine::EncoderConfig batching(size_t max_batch, milliseconds delay, size_t queue) {
  engine::EncoderConfig c;
  c.batching = {max_batch, delay, queue};
  return c;
}

struct Fixture {
  metrics::Registry registry;
  engine::Engine engine{&registry};
  std::unique_ptr<HttpServer> http;
  int port = 0;

  explicit Fixture(engine::EncoderConfig config = batching(16, milliseconds(5), 256)) {
    engine.load("affine", std::make_shared<AffineExecutor>(2.0f), config);
    ServerHooks hooks;
    hooks.has_encoder = [this](const std::string &name) {
      for (const auto &e : engine.encoders()) {
        if (e.name == name) return true;
      }
      return false;
    };
    hooks.encode = [this](const std::string &name, const codec::DecodedFrame &frame,
                          std::optional<std::chrono::system_clock::time_point> deadline) {
      return handle_encode(engine, name, frame, deadline, {});
    };
    ServerSettings settings;
    settings.threads = 16;
    http = std::make_unique<HttpServer>(settings, registry, hooks);
    port = http->start();
    http->set_ready(true);
  }
  ~Fixture() { http->stop(); }
};

httplib::Result post(int port, const std::string &path, const std::string &body) {
  httplib::Client client("127.0.0.1", port);
  client.set_read_timeout(10, 0);
  return client.Post(path.c_str(), body, "application/octet-stream");
}

std::string request_frame(const Tensor &x) {
  return codec::encode({x.view()}, "", {});
}

TEST(EncodeHandler, ResponseFrameCarriesOutputsAndVersion) {
  Fixture f;
  Tensor x = input(3, 5, 1.0f);
  auto res = post(f.port, "/v1/encode/affine", request_frame(x));
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  codec::DecodedFrame out = codec::decode(reinterpret_cast<const uint8_t *>(res->body.data()), res->body.size());
  engine::Result r;
  for (const auto &t : out.tensors)
    r.outputs.push_back(Tensor{t.name, t.dtype, t.shape, nullptr, t.data, t.nbytes});
  expect_result(r, x, 2.0f);
  msgpack::object_handle meta = msgpack::unpack(out.meta_msgpack.data(), out.meta_msgpack.size());
  auto m = meta.get().as<std::map<std::string, msgpack::object>>();
  EXPECT_EQ(m.at("encoder").as<std::string>(), "affine");
  EXPECT_EQ(m.at("version").as<std::string>(), "scale=2.000000");
  using Timings = std::map<std::string, msgpack::object>;
  EXPECT_EQ(m.at("timings").as<Timings>().count("compute_us"), 1u);
}

TEST(EncodeHandler, ConcurrentHttpRequestsAreBatchedAndCorrect) {
  Fixture f(batching(32, milliseconds(20), 1024));
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, c] {
      for (int i = 0; i < 4; ++i) {
        Tensor x = input(1, 4, static_cast<float>(10 * c + i));
        auto res = post(f.port, "/v1/encode/affine", request_frame(x));
        ASSERT_TRUE(res);
        ASSERT_EQ(res->status, 200) << res->body;
        codec::DecodedFrame out = codec::decode(reinterpret_cast<const uint8_t *>(res->body.data()), res->body.size());
        engine::Result r;
        for (const auto &t : out.tensors) {
          r.outputs.push_back(Tensor{t.name, t.dtype, t.shape, nullptr, t.data, t.nbytes});
        }
        expect_result(r, x, 2.0f);
        ok++;
      }
    });
  }
  for (auto &t : clients)
    t.join();
  EXPECT_EQ(ok.load(), 32);
  // Batches of more than one sample were formed across HTTP requests.
  std::string text = f.registry.render();
  EXPECT_EQ(text.find("jit_batch_size_bucket{encoder=\"affine\",le=\"1\"} 32"), std::string::npos) << text;
}

TEST(EncodeHandler, EngineErrorsBecomeTheirStatuses) {
  Fixture f;
  // Wrong dtype: 422, naming the input.
  Tensor ints = make_tensor("x", DType::kInt32, {1, 4});
  auto res = post(f.port, "/v1/encode/affine", codec::encode({ints.view()}, "", {}));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 422);
  EXPECT_NE(res->body.find("input 'x' must be float32"), std::string::npos) << res->body;
  // More samples than max_batch_size: 413.
  res = post(f.port, "/v1/encode/affine", request_frame(input(17, 4, 0.0f)));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413) << res->body;
  // Unknown encoder: 404; the server stays healthy afterwards.
  res = post(f.port, "/v1/encode/nope", request_frame(input(1, 4, 0.0f)));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  res = post(f.port, "/v1/encode/affine", request_frame(input(1, 4, 0.0f)));
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST(EncodeHandler, EveryEngineCodeHasOneStatus) {
  using C = engine::EngineError::Code;
  const std::pair<C, int> cases[] = {{C::kUnknownEncoder, 404}, {C::kInvalidInput, 422}, {C::kTooLarge, 413},
                                     {C::kQueueFull, 429},      {C::kDraining, 503},     {C::kDeadline, 504},
                                     {C::kExecutor, 500}};
  for (const auto &[code, status] : cases) {
    EXPECT_EQ(http_status(from_engine_error(engine::EngineError(code, "m"))), status);
  }
}

} // namespace
} // namespace jit::server
