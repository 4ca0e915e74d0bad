// jit-loadgen: a small HTTP load generator for jit-embedding-server, and two baselines for it.
//
// Modes (each prints one JSON object on stdout; diagnostics go to stderr):
//
//   closed loop (default)
//     jit-loadgen --url http://127.0.0.1:PORT/v1/encode/NAME [--body FILE] --concurrency N
//                 --duration S [--warmup S] [--header K:V]... [--method GET|POST] [--timeout S]
//     N threads, each with its own keep-alive connection (TCP_NODELAY), send the same request back to
//     back: POST with FILE as an application/octet-stream body, or GET without --body. Requests
//     that complete inside the measured window (after the warm-up, for --duration seconds) are
//     counted, so req_per_s = completions / window. Latency is per request, from before the
//     request is written to after the whole response is read; errors are counted by status
//     ("404") or by transport failure ("transport:Connection").
//
//   --raw-tcp --bytes N --repeat R
//     The floor for moving a large body over loopback: an in-process TCP server on 127.0.0.1
//     recv()s N bytes into one reused buffer and answers 1 byte; the client send()s N bytes from
//     one buffer, R times (after one untimed round). Prints GB/s (1e9 bytes/s of payload).
//
//   --http-upload (--url URL | --sink) (--bytes N | --body FILE) --repeat R
//     The same bytes POSTed R times (after one untimed request) on one keep-alive connection,
//     from a buffer the client never copies. Prints GB/s of body bytes and the statuses seen, so
//     a server's large-body path can be compared with --raw-tcp on the same machine. --sink posts
//     to an in-process minimal HTTP server instead (headers parsed, body received into a reused
//     buffer, 200 with no body): the ceiling of this client, so that a gap between --raw-tcp and a
//     real server can be told apart from one in the client.
//
// Limits: http:// only (no TLS); IPv4 or host names; one request in flight per connection (no
// pipelining); the threads open their connections one after another (see run_closed_loop), so
// --warmup should cover that ramp. Bytes sent/received count bodies only, not HTTP headers.
// cpp-httplib's client has no per-connection request limit, so connections live until the server
// closes them (its keep_alive_max_count); "connections" reports how many were opened.
#include "bench_json.h"

#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

constexpr const char *kContentType = "application/octet-stream";

struct Options {
  std::string mode = "closed-loop";
  std::string url;
  std::string body_file;
  std::string method; // empty: POST with a body, GET without
  std::vector<std::pair<std::string, std::string>> headers;
  int concurrency = 1;
  double duration_s = 5.0;
  double warmup_s = 1.0;
  double timeout_s = 60.0;
  size_t bytes = 0;
  size_t repeat = 8;
  bool sink = false; // --http-upload to an in-process minimal HTTP server
};

struct Url {
  std::string host;
  int port = 80;
  std::string path = "/";
};

[[noreturn]] void die(const std::string &msg) {
  std::fprintf(stderr, "jit-loadgen: %s\n", msg.c_str());
  std::exit(2);
}

void print_help() {
  std::printf(
      "usage:\n"
      "  jit-loadgen --url URL [--body FILE] [--concurrency N] [--duration S] [--warmup S]\n"
      "              [--header K:V]... [--method GET|POST] [--timeout S]\n"
      "  jit-loadgen --raw-tcp --bytes N [--repeat R]\n"
      "  jit-loadgen --http-upload (--url URL | --sink) (--bytes N | --body FILE) [--repeat R] [--header K:V]...\n"
      "\n"
      "Closed-loop load (default): N threads, one keep-alive connection each, send the same request\n"
      "back to back for --duration seconds after --warmup seconds, and print one JSON object with\n"
      "requests, errors by status, req_per_s, latency percentiles (ms) and body bytes.\n"
      "--raw-tcp: GB/s of N bytes sent R times over a loopback TCP socket (in-process server).\n"
      "--http-upload: GB/s of the same N bytes POSTed R times to URL on one connection (--sink: to an\n"
      "in-process minimal HTTP server, the client's own ceiling).\n");
}

