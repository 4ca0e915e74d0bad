// The client against real in-process servers on 127.0.0.1: server::HttpServer instances whose
// encode hook is a small, scriptable echo (y = 2x) that can answer 429/503/422 on demand, and one
// server::App with the engine's AffineExecutor for a full encode path. No server is mocked: every
// request crosses a real socket, httplib's parser and the server's error mapping.
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "../engine/affine_executor.h"
#include "client/client.h"
#include "client/client_internal.h"
#include "client_test_util.h"
#include "server/app.h"
#include "server/http_server.h"

namespace jit::client {
namespace {

using namespace testing_util;

TEST(Client, EncodesThroughTheAppAndDecodesInPlace) {
  server::ServerConfig config = server::parse_config("encoders:\n  - {name: a, artifact: unused}\n", "/");
  server::App app(std::move(config), [](const server::EncoderEntry &) {
    return std::make_shared<engine::testing_util::AffineExecutor>(3.0f);
  });
  const int port = app.start();
  ClientOptions o;
  o.endpoints = {"http://127.0.0.1:" + std::to_string(port)};
  Client client(o);
  const Tensor x = engine::testing_util::input(5, 7, 0.5f);
  Response r = client.submit("a", {x.view()}).get();
  EXPECT_EQ(r.endpoint, "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(r.attempts, 1);
  engine::Result result;
  for (const auto &t : r.frame.tensors)
    result.outputs.push_back(Tensor{t.name, t.dtype, t.shape, nullptr, t.data, t.nbytes});
  engine::testing_util::expect_result(result, x, 3.0f);
  EXPECT_FALSE(r.frame.meta_msgpack.empty()); // the server's meta (version, timings) came back

  const std::string list = client.encoders_json();
  EXPECT_NE(list.find("\"encoders\""), std::string::npos) << list;
  EXPECT_NE(list.find("scale=3.000000"), std::string::npos) << list;
}

TEST(Client, PoolingReusesConnections) {
  EchoServer s;
  ClientOptions o = options_for({&s});
  o.max_connections_per_endpoint = 3;
  Client client(o);
  for (int i = 0; i < 40; ++i)
    expect_echo(client.encode("echo", frame_of(2, static_cast<float>(i))), 2, static_cast<float>(i));
  EXPECT_EQ(stats_of(client.stats(), s).connections_opened, 1u) << "sequential requests did not share a connection";

  std::vector<std::future<Response>> futures;
  for (int i = 0; i < 200; ++i)
    futures.push_back(client.submit("echo", frame_of(1, static_cast<float>(i))));
  for (int i = 0; i < 200; ++i)
    expect_echo(futures[i].get(), 1, static_cast<float>(i));
  const EndpointStats st = stats_of(client.stats(), s);
  EXPECT_LE(st.connections_opened, 3u);
  EXPECT_EQ(st.requests, 240u);
  EXPECT_EQ(st.responses, 240u);
  EXPECT_EQ(s.calls.load(), 240);
  EXPECT_GT(st.bytes_sent, 0u);
  EXPECT_GT(st.bytes_received, 0u);
  uint64_t in_buckets = 0;
  for (uint64_t b : st.latency_buckets)
    in_buckets += b;
  EXPECT_EQ(in_buckets, 240u);
  EXPECT_GT(st.latency_sum_ms, 0.0);
}

class RetryTo : public ::testing::TestWithParam<Code> {};

TEST_P(RetryTo, AnotherEndpointOnASafeFailure) {
  EchoServer bad, good;
  const Code code = GetParam();
  bad.set_fail([code](int) { throw ServerError(code, "synthetic"); });
  ClientOptions o = options_for({&bad, &good});
  o.balancer = "affinity";
  Client client(o);
  Response r = client.encode("echo", frame_of(3, 1.0f), key_for(bad, {&bad, &good}));
  expect_echo(r, 3, 1.0f);
  EXPECT_EQ(r.endpoint, good.endpoint());
  EXPECT_EQ(r.attempts, 2);
  EXPECT_EQ(bad.calls.load(), 1);
  EXPECT_EQ(good.calls.load(), 1);
  const ClientStats st = client.stats();
  EXPECT_EQ(stats_of(st, bad).failures, 1u);
  EXPECT_EQ(stats_of(st, good).retries, 1u);
  // 503 ejects; 429 only asks to wait.
  EXPECT_EQ(stats_of(st, bad).ejections, code == Code::kNotReady ? 1u : 0u);
}

INSTANTIATE_TEST_SUITE_P(Client, RetryTo, ::testing::Values(Code::kOverloaded, Code::kNotReady));

TEST(Client, HonoursRetryAfterWithinTheDeadline) {
  EchoServer s; // the server answers 429 with Retry-After: 1
  s.set_fail([](int call) {
    if (call == 0) throw ServerError(Code::kOverloaded, "queue full");
  });
  Client client(options_for({&s}));
  Response r = client.encode("echo", frame_of(1, 2.0f), "", SysClock::now() + 10s);
  expect_echo(r, 1, 2.0f);
  EXPECT_EQ(r.attempts, 2);
  ASSERT_EQ(s.call_times.size(), 2u);
  EXPECT_GE(s.call_times[1] - s.call_times[0], 1s) << "the retry came before Retry-After";

  // A Retry-After beyond the deadline is not waited for: one call, a clear error.
  EchoServer t;
  t.set_fail([](int) { throw ServerError(Code::kOverloaded, "queue full"); });
  Client client2(options_for({&t}));
  try {
    client2.encode("echo", frame_of(1, 2.0f), "", SysClock::now() + 500ms);
    FAIL() << "no error";
  } catch (const ClientError &e) {
    EXPECT_EQ(e.kind(), ClientError::Kind::kDeadline);
    EXPECT_EQ(e.status(), 429);
    const std::string what = e.what();
    EXPECT_NE(what.find(t.endpoint()), std::string::npos) << what;
    EXPECT_NE(what.find("'echo'"), std::string::npos) << what;
    EXPECT_NE(what.find("HTTP 429 overloaded: queue full"), std::string::npos) << what;
    EXPECT_NE(what.find("Retry-After"), std::string::npos) << what;
  }
  EXPECT_EQ(t.calls.load(), 1);
}

TEST(Client, NonRetryable422FailsAtOnce) {
  EchoServer a, b;
  auto reject = [](int) { throw ServerError(Code::kUnprocessable, "input 'x' has 3 dims, expected 2"); };
  a.set_fail(reject);
  b.set_fail(reject);
  ClientOptions o = options_for({&a, &b});
  o.retries = 5;
  Client client(o);
  try {
    client.encode("echo", frame_of(1, 0.0f));
    FAIL() << "no error";
  } catch (const ClientError &e) {
    EXPECT_EQ(e.kind(), ClientError::Kind::kHttp);
    EXPECT_EQ(e.status(), 422);
    EXPECT_EQ(e.server_code(), "unprocessable");
    EXPECT_EQ(e.encoder(), "echo");
    const std::string what = e.what();
    EXPECT_NE(what.find(e.endpoint()), std::string::npos) << what;
    EXPECT_NE(what.find("HTTP 422 unprocessable: input 'x' has 3 dims, expected 2"), std::string::npos) << what;
    EXPECT_NE(what.find("(1 attempt)"), std::string::npos) << what;
  }
  EXPECT_EQ(a.calls.load() + b.calls.load(), 1);
}

TEST(Client, UnreachableEndpointFailsClearlyWithinTheDeadline) {
  ClientOptions o;
  o.endpoints = {"127.0.0.1:" + std::to_string(closed_port())};
  o.retries = 1000;
  o.backoff_base = 10ms;
  o.backoff_max = 100ms;
  Client client(o);
  auto future = client.submit("echo", frame_of(1, 0.0f), "", SysClock::now() + 1s);
  ASSERT_EQ(future.wait_for(30s), std::future_status::ready) << "the client hung past its deadline";
  try {
    future.get();
    FAIL() << "no error";
  } catch (const ClientError &e) {
    const std::string what = e.what();
    EXPECT_EQ(e.kind(), ClientError::Kind::kDeadline) << what;
    EXPECT_NE(what.find(o.endpoints[0]), std::string::npos) << what;
    EXPECT_NE(what.find("connection refused"), std::string::npos) << what;
    EXPECT_NE(what.find("deadline exceeded"), std::string::npos) << what;
  }
}

TEST(Client, EjectsAFailingEndpointAndReadmitsItWhenReady) {
  EchoServer flaky, steady;
  std::atomic<bool> down{true};
  flaky.set_fail([&](int) {
    if (down) throw ServerError(Code::kNotReady, "draining");
  });
  flaky.http->set_ready(false);
  Client client(options_for({&flaky, &steady}));
  for (int i = 0; i < 30; ++i)
    expect_echo(client.encode("echo", frame_of(1, static_cast<float>(i))), 1, static_cast<float>(i));
  EXPECT_FALSE(stats_of(client.stats(), flaky).healthy);
  EXPECT_EQ(stats_of(client.stats(), flaky).ejections, 1u);
  const int flaky_calls = flaky.calls.load();
  EXPECT_LE(flaky_calls, 2) << "an ejected endpoint kept getting requests";

  down = false;
  flaky.http->set_ready(true);
  const auto give_up = std::chrono::steady_clock::now() + 30s;
  while (!stats_of(client.stats(), flaky).healthy && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(stats_of(client.stats(), flaky).healthy) << "not readmitted after /health/ready answered 200";
  for (int i = 0; i < 40; ++i)
    expect_echo(client.encode("echo", frame_of(1, static_cast<float>(i))), 1, static_cast<float>(i));
  EXPECT_GT(flaky.calls.load(), flaky_calls) << "the readmitted endpoint got no requests";
}

TEST(Client, LeastOutstandingSpreadsUniformLoadEvenly) {
  EchoServer a, b, c;
  Client client(options_for({&a, &b, &c}));
  constexpr int kRequests = 1500;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kRequests / 4; ++i)
        client.encode("echo", frame_of(1, 1.0f));
    });
  }
  for (auto &t : threads)
    t.join();
  for (const EchoServer *s : {&a, &b, &c}) {
    EXPECT_GE(s->calls.load(), kRequests / 3 * 0.8) << s->endpoint();
    EXPECT_LE(s->calls.load(), kRequests / 3 * 1.2) << s->endpoint();
  }
  EXPECT_EQ(a.calls + b.calls + c.calls, kRequests);
}

