// The client's internals, shared by its implementation files (not a public header).
//
//   connection_pool.cpp  Endpoint: a pool of keep-alive connections and one HTTP exchange on it
//   balancer.cpp         Balancer: picking an endpoint, ejection, and the health-probe thread
//   client.cpp           Client and its per-process State: workers, retries, deadlines, stats
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"

namespace httplib {
class ClientImpl;
}

namespace jit::client {

using Clock = std::chrono::steady_clock;

// What one HTTP exchange gave: a transport error (status 0, `error` says which), or a status and
// body. retry_after is the 429/503 Retry-After header in seconds (-1: none).
struct Exchange {
  int status = 0;
  std::string error; // the socket error, when status is 0
  std::string body;
  int retry_after_s = -1;
};

// One server: its connection pool, its balancing and health state, its counters.
class Endpoint {
public:
  Endpoint(std::string host, int port, const ClientOptions &options);
  ~Endpoint(); // closes pooled connections
  Endpoint(const Endpoint &) = delete;
  Endpoint &operator=(const Endpoint &) = delete;

  // One request on a pooled connection (waiting for one while max_connections_per_endpoint are
  // busy, at most until `deadline`). Timeouts are capped by the deadline. Never throws for
  // network failures: they come back as Exchange::error. A connection that failed is discarded.
  Exchange send(const std::string &method, const std::string &path, const std::string &body,
                const std::vector<std::pair<std::string, std::string>> &headers, Clock::time_point deadline);

  const std::string &name() const { return name_; } // "host:port"

  // Balancing and health, read without locks.
  std::atomic<int64_t> outstanding{0};
  std::atomic<bool> healthy{true};
  std::atomic<int64_t> busy_until_ns{0}; // Clock ns before which a 429's Retry-After asks us to wait

  // Counters for stats().
  std::atomic<uint64_t> requests{0}, responses{0}, failures{0}, retries{0}, bytes_sent{0}, bytes_received{0},
      connections_opened{0}, ejections{0};
  std::atomic<uint64_t> latency_sum_us{0};
  std::array<std::atomic<uint64_t>, kLatencyBucketsMs.size() + 1> latency_buckets{};
  void record_latency(std::chrono::microseconds latency);
  EndpointStats snapshot() const;

private:
  std::unique_ptr<httplib::ClientImpl> make_connection();

  std::string host_;
  int port_;
  std::string name_;
  const ClientOptions &options_;
  std::mutex mu_; // guards idle_ and open_
  std::condition_variable cv_;
  std::vector<std::unique_ptr<httplib::ClientImpl>> idle_;
  size_t open_ = 0; // connections idle or lent
};

// Picks endpoints and keeps their health (see client.h, "Balancing" and "Health").
class Balancer {
public:
  Balancer(std::vector<Endpoint *> endpoints, const ClientOptions &options);
  ~Balancer(); // stops the health thread
  Balancer(const Balancer &) = delete;
  Balancer &operator=(const Balancer &) = delete;

  // The endpoint for the next attempt of a request with `key`: among healthy endpoints not in
  // `tried` and not busy (429), by the balancing policy; failing that, healthy ones; failing that,
  // any. Never null.
  Endpoint *pick(const std::string &key, const std::vector<Endpoint *> &tried);

  // Marks `ep` unhealthy after a connection error or 503, and wakes the prober.
  void eject(Endpoint *ep);

private:
  void probe_loop();
  std::vector<Endpoint *> candidates(const std::vector<Endpoint *> &tried, bool need_idle);

  std::vector<Endpoint *> endpoints_;
  const ClientOptions &options_;
  bool affinity_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
  std::mutex mu_; // guards stop_ and wakes the prober
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread prober_;
};

// 64-bit FNV-1a followed by a murmur finaliser: the rendezvous score of (key, endpoint).
uint64_t rendezvous_score(const std::string &key, const std::string &endpoint);

// Parses "host:port" or "http://host:port[/]" into host and port; throws ClientError kInvalid.
std::pair<std::string, int> parse_endpoint(const std::string &endpoint);

} // namespace jit::client
