// HttpServer: httplib configuration, the routes, the error and metrics plumbing, and the drain.
#include "server/http_server.h"

#include <httplib.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <utility>

#include "common/trace.h"
#include "server/auth.h"
#include "server/body_reader.h"
#include "server/errors.h"

namespace jit::server {

namespace {

using Code = ServerError::Code;

constexpr const char *kJson = "application/json";
constexpr const char *kPrometheus = "text/plain; version=0.0.4";
constexpr const char *kEncodePrefix = "/v1/encode/";
constexpr const char *kEncodersPrefix = "/v1/encoders/";
constexpr const char *kFrameType = "application/x-jit-embedding-frame";
// A load request is a small JSON object; anything near this size is a mistake or an attack.
constexpr size_t kMaxLoadBodyBytes = size_t{1} << 20;
// GET /v1/trace: duration_ms bounds and default.
constexpr long kTraceMinMs = 1;
constexpr long kTraceMaxMs = 60000;
constexpr long kTraceDefaultMs = 2000;

// The `path` label of jit_http_requests_total: the route template, never the raw path, so that a
// client probing random URLs or encoder names cannot grow the number of series without bound.
std::string route_label(const std::string &path) {
  static const char *const kFixed[] = {"/health/live",     "/health/ready",   "/metrics",
                                       "/v1/encoders",     "/v1/trace",       "/v1/admin/drain",
                                       "/v1/cache/lookup", "/v1/cache/stats", "/v1/cache/prune"};
  for (const char *fixed : kFixed) {
    if (path == fixed) return path;
  }
  const auto ends_with = [&](const char *suffix) {
    const size_t n = std::strlen(suffix);
    return path.size() > n && path.compare(path.size() - n, n, suffix) == 0;
  };
  if (path.rfind(kEncodePrefix, 0) == 0) return "/v1/encode/{encoder}";
  if (path.rfind(kEncodersPrefix, 0) == 0 && ends_with("/load")) return "/v1/encoders/{name}/load";
  if (path.rfind(kEncodersPrefix, 0) == 0 && ends_with("/unload")) return "/v1/encoders/{name}/unload";
  return "other";
}

// The Code for an error status that httplib produced on its own (no handler of ours ran, or it
// ran before httplib failed the request). Only the statuses httplib itself sets are expected.
Code code_for_httplib_status(int status) {
  switch (status) {
  case 413: return Code::kPayloadTooLarge;
  case 404: return Code::kNotFound;
  default: return status >= 500 ? Code::kInternal : Code::kBadRequest;
  }
}

// A connection over in-memory bytes: the request to read, and the response written back.
class MemoryStream : public httplib::Stream {
public:
  explicit MemoryStream(const std::string &in) : in_(in) {}
  bool is_readable() const override { return pos_ < in_.size(); }
  bool is_writable() const override { return true; }
  ssize_t read(char *ptr, size_t size) override {
    const size_t n = std::min(size, in_.size() - pos_);
    std::memcpy(ptr, in_.data() + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char *ptr, size_t size) override {
    out_.append(ptr, size);
    return static_cast<ssize_t>(size);
  }
  void get_remote_ip_and_port(std::string &ip, int &port) const override {
    ip = "127.0.0.1";
    port = 0;
  }
  void get_local_ip_and_port(std::string &ip, int &port) const override {
    ip = "127.0.0.1";
    port = 0;
  }
  socket_t socket() const override { return INVALID_SOCKET; }
  std::string take_output() { return std::move(out_); }

private:
  const std::string &in_;
  size_t pos_ = 0;
  std::string out_;
};

// httplib keeps a connection's request processing protected; handle_raw() needs it directly.
template <class Base> class ProcessingServer : public Base {
public:
  using Base::Base;
  bool process(httplib::Stream &strm) {
    bool closed = false;
    return this->process_request(strm, /*close_connection=*/true, closed, nullptr);
  }
};

// Whether `host` names only loopback addresses ("localhost", 127.0.0.0/8, ::1). Names resolve
// through getaddrinfo, as httplib's bind does; a name that does not resolve is not loopback.
bool is_loopback_host(const std::string &host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo *res = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) return false;
  bool loopback = true;
  for (addrinfo *a = res; a != nullptr; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      const auto *in = reinterpret_cast<const sockaddr_in *>(a->ai_addr);
      loopback = loopback && (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    } else if (a->ai_family == AF_INET6) {
      const auto *in6 = reinterpret_cast<const sockaddr_in6 *>(a->ai_addr);
      loopback = loopback && IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
    } else {
      loopback = false;
    }
  }
  freeaddrinfo(res);
  return loopback;
}

// We serve no byte ranges: a server may ignore Range (RFC 9110 14.2; it must for methods other
// than GET), and httplib would otherwise slice every answer, error JSON and frames included, into
// a 206 or a multipart/byteranges (found by fuzz_http). httplib parses the header into req.ranges
// before any handler runs and hands handlers the request as const, but the object itself is not
// const (a local of httplib's request loop), so clearing it here is well defined.
void ignore_ranges(const httplib::Request &req) {
  const_cast<httplib::Request &>(req).ranges.clear();
}

// httplib adds these to every request it parses; they did not come from the client.
bool synthetic_header(const std::string &key) {
  return key == "REMOTE_ADDR" || key == "REMOTE_PORT" || key == "LOCAL_ADDR" || key == "LOCAL_PORT";
}

// Bytes of the request line and headers as they arrived (near enough: httplib has parsed them).
size_t header_bytes(const httplib::Request &req) {
  size_t n = req.method.size() + req.target.size() + req.version.size() + 4;
  for (const auto &[k, v] : req.headers) {
    if (!synthetic_header(k)) n += k.size() + v.size() + 4;
  }
  return n;
}

} // namespace

std::optional<std::chrono::system_clock::time_point> parse_deadline_ms(const std::string &value) {
  if (value.empty()) return std::nullopt;
  // Digits only: strtoull would accept a sign, spaces and hex, which would make a typo a deadline.
  bool digits = value.size() <= 19;
  for (char c : value)
    digits = digits && c >= '0' && c <= '9';
  if (!digits) {
    throw ServerError(Code::kBadRequest, "bad request: X-Deadline-Ms must be milliseconds since the Unix epoch as a "
                                         "decimal integer, got '" +
                                             value + "'");
  }
  const unsigned long long ms = std::strtoull(value.c_str(), nullptr, 10);
  // system_clock counts nanoseconds in 64 bits (until the year 2262): a later deadline is "never",
  // not an overflow into the past.
  using std::chrono::system_clock;
  const auto max_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(system_clock::time_point::max().time_since_epoch()).count();
  if (ms >= static_cast<unsigned long long>(max_ms)) return system_clock::time_point::max();
  return system_clock::time_point(std::chrono::duration_cast<system_clock::duration>(std::chrono::milliseconds(ms)));
}

HttpServer::HttpServer(ServerSettings settings, metrics::Registry &registry, ServerHooks hooks)
    : settings_(std::move(settings)), registry_(registry), hooks_(std::move(hooks)) {
  if (settings_.tls_cert_file.empty() != settings_.tls_key_file.empty()) {
    throw std::runtime_error("TLS needs both tls_cert_file and tls_key_file");
  }
  if (!settings_.tls_cert_file.empty()) {
    auto tls = std::make_unique<ProcessingServer<httplib::SSLServer>>(settings_.tls_cert_file.c_str(),
                                                                      settings_.tls_key_file.c_str());
    if (!tls->is_valid()) {
      throw std::runtime_error("cannot load the TLS certificate " + settings_.tls_cert_file + " and key " +
                               settings_.tls_key_file + " (PEM files, the key matching the certificate)");
    }
    process_ = [p = tls.get()](httplib::Stream &strm) { return p->process(strm); };
    http_ = std::move(tls);
  } else {
    auto plain = std::make_unique<ProcessingServer<httplib::Server>>();
    process_ = [p = plain.get()](httplib::Stream &strm) { return p->process(strm); };
    http_ = std::move(plain);
  }
  const size_t threads = settings_.threads == 0 ? 1 : settings_.threads;
  http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http_->set_payload_max_length(settings_.max_body_bytes);
  http_->set_keep_alive_max_count(settings_.keep_alive_max_count);
  http_->set_keep_alive_timeout(static_cast<time_t>(settings_.keep_alive_timeout.count()));
  http_->set_read_timeout(settings_.read_timeout);
  http_->set_write_timeout(settings_.write_timeout);
  http_->set_tcp_nodelay(settings_.tcp_nodelay);
  // httplib's default also sets SO_REUSEPORT, which lets a second server bind the same port and
  // silently take half its connections. SO_REUSEADDR alone still allows a quick restart.
  http_->set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_fd_ = sock; // the last socket httplib binds is the one it listens on
  });

  // Register every failure reason up front so each series exists (at 0) from the first scrape:
  // rate() over a series that appears only on the first failure misses that failure.
  for (Code c : {Code::kBadRequest, Code::kUnprocessable, Code::kPayloadTooLarge, Code::kNotFound, Code::kUnauthorized,
                 Code::kForbidden, Code::kConflict, Code::kHeaderTooLarge, Code::kOverloaded, Code::kNotReady,
                 Code::kDeadlineExceeded, Code::kInternal}) {
    failures_.at(static_cast<size_t>(c)) = &registry_.counter(
        "jit_http_failures_total", "HTTP requests that failed, by reason", {{"reason", code_name(c)}});
  }
  install_routes();
}

