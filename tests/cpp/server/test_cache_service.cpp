// The embedding cache in front of the engine (server/cache_service.h), end to end: an App on
// 127.0.0.1 spoken to over HTTP with httplib, frames built with codec::encode and msgpack meta, and
// executors that count the rows they compute, so that "served from the cache" and "recomputed" are
// observable. The RocksDB cases use a real database in a temporary directory, opened directly to
// corrupt a value; the Redis cases a real redis-server on a free port (cache_test_util.h), corrupted
// with hiredis and killed mid-run. Both skip when the build (or the machine) lacks them.
#include <gtest/gtest.h>

#include <httplib.h>
#include <msgpack.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#ifdef JIT_HAVE_ROCKSDB
#include <rocksdb/db.h>
#endif
#ifdef JIT_HAVE_REDIS
#include <hiredis/hiredis.h>
#endif

#include "../cache/cache_test_util.h"
#include "counting_executors.h"
#include "server/app.h"

namespace jit::server {
namespace {

using namespace std::chrono_literals;
using cache::CacheKey;

// Executors that count what they compute: counting_executors.h.
using namespace testing_util;
EncoderEntry entry(const std::string &name, const std::string &options_json) {
  EncoderEntry e;
  e.name = name;
  e.factory = "tests:counting";
  e.options_json = options_json;
  e.engine.batching.max_batch_size = 16;
  e.engine.batching.max_queue_delay = 500us;
  return e;
}

EncoderEntry affine_entry(float scale) {
  return entry("a", "{\"scale\": " + std::to_string(scale) + "}");
}

// A config with encoder "a" (affine, scale 2) and a memory tier only.
ServerConfig base_config() {
  ServerConfig c;
  c.server.threads = 16;
  c.encoders = {affine_entry(2.0f)};
  c.cache.settings.memory_max_bytes = 64ull << 20;
  c.cache.settings.memory_shards = 4;
  c.cache.max_lookup_keys = 8;
  return c;
}

// ---- Requests ----

constexpr int64_t kCols = 4;

// A row of the affine encoder, determined by its seed: x[c] = seed + 0.5 * c.
float row_value(int seed, int64_t c) {
  return static_cast<float>(seed) + 0.5f * static_cast<float>(c);
}

Tensor affine_rows(const std::vector<int> &seeds) {
  Tensor t = make_tensor("x", DType::kFloat32, {static_cast<int64_t>(seeds.size()), kCols});
  auto *p = static_cast<float *>(const_cast<void *>(t.data));
  for (size_t r = 0; r < seeds.size(); ++r)
    for (int64_t c = 0; c < kCols; ++c)
      p[r * kCols + c] = row_value(seeds[r], c);
  return t;
}

// The content digest a client computes for an affine row (no params): its own tensor, without
// the batch dimension.
CacheKey affine_digest(int seed) {
  std::vector<float> x(kCols);
  for (int64_t c = 0; c < kCols; ++c)
    x[c] = row_value(seed, c);
  TensorView v{"x", DType::kFloat32, {kCols}, x.data(), x.size() * sizeof(float)};
  return CacheKey::content_of_inputs("", {v});
}

// Request meta as msgpack: a map built field by field.
class Meta {
public:
  using Packer = msgpack::packer<msgpack::sbuffer>;
  Meta &str(const std::string &key, const std::string &v) {
    return add(key, [v](Packer &p) { p.pack(v); });
  }
  Meta &strs(const std::string &key, const std::vector<std::string> &v) {
    return add(key, [v](Packer &p) { p.pack(v); });
  }
  Meta &ints(const std::string &key, const std::vector<int64_t> &v) {
    return add(key, [v](Packer &p) { p.pack(v); });
  }
  Meta &bins(const std::string &key, const std::vector<std::string> &v) {
    return add(key, [v](Packer &p) {
      p.pack_array(static_cast<uint32_t>(v.size()));
      for (const std::string &b : v) {
        p.pack_bin(static_cast<uint32_t>(b.size()));
        p.pack_bin_body(b.data(), static_cast<uint32_t>(b.size()));
      }
    });
  }
  std::string packed() const {
    msgpack::sbuffer sb;
    Packer pk(sb);
    pk.pack_map(static_cast<uint32_t>(fields_.size()));
    for (const auto &[key, fn] : fields_) {
      pk.pack(key);
      fn(pk);
    }
    return std::string(sb.data(), sb.size());
  }

private:
  Meta &add(const std::string &key, std::function<void(Packer &)> fn) {
    fields_.emplace_back(key, std::move(fn));
    return *this;
  }
  std::vector<std::pair<std::string, std::function<void(Packer &)>>> fields_;
};

std::string frame_of(const std::vector<Tensor> &inputs, const std::string &meta = "") {
  std::vector<TensorView> views;
  for (const Tensor &t : inputs)
    views.push_back(t.view());
  return codec::encode(views, meta, {});
}

// The 16 bytes of a digest as a client sends it in msgpack bin: both halves big-endian, high first.
std::string digest_bytes(const CacheKey &k) {
  std::string out(16, '\0');
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<char>(k.high() >> (56 - 8 * i));
    out[8 + i] = static_cast<char>(k.low() >> (56 - 8 * i));
  }
  return out;
}

httplib::Client client(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(5s);
  c.set_read_timeout(30s);
  c.set_write_timeout(30s);
  return c;
}

// One HTTP answer; a frame body is decoded (its tensors alias `body`, which the answer keeps).
struct Answer {
  int status = -1;
  std::shared_ptr<std::string> body = std::make_shared<std::string>();
  codec::DecodedFrame frame;
  std::map<std::string, msgpack::object> meta;
  std::shared_ptr<msgpack::object_handle> meta_handle;

