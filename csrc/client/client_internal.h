// The client's internals, shared by its implementation files (not a public header).
//
//   connection_pool.cpp  Endpoint: a pool of keep-alive connections and one HTTP exchange on it
//   balancer.cpp         Balancer: picking an endpoint, ejection, and the health-probe thread
//   client.cpp           Client and its per-process State: workers, retries, deadlines, stats
//   cache_first.cpp      submit_rows(): digests, local cache, lookup, encode of the misses
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/cache.h"
#include "client/client.h"
#include "common/metrics.h"

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

using EndpointPtr = std::shared_ptr<Endpoint>;
using EndpointList = std::vector<EndpointPtr>;

// Picks endpoints and keeps their health (see client.h, "Balancing" and "Health").
//
// The endpoint set is an immutable list swapped whole by set_endpoints(): a pick copies the
// current list's pointer under a mutex and works on that snapshot, so a request holds the
// Endpoint it is talking to (shared ownership) even after the set dropped it.
class Balancer {
public:
  Balancer(std::shared_ptr<const EndpointList> endpoints, const ClientOptions &options);
  ~Balancer(); // stops the health thread
  Balancer(const Balancer &) = delete;
  Balancer &operator=(const Balancer &) = delete;

  // The endpoint for the next attempt of a request with `key`: among healthy endpoints not in
  // `tried` and not busy (429), by the balancing policy; failing that, healthy ones; failing that,
  // any. Never null.
  EndpointPtr pick(const std::string &key, const std::vector<EndpointPtr> &tried);

  // Marks `ep` unhealthy after a connection error or 503, and wakes the prober.
  void eject(Endpoint *ep);

  // The current set (a snapshot: later set_endpoints() calls do not change it).
  std::shared_ptr<const EndpointList> endpoints() const;
  // Replaces the set (never empty) and wakes the prober, which probes only the new set.
  void set_endpoints(std::shared_ptr<const EndpointList> endpoints);

private:
  void probe_loop();
  static std::vector<Endpoint *> candidates(const EndpointList &all, const std::vector<EndpointPtr> &tried,
                                            bool need_idle);

  const ClientOptions &options_;
  bool affinity_;
  mutable std::mutex list_mu_; // guards list_ (the pointer, not the immutable list)
  std::shared_ptr<const EndpointList> list_;
  std::mutex rng_mu_;
  std::mt19937_64 rng_;
  std::mutex mu_; // guards stop_ and wakes the prober
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread prober_;
};

// The summed counters of endpoints that left the set (ClientStats::removed). Shared with the
// deleter of every Endpoint, which adds the endpoint's final counters when its last holder (the
// set, a request in flight, the prober) lets go.
struct RemovedStats {
  std::mutex mu;
  uint64_t count = 0;
  EndpointStats total;
  void add(const EndpointStats &s);
};

// What one process owns. In a forked child the parent's State is leaked untouched and a new one
// is built (Client::state()).
struct Client::State {
  // Connects nothing yet; `endpoints` are the initial set (validated names).
  State(const ClientOptions &options, const std::vector<std::string> &endpoints);
  ~State();

  // Client::set_endpoints() in this process: keeps the Endpoint (pool, health, counters) of
  // every name that stays, makes new ones, and drops the rest from the set (their requests in
  // flight finish on the Endpoint they hold). `names` are validated and non-empty.
  void set_endpoints(const std::vector<std::string> &names);
  // The endpoint names now, for a forked child's new State: read only if no thread of the
  // parent held names_mu at the fork (try_lock), else nullopt.
  std::optional<std::vector<std::string>> names_for_fork();

  void post(std::function<void()> task);
  // The retry loop (client.h, "Retries"): the first 200 exchange, or throws ClientError.
  Exchange call(const std::string &method, const std::string &path, const std::string &body, const std::string &key,
                const std::string &encoder, Clock::time_point deadline,
                std::chrono::system_clock::time_point deadline_sys, std::string *endpoint, int *attempts);
  Response run(const std::string &encoder, const std::string &frame, const std::string &key, Clock::time_point started,
               std::chrono::system_clock::time_point deadline_sys);
  // submit_rows() on a worker thread (cache_first.cpp).
  RowsResponse run_rows(const RowsRequest &request, Clock::time_point started,
                        std::chrono::system_clock::time_point deadline_sys);
  // The version of `encoder` a server answered within local_cache_version_ttl, if any.
  std::optional<std::string> fresh_version(const std::string &encoder);
  void confirm_version(const std::string &encoder, const std::string &version);

  // A new Endpoint whose deleter records its counters in `removed` (unless the State is going
  // away: then nothing is reported any more).
  EndpointPtr make_endpoint(const std::string &name);

  const pid_t pid;
  const ClientOptions &options;
  std::shared_ptr<RemovedStats> removed = std::make_shared<RemovedStats>();
  std::shared_ptr<std::atomic<bool>> closing = std::make_shared<std::atomic<bool>>(false);
  std::mutex names_mu; // serializes set_endpoints(); guards names
  std::vector<std::string> names;
  std::unique_ptr<Balancer> balancer; // owns the endpoint set

  std::mutex mu; // guards tasks and stop
  std::condition_variable cv;
  std::deque<std::function<void()>> tasks;
  bool stop = false;
  std::vector<std::thread> workers;

  std::mutex rng_mu;
  std::mt19937_64 rng;

  // The local cache (ClientOptions::local_cache_dir): this process's own tiers over the shared folder.
  metrics::Registry local_metrics;
  std::unique_ptr<cache::TieredCache> local;
  std::mutex versions_mu;
  std::map<std::string, std::pair<std::string, Clock::time_point>> versions; // encoder -> (version, confirmed)
  std::atomic<uint64_t> rows_local{0}, rows_server_cache{0}, rows_computed{0};
};

// 64-bit FNV-1a followed by a murmur finaliser: the rendezvous score of (key, endpoint).
uint64_t rendezvous_score(const std::string &key, const std::string &endpoint);

// Parses "host:port", "http://host:port[/]" or "https://host:port[/]" into host and port; throws
// ClientError kInvalid.
std::pair<std::string, int> parse_endpoint(const std::string &endpoint);

// The endpoints' canonical "host:port" names in first-seen order, duplicates dropped; throws
// ClientError kInvalid for an empty list or a malformed endpoint.
std::vector<std::string> canonical_endpoints(const std::vector<std::string> &endpoints);

} // namespace jit::client
