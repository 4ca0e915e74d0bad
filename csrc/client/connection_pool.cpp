// Endpoint: a pool of keep-alive httplib connections to one server, and one HTTP exchange on it.
//
// A connection is an httplib::ClientImpl (an SSLClient with ClientOptions::tls) with keep-alive
// and TCP_NODELAY. A request borrows one
// (the most recently returned: its socket is the likeliest to be open still), sends, and returns
// it; at most max_connections_per_endpoint exist at once, so extra requests wait for one.
#include <httplib.h>

#include <algorithm>
#include <cstdlib>

#include "client/client_internal.h"

namespace jit::client {

namespace {

// Seconds and microseconds of a positive duration, for httplib's (sec, usec) timeout setters.
std::pair<time_t, time_t> sec_usec(std::chrono::microseconds d) {
  if (d.count() < 1000) d = std::chrono::microseconds(1000); // httplib treats 0 as "poll once"
  return {static_cast<time_t>(d.count() / 1000000), static_cast<time_t>(d.count() % 1000000)};
}

int parse_retry_after(const httplib::Response &res) {
  if (!res.has_header("Retry-After")) return -1;
  const std::string v = res.get_header_value("Retry-After");
  char *end = nullptr;
  long s = std::strtol(v.c_str(), &end, 10);
  if (end == v.c_str() || *end != '\0' || s < 0) return -1; // an HTTP date: ignored, backoff applies
  return static_cast<int>(std::min<long>(s, 3600));
}

} // namespace

std::pair<std::string, int> parse_endpoint(const std::string &endpoint) {
  std::string s = endpoint;
  if (s.rfind("http://", 0) == 0) s = s.substr(7);
  if (s.rfind("https://", 0) == 0) s = s.substr(8); // ClientOptions::tls says how to speak to it
  while (!s.empty() && s.back() == '/')
    s.pop_back();
  const size_t colon = s.rfind(':');
  auto invalid = [&](const std::string &why) {
    return ClientError(ClientError::Kind::kInvalid, endpoint, "", 0, "",
                       "jit-embedding client: bad endpoint '" + endpoint + "': " + why);
  };
  if (colon == std::string::npos || colon == 0)
    throw invalid("expected host:port, http://host:port or https://host:port");
  if (s.find('/') != std::string::npos) throw invalid("a path is not allowed");
  const std::string port_str = s.substr(colon + 1);
  char *end = nullptr;
  long port = std::strtol(port_str.c_str(), &end, 10);
  if (port_str.empty() || *end != '\0' || port <= 0 || port > 65535) throw invalid("the port is not in 1..65535");
  std::string host = s.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return {host, static_cast<int>(port)};
}

Endpoint::Endpoint(std::string host, int port, const ClientOptions &options)
    : host_(std::move(host)), port_(port), name_(host_ + ":" + std::to_string(port)), options_(options) {}

Endpoint::~Endpoint() = default;

std::unique_ptr<httplib::ClientImpl> Endpoint::make_connection() {
  std::unique_ptr<httplib::ClientImpl> c;
  if (options_.tls) {
    auto tls = std::make_unique<httplib::SSLClient>(host_, port_);
    if (!options_.tls_ca_file.empty()) tls->set_ca_cert_path(options_.tls_ca_file.c_str());
    // Verification covers the chain and, in httplib, that the certificate names host_.
    tls->enable_server_certificate_verification(options_.tls_verify);
    c = std::move(tls);
  } else {
    c = std::make_unique<httplib::ClientImpl>(host_, port_);
  }
  c->set_keep_alive(true);
  c->set_tcp_nodelay(true);
  c->set_follow_location(false);
  // Frames are already compact (and optionally zstd'd inside); HTTP compression would only cost.
  c->set_compress(false);
  // Called for every socket this connection opens: counts (re)connects.
  c->set_socket_options([this](socket_t) { connections_opened.fetch_add(1, std::memory_order_relaxed); });
  if (options_.auth_token) c->set_bearer_token_auth(*options_.auth_token);
  return c;
}

Exchange Endpoint::send(const std::string &method, const std::string &path, const std::string &body,
                        const std::vector<std::pair<std::string, std::string>> &headers, Clock::time_point deadline) {
  Exchange out;
  std::unique_ptr<httplib::ClientImpl> conn;
  {
    std::unique_lock<std::mutex> lock(mu_);
    const size_t max_open = std::max<size_t>(1, options_.max_connections_per_endpoint);
    if (!cv_.wait_until(lock, deadline, [&] { return !idle_.empty() || open_ < max_open; })) {
      out.error = "timed out waiting for one of its " + std::to_string(max_open) + " connections";
      return out;
    }
    if (!idle_.empty()) {
      conn = std::move(idle_.back());
      idle_.pop_back();
    } else {
      ++open_;
    }
  }
  if (!conn) conn = make_connection();

  httplib::Headers hdrs;
  for (const auto &[k, v] : headers)
    hdrs.emplace(k, v);
  bool reusable = false;
  // A pooled socket may have been closed by the server's keep-alive timeout just as we send: one
  // retry on a fresh socket tells that apart from a failing server.
  for (int tries = 0; tries < 2; ++tries) {
    const bool was_open = conn->is_socket_open() != 0;
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      out.error = "the deadline passed before sending";
      break;
    }
    // attempt_timeout bounds how long this attempt waits on a silent server (one stopped, or hung)
    // before the request moves on to another endpoint, instead of waiting out its whole deadline.
    const auto attempt = std::chrono::duration_cast<std::chrono::microseconds>(options_.attempt_timeout);
    const bool bounded = attempt.count() > 0 && attempt < left;
    auto [cs, cu] = sec_usec(std::min<std::chrono::microseconds>(left, options_.connect_timeout));
    const auto wait = bounded ? attempt : left;
    auto [rs, ru] = sec_usec(wait);
    conn->set_connection_timeout(cs, cu);
    conn->set_read_timeout(rs, ru);
    conn->set_write_timeout(rs, ru);
    const auto sent_at = Clock::now();
    httplib::Result res = method == "GET" ? conn->Get(path.c_str(), hdrs)
                                          : conn->Post(path.c_str(), hdrs, body, "application/octet-stream");
    if (res) {
      out.status = res->status;
      out.retry_after_s = parse_retry_after(*res);
      out.body = std::move(res->body);
      out.error.clear();
      reusable = true;
      break;
    }
    const httplib::Error err = res.error();
    out.error = httplib::to_string(err);
    if (err == httplib::Error::Connection) out.error = "connection refused or unreachable";
    if (err == httplib::Error::ConnectionTimeout) out.error = "connect timed out";
    if (err == httplib::Error::Read) out.error = "connection closed or read timed out";
    if (err == httplib::Error::Write) out.error = "write failed (connection closed?)";
    if ((err == httplib::Error::Read || err == httplib::Error::Write) && Clock::now() - sent_at >= wait) {
      // The server was silent all along, not a stale socket: say so, and no second try on a fresh one.
      out.error = bounded
                      ? "no answer within attempt_timeout (" + std::to_string(options_.attempt_timeout.count()) + " ms)"
                      : std::string("no answer before the deadline");
      break;
    }
    if (!(was_open && (err == httplib::Error::Read || err == httplib::Error::Write))) break;
    conn = make_connection(); // drop the stale one (it closes its socket)
  }

