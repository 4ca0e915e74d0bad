// Helpers shared by the codec tests (test_codec_*.cpp, all linked into the one test_codec binary).
//
// jit::codec::test_util holds what the encoder-side tests share: reading an encoder-written frame
// back (header fields, the envelope as msgpack-c sees it), test inputs, and assertions. They are
// inline functions, one definition for the whole binary. (Not named `testing`, so that an unqualified
// `testing::` inside jit::codec still means GoogleTest's namespace.)
//
// The unnamed namespace below holds the hand-built frames of the malformed-frame tests. They hash
// with xxhash compiled inline (XXH_INLINE_ALL gives xxhash's functions internal linkage), so
// everything that calls it has internal linkage too: each test file gets its own copy, rather than
// an inline function whose one definition would call a different static function in each file.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "codec/codec.h"

namespace jit::codec::test_util {

inline const uint8_t *u8(const std::string &s) {
  return reinterpret_cast<const uint8_t *>(s.data());
}

inline DecodedFrame decode_str(const std::string &frame, const DecodeOptions &opt = {}) {
  return decode(u8(frame), frame.size(), opt);
}

inline uint32_t load_u32(const std::string &s, size_t off) {
  uint32_t v;
  std::memcpy(&v, s.data() + off, 4);
  return v;
}

inline uint64_t load_u64(const std::string &s, size_t off) {
  uint64_t v;
  std::memcpy(&v, s.data() + off, 8);
  return v;
}

inline uint64_t envelope_nbytes(const std::string &frame) {
  return load_u32(frame, 8);
}
inline uint64_t payload_base(const std::string &frame) {
  return (32 + envelope_nbytes(frame) + 63) / 64 * 64;
}

// One entry of an encoder-written envelope, read with msgpack-c directly rather than through the
// decoder, so these tests check the bytes on the wire.
struct WireEntry {
  std::string name, dtype, codec, filter;
  bool has_filter = false;
  std::vector<uint64_t> shape;
  uint64_t offset = 0, nbytes = 0, raw_nbytes = 0, checksum = 0, chunk_size = 0;
  bool has_chunks = false;
  std::vector<uint64_t> chunks;
};

struct WireEnvelope {
  std::vector<WireEntry> entries;
  bool has_meta = false;
  std::string meta; // the meta value's bytes as stored
};

inline const msgpack::object *find_key(const msgpack::object &map, const std::string &key) {
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const auto &k = map.via.map.ptr[i].key;
    if (k.type == msgpack::type::STR && std::string(k.via.str.ptr, k.via.str.size) == key) {
      return &map.via.map.ptr[i].val;
    }
  }
  return nullptr;
}

inline WireEnvelope parse_envelope(const std::string &frame) {
  msgpack::object_handle oh = msgpack::unpack(frame.data() + 32, static_cast<size_t>(envelope_nbytes(frame)));
  const msgpack::object &root = oh.get();
  WireEnvelope env;
  EXPECT_EQ(root.type, msgpack::type::MAP);
  const msgpack::object *tensors = find_key(root, "tensors");
  EXPECT_NE(tensors, nullptr);
  if (tensors == nullptr) return env;
  for (uint32_t i = 0; i < tensors->via.array.size; ++i) {
    const msgpack::object &m = tensors->via.array.ptr[i];
    WireEntry e;
    e.name = find_key(m, "name")->as<std::string>();
    e.dtype = find_key(m, "dtype")->as<std::string>();
    e.codec = find_key(m, "codec")->as<std::string>();
    if (const auto *f = find_key(m, "filter")) {
      e.has_filter = true;
      e.filter = f->as<std::string>();
    }
    e.shape = find_key(m, "shape")->as<std::vector<uint64_t>>();
    e.offset = find_key(m, "offset")->as<uint64_t>();
    e.nbytes = find_key(m, "nbytes")->as<uint64_t>();
    e.raw_nbytes = find_key(m, "raw_nbytes")->as<uint64_t>();
    e.checksum = find_key(m, "checksum")->as<uint64_t>();
    if (const auto *c = find_key(m, "chunk_size")) e.chunk_size = c->as<uint64_t>();
    if (const auto *c = find_key(m, "chunks")) {
      e.has_chunks = true;
      e.chunks = c->as<std::vector<uint64_t>>();
    }
    env.entries.push_back(e);
  }
  // The meta value's own bytes: walk the root map one msgpack value at a time.
  const char *p = frame.data() + 32;
  const size_t n = static_cast<size_t>(envelope_nbytes(frame));
  const uint8_t tag = static_cast<uint8_t>(p[0]);
  size_t off = 1;
  uint32_t pairs = tag & 0x0f;
  if (tag == 0xde) {
    pairs = (static_cast<uint8_t>(p[1]) << 8) | static_cast<uint8_t>(p[2]);
    off = 3;
  }
  EXPECT_TRUE((tag & 0xf0) == 0x80 || tag == 0xde) << "unexpected root map header " << int(tag);
  for (uint32_t i = 0; i < pairs; ++i) {
    msgpack::object_handle key = msgpack::unpack(p, n, off);
    const size_t value_begin = off;
    msgpack::unpack(p, n, off);
    if (key.get().type == msgpack::type::STR && key.get().as<std::string>() == "meta") {
      env.has_meta = true;
      env.meta.assign(p + value_begin, off - value_begin);
    }
  }
  return env;
}

