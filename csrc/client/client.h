// The jit-embedding client: frames to N servers over pooled keep-alive HTTP, with client-side load
// balancing, health checks, retries within a deadline, and fork safety (torch-free).
//
// One Client per process is the intended use (design.md, "Client and dataloader"). Every public
// method is thread-safe.
//
// Requests
//   submit() returns at once; a small pool of worker threads sends the frame as
//   POST /v1/encode/{encoder} on a pooled connection and decodes the answer in place
//   (codec::decode over the response body, which the Response owns: no copy of the payloads).
//   Every attempt carries X-Deadline-Ms, the request's ABSOLUTE deadline in ms since the Unix
//   epoch (see server/http_server.h), and Authorization: Bearer <auth_token> when one is set.
//
// Retries (at most `retries` after the first attempt, never past the deadline)
//   Only safe failures are retried: a connection error (refused, reset, timed out, closed), 429
//   (the endpoint is avoided for its Retry-After seconds) and 503. A retry goes to an endpoint this
//   request has not tried yet whenever one is healthy, after a full-jitter exponential backoff
//   (uniform in [0, min(backoff_max, backoff_base * 2^retry)]); when the only candidate is the 429
//   endpoint, the retry waits for its Retry-After, and fails at once if that passes the deadline.
//   Any other status (400, 404, 413, 422, 500, 504) fails at once. With attempt_timeout set, a
//   server silent that long is a connection error too, so a hung replica costs one attempt_timeout.
//
// Health
//   An endpoint that fails with a connection error or 503 is ejected: the balancer skips it while
//   any endpoint is healthy. A background thread probes ejected endpoints with GET /health/ready
//   every health_interval and readmits one when it answers 200.
//
// Balancing
//   "least_outstanding": power of two choices, two random healthy endpoints, the one with fewer
//   requests in flight from this client (ties: either). "affinity": rendezvous hashing of the
//   request key over the healthy endpoints, so a repeated key lands on the same server while the
//   set is stable (an empty key falls back to least_outstanding).
//
// Endpoint set
//   set_endpoints() replaces the set at runtime (discovery: jit_embedding.client refreshes it from
//   a registry). An endpoint that stays keeps its connection pool, health and counters; a new one
//   starts healthy with an empty pool; a removed one leaves the balancer at once, and requests in
//   flight to it finish there (they hold it) before its connections close. A retry never goes to
//   a removed endpoint.
//
// Fork safety
//   The client records the pid that created its state. The first call in another process (a
//   forked DataLoader worker) abandons the inherited state without touching it: no socket is
//   closed, shut down or written, no thread is joined (threads do not survive fork), no inherited
//   mutex is locked. It then builds fresh connections and threads lazily. The inherited objects
//   are leaked, once per fork. A fork while a request is in flight in the parent is safe for the
//   parent; the child never sees that request.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "client/cache_first.h"
#include "codec/codec.h"
#include "common/types.h"

namespace jit::client {

// The one error type of the client. what() names the endpoint, the encoder and the cause: the
// HTTP status with the server's JSON "error" message, or the socket error.
class ClientError : public std::runtime_error {
public:
  enum class Kind {
    kConnection, // no HTTP answer: refused, reset, timed out (last attempt's socket error)
    kHttp,       // the server answered a non-200 status
    kDeadline,   // the deadline passed (or a Retry-After would pass it) before an answer
    kDecode,     // a 200 answer whose body is not a valid frame
    kInvalid,    // bad options or arguments (no endpoints, unknown balancer, ...)
  };
  ClientError(Kind kind, std::string endpoint, std::string encoder, int status, std::string server_code,
              const std::string &message)
      : std::runtime_error(message), kind_(kind), endpoint_(std::move(endpoint)), encoder_(std::move(encoder)),
        status_(status), server_code_(std::move(server_code)) {}