  const codec::DecodedTensor *tensor(const std::string &name) const {
    for (const auto &t : frame.tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  bool has_meta(const std::string &key) const { return meta.count(key) > 0; }
  std::vector<int64_t> cache_hits() const {
    auto it = meta.find("cache_hits");
    return it == meta.end() ? std::vector<int64_t>{-1} : it->second.as<std::vector<int64_t>>();
  }
  std::string version() const { return meta.count("version") ? meta.at("version").as<std::string>() : ""; }
  YAML::Node json() const { return YAML::Load(*body); }
};

Answer post(int port, const std::string &path, const std::string &body,
            const std::string &type = "application/octet-stream") {
  Answer a;
  auto res = client(port).Post(path.c_str(), body, type.c_str());
  if (!res) return a;
  a.status = res->status;
  *a.body = std::move(res->body);
  if (a.status == 200 && res->get_header_value("Content-Type") != "application/json") {
    a.frame = codec::decode(reinterpret_cast<const uint8_t *>(a.body->data()), a.body->size());
    a.meta_handle = std::make_shared<msgpack::object_handle>(
        msgpack::unpack(a.frame.meta_msgpack.data(), a.frame.meta_msgpack.size()));
    a.meta = a.meta_handle->get().as<std::map<std::string, msgpack::object>>();
  }
  return a;
}

Answer encode(int port, const std::vector<Tensor> &inputs, const std::string &meta = "",
              const std::string &encoder = "a") {
  return post(port, "/v1/encode/" + encoder, frame_of(inputs, meta));
}

Answer lookup(int port, const std::string &meta) {
  return post(port, "/v1/cache/lookup", codec::encode({}, meta, {}));
}

std::vector<float> floats(const codec::DecodedTensor &t) {
  std::vector<float> out(t.nbytes / sizeof(float));
  std::memcpy(out.data(), t.data, out.size() * sizeof(float));
  return out;
}

// Checks an affine answer against rows `seeds` computed at `scale`, row by row, in order.
void expect_affine(const Answer &a, const std::vector<int> &seeds, float scale) {
  ASSERT_EQ(a.status, 200) << *a.body;
  const codec::DecodedTensor *y = a.tensor("y"), *norm = a.tensor("norm");
  ASSERT_TRUE(y && norm);
  const int64_t n = static_cast<int64_t>(seeds.size());
  ASSERT_EQ(y->shape, (Shape{n, kCols}));
  ASSERT_EQ(norm->shape, (Shape{n}));
  const std::vector<float> yv = floats(*y), nv = floats(*norm);
  for (int64_t r = 0; r < n; ++r) {
    float want_norm = 0;
    for (int64_t c = 0; c < kCols; ++c) {
      const float v = row_value(seeds[r], c);
      EXPECT_EQ(yv[r * kCols + c], v * scale + 1.0f) << "row " << r << " (seed " << seeds[r] << "), column " << c;
      want_norm += v * v;
    }
    EXPECT_EQ(nv[r], want_norm) << "row " << r << " (seed " << seeds[r] << ")";
  }
}

// Tensors of two answers hold the same names, shapes and bytes.
void expect_same_outputs(const Answer &a, const Answer &b) {
  ASSERT_EQ(a.frame.tensors.size(), b.frame.tensors.size());
  for (size_t i = 0; i < a.frame.tensors.size(); ++i) {
    const auto &x = a.frame.tensors[i], &y = b.frame.tensors[i];
    EXPECT_EQ(x.name, y.name);
    EXPECT_EQ(x.shape, y.shape);
    ASSERT_EQ(x.nbytes, y.nbytes);
    EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << "output " << x.name << " differs";
  }
}

std::string metrics_text(int port) {
  auto res = client(port).Get("/metrics");
  return res ? res->body : "";
}

YAML::Node stats(int port) {
  auto res = client(port).Get("/v1/cache/stats");
  if (!res || res->status != 200) return YAML::Node();
  return YAML::Load(res->body);
}

YAML::Node tier_stats(int port, const std::string &tier) {
  for (const auto &t : stats(port)["tiers"])
    if (t["tier"].as<std::string>() == tier) return t;
  return YAML::Node();
}

// ---- 1. Hits, misses, bypass, refresh ----

TEST(CacheService, RepeatedRowsAreServedFromTheCacheAndOnlyNewRowsAreComputed) {
  Counts counts;
  App app(base_config(), counting_factory(&counts));
  const int port = app.start();
  const std::string version = "affine scale=" + std::to_string(2.0f);

  const Answer first = encode(port, {affine_rows({1, 2, 3})});
  expect_affine(first, {1, 2, 3}, 2.0f);
  EXPECT_EQ(first.cache_hits(), std::vector<int64_t>{});
  EXPECT_EQ(first.version(), version);
  EXPECT_EQ(counts.rows.load(), 3u);
  app.cache()->flush();

  // The same request again: every row from the cache, byte-equal, nothing computed.
  const size_t calls = counts.calls.load();
  const Answer second = encode(port, {affine_rows({1, 2, 3})});
  expect_affine(second, {1, 2, 3}, 2.0f);
  EXPECT_EQ(second.cache_hits(), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(second.version(), version);
  expect_same_outputs(first, second);
  EXPECT_EQ(counts.rows.load(), 3u);
  EXPECT_EQ(counts.calls.load(), calls);

  // Cached and new rows mixed: only the new ones are computed, answers in the request's row order.
  const Answer mixed = encode(port, {affine_rows({4, 2, 5, 1})});
  expect_affine(mixed, {4, 2, 5, 1}, 2.0f);
  EXPECT_EQ(mixed.cache_hits(), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(counts.rows.load(), 5u);
  app.cache()->flush();

  // bypass: computed even when cached, and nothing stored.
  const Answer bypass_cached = encode(port, {affine_rows({1})}, Meta().str("cache", "bypass").packed());
  expect_affine(bypass_cached, {1}, 2.0f);
  EXPECT_FALSE(bypass_cached.has_meta("cache_hits"));
  EXPECT_EQ(counts.rows.load(), 6u);
  const Answer bypass_new = encode(port, {affine_rows({6})}, Meta().str("cache", "bypass").packed());
  expect_affine(bypass_new, {6}, 2.0f);
  EXPECT_EQ(counts.rows.load(), 7u);
  app.cache()->flush();
  const Answer after_bypass = encode(port, {affine_rows({6})});
  expect_affine(after_bypass, {6}, 2.0f);
  EXPECT_EQ(after_bypass.cache_hits(), std::vector<int64_t>{}) << "a bypassed row was stored";
  EXPECT_EQ(counts.rows.load(), 8u);

  // refresh: a wrong value planted under row 7's key (the key a client derives from the documented
  // digest) is served by "use", recomputed by "refresh", and overwritten for later requests.
  encode(port, {affine_rows({7})});
  app.cache()->flush();
  const CacheKey key7 = CacheKey::bind("a", version, affine_digest(7));
  std::vector<float> bad_y(kCols, -1.0f);
  float bad_norm = -2.0f;
  app.cache()->tiers().put(
      key7, cache::Entry::make(key7, "a", version,
                               {TensorView{"y", DType::kFloat32, {kCols}, bad_y.data(), bad_y.size() * sizeof(float)},
                                TensorView{"norm", DType::kFloat32, {}, &bad_norm, 4}}));
  const size_t rows_before = counts.rows.load();
  const Answer planted = encode(port, {affine_rows({7})});
  ASSERT_EQ(planted.status, 200);
  EXPECT_EQ(planted.cache_hits(), std::vector<int64_t>{0});
  EXPECT_EQ(floats(*planted.tensor("y")), bad_y) << "the planted entry was not what the cache served";
  EXPECT_EQ(counts.rows.load(), rows_before);

  const Answer refreshed = encode(port, {affine_rows({7})}, Meta().str("cache", "refresh").packed());
  expect_affine(refreshed, {7}, 2.0f);
  EXPECT_EQ(refreshed.cache_hits(), std::vector<int64_t>{});
  EXPECT_EQ(counts.rows.load(), rows_before + 1);
  app.cache()->flush();
  const Answer after_refresh = encode(port, {affine_rows({7})});
  expect_affine(after_refresh, {7}, 2.0f);
  EXPECT_EQ(after_refresh.cache_hits(), std::vector<int64_t>{0}) << "refresh did not store its result";
  EXPECT_EQ(counts.rows.load(), rows_before + 1);

  // An encoder whose entry says `cache: false` is never cached.
  EncoderEntry uncached = affine_entry(3.0f);
  uncached.cache = false;
  app.load("u", uncached);
  for (int i = 0; i < 2; ++i) {
    const size_t before = counts.rows.load();
    const Answer u = encode(port, {affine_rows({1, 2})}, "", "u");
    expect_affine(u, {1, 2}, 3.0f);
    EXPECT_FALSE(u.has_meta("cache_hits"));
    EXPECT_EQ(counts.rows.load(), before + 2);
    app.cache()->flush();
  }

  // Malformed cache meta on an encode: 400 naming the key; more rows than max_batch_size: 413.
  const struct {
    std::string meta;
    std::string says;
  } bad_meta[] = {
      {Meta().str("cache", "sometimes").packed(), "meta.cache must be \"use\", \"refresh\" or \"bypass\""},
      {Meta().strs("keys", {"k"}).packed(), "meta.keys must have one element per row (2), got 1"},
      {Meta().strs("keys", {"k", ""}).packed(), "meta.keys[1] is empty"},
      {Meta().ints("lengths", {2, 2}).packed(), "meta.lengths given, but encoder 'a' has no sequence input"},
  };
  for (const auto &c : bad_meta) {
    const size_t before = counts.rows.load();
    const Answer refused = encode(port, {affine_rows({1, 2})}, c.meta);
    EXPECT_EQ(refused.status, 400) << *refused.body;
    EXPECT_NE(refused.json()["error"].as<std::string>("").find(c.says), std::string::npos)
        << "wanted '" << c.says << "' in " << *refused.body;
    EXPECT_EQ(counts.rows.load(), before);
  }
  const Answer too_many = encode(port, {affine_rows(std::vector<int>(17, 1))});
  EXPECT_EQ(too_many.status, 413) << *too_many.body;
  EXPECT_NE(too_many.body->find("more than encoder 'a' takes at once (max_batch_size 16)"), std::string::npos)
      << *too_many.body;

  // The per-encoder row counters: "use" lookups only (bypass and refresh do not read).
  const YAML::Node enc = stats(port)["encoders"][0];
  EXPECT_EQ(enc["name"].as<std::string>(), "a");
  EXPECT_EQ(enc["version"].as<std::string>(), version);
  EXPECT_EQ(enc["rows_hit"].as<int>(), 3 + 2 + 1 + 1);
  EXPECT_EQ(enc["rows_missed"].as<int>(), 3 + 2 + 1 + 1);
  const std::string m = metrics_text(port);
  EXPECT_NE(m.find("jit_cache_rows_total{encoder=\"a\",result=\"hit\"} 7\n"), std::string::npos) << m;
  EXPECT_NE(m.find("jit_cache_rows_total{encoder=\"a\",result=\"miss\"} 7\n"), std::string::npos) << m;
}

// ---- 2. POST /v1/cache/lookup ----

// Expects `a` to be a lookup answer with `hits`, and each hit's "<i>/y" and "<i>/norm" equal to
// row `rows[j]` of `encoded`.
void expect_lookup(const Answer &a, const std::vector<int64_t> &hits, const Answer &encoded,
                   const std::vector<int64_t> &rows) {
  ASSERT_EQ(a.status, 200) << *a.body;
  ASSERT_EQ(a.meta.at("hits").as<std::vector<int64_t>>(), hits);
  EXPECT_EQ(a.meta.at("encoder").as<std::string>(), "a");
  EXPECT_EQ(a.meta.at("version").as<std::string>(), encoded.version());
  ASSERT_EQ(a.frame.tensors.size(), 2 * hits.size());
  const std::vector<float> y = floats(*encoded.tensor("y")), norm = floats(*encoded.tensor("norm"));
  for (size_t j = 0; j < hits.size(); ++j) {
    const std::string i = std::to_string(hits[j]);
    const codec::DecodedTensor *hy = a.tensor(i + "/y"), *hn = a.tensor(i + "/norm");
    ASSERT_TRUE(hy && hn) << "no tensors for hit " << i;
    EXPECT_EQ(hy->shape, (Shape{kCols}));
    EXPECT_EQ(hn->shape, (Shape{}));
    EXPECT_EQ(floats(*hy), std::vector<float>(y.begin() + rows[j] * kCols, y.begin() + (rows[j] + 1) * kCols));
    EXPECT_EQ(floats(*hn), std::vector<float>{norm[rows[j]]});
  }
}

void expect_error(const Answer &a, int status, const std::string &says) {
  EXPECT_EQ(a.status, status) << *a.body;
  const YAML::Node j = a.json();
  EXPECT_EQ(j["code"].as<std::string>(""), status == 400 ? "bad_request" : "not_found") << *a.body;
  EXPECT_NE(j["error"].as<std::string>("").find(says), std::string::npos) << "wanted '" << says << "' in " << *a.body;
}

TEST(CacheService, LookupAnswersCachedRowsByDigestOrSampleKey) {
  Counts counts;
  App app(base_config(), counting_factory(&counts));
  const int port = app.start();
  const Answer by_content = encode(port, {affine_rows({1, 2})});
  ASSERT_EQ(by_content.status, 200);
  const Answer by_key = encode(port, {affine_rows({3, 4})}, Meta().strs("keys", {"img-3", "img-4"}).packed());
  ASSERT_EQ(by_key.status, 200);
  app.cache()->flush();
  const size_t rows = counts.rows.load();

  const CacheKey d1 = affine_digest(1), d2 = affine_digest(2), d9 = affine_digest(9);
  expect_lookup(
      lookup(
          port,
          Meta().str("encoder", "a").bins("digests", {digest_bytes(d1), digest_bytes(d9), digest_bytes(d2)}).packed()),
      {0, 2}, by_content, {0, 1});
  expect_lookup(lookup(port, Meta().str("encoder", "a").strs("digests", {d9.hex(), d2.hex(), d1.hex()}).packed()),
                {1, 2}, by_content, {1, 0});
  expect_lookup(lookup(port, Meta().str("encoder", "a").strs("keys", {"img-4", "nope", "img-3"}).packed()), {0, 2},
                by_key, {1, 0});
  // Rows keyed by sample key are not found by content digest, and the reverse.
  expect_lookup(lookup(port, Meta().str("encoder", "a").strs("digests", {affine_digest(3).hex()}).packed()), {}, by_key,
                {});
  expect_lookup(lookup(port, Meta().str("encoder", "a").strs("keys", {d1.hex()}).packed()), {}, by_content, {});
  EXPECT_EQ(counts.rows.load(), rows) << "a lookup ran the encoder";

  // "params" are hashed into the digest: the same row under other params is another entry.
  const Answer with_params = encode(port, {affine_rows({1})}, Meta().str("params", "resize=224").packed());
  expect_affine(with_params, {1}, 2.0f);
  EXPECT_EQ(with_params.cache_hits(), std::vector<int64_t>{});
  app.cache()->flush();
  EXPECT_EQ(encode(port, {affine_rows({1})}, Meta().str("params", "resize=224").packed()).cache_hits(),
            std::vector<int64_t>{0});
  std::vector<float> x1(kCols);
  for (int64_t c = 0; c < kCols; ++c)
    x1[c] = row_value(1, c);
  const CacheKey d1p = CacheKey::content_of_inputs(
      "resize=224", {TensorView{"x", DType::kFloat32, {kCols}, x1.data(), x1.size() * sizeof(float)}});
  EXPECT_NE(d1p, d1);
  expect_lookup(lookup(port, Meta().str("encoder", "a").strs("digests", {d1p.hex()}).packed()), {0}, by_content, {0});
  const size_t rows_params = counts.rows.load();

  // Malformed requests: 400 naming the problem; an unknown encoder: 404.
  const std::string d1_hex = d1.hex();
  std::string upper = d1_hex;
  for (char &c : upper)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  expect_error(lookup(port, ""), 400, "meta must be a map");
  expect_error(lookup(port, Meta().strs("digests", {d1_hex}).packed()), 400, "meta.encoder is missing");
  expect_error(lookup(port, Meta().str("encoder", "a").strs("digests", {d1_hex}).strs("keys", {"k"}).packed()), 400,
               "exactly one of \"digests\" and \"keys\"");
  expect_error(lookup(port, Meta().str("encoder", "a").packed()), 400, "exactly one of \"digests\" and \"keys\"");
  expect_error(lookup(port, Meta().str("encoder", "a").bins("digests", {digest_bytes(d1).substr(0, 15)}).packed()), 400,
               "meta.digests[0] must be 16 bytes (bin) or 32 lowercase hex digits");
  expect_error(lookup(port, Meta().str("encoder", "a").strs("digests", {d1_hex, d1_hex.substr(1)}).packed()), 400,
               "meta.digests[1] must be 16 bytes");
  expect_error(lookup(port, Meta().str("encoder", "a").strs("digests", {upper}).packed()), 400,
               "meta.digests[0] must be 16 bytes");
  expect_error(lookup(port, Meta().str("encoder", "a").strs("digests", std::vector<std::string>(9, d1_hex)).packed()),
               400, "lookup of 9 keys, more than cache.max_lookup_keys (8)");
  expect_error(lookup(port, Meta().str("encoder", "nope").strs("digests", {d1_hex}).packed()), 404,
               "unknown encoder 'nope'");
  // At the limit is fine.
  const Answer eight =
      lookup(port, Meta().str("encoder", "a").strs("digests", std::vector<std::string>(8, d1_hex)).packed());
  expect_lookup(eight, {0, 1, 2, 3, 4, 5, 6, 7}, by_content, {0, 0, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(counts.rows.load(), rows_params);
  expect_error(encode(port, {affine_rows({1})}, "", "nope"), 404, "unknown encoder 'nope'");
}

// ---- 3. Padded token rows and "lengths" ----

// Token rows: row q of length len holds ids 10 * q + s; the request pads every row to `padded`
// with `pad_id` and mask 0.
std::vector<Tensor> token_rows(const std::vector<std::pair<int, int64_t>> &rows, int64_t padded, int64_t pad_id) {
  const int64_t n = static_cast<int64_t>(rows.size());
  Tensor ids = make_tensor("input_ids", DType::kInt64, {n, padded});
  Tensor mask = make_tensor("attention_mask", DType::kInt64, {n, padded});
  auto *i = static_cast<int64_t *>(const_cast<void *>(ids.data));
  auto *m = static_cast<int64_t *>(const_cast<void *>(mask.data));
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t s = 0; s < padded; ++s) {
      const bool real = s < rows[r].second;
      i[r * padded + s] = real ? 10 * rows[r].first + s : pad_id;
      m[r * padded + s] = real ? 1 : 0;
    }
  }
  return {ids, mask};
}

std::vector<int64_t> lengths_of(const std::vector<std::pair<int, int64_t>> &rows) {
  std::vector<int64_t> out;
  for (const auto &r : rows)
    out.push_back(r.second);
  return out;
}

// hidden is [rows, longest, 2]: each row's own positions, zeros after; pooled the sum of its ids.
void expect_tokens(const Answer &a, const std::vector<std::pair<int, int64_t>> &rows) {
  ASSERT_EQ(a.status, 200) << *a.body;
  const codec::DecodedTensor *hidden = a.tensor("hidden"), *pooled = a.tensor("pooled");
  ASSERT_TRUE(hidden && pooled);
  int64_t longest = 0;
  for (const auto &r : rows)
    longest = std::max(longest, r.second);
  const int64_t n = static_cast<int64_t>(rows.size());
  ASSERT_EQ(hidden->shape, (Shape{n, longest, 2}));
  ASSERT_EQ(pooled->shape, (Shape{n}));
  const std::vector<float> h = floats(*hidden), p = floats(*pooled);
  for (int64_t r = 0; r < n; ++r) {
    float sum = 0;
    for (int64_t s = 0; s < longest; ++s) {
      const bool real = s < rows[r].second;
      const float id = static_cast<float>(10 * rows[r].first + s);
      EXPECT_EQ(h[(r * longest + s) * 2], real ? id : 0.0f) << "row " << r << ", position " << s;
      EXPECT_EQ(h[(r * longest + s) * 2 + 1], real ? static_cast<float>(s + 1) : 0.0f)
          << "row " << r << ", position " << s;
      if (real) sum += id;
    }
    EXPECT_EQ(p[r], sum) << "row " << r;
  }
}

TEST(CacheService, PaddedRowsAreKeyedAndServedAtTheirOwnLength) {
  Counts counts;
  ServerConfig config = base_config();
  config.encoders.push_back(entry("t", R"({"kind": "tokens"})"));
  App app(std::move(config), counting_factory(&counts));
  const int port = app.start();
  auto send = [&](const std::vector<std::pair<int, int64_t>> &rows, int64_t padded, int64_t pad_id) {
    return encode(port, token_rows(rows, padded, pad_id), Meta().ints("lengths", lengths_of(rows)).packed(), "t");
  };

  // Padded to 6 with the pad id: computed whole, outputs cut to 3 and 5, padded back with zeros.
  const Answer a = send({{1, 3}, {2, 5}}, 6, kPadId);
  expect_tokens(a, {{1, 3}, {2, 5}});
  EXPECT_EQ(a.cache_hits(), std::vector<int64_t>{});
  EXPECT_EQ(counts.rows.load(), 2u);
  app.cache()->flush();

  // The same rows padded to 9 with other junk, beside a new row: the two are hits.
  const Answer b = send({{2, 5}, {1, 3}, {3, 2}}, 9, 555);
  expect_tokens(b, {{2, 5}, {1, 3}, {3, 2}});
  EXPECT_EQ(b.cache_hits(), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(counts.rows.load(), 3u);
  app.cache()->flush();

  // Unpadded, with and without "lengths": the same keys.
  const Answer c = send({{3, 2}, {1, 3}}, 3, 0);
  expect_tokens(c, {{3, 2}, {1, 3}});
  EXPECT_EQ(c.cache_hits(), (std::vector<int64_t>{0, 1}));
  const Answer d = encode(port, token_rows({{2, 5}}, 5, kPadId), "", "t");
  expect_tokens(d, {{2, 5}});
  EXPECT_EQ(d.cache_hits(), std::vector<int64_t>{0});
  EXPECT_EQ(counts.rows.load(), 3u);

  // A client's digests of its rows at their own length (content_of_inputs over the unpadded
  // tensors) find them through /v1/cache/lookup.
  std::vector<std::string> digests;
  for (const auto &[q, len] : std::vector<std::pair<int, int64_t>>{{1, 3}, {2, 5}, {2, 4}}) {
    std::vector<int64_t> ids(static_cast<size_t>(len)), mask(static_cast<size_t>(len), 1);
    for (int64_t s = 0; s < len; ++s)
      ids[static_cast<size_t>(s)] = 10 * q + s;
    digests.push_back(CacheKey::content_of_inputs(
                          "", {TensorView{"input_ids", DType::kInt64, {len}, ids.data(), ids.size() * 8},
                               TensorView{"attention_mask", DType::kInt64, {len}, mask.data(), mask.size() * 8}})
                          .hex());
  }
  const Answer found = lookup(port, Meta().str("encoder", "t").strs("digests", digests).packed());
  ASSERT_EQ(found.status, 200) << *found.body;
  EXPECT_EQ(found.meta.at("hits").as<std::vector<int64_t>>(), (std::vector<int64_t>{0, 1}));
  ASSERT_TRUE(found.tensor("1/hidden"));
  EXPECT_EQ(found.tensor("1/hidden")->shape, (Shape{5, 2}));
  EXPECT_EQ(floats(*found.tensor("1/hidden")), (std::vector<float>{20, 1, 21, 2, 22, 3, 23, 4, 24, 5}));

  // A length past the padding is the client's error.
  const Answer too_long = send({{1, 7}}, 6, kPadId);
  EXPECT_EQ(too_long.status, 400) << *too_long.body;
  EXPECT_NE(too_long.body->find("meta.lengths[0] = 7 is longer than input"), std::string::npos) << *too_long.body;
}

// ---- 4. A corrupt RocksDB value ----

#ifdef JIT_HAVE_ROCKSDB
// Rewrites the one value in the RocksDB at `path`, which must be stored under `key`.
void rewrite_rocksdb_value(const std::string &path, const CacheKey &key,
                           const std::function<void(std::string &)> &damage) {
  rocksdb::DB *raw = nullptr;
  rocksdb::Options options;
  rocksdb::Status st = rocksdb::DB::Open(options, path, &raw);
  ASSERT_TRUE(st.ok()) << st.ToString();
  std::unique_ptr<rocksdb::DB> db(raw);
  std::vector<std::string> keys;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions()));
  for (it->SeekToFirst(); it->Valid(); it->Next())
    keys.push_back(it->key().ToString());
  it.reset();
  ASSERT_EQ(keys, std::vector<std::string>{digest_bytes(key)}) << "the database holds other keys than the row's";
  std::string value;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), keys[0], &value).ok());
  ASSERT_TRUE(cache::Entry::parse(key, std::make_shared<const std::string>(value))) << "stored value is unreadable";
  damage(value);
  ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), keys[0], value).ok());
  ASSERT_FALSE(cache::Entry::parse(key, std::make_shared<const std::string>(value))) << "the damage went unnoticed";
}
#endif

