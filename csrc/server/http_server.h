// The HTTP front end of jit-embedding-server: routes, limits, errors, metrics and graceful drain.
//
// Wraps cpp-httplib's Server (Debian's libcpp-httplib 0.11.4: a thread per connection from a
// fixed pool, blocking I/O). Every setting is a named field of ServerSettings with its default.
//
// Endpoints
//   GET  /health/live          200 {"status":"live"} while the process serves at all
//   GET  /health/ready         200 {"status":"ready"}; 503 JSON before set_ready(true) and while draining
//   GET  /metrics              Prometheus text (version 0.0.4) of the registry given to the constructor
//   GET  /v1/encoders          200 {"encoders": <ServerHooks::encoders_json()>}
//   POST /v1/encode/{encoder}  decodes the body as a frame (docs/wire-format.md), runs it through
//                              ServerHooks::encode, answers the response frame; unknown encoder: 404
//   POST /v1/encoders/{name}/load
//                              JSON body handed to ServerHooks::load_encoder; answers its JSON
//   POST /v1/cache/lookup      a frame of content digests or sample keys -> a frame of the hits
//                              (ServerHooks::cache_lookup; server/cache_service.h)
//   GET  /v1/cache/stats       JSON (ServerHooks::cache_stats); ?versions=1 adds a scan by version
//   POST /v1/cache/prune       JSON body -> JSON (ServerHooks::cache_prune)
//   The cache routes answer 404 when the server has no cache (cache.enabled: false).
//   GET  /v1/trace?duration_ms=N
//                              captures the pipeline's stages for N ms (1..60000, default 2000;
//                              else 400) and answers them as Chrome trace JSON (common/trace.h);
//                              409 while another capture runs, 404 without the trace hooks. The
//                              wait ends early if the server stops.
//   POST /v1/encoders/{name}/unload
//                              stops serving `name` after its queued work (ServerHooks::unload_encoder)
//   POST /v1/admin/drain       202 {"status": "draining"}: starts the same graceful drain as SIGTERM
//                              (ServerHooks::request_drain); the process exits once it is done
//
// Security (server/auth.h, docs/security.md): with tokens configured, every route but
// /health/live needs `Authorization: Bearer <token>` (401 otherwise) and the admin routes (load,
// unload, drain, cache prune) the admin token (403 for the plain one). The check runs before any
// route, on the headers alone; a refused request's body is never read, and the response closes
// the connection. Headers over max_header_bytes answer 431. With tls_cert_file and tls_key_file
// the listener speaks HTTPS only (httplib's SSLServer over OpenSSL), and request bodies are always
// read through httplib (the direct socket path would read ciphertext).
//
// Request bodies of POST /v1/encode are read straight from the socket into a per-thread,
// 64-byte-aligned buffer that is reused across requests (reserved from Content-Length, grown for
// chunked bodies, freed after a request only when it grew past retain_body_bytes), and the frame
// is decoded in place: uncompressed tensors reach the engine without a copy of the body.
//
// Errors: every failure answers JSON {"error": "...", "code": "..."} with the status from
// http_status() (server/errors.h), including the ones httplib produces itself (413 for a body over
// max_body_bytes, 404 for an unknown route, 400 for a malformed request line), and bumps
// jit_http_failures_total{reason=<code name>}. Every response bumps
// jit_http_requests_total{path=<route template>,code=<status>}.
//
// Deadlines: X-Deadline-Ms on POST /v1/encode is an ABSOLUTE time, in milliseconds since the Unix
// epoch (UTC, system clock), so that it survives retries and queueing unchanged. A request whose
// deadline has already passed answers 504 without being decoded; a header that is not a
// non-negative decimal integer answers 400. Clients and server need roughly synchronised clocks.
#pragma once

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "codec/codec.h"
#include "common/metrics.h"
#include "server/auth.h"
#include "server/errors.h"

namespace httplib {
class Server;
class Stream;
} // namespace httplib