  {
    std::lock_guard<std::mutex> lock(mu_);
    if (reusable) {
      idle_.push_back(std::move(conn));
    } else {
      --open_;
    }
  }
  if (!reusable) conn.reset(); // closes the failed socket outside the lock
  cv_.notify_one();
  return out;
}

void Endpoint::record_latency(std::chrono::microseconds latency) {
  latency_sum_us.fetch_add(static_cast<uint64_t>(latency.count()), std::memory_order_relaxed);
  const double ms = static_cast<double>(latency.count()) / 1000.0;
  size_t i = 0;
  while (i < kLatencyBucketsMs.size() && ms > kLatencyBucketsMs[i])
    ++i;
  latency_buckets[i].fetch_add(1, std::memory_order_relaxed);
}

EndpointStats Endpoint::snapshot() const {
  EndpointStats s;
  s.endpoint = name_;
  s.requests = requests.load();
  s.responses = responses.load();
  s.failures = failures.load();
  s.retries = retries.load();
  s.bytes_sent = bytes_sent.load();
  s.bytes_received = bytes_received.load();
  s.connections_opened = connections_opened.load();
  s.ejections = ejections.load();
  s.outstanding = static_cast<uint64_t>(std::max<int64_t>(0, outstanding.load()));
  s.healthy = healthy.load();
  s.latency_sum_ms = static_cast<double>(latency_sum_us.load()) / 1000.0;
  for (size_t i = 0; i < s.latency_buckets.size(); ++i)
    s.latency_buckets[i] = latency_buckets[i].load();
  return s;
}

} // namespace jit::client
