// Client::set_endpoints(): the endpoint set replaced at runtime (what discovery does), against real
// in-process echo servers on 127.0.0.1. An endpoint that stays keeps its pool and counters, a new
// one gets traffic at once, a removed one finishes the requests it holds and gets no more, a bad
// list changes nothing, concurrent swaps under load lose no request, and a forked child starts
// from the set its parent had.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <thread>
#include <vector>

#include "client/client.h"
#include "client_test_util.h"

namespace jit::client {
namespace {

using namespace testing_util;

bool has_stats(const ClientStats &s, const EchoServer &server) {
  for (const auto &e : s.endpoints)
    if (e.endpoint == server.endpoint()) return true;
  return false;
}

TEST(ClientEndpoints, AStayingEndpointKeepsItsPoolAndCountersAndANewOneGetsTraffic) {
  EchoServer a, b;
  Client client(options_for({&a}));
  for (int i = 0; i < 10; ++i)
    expect_echo(client.encode("echo", frame_of(1, static_cast<float>(i))), 1, static_cast<float>(i));
  ASSERT_EQ(stats_of(client.stats(), a).connections_opened, 1u);

  client.set_endpoints({"http://" + b.endpoint() + "/", a.endpoint(), a.endpoint()}); // normalised, deduplicated
  EXPECT_EQ(client.endpoints(), (std::vector<std::string>{b.endpoint(), a.endpoint()}));
  std::vector<std::future<Response>> futures;
  for (int i = 0; i < 200; ++i)
    futures.push_back(client.submit("echo", frame_of(1, static_cast<float>(i))));
  for (int i = 0; i < 200; ++i)
    expect_echo(futures[i].get(), 1, static_cast<float>(i));

  const ClientStats st = client.stats();
  ASSERT_EQ(st.endpoints.size(), 2u);
  EXPECT_EQ(stats_of(st, a).requests, static_cast<uint64_t>(a.calls.load())) << "a's counters restarted";
  EXPECT_GT(b.calls.load(), 40) << "the new endpoint got (almost) no traffic";
  EXPECT_GT(a.calls.load(), 10 + 40);
  EXPECT_EQ(a.calls.load() + b.calls.load(), 210);
}

TEST(ClientEndpoints, ARemovedEndpointFinishesItsInFlightRequestsAndGetsNoMore) {
  EchoServer old_server, new_server;
  std::atomic<int> entered{0};
  old_server.set_fail([&](int) {
    entered.fetch_add(1);
    std::this_thread::sleep_for(400ms); // hold every request while the set changes under it
  });
  Client client(options_for({&old_server}));
  std::vector<std::future<Response>> in_flight;
  for (int i = 0; i < 8; ++i)
    in_flight.push_back(client.submit("echo", frame_of(2, static_cast<float>(i))));
  const auto give_up = std::chrono::steady_clock::now() + 30s;
  while (entered.load() < 8 && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(5ms);
  ASSERT_EQ(entered.load(), 8) << "the requests never reached the old server";

  client.set_endpoints({new_server.endpoint()});
  EXPECT_FALSE(has_stats(client.stats(), old_server));
  for (int i = 0; i < 8; ++i) {
    Response r = in_flight[i].get(); // answered by the removed endpoint, not failed
    EXPECT_EQ(r.endpoint, old_server.endpoint());
    EXPECT_EQ(r.attempts, 1);
    expect_echo(r, 2, static_cast<float>(i));
  }
  for (int i = 0; i < 30; ++i)
    EXPECT_EQ(client.encode("echo", frame_of(1, 0.0f)).endpoint, new_server.endpoint());
  EXPECT_EQ(old_server.calls.load(), 8);
  EXPECT_EQ(new_server.calls.load(), 30);
  // Its counters live on in the "(removed)" row, so totals never go down.
  const ClientStats st = client.stats();
  EXPECT_EQ(st.endpoints_removed, 1u);
  EXPECT_EQ(st.removed.requests, 8u);
  EXPECT_EQ(st.removed.responses, 8u);
  EXPECT_EQ(st.removed.endpoint, "(removed)");
}

TEST(ClientEndpoints, ARetryNeverGoesToARemovedEndpoint) {
  EchoServer a, b, c;
  b.set_fail([](int) { throw ServerError(Code::kNotReady, "draining"); });
  c.set_fail([](int) { throw ServerError(Code::kNotReady, "draining"); });
  ClientOptions o = options_for({&a, &b});
  o.retries = 6;
  Client client(o);
  client.set_endpoints({b.endpoint(), c.endpoint()}); // a, the only good one, is gone
  try {
    client.encode("echo", frame_of(1, 0.0f));
    FAIL() << "no error";
  } catch (const ClientError &e) {
    EXPECT_NE(e.endpoint(), a.endpoint());
    EXPECT_NE(std::string(e.what()).find("HTTP 503 not_ready: draining"), std::string::npos) << e.what();
  }
  EXPECT_EQ(a.calls.load(), 0);
  EXPECT_EQ(b.calls.load() + c.calls.load(), 7);
}

TEST(ClientEndpoints, ABadListIsRefusedAndChangesNothing) {
  EchoServer a;
  Client client(options_for({&a}));
  auto kind_of = [&](const std::vector<std::string> &list) {
    try {
      client.set_endpoints(list);
    } catch (const ClientError &e) {
      return e.kind();
    }
    return ClientError::Kind::kConnection;
  };
  EXPECT_EQ(kind_of({}), ClientError::Kind::kInvalid);
  EXPECT_EQ(kind_of({a.endpoint(), "localhost"}), ClientError::Kind::kInvalid);
  EXPECT_EQ(kind_of({"localhost:0"}), ClientError::Kind::kInvalid);
  EXPECT_EQ(client.endpoints(), (std::vector<std::string>{a.endpoint()}));
  expect_echo(client.encode("echo", frame_of(1, 5.0f)), 1, 5.0f);
}

TEST(ClientEndpoints, SwapsUnderLoadLoseNoRequest) {
  EchoServer a, b, c;
  Client client(options_for({&a, &b}));
  const std::vector<std::vector<std::string>> sets = {
      {a.endpoint(), b.endpoint()}, {b.endpoint(), c.endpoint()}, {c.endpoint()}, {a.endpoint(), c.endpoint()}};
  std::atomic<bool> done{false};
  std::atomic<int> swaps{0};
  std::thread swapper([&] {
    for (size_t i = 0; !done.load(); ++i) {
      client.set_endpoints(sets[i % sets.size()]);
      swaps.fetch_add(1);
      std::this_thread::sleep_for(2ms);
    }
  });
  constexpr int kThreads = 4, kEach = 150;
  std::atomic<int> ok{0};
  std::vector<std::thread> senders;
  for (int t = 0; t < kThreads; ++t) {
    senders.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        const float seed = static_cast<float>(t * 1000 + i);
        Response r = client.encode("echo", frame_of(1, seed));
        const auto *y = reinterpret_cast<const float *>(r.frame.tensors.at(0).data);
        ok += y[0] == 2 * seed;
      }
    });
  }
  for (auto &t : senders)
    t.join();
  done = true;
  swapper.join();
  EXPECT_EQ(ok.load(), kThreads * kEach);
  EXPECT_GT(swaps.load(), 4) << "the swaps did not overlap the load";
  EXPECT_EQ(a.calls + b.calls + c.calls, kThreads * kEach);
  EXPECT_GT(c.calls.load(), 0);
}

TEST(ClientEndpoints, AForkedChildStartsFromTheCurrentSet) {
  EchoServer a, b;
  Client client(options_for({&a}));
  expect_echo(client.encode("echo", frame_of(1, 1.0f)), 1, 1.0f);
  client.set_endpoints({b.endpoint()});
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int ok = 0;
    try {
      for (int i = 0; i < 10; ++i)
        ok += client.encode("echo", frame_of(1, 0.0f)).endpoint == b.endpoint();
      client.set_endpoints({a.endpoint()}); // the child's own set
      ok += client.encode("echo", frame_of(1, 0.0f)).endpoint == a.endpoint();
    } catch (...) {
    }
    _exit(ok == 11 ? 0 : 1);
  }
  const std::optional<int> waited = wait_for_child(pid);
  ASSERT_TRUE(waited) << "the forked child hung";
  const int status = *waited;
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child did not use the parent's current set";
  EXPECT_EQ(client.endpoints(), (std::vector<std::string>{b.endpoint()})); // the child's change stayed there
  EXPECT_EQ(a.calls.load(), 2);
  EXPECT_EQ(b.calls.load(), 10);
}

} // namespace
} // namespace jit::client