// Bytes for `numel` elements of `dtype` that vary slowly, so that zstd compresses them well.
inline std::vector<uint8_t> smooth_bytes(DType dtype, size_t numel) {
  const size_t k = dtype_itemsize(dtype);
  std::vector<uint8_t> out(numel * k);
  static const std::string kText = "jit-embedding h\xc3\xa9llo w\xc3\xb6rld, ";
  for (size_t i = 0; i < numel; ++i) {
    uint8_t *p = out.data() + i * k;
    switch (dtype) {
    case DType::kFloat32: {
      float f = 0.25f * static_cast<float>(i % 97);
      std::memcpy(p, &f, 4);
      break;
    }
    case DType::kBool: p[0] = static_cast<uint8_t>((i / 5) % 2); break;
    case DType::kStr: p[0] = static_cast<uint8_t>(kText[i % kText.size()]); break;
    default: {
      uint64_t v = 0x3c00 + (i / 3) % 61; // little-endian, truncated to the itemsize
      std::memcpy(p, &v, k);
      break;
    }
    }
  }
  return out;
}

inline std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto &b : out)
    b = static_cast<uint8_t>(rng());
  return out;
}

inline TensorView view(const std::string &name, DType dtype, Shape shape, const std::vector<uint8_t> &bytes) {
  return {name, dtype, std::move(shape), bytes.data(), bytes.size()};
}

// Checks that `got` holds exactly the name, dtype, shape and bytes of `want`.
inline void expect_same_tensor(const TensorView &want, const DecodedTensor &got) {
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.dtype, want.dtype);
  EXPECT_EQ(got.shape, want.shape);
  ASSERT_EQ(got.nbytes, want.nbytes) << want.name;
  if (want.nbytes > 0) {
    ASSERT_NE(got.data, nullptr);
    EXPECT_EQ(std::memcmp(got.data, want.data, want.nbytes), 0) << want.name;
  }
}

inline EncodeOptions zstd_options(bool shuffle = true, size_t chunk_bytes = 1u << 20) {
  EncodeOptions opt;
  opt.compression = Compression::kZstd;
  opt.shuffle = shuffle;
  opt.chunk_bytes = chunk_bytes;
  return opt;
}

inline std::string pack_rich_meta() {
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(4);
  pk.pack(std::string("encoder"));
  pk.pack(std::string("clip-vit-l14"));
  pk.pack(std::string("ids"));
  pk.pack_array(3);
  pk.pack_uint64(1);
  pk.pack_uint64(std::numeric_limits<uint64_t>::max());
  pk.pack_int64(-7);
  pk.pack(std::string("params"));
  pk.pack_map(7);
  pk.pack(std::string("f64"));
  pk.pack_double(0.1);
  pk.pack(std::string("f32"));
  pk.pack_float(2.5f);
  pk.pack(std::string("flag"));
  pk.pack_true();
  pk.pack(std::string("none"));
  pk.pack_nil();
  pk.pack(std::string("bin"));
  pk.pack_bin(4);
  pk.pack_bin_body("\x00\xff\x01\xfe", 4);
  pk.pack(std::string("ext"));
  pk.pack_ext(3, 5);
  pk.pack_ext_body("abc", 3);
  pk.pack(std::string("nested"));
  pk.pack_array(2);
  pk.pack_array(0);
  pk.pack_map(1);
  pk.pack_uint64(5); // a non-string key
  pk.pack(std::string("five"));
  pk.pack(std::string("cache"));
  pk.pack(std::string("use"));
  return std::string(sb.data(), sb.size());
}

} // namespace jit::codec::test_util

