// Helpers of the client tests (test_client.cpp, test_client_endpoints.cpp): real in-process
// HTTP servers on 127.0.0.1 whose encode hook is a small, scriptable echo, and checks of answers.
#pragma once

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <csignal>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "client/client_internal.h"
#include "server/http_server.h"

namespace jit::client::testing_util {

using namespace std::chrono_literals;
using server::ServerError;
using Code = server::ServerError::Code;
using SysClock = std::chrono::system_clock;

// A frame with one float32 tensor `x` of `n` rows x 4 values, value(row, col) = seed + row + col/4.
inline std::string frame_of(int64_t n, float seed) {
  Tensor x = make_tensor("x", DType::kFloat32, {n, 4});
  auto *p = static_cast<float *>(const_cast<void *>(x.data));
  for (int64_t i = 0; i < n * 4; ++i)
    p[i] = seed + static_cast<float>(i / 4) + 0.25f * static_cast<float>(i % 4);
  return codec::encode({x.view()}, "", {});
}

// One HTTP server whose encode hook answers y = 2x, unless `fail` (set by the test) throws first.
struct EchoServer {
  metrics::Registry registry;
  std::atomic<int> calls{0};
  std::mutex mu;
  std::function<void(int call)> fail; // throws a ServerError to answer an error; guarded by mu
  std::vector<std::chrono::steady_clock::time_point> call_times;
  std::unique_ptr<server::HttpServer> http;
  int port = 0;

  EchoServer() {
    server::ServerHooks hooks;
    hooks.has_encoder = [](const std::string &name) { return name == "echo"; };
    hooks.encode = [this](const std::string &, const codec::DecodedFrame &frame,
                          std::optional<SysClock::time_point>) -> std::string {
      const int n = calls.fetch_add(1);
      std::function<void(int)> f;
      {
        std::lock_guard<std::mutex> lock(mu);
        call_times.push_back(std::chrono::steady_clock::now());
        f = fail;
      }
      if (f) f(n);
      const codec::DecodedTensor &x = frame.tensors.at(0);
      Tensor y = make_tensor("y", DType::kFloat32, x.shape);
      const auto *in = reinterpret_cast<const float *>(x.data);
      auto *out = static_cast<float *>(const_cast<void *>(y.data));
      for (size_t i = 0; i < x.nbytes / 4; ++i)
        out[i] = 2 * in[i];
      return codec::encode({y.view()}, "", {});
    };
    server::ServerSettings settings;
    settings.threads = 32;
    http = std::make_unique<server::HttpServer>(settings, registry, hooks);
    port = http->start();
    http->set_ready(true);
  }
  void set_fail(std::function<void(int)> f) {
    std::lock_guard<std::mutex> lock(mu);
    fail = std::move(f);
  }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port); }
};

inline ClientOptions options_for(const std::vector<const EchoServer *> &servers) {
  ClientOptions o;
  for (const EchoServer *s : servers)
    o.endpoints.push_back(s->endpoint());
  o.backoff_base = 5ms;
  o.backoff_max = 50ms;
  o.health_interval = 50ms;
  return o;
}

// Checks that the response holds y = 2x for frame_of(n, seed), read straight from the body.
inline void expect_echo(const Response &r, int64_t n, float seed) {
  ASSERT_EQ(r.frame.tensors.size(), 1u);
  const codec::DecodedTensor &y = r.frame.tensors[0];
  EXPECT_EQ(y.name, "y");
  ASSERT_EQ(y.shape, (Shape{n, 4}));
  // Zero copy: the payload lies inside the body the Response owns.
  const auto *body = reinterpret_cast<const uint8_t *>(r.body->data());
  EXPECT_TRUE(y.data >= body && y.data + y.nbytes <= body + r.body->size());
  const auto *p = reinterpret_cast<const float *>(y.data);
  for (int64_t i = 0; i < n * 4; ++i)
    EXPECT_EQ(p[i], 2 * (seed + static_cast<float>(i / 4) + 0.25f * static_cast<float>(i % 4)));
}

inline const EndpointStats &stats_of(const ClientStats &s, const EchoServer &server) {
  for (const auto &e : s.endpoints)
    if (e.endpoint == server.endpoint()) return e;
  throw std::runtime_error("no stats for " + server.endpoint());
}

// A key that the affinity balancer sends to `want` first among `all`.
inline std::string key_for(const EchoServer &want, const std::vector<const EchoServer *> &all) {
  for (int i = 0;; ++i) {
    const std::string key = "key-" + std::to_string(i);
    const EchoServer *best = nullptr;
    uint64_t best_score = 0;
    for (const EchoServer *s : all) {
      const uint64_t score = rendezvous_score(key, s->endpoint());
      if (!best || score > best_score) best = s, best_score = score;
    }
    if (best == &want) return key;
  }
}

// A loopback port nothing listens on: bound, then closed.
inline int closed_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// Waits up to `limit` for the forked child `pid` and returns its waitpid() status; nullopt (the
// child killed) when it hung.
inline std::optional<int> wait_for_child(pid_t pid, std::chrono::seconds limit = std::chrono::seconds(60)) {
  int status = -1;
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > give_up) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return std::nullopt;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return status;
}

} // namespace jit::client::testing_util
