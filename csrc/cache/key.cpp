// CacheKey: 128-bit XXH3 over length-prefixed fields, so that no two different (encoder, version,
// params, inputs) tuples frame to the same byte stream.
//
// The framing (all integers little-endian u64 unless noted) is part of the on-disk contract: a
// change to it changes every key, which is safe (old entries simply miss) but empties every cache.
//   domain tag "jit-cache-key/v1" (length-prefixed), then a kind byte: 'I' inputs, 'S' sample key
//   field(encoder) field(version)
//   'I': field(params) u64(count) then per input, in name order:
//        field(name) field(dtype name) u64(rank) i64(dim)... field(data)
//   'S': field(sample key)
// where field(x) = u64(len(x)) followed by the bytes of x.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#define XXH_INLINE_ALL // header-only, as in the codec: no libxxhash to link
#include <xxhash.h>

#include "cache/cache.h"

namespace jit::cache {

namespace {

constexpr std::string_view kDomain = "jit-cache-key/v1";

class KeyHasher {
public:
  KeyHasher() {
    state_ = XXH3_createState();
    if (state_ == nullptr) throw CacheError("out of memory: XXH3_createState");
    XXH3_128bits_reset(state_);
  }
  ~KeyHasher() { XXH3_freeState(state_); }
  KeyHasher(const KeyHasher &) = delete;
  KeyHasher &operator=(const KeyHasher &) = delete;

  void raw(const void *p, size_t n) {
    if (n > 0) XXH3_128bits_update(state_, p, n);
  }
  void u64(uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; ++i)
      b[i] = static_cast<uint8_t>(v >> (8 * i));
    raw(b, sizeof(b));
  }
  void field(const void *p, size_t n) {
    u64(n);
    raw(p, n);
  }
  void field(std::string_view s) { field(s.data(), s.size()); }
  void byte(uint8_t b) { raw(&b, 1); }

  CacheKey digest() const {
    XXH128_hash_t h = XXH3_128bits_digest(state_);
    return CacheKey(h.high64, h.low64);
  }

private:
  XXH3_state_t *state_ = nullptr;
};

} // namespace

CacheKey CacheKey::for_inputs(std::string_view encoder, std::string_view version, std::string_view params,
                              const std::vector<TensorView> &inputs) {
  std::vector<const TensorView *> sorted;
  sorted.reserve(inputs.size());
  for (const auto &t : inputs)
    sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(), [](const TensorView *a, const TensorView *b) { return a->name < b->name; });
  for (size_t i = 0; i < sorted.size(); ++i) {
    const TensorView &t = *sorted[i];
    if (i > 0 && sorted[i - 1]->name == t.name)
      throw CacheError("duplicate input name '" + t.name + "' in a cache key");
    auto numel = shape_numel(t.shape);
    if (!numel || *numel * dtype_itemsize(t.dtype) != t.nbytes)
      throw CacheError("input '" + t.name + "': " + std::to_string(t.nbytes) +
                       " bytes do not match its shape and dtype");
    if (t.nbytes > 0 && t.data == nullptr) throw CacheError("input '" + t.name + "' has no data");
  }

  KeyHasher h;
  h.field(kDomain);
  h.byte('I');
  h.field(encoder);
  h.field(version);
  h.field(params);
  h.u64(sorted.size());
  for (const TensorView *t : sorted) {
    h.field(t->name);
    h.field(dtype_name(t->dtype));
    h.u64(t->shape.size());
    for (int64_t d : t->shape)
      h.u64(static_cast<uint64_t>(d));
    h.field(t->data, t->nbytes);
  }
  return h.digest();
}

CacheKey CacheKey::for_sample_key(std::string_view encoder, std::string_view version, std::string_view sample_key) {
  KeyHasher h;
  h.field(kDomain);
  h.byte('S');
  h.field(encoder);
  h.field(version);
  h.field(sample_key);
  return h.digest();
}

std::string CacheKey::hex() const {
  static const char digits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = digits[(hi_ >> (4 * i)) & 0xf];
    out[31 - i] = digits[(lo_ >> (4 * i)) & 0xf];
  }
  return out;
}

std::optional<CacheKey> CacheKey::from_hex(std::string_view hex) {
  if (hex.size() != 32) return std::nullopt;
  uint64_t halves[2] = {0, 0};
  for (size_t i = 0; i < 32; ++i) {
    char c = hex[i];
    uint64_t v;
    if (c >= '0' && c <= '9')
      v = static_cast<uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f')
      v = static_cast<uint64_t>(c - 'a' + 10);
    else
      return std::nullopt;
    halves[i / 16] = (halves[i / 16] << 4) | v;
  }
  return CacheKey(halves[0], halves[1]);
}

} // namespace jit::cache