namespace jit::codec {
namespace {

// ---- hand-built frames for the malformed-frame tests ---------------------------------------------
//
// Every frame here is laid out by hand, independently of the encoder: msgpack-c packs the envelope,
// XXH3-64 gives the header and payload checksums, and compressed payloads are zstd frames holding
// one raw block, written byte by byte. Each test starts from one valid frame (checked to decode in
// BaseFrame.DecodesToTheHandWrittenValues) and changes exactly one thing, recomputing every other
// checksum and length, so that the intended defect is the only one present.

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// ---- msgpack values and maps -------------------------------------------------------------------

using Packer = msgpack::packer<msgpack::sbuffer>;
using Value = std::function<void(Packer &)>; // packs one msgpack value

inline Value uint_v(uint64_t v) {
  return [v](Packer &pk) { pk.pack_uint64(v); };
}
inline Value int_v(int64_t v) {
  return [v](Packer &pk) { pk.pack_int64(v); };
}
// Appends bytes verbatim (pack_bin_body writes its argument without a header).
inline void pack_raw(Packer &pk, const std::string &bytes) {
  pk.pack_bin_body(bytes.data(), static_cast<uint32_t>(bytes.size()));
}
// A msgpack float64 (0xcb) even for integral values, which msgpack-c's pack_double() writes as integers.
inline Value f64_v(double v) {
  return [v](Packer &pk) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    std::string b = "\xcb";
    for (int i = 0; i < 8; ++i)
      b += static_cast<char>(bits >> (56 - 8 * i));
    pack_raw(pk, b);
  };
}
inline Value nil_v() {
  return [](Packer &pk) { pk.pack_nil(); };
}
inline Value str_v(std::string s) {
  return [s](Packer &pk) { pk.pack(s); };
}
inline Value bin_v(std::string s) {
  return [s](Packer &pk) {
    pk.pack_bin(static_cast<uint32_t>(s.size()));
    pk.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
  };
}
inline Value array_v(std::vector<Value> items) {
  return [items](Packer &pk) {
    pk.pack_array(static_cast<uint32_t>(items.size()));
    for (const auto &v : items)
      v(pk);
  };
}
inline Value uints_v(const std::vector<uint64_t> &xs) {
  std::vector<Value> items;
  for (uint64_t x : xs)
    items.push_back(uint_v(x));
  return array_v(items);
}
// `levels` nested one-element arrays around the integer 1: [[[1]]] for 3.
inline Value nested_v(int levels) {
  return levels == 0 ? uint_v(1) : array_v({nested_v(levels - 1)});
}

// A msgpack map with string keys, kept in insertion order, editable key by key.
class Map {
public:
  Map &set(const std::string &key, Value v) {
    for (auto &kv : items_) {
      if (kv.first == key) {
        kv.second = std::move(v);
        return *this;
      }
    }
    items_.emplace_back(key, std::move(v));
    return *this;
  }
  Map &erase(const std::string &key) {
    for (auto it = items_.begin(); it != items_.end(); ++it) {
      if (it->first == key) {
        items_.erase(it);
        return *this;
      }
    }
    ADD_FAILURE() << "no key '" << key << "' to erase";
    return *this;
  }
  const std::vector<std::pair<std::string, Value>> &items() const { return items_; }
  Value value() const {
    auto items = items_;
    return [items](Packer &pk) {
      pk.pack_map(static_cast<uint32_t>(items.size()));
      for (const auto &kv : items) {
        pk.pack(kv.first);
        kv.second(pk);
      }
    };
  }

private:
  std::vector<std::pair<std::string, Value>> items_;
};

inline std::string pack(const Value &v) {
  msgpack::sbuffer sb;
  Packer pk(sb);
  v(pk);
  return std::string(sb.data(), sb.size());
}

// ---- payload bytes -----------------------------------------------------------------------------

inline uint64_t xxh3(const std::string &s) {
  return XXH3_64bits(s.data(), s.size());
}

inline uint64_t align64(uint64_t n) {
  return (n + 63) / 64 * 64;
}

// The byte shuffle of docs/wire-format.md: byte j of element i goes to position j * n + i.
inline std::string shuffle_bytes(const std::string &raw, size_t k) {
  const size_t n = raw.size() / k;
  std::string out(raw.size(), '\0');
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < k; ++j)
      out[j * n + i] = raw[i * k + j];
  }
  return out;
}

