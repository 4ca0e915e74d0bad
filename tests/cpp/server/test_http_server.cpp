// HttpServer in-process, over real loopback sockets with httplib's client: readiness, the encoder
// hooks, deadline parsing, and the graceful drain (which the end-to-end pytest cannot hold open,
// because without encoders no request stays in flight long enough to observe).
#include <gtest/gtest.h>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "codec/codec.h"
#include "common/metrics.h"
#include "server/errors.h"
#include "server/http_server.h"

namespace {

using jit::server::HttpServer;
using jit::server::ServerError;
using jit::server::ServerHooks;
using jit::server::ServerSettings;
using namespace std::chrono_literals;

ServerSettings test_settings() {
  ServerSettings s;
  s.threads = 4; // enough for one blocked request plus the probes made while it is blocked
  s.keep_alive_timeout = std::chrono::seconds(1);
  return s;
}

std::string valid_frame() {
  static const float values[4] = {1, 2, 3, 4};
  return jit::codec::encode({jit::TensorView{"x", jit::DType::kFloat32, {4}, values, sizeof values}}, "", {});
}

httplib::Client client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5s);
  c.set_read_timeout(10s);
  return c;
}

// A has_encoder hook that blocks its caller until released: holds one request in flight, the way
// a slow encoder will once the engine exists.
struct Gate {
  std::promise<void> open;
  std::shared_future<void> opened = open.get_future().share();
  std::atomic<int> entered{0};
  ServerHooks hooks() {
    ServerHooks h;
    h.has_encoder = [this](const std::string &) {
      ++entered;
      opened.wait();
      return true;
    };
    return h;
  }
};

void wait_for(const std::function<bool()> &cond) {
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!cond() && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(cond());
}

TEST(HttpServer, EphemeralPortAndReadiness) {
  jit::metrics::Registry registry;
  HttpServer server(test_settings(), registry, ServerHooks{});
  const int port = server.start();
  ASSERT_GT(port, 0);
  EXPECT_EQ(server.port(), port);
  auto c = client(port);
  auto live = c.Get("/health/live");
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
  auto ready = c.Get("/health/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  EXPECT_NE(ready->body.find("\"not_ready\""), std::string::npos);
  server.set_ready(true);
  ready = c.Get("/health/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
}

TEST(HttpServer, EncoderListComesFromTheHookAsJson) {
  jit::metrics::Registry registry;
  ServerHooks hooks;
  hooks.encoders_json = [] { return std::string("[{\"name\": \"vae\"}]"); };
  HttpServer server(test_settings(), registry, hooks);
  auto c = client(server.start());
  auto res = c.Get("/v1/encoders");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "{\"encoders\": [{\"name\": \"vae\"}]}");
  // Without the hook the list is empty, still as JSON.
  HttpServer bare(test_settings(), registry, ServerHooks{});
  res = client(bare.start()).Get("/v1/encoders");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "{\"encoders\": []}");
}

TEST(HttpServer, DrainWaitsForInFlightAndRefusesNewWork) {
  jit::metrics::Registry registry;
  Gate gate;
  HttpServer server(test_settings(), registry, gate.hooks());
  const int port = server.start();
  server.set_ready(true);
  const std::string frame = valid_frame();

  auto in_flight = std::async(std::launch::async, [&] {
    auto c = client(port);
    auto res = c.Post("/v1/encode/slow", frame, "application/octet-stream");
    return res ? res->status : -1;
  });
  wait_for([&] { return gate.entered.load() == 1; });
  EXPECT_EQ(server.in_flight(), 1u);

  auto drained = std::async(std::launch::async, [&] { return server.begin_drain(); });
  auto c = client(port);
  wait_for([&] {
    auto r = c.Get("/health/ready");
    return r && r->status == 503;
  });
  auto refused = c.Post("/v1/encode/slow", frame, "application/octet-stream");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 503);
  EXPECT_NE(refused->body.find("draining"), std::string::npos);
  EXPECT_EQ(drained.wait_for(50ms), std::future_status::timeout) << "drain returned with a request in flight";
  auto live = c.Get("/health/live");
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200) << "liveness holds while draining";

  gate.open.set_value();
  // The in-flight request is answered (503: no executor is built in yet), not cut off.
  EXPECT_EQ(in_flight.get(), 503);
  EXPECT_TRUE(drained.get());
  server.wait();
  EXPECT_EQ(server.in_flight(), 0u);
  EXPECT_FALSE(client(port).Get("/health/live")) << "the listening socket is closed after the drain";
}

TEST(HttpServer, DrainGivesUpAfterTheGracePeriod) {
  jit::metrics::Registry registry;
  Gate gate;
  ServerSettings settings = test_settings();
  settings.drain_grace = 100ms;
  HttpServer server(settings, registry, gate.hooks());
  const int port = server.start();
  auto in_flight = std::async(std::launch::async, [&] {
    auto res = client(port).Post("/v1/encode/slow", valid_frame(), "application/octet-stream");
    return res ? res->status : -1;
  });
  wait_for([&] { return gate.entered.load() == 1; });
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(server.begin_drain());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
  EXPECT_FALSE(server.begin_drain()) << "a second call reports the first one's outcome";
  gate.open.set_value();
  in_flight.get();
  server.wait();
}

TEST(HttpServer, StopBeforeStartIsFinalAndStopIsIdempotent) {
  jit::metrics::Registry registry;
  HttpServer server(test_settings(), registry, ServerHooks{});
  server.stop();
  server.stop();
  EXPECT_THROW(server.start(), std::logic_error);
}

TEST(HttpServer, BindFailureThrows) {
  jit::metrics::Registry registry;
  HttpServer first(test_settings(), registry, ServerHooks{});
  ServerSettings taken = test_settings();
  taken.port = first.start();
  HttpServer second(taken, registry, ServerHooks{});
  EXPECT_THROW(second.start(), std::runtime_error);
}

TEST(DeadlineHeader, ParsesAbsoluteMillisecondsAndRejectsTheRest) {
  using std::chrono::system_clock;
  EXPECT_FALSE(jit::server::parse_deadline_ms("").has_value());
  const auto t = jit::server::parse_deadline_ms("1700000000123");
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::milliseconds>(t->time_since_epoch()).count(), 1700000000123);
  EXPECT_EQ(jit::server::parse_deadline_ms("9999999999999999999"), system_clock::time_point::max());
  for (const char *bad : {"-5", " 5", "5 ", "0x10", "soon", "1.5", "99999999999999999999"}) {
    try {
      (void)jit::server::parse_deadline_ms(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const ServerError &e) {
      EXPECT_EQ(jit::server::http_status(e), 400) << bad;
    }
  }
}

} // namespace
