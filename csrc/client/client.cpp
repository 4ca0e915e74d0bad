// Client: per-process state (endpoints, balancer, worker threads), the retry loop with its
// deadline, error messages, and the fork check (see client.h for the contracts).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "client/client_internal.h"

namespace jit::client {

namespace {

using std::chrono::duration_cast;
using std::chrono::microseconds;
using std::chrono::milliseconds;

// The value of the string field `name` of a flat JSON object such as the server's error body
// {"error": "...", "code": "..."}; "" when absent. Escapes are decoded (\uXXXX as UTF-8).
std::string json_string_field(const std::string &json, const std::string &name) {
  const std::string quoted = "\"" + name + "\"";
  size_t i = json.find(quoted);
  if (i == std::string::npos) return "";
  i += quoted.size();
  while (i < json.size() && (json[i] == ' ' || json[i] == ':'))
    ++i;
  if (i >= json.size() || json[i] != '"') return "";
  std::string out;
  for (++i; i < json.size() && json[i] != '"'; ++i) {
    char c = json[i];
    if (c != '\\' || i + 1 >= json.size()) {
      out += c;
      continue;
    }
    c = json[++i];
    switch (c) {
    case 'n': out += '\n'; break;
    case 't': out += '\t'; break;
    case 'r': out += '\r'; break;
    case 'b': out += '\b'; break;
    case 'f': out += '\f'; break;
    case 'u': {
      if (i + 4 >= json.size()) return out;
      const unsigned cp = static_cast<unsigned>(std::strtoul(json.substr(i + 1, 4).c_str(), nullptr, 16));
      i += 4;
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      }
      break;
    }
    default: out += c; // \" \\ \/
    }
  }
  return out;
}

// "HTTP 422 unprocessable: <server message>" or the socket error.
std::string describe_cause(const Exchange &ex) {
  if (ex.status == 0) return ex.error;
  std::string cause = "HTTP " + std::to_string(ex.status);
  const std::string code = json_string_field(ex.body, "code");
  std::string message = json_string_field(ex.body, "error");
  if (message.empty() && !ex.body.empty() && code.empty()) message = ex.body.substr(0, 200);
  if (!code.empty()) cause += " " + code;
  if (!message.empty()) cause += ": " + message;
  return cause;
}

bool retryable(const Exchange &ex) {
  return ex.status == 0 || ex.status == 429 || ex.status == 503;
}

std::string attempts_text(int n) {
  return std::to_string(n) + (n == 1 ? " attempt" : " attempts");
}

bool valid_encoder_name(const std::string &name) {
  if (name.empty()) return false;
  return std::all_of(name.begin(), name.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == ':' || c == '@';
  });
}

} // namespace

std::vector<std::string> canonical_endpoints(const std::vector<std::string> &endpoints) {
  if (endpoints.empty()) {
    throw ClientError(ClientError::Kind::kInvalid, "", "", 0, "", "jit-embedding client: no endpoints given");
  }
  std::vector<std::string> out;
  for (const std::string &e : endpoints) {
    auto [host, port] = parse_endpoint(e);
    std::string name = host + ":" + std::to_string(port);
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(std::move(name));
  }
  return out;
}

Client::State::State(const ClientOptions &opts, const std::vector<std::string> &initial)
    : pid(getpid()), options(opts), names(initial), rng(std::random_device{}()) {
  if (!options.local_cache_dir.empty()) {
    cache::CacheSettings s;
    s.memory_max_bytes = options.local_cache_memory_bytes;
    s.rocksdb_path = options.local_cache_dir;
    s.rocksdb_shared = true; // every DataLoader worker of the node opens the same folder
    s.rocksdb_max_bytes = options.local_cache_max_bytes;
    try {
      local = cache::TieredCache::from_settings(s, local_metrics);
    } catch (const cache::CacheError &e) {
      throw ClientError(ClientError::Kind::kInvalid, "", "", 0, "",
                        std::string("jit-embedding client: local cache: ") + e.what());
    }
  }
  auto list = std::make_shared<EndpointList>();
  for (const std::string &e : initial)
    list->push_back(make_endpoint(e));
  balancer = std::make_unique<Balancer>(std::move(list), options);
  for (size_t i = 0; i < options.workers; ++i) {
    workers.emplace_back([this] {
      std::unique_lock<std::mutex> lock(mu);
      for (;;) {
        cv.wait(lock, [&] { return stop || !tasks.empty(); });
        if (tasks.empty()) return; // stopping, and every queued request has run
        auto task = std::move(tasks.front());
        tasks.pop_front();
        lock.unlock();
        task();
        lock.lock();
      }
    });
  }
}