HttpServer::~HttpServer() {
  stop();
  wait();
}

void HttpServer::install_routes() {
  metrics::Gauge &in_flight_gauge = registry_.gauge("jit_http_in_flight", "POST requests being handled now");

  // The one way a failure becomes a response: status from http_status(), body from error_json(),
  // and the failure counted by reason.
  auto send_error = [this](httplib::Response &res, const ServerError &e) {
    res.status = http_status(e);
    // Overload is transient: tell well-behaved clients when to come back instead of letting them spin.
    if (e.code() == Code::kOverloaded) res.set_header("Retry-After", "1");
    if (e.code() == Code::kUnauthorized) res.set_header("WWW-Authenticate", "Bearer realm=\"jit-embedding\"");
    res.set_content(error_json(e), kJson);
    failures_.at(static_cast<size_t>(e.code()))->inc();
  };

  // Every handler runs inside this, so that a throw anywhere becomes a JSON error rather than
  // httplib's bare 500 (and a ServerError keeps its own status).
  auto run_guarded = [send_error](httplib::Response &res, const std::function<void()> &fn) {
    try {
      fn();
    } catch (const ServerError &e) {
      send_error(res, e);
    } catch (const std::bad_alloc &) {
      send_error(res, ServerError(Code::kInternal, "internal error: out of memory"));
    } catch (const std::exception &e) {
      send_error(res, ServerError(Code::kInternal, std::string("internal error: ") + e.what()));
    } catch (...) {
      send_error(res, ServerError(Code::kInternal, "internal error: unknown exception"));
    }
  };
  auto guarded = [run_guarded](std::function<void(const httplib::Request &, httplib::Response &)> fn) {
    return [fn = std::move(fn), run_guarded](const httplib::Request &req, httplib::Response &res) {
      run_guarded(res, [&] { fn(req, res); });
    };
  };

  // Errors httplib answers itself (413, unknown routes, malformed requests) reach here with an
  // empty body; ours already carry a JSON body and pass through untouched.
  http_->set_error_handler(
      httplib::Server::HandlerWithResponse([this, send_error](const httplib::Request &req, httplib::Response &res) {
        ignore_ranges(req); // a request refused before routing (a 416 for a bad Range, say)
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        send_error(res, ServerError(code_for_httplib_status(res.status),
                                    httplib_error_message(res.status, req, settings_.max_body_bytes)));
        return httplib::Server::HandlerResponse::Handled;
      }));

  // The logger runs once per response written, errors from httplib included: the one place
  // that sees every request. The (path, code) pairs are few but not known up front, so the series
  // is looked up per response; the registry lock is held only for a map lookup.
  http_->set_logger([this](const httplib::Request &req, const httplib::Response &res) {
    registry_
        .counter("jit_http_requests_total", "HTTP requests answered",
                 {{"path", route_label(req.path)}, {"code", std::to_string(res.status)}})
        .inc();
  });

  // Before any route: the header size limit, then the credentials. A refused request's body is
  // not read; the response closes the connection so the unread bytes never parse as a request.
  http_->set_pre_routing_handler([this, send_error](const httplib::Request &req, httplib::Response &res) {
    ignore_ranges(req);
    try {
      if (header_bytes(req) > settings_.max_header_bytes) {
        throw ServerError(Code::kHeaderTooLarge,
                          "request header fields too large: " + std::to_string(header_bytes(req)) +
                              " bytes of request line and headers, over max_header_bytes (" +
                              std::to_string(settings_.max_header_bytes) + ")");
      }
      authorize(settings_.auth, route_access(req.method, req.path), req.get_header_value("Authorization"));
      return httplib::Server::HandlerResponse::Unhandled;
    } catch (const ServerError &e) {
      send_error(res, e);
      if (req.has_header("Content-Length") || req.has_header("Transfer-Encoding"))
        res.set_header("Connection", "close");
      return httplib::Server::HandlerResponse::Handled;
    }
  });

  http_->Get("/health/live", guarded([](const httplib::Request &, httplib::Response &res) {
               res.set_content("{\"status\": \"live\"}", kJson);
             }));

  http_->Get("/health/ready", guarded([this](const httplib::Request &, httplib::Response &res) {
               std::lock_guard<std::mutex> lock(mu_);
               if (draining_) throw ServerError(Code::kNotReady, "not ready: draining");
               if (!ready_) throw ServerError(Code::kNotReady, "not ready: starting");
               res.set_content("{\"status\": \"ready\"}", kJson);
             }));

  http_->Get("/metrics", guarded([this](const httplib::Request &, httplib::Response &res) {
               if (hooks_.refresh_metrics) hooks_.refresh_metrics();
               res.set_content(registry_.render(), kPrometheus);
             }));

  http_->Get("/v1/encoders", guarded([this](const httplib::Request &, httplib::Response &res) {
               const std::string list = hooks_.encoders_json ? hooks_.encoders_json() : "[]";
               res.set_content("{\"encoders\": " + list + "}", kJson);
             }));

  // A capture of the pipeline's stages: duration_ms in [1, 60000], default 2000. The wait ends
  // early when the server stops (stop(), or the end of a drain), so it never holds up a shutdown.
  http_->Get("/v1/trace", guarded([this](const httplib::Request &req, httplib::Response &res) {
               if (!hooks_.trace_start || !hooks_.trace_stop)
                 throw ServerError(Code::kNotFound, "not found: this server cannot trace");
               long ms = kTraceDefaultMs;
               if (req.has_param("duration_ms")) {
                 const std::string v = req.get_param_value("duration_ms");
                 char *end = nullptr;
                 errno = 0;
                 ms = v.empty() || v.size() > 9 || !std::isdigit(static_cast<unsigned char>(v[0]))
                          ? -1
                          : std::strtol(v.c_str(), &end, 10);
                 if (ms < kTraceMinMs || ms > kTraceMaxMs || end == nullptr || *end != '\0' || errno != 0) {
                   throw ServerError(Code::kBadRequest, "duration_ms must be an integer in [" +
                                                            std::to_string(kTraceMinMs) + ", " +
                                                            std::to_string(kTraceMaxMs) + "], got " + json_quote(v));
                 }
               }
               if (!hooks_.trace_start())
                 throw ServerError(Code::kConflict, "conflict: a trace capture is already running");
               // Whatever happens below, the capture ends with this request.
               struct StopOnExit {
                 const std::function<std::string()> &stop;
                 bool done = false;
                 ~StopOnExit() {
                   if (!done) stop();
                 }
               } capture{hooks_.trace_stop};
               {
                 std::unique_lock<std::mutex> lock(mu_);
                 idle_cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stopped_ || draining_; });
               }
               std::string json = hooks_.trace_stop();
               capture.done = true;
               res.set_content(json, kJson);
             }));

  // POSTs are counted in before anything else, so that begin_drain() waits for them.
  struct InFlight {
    HttpServer *self;
    metrics::Gauge &gauge;
    bool entered;
    InFlight(HttpServer *s, metrics::Gauge &g) : self(s), gauge(g), entered(s->enter()) {
      if (entered) gauge.add(1);
    }
    ~InFlight() {
      if (!entered) return;
      gauge.add(-1);
      self->leave();
    }
  };

  // Frame POSTs (encode, cache lookup): the body goes from the socket into this thread's aligned
  // buffer and is decoded in place; `handle` gets the frame while the buffer is alive and returns
  // the response frame.
  // The direct socket path reads raw bytes: ciphertext under TLS.
  const bool direct_reads = settings_.tls_cert_file.empty();
  auto frame_post =
      [this, run_guarded, &in_flight_gauge,
       direct_reads](const httplib::Request &req, httplib::Response &res, const httplib::ContentReader &reader,
                     const std::function<std::string(const codec::DecodedFrame &,
                                                     std::optional<std::chrono::system_clock::time_point>)> &handle) {
        run_guarded(res, [&] {
          trace::Scope request_span("request", "http");
          if (request_span.active()) {
            trace::name_thread_once("http");
            request_span.arg("path", req.path);
          }
          InFlight in_flight(this, in_flight_gauge);
          if (!in_flight.entered) {
            read_body(req, res, reader, settings_.max_body_bytes, nullptr, settings_.read_timeout);
            throw ServerError(Code::kNotReady, "not ready: draining, not accepting new requests");
          }
          BodyBuffer &body = thread_body_buffer();
          struct Trim {
            BodyBuffer &body;
            size_t keep;
            ~Trim() { body.trim(keep); }
          } trim_on_exit{body, settings_.retain_body_bytes};
          read_body(req, res, reader, settings_.max_body_bytes, &body, settings_.read_timeout, direct_reads);

          const auto deadline = parse_deadline_ms(req.get_header_value("X-Deadline-Ms"));
          const auto now = std::chrono::system_clock::now();
          if (deadline && *deadline <= now) {
            const auto late = std::chrono::duration_cast<std::chrono::milliseconds>(now - *deadline).count();
            throw ServerError(Code::kDeadlineExceeded,
                              "deadline exceeded: X-Deadline-Ms passed " + std::to_string(late) + " ms ago");
          }
          if (deadline && *deadline - now > settings_.max_deadline) {
            throw ServerError(
                Code::kBadRequest,
                "bad request: X-Deadline-Ms is " +
                    std::to_string(std::chrono::duration_cast<std::chrono::seconds>(*deadline - now).count()) +
                    " s away, over max_deadline_s (" +
                    std::to_string(std::chrono::duration_cast<std::chrono::seconds>(settings_.max_deadline).count()) +
                    ")");
          }
          codec::DecodeOptions options;
          options.limits = settings_.codec_limits;
          codec::DecodedFrame frame;
          try {
            // Validated before anything else: a malformed frame is the client's first problem
            // whatever it was sent to.
            trace::Scope decode_span("decode", "http");
            decode_span.arg("bytes", static_cast<int64_t>(body.size()));
            frame = codec::decode(body.data(), body.size(), options);
          } catch (const codec::CodecError &e) {
            throw from_codec_error(e);
          }
          // The frame's tensors point into `body`, which is trimmed only after this returns. Moved
          // into the response, not copied: set_content() would copy a possibly large frame.
          res.body = handle(frame, deadline);
          res.set_header("Content-Type", kFrameType);
        });
      };

  http_->Post(R"(/v1/encode/([^/]+))", [this, frame_post](const httplib::Request &req, httplib::Response &res,
                                                          const httplib::ContentReader &reader) {
    frame_post(req, res, reader, [&](const codec::DecodedFrame &frame, auto deadline) {
      const std::string encoder = req.matches[1].str();
      if (!hooks_.has_encoder || !hooks_.has_encoder(encoder)) {
        throw ServerError(Code::kNotFound, "unknown encoder '" + encoder + "'");
      }
      if (!hooks_.encode) {
        throw ServerError(Code::kNotReady, "not ready: encoder '" + encoder + "' has no executor in this build");
      }
      return hooks_.encode(encoder, frame, deadline);
    });
  });

  http_->Post("/v1/cache/lookup", [this, frame_post](const httplib::Request &req, httplib::Response &res,
                                                     const httplib::ContentReader &reader) {
    frame_post(req, res, reader, [&](const codec::DecodedFrame &frame, auto) {
      if (!hooks_.cache_lookup) throw ServerError(Code::kNotFound, "not found: this server has no cache");
      return hooks_.cache_lookup(frame);
    });
  });

  http_->Get("/v1/cache/stats", guarded([this](const httplib::Request &req, httplib::Response &res) {
               if (!hooks_.cache_stats) throw ServerError(Code::kNotFound, "not found: this server has no cache");
               const std::string v = req.get_param_value("versions");
               if (!v.empty() && v != "0" && v != "1")
                 throw ServerError(Code::kBadRequest, "versions must be 0 or 1, got " + json_quote(v));
               res.set_content(hooks_.cache_stats(v == "1"), kJson);
             }));

  http_->Post("/v1/cache/prune", [this, run_guarded, &in_flight_gauge](const httplib::Request &req,
                                                                       httplib::Response &res,
                                                                       const httplib::ContentReader &reader) {
    run_guarded(res, [&] {
      InFlight in_flight(this, in_flight_gauge);
      BodyBuffer body;
      read_body(req, res, reader, kMaxLoadBodyBytes, in_flight.entered ? &body : nullptr, settings_.read_timeout);
      if (!in_flight.entered) throw ServerError(Code::kNotReady, "not ready: draining, not pruning");
      if (!hooks_.cache_prune) throw ServerError(Code::kNotFound, "not found: this server has no cache");
      const std::string text =
          body.size() == 0 ? std::string() : std::string(reinterpret_cast<const char *>(body.data()), body.size());
      res.set_content(hooks_.cache_prune(text), kJson);
    });
  });

  // Load: a small JSON body, read with a cap of its own rather than max_body_bytes.
  http_->Post(R"(/v1/encoders/([^/]+)/load)", [this, run_guarded,
                                               &in_flight_gauge](const httplib::Request &req, httplib::Response &res,
                                                                 const httplib::ContentReader &reader) {
    run_guarded(res, [&] {
      InFlight in_flight(this, in_flight_gauge);
      BodyBuffer body;
      read_body(req, res, reader, kMaxLoadBodyBytes, in_flight.entered ? &body : nullptr, settings_.read_timeout);
      if (!in_flight.entered) throw ServerError(Code::kNotReady, "not ready: draining, not loading encoders");
      if (!hooks_.load_encoder) throw ServerError(Code::kNotFound, "not found: this server does not load encoders");
      const std::string text =
          body.size() == 0 ? std::string() : std::string(reinterpret_cast<const char *>(body.data()), body.size());
      res.set_content(hooks_.load_encoder(req.matches[1].str(), text), kJson);
    });
  });

  // Unload and drain take no body; one sent anyway is read and dropped, bounded like a load's.
  http_->Post(R"(/v1/encoders/([^/]+)/unload)",
              [this, run_guarded, &in_flight_gauge](const httplib::Request &req, httplib::Response &res,
                                                    const httplib::ContentReader &reader) {
                run_guarded(res, [&] {
                  InFlight in_flight(this, in_flight_gauge);
                  read_body(req, res, reader, kMaxLoadBodyBytes, nullptr, settings_.read_timeout);
                  if (!in_flight.entered)
                    throw ServerError(Code::kNotReady, "not ready: draining, not unloading encoders");
                  if (!hooks_.unload_encoder)
                    throw ServerError(Code::kNotFound, "not found: this server does not unload encoders");
                  res.set_content(hooks_.unload_encoder(req.matches[1].str()), kJson);
                });
              });

  // Not counted in flight: the drain it starts waits for in-flight requests, and must not wait
  // for this one.
  http_->Post("/v1/admin/drain", [this, run_guarded](const httplib::Request &req, httplib::Response &res,
                                                     const httplib::ContentReader &reader) {
    run_guarded(res, [&] {
      read_body(req, res, reader, kMaxLoadBodyBytes, nullptr, settings_.read_timeout);
      if (!hooks_.request_drain)
        throw ServerError(Code::kNotFound, "not found: this server cannot be drained over HTTP");
      bool first;
      {
        std::lock_guard<std::mutex> lock(mu_);
        first = !drain_requested_;
        drain_requested_ = true;
      }
      if (first) hooks_.request_drain();
      res.status = 202;
      res.set_content("{\"status\": \"draining\"}", kJson);
    });
  });
}

