// Entry: one sample's outputs as one codec frame, tagged in its meta with the key it was stored
// under, the encoder, the encoder's version and the creation time. Also the metric series of a tier.
#include <chrono>
#include <string>
#include <utility>

#include <msgpack.hpp>

#include "cache/cache.h"
#include "cache/cache_internal.h"
#include "codec/codec.h"

namespace jit::cache {

using internal::EntryMeta;

int64_t now_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

// Keeps a frame and its decoded tensors alive together: every tensor of an Entry shares it.
struct Holder {
  std::shared_ptr<const std::string> frame;
  codec::DecodedFrame decoded;
};

bool str_of(const msgpack::object &o, std::string &out) {
  if (o.type != msgpack::type::STR) return false;
  out.assign(o.via.str.ptr, o.via.str.size);
  return true;
}

std::optional<EntryMeta> meta_from_object(const msgpack::object &obj) {
  if (obj.type != msgpack::type::MAP) return std::nullopt;
  EntryMeta m;
  bool have_key = false, have_encoder = false, have_version = false, have_created = false;
  for (uint32_t i = 0; i < obj.via.map.size; ++i) {
    const auto &kv = obj.via.map.ptr[i];
    std::string k;
    if (!str_of(kv.key, k)) continue;
    if (k == "cache_key")
      have_key = str_of(kv.val, m.key_hex);
    else if (k == "encoder")
      have_encoder = str_of(kv.val, m.encoder);
    else if (k == "version")
      have_version = str_of(kv.val, m.version);
    else if (k == "created_ms") {
      if (kv.val.type == msgpack::type::POSITIVE_INTEGER) {
        m.created_ms = static_cast<int64_t>(kv.val.via.u64);
        have_created = true;
      } else if (kv.val.type == msgpack::type::NEGATIVE_INTEGER) {
        m.created_ms = kv.val.via.i64;
        have_created = true;
      }
    }
  }
  if (!have_key || !have_encoder || !have_version || !have_created) return std::nullopt;
  return m;
}

} // namespace

namespace internal {

std::optional<EntryMeta> parse_meta(const std::string &meta_msgpack) {
  if (meta_msgpack.empty()) return std::nullopt;
  try {
    msgpack::object_handle oh = msgpack::unpack(meta_msgpack.data(), meta_msgpack.size());
    return meta_from_object(oh.get());
  } catch (const std::exception &) {
    return std::nullopt;
  }
}

std::optional<EntryMeta> peek_meta(const uint8_t *buf, size_t len) {
  try {
    codec::FrameInfo info = codec::describe(buf, len);
    if (info.frame_bytes != len) return std::nullopt;
    msgpack::object_handle oh = msgpack::unpack(info.envelope_msgpack.data(), info.envelope_msgpack.size());
    const msgpack::object &env = oh.get();
    if (env.type != msgpack::type::MAP) return std::nullopt;
    for (uint32_t i = 0; i < env.via.map.size; ++i) {
      const auto &kv = env.via.map.ptr[i];
      if (kv.key.type == msgpack::type::STR && std::string(kv.key.via.str.ptr, kv.key.via.str.size) == "meta")
        return meta_from_object(kv.val);
    }
  } catch (const std::exception &) {
  }
  return std::nullopt;
}

bool prune_selects(const PruneSpec &spec, const EntryMeta &meta) {
  if (spec.version && meta.version == *spec.version && (!spec.encoder || meta.encoder == *spec.encoder)) return true;
  if (spec.older_than_unix_ms && meta.created_ms < *spec.older_than_unix_ms) return true;
  auto serving = spec.stale_except.find(meta.encoder);
  return serving != spec.stale_except.end() && serving->second != meta.version;
}

} // namespace internal

Entry Entry::make(const CacheKey &key, std::string_view encoder, std::string_view version,
                  const std::vector<TensorView> &outputs, int64_t created_unix_ms) {
  if (created_unix_ms == 0) created_unix_ms = now_unix_ms();
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(4);
  pk.pack(std::string("cache_key"));
  pk.pack(key.hex());
  pk.pack(std::string("encoder"));
  pk.pack(std::string(encoder));
  pk.pack(std::string("version"));
  pk.pack(std::string(version));
  pk.pack(std::string("created_ms"));
  pk.pack(created_unix_ms);
  std::string frame;
  try {
    // Uncompressed: embeddings are near-random floats (zstd gains little), and decoding then
    // copies nothing, so a memory hit costs one parse of the envelope.
    frame = codec::encode(outputs, std::string(sb.data(), sb.size()), codec::EncodeOptions{});
  } catch (const codec::CodecError &e) {
    throw CacheError(std::string("cannot encode a cache entry: ") + e.what());
  }
  auto parsed = parse(key, std::make_shared<const std::string>(std::move(frame)));
  if (!parsed) throw CacheError("cannot encode a cache entry: it does not decode");
  return std::move(*parsed);
}

std::optional<Entry> Entry::parse(const CacheKey &key, std::shared_ptr<const std::string> frame, std::string *why) {
  auto fail = [&](std::string reason) -> std::optional<Entry> {
    if (why) *why = std::move(reason);
    return std::nullopt;
  };
  if (!frame) return fail("no value");
  auto holder = std::make_shared<Holder>();
  holder->frame = std::move(frame);
  try {
    holder->decoded = codec::decode(reinterpret_cast<const uint8_t *>(holder->frame->data()), holder->frame->size());
  } catch (const codec::CodecError &e) {
    return fail(e.what());
  }
  auto meta = internal::parse_meta(holder->decoded.meta_msgpack);
  if (!meta) return fail("bad meta: not a cache entry");
  if (meta->key_hex != key.hex()) return fail("wrong key: the value belongs to " + meta->key_hex);
  Entry e;
  e.frame_ = holder->frame;
  e.encoder_ = std::move(meta->encoder);
  e.version_ = std::move(meta->version);
  e.created_ms_ = meta->created_ms;
  e.tensors_.reserve(holder->decoded.tensors.size());
  for (const auto &d : holder->decoded.tensors) {
    Tensor t;
    t.name = d.name;
    t.dtype = d.dtype;
    t.shape = d.shape;
    t.owner = holder;
    t.data = d.data;
    t.nbytes = d.nbytes;
    e.tensors_.push_back(std::move(t));
  }
  return e;
}

TierMetrics::TierMetrics(metrics::Registry &r, const std::string &tier)
    : hits(r.counter("jit_cache_hits_total", "Cache hits by tier", {{"tier", tier}})),
      misses(r.counter("jit_cache_misses_total", "Cache misses by tier", {{"tier", tier}})),
      evictions(r.counter("jit_cache_evictions_total", "Entries evicted or pruned by tier", {{"tier", tier}})),
      corrupt(r.counter("jit_cache_corrupt_total", "Corrupted, truncated or misplaced entries found, by tier",
                        {{"tier", tier}})),
      write_errors(r.counter("jit_cache_write_errors_total",
                             "Cache writes a tier failed to store (full disk, unreachable Redis), by tier",
                             {{"tier", tier}})),
      bytes(r.gauge("jit_cache_bytes", "Bytes held by tier (approximate for rocksdb)", {{"tier", tier}})) {}

TierStats TierMetrics::stats(const std::string &tier) const {
  TierStats st;
  st.tier = tier;
  st.hits = static_cast<uint64_t>(hits.value());
  st.misses = static_cast<uint64_t>(misses.value());
  st.evictions = static_cast<uint64_t>(evictions.value());
  st.corrupt = static_cast<uint64_t>(corrupt.value());
  return st;
}

} // namespace jit::cache
