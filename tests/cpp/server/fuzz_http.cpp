// libFuzzer target: the server's request handling, from raw HTTP bytes to the raw response.
//
// Each input is one HTTP/1.1 request (request line, headers, body), run through
// HttpServer::handle_raw() of one App built once: httplib's real parsing (request lines, headers,
// chunked bodies, Content-Length mismatches, Expect: 100-continue, Range, Accept-Encoding), then
// our routes, limits, authentication and errors, then the engine and the memory cache, with three
// encoders of two kinds (server/counting_executors.h: float rows, and tokens with length buckets).
// No socket is opened. Beyond "no crash, no sanitizer report", every response must satisfy
// check_response(); a violation traps so that libFuzzer keeps the input:
//   - it is HTTP/1.1: a status line, headers, and exactly Content-Length bytes of body (gzip or
//     brotli when the request accepts it: httplib compresses JSON and text);
//   - no 500 and no 5xx other than 504 (a deadline that passed): a 500 is a bug of ours; no
//     2xx but 200 and the drain's 202 (a 206 would be a Range honoured: the server ignores it);
//   - an error (4xx/5xx) answers JSON {"error": str, "code": str} whose code maps to that
//     status (server/errors.h), and a 401 names the Bearer scheme;
//   - a 2xx JSON body is valid JSON, and a 200 to POST /v1/encode/... or /v1/cache/lookup is a
//     frame that decodes;
//   - without a token nothing but /health/live answers 2xx, and without the admin token no admin
//     route (load, unload, drain, cache prune) does, nor does what the engine serves change.
//
// State the fixture keeps stable across inputs, so that each input meets the same server:
//   - POST /v1/admin/drain answers 202 but its hook does nothing (the binary wakes its signal
//     loop there); a real drain would turn every later input into a 503.
//   - A load or unload that succeeded, or any other change to what the engine serves, is undone
//     after its input: the configured encoders are loaded again and new names unloaded, so a load
//     that sets max_queue_delay_us to an hour, or an unload, cannot stall or empty the server for
//     the inputs after it.
//   - Loads may add only the names in kExtraNames (see bounded_names()).
//   - The fixture holds the process-wide trace capture, so GET /v1/trace answers 409 after its
//     parameter checks: handle_raw() is synchronous, and a capture would hold an input for up to
//     duration_ms (60 s). Holding it also runs every trace span of the request path.
// Run: make fuzz (scripts/run_fuzz.sh, with fuzz_http.dict); ctest replays fuzz_http_corpus/.
#include <brotli/decode.h>
#include <unistd.h>
#include <zlib.h>

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "codec/codec.h"
#include "common/trace.h"
#include "counting_executors.h"
#include "server/app.h"
#include "server/errors.h"