TEST(CacheServiceRocksDb, CorruptValueIsRecomputedCountedAndOverwritten) {
  if (!cache::rocksdb_available()) GTEST_SKIP() << "built without RocksDB (JIT_WITH_ROCKSDB found no librocksdb-dev)";
#ifdef JIT_HAVE_ROCKSDB
  const std::vector<std::pair<std::string, std::function<void(std::string &)>>> damages = {
      {"a flipped payload byte", [](std::string &v) { v[v.size() - 2] ^= 0x40; }},
      {"a flipped byte mid-frame", [](std::string &v) { v[v.size() / 2] ^= 0x01; }},
      {"a truncated value", [](std::string &v) { v.resize(v.size() - 5); }},
      {"a valid entry of another key",
       [](std::string &v) {
         const float y[kCols] = {9, 9, 9, 9}, norm = 9;
         const CacheKey other(1, 2);
         v = *cache::Entry::make(other, "a", "affine scale=2.000000",
                                 {TensorView{"y", DType::kFloat32, {kCols}, y, sizeof y},
                                  TensorView{"norm", DType::kFloat32, {}, &norm, sizeof norm}})
                  .frame();
       }},
  };
  for (const auto &[what, damage] : damages) {
    SCOPED_TRACE(what);
    cache::testing::TempDir dir;
    ServerConfig config = base_config();
    config.cache.settings.memory_max_bytes = 0;
    config.cache.settings.rocksdb_path = (dir.path / "db").string();
    Counts counts;
    std::string version;
    {
      App app(config, counting_factory(&counts));
      const int port = app.start();
      const Answer a = encode(port, {affine_rows({5})});
      expect_affine(a, {5}, 2.0f);
      version = a.version();
    } // destroyed: the row is stored and the database closed
    const CacheKey key = CacheKey::bind("a", version, affine_digest(5));
    rewrite_rocksdb_value(config.cache.settings.rocksdb_path, key, damage);
    if (HasFatalFailure()) return;

    App app(config, counting_factory(&counts));
    const int port = app.start();
    const Answer again = encode(port, {affine_rows({5})});
    expect_affine(again, {5}, 2.0f);
    EXPECT_EQ(again.cache_hits(), std::vector<int64_t>{}) << "a corrupt value was served";
    EXPECT_EQ(counts.rows.load(), 2u);
    const std::string m = metrics_text(port);
    EXPECT_NE(m.find("jit_cache_corrupt_total{tier=\"rocksdb\"} 1\n"), std::string::npos) << m;
    EXPECT_EQ(tier_stats(port, "rocksdb")["corrupt"].as<int>(), 1);
    app.cache()->flush();
    const Answer third = encode(port, {affine_rows({5})});
    expect_affine(third, {5}, 2.0f);
    EXPECT_EQ(third.cache_hits(), std::vector<int64_t>{0}) << "the recomputed row was not stored again";
    EXPECT_EQ(counts.rows.load(), 2u);
    EXPECT_NE(metrics_text(port).find("jit_cache_corrupt_total{tier=\"rocksdb\"} 1\n"), std::string::npos);
  }
#endif
}

