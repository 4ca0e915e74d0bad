// Balancer: which endpoint an attempt goes to, the health of each endpoint, and the endpoint set
// itself, which set_endpoints() may replace at any time (discovery).
//
// Picking copies the set's pointer under a mutex, then reads only atomics (health, Retry-After,
// requests in flight) and a small RNG under a mutex, so it costs well under a microsecond per
// attempt for a handful of endpoints. Health probes run on one background thread that sleeps
// until an endpoint is ejected.
#include <httplib.h>

#include <algorithm>

#include "client/client_internal.h"

namespace jit::client {

namespace {

bool contains(const std::vector<EndpointPtr> &v, const Endpoint *ep) {
  return std::any_of(v.begin(), v.end(), [ep](const EndpointPtr &e) { return e.get() == ep; });
}

bool any_ejected(const EndpointList &list) {
  return std::any_of(list.begin(), list.end(),
                     [](const EndpointPtr &ep) { return !ep->healthy.load(std::memory_order_relaxed); });
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

} // namespace

uint64_t rendezvous_score(const std::string &key, const std::string &endpoint) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const std::string &s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 1099511628211ull;
    }
  };
  mix(key);
  h ^= 0xff; // a separator, so ("ab", "c") and ("a", "bc") differ
  h *= 1099511628211ull;
  mix(endpoint);
  // FNV's low bits mix poorly; the murmur3 finaliser spreads every input bit over the result.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

Balancer::Balancer(std::shared_ptr<const EndpointList> endpoints, const ClientOptions &options)
    : options_(options), affinity_(options.balancer == "affinity"), list_(std::move(endpoints)),
      rng_(std::random_device{}()) {
  prober_ = std::thread([this] { probe_loop(); });
}

Balancer::~Balancer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (prober_.joinable()) prober_.join();
}

std::shared_ptr<const EndpointList> Balancer::endpoints() const {
  std::lock_guard<std::mutex> lock(list_mu_);
  return list_;
}

void Balancer::set_endpoints(std::shared_ptr<const EndpointList> endpoints) {
  {
    std::lock_guard<std::mutex> lock(list_mu_);
    list_.swap(endpoints);
  }
  // The old list (in `endpoints`) goes here unless a request or the prober still holds it.
  { std::lock_guard<std::mutex> lock(mu_); } // the prober is either waiting or will see the change
  cv_.notify_all();
}

std::vector<Endpoint *> Balancer::candidates(const EndpointList &all, const std::vector<EndpointPtr> &tried,
                                             bool need_idle) {
  std::vector<Endpoint *> out;
  const int64_t now = now_ns();
  for (const EndpointPtr &ep : all) {
    if (!ep->healthy.load(std::memory_order_relaxed)) continue;
    if (contains(tried, ep.get())) continue;
    if (need_idle && ep->busy_until_ns.load(std::memory_order_relaxed) > now) continue;
    out.push_back(ep.get());
  }
  return out;
}

EndpointPtr Balancer::pick(const std::string &key, const std::vector<EndpointPtr> &tried) {
  const std::shared_ptr<const EndpointList> list = endpoints();
  const EndpointList &all = *list;
  // Preference: healthy, untried and not in a Retry-After window; then healthy and untried; then
  // healthy and not busy; then healthy; then anything (every endpoint ejected: try them anyway,
  // the probes may simply not have caught up).
  std::vector<Endpoint *> pool = candidates(all, tried, true);
  if (pool.empty()) pool = candidates(all, tried, false);
  if (pool.empty()) pool = candidates(all, {}, true);
  if (pool.empty()) pool = candidates(all, {}, false);
  if (pool.empty()) {
    for (const EndpointPtr &ep : all)
      if (!contains(tried, ep.get())) pool.push_back(ep.get());
  }
  if (pool.empty()) {
    for (const EndpointPtr &ep : all)
      pool.push_back(ep.get());
  }
  // The pool holds raw pointers into `all`; hand back the owning pointer of the one chosen.
  auto owned = [&](Endpoint *ep) -> EndpointPtr {
    for (const EndpointPtr &e : all)
      if (e.get() == ep) return e;
    return all.front(); // unreachable: every pool entry comes from `all`
  };
  if (pool.size() == 1) return owned(pool[0]);

  if (affinity_ && !key.empty()) {
    Endpoint *best = nullptr;
    uint64_t best_score = 0;
    for (Endpoint *ep : pool) {
      const uint64_t s = rendezvous_score(key, ep->name());
      if (!best || s > best_score) {
        best = ep;
        best_score = s;
      }
    }
    return owned(best);
  }

  size_t a, b;
  {
    std::lock_guard<std::mutex> lock(rng_mu_);
    std::uniform_int_distribution<size_t> dist(0, pool.size() - 1);
    a = dist(rng_);
    b = dist(rng_);
    while (b == a)
      b = dist(rng_);
  }
  const int64_t oa = pool[a]->outstanding.load(std::memory_order_relaxed);
  const int64_t ob = pool[b]->outstanding.load(std::memory_order_relaxed);
  return owned(ob < oa ? pool[b] : pool[a]); // a tie keeps the first random draw: uniform
}

void Balancer::eject(Endpoint *ep) {
  if (ep->healthy.exchange(false)) {
    ep->ejections.fetch_add(1, std::memory_order_relaxed);
    { std::lock_guard<std::mutex> lock(mu_); } // the prober is either waiting or will see the change
    cv_.notify_all();
  }
}

void Balancer::probe_loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (!any_ejected(*endpoints())) {
      cv_.wait(lock, [&] { return stop_ || any_ejected(*endpoints()); });
      continue;
    }
    // Wait one interval after the ejection before the first probe: the failure just happened.
    cv_.wait_for(lock, options_.health_interval, [&] { return stop_; });
    if (stop_) break;
    lock.unlock();
    // A snapshot: an endpoint dropped from the set meanwhile is probed once more at most.
    const std::shared_ptr<const EndpointList> list = endpoints();
    for (const EndpointPtr &ep : *list) {
      if (ep->healthy.load(std::memory_order_relaxed)) continue;
      const auto deadline =
          Clock::now() + std::max<std::chrono::milliseconds>(options_.connect_timeout, std::chrono::milliseconds(100));
      Exchange ex = ep->send("GET", "/health/ready", "", {}, deadline);
      if (ex.status == 200) ep->healthy.store(true);
    }
    lock.lock();
  }
}

} // namespace jit::client