namespace {

using namespace jit;
using namespace jit::server;
using namespace std::chrono_literals;

// Known to the dictionary (fuzz_http.dict) and the seed corpus (make_fuzz_http_corpus.py).
constexpr std::string_view kUserToken = "fuzz-user-token-0123456789abcdef";
constexpr std::string_view kAdminToken = "fuzz-admin-token-0123456789abcdef";
constexpr std::string_view kFrameType = "application/x-jit-embedding-frame";
// Events the held trace capture keeps; the rest are counted as dropped (common/trace.h).
constexpr size_t kTraceEvents = 4096;
constexpr size_t kMaxJsonDepth = 64;
constexpr size_t kMaxDecodedBytes = size_t{64} << 20; // a compressed answer, decoded

void violated() {
  __builtin_trap();
}

void require(bool ok) {
  if (!ok) violated();
}

// ---- The App every input meets ----

EncoderEntry counting_entry(const std::string &name, const std::string &options_json) {
  EncoderEntry e;
  e.name = name;
  e.factory = "tests:counting";
  e.options_json = options_json;
  e.engine.batching.max_batch_size = 8;
  e.engine.batching.max_queue_delay = 0us; // one request at a time: nothing to wait for
  e.engine.batching.max_queue_size = 64;
  return e;
}

ServerConfig fuzz_config(const std::string &artifact_root) {
  ServerConfig c;
  c.server.auth.token = std::string(kUserToken);
  c.server.auth.admin_token = std::string(kAdminToken);
  c.server.threads = 1; // no listener runs; handle_raw() uses the calling thread
  c.server.max_body_bytes = size_t{1} << 20;
  c.server.retain_body_bytes = size_t{1} << 20;
  // Small codec limits keep each input cheap; every check still runs.
  codec::CodecLimits &l = c.server.codec_limits;
  l.max_frame_bytes = size_t{1} << 20;
  l.max_envelope_bytes = 64 << 10;
  l.max_entries = 64;
  l.max_tensor_bytes = size_t{1} << 20;
  l.max_decompressed_bytes = size_t{4} << 20;
  l.max_array_length = 4096;
  l.max_chunks = 1024;
  c.artifact_root = artifact_root;
  c.encoders = {counting_entry("affine", R"({"scale": 2.0})"), counting_entry("tokens", R"({"kind": "tokens"})"),
                counting_entry("nocache", R"({"scale": 0.5})")};
  c.encoders[1].engine.length_buckets = {4, 8, 16};
  c.encoders[2].cache = false;
  c.cache.enabled = true; // the memory tier only: no RocksDB or Redis in the fuzzer
  c.cache.settings.memory_max_bytes = size_t{4} << 20;
  c.cache.settings.memory_shards = 2;
  c.cache.pending_bytes = size_t{16} << 20;
  c.cache.max_lookup_keys = 64;
  return c;
}

// Names a load may add beside the configured ones; loads of any other name fail in the factory
// (422). A name once served keeps its metric series for good, so unbounded new names would grow
// every later GET /metrics answer, and the compression of it, for the rest of the run.
constexpr std::string_view kExtraNames[] = {"extra", "x"};

ExecutorFactory bounded_names(ExecutorFactory inner) {
  return [inner = std::move(inner)](const EncoderEntry &e) -> std::shared_ptr<executor::Executor> {
    bool known = e.name == "affine" || e.name == "tokens" || e.name == "nocache";
    for (std::string_view extra : kExtraNames)
      known = known || e.name == extra;
    if (!known) throw executor::ExecutorError("the fuzz target serves no encoder named '" + e.name + "'");
    return inner(e);
  };
}

class Fixture {
public:
  Fixture() {
    // The tracer's state and thread names are function-local statics, made on first use. Made
    // here, before the App, they are destroyed after this Fixture (a static too) at exit; made
    // later by an executor thread, they would be destroyed first and ~App would use them.
    trace::name_thread("fuzz");
    if (!trace::start(kTraceEvents)) std::abort();
    // An artifact root with one folder, so that load requests naming artifacts reach the path
    // checks (resolve_artifact_in_root) rather than "loading by path is disabled".
    std::string tmpl = (std::filesystem::temp_directory_path() / "jit-fuzz-http-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    dir_ = tmpl;
    std::filesystem::create_directories(dir_ / "models" / "a");
    config_ = fuzz_config((dir_ / "models").string());
    app_ = std::make_unique<App>(config_, bounded_names(testing_util::counting_factory(&counts_)));
    app_->on_drain_request([] {}); // see the file comment
    for (const EncoderEntry &e : config_.encoders)
      app_->load(e.name, e);
    app_->http().set_ready(true);
    configured_state_ = state();
  }
  ~Fixture() {
    app_.reset();
    trace::stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  HttpServer &http() { return app_->http(); }

  // What the engine serves: each encoder's name, version and settings. Restored to
  // configured_state() after any input that changed it.
  std::string state() const {
    std::string out;
    for (const engine::EncoderInfo &i : app_->engine().encoders()) {
      const engine::BatchingConfig &b = i.config.batching;
      out += i.name + " " + i.version + " " + std::to_string(b.max_batch_size) + " " +
             std::to_string(b.max_queue_delay.count()) + " " + std::to_string(b.max_queue_size) + " " +
             std::to_string(i.config.instances) + " [";
      for (int64_t n : i.config.length_buckets)
        out += std::to_string(n) + " ";
      out += "]\n";
    }
    return out;
  }
  const std::string &configured_state() const { return configured_state_; }

  // Serves exactly the configured encoders again, as configured (after a load or an unload).
  void restore() {
    for (const engine::EncoderInfo &info : app_->engine().encoders()) {
      bool configured = false;
      for (const EncoderEntry &e : config_.encoders)
        configured = configured || e.name == info.name;
      if (!configured) app_->unload(info.name);
    }
    for (const EncoderEntry &e : config_.encoders)
      app_->load(e.name, e);
  }

private:
  std::filesystem::path dir_;
  ServerConfig config_;
  testing_util::Counts counts_;
  std::unique_ptr<App> app_;
  std::string configured_state_;
};

// ---- A strict JSON checker (RFC 8259), noting the top-level object's string members ----

class Json {
public:
  explicit Json(std::string_view text) : s_(text) {}

  // True when the text is exactly one JSON value (surrounded by whitespace at most).
  bool valid() {
    ws();
    if (!value(0)) return false;
    ws();
    return i_ == s_.size();
  }
  // The top-level object's members whose values are strings without escapes.
  const std::vector<std::pair<std::string, std::string>> &strings() const { return strings_; }

private:
  void ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r'))
      ++i_;
  }
  bool eat(char c) {
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }
  bool digits() {
    const size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9')
      ++i_;
    return i_ > start;
  }
  bool number() {
    eat('-');
    if (eat('0')) {
    } else if (!digits()) {
      return false;
    }
    if (eat('.') && !digits()) return false;
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (!eat('+')) eat('-');
      if (!digits()) return false;
    }
    return true;
  }
  // A string; its raw contents (escapes left as they are) into *out when given.
  bool string(std::string *out) {
    if (!eat('"')) return false;
    const size_t start = i_;
    while (i_ < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        if (out) *out = std::string(s_.substr(start, i_ - start));
        ++i_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        ++i_;
        if (i_ >= s_.size()) return false;
        const char e = s_[i_++];
        if (e == 'u') {
          for (int k = 0; k < 4; ++k, ++i_)
            if (i_ >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) return false;
        } else if (std::string_view("\"\\/bfnrt").find(e) == std::string_view::npos) {
          return false;
        }
        continue;
      }
      const size_t n = utf8_length(i_);
      if (n == 0) return false;
      i_ += n;
    }
    return false;
  }
  // The length of the well-formed UTF-8 sequence at s_[at], or 0 (RFC 3629: no overlong forms,
  // surrogates or code points past U+10FFFF).
  size_t utf8_length(size_t at) const {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s_[at + k]); };
    const unsigned char b0 = b(0);
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 < 0x80) return 1;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      n = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      n = 3;
      if (b0 == 0xE0) lo = 0xA0;
      if (b0 == 0xED) hi = 0x9F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      n = 4;
      if (b0 == 0xF0) lo = 0x90;
      if (b0 == 0xF4) hi = 0x8F;
    } else {
      return 0;
    }
    if (at + n > s_.size() || b(1) < lo || b(1) > hi) return 0;
    for (size_t k = 2; k < n; ++k)
      if (b(k) < 0x80 || b(k) > 0xBF) return 0;
    return n;
  }
  bool value(size_t depth) {
    if (depth > kMaxJsonDepth || i_ >= s_.size()) return false;
    const char c = s_[i_];
    if (c == '{') return object(depth);
    if (c == '[') return array(depth);
    if (c == '"') return string(nullptr);
    if (c == 't') return literal("true");
    if (c == 'f') return literal("false");
    if (c == 'n') return literal("null");
    return number();
  }
  bool array(size_t depth) {
    eat('[');
    ws();
    if (eat(']')) return true;
    do {
      ws();
      if (!value(depth + 1)) return false;
      ws();
    } while (eat(','));
    return eat(']');
  }
  bool object(size_t depth) {
    eat('{');
    ws();
    if (eat('}')) return true;
    do {
      ws();
      std::string key;
      if (!string(&key)) return false;
      ws();
      if (!eat(':')) return false;
      ws();
      if (depth == 0 && i_ < s_.size() && s_[i_] == '"') {
        std::string v;
        if (!string(&v)) return false;
        strings_.emplace_back(key, v);
      } else if (!value(depth + 1)) {
        return false;
      }
      ws();
    } while (eat(','));
    return eat('}');
  }

  std::string_view s_;
  size_t i_ = 0;
  std::vector<std::pair<std::string, std::string>> strings_;
};