Client::State::~State() {
  {
    std::lock_guard<std::mutex> lock(mu);
    stop = true;
  }
  cv.notify_all();
  for (auto &t : workers)
    t.join();
  closing->store(true); // the endpoints still in the set were not removed
  balancer.reset();     // stops the prober; the endpoints go with their last holder
}

void RemovedStats::add(const EndpointStats &s) {
  std::lock_guard<std::mutex> lock(mu);
  ++count;
  total.endpoint = "(removed)";
  total.healthy = false;
  total.requests += s.requests;
  total.responses += s.responses;
  total.failures += s.failures;
  total.retries += s.retries;
  total.bytes_sent += s.bytes_sent;
  total.bytes_received += s.bytes_received;
  total.connections_opened += s.connections_opened;
  total.ejections += s.ejections;
  total.latency_sum_ms += s.latency_sum_ms;
  for (size_t i = 0; i < total.latency_buckets.size(); ++i)
    total.latency_buckets[i] += s.latency_buckets[i];
}

EndpointPtr Client::State::make_endpoint(const std::string &name) {
  auto [host, port] = parse_endpoint(name);
  return EndpointPtr(new Endpoint(host, port, options), [removed = removed, closing = closing](Endpoint *ep) {
    if (!closing->load()) removed->add(ep->snapshot());
    delete ep;
  });
}

void Client::State::set_endpoints(const std::vector<std::string> &next) {
  std::lock_guard<std::mutex> lock(names_mu);
  const std::shared_ptr<const EndpointList> current = balancer->endpoints();
  auto list = std::make_shared<EndpointList>();
  for (const std::string &name : next) {
    auto kept =
        std::find_if(current->begin(), current->end(), [&](const EndpointPtr &ep) { return ep->name() == name; });
    if (kept != current->end()) {
      list->push_back(*kept); // its pool, health and counters carry on
    } else {
      list->push_back(make_endpoint(name));
    }
  }
  balancer->set_endpoints(std::move(list));
  names = next;
}

std::optional<std::vector<std::string>> Client::State::names_for_fork() {
  // A parent thread inside set_endpoints() at the fork left names_mu locked for good in the child
  // (and `names` perhaps half written): then the caller falls back to the constructor's list.
  std::unique_lock<std::mutex> lock(names_mu, std::try_to_lock);
  if (!lock.owns_lock()) return std::nullopt;
  return names;
}

void Client::State::post(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mu);
    tasks.push_back(std::move(task));
  }
  cv.notify_one();
}