TEST(Client, AffinitySendsARepeatedKeyToTheSameServer) {
  EchoServer a, b, c;
  ClientOptions o = options_for({&a, &b, &c});
  o.balancer = "affinity";
  Client client(o);
  std::map<std::string, int> servers_used;
  for (int k = 0; k < 30; ++k) {
    const std::string key = "sample-" + std::to_string(k);
    std::string first;
    for (int rep = 0; rep < 5; ++rep) {
      Response r = client.encode("echo", frame_of(1, 0.0f), key);
      if (rep == 0) first = r.endpoint;
      EXPECT_EQ(r.endpoint, first) << key;
    }
    servers_used[first]++;
  }
  EXPECT_EQ(servers_used.size(), 3u) << "30 keys all hashed to fewer than 3 servers";
}

TEST(Client, AForkedChildBuildsItsOwnConnectionsAndThreads) {
  EchoServer s;
  Client client(options_for({&s}));
  expect_echo(client.encode("echo", frame_of(2, 1.0f)), 2, 1.0f); // the parent holds a pooled connection
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int ok = 0;
    try {
      for (int i = 0; i < 20; ++i) {
        Response r = client.encode("echo", frame_of(1, static_cast<float>(i)));
        const auto *y = reinterpret_cast<const float *>(r.frame.tensors.at(0).data);
        ok += y[0] == 2.0f * static_cast<float>(i);
      }
    } catch (...) {
    }
    _exit(ok == 20 && client.stats().endpoints[0].connections_opened >= 1 ? 0 : 1);
  }
  const std::optional<int> waited = wait_for_child(pid);
  ASSERT_TRUE(waited) << "the forked child hung";
  const int status = *waited;
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child's requests failed";
  // The parent's pooled connection still works, and the child never used it.
  expect_echo(client.encode("echo", frame_of(2, 3.0f)), 2, 3.0f);
  EXPECT_EQ(client.stats().endpoints[0].connections_opened, 1u);
  EXPECT_EQ(s.calls.load(), 22);
}

TEST(Client, RejectsBadOptions) {
  auto kind_of = [](ClientOptions o) {
    try {
      Client c(std::move(o));
    } catch (const ClientError &e) {
      return e.kind();
    }
    return ClientError::Kind::kConnection;
  };
  ClientOptions o;
  EXPECT_EQ(kind_of(o), ClientError::Kind::kInvalid); // no endpoints
  o.endpoints = {"localhost"};
  EXPECT_EQ(kind_of(o), ClientError::Kind::kInvalid);
  o.endpoints = {"localhost:70000"};
  EXPECT_EQ(kind_of(o), ClientError::Kind::kInvalid);
  o.endpoints = {"localhost:8000"};
  o.balancer = "round_robin";
  EXPECT_EQ(kind_of(o), ClientError::Kind::kInvalid);
  EXPECT_EQ(parse_endpoint("http://10.0.0.1:8080/"), (std::pair<std::string, int>{"10.0.0.1", 8080}));
}

} // namespace
} // namespace jit::client
