// CacheService's routes besides encode: POST /v1/cache/lookup, GET /v1/cache/stats and
// POST /v1/cache/prune (see cache_service.h for their contracts).
#include <msgpack.hpp>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <map>

#include "server/cache_meta.h"
#include "server/cache_service.h"
#include "server/errors.h"

namespace jit::server {

namespace {

using Code = ServerError::Code;
using namespace cache_meta;

double micros_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

} // namespace

std::string CacheService::lookup(const codec::DecodedFrame &frame) {
  const auto t0 = std::chrono::steady_clock::now();
  msgpack::object_handle h = unpack_meta(frame.meta_msgpack);
  const msgpack::object &meta = h.get();
  if (meta.type != msgpack::type::MAP) bad("meta must be a map with \"encoder\" and \"digests\" or \"keys\"");
  const msgpack::object *enc = field(meta, "encoder");
  if (!enc) bad("meta.encoder is missing");
  const std::string encoder = as_text(*enc, "meta.encoder");
  const std::optional<engine::EncoderInfo> info = engine_.info(encoder);
  if (!info) throw ServerError(Code::kNotFound, "unknown encoder '" + encoder + "'");

  const msgpack::object *digests = field(meta, "digests");
  const msgpack::object *keys = field(meta, "keys");
  if ((digests == nullptr) == (keys == nullptr)) bad("meta must have exactly one of \"digests\" and \"keys\"");
  const auto &a = array_of(digests ? *digests : *keys, digests ? "meta.digests" : "meta.keys", SIZE_MAX);
  if (a.size > config_.max_lookup_keys)
    bad("lookup of " + std::to_string(a.size) + " keys, more than cache.max_lookup_keys (" +
        std::to_string(config_.max_lookup_keys) + ")");
  std::vector<cache::CacheKey> content(a.size);
  for (uint32_t i = 0; i < a.size; ++i) {
    const std::string what = std::string(digests ? "meta.digests[" : "meta.keys[") + std::to_string(i) + "]";
    const msgpack::object &o = a.ptr[i];
    if (keys) {
      content[i] = cache::CacheKey::content_of_sample_key(as_text(o, what));
    } else if (o.type == msgpack::type::BIN && o.via.bin.size == 16) {
      uint64_t hi = 0, lo = 0;
      for (int b = 0; b < 8; ++b) {
        hi = (hi << 8) | static_cast<uint8_t>(o.via.bin.ptr[b]);
        lo = (lo << 8) | static_cast<uint8_t>(o.via.bin.ptr[8 + b]);
      }
      content[i] = cache::CacheKey(hi, lo);
    } else {
      auto k = o.type == msgpack::type::STR ? cache::CacheKey::from_hex(std::string_view(o.via.str.ptr, o.via.str.size))
                                            : std::nullopt;
      if (!k) bad(what + " must be 16 bytes (bin) or 32 lowercase hex digits");
      content[i] = *k;
    }
  }

  std::vector<cache::Entry> found;
  std::vector<int64_t> hit_rows;
  std::vector<TensorView> views;
  for (size_t i = 0; i < content.size(); ++i) {
    std::optional<cache::Entry> e = cache_->get(cache::CacheKey::bind(encoder, info->version, content[i]));
    if (!e) continue;
    hit_rows.push_back(static_cast<int64_t>(i));
    found.push_back(std::move(*e));
  }
  std::vector<std::string> names; // TensorView holds its own name: built once per hit
  for (size_t j = 0; j < found.size(); ++j) {
    for (const Tensor &t : found[j].tensors()) {
      TensorView v = t.view();
      v.name = std::to_string(hit_rows[j]) + "/" + t.name;
      views.push_back(std::move(v));
    }
  }
  rows_counter(encoder, true).inc(static_cast<double>(hit_rows.size()));
  rows_counter(encoder, false).inc(static_cast<double>(content.size() - hit_rows.size()));

  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(4);
  pk.pack(std::string_view("encoder"));
  pk.pack(std::string_view(encoder));
  pk.pack(std::string_view("version"));
  pk.pack(std::string_view(info->version));
  pk.pack(std::string_view("hits"));
  pk.pack(hit_rows);
  pk.pack(std::string_view("timings"));
  pk.pack_map(1);
  pk.pack(std::string_view("lookup_us"));
  pk.pack_double(micros_since(t0));
  try {
    return codec::encode(views, std::string(sb.data(), sb.size()), {});
  } catch (const codec::CodecError &e) {
    throw ServerError(Code::kInternal, std::string("cannot frame the lookup answer: ") + e.what());
  }
}

std::string CacheService::stats_json(bool versions) {
  std::string out = "{\"tiers\": [";
  bool first = true;
  for (const cache::TierStats &t : cache_->stats()) {
    const uint64_t looked = t.hits + t.misses;
    out += std::string(first ? "" : ", ") + "{\"tier\": " + json_quote(t.tier) +
           ", \"entries\": " + std::to_string(t.entries) + ", \"bytes\": " + std::to_string(t.bytes) +
           ", \"hits\": " + std::to_string(t.hits) + ", \"misses\": " + std::to_string(t.misses) +
           ", \"hit_rate\": " + (looked ? std::to_string(static_cast<double>(t.hits) / looked) : "null") +
           ", \"evictions\": " + std::to_string(t.evictions) + ", \"corrupt\": " + std::to_string(t.corrupt) + "}";
    first = false;
  }
  size_t pending_entries;
  uint64_t pending_bytes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_entries = queue_.size() + writing_;
    pending_bytes = queued_bytes_;
  }
  out += "], \"write_queue_depth\": " + std::to_string(cache_->write_queue_depth()) +
         ", \"dropped_writes\": " + std::to_string(static_cast<uint64_t>(dropped_.value())) +
         ", \"pending_entries\": " + std::to_string(pending_entries) +
         ", \"pending_bytes\": " + std::to_string(pending_bytes) + ", \"encoders\": [";
  first = true;
  for (const engine::EncoderInfo &e : engine_.encoders()) {
    auto rows = [&](bool hit) { return static_cast<uint64_t>(rows_counter(e.name, hit).value()); };
    out += std::string(first ? "" : ", ") + "{\"name\": " + json_quote(e.name) +
           ", \"version\": " + json_quote(e.version) + ", \"rows_hit\": " + std::to_string(rows(true)) +
           ", \"rows_missed\": " + std::to_string(rows(false)) + "}";
    first = false;
  }
  out += "]";
  if (versions) {
    std::map<std::string, std::string> serving;
    for (const engine::EncoderInfo &e : engine_.encoders())
      serving[e.name] = e.version;
    const std::vector<cache::TierStats> tiers = cache_->stats();
    const std::vector<std::vector<cache::VersionStats>> by_tier = cache_->versions();
    out += ", \"versions\": [";
    first = true;
    for (size_t t = 0; t < by_tier.size(); ++t) {
      for (const cache::VersionStats &v : by_tier[t]) {
        auto it = serving.find(v.encoder);
        const bool now = it != serving.end() && it->second == v.version;
        out += std::string(first ? "" : ", ") + "{\"tier\": " + json_quote(tiers[t].tier) +
               ", \"encoder\": " + json_quote(v.encoder) + ", \"version\": " + json_quote(v.version) +
               ", \"entries\": " + std::to_string(v.entries) + ", \"bytes\": " + std::to_string(v.bytes) +
               ", \"serving\": " + (now ? "true" : "false") + "}";
        first = false;
      }
    }
    out += "]";
  }
  return out + "}";
}

