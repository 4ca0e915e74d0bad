// CacheKey: 128-bit XXH3 over length-prefixed fields, so that no two different (encoder, version,
// params, inputs) tuples frame to the same byte stream.
//
// A key is two hashes: the sample's content digest (what a client can compute without knowing the
// encoder's version), then that digest bound to the encoder and its version (which only the
// server knows for sure). The framing (all integers little-endian u64 unless noted) is part of
// the on-disk contract: a change to it changes every key, which is safe (old entries simply
// miss) but empties every cache.
//   content: domain tag "jit-cache-key/v2" (length-prefixed), then a kind byte:
//     'I' inputs: field(params) u64(count) then per input, in name order:
//          field(name) field(dtype name) u64(rank) i64(dim)... field(data)
//     'S' sample key: field(sample key)
//   key: domain tag, 'B', field(encoder) field(version) u64(content high) u64(content low)
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

constexpr std::string_view kDomain = "jit-cache-key/v2";

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

// One input of a sample as it is hashed: its row shape and the (possibly strided) bytes of it.
struct RowInput {
  const TensorView *tensor;
  Shape shape;                                         // without the batch dimension, seq dim cut
  std::vector<std::pair<const char *, size_t>> chunks; // the row's bytes, in C order
  size_t nbytes = 0;
};

void check_tensor(const TensorView &t) {
  auto numel = shape_numel(t.shape);
  if (!numel || *numel * dtype_itemsize(t.dtype) != t.nbytes)
    throw CacheError("input '" + t.name + "': " + std::to_string(t.nbytes) + " bytes do not match its shape and dtype");
  if (t.nbytes > 0 && t.data == nullptr) throw CacheError("input '" + t.name + "' has no data");
}

CacheKey hash_content(std::string_view params, std::vector<RowInput> &inputs) {
  std::sort(inputs.begin(), inputs.end(),
            [](const RowInput &a, const RowInput &b) { return a.tensor->name < b.tensor->name; });
  for (size_t i = 1; i < inputs.size(); ++i) {
    if (inputs[i - 1].tensor->name == inputs[i].tensor->name)
      throw CacheError("duplicate input name '" + inputs[i].tensor->name + "' in a cache key");
  }
  KeyHasher h;
  h.field(kDomain);
  h.byte('I');
  h.field(params);
  h.u64(inputs.size());
  for (const RowInput &in : inputs) {
    h.field(in.tensor->name);
    h.field(dtype_name(in.tensor->dtype));
    h.u64(in.shape.size());
    for (int64_t d : in.shape)
      h.u64(static_cast<uint64_t>(d));
    h.u64(in.nbytes);
    for (const auto &[p, n] : in.chunks)
      h.raw(p, n);
  }
  return h.digest();
}

} // namespace

CacheKey CacheKey::content_of_inputs(std::string_view params, const std::vector<TensorView> &inputs) {
  std::vector<RowInput> rows;
  rows.reserve(inputs.size());
  for (const TensorView &t : inputs) {
    check_tensor(t);
    rows.push_back({&t, t.shape, {{static_cast<const char *>(t.data), t.nbytes}}, t.nbytes});
  }
  return hash_content(params, rows);
}

CacheKey CacheKey::content_of_row(std::string_view params, const std::vector<TensorView> &inputs, int64_t row,
                                  const std::vector<int> &seq_dims, int64_t length) {
  if (!seq_dims.empty() && seq_dims.size() != inputs.size())
    throw CacheError("content_of_row: seq_dims must be empty or one per input");
  std::vector<RowInput> rows;
  rows.reserve(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorView &t = inputs[i];
    check_tensor(t);
    if (t.shape.empty() || row < 0 || row >= t.shape[0])
      throw CacheError("input '" + t.name + "' has no row " + std::to_string(row));
    RowInput in{&t, Shape(t.shape.begin() + 1, t.shape.end()), {}, 0};
    const size_t row_bytes = t.nbytes / static_cast<size_t>(t.shape[0]);
    const char *base = static_cast<const char *>(t.data) + static_cast<size_t>(row) * row_bytes;
    const int sd = seq_dims.empty() ? -1 : seq_dims[i];
    if (sd < 1 || length < 0 || length == t.shape[static_cast<size_t>(sd)]) {
      in.chunks.push_back({base, row_bytes});
      in.nbytes = row_bytes;
    } else {
      if (static_cast<size_t>(sd) >= t.shape.size())
        throw CacheError("input '" + t.name + "': seq_dim " + std::to_string(sd) + " is past its rank");
      const int64_t padded = t.shape[static_cast<size_t>(sd)];
      if (length > padded)
        throw CacheError("input '" + t.name + "': length " + std::to_string(length) + " is past its padded length " +
                         std::to_string(padded));
      // Row shape [outer..., padded, inner...]: the first `length` of every `padded` run.
      size_t outer = 1, inner = dtype_itemsize(t.dtype);
      for (int d = 1; d < sd; ++d)
        outer *= static_cast<size_t>(t.shape[static_cast<size_t>(d)]);
      for (size_t d = static_cast<size_t>(sd) + 1; d < t.shape.size(); ++d)
        inner *= static_cast<size_t>(t.shape[d]);
      const size_t keep = static_cast<size_t>(length) * inner, stride = static_cast<size_t>(padded) * inner;
      for (size_t o = 0; o < outer; ++o) {
        if (keep > 0) in.chunks.push_back({base + o * stride, keep});
      }
      in.nbytes = outer * keep;
      in.shape[static_cast<size_t>(sd) - 1] = length;
    }
    rows.push_back(std::move(in));
  }
  return hash_content(params, rows);
}

CacheKey CacheKey::content_of_sample_key(std::string_view sample_key) {
  KeyHasher h;
  h.field(kDomain);
  h.byte('S');
  h.field(sample_key);
  return h.digest();
}

CacheKey CacheKey::bind(std::string_view encoder, std::string_view version, const CacheKey &content) {
  KeyHasher h;
  h.field(kDomain);
  h.byte('B');
  h.field(encoder);
  h.field(version);
  h.u64(content.high());
  h.u64(content.low());
  return h.digest();
}

CacheKey CacheKey::for_inputs(std::string_view encoder, std::string_view version, std::string_view params,
                              const std::vector<TensorView> &inputs) {
  return bind(encoder, version, content_of_inputs(params, inputs));
}

CacheKey CacheKey::for_sample_key(std::string_view encoder, std::string_view version, std::string_view sample_key) {
  return bind(encoder, version, content_of_sample_key(sample_key));
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