// ---- The response ----

struct Response {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers; // names lower-cased
  std::string body;                                         // decompressed when the answer has a Content-Encoding
  bool bodyless = false; // the answer to a HEAD: Content-Length says what GET would have sent

  const std::string *header(const std::string &lower_name) const {
    for (const auto &[k, v] : headers)
      if (k == lower_name) return &v;
    return nullptr;
  }
};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char &c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// httplib compresses JSON and text answers for a client that accepts it (Accept-Encoding: gzip
// or br); the checks read what the client would after decoding. Traps on any other encoding and
// on a body that does not decode.
std::string decompress(std::string_view body, const std::string *encoding) {
  if (encoding == nullptr) return std::string(body);
  std::string out;
  if (*encoding == "gzip") {
    z_stream z{};
    require(inflateInit2(&z, 15 + 16) == Z_OK); // 15 + 16: a gzip wrapper
    z.next_in = reinterpret_cast<Bytef *>(const_cast<char *>(body.data()));
    z.avail_in = static_cast<uInt>(body.size());
    char piece[16384];
    int rc = Z_OK;
    while (rc == Z_OK && out.size() <= kMaxDecodedBytes) {
      z.next_out = reinterpret_cast<Bytef *>(piece);
      z.avail_out = sizeof piece;
      rc = inflate(&z, Z_NO_FLUSH);
      out.append(piece, sizeof piece - z.avail_out);
    }
    inflateEnd(&z);
    require(rc == Z_STREAM_END && z.avail_in == 0);
  } else if (*encoding == "br") {
    BrotliDecoderState *br = BrotliDecoderCreateInstance(nullptr, nullptr, nullptr);
    require(br != nullptr);
    size_t in_left = body.size();
    const auto *in = reinterpret_cast<const uint8_t *>(body.data());
    BrotliDecoderResult rc = BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT;
    while (rc == BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT && out.size() <= kMaxDecodedBytes) {
      uint8_t piece[16384];
      size_t out_left = sizeof piece;
      uint8_t *next = piece;
      rc = BrotliDecoderDecompressStream(br, &in_left, &in, &out_left, &next, nullptr);
      out.append(reinterpret_cast<const char *>(piece), sizeof piece - out_left);
    }
    BrotliDecoderDestroyInstance(br);
    require(rc == BROTLI_DECODER_RESULT_SUCCESS && in_left == 0);
  } else {
    violated();
  }
  return out;
}