// ---- 5. Redis: a truncated value, an outage mid-run, and the way back ----

#ifdef JIT_HAVE_REDIS
// One raw command through hiredis on its own connection; returns the reply's string, or nullopt
// for a nil or failed reply.
std::optional<std::string> redis_command(int port, const std::vector<std::string> &args) {
  redisContext *c = redisConnect("127.0.0.1", port);
  if (!c || c->err) {
    if (c) redisFree(c);
    return std::nullopt;
  }
  std::vector<const char *> argv;
  std::vector<size_t> lens;
  for (const std::string &a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto *r = static_cast<redisReply *>(redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
  std::optional<std::string> out;
  if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)) out = std::string(r->str, r->len);
  if (r) freeReplyObject(r);
  redisFree(c);
  return out;
}
#endif

// What the process writes to stderr (every thread) from construction to take(); released even
// when an assertion returns early.
class StderrCapture {
public:
  StderrCapture() { ::testing::internal::CaptureStderr(); }
  ~StderrCapture() {
    if (!taken_) ::testing::internal::GetCapturedStderr();
  }
  std::string take() {
    taken_ = true;
    return ::testing::internal::GetCapturedStderr();
  }

private:
  bool taken_ = false;
};

TEST(CacheServiceRedis, TruncatedValueAndOutageDegradeToComputeAndRecover) {
  if (!cache::redis_available()) GTEST_SKIP() << "built without Redis (JIT_WITH_REDIS found no libhiredis-dev)";
  const std::string bin = cache::testing::find_redis_server();
  if (bin.empty()) GTEST_SKIP() << "redis-server is not installed (apt-get install redis-server)";
#ifdef JIT_HAVE_REDIS
  cache::testing::RedisServer redis(bin, cache::testing::free_port());
  ASSERT_TRUE(redis.start()) << "redis-server did not start on port " << redis.port();
  ServerConfig config = base_config();
  config.cache.settings.memory_max_bytes = 0;
  config.cache.settings.redis_url = redis.url();
  config.cache.settings.redis_retry_after_ms = 100;
  config.cache.settings.redis_io_timeout_ms = 300;
  config.cache.settings.redis_connect_timeout_ms = 200;
  Counts counts;
  App app(config, counting_factory(&counts));
  const int port = app.start();
  const std::string prefix = config.cache.settings.redis_key_prefix;

  // A stored row, truncated in Redis: recomputed, counted corrupt, stored again.
  const Answer a = encode(port, {affine_rows({1})});
  expect_affine(a, {1}, 2.0f);
  app.cache()->flush();
  const std::string k1 = prefix + CacheKey::bind("a", a.version(), affine_digest(1)).hex();
  const std::optional<std::string> stored = redis_command(redis.port(), {"GET", k1});
  ASSERT_TRUE(stored) << "row 1 is not in Redis under " << k1;
  ASSERT_TRUE(cache::Entry::parse(CacheKey::bind("a", a.version(), affine_digest(1)),
                                  std::make_shared<const std::string>(*stored)));
  ASSERT_TRUE(redis_command(redis.port(), {"SET", k1, stored->substr(0, stored->size() / 2)}));
  const Answer truncated = encode(port, {affine_rows({1})});
  expect_affine(truncated, {1}, 2.0f);
  EXPECT_EQ(truncated.cache_hits(), std::vector<int64_t>{});
  EXPECT_EQ(counts.rows.load(), 2u);
  EXPECT_NE(metrics_text(port).find("jit_cache_corrupt_total{tier=\"redis\"} 1\n"), std::string::npos);
  app.cache()->flush();
  const std::optional<std::string> rewritten = redis_command(redis.port(), {"GET", k1});
  ASSERT_TRUE(rewritten) << "the corrupt value was erased but the recomputed row not stored";
  EXPECT_TRUE(cache::Entry::parse(CacheKey::bind("a", a.version(), affine_digest(1)),
                                  std::make_shared<const std::string>(*rewritten)))
      << "the value in Redis is still unreadable";
  const Answer hit = encode(port, {affine_rows({1})});
  expect_affine(hit, {1}, 2.0f);
  EXPECT_EQ(hit.cache_hits(), std::vector<int64_t>{0});

  // Redis killed in the middle of a run: every request still answers, correctly; the tier says so
  // once on stderr and in jit_cache_tier_up.
  const std::string up_series = "jit_cache_tier_up{tier=\"redis\"} ";
  EXPECT_NE(metrics_text(port).find(up_series + "1\n"), std::string::npos);
  constexpr int kRequests = 24, kKillAfter = 8;
  std::atomic<int> done{0};
  std::vector<Answer> answers(kRequests);
  std::thread run([&] {
    for (int i = 0; i < kRequests; ++i) {
      answers[i] = encode(port, {affine_rows({1, 100 + i})});
      ++done;
    }
  });
  while (done.load() < kKillAfter)
    std::this_thread::sleep_for(1ms);
  StderrCapture captured;
  redis.kill_now();
  run.join();
  for (int i = 0; i < kRequests; ++i) {
    SCOPED_TRACE("request " + std::to_string(i));
    expect_affine(answers[i], {1, 100 + i}, 2.0f);
  }
  EXPECT_EQ(client(port).Get("/health/live")->status, 200);
  app.cache()->flush();
  const Answer down = encode(port, {affine_rows({1})});
  expect_affine(down, {1}, 2.0f);
  EXPECT_EQ(down.cache_hits(), std::vector<int64_t>{}) << "a hit from a dead Redis";
  EXPECT_NE(metrics_text(port).find(up_series + "0\n"), std::string::npos) << "jit_cache_tier_up missed the outage";

  // redis-server back on the same port (empty): new rows are stored there again.
  ASSERT_TRUE(redis.start());
  bool stored_again = false;
  for (int attempt = 0; attempt < 100 && !stored_again; ++attempt) {
    const int seed = 1000 + attempt;
    expect_affine(encode(port, {affine_rows({seed})}), {seed}, 2.0f);
    app.cache()->flush();
    stored_again =
        redis_command(redis.port(), {"GET", prefix + CacheKey::bind("a", a.version(), affine_digest(seed)).hex()})
            .has_value();
    if (stored_again) {
      const Answer back = encode(port, {affine_rows({seed})});
      expect_affine(back, {seed}, 2.0f);
      EXPECT_EQ(back.cache_hits(), std::vector<int64_t>{0});
    } else {
      std::this_thread::sleep_for(20ms); // redis_retry_after_ms has not passed yet
    }
  }
  EXPECT_TRUE(stored_again) << "nothing reached Redis after it came back";
  const std::string log = captured.take();
  auto occurrences = [&](const std::string &what) {
    size_t n = 0;
    for (size_t at = log.find(what); at != std::string::npos; at = log.find(what, at + 1))
      ++n;
    return n;
  };
  const std::string where = "redis at 127.0.0.1:" + std::to_string(redis.port());
  EXPECT_EQ(occurrences("warning: " + where + " is unreachable or failing"), 1u) << log;
  EXPECT_EQ(occurrences(where + " is back"), 1u) << log;
  EXPECT_NE(metrics_text(port).find(up_series + "1\n"), std::string::npos);
  EXPECT_EQ(stats(port)["dropped_writes"].as<int>(), 0) << "writes were dropped during the outage";
  const YAML::Node redis_stats = tier_stats(port, "redis");
  EXPECT_GE(redis_stats["hits"].as<int>(), 2);
  EXPECT_EQ(redis_stats["corrupt"].as<int>(), 1);
#endif
}