  Kind kind() const { return kind_; }
  const std::string &endpoint() const { return endpoint_; } // "host:port" of the last attempt ("" if none)
  const std::string &encoder() const { return encoder_; }
  int status() const { return status_; }                          // HTTP status, 0 without one
  const std::string &server_code() const { return server_code_; } // the JSON "code", "" without one

private:
  Kind kind_;
  std::string endpoint_;
  std::string encoder_;
  int status_;
  std::string server_code_;
};

struct ClientOptions {
  std::vector<std::string> endpoints;       // "host:port" or "http://host:port"; at least one
  std::chrono::milliseconds timeout{30000}; // the deadline of a request that gives none
  int retries = 3;                          // attempts after the first, for safe failures only
  std::optional<std::string> auth_token;    // sent as "Authorization: Bearer <token>"
  // HTTPS to every endpoint (an "https://" endpoint also turns it on). The server's certificate
  // is verified against tls_ca_file (PEM), or the system's CA store when that is empty, and its
  // name against the endpoint's host; tls_verify false skips both (testing only).
  bool tls = false;
  std::string tls_ca_file;
  bool tls_verify = true;
  std::string balancer = "least_outstanding";      // or "affinity"
  std::chrono::milliseconds health_interval{1000}; // probe period of ejected endpoints
  std::chrono::milliseconds backoff_base{50};      // full-jitter backoff: base * 2^retry ...
  std::chrono::milliseconds backoff_max{2000};     // ... capped here
  size_t max_connections_per_endpoint = 64;        // requests in flight to one endpoint (more wait for a connection)
  size_t workers = 16;                             // threads running submitted requests
  std::chrono::milliseconds connect_timeout{2000}; // per TCP connect (also capped by the deadline)
  // How long one attempt waits on a silent server (between bytes of its answer) before it fails
  // as a connection error, is retried on another endpoint and ejects this one; 0: until the
  // deadline. Set it when a replica may hang (SIGSTOP, a stuck device) and another can answer, and
  // above the slowest legitimate answer (a full queue plus a batch), or busy replicas count as hung.
  std::chrono::milliseconds attempt_timeout{0};
  codec::DecodeOptions decode; // applied to every response frame

  // The local cache of submit_rows() (client/cache_first.h): a RocksDB folder that every process
  // of this node may share at once (DataLoader workers, later jobs), behind a per-process LRU.
  std::string local_cache_dir;                             // "": no local cache
  uint64_t local_cache_max_bytes = uint64_t{16} << 30;     // the folder's size limit
  uint64_t local_cache_memory_bytes = uint64_t{256} << 20; // this process's LRU; 0: none
  // Local hits are served only while a server confirmed the encoder's version this recently
  // (every lookup and encode answer confirms it): the bound on serving an old version locally
  // after an in-place update.
  std::chrono::milliseconds local_cache_version_ttl{1000};
};

// One answered request. `frame` aliases `body` (uncompressed payloads point into it), so keep the
// Response (or a copy of `body`) alive while using the tensors.
struct Response {
  std::shared_ptr<const std::string> body;
  codec::DecodedFrame frame;
  std::string endpoint;                 // "host:port" that answered
  int attempts = 0;                     // 1 when the first attempt answered
  std::chrono::microseconds latency{0}; // submit to answer, retries and backoff included
};

// Latency histogram bucket upper bounds, in milliseconds; the last bucket is +Inf.
inline constexpr std::array<double, 12> kLatencyBucketsMs = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000};

struct EndpointStats {
  std::string endpoint;
  uint64_t requests = 0;       // attempts sent to this endpoint
  uint64_t responses = 0;      // attempts answered 200
  uint64_t failures = 0;       // attempts that failed (connection error or non-200)
  uint64_t retries = 0;        // attempts that were retries of a failure elsewhere or here
  uint64_t bytes_sent = 0;     // request bodies
  uint64_t bytes_received = 0; // response bodies
  uint64_t connections_opened = 0;
  uint64_t ejections = 0;
  uint64_t outstanding = 0; // attempts in flight now
  bool healthy = true;
  double latency_sum_ms = 0;                                            // of attempts answered 200
  std::array<uint64_t, kLatencyBucketsMs.size() + 1> latency_buckets{}; // counts (not cumulative)
};