// Parses one response off the front of `raw` (advancing it); traps on anything that is not an
// HTTP/1.1 status line, header lines and a body of exactly Content-Length bytes (none for a 1xx,
// and none or all of them for a HEAD).
Response parse_response(std::string_view &raw, bool head) {
  Response r;
  const size_t end = raw.find("\r\n\r\n");
  require(end != std::string_view::npos);
  std::string_view head_text = raw.substr(0, end + 2);
  raw.remove_prefix(end + 4);

  const size_t line_end = head_text.find("\r\n");
  const std::string_view line = head_text.substr(0, line_end);
  head_text.remove_prefix(line_end + 2);
  require(line.size() >= 13 && line.substr(0, 9) == "HTTP/1.1 " && line[12] == ' ');
  for (size_t k = 9; k < 12; ++k)
    require(line[k] >= '0' && line[k] <= '9');
  r.status = (line[9] - '0') * 100 + (line[10] - '0') * 10 + (line[11] - '0');
  require(r.status >= 100 && r.status <= 599);

  while (!head_text.empty()) {
    const size_t eol = head_text.find("\r\n");
    const std::string_view h = head_text.substr(0, eol);
    head_text.remove_prefix(eol + 2);
    const size_t colon = h.find(": ");
    require(colon != std::string_view::npos && colon > 0);
    r.headers.emplace_back(lower(h.substr(0, colon)), std::string(h.substr(colon + 2)));
  }
  if (r.status < 200) return r; // 100 Continue: the final response follows
  const std::string *length = r.header("content-length");
  size_t n = 0;
  if (length != nullptr) {
    require(!length->empty() && length->size() < 19);
    for (char c : *length)
      require(c >= '0' && c <= '9');
    n = std::strtoull(length->c_str(), nullptr, 10);
  }
  // A HEAD that httplib parsed gets the headers alone; one it refused (a malformed request line
  // that starts with "HEAD") gets the whole answer.
  r.bodyless = head && n > 0 && raw.empty();
  require(r.bodyless || raw.size() == n);
  r.body = r.bodyless ? std::string() : decompress(raw, r.header("content-encoding"));
  raw = {};
  return r;
}

// The request line's method and target as the bytes say (httplib decides what they mean).
struct RequestLine {
  std::string_view method, target;
};