std::string HttpServer::handle_raw(const std::string &request) {
  MemoryStream stream(request);
  process_(stream);
  return stream.take_output();
}

int HttpServer::start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) throw std::logic_error("HttpServer::start() after stop()");
    if (listener_.joinable()) throw std::logic_error("HttpServer::start() called twice");
  }
  if (!settings_.allow_public && !is_loopback_host(settings_.host)) {
    throw std::runtime_error("refusing to listen on " + settings_.host +
                             ": not a loopback address; set server.allow_public: true (or --public) to serve "
                             "other hosts, and configure server.auth tokens and TLS (docs/security.md)");
  }
  int port = -1;
  if (settings_.port == 0) {
    port = http_->bind_to_any_port(settings_.host);
  } else if (http_->bind_to_port(settings_.host, settings_.port)) {
    port = settings_.port;
  }
  if (port <= 0) {
    throw std::runtime_error("cannot bind " + settings_.host + ":" + std::to_string(settings_.port));
  }
  port_ = port;
  // Debian's httplib listens with a backlog of 5: a burst of DataLoader workers connecting at once
  // overflows it and some get resets. Linux lets listen() on a listening socket raise it.
  if (listen_fd_ >= 0 && ::listen(listen_fd_, settings_.listen_backlog) != 0) {
    throw std::runtime_error("cannot set the listen backlog to " + std::to_string(settings_.listen_backlog));
  }
  listener_ = std::thread([this] { http_->listen_after_bind(); });
  // httplib's stop() does nothing until the listener has marked itself running; wait for that so
  // a stop() right after start() cannot be lost.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!http_->is_running() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return port_;
}