Url parse_url(const std::string &url) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) die("--url must start with http:// (got '" + url + "')");
  Url u;
  const std::string rest = url.substr(scheme.size());
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  u.path = slash == std::string::npos ? "/" : rest.substr(slash);
  const size_t colon = authority.rfind(':');
  u.host = authority.substr(0, colon);
  if (colon != std::string::npos) {
    char *end = nullptr;
    const long port = std::strtol(authority.c_str() + colon + 1, &end, 10);
    if (*end != '\0' || port <= 0 || port > 65535) die("bad port in --url '" + url + "'");
    u.port = static_cast<int>(port);
  }
  if (u.host.empty()) die("no host in --url '" + url + "'");
  return u;
}

double parse_double(const char *flag, const char *text, double min) {
  char *end = nullptr;
  const double v = std::strtod(text, &end);
  if (*text == '\0' || *end != '\0' || !(v >= min))
    die(std::string(flag) + " needs a number >= " + std::to_string(min));
  return v;
}

size_t parse_size(const char *flag, const char *text, size_t min) {
  char *end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  if (*text == '\0' || *text == '-' || *end != '\0' || errno != 0 || v < min)
    die(std::string(flag) + " needs an integer >= " + std::to_string(min));
  return static_cast<size_t>(v);
}

Options parse_args(int argc, char **argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char * {
      if (i + 1 >= argc) die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      print_help();
      std::exit(0);
    } else if (a == "--raw-tcp") {
      o.mode = "raw-tcp";
    } else if (a == "--http-upload") {
      o.mode = "http-upload";
    } else if (a == "--sink") {
      o.sink = true;
    } else if (a == "--url") {
      o.url = value();
    } else if (a == "--body") {
      o.body_file = value();
    } else if (a == "--method") {
      o.method = value();
      if (o.method != "GET" && o.method != "POST") die("--method must be GET or POST");
    } else if (a == "--header") {
      const std::string h = value();
      const size_t colon = h.find(':');
      if (colon == std::string::npos || colon == 0) die("--header needs K:V, got '" + h + "'");
      size_t v = colon + 1;
      while (v < h.size() && h[v] == ' ')
        ++v;
      o.headers.emplace_back(h.substr(0, colon), h.substr(v));
    } else if (a == "--concurrency") {
      o.concurrency = static_cast<int>(parse_size("--concurrency", value(), 1));
    } else if (a == "--duration") {
      o.duration_s = parse_double("--duration", value(), 0.001);
    } else if (a == "--warmup") {
      o.warmup_s = parse_double("--warmup", value(), 0.0);
    } else if (a == "--timeout") {
      o.timeout_s = parse_double("--timeout", value(), 0.001);
    } else if (a == "--bytes") {
      o.bytes = parse_size("--bytes", value(), 1);
    } else if (a == "--repeat") {
      o.repeat = parse_size("--repeat", value(), 1);
    } else {
      die("unknown argument '" + a + "' (see --help)");
    }
  }
  return o;
}