// ---- 6. Concurrency ----

TEST(CacheServiceConcurrency, SameNewRequestFromEightThreadsGetsEqualCorrectAnswers) {
  Counts counts;
  App app(base_config(), counting_factory(&counts));
  const int port = app.start();
  constexpr int kThreads = 8, kRounds = 6;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::vector<int> seeds = {round * 10 + 1, round * 10 + 2, 1}; // two new rows, and row 1
    std::promise<void> go;
    std::shared_future<void> start = go.get_future().share();
    std::vector<std::future<Answer>> answers;
    for (int t = 0; t < kThreads; ++t) {
      answers.push_back(std::async(std::launch::async, [&, start] {
        start.wait();
        return encode(port, {affine_rows(seeds)});
      }));
    }
    go.set_value();
    std::vector<Answer> got;
    for (auto &f : answers)
      got.push_back(f.get());
    for (const Answer &a : got) {
      expect_affine(a, seeds, 2.0f);
      expect_same_outputs(a, got[0]);
    }
  }
  // Single flight: concurrent requests for the same new rows compute each row once, so each round
  // computed only its two new rows (round 0's rows are {1, 2, 1}: row 1 repeated, computed once).
  EXPECT_EQ(counts.rows.load(), size_t{2 * kRounds});
  // A row repeated within one request is computed once.
  const size_t before = counts.rows.load();
  expect_affine(encode(port, {affine_rows({500, 501, 500})}), {500, 501, 500}, 2.0f);
  EXPECT_EQ(counts.rows.load(), before + 2);
  app.cache()->flush();
  const size_t rows = counts.rows.load();
  for (int round = 0; round < kRounds; ++round) {
    const Answer a = encode(port, {affine_rows({round * 10 + 1, round * 10 + 2, 1})});
    expect_affine(a, {round * 10 + 1, round * 10 + 2, 1}, 2.0f);
    EXPECT_EQ(a.cache_hits(), (std::vector<int64_t>{0, 1, 2}));
  }
  EXPECT_EQ(counts.rows.load(), rows);
}