std::string CacheService::prune(const std::string &body) {
  YAML::Node root;
  try {
    root = body.empty() ? YAML::Node(YAML::NodeType::Map) : YAML::Load(body);
  } catch (const YAML::Exception &e) {
    bad(std::string("prune body is not valid JSON: ") + e.what());
  }
  if (!root.IsMap()) bad("prune body must be a JSON object");
  cache::PruneSpec spec;
  bool any = false;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string key = it->first.Scalar();
    // A copy (Node is a handle): yaml-cpp's it->second lives in a temporary proxy that dies at
    // the end of this statement, so a reference would dangle (found by fuzz_http).
    const YAML::Node v = it->second;
    auto number = [&](const char *what) -> uint64_t {
      try {
        const long long n = v.as<long long>();
        if (n < 0) throw YAML::Exception(YAML::Mark(), "negative");
        return static_cast<uint64_t>(n);
      } catch (const YAML::Exception &) {
        bad(std::string("prune.") + what + " must be a non-negative integer");
      }
    };
    if (key == "version") {
      spec.version = v.Scalar();
    } else if (key == "encoder") {
      spec.encoder = v.Scalar();
    } else if (key == "older_than_s") {
      spec.older_than_unix_ms = cache::now_unix_ms() - static_cast<int64_t>(number("older_than_s")) * 1000;
    } else if (key == "max_bytes") {
      spec.max_bytes = number("max_bytes");
    } else if (key == "stale") {
      if (v.Scalar() != "true" && v.Scalar() != "false") bad("prune.stale must be true or false");
      if (v.Scalar() == "true") {
        for (const engine::EncoderInfo &e : engine_.encoders())
          spec.stale_except[e.name] = e.version;
      }
    } else {
      bad("prune: unknown key '" + key + "' (known: version, encoder, older_than_s, max_bytes, stale)");
    }
    any = true;
  }
  if (!any) bad("prune: give at least one of version, older_than_s, max_bytes, stale");
  if (spec.encoder && !spec.version) bad("prune.encoder narrows prune.version: give a version too");
  flush();
  const cache::PruneResult r = cache_->prune(spec);
  return "{\"entries\": " + std::to_string(r.entries) + ", \"bytes\": " + std::to_string(r.bytes) + "}";
}

} // namespace jit::server