// One complete zstd frame (RFC 8878) holding `content` in a single raw block: magic, a frame header
// with Single_Segment set and a 4-byte Frame_Content_Size, then one last raw block.
inline std::string zstd_raw_frame(const std::string &content) {
  std::string f = "\x28\xb5\x2f\xfd";
  f += '\xa0'; // Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag 1, no checksum, no dictionary
  const uint32_t size = static_cast<uint32_t>(content.size());
  for (int i = 0; i < 4; ++i)
    f += static_cast<char>(size >> (8 * i));
  const uint32_t block = 1u | (0u << 1) | (size << 3); // Last_Block, Block_Type Raw, Block_Size
  for (int i = 0; i < 3; ++i)
    f += static_cast<char>(block >> (8 * i));
  return f + content;
}

// A compressed payload: the concatenated zstd frames and each one's length.
struct Chunks {
  std::string stored;
  std::vector<uint64_t> lens;
  void add(const std::string &zstd_frame) {
    stored += zstd_frame;
    lens.push_back(zstd_frame.size());
  }
};

// Cuts `raw` into chunks of `chunk_size` bytes, shuffles each one on its own when `shuffle_k` > 1,
// and wraps each in a zstd frame.
inline Chunks zstd_chunks(const std::string &raw, size_t chunk_size, size_t shuffle_k) {
  Chunks c;
  for (size_t off = 0; off < raw.size(); off += chunk_size) {
    std::string piece = raw.substr(off, chunk_size);
    c.add(zstd_raw_frame(shuffle_k > 1 ? shuffle_bytes(piece, shuffle_k) : piece));
  }
  return c;
}

// The payload region: each payload starts at the next multiple of 64, padding is zero.
class Payload {
public:
  uint64_t add(const std::string &bytes) {
    bytes_.resize(align64(bytes_.size()), '\0');
    const uint64_t off = bytes_.size();
    bytes_ += bytes;
    return off;
  }
  std::string &bytes() { return bytes_; }
  const std::string &bytes() const { return bytes_; }

private:
  std::string bytes_;
};

// ---- entries, header, frame --------------------------------------------------------------------

inline Map none_entry(const std::string &name, const std::string &dtype, const std::vector<uint64_t> &shape,
                      uint64_t offset, const std::string &stored) {
  return Map()
      .set("name", str_v(name))
      .set("dtype", str_v(dtype))
      .set("shape", uints_v(shape))
      .set("offset", uint_v(offset))
      .set("nbytes", uint_v(stored.size()))
      .set("codec", str_v("none"))
      .set("raw_nbytes", uint_v(stored.size()))
      .set("checksum", uint_v(xxh3(stored)))
      .set("filter", str_v("none"));
}

inline Map zstd_entry(const std::string &name, const std::string &dtype, const std::vector<uint64_t> &shape,
                      uint64_t offset, const Chunks &chunks, uint64_t raw_nbytes, uint64_t chunk_size,
                      const std::string &filter) {
  return Map()
      .set("name", str_v(name))
      .set("dtype", str_v(dtype))
      .set("shape", uints_v(shape))
      .set("offset", uint_v(offset))
      .set("nbytes", uint_v(chunks.stored.size()))
      .set("codec", str_v("zstd"))
      .set("raw_nbytes", uint_v(raw_nbytes))
      .set("checksum", uint_v(xxh3(chunks.stored)))
      .set("filter", str_v(filter))
      .set("chunk_size", uint_v(chunk_size))
      .set("chunks", uints_v(chunks.lens));
}

// Fixed-header fields; unset optionals take the value that makes the frame consistent.
struct Header {
  std::string magic = "JEMB";
  uint8_t version = 1;
  uint8_t flags = 0;
  uint16_t reserved16 = 0;
  uint32_t reserved32 = 0;
  std::optional<uint32_t> envelope_nbytes;
  std::optional<uint64_t> payload_nbytes;
  std::optional<uint64_t> checksum;
};

template <typename T> void store_le(std::string &s, size_t off, T v) {
  std::memcpy(&s[off], &v, sizeof(T));
}

// Lays out a frame: the 32-byte header, the envelope, zero padding up to a multiple of 64, then the
// payload region. The header checksum covers header bytes [0, 24) and envelope_nbytes envelope bytes.
inline std::string assemble(const std::string &envelope, const std::string &payload, const Header &h = {}) {
  std::string f(32, '\0');
  std::memcpy(&f[0], h.magic.data(), 4);
  f[4] = static_cast<char>(h.version);
  f[5] = static_cast<char>(h.flags);
  store_le<uint16_t>(f, 6, h.reserved16);
  const uint32_t env_nbytes = h.envelope_nbytes.value_or(static_cast<uint32_t>(envelope.size()));
  store_le<uint32_t>(f, 8, env_nbytes);
  store_le<uint32_t>(f, 12, h.reserved32);
  store_le<uint64_t>(f, 16, h.payload_nbytes.value_or(payload.size()));
  f += envelope;
  f.resize(align64(f.size()), '\0');
  f += payload;
  const std::string covered = f.substr(0, 24) + f.substr(32, env_nbytes);
  store_le<uint64_t>(f, 24, h.checksum.value_or(xxh3(covered)));
  return f;
}