void HttpServer::set_ready(bool ready) {
  std::lock_guard<std::mutex> lock(mu_);
  ready_ = ready;
}

bool HttpServer::enter() {
  std::lock_guard<std::mutex> lock(mu_);
  if (draining_) return false;
  ++in_flight_;
  return true;
}

void HttpServer::leave() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--in_flight_ == 0) idle_cv_.notify_all();
}

size_t HttpServer::in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_flight_;
}

bool HttpServer::begin_drain() {
  bool finished;
  {
    std::unique_lock<std::mutex> lock(mu_);
    if (draining_) {
      // A second caller (a second signal, say) waits for the first one's outcome.
      idle_cv_.wait(lock, [&] { return drain_result_.has_value(); });
      return *drain_result_;
    }
    draining_ = true;
    finished = idle_cv_.wait_for(lock, settings_.drain_grace, [&] { return in_flight_ == 0; });
    drain_result_ = finished;
    idle_cv_.notify_all();
  }
  stop();
  return finished;
}

void HttpServer::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  idle_cv_.notify_all(); // ends a GET /v1/trace wait early
  // httplib asserts on a second stop() of a running server; stopped_ makes ours idempotent.
  if (listener_.joinable()) http_->stop();
}

void HttpServer::wait() {
  if (listener_.joinable()) listener_.join();
}

} // namespace jit::server