Exchange Client::State::call(const std::string &method, const std::string &path, const std::string &body,
                             const std::string &key, const std::string &encoder, Clock::time_point deadline,
                             std::chrono::system_clock::time_point deadline_sys, std::string *endpoint, int *attempts) {
  const long long deadline_ms = std::chrono::duration_cast<milliseconds>(deadline_sys.time_since_epoch()).count();
  const std::vector<std::pair<std::string, std::string>> headers = {
      {"X-Deadline-Ms", std::to_string(std::max<long long>(0, deadline_ms))}};
  std::vector<EndpointPtr> tried; // owning: an endpoint dropped from the set stays alive while tried
  std::string last_cause;
  Exchange last;
  EndpointPtr last_ep;

  auto fail = [&](ClientError::Kind kind, const std::string &why, int n) -> ClientError {
    const std::string where = last_ep ? last_ep->name() : std::string("no endpoint");
    return ClientError(kind, last_ep ? last_ep->name() : "", encoder, last.status, json_string_field(last.body, "code"),
                       "jit-embedding client: encoder '" + encoder + "' at " + where + ": " + why + " (" +
                           attempts_text(n) + ")");
  };

  for (int attempt = 0;; ++attempt) {
    const EndpointPtr ep = balancer->pick(key, tried);
    // A 429's Retry-After asks us to stay away from that endpoint; when it is the only choice,
    // wait for it, unless that passes the deadline.
    const auto busy_until = Clock::time_point(std::chrono::nanoseconds(ep->busy_until_ns.load()));
    if (busy_until > Clock::now()) {
      if (busy_until >= deadline) {
        last_ep = ep;
        throw fail(ClientError::Kind::kDeadline,
                   last_cause + "; its Retry-After would pass the deadline, so it was not retried", attempt);
      }
      std::this_thread::sleep_until(busy_until);
    }
    if (Clock::now() >= deadline) {
      throw fail(ClientError::Kind::kDeadline,
                 attempt == 0 ? std::string("deadline exceeded before sending")
                              : "deadline exceeded; last cause: " + last_cause,
                 attempt);
    }

    ep->requests.fetch_add(1, std::memory_order_relaxed);
    if (attempt > 0) ep->retries.fetch_add(1, std::memory_order_relaxed);
    ep->bytes_sent.fetch_add(body.size(), std::memory_order_relaxed);
    ep->outstanding.fetch_add(1, std::memory_order_relaxed);
    const auto t0 = Clock::now();
    Exchange ex = ep->send(method, path, body, headers, deadline);
    ep->outstanding.fetch_sub(1, std::memory_order_relaxed);
    ep->bytes_received.fetch_add(ex.body.size(), std::memory_order_relaxed);
    last_ep = ep;
    if (ex.status == 200) {
      ep->responses.fetch_add(1, std::memory_order_relaxed);
      ep->record_latency(duration_cast<microseconds>(Clock::now() - t0));
      *endpoint = ep->name();
      *attempts = attempt + 1;
      return ex;
    }
    ep->failures.fetch_add(1, std::memory_order_relaxed);
    last_cause = describe_cause(ex);
    last = std::move(ex);
    if (last.status == 0 || last.status == 503) balancer->eject(ep.get());
    if (last.status == 429 && last.retry_after_s > 0) {
      const auto until = Clock::now() + std::chrono::seconds(last.retry_after_s);
      ep->busy_until_ns.store(std::chrono::duration_cast<std::chrono::nanoseconds>(until.time_since_epoch()).count());
    }
    if (!retryable(last)) {
      throw fail(last.status ? ClientError::Kind::kHttp : ClientError::Kind::kConnection, last_cause, attempt + 1);
    }
    if (attempt >= options.retries) {
      throw fail(last.status ? ClientError::Kind::kHttp : ClientError::Kind::kConnection,
                 last_cause + "; giving up after the retry limit", attempt + 1);
    }
    if (std::find(tried.begin(), tried.end(), ep) == tried.end()) tried.push_back(ep);
    if (tried.size() >= balancer->endpoints()->size()) tried.clear(); // every endpoint tried: start over

    // Full jitter: uniform in [0, min(max, base * 2^attempt)].
    const double cap = std::min<double>(static_cast<double>(options.backoff_max.count()),
                                        static_cast<double>(options.backoff_base.count()) * std::ldexp(1.0, attempt));
    double sleep_ms;
    {
      std::lock_guard<std::mutex> lock(rng_mu);
      sleep_ms = std::uniform_real_distribution<double>(0.0, std::max(cap, 0.0))(rng);
    }
    const auto wake =
        Clock::now() + duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(sleep_ms));
    if (wake >= deadline) {
      throw fail(ClientError::Kind::kDeadline, "deadline exceeded; last cause: " + last_cause, attempt + 1);
    }
    std::this_thread::sleep_until(wake);
  }
}

Response Client::State::run(const std::string &encoder, const std::string &frame, const std::string &key,
                            Clock::time_point started, std::chrono::system_clock::time_point deadline_sys) {
  const Clock::time_point deadline = started + (deadline_sys - std::chrono::system_clock::now());
  Response r;
  Exchange ex =
      call("POST", "/v1/encode/" + encoder, frame, key, encoder, deadline, deadline_sys, &r.endpoint, &r.attempts);
  // The body moves into a shared string first: the decoded tensors point into that buffer.
  auto body = std::make_shared<std::string>(std::move(ex.body));
  try {
    r.frame = codec::decode(reinterpret_cast<const uint8_t *>(body->data()), body->size(), options.decode);
  } catch (const codec::CodecError &e) {
    throw ClientError(ClientError::Kind::kDecode, r.endpoint, encoder, 200, "",
                      "jit-embedding client: encoder '" + encoder + "' at " + r.endpoint +
                          ": the response is not a valid frame: " + e.what());
  }
  r.body = std::move(body);
  r.latency = duration_cast<microseconds>(Clock::now() - started);
  return r;
}

Client::Client(ClientOptions options) : options_(std::move(options)) {
  auto invalid = [](const std::string &why) {
    return ClientError(ClientError::Kind::kInvalid, "", "", 0, "", "jit-embedding client: " + why);
  };
  const std::vector<std::string> endpoints = canonical_endpoints(options_.endpoints);
  if (options_.balancer != "least_outstanding" && options_.balancer != "affinity")
    throw invalid("unknown balancer '" + options_.balancer + "' (expected 'least_outstanding' or 'affinity')");
  if (options_.retries < 0) throw invalid("retries must be >= 0");
  if (options_.max_connections_per_endpoint == 0) throw invalid("max_connections_per_endpoint must be >= 1");
  if (options_.workers == 0) throw invalid("workers must be >= 1");
  if (options_.timeout.count() <= 0) throw invalid("timeout must be positive");
  if (options_.health_interval.count() <= 0) throw invalid("health_interval must be positive");
  if (options_.attempt_timeout.count() < 0) throw invalid("attempt_timeout must be >= 0 (0: until the deadline)");
  for (const std::string &e : options_.endpoints)
    options_.tls = options_.tls || e.rfind("https://", 0) == 0;
  state_.store(new State(options_, endpoints));
}