// The raw values of the base frame's two tensors.
inline std::string a_bytes() {
  std::string a(100, '\0');
  for (size_t i = 0; i < a.size(); ++i)
    a[i] = static_cast<char>(i * 7);
  return a;
}
inline std::string b_raw() {
  std::string b(256, '\0');
  for (size_t i = 0; i < 64; ++i) {
    float v = 0.5f * static_cast<float>(i) - 3.0f;
    std::memcpy(&b[i * 4], &v, 4);
  }
  return b;
}

// A frame under construction. The base frame holds
//   "a": uint8 [4, 25], codec none, at offset 0;
//   "b": float32 [64], codec zstd, filter shuffle, two chunks of 128 raw bytes, at offset 128.
struct Frame {
  std::vector<Map> entries;
  Map top; // top-level keys next to "tensors" (meta, unknown keys); a "tensors" key here replaces it
  Payload payload;
  Header header;

  std::string envelope() const {
    std::vector<Value> list;
    for (const Map &m : entries)
      list.push_back(m.value());
    Map root;
    root.set("tensors", array_v(list));
    for (const auto &kv : top.items())
      root.set(kv.first, kv.second);
    return pack(root.value());
  }
  std::string bytes() const { return assemble(envelope(), payload.bytes(), header); }
  Map &a() { return entries.at(0); }
  Map &b() { return entries.at(1); }
};

inline Frame base_frame() {
  Frame f;
  const std::string a = a_bytes();
  f.entries.push_back(none_entry("a", "uint8", {4, 25}, f.payload.add(a), a));
  const Chunks b = zstd_chunks(b_raw(), 128, 4);
  f.entries.push_back(zstd_entry("b", "float32", {64}, f.payload.add(b.stored), b, 256, 128, "shuffle"));
  return f;
}

// Replaces b's compressed payload (it stays last in the region) and its nbytes, checksum and chunks.
inline void set_b_chunks(Frame &f, const Chunks &c) {
  std::string &region = f.payload.bytes();
  region.resize(128);
  region += c.stored;
  f.b().set("nbytes", uint_v(c.stored.size())).set("checksum", uint_v(xxh3(c.stored))).set("chunks", uints_v(c.lens));
}

// ---- assertions --------------------------------------------------------------------------------

// The message of the CodecError that decode() throws, or a description of what happened instead.
inline std::string decode_error(const std::string &frame, const DecodeOptions &opt = {}) {
  try {
    decode(test_util::u8(frame), frame.size(), opt);
  } catch (const CodecError &e) {
    return e.what();
  } catch (const std::exception &e) {
    return std::string("<not a CodecError: ") + e.what() + ">";
  }
  return "<decoded without error>";
}

// decode() throws CodecError "<prefix>: ...", with `detail` somewhere in the message.
inline ::testing::AssertionResult Rejects(const std::string &frame, const std::string &prefix,
                                          const std::string &detail = "", const DecodeOptions &opt = {}) {
  const std::string msg = decode_error(frame, opt);
  if (msg.rfind(prefix + ": ", 0) != 0) {
    return ::testing::AssertionFailure() << "expected \"" << prefix << ": ...\", got \"" << msg << "\"";
  }
  if (msg.find(detail) == std::string::npos) {
    return ::testing::AssertionFailure() << "expected \"" << detail << "\" in \"" << msg << "\"";
  }
  return ::testing::AssertionSuccess();
}

inline ::testing::AssertionResult Decodes(const std::string &frame, const DecodeOptions &opt = {}) {
  try {
    decode(test_util::u8(frame), frame.size(), opt);
  } catch (const std::exception &e) {
    return ::testing::AssertionFailure() << "decode threw: " << e.what();
  }
  return ::testing::AssertionSuccess();
}

inline DecodeOptions with_limits(const std::function<void(CodecLimits &)> &edit) {
  DecodeOptions opt;
  edit(opt.limits);
  return opt;
}

} // namespace
} // namespace jit::codec