std::string read_file(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) die("cannot read --body " + path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

using jit::bench::Json;

// ------------------------------------------------------------------------------------------ HTTP
// One client per connection. cpp-httplib reconnects by itself after the server closes a
// keep-alive connection; the socket-options hook counts each (re)connect.
std::unique_ptr<httplib::Client> make_client(const Url &u, double timeout_s, std::atomic<uint64_t> &connections,
                                             std::function<void()> on_connect = nullptr) {
  auto cli = std::make_unique<httplib::Client>(u.host, u.port);
  const auto sec = static_cast<time_t>(timeout_s);
  const auto usec = static_cast<time_t>((timeout_s - static_cast<double>(sec)) * 1e6);
  cli->set_keep_alive(true);
  cli->set_tcp_nodelay(true);
  cli->set_connection_timeout(sec, usec);
  cli->set_read_timeout(sec, usec);
  cli->set_write_timeout(sec, usec);
  cli->set_decompress(false);
  cli->set_socket_options([&connections, on_connect](socket_t sock) {
    const int one = 1;
    setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    connections.fetch_add(1, std::memory_order_relaxed);
    if (on_connect) on_connect();
  });
  return cli;
}

// Sends one request with `body` (nullptr: GET) written straight from the caller's buffer.
httplib::Result send_one(httplib::Client &cli, const std::string &method, const Url &u, const httplib::Headers &headers,
                         const std::string *body) {
  if (method == "GET") return cli.Get(u.path, headers);
  const char *data = body ? body->data() : "";
  const size_t n = body ? body->size() : 0;
  return cli.Post(
      u.path, headers, n,
      [data](size_t offset, size_t length, httplib::DataSink &sink) {
        sink.write(data + offset, length);
        return true;
      },
      kContentType);
}

// Opens the workers' connections one after another, before the load starts. cpp-httplib 0.11.4
// servers listen() with a backlog of 5: when more connections wait to be accepted than that (N
// clients connecting at once, or an accept thread starved of CPU by a load already running),
// each dropped handshake costs a 1 s SYN retransmit, or a reset connection, which would measure a
// connection storm rather than requests. Worker t connects once worker t-1 has its first response,
// or kGap after t-1 began to connect, whichever comes first (so a slow endpoint does not make the
// ramp take N request latencies); every worker then waits for the whole ramp before going on.
class Ramp {
public:
  static constexpr auto kGap = std::chrono::milliseconds(50);

  explicit Ramp(size_t workers) : workers_(workers) {}

  // Blocks until worker t may open its connection; t == workers: until the ramp is over.
  void wait_turn(size_t t) {
    std::unique_lock<std::mutex> lock(mu_);
    while (released_ <= t) {
      if (connecting_since_ != Clock::time_point::max() && Clock::now() >= connecting_since_ + kGap) {
        ++released_; // the worker that is connecting took too long: let the next one go
        connecting_since_ = Clock::time_point::max();
        cv_.notify_all();
        continue;
      }
      if (connecting_since_ == Clock::time_point::max())
        cv_.wait(lock);
      else
        cv_.wait_until(lock, connecting_since_ + kGap);
    }
  }
  // The worker last let through is creating its socket now.
  void connecting() {
    std::lock_guard<std::mutex> lock(mu_);
    connecting_since_ = Clock::now();
    cv_.notify_all();
  }
  // Worker t's first request has finished (or failed): let the next one go.
  void first_done(size_t t) {
    std::lock_guard<std::mutex> lock(mu_);
    if (released_ == t + 1) {
      released_ = t + 2;
      connecting_since_ = Clock::time_point::max();
    }
    cv_.notify_all();
  }
  size_t workers() const { return workers_; }

private:
  const size_t workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t released_ = 1; // workers [0, released_) may connect; released_ > workers: the ramp is over
  Clock::time_point connecting_since_ = Clock::time_point::max();
};

std::string error_key(const httplib::Result &res) {
  if (!res) return "transport:" + httplib::to_string(res.error());
  return std::to_string(res->status);
}

struct WorkerStats {
  std::vector<uint32_t> latency_us; // completions inside the window, error statuses included
  std::map<std::string, uint64_t> errors;
  uint64_t ok = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
};

int run_closed_loop(const Options &o) {
  if (o.url.empty()) die("--url is required (see --help)");
  const Url u = parse_url(o.url);
  std::string body;
  if (!o.body_file.empty()) body = read_file(o.body_file);
  const std::string method = !o.method.empty() ? o.method : (o.body_file.empty() ? "GET" : "POST");
  httplib::Headers headers;
  for (const auto &[k, v] : o.headers)
    headers.emplace(k, v);

  std::atomic<uint64_t> connections{0};
  Ramp ramp(static_cast<size_t>(o.concurrency));
  std::vector<WorkerStats> stats(static_cast<size_t>(o.concurrency));
  const auto start = Clock::now();
  const auto window_begin =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.warmup_s));
  const auto window_end =
      window_begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.duration_s));

  std::vector<std::thread> threads;
  for (int t = 0; t < o.concurrency; ++t) {
    threads.emplace_back([&, t] {
      WorkerStats &s = stats[static_cast<size_t>(t)];
      s.latency_us.reserve(1 << 16);
      const size_t me = static_cast<size_t>(t);
      bool first = true;
      auto cli = make_client(u, o.timeout_s, connections, [&] {
        if (first) ramp.connecting();
      });
      const std::string *b = method == "POST" ? &body : nullptr;
      ramp.wait_turn(me);
      for (;;) {
        const auto t0 = Clock::now();
        if (t0 >= window_end) {
          if (first) ramp.first_done(me); // its turn came too late: do not hold up the others
          break;
        }
        auto res = send_one(*cli, method, u, headers, b);
        const auto t1 = Clock::now();
        if (first) {
          first = false;
          ramp.first_done(me);
          ramp.wait_turn(ramp.workers());
        }
        const bool counted = t1 >= window_begin && t1 <= window_end;
        if (!res) {
          if (counted) ++s.errors[error_key(res)];
          // A refused or reset connection fails fast: do not spin on it.
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
          continue;
        }
        if (!counted) continue;
        const auto us = std::chrono::duration_cast<std::chrono::microseconds>(t1 - t0).count();
        s.latency_us.push_back(static_cast<uint32_t>(std::min<int64_t>(us, UINT32_MAX)));
        if (res->status >= 200 && res->status < 300)
          ++s.ok;
        else
          ++s.errors[error_key(res)];
        s.bytes_sent += b ? b->size() : 0;
        s.bytes_received += res->body.size();
      }
    });
  }
  for (auto &th : threads)
    th.join();

  std::vector<uint32_t> lat;
  std::map<std::string, uint64_t> errors;
  uint64_t ok = 0, sent = 0, received = 0, error_count = 0;
  for (auto &s : stats) {
    lat.insert(lat.end(), s.latency_us.begin(), s.latency_us.end());
    for (const auto &[k, n] : s.errors) {
      errors[k] += n;
      error_count += n;
    }
    ok += s.ok;
    sent += s.bytes_sent;
    received += s.bytes_received;
  }
  std::sort(lat.begin(), lat.end());
  // Nearest-rank percentile, in milliseconds.
  auto pct = [&](double p) {
    if (lat.empty()) return 0.0;
    const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(lat.size())));
    return lat[std::min(lat.size() - 1, rank == 0 ? 0 : rank - 1)] / 1000.0;
  };
  double mean = 0;
  for (uint32_t v : lat)
    mean += v;
  mean = lat.empty() ? 0.0 : mean / static_cast<double>(lat.size()) / 1000.0;
  const uint64_t requests = ok + error_count;
  const double secs = o.duration_s;
  Json j;
  j.str("mode", "closed_loop")
      .str("url", o.url)
      .str("method", method)
      .num("concurrency", o.concurrency)
      .num("requests", static_cast<double>(requests))
      .num("ok", static_cast<double>(ok))
      .num("error_count", static_cast<double>(error_count))
      .counts("errors", errors)
      .num("seconds", secs)
      .num("req_per_s", static_cast<double>(requests) / secs)
      .num("p50_ms", pct(50))
      .num("p90_ms", pct(90))
      .num("p99_ms", pct(99))
      .num("max_ms", lat.empty() ? 0.0 : lat.back() / 1000.0)
      .num("mean_ms", mean)
      .num("bytes_sent", static_cast<double>(sent))
      .num("bytes_received", static_cast<double>(received))
      .num("mb_per_s_sent", static_cast<double>(sent) / secs / 1e6)
      .num("mb_per_s_received", static_cast<double>(received) / secs / 1e6)
      .num("mb_per_s", static_cast<double>(sent + received) / secs / 1e6)
      .num("connections", static_cast<double>(connections.load()));
  std::printf("%s\n", j.done().c_str());
  return 0;
}