struct ClientStats {
  std::vector<EndpointStats> endpoints; // the current set, in endpoints() order
  // The counters of every endpoint set_endpoints() dropped, summed (endpoint "(removed)"), once
  // its last request in flight finished: totals over all endpoints never go down.
  uint64_t endpoints_removed = 0;
  EndpointStats removed;
  // Rows of submit_rows() by where their outputs came from.
  uint64_t rows_local_cache = 0, rows_server_cache = 0, rows_computed = 0;
};

class Client {
public:
  // Validates the options (ClientError kInvalid: no endpoints, a malformed endpoint, an unknown
  // balancer, retries < 0, zero connections or workers, a local cache folder that cannot be
  // opened). Connects nothing yet.
  explicit Client(ClientOptions options);
  // Stops the workers and the health thread (waiting for requests in flight) and closes the
  // connections; in a forked child, abandons them instead (see the file comment).
  ~Client();
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;

  // Sends `frame` (a request frame, docs/wire-format.md) to `encoder` on a worker thread. `key`
  // picks the endpoint under the affinity balancer. `deadline` (absolute; default now + timeout)
  // bounds every attempt, backoff and Retry-After. The future yields the Response or throws
  // ClientError. Never throws itself except ClientError kInvalid for an empty encoder name.
  std::future<Response> submit(const std::string &encoder, std::string frame, const std::string &key = "",
                               std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt);
  // Encodes `tensors` (codec::encode, no meta) and submits the frame. Throws codec::CodecError for
  // inconsistent tensors.
  std::future<Response> submit(const std::string &encoder, const std::vector<TensorView> &tensors,
                               const std::string &key = "",
                               std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt);

  // submit(...).get() on the calling thread: the Response, or throws ClientError.
  Response encode(const std::string &encoder, std::string frame, const std::string &key = "",
                  std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt);

  // Sends `request`'s rows cache-first (client/cache_first.h) on a worker thread. The future
  // yields every row's outputs or throws ClientError (kInvalid: rows with different input names,
  // keys not one per row, tensors that do not stack). Throws ClientError kInvalid at once for an
  // empty encoder name or no rows.
  std::future<RowsResponse> submit_rows(RowsRequest request);

  // GET /v1/encoders from a healthy endpoint (with the same retries and deadline rules): the JSON
  // body as is, {"encoders": [...]}. Throws ClientError.
  std::string encoders_json(std::optional<std::chrono::system_clock::time_point> deadline = std::nullopt);

  // Replaces the endpoint set (see "Endpoint set" above); `endpoints` as in ClientOptions, in any
  // order, duplicates (after normalising to "host:port") ignored. Thread-safe; safe while requests
  // are in flight. In a forked child it changes the child's set only. Throws ClientError kInvalid
  // for an empty list or a malformed endpoint, and then leaves the set as it was.
  void set_endpoints(const std::vector<std::string> &endpoints);
  // The current set, "host:port" each, in the order set_endpoints (or the options) gave.
  std::vector<std::string> endpoints() const;

  // Counters of the endpoints in the current set (a removed endpoint's counters go with it).
  ClientStats stats() const;
  // The options as constructed (their `endpoints` is the initial set; see endpoints()).
  const ClientOptions &options() const { return options_; }

  struct State; // per-process state: pools, balancer, workers (client.cpp)

private:
  State &state() const; // this process's state, rebuilt after a fork

  ClientOptions options_;
  mutable std::atomic<State *> state_{nullptr};
  mutable std::mutex rebuild_mu_; // taken only to replace the state in a forked child
};

} // namespace jit::client