// One writer put()s two valid values of one key in turn; readers get() it: every read is a hit
// holding exactly one of the two values, never a mix.
void hammer_one_key(cache::TieredCache &cache) {
  constexpr size_t kFloats = 4096;
  constexpr int kWrites = 1500, kReaders = 4;
  const CacheKey key = CacheKey::for_sample_key("enc", "v1", "contended");
  std::vector<cache::Entry> values;
  for (float v : {1.0f, 2.0f}) {
    std::vector<float> data(kFloats, v);
    values.push_back(cache::Entry::make(
        key, "enc", "v1",
        {TensorView{"emb", DType::kFloat32, {static_cast<int64_t>(kFloats)}, data.data(), kFloats * sizeof(float)}}));
  }
  cache.put(key, values[0]);
  cache.flush();
  std::atomic<bool> writing{true};
  std::atomic<size_t> reads{0}, misses{0}, torn{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < kReaders; ++r) {
    readers.emplace_back([&] {
      do {
        std::optional<cache::Entry> e = cache.get(key);
        ++reads;
        if (!e) {
          ++misses;
          continue;
        }
        const Tensor &t = e->tensors().at(0);
        std::vector<float> got(kFloats);
        if (t.shape != Shape{static_cast<int64_t>(kFloats)} || t.nbytes != kFloats * sizeof(float)) {
          ++torn;
          continue;
        }
        std::memcpy(got.data(), t.data, t.nbytes);
        if ((got[0] != 1.0f && got[0] != 2.0f) ||
            std::any_of(got.begin(), got.end(), [&](float f) { return f != got[0]; }))
          ++torn;
      } while (writing.load());
    });
  }
  // The write queue may drop a put when full (by design); the last accepted one must win.
  int last_accepted = 0;
  for (int i = 0; i < kWrites; ++i)
    if (cache.put(key, values[i % 2])) last_accepted = i % 2;
  cache.flush();
  writing = false;
  for (auto &t : readers)
    t.join();
  EXPECT_GT(reads.load(), 0u);
  EXPECT_EQ(torn.load(), 0u) << "reads that were neither value";
  EXPECT_EQ(misses.load(), 0u) << "a key being overwritten went missing";
  std::optional<cache::Entry> last = cache.get(key);
  ASSERT_TRUE(last);
  EXPECT_EQ(static_cast<const float *>(last->tensors()[0].data)[0], last_accepted ? 2.0f : 1.0f)
      << "the last accepted write did not win";
}