// Fills a buffer with a cheap non-zero pattern and touches every page, so that page faults are
// not part of the timed loop.
std::string make_payload(size_t n) {
  std::string buf(n, '\0');
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (size_t i = 0; i < n; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(&buf[i], &x, std::min<size_t>(8, n - i));
  }
  return buf;
}

// ------------------------------------------------------------------------------------------ loopback sockets
bool send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

bool recv_all(int fd, char *p, size_t n) {
  while (n > 0) {
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

void set_nodelay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// A listening socket on 127.0.0.1 and an ephemeral port; dies when it cannot be made.
struct Listener {
  int fd = -1;
  sockaddr_in addr{};

  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 || ::listen(fd, 1) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) != 0)
      die(std::string("cannot listen on 127.0.0.1: ") + std::strerror(errno));
  }
  ~Listener() { ::close(fd); }
  int port() const { return ntohs(addr.sin_port); }
};

// The minimal HTTP/1.1 server behind --http-upload --sink: accepts one connection and, for each
// request until the client closes it, reads the headers, receives Content-Length body bytes into
// one reused buffer of `capacity` bytes (pages already touched) and answers 200 with no body.
void serve_http_sink(int lfd, size_t capacity, std::atomic<bool> &ok) {
  const int fd = ::accept(lfd, nullptr, nullptr);
  if (fd < 0) {
    ok = false;
    return;
  }
  set_nodelay(fd);
  std::string body = make_payload(capacity);
  std::string head;
  char chunk[16384];
  for (;;) {
    size_t end;
    while ((end = head.find("\r\n\r\n")) == std::string::npos) {
      const ssize_t k = ::recv(fd, chunk, sizeof chunk, 0);
      if (k <= 0) {
        if (!head.empty()) ok = false; // the connection ended inside a request
        ::close(fd);
        return;
      }
      head.append(chunk, static_cast<size_t>(k));
    }
    std::string lower = head.substr(0, end);
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    const size_t at = lower.find("\r\ncontent-length:");
    const size_t length = at == std::string::npos ? 0 : std::strtoull(lower.c_str() + at + 17, nullptr, 10);
    const size_t early = std::min(length, head.size() - end - 4); // body bytes that came with the headers
    if (length > capacity) {
      ok = false;
      break;
    }
    std::memcpy(&body[0], head.data() + end + 4, early);
    const std::string rest = head.substr(end + 4 + early);
    static const char kOk[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    if (!recv_all(fd, &body[early], length - early) || !send_all(fd, kOk, sizeof kOk - 1)) {
      ok = false;
      break;
    }
    head = rest;
  }
  ::close(fd);
}

// ------------------------------------------------------------------------------------------ HTTP upload
int run_http_upload(const Options &o) {
  if (o.url.empty() == !o.sink) die("--http-upload needs exactly one of --url URL and --sink");
  if (o.body_file.empty() == (o.bytes == 0)) die("--http-upload needs exactly one of --bytes N and --body FILE");
  const std::string body = o.body_file.empty() ? make_payload(o.bytes) : read_file(o.body_file);
  std::unique_ptr<Listener> listener;
  std::atomic<bool> sink_ok{true};
  std::thread sink;
  std::string url = o.url;
  if (o.sink) {
    listener = std::make_unique<Listener>();
    url = "http://127.0.0.1:" + std::to_string(listener->port()) + "/sink";
    sink = std::thread(serve_http_sink, listener->fd, body.size(), std::ref(sink_ok));
  }
  const Url u = parse_url(url);
  httplib::Headers headers;
  for (const auto &[k, v] : o.headers)
    headers.emplace(k, v);
  std::atomic<uint64_t> connections{0};
  auto cli = make_client(u, o.timeout_s, connections);

  std::map<std::string, uint64_t> statuses;
  uint64_t received = 0;
  std::vector<double> times;
  for (size_t r = 0; r <= o.repeat; ++r) { // round 0 is the untimed warm-up
    const auto t0 = Clock::now();
    auto res = send_one(*cli, "POST", u, headers, &body);
    const double dt = seconds_between(t0, Clock::now());
    if (r == 0) continue;
    times.push_back(dt);
    ++statuses[error_key(res)];
    if (res) received += res->body.size();
  }
  cli.reset(); // closes the connection, which ends the sink
  if (sink.joinable()) sink.join();
  if (!sink_ok) die("http-upload: the in-process HTTP sink failed");

  double total = 0;
  for (double t : times)
    total += t;
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double moved = static_cast<double>(body.size()) * static_cast<double>(o.repeat);
  Json j;
  j.str("mode", "http_upload")
      .str("url", o.sink ? "sink" : o.url)
      .num("bytes", static_cast<double>(body.size()))
      .num("repeat", static_cast<double>(o.repeat))
      .num("seconds", total)
      .num("gb_per_s", moved / total / 1e9)
      .num("best_gb_per_s", static_cast<double>(body.size()) / sorted.front() / 1e9)
      .num("median_s", sorted[sorted.size() / 2])
      .counts("statuses", statuses)
      .num("bytes_received", static_cast<double>(received))
      .num("connections", static_cast<double>(connections.load()));
  std::printf("%s\n", j.done().c_str());
  return 0;
}

// ------------------------------------------------------------------------------------------ raw TCP
int run_raw_tcp(const Options &o) {
  if (o.bytes == 0) die("--raw-tcp needs --bytes N");
  const Listener listener;
  const size_t rounds = o.repeat + 1; // round 0 is the untimed warm-up
  std::atomic<bool> server_ok{true};
  std::thread server([&] {
    const int fd = ::accept(listener.fd, nullptr, nullptr);
    if (fd < 0) {
      server_ok = false;
      return;
    }
    set_nodelay(fd);
    std::string buf = make_payload(o.bytes); // the reused receive buffer, pages already touched
    for (size_t r = 0; r < rounds && server_ok; ++r) {
      if (!recv_all(fd, buf.data(), buf.size()) || !send_all(fd, "k", 1)) server_ok = false;
    }
    ::close(fd);
  });

  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<const sockaddr *>(&listener.addr), sizeof listener.addr) != 0)
    die(std::string("raw-tcp: cannot connect: ") + std::strerror(errno));
  set_nodelay(fd);
  const std::string payload = make_payload(o.bytes);
  std::vector<double> times;
  bool ok = true;
  for (size_t r = 0; r < rounds && ok; ++r) {
    const auto t0 = Clock::now();
    char ack = 0;
    ok = send_all(fd, payload.data(), payload.size()) && recv_all(fd, &ack, 1);
    if (r > 0) times.push_back(seconds_between(t0, Clock::now()));
  }
  ::close(fd);
  server.join();
  if (!ok || !server_ok) die("raw-tcp: the loopback transfer failed");

  double total = 0;
  for (double t : times)
    total += t;
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  Json j;
  j.str("mode", "raw_tcp")
      .num("bytes", static_cast<double>(o.bytes))
      .num("repeat", static_cast<double>(o.repeat))
      .num("seconds", total)
      .num("gb_per_s", static_cast<double>(o.bytes) * static_cast<double>(o.repeat) / total / 1e9)
      .num("best_gb_per_s", static_cast<double>(o.bytes) / sorted.front() / 1e9)
      .num("median_s", sorted[sorted.size() / 2]);
  std::printf("%s\n", j.done().c_str());
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  std::signal(SIGPIPE, SIG_IGN);
  const Options o = parse_args(argc, argv);
  if (o.mode == "raw-tcp") return run_raw_tcp(o);
  if (o.mode == "http-upload") return run_http_upload(o);
  return run_closed_loop(o);
}
