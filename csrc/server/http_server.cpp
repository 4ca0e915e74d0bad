// HttpServer: httplib configuration, the routes, the error and metrics plumbing, and the drain.
#include "server/http_server.h"

#include <httplib.h>

#include <sys/socket.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <utility>

#include "server/errors.h"

namespace jit::server {

namespace {

using Code = ServerError::Code;

constexpr const char *kJson = "application/json";
constexpr const char *kPrometheus = "text/plain; version=0.0.4";
constexpr const char *kEncodePrefix = "/v1/encode/";

// The `path` label of jit_http_requests_total: the route template, never the raw path, so that a
// client probing random URLs or encoder names cannot grow the number of series without bound.
std::string route_label(const std::string &path) {
  if (path == "/health/live" || path == "/health/ready" || path == "/metrics" || path == "/v1/encoders") return path;
  if (path.rfind(kEncodePrefix, 0) == 0) return "/v1/encode/{encoder}";
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

std::string httplib_error_message(int status, const httplib::Request &req, size_t max_body_bytes) {
  switch (status) {
  case 413: return "payload too large: the body exceeds max_body_bytes (" + std::to_string(max_body_bytes) + ")";
  case 404: return "not found: no route for " + req.method + " " + req.path;
  case 414: return "bad request: the request URI is too long";
  default: return "bad request: malformed HTTP request (status " + std::to_string(status) + " from the HTTP layer)";
  }
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
    : settings_(std::move(settings)), registry_(registry), hooks_(std::move(hooks)),
      http_(std::make_unique<httplib::Server>()) {
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
  http_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });

  // Register every failure reason up front so each series exists (at 0) from the first scrape:
  // rate() over a series that appears only on the first failure misses that failure.
  for (Code c : {Code::kBadRequest, Code::kUnprocessable, Code::kPayloadTooLarge, Code::kNotFound, Code::kOverloaded,
                 Code::kNotReady, Code::kDeadlineExceeded, Code::kInternal}) {
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
    res.set_content(error_json(e), kJson);
    failures_.at(static_cast<size_t>(e.code()))->inc();
  };

  // Every handler runs inside this, so that a throw anywhere becomes a JSON error rather than
  // httplib's bare 500 (and a ServerError keeps its own status).
  auto guarded = [send_error](std::function<void(const httplib::Request &, httplib::Response &)> fn) {
    return [fn = std::move(fn), send_error](const httplib::Request &req, httplib::Response &res) {
      try {
        fn(req, res);
      } catch (const ServerError &e) {
        send_error(res, e);
      } catch (const std::exception &e) {
        send_error(res, ServerError(Code::kInternal, std::string("internal error: ") + e.what()));
      } catch (...) {
        send_error(res, ServerError(Code::kInternal, "internal error: unknown exception"));
      }
    };
  };

  // Errors httplib answers itself (413, unknown routes, malformed requests) reach here with an
  // empty body; ours already carry a JSON body and pass through untouched.
  http_->set_error_handler(
      httplib::Server::HandlerWithResponse([this, send_error](const httplib::Request &req, httplib::Response &res) {
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
               res.set_content(registry_.render(), kPrometheus);
             }));

  http_->Get("/v1/encoders", guarded([this](const httplib::Request &, httplib::Response &res) {
               std::string body = "{\"encoders\": [";
               if (hooks_.list_encoders) {
                 bool first = true;
                 for (const std::string &name : hooks_.list_encoders()) {
                   body += (first ? "" : ", ") + json_quote(name);
                   first = false;
                 }
               }
               body += "]}";
               res.set_content(body, kJson);
             }));

  http_->Post(
      R"(/v1/encode/([^/]+))", guarded([this, &in_flight_gauge](const httplib::Request &req, httplib::Response &res) {
        // Counted in before anything else, so begin_drain() waits for this request.
        if (!enter()) throw ServerError(Code::kNotReady, "not ready: draining, not accepting new requests");
        in_flight_gauge.add(1);
        struct Leave {
          HttpServer *self;
          metrics::Gauge &gauge;
          ~Leave() {
            gauge.add(-1);
            self->leave();
          }
        } leave_on_exit{this, in_flight_gauge};

        const auto deadline = parse_deadline_ms(req.get_header_value("X-Deadline-Ms"));
        const auto now = std::chrono::system_clock::now();
        if (deadline && *deadline <= now) {
          const auto late = std::chrono::duration_cast<std::chrono::milliseconds>(now - *deadline).count();
          throw ServerError(Code::kDeadlineExceeded,
                            "deadline exceeded: X-Deadline-Ms passed " + std::to_string(late) + " ms ago");
        }

        const std::string encoder = req.matches[1].str();
        codec::DecodeOptions options;
        options.limits = settings_.codec_limits;
        codec::DecodedFrame frame;
        try {
          // Validated before the encoder lookup: a malformed frame is the client's first
          // problem whatever it was sent to.
          frame = codec::decode(reinterpret_cast<const uint8_t *>(req.body.data()), req.body.size(), options);
        } catch (const codec::CodecError &e) {
          throw from_codec_error(e);
        }
        if (!hooks_.has_encoder || !hooks_.has_encoder(encoder)) {
          throw ServerError(Code::kNotFound, "unknown encoder '" + encoder + "'");
        }
        if (!hooks_.encode) {
          throw ServerError(Code::kNotReady, "not ready: encoder '" + encoder + "' has no executor in this build");
        }
        // req.body outlives this call, and the frame's tensors point into it.
        res.set_content(hooks_.encode(encoder, frame, deadline), "application/x-jit-embedding-frame");
      }));
}

int HttpServer::start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_) throw std::logic_error("HttpServer::start() after stop()");
    if (listener_.joinable()) throw std::logic_error("HttpServer::start() called twice");
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
  // httplib asserts on a second stop() of a running server; stopped_ makes ours idempotent.
  if (listener_.joinable()) http_->stop();
}

void HttpServer::wait() {
  if (listener_.joinable()) listener_.join();
}

} // namespace jit::server