Client::~Client() {
  State *s = state_.load();
  // In a forked child the state belongs to the parent's threads and sockets: leak it.
  if (s != nullptr && s->pid == getpid()) delete s;
}

Client::State &Client::state() const {
  State *s = state_.load(std::memory_order_acquire);
  if (s->pid == getpid()) return *s;
  std::lock_guard<std::mutex> lock(rebuild_mu_);
  s = state_.load(std::memory_order_acquire);
  if (s->pid != getpid()) {
    // The old state is leaked on purpose: its threads are gone, its mutexes may be held by them,
    // and its sockets are the parent's. Its endpoint set (discovery may have changed it) carries
    // over when it can be read safely.
    const std::vector<std::string> names = s->names_for_fork().value_or(canonical_endpoints(options_.endpoints));
    s = new State(options_, names);
    state_.store(s, std::memory_order_release);
  }
  return *s;
}

std::future<Response> Client::submit(const std::string &encoder, std::string frame, const std::string &key,
                                     std::optional<std::chrono::system_clock::time_point> deadline) {
  if (!valid_encoder_name(encoder)) {
    throw ClientError(ClientError::Kind::kInvalid, "", encoder, 0, "",
                      "jit-embedding client: bad encoder name '" + encoder + "'");
  }
  const Clock::time_point started = Clock::now();
  const auto deadline_sys = deadline.value_or(std::chrono::system_clock::now() + options_.timeout);
  State &s = state();
  auto task = std::make_shared<std::packaged_task<Response()>>(
      [&s, encoder, frame = std::move(frame), key, started, deadline_sys] {
        return s.run(encoder, frame, key, started, deadline_sys);
      });
  std::future<Response> future = task->get_future();
  s.post([task] { (*task)(); });
  return future;
}

std::future<Response> Client::submit(const std::string &encoder, const std::vector<TensorView> &tensors,
                                     const std::string &key,
                                     std::optional<std::chrono::system_clock::time_point> deadline) {
  return submit(encoder, codec::encode(tensors, "", {}), key, deadline);
}

Response Client::encode(const std::string &encoder, std::string frame, const std::string &key,
                        std::optional<std::chrono::system_clock::time_point> deadline) {
  return submit(encoder, std::move(frame), key, deadline).get();
}

std::future<RowsResponse> Client::submit_rows(RowsRequest request) {
  if (!valid_encoder_name(request.encoder)) {
    throw ClientError(ClientError::Kind::kInvalid, "", request.encoder, 0, "",
                      "jit-embedding client: bad encoder name '" + request.encoder + "'");
  }
  if (request.rows.empty()) {
    throw ClientError(ClientError::Kind::kInvalid, "", request.encoder, 0, "",
                      "jit-embedding client: submit_rows with no rows");
  }
  const Clock::time_point started = Clock::now();
  const auto deadline_sys = request.deadline.value_or(std::chrono::system_clock::now() + options_.timeout);
  State &s = state();
  auto task = std::make_shared<std::packaged_task<RowsResponse()>>(
      [&s, request = std::move(request), started, deadline_sys] { return s.run_rows(request, started, deadline_sys); });
  std::future<RowsResponse> future = task->get_future();
  s.post([task] { (*task)(); });
  return future;
}

std::string Client::encoders_json(std::optional<std::chrono::system_clock::time_point> deadline) {
  const Clock::time_point started = Clock::now();
  const auto deadline_sys = deadline.value_or(std::chrono::system_clock::now() + options_.timeout);
  std::string endpoint;
  int attempts = 0;
  Exchange ex =
      state().call("GET", "/v1/encoders", "", "", "(encoder list)",
                   started + (deadline_sys - std::chrono::system_clock::now()), deadline_sys, &endpoint, &attempts);
  return std::move(ex.body);
}

void Client::set_endpoints(const std::vector<std::string> &endpoints) {
  state().set_endpoints(canonical_endpoints(endpoints));
}

std::vector<std::string> Client::endpoints() const {
  State &s = state();
  std::vector<std::string> out;
  for (const EndpointPtr &ep : *s.balancer->endpoints())
    out.push_back(ep->name());
  return out;
}

ClientStats Client::stats() const {
  ClientStats out;
  const State &s = state();
  for (const EndpointPtr &ep : *s.balancer->endpoints())
    out.endpoints.push_back(ep->snapshot());
  {
    std::lock_guard<std::mutex> lock(s.removed->mu);
    out.endpoints_removed = s.removed->count;
    out.removed = s.removed->total;
  }
  out.rows_local_cache = s.rows_local.load();
  out.rows_server_cache = s.rows_server_cache.load();
  out.rows_computed = s.rows_computed.load();
  return out;
}

} // namespace jit::client