namespace jit::server {

struct ServerSettings {
  std::string host = "127.0.0.1"; // loopback unless asked otherwise (see allow_public)
  // A host that is not a loopback address must be asked for explicitly: start() refuses one
  // otherwise, so that a typo'd config never exposes an unauthenticated server.
  bool allow_public = false;
  AuthSettings auth;              // bearer tokens; none: nothing is checked (server/auth.h)
  std::string tls_cert_file;      // PEM certificate (chain); with tls_key_file: HTTPS only
  std::string tls_key_file;       // PEM private key
  size_t max_header_bytes = 8192; // request line + all headers; more answers 431
  // An X-Deadline-Ms further than this in the future answers 400: a deadline bounds how long a
  // request may hold a queue slot and its memory.
  std::chrono::milliseconds max_deadline{std::chrono::hours(1)};
  int port = 0; // 0: an ephemeral port, reported by HttpServer::start()
  // Worker threads; httplib serves one connection per thread for its whole keep-alive life, so
  // this is how many keep-alive connections are served at once (more wait in the accept queue).
  size_t threads = 512;
  int listen_backlog = 4096;               // connections waiting to be accepted (the kernel caps it at somaxconn)
  size_t max_body_bytes = size_t{1} << 30; // larger bodies answer 413 before they are buffered
  // A thread's body buffer above this size is freed after its request rather than kept for the
  // next one: threads x this bounds the memory idle buffers hold.
  size_t retain_body_bytes = size_t{64} << 20;
  size_t keep_alive_max_count = 10000;          // requests per connection before the server closes it
  std::chrono::seconds keep_alive_timeout{5};   // idle keep-alive connections close after this
  std::chrono::seconds read_timeout{30};        // per socket read, not per request
  std::chrono::seconds write_timeout{30};       // per socket write
  bool tcp_nodelay = true;                      // small responses must not wait for Nagle
  std::chrono::milliseconds drain_grace{30000}; // begin_drain() waits this long for in-flight requests
  codec::CodecLimits codec_limits;              // applied to every request frame
};

// What the HTTP layer asks of the rest of the server (server/app.h provides all of them). Each is
// called from handler threads, at the same time, so must be thread-safe. An empty function means
// "not available": no encoders, no encoder list, no loading.
struct ServerHooks {
  std::function<bool(const std::string &)> has_encoder;
  // The JSON array for GET /v1/encoders ("[...]"). Empty function: [].
  std::function<std::string()> encoders_json;
  // Runs a validated request frame for a known encoder and returns the response frame; throws
  // ServerError (server/encode_handler.h implements it over the engine). Empty: 503, nothing can
  // run encoders in this process. `frame` points into a buffer that lives until this returns.
  std::function<std::string(const std::string &encoder, const codec::DecodedFrame &frame,
                            std::optional<std::chrono::system_clock::time_point> deadline)>
      encode;
  // POST /v1/encoders/{name}/load: given the name from the URL and the request body, loads or
  // replaces that encoder and returns the JSON answer; throws ServerError. Empty: 404.
  std::function<std::string(const std::string &name, const std::string &body)> load_encoder;
  // The cache's routes (server/cache_service.h): a decoded lookup frame -> the answer frame; the
  // stats JSON; a prune JSON body -> its JSON answer. Each throws ServerError. Empty: 404.
  std::function<std::string(const codec::DecodedFrame &frame)> cache_lookup;
  std::function<std::string(bool versions)> cache_stats;
  std::function<std::string(const std::string &body)> cache_prune;
  // GET /v1/trace: trace_start begins a capture and returns false when one already runs (409);
  // trace_stop ends it and returns the Chrome trace JSON. Empty: 404.
  std::function<bool()> trace_start;
  std::function<std::string()> trace_stop;
  // POST /v1/encoders/{name}/unload: stops serving `name` (queued work finishes) and returns the
  // JSON answer; throws ServerError (404 for an unknown name). Empty: 404.
  std::function<std::string(const std::string &name)> unload_encoder;
  // POST /v1/admin/drain: starts a graceful drain of the whole server and returns at once. Called
  // at most once. Empty: 404.
  std::function<void()> request_drain;
  // GET /metrics: updates sampled series (the GPU gauges) just before the registry is rendered.
  // Empty: nothing to sample.
  std::function<void()> refresh_metrics;
};

class HttpServer {
public:
  // Configures routes and limits; binds nothing yet. The registry must outlive the server.
  // Throws std::runtime_error when the TLS certificate or key cannot be loaded.
  HttpServer(ServerSettings settings, metrics::Registry &registry, ServerHooks hooks);
  // Stops serving (without a drain) and joins the listener thread.
  ~HttpServer();
  HttpServer(const HttpServer &) = delete;
  HttpServer &operator=(const HttpServer &) = delete;

  // Binds settings.host:settings.port, starts accepting on a background thread, and returns the
  // bound port (the ephemeral one when settings.port is 0). Returns once the server is accepting.
  // Throws std::runtime_error if the address cannot be bound, or when settings.host is not a
  // loopback address and allow_public is false. Call at most once.
  int start();

  int port() const { return port_; }

  // /health/ready answers 200 only while ready and not draining. Starts false.
  void set_ready(bool ready);

  // Graceful drain: from now on /health/ready answers 503 and new POSTs answer 503; waits up to
  // drain_grace for in-flight POSTs to finish, then stops the server (idle keep-alive connections
  // close within keep_alive_timeout). Returns true if every in-flight request finished in time.
  // Thread-safe; later calls return at once with the first call's outcome.
  bool begin_drain();

  // Stops accepting and closes the listening socket, without a drain. Idempotent.
  void stop();

  // Blocks until the listener thread has returned (after stop() or begin_drain()).
  void wait();

  // POSTs being handled right now.
  size_t in_flight() const;

  // Runs one raw HTTP/1.1 request (request line, headers, body) through the same parsing,
  // routes, limits and error handling as a connection would, with no socket, and returns the raw
  // response bytes. For the request-handling fuzz target and tests; callable without start().
  std::string handle_raw(const std::string &request);

private:
  void install_routes();
  // Counts a request in, unless draining; returns false (and counts nothing) while draining.
  bool enter();
  void leave();

  ServerSettings settings_;
  metrics::Registry &registry_;
  ServerHooks hooks_;
  // jit_http_failures_total per reason, indexed by Code: looked up once, so counting a failure
  // takes no registry lock.
  std::array<metrics::Counter *, kServerErrorCodes> failures_{};
  std::unique_ptr<httplib::Server> http_;          // an SSLServer with TLS
  std::function<bool(httplib::Stream &)> process_; // http_'s request processing (handle_raw)
  std::thread listener_;
  int port_ = 0;
  int listen_fd_ = -1; // set by httplib's socket-options callback, before start() returns

  mutable std::mutex mu_; // guards everything below
  std::condition_variable idle_cv_;
  size_t in_flight_ = 0;
  bool ready_ = false;
  bool draining_ = false;
  std::optional<bool> drain_result_;
  bool stopped_ = false;
  bool drain_requested_ = false;
};

// Parses an X-Deadline-Ms value: milliseconds since the Unix epoch as a non-negative decimal
// integer. Returns nullopt for an absent (empty) header; throws ServerError(kBadRequest) for a
// malformed one.
std::optional<std::chrono::system_clock::time_point> parse_deadline_ms(const std::string &value);

} // namespace jit::server