TEST(CacheServiceConcurrency, ConcurrentWriterAndReadersOfOneKeyNeverSeeATornValue) {
  {
    SCOPED_TRACE("memory tier");
    metrics::Registry registry;
    cache::CacheSettings s;
    s.memory_max_bytes = 16ull << 20;
    s.memory_shards = 2;
    auto cache = cache::TieredCache::from_settings(s, registry);
    hammer_one_key(*cache);
  }
  if (cache::rocksdb_available()) {
    SCOPED_TRACE("rocksdb tier");
    cache::testing::TempDir dir;
    metrics::Registry registry;
    cache::CacheSettings s;
    s.memory_max_bytes = 0;
    s.rocksdb_path = (dir.path / "db").string();
    auto cache = cache::TieredCache::from_settings(s, registry);
    hammer_one_key(*cache);
    EXPECT_EQ(cache->stats().at(0).corrupt, 0u);
  }
}

// ---- 7. A new version of the encoder ----

TEST(CacheService, NewVersionMissesAndPruneStaleRemovesTheOldEntries) {
  Counts counts;
  cache::testing::TempDir dir;
  ServerConfig config = base_config();
  size_t tiers = 1;
  if (cache::rocksdb_available()) {
    config.cache.settings.rocksdb_path = (dir.path / "db").string();
    tiers = 2;
  }
  App app(std::move(config), counting_factory(&counts));
  const int port = app.start();
  const Answer old = encode(port, {affine_rows({1, 2, 3})});
  expect_affine(old, {1, 2, 3}, 2.0f);
  app.cache()->flush();
  EXPECT_EQ(encode(port, {affine_rows({1, 2, 3})}).cache_hits(), (std::vector<int64_t>{0, 1, 2}));

  const LoadResult loaded = app.load("a", affine_entry(5.0f));
  EXPECT_EQ(loaded.previous_version, old.version());
  EXPECT_NE(loaded.version, old.version());
  const Answer fresh = encode(port, {affine_rows({1, 2, 3})});
  expect_affine(fresh, {1, 2, 3}, 5.0f);
  EXPECT_EQ(fresh.version(), loaded.version);
  EXPECT_EQ(fresh.cache_hits(), std::vector<int64_t>{}) << "an entry of the old version was served";
  EXPECT_EQ(counts.rows.load(), 6u);
  app.cache()->flush();
  const Answer fresh_again = encode(port, {affine_rows({1, 2, 3})});
  expect_affine(fresh_again, {1, 2, 3}, 5.0f);
  EXPECT_EQ(fresh_again.cache_hits(), (std::vector<int64_t>{0, 1, 2}));
  EXPECT_EQ(tier_stats(port, "memory")["entries"].as<int>(), 6);

  // Prune the stale version: three entries in each tier.
  const Answer pruned = post(port, "/v1/cache/prune", R"({"stale": true})", "application/json");
  ASSERT_EQ(pruned.status, 200) << *pruned.body;
  EXPECT_EQ(pruned.json()["entries"].as<size_t>(), 3 * tiers) << *pruned.body;
  EXPECT_GT(pruned.json()["bytes"].as<size_t>(), 0u) << *pruned.body;
  const YAML::Node after = stats(port);
  EXPECT_EQ(tier_stats(port, "memory")["entries"].as<int>(), 3);
  EXPECT_EQ(after["encoders"][0]["version"].as<std::string>(), loaded.version);
  // The current version's entries stay; pruning again finds nothing.
  EXPECT_EQ(encode(port, {affine_rows({1, 2, 3})}).cache_hits(), (std::vector<int64_t>{0, 1, 2}));
  const Answer again = post(port, "/v1/cache/prune", R"({"stale": true})", "application/json");
  ASSERT_EQ(again.status, 200) << *again.body;
  EXPECT_EQ(again.json()["entries"].as<int>(), 0) << *again.body;
  EXPECT_EQ(counts.rows.load(), 6u);

  // Back to the first version: its entries are gone, so it recomputes.
  app.load("a", affine_entry(2.0f));
  const Answer back = encode(port, {affine_rows({1, 2, 3})});
  expect_affine(back, {1, 2, 3}, 2.0f);
  EXPECT_EQ(back.cache_hits(), std::vector<int64_t>{});
  EXPECT_EQ(counts.rows.load(), 9u);

  const Answer bad = post(port, "/v1/cache/prune", R"({"stael": true})", "application/json");
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body->find("prune: unknown key 'stael'"), std::string::npos) << *bad.body;
}

} // namespace
} // namespace jit::server