// Split as httplib splits the request line: on ' ', each piece trimmed of spaces and tabs, empty
// pieces skipped (so leading blanks are ignored: "  HEAD / HTTP/1.1" is a HEAD). httplib sets the
// method from the first piece even when the line is then refused.
RequestLine request_line(std::string_view req) {
  RequestLine r;
  std::string_view line = req.substr(0, req.find_first_of("\r\n"));
  int piece = 0;
  while (!line.empty() && piece < 2) {
    const size_t sp = line.find(' ');
    std::string_view p = line.substr(0, sp);
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
    while (!p.empty() && (p.front() == ' ' || p.front() == '\t'))
      p.remove_prefix(1);
    while (!p.empty() && (p.back() == ' ' || p.back() == '\t'))
      p.remove_suffix(1);
    if (p.empty()) continue;
    (piece++ == 0 ? r.method : r.target) = p;
  }
  return r;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

void check_error_body(const Response &r) {
  const std::string *type = r.header("content-type");
  require(type != nullptr && *type == "application/json");
  if (r.status == 401) {
    const std::string *scheme = r.header("www-authenticate");
    require(scheme != nullptr && starts_with(*scheme, "Bearer"));
  }
  if (r.bodyless) return;
  Json json(r.body);
  require(json.valid());
  const std::string *error = nullptr, *code = nullptr;
  for (const auto &[k, v] : json.strings()) {
    if (k == "error") error = &v;
    if (k == "code") code = &v;
  }
  require(error != nullptr && !error->empty() && code != nullptr);
  bool known = false;
  for (size_t c = 0; c < kServerErrorCodes; ++c) {
    const ServerError e(static_cast<ServerError::Code>(c), "");
    known = known || (*code == code_name(e.code()) && http_status(e) == r.status);
  }
  require(known);
}

void check_success(const Response &r, const RequestLine &line) {
  const std::string *type = r.header("content-type");
  const bool frame_route = line.method == "POST" &&
                           (starts_with(line.target, "/v1/encode/") || starts_with(line.target, "/v1/cache/lookup"));
  if (frame_route && r.status == 200) require(type != nullptr && *type == kFrameType);
  if (r.bodyless || type == nullptr) return;
  if (*type == "application/json") require(Json(r.body).valid());
  if (*type == kFrameType) {
    const auto *p = reinterpret_cast<const uint8_t *>(r.body.data());
    try {
      codec::decode(p, r.body.size());
    } catch (const codec::CodecError &) {
      violated();
    }
  }
}

// Whether a 2xx answer came from a route that needs the admin token: the load and unload
// answers, a prune's count, the drain's 202.
bool admin_answer(const Response &r) {
  return r.status == 202 || starts_with(r.body, "{\"encoder\": ") || starts_with(r.body, "{\"entries\": ");
}

// Checks every invariant of the file comment for one request and its raw response.
// `state_changed`: whether the encoders served (names, versions, settings) differ after the
// request. Returns whether it was a load or unload that succeeded: one may also have changed
// what state() does not show (an entry's `cache` setting), so the fixture restores after it.
bool check_response(std::string_view request, std::string_view raw, bool state_changed) {
  const bool user = request.find(kUserToken) != std::string_view::npos;
  const bool admin = request.find(kAdminToken) != std::string_view::npos;
  if (!admin) require(!state_changed);
  if (request.empty()) return false; // nothing to answer: a closed connection
  require(!raw.empty());
  const RequestLine line = request_line(request);
  Response r;
  do {
    // httplib omits the body for a request whose method it read as HEAD, even when the rest of
    // the request line was malformed ("HEAD\r\n" answers a bodyless 400).
    r = parse_response(raw, line.method == "HEAD");
  } while (r.status < 200 && !raw.empty());
  require(r.status >= 200);

  if (r.status >= 500) require(r.status == 504);
  if (r.status >= 400) {
    check_error_body(r);
    return false;
  }
  require(r.status == 200 || r.status == 202); // never a 206: the server ignores Range
  check_success(r, line);

  // The token may sit anywhere in the bytes (a header the fuzzer mangled still counts): only
  // requests holding none of it at all must fail. /health/live answers 18 bytes, or, compressed
  // (Accept-Encoding), what the encoder made of them; a HEAD's Content-Length says that size too.
  if (!user && !admin) {
    const std::string *length = r.header("content-length");
    if (!r.bodyless) {
      require(r.body == "{\"status\": \"live\"}");
    } else if (r.header("content-encoding") == nullptr) {
      require(*length == "18");
    }
  }
  if (!admin) require(!admin_answer(r));
  return r.status == 200 && starts_with(r.body, "{\"encoder\": ");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static Fixture fixture;
  const std::string request(reinterpret_cast<const char *>(data), size);
  const std::string response = fixture.http().handle_raw(request);
  // For reading what an input does (a crash's reproducer, say): JIT_FUZZ_HTTP_PRINT=1.
  static const bool print = std::getenv("JIT_FUZZ_HTTP_PRINT") != nullptr;
  if (print) std::fprintf(stderr, "---- request\n%s\n---- response\n%s\n", request.c_str(), response.c_str());
  const bool changed = fixture.state() != fixture.configured_state();
  if (check_response(request, response, changed) || changed) fixture.restore();
  return 0;
}
