// Round trips through the C++ codec API (encode, plan_encode + write, decode, describe), the layout
// guarantees of docs/wire-format.md that the encoder must keep (64-byte alignment, zero padding,
// frame length), determinism across thread counts, and the errors the encoder raises.
#include <gtest/gtest.h>

#include <sstream>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "codec/codec.h"

namespace jit::codec {
namespace {

// More threads than a small CI machine has cores, so that "one thread vs many" really compares two
// schedules. parallel_threads() reads this once, on first use; an explicit JIT_NUM_THREADS wins.
[[maybe_unused]] const bool kManyThreads = [] { return setenv("JIT_NUM_THREADS", "4", /*overwrite=*/0) == 0; }();

constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                                DType::kInt8,    DType::kUInt8,   DType::kInt16,    DType::kInt32,
                                DType::kInt64,   DType::kBool,    DType::kStr,      DType::kBytes};

const uint8_t *u8(const std::string &s) { return reinterpret_cast<const uint8_t *>(s.data()); }

DecodedFrame decode_str(const std::string &frame, const DecodeOptions &opt = {}) {
  return decode(u8(frame), frame.size(), opt);
}

uint32_t load_u32(const std::string &s, size_t off) {
  uint32_t v;
  std::memcpy(&v, s.data() + off, 4);
  return v;
}

uint64_t load_u64(const std::string &s, size_t off) {
  uint64_t v;
  std::memcpy(&v, s.data() + off, 8);
  return v;
}

uint64_t envelope_nbytes(const std::string &frame) { return load_u32(frame, 8); }
uint64_t payload_base(const std::string &frame) { return (32 + envelope_nbytes(frame) + 63) / 64 * 64; }

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

const msgpack::object *find_key(const msgpack::object &map, const std::string &key) {
  for (uint32_t i = 0; i < map.via.map.size; ++i) {
    const auto &k = map.via.map.ptr[i].key;
    if (k.type == msgpack::type::STR && std::string(k.via.str.ptr, k.via.str.size) == key) {
      return &map.via.map.ptr[i].val;
    }
  }
  return nullptr;
}

WireEnvelope parse_envelope(const std::string &frame) {
  msgpack::object_handle oh =
      msgpack::unpack(frame.data() + 32, static_cast<size_t>(envelope_nbytes(frame)));
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
std::vector<uint8_t> smooth_bytes(DType dtype, size_t numel) {
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

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> out(n);
  for (auto &b : out) b = static_cast<uint8_t>(rng());
  return out;
}

// Byte equality of two frames, reporting the sizes and the first difference. (EXPECT_EQ on
// multi-megabyte binary strings would print a line diff whose cost grows with the square of the size.)
::testing::AssertionResult SameBytes(const std::string &a, const std::string &b) {
  if (a == b) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return ::testing::AssertionFailure() << "byte strings differ: sizes " << a.size() << " and " << b.size()
                                       << ", first difference at offset " << i;
}

TensorView view(const std::string &name, DType dtype, Shape shape, const std::vector<uint8_t> &bytes) {
  return {name, dtype, std::move(shape), bytes.data(), bytes.size()};
}

// Checks that `got` holds exactly the name, dtype, shape and bytes of `want`.
void expect_same_tensor(const TensorView &want, const DecodedTensor &got) {
  EXPECT_EQ(got.name, want.name);
  EXPECT_EQ(got.dtype, want.dtype);
  EXPECT_EQ(got.shape, want.shape);
  ASSERT_EQ(got.nbytes, want.nbytes) << want.name;
  if (want.nbytes > 0) {
    ASSERT_NE(got.data, nullptr);
    EXPECT_EQ(std::memcmp(got.data, want.data, want.nbytes), 0) << want.name;
  }
}

EncodeOptions zstd_options(bool shuffle = true, size_t chunk_bytes = 1u << 20) {
  EncodeOptions opt;
  opt.compression = Compression::kZstd;
  opt.shuffle = shuffle;
  opt.chunk_bytes = chunk_bytes;
  return opt;
}

// --- dtypes -------------------------------------------------------------------------------------

TEST(CodecDTypes, NamesAndItemsizesMatchTheWireFormatTable) {
  struct Row {
    DType dtype;
    const char *name;
    size_t itemsize;
    bool floating;
  };
  // Transcribed from docs/wire-format.md, "Dtypes".
  const Row rows[] = {{DType::kFloat32, "float32", 4, true},
                      {DType::kFloat16, "float16", 2, true},
                      {DType::kBFloat16, "bfloat16", 2, true},
                      {DType::kFloat8E4M3, "float8_e4m3fn", 1, true},
                      {DType::kInt8, "int8", 1, false},
                      {DType::kUInt8, "uint8", 1, false},
                      {DType::kInt16, "int16", 2, false},
                      {DType::kInt32, "int32", 4, false},
                      {DType::kInt64, "int64", 8, false},
                      {DType::kBool, "bool", 1, false},
                      {DType::kStr, "str", 1, false},
                      {DType::kBytes, "bytes", 1, false}};
  for (const auto &r : rows) {
    EXPECT_EQ(dtype_name(r.dtype), r.name);
    EXPECT_EQ(dtype_itemsize(r.dtype), r.itemsize) << r.name;
    EXPECT_EQ(dtype_is_floating(r.dtype), r.floating) << r.name;
    EXPECT_EQ(dtype_from_name(r.name), r.dtype) << r.name;
  }
  EXPECT_FALSE(dtype_from_name("float64").has_value());
  EXPECT_FALSE(dtype_from_name("Float32").has_value());
  EXPECT_FALSE(dtype_from_name("").has_value());
}

class DTypeRoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(DTypeRoundTrip, RestoresBytesWithEveryCompressionShuffleAndChunking) {
  const DType dtype = GetParam();
  const size_t k = dtype_itemsize(dtype);
  const bool text = dtype == DType::kStr || dtype == DType::kBytes;
  const size_t numel = 1500;
  const Shape shape = text ? Shape{1500} : Shape{3, 500};
  const std::vector<uint8_t> bytes = smooth_bytes(dtype, numel);
  const std::vector<TensorView> in = {view("t", dtype, shape, bytes)};

  struct Config {
    const char *label;
    Compression compression;
    bool shuffle;
    size_t chunk_bytes;
  };
  const Config configs[] = {{"none", Compression::kNone, true, 1u << 20},
                            {"zstd+shuffle", Compression::kZstd, true, 1u << 20},
                            {"zstd-noshuffle", Compression::kZstd, false, 1u << 20},
                            {"zstd+shuffle, 256-byte chunks", Compression::kZstd, true, 256},
                            {"zstd-noshuffle, 250-byte chunks", Compression::kZstd, false, 250},
                            {"zstd+shuffle, chunks below the itemsize", Compression::kZstd, true, 1}};
  for (const Config &c : configs) {
    SCOPED_TRACE(c.label);
    EncodeOptions opt;
    opt.compression = c.compression;
    opt.shuffle = c.shuffle;
    opt.chunk_bytes = c.chunk_bytes;
    const bool tiny_chunks = c.chunk_bytes == 1;
    const std::string frame = encode(in, "", opt);

    const WireEnvelope env = parse_envelope(frame);
    ASSERT_EQ(env.entries.size(), 1u);
    const WireEntry &w = env.entries[0];
    EXPECT_EQ(w.dtype, dtype_name(dtype));
    EXPECT_EQ(w.raw_nbytes, bytes.size());
    const bool compressed = c.compression == Compression::kZstd && !tiny_chunks;
    // One-byte chunks cannot shrink, so that frame must fall back to "none" (checked below).
    EXPECT_EQ(w.codec, compressed ? "zstd" : "none");
    if (compressed) {
      const bool shuffled = c.shuffle && dtype_is_floating(dtype) && k > 1;
      EXPECT_EQ(w.filter, shuffled ? "shuffle" : "none");
      EXPECT_EQ(w.chunk_size % k, 0u);
      EXPECT_LE(w.chunk_size, std::max(c.chunk_bytes, k));
      EXPECT_EQ(w.chunks.size(), (bytes.size() + w.chunk_size - 1) / w.chunk_size);
      uint64_t sum = 0;
      for (uint64_t len : w.chunks) sum += len;
      EXPECT_EQ(sum, w.nbytes);
      EXPECT_LT(w.nbytes, w.raw_nbytes);
    } else {
      EXPECT_FALSE(w.has_chunks);
      EXPECT_EQ(w.nbytes, w.raw_nbytes);
      EXPECT_TRUE(!w.has_filter || w.filter == "none");
    }

    for (size_t threads : {size_t{0}, size_t{1}}) {
      DecodeOptions dopt;
      dopt.max_threads = threads;
      DecodedFrame out = decode_str(frame, dopt);
      ASSERT_EQ(out.tensors.size(), 1u);
      expect_same_tensor(in[0], out.tensors[0]);
      EXPECT_EQ(out.tensors[0].aliases_frame, !compressed);
      EXPECT_TRUE(out.meta_msgpack.empty());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, DTypeRoundTrip, ::testing::ValuesIn(kAllDTypes),
                         [](const ::testing::TestParamInfo<DType> &info) {
                           return std::string(dtype_name(info.param));
                         });

TEST(CodecRoundTrip, ShuffleChangesTheStoredBytesButNotTheDecodedValues) {
  std::vector<float> values(4096);
  for (size_t i = 0; i < values.size(); ++i) values[i] = 1.0f + 0.001f * static_cast<float>(i);
  const std::vector<TensorView> in = {
      {"f", DType::kFloat32, {4096}, values.data(), values.size() * sizeof(float)}};
  const std::string shuffled = encode(in, "", zstd_options(true));
  const std::string plain = encode(in, "", zstd_options(false));
  EXPECT_NE(shuffled, plain);
  EXPECT_EQ(parse_envelope(shuffled).entries[0].filter, "shuffle");
  EXPECT_EQ(parse_envelope(plain).entries[0].filter, "none");
  for (const std::string *frame : {&shuffled, &plain}) {
    DecodedFrame out = decode_str(*frame);
    ASSERT_EQ(out.tensors.size(), 1u);
    expect_same_tensor(in[0], out.tensors[0]);
  }
}

TEST(CodecRoundTrip, ShuffledChunksOfAnySizeRoundTrip) {
  // Each chunk is shuffled on its own, with n = chunk length / itemsize; a chunk of a single element
  // is the degenerate case. (The decoder's byte order is checked against docs/wire-format.md with a
  // hand-built frame in test_codec_malformed.cpp; this test ties the encoder to the decoder.)
  std::vector<uint16_t> values(2048);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<uint16_t>(0x3c00 + (i % 8));
  const std::vector<TensorView> in = {
      {"h", DType::kFloat16, {2048}, values.data(), values.size() * sizeof(uint16_t)}};
  for (size_t chunk : {size_t{4096}, size_t{1000}, size_t{64}, size_t{2}}) {
    SCOPED_TRACE(chunk);
    EncodeOptions opt = zstd_options(true, chunk);
    opt.min_compress_bytes = 0;
    const std::string frame = encode(in, "", opt); // outlives `out`, which may alias it
    DecodedFrame out = decode_str(frame);
    expect_same_tensor(in[0], out.tensors.at(0));
  }
}

TEST(CodecRoundTrip, ZstdLevelsIncludingNegativeAndHighRoundTrip) {
  const std::vector<uint8_t> bytes = smooth_bytes(DType::kInt32, 5000);
  const std::vector<TensorView> in = {view("x", DType::kInt32, {5000}, bytes)};
  for (int level : {-5, 1, 3, 19}) {
    SCOPED_TRACE(level);
    EncodeOptions opt = zstd_options();
    opt.level = level;
    const std::string frame = encode(in, "", opt);
    EXPECT_EQ(parse_envelope(frame).entries[0].codec, "zstd");
    expect_same_tensor(in[0], decode_str(frame).tensors[0]);
  }
}

TEST(CodecRoundTrip, MultiChunkPayloadHasOneChunkPerChunkSizeAndAShortLastChunk) {
  const std::vector<uint8_t> bytes = smooth_bytes(DType::kFloat32, 1000); // 4000 bytes
  const std::vector<TensorView> in = {view("x", DType::kFloat32, {10, 100}, bytes)};
  const std::string frame = encode(in, "", zstd_options(true, 256));
  const WireEntry w = parse_envelope(frame).entries.at(0);
  EXPECT_EQ(w.codec, "zstd");
  EXPECT_EQ(w.chunk_size, 256u);
  EXPECT_EQ(w.chunks.size(), 16u); // 15 full chunks of 256 and one of 160
  DecodedFrame out = decode_str(frame);
  expect_same_tensor(in[0], out.tensors[0]);
  EXPECT_FALSE(out.tensors[0].aliases_frame);
}

TEST(CodecRoundTrip, ChunkBytesThatAreNotAMultipleOfTheItemsizeRoundDownToOne) {
  const std::vector<uint8_t> bytes = smooth_bytes(DType::kInt64, 1000);
  const std::vector<TensorView> in = {view("x", DType::kInt64, {1000}, bytes)};
  const std::string frame = encode(in, "", zstd_options(true, 1001));
  const WireEntry w = parse_envelope(frame).entries.at(0);
  EXPECT_EQ(w.chunk_size, 1000u);
  EXPECT_EQ(w.chunks.size(), 8u);
  expect_same_tensor(in[0], decode_str(frame).tensors[0]);
}

// --- shapes -------------------------------------------------------------------------------------

TEST(CodecRoundTrip, RankZeroTensorsKeepAnEmptyShape) {
  const float f = 3.5f;
  const int64_t i = -42;
  const uint8_t b = 1;
  const std::vector<TensorView> in = {{"f", DType::kFloat32, {}, &f, 4},
                                      {"i", DType::kInt64, {}, &i, 8},
                                      {"b", DType::kBool, {}, &b, 1}};
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    EncodeOptions opt;
    opt.compression = compression;
    opt.min_compress_bytes = 0;
    const std::string frame = encode(in, "", opt);
    for (const WireEntry &w : parse_envelope(frame).entries) EXPECT_TRUE(w.shape.empty()) << w.name;
    DecodedFrame out = decode_str(frame);
    ASSERT_EQ(out.tensors.size(), 3u);
    for (size_t t = 0; t < 3; ++t) {
      expect_same_tensor(in[t], out.tensors[t]);
      EXPECT_TRUE(out.tensors[t].shape.empty());
    }
  }
}

TEST(CodecRoundTrip, EmptyTensorsKeepTheirShapesAndDoNotShiftLaterPayloads) {
  const std::vector<uint8_t> after = smooth_bytes(DType::kFloat32, 300);
  const std::vector<uint8_t> nonnull(1);
  const std::vector<TensorView> in = {
      {"no_data", DType::kFloat32, {0}, nullptr, 0},   // data may be null when there are no bytes
      {"zero_dim", DType::kInt64, {2, 0, 3}, nonnull.data(), 0},
      {"empty_str", DType::kStr, {0}, nullptr, 0},
      {"empty_bytes", DType::kBytes, {0}, nonnull.data(), 0},
      view("after", DType::kFloat32, {300}, after),
  };
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    SCOPED_TRACE(compression == Compression::kNone ? "none" : "zstd");
    EncodeOptions opt;
    opt.compression = compression;
    opt.min_compress_bytes = 0;
    const std::string frame = encode(in, "", opt);
    const WireEnvelope env = parse_envelope(frame);
    ASSERT_EQ(env.entries.size(), in.size());
    for (size_t t = 0; t + 1 < in.size(); ++t) {
      EXPECT_EQ(env.entries[t].codec, "none") << "an empty payload cannot compress";
      EXPECT_EQ(env.entries[t].nbytes, 0u);
    }
    DecodedFrame out = decode_str(frame);
    ASSERT_EQ(out.tensors.size(), in.size());
    for (size_t t = 0; t < in.size(); ++t) expect_same_tensor(in[t], out.tensors[t]);
  }
}

TEST(CodecRoundTrip, FrameWithoutTensorsOrMetaIsHeaderAndEnvelopeOnly) {
  const std::string frame = encode({}, "", {});
  EXPECT_EQ(load_u64(frame, 16), 0u) << "payload_nbytes";
  EXPECT_EQ(frame.size(), payload_base(frame));
  DecodedFrame out = decode_str(frame);
  EXPECT_TRUE(out.tensors.empty());
  EXPECT_TRUE(out.meta_msgpack.empty());
}

TEST(CodecRoundTrip, ManyEntriesUpToTheDefaultEntryLimitKeepTheirOrder) {
  const size_t n = CodecLimits{}.max_entries; // 4096: the largest frame the default decoder accepts
  std::vector<std::vector<uint8_t>> data(n);
  std::vector<TensorView> in;
  for (size_t i = 0; i < n; ++i) {
    const DType dtype = kAllDTypes[i % 12];
    const size_t numel = (i * 7) % 23; // includes empty tensors
    data[i] = random_bytes(numel * dtype_itemsize(dtype), static_cast<uint32_t>(i));
    in.push_back(view("t" + std::to_string(n - i), dtype, {static_cast<int64_t>(numel)}, data[i]));
  }
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    EncodeOptions opt;
    opt.compression = compression;
    opt.min_compress_bytes = 0;
    const std::string frame = encode(in, "", opt);
    DecodedFrame out = decode_str(frame);
    ASSERT_EQ(out.tensors.size(), n);
    for (size_t i = 0; i < n; ++i) expect_same_tensor(in[i], out.tensors[i]);
  }
}

// --- meta ---------------------------------------------------------------------------------------

std::string pack_rich_meta() {
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

TEST(CodecMeta, MsgpackMetaComesBackByteForByte) {
  const std::string meta = pack_rich_meta();
  const std::vector<uint8_t> bytes = smooth_bytes(DType::kFloat32, 1000);
  const std::vector<TensorView> in = {view("x", DType::kFloat32, {1000}, bytes)};
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    EncodeOptions opt;
    opt.compression = compression;
    const std::string frame = encode(in, meta, opt);
    const WireEnvelope env = parse_envelope(frame);
    EXPECT_TRUE(env.has_meta);
    EXPECT_EQ(env.meta, meta) << "the encoder must store meta verbatim";
    DecodedFrame out = decode_str(frame);
    EXPECT_EQ(out.meta_msgpack, meta);
    expect_same_tensor(in[0], out.tensors.at(0));
  }
}

// msgpack float64 (0xcb) and float32 (0xca) values written byte by byte: msgpack-c's packer would
// write integral values such as 1.0 as integers.
std::string f64_bytes(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, 8);
  std::string out = "\xcb";
  for (int i = 0; i < 8; ++i) out += static_cast<char>(bits >> (56 - 8 * i));
  return out;
}
std::string f32_bytes(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  std::string out = "\xca";
  for (int i = 0; i < 4; ++i) out += static_cast<char>(bits >> (24 - 8 * i));
  return out;
}

TEST(CodecMeta, IntegralFloatsStayFloats) {
  // docs/wire-format.md: "The codec carries meta verbatim". A float that happens to be integral
  // (a scale of 1.0, a guidance of 7.0, -0.0) must come back as a float, not as an integer.
  const struct {
    const char *label;
    std::string meta;
  } cases[] = {
      {"float64 1.0", f64_bytes(1.0)},
      {"float64 -3.0", f64_bytes(-3.0)},
      {"float64 0.0", f64_bytes(0.0)},
      {"float64 -0.0", f64_bytes(-0.0)},
      {"float64 1e19", f64_bytes(1e19)},
      {"float32 7.0", f32_bytes(7.0f)},
      {"[1.0, 2.5]", "\x92" + f64_bytes(1.0) + f64_bytes(2.5)},
  };
  for (const auto &c : cases) {
    const std::string frame = encode({}, c.meta, {});
    EXPECT_EQ(parse_envelope(frame).meta, c.meta) << c.label << ": the encoder stores meta verbatim";
    EXPECT_EQ(decode_str(frame).meta_msgpack, c.meta) << c.label << ": decode changed the value's type";
  }
}

TEST(CodecMeta, ScalarMetaWithoutTensorsRoundTrips) {
  for (const std::string &meta : {std::string("\x2a"), std::string("\xa3" "abc"), std::string("\xc3"),
                                 std::string("\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18")}) {
    DecodedFrame out = decode_str(encode({}, meta, {}));
    EXPECT_EQ(out.meta_msgpack, meta);
  }
}

TEST(CodecMeta, AbsentAndNilMetaBothDecodeAsEmpty) {
  const std::string absent = encode({}, "", {});
  EXPECT_FALSE(parse_envelope(absent).has_meta);
  EXPECT_TRUE(decode_str(absent).meta_msgpack.empty());
  const std::string nil = encode({}, std::string("\xc0", 1), {});
  EXPECT_TRUE(parse_envelope(nil).has_meta);
  EXPECT_TRUE(decode_str(nil).meta_msgpack.empty()) << "docs: meta is nil or absent when there is none";
}

// --- plan and layout ----------------------------------------------------------------------------

struct MixedInput {
  std::vector<uint8_t> a = smooth_bytes(DType::kFloat32, 3000);
  std::vector<uint8_t> b = random_bytes(777, 1);
  std::vector<uint8_t> c = smooth_bytes(DType::kInt16, 1);
  std::vector<uint8_t> d = smooth_bytes(DType::kStr, 65);
  std::vector<TensorView> views() const {
    return {view("a", DType::kFloat32, {30, 100}, a), view("b", DType::kBytes, {777}, b),
            view("c", DType::kInt16, {1}, c), view("d", DType::kStr, {65}, d)};
  }
};

TEST(CodecPlan, WriteFillsExactlyFrameBytesAndMatchesEncode) {
  const MixedInput input;
  const std::vector<TensorView> in = input.views();
  const std::string meta = pack_rich_meta();
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    for (const std::string *m : {&meta, static_cast<const std::string *>(nullptr)}) {
      EncodeOptions opt;
      opt.compression = compression;
      opt.chunk_bytes = 1000;
      EncodePlan plan = plan_encode(in, m ? *m : "", opt);
      const size_t n = plan.frame_bytes();
      // Guard zones on both sides, and garbage where the frame goes: write must produce every byte
      // itself, zero padding included, and touch nothing outside [0, frame_bytes).
      constexpr size_t kGuard = 256;
      std::vector<uint8_t> buf(n + 2 * kGuard, 0xAB);
      plan.write(buf.data() + kGuard);
      for (size_t i = 0; i < kGuard; ++i) {
        ASSERT_EQ(buf[i], 0xAB) << "write touched byte " << i << " before the frame";
        ASSERT_EQ(buf[kGuard + n + i], 0xAB) << "write touched byte " << i << " past frame_bytes";
      }
      const std::string written(reinterpret_cast<const char *>(buf.data() + kGuard), n);
      EXPECT_TRUE(SameBytes(written, encode(in, m ? *m : "", opt))) << "padding must be written as zero";
      EXPECT_EQ(payload_base(written) + load_u64(written, 16), n);
      // A plan can be written twice.
      std::string again(n, '\x55');
      plan.write(reinterpret_cast<uint8_t *>(again.data()));
      EXPECT_TRUE(SameBytes(again, written));
      DecodedFrame out = decode(buf.data() + kGuard, n);
      ASSERT_EQ(out.tensors.size(), in.size());
      for (size_t t = 0; t < in.size(); ++t) expect_same_tensor(in[t], out.tensors[t]);
    }
  }
}

TEST(CodecPlan, MovedPlanStillWritesTheSameFrame) {
  const MixedInput input;
  const std::vector<TensorView> in = input.views();
  EncodePlan plan = plan_encode(in, "", zstd_options());
  EncodePlan moved = std::move(plan);
  std::string frame(moved.frame_bytes(), '\0');
  moved.write(reinterpret_cast<uint8_t *>(frame.data()));
  EXPECT_TRUE(SameBytes(frame, encode(in, "", zstd_options())));
}

TEST(CodecLayout, HeaderFieldsAreAsDocumented) {
  const MixedInput input;
  const std::string frame = encode(input.views(), pack_rich_meta(), {});
  EXPECT_EQ(frame.substr(0, 4), "JEMB");
  EXPECT_EQ(frame[4], '\x01') << "version";
  EXPECT_EQ(frame[5], '\0') << "flags";
  EXPECT_EQ(frame.substr(6, 2), std::string(2, '\0'));
  EXPECT_EQ(frame.substr(12, 4), std::string(4, '\0'));
  EXPECT_EQ(payload_base(frame) + load_u64(frame, 16), frame.size());
  // Bytes between the envelope and payload_base are zero.
  for (size_t i = 32 + envelope_nbytes(frame); i < payload_base(frame); ++i) EXPECT_EQ(frame[i], '\0') << i;
}

TEST(CodecLayout, PayloadsAre64AlignedFromTheFrameStartAndPaddedWithZeros) {
  const MixedInput input;
  const std::vector<TensorView> in = input.views();
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    EncodeOptions opt;
    opt.compression = compression;
    const std::string frame = encode(in, "", opt);
    const uint64_t base = payload_base(frame);
    EXPECT_EQ(base % 64, 0u);
    const WireEnvelope env = parse_envelope(frame);
    uint64_t prev_end = 0;
    for (const WireEntry &w : env.entries) {
      EXPECT_EQ((base + w.offset) % 64, 0u) << w.name;
      EXPECT_GE(w.offset, prev_end) << w.name << " overlaps the previous payload";
      for (uint64_t i = prev_end; i < w.offset; ++i) EXPECT_EQ(frame[base + i], '\0') << "padding before " << w.name;
      prev_end = w.offset + w.nbytes;
    }
    EXPECT_EQ(base + prev_end, frame.size()) << "the last payload ends the frame";
  }
}

TEST(CodecLayout, UncompressedTensorsAliasAlignedBytesInsideTheFrame) {
  const MixedInput input;
  const std::vector<TensorView> in = input.views();
  // Decode from a 64-aligned copy, so that "64-aligned from the frame start" becomes an address property.
  const std::string frame = encode(in, "", {});
  std::vector<uint64_t> storage((frame.size() + 7) / 8 + 8);
  uint8_t *buf = reinterpret_cast<uint8_t *>(storage.data());
  buf += (64 - reinterpret_cast<uintptr_t>(buf) % 64) % 64;
  std::memcpy(buf, frame.data(), frame.size());
  DecodedFrame out = decode(buf, frame.size());
  ASSERT_EQ(out.tensors.size(), in.size());
  for (const DecodedTensor &t : out.tensors) {
    EXPECT_TRUE(t.aliases_frame) << t.name;
    EXPECT_GE(t.data, buf + payload_base(frame)) << t.name;
    EXPECT_LE(t.data + t.nbytes, buf + frame.size()) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 64, 0u) << t.name;
  }
  EXPECT_TRUE(out.owned.empty());
  // Writing through the frame shows up in the decoded tensor: it is a view, not a copy.
  const DecodedTensor &b = out.tensors[1];
  buf[b.data - buf] ^= 0xFF;
  EXPECT_EQ(b.data[0], static_cast<uint8_t>(input.b[0] ^ 0xFF));
}

TEST(CodecLayout, DecompressedTensorsOutliveAMoveOfTheFrame) {
  const MixedInput input;
  const std::vector<TensorView> in = input.views();
  const std::string frame = encode(in, "", zstd_options(true, 512));
  DecodedFrame out = decode_str(frame);
  ASSERT_FALSE(out.tensors[0].aliases_frame);
  DecodedFrame moved = std::move(out);
  for (size_t t = 0; t < in.size(); ++t) expect_same_tensor(in[t], moved.tensors[t]);
}

// --- compression choices ------------------------------------------------------------------------

TEST(CodecCompression, IncompressiblePayloadFallsBackToCodecNone) {
  const std::vector<uint8_t> noise = random_bytes(64 * 1024, 7);
  const std::vector<uint8_t> smooth = smooth_bytes(DType::kFloat32, 16 * 1024);
  const std::vector<TensorView> in = {view("noise", DType::kFloat32, {16 * 1024}, noise),
                                      view("smooth", DType::kFloat32, {16 * 1024}, smooth)};
  const std::string frame = encode(in, "", zstd_options(true, 4096));
  const WireEnvelope env = parse_envelope(frame);
  ASSERT_EQ(env.entries.size(), 2u);
  EXPECT_EQ(env.entries[0].codec, "none");
  EXPECT_EQ(env.entries[0].filter, "none") << "a raw payload is never shuffled";
  EXPECT_FALSE(env.entries[0].has_chunks);
  EXPECT_EQ(env.entries[0].nbytes, noise.size());
  EXPECT_EQ(env.entries[1].codec, "zstd");
  DecodedFrame out = decode_str(frame);
  EXPECT_TRUE(out.tensors[0].aliases_frame);
  EXPECT_FALSE(out.tensors[1].aliases_frame);
  for (size_t t = 0; t < 2; ++t) expect_same_tensor(in[t], out.tensors[t]);
}

TEST(CodecCompression, PayloadsBelowMinCompressBytesAreStoredRaw) {
  const std::vector<uint8_t> bytes(1024, 0); // zeros: compressible at any size
  for (size_t n : {size_t{511}, size_t{512}}) {
    const std::vector<TensorView> in = {{"z", DType::kUInt8, {static_cast<int64_t>(n)}, bytes.data(), n}};
    EncodeOptions opt = zstd_options();
    opt.min_compress_bytes = 512;
    const std::string frame = encode(in, "", opt);
    EXPECT_EQ(parse_envelope(frame).entries[0].codec, n < 512 ? "none" : "zstd") << n;
    expect_same_tensor(in[0], decode_str(frame).tensors[0]);
  }
}

// --- determinism --------------------------------------------------------------------------------

TEST(CodecDeterminism, SameInputGivesTheSameBytesWithOneThreadOrMany) {
  // Covers every parallel path of the encoder: many compressed chunks, several entries, a
  // compressible tensor of a few MiB under the default chunk_bytes, and uncompressed payloads large
  // enough (> 4 MiB) to be copied and hashed in parallel pieces. The frame must not depend on how
  // many threads wrote it: caches key on frame bytes, and golden files compare them.
  const std::vector<uint8_t> chunks = smooth_bytes(DType::kBFloat16, 300000);
  const std::vector<uint8_t> mid = smooth_bytes(DType::kFloat32, 3 << 18); // 3 MiB
  const std::vector<uint8_t> big_raw = random_bytes((9u << 20) + 5, 3);
  const std::vector<uint8_t> big_raw2 = random_bytes((4u << 20) + 64, 4);
  const std::vector<uint8_t> small = smooth_bytes(DType::kInt32, 100);
  const std::vector<TensorView> in = {
      view("chunks", DType::kBFloat16, {300000}, chunks), view("mid", DType::kFloat32, {3, 1 << 18}, mid),
      view("big", DType::kUInt8, {(9 << 20) + 5}, big_raw), view("small", DType::kInt32, {100}, small),
      view("big2", DType::kInt8, {(4 << 20) + 64}, big_raw2)};
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    for (size_t chunk_bytes : {size_t{16} << 10, EncodeOptions{}.chunk_bytes}) {
      SCOPED_TRACE(std::string(compression == Compression::kNone ? "none" : "zstd") + ", chunk_bytes " +
                   std::to_string(chunk_bytes));
      EncodeOptions opt;
      opt.compression = compression;
      opt.chunk_bytes = chunk_bytes;
      opt.max_threads = 1;
      const std::string one = encode(in, pack_rich_meta(), opt);
      EXPECT_TRUE(SameBytes(encode(in, pack_rich_meta(), opt), one)) << "same input, same options";
      for (size_t threads : {size_t{0}, size_t{2}, size_t{3}}) {
        opt.max_threads = threads;
        EXPECT_TRUE(SameBytes(encode(in, pack_rich_meta(), opt), one)) << threads << " threads";
      }
      DecodedFrame out = decode_str(one);
      ASSERT_EQ(out.tensors.size(), in.size());
      for (size_t t = 0; t < in.size(); ++t) expect_same_tensor(in[t], out.tensors[t]);
    }
  }
}

TEST(CodecDeterminism, LargeUncompressedPayloadChecksumCoversEveryByte) {
  // Payloads over 4 MiB are hashed and copied as separate tasks; the checksum must still be the
  // XXH3 of the stored bytes, so flipping any byte (first, middle, last block) is detected.
  const std::vector<uint8_t> big = random_bytes((5u << 20) + 3, 11);
  const std::vector<TensorView> in = {view("big", DType::kBytes, {(5 << 20) + 3}, big)};
  const std::string frame = encode(in, "", {});
  expect_same_tensor(in[0], decode_str(frame).tensors[0]);
  const uint64_t base = payload_base(frame);
  for (uint64_t pos : {uint64_t{0}, uint64_t{(2u << 20) + 1}, uint64_t{big.size() - 1}}) {
    std::string bad = frame;
    bad[base + pos] ^= 0x01;
    try {
      decode_str(bad);
      ADD_FAILURE() << "flipped byte " << pos << " was not detected";
    } catch (const CodecError &e) {
      EXPECT_EQ(std::string(e.what()).rfind("bad checksum: ", 0), 0u) << e.what();
    }
  }
}

// --- decode options -----------------------------------------------------------------------------

TEST(CodecDecodeOptions, VerifyChecksumsFalseSkipsPayloadChecksumsButNotTheHeaderChecksum) {
  const MixedInput input;
  const std::string frame = encode(input.views(), "", {});
  const WireEntry b = parse_envelope(frame).entries.at(1);
  std::string bad = frame;
  bad[payload_base(frame) + b.offset + 10] ^= 0x40;

  DecodeOptions no_verify;
  no_verify.verify_checksums = false;
  DecodedFrame out = decode_str(bad, no_verify);
  EXPECT_EQ(out.tensors.at(1).data[10], static_cast<uint8_t>(input.b[10] ^ 0x40)) << "payload is not copied";
  EXPECT_THROW(decode_str(bad), CodecError);

  std::string bad_header = frame;
  bad_header[24] ^= 0x01;
  try {
    decode_str(bad_header, no_verify);
    ADD_FAILURE() << "a bad header checksum was accepted with verify_checksums=false";
  } catch (const CodecError &e) {
    EXPECT_EQ(std::string(e.what()).rfind("bad checksum: ", 0), 0u) << e.what();
  }
}

// --- describe -----------------------------------------------------------------------------------

TEST(CodecDescribe, ShowsSizesEntriesAndMetaWithoutReadingPayloads) {
  const std::vector<uint8_t> bytes = smooth_bytes(DType::kBFloat16, 6000);
  const std::vector<TensorView> in = {view("emb", DType::kBFloat16, {2, 3000}, bytes)};
  msgpack::sbuffer sb;
  msgpack::packer<msgpack::sbuffer> pk(sb);
  pk.pack_map(1);
  pk.pack(std::string("encoder"));
  pk.pack(std::string("clip"));
  const std::string frame = encode(in, std::string(sb.data(), sb.size()), zstd_options());
  const FrameInfo info = describe(u8(frame), frame.size());
  EXPECT_EQ(info.frame_bytes, frame.size());
  EXPECT_EQ(info.envelope_bytes, envelope_nbytes(frame));
  EXPECT_EQ(info.payload_bytes, load_u64(frame, 16));
  EXPECT_EQ(info.envelope_msgpack, frame.substr(32, envelope_nbytes(frame))); // the stored bytes, unchanged
  std::ostringstream text;
  text << msgpack::unpack(info.envelope_msgpack.data(), info.envelope_msgpack.size()).get();
  for (const std::string &want :
       {std::string("\"name\":\"emb\""), std::string("\"dtype\":\"bfloat16\""), std::string("\"shape\":[2,3000]"),
        std::string("\"codec\":\"zstd\""), std::string("\"filter\":\"shuffle\""),
        std::string("\"meta\":{\"encoder\":\"clip\"}")}) {
    EXPECT_NE(text.str().find(want), std::string::npos) << "missing " << want << " in " << text.str();
  }

  // describe() reads no payload: a corrupted payload byte still describes, while decode rejects it.
  std::string bad = frame;
  bad.back() ^= 0x5A;
  EXPECT_TRUE(SameBytes(describe(u8(bad), bad.size()).envelope_msgpack, info.envelope_msgpack));
  EXPECT_THROW(decode_str(bad), CodecError);
}

TEST(CodecDescribe, RejectsMalformedHeadersAndAppliesLimits) {
  const std::string frame = encode({}, "", {});
  EXPECT_THROW(describe(u8(frame), 31), CodecError);
  CodecLimits tight;
  tight.max_envelope_bytes = envelope_nbytes(frame) - 1;
  try {
    describe(u8(frame), frame.size(), tight);
    ADD_FAILURE() << "max_envelope_bytes was not applied";
  } catch (const CodecError &e) {
    EXPECT_EQ(std::string(e.what()).rfind("over limit: ", 0), 0u) << e.what();
  }
}

// --- encode-side errors -------------------------------------------------------------------------

// The CodecError message plan_encode() throws for `tensors` and `meta`, or "" if it does not throw.
std::string plan_error(const std::vector<TensorView> &tensors, const std::string &meta = "") {
  try {
    plan_encode(tensors, meta, {});
  } catch (const CodecError &e) {
    return e.what();
  }
  return "";
}

bool starts_with(const std::string &s, const std::string &prefix) { return s.rfind(prefix, 0) == 0; }

TEST(CodecEncodeErrors, DuplicateNamesAreRejected) {
  const uint8_t x[2] = {1, 2};
  const std::vector<TensorView> in = {
      {"a", DType::kUInt8, {1}, x, 1}, {"b", DType::kUInt8, {1}, x, 1}, {"a", DType::kInt8, {2}, x, 2}};
  const std::string err = plan_error(in);
  EXPECT_TRUE(starts_with(err, "duplicate name: ")) << err;
  EXPECT_NE(err.find("'a'"), std::string::npos) << err;
  EXPECT_THROW(encode(in, "", {}), CodecError);
}

TEST(CodecEncodeErrors, NbytesThatDoNotMatchShapeTimesItemsizeAreRejected) {
  const std::vector<uint8_t> buf(64);
  for (size_t nbytes : {size_t{15}, size_t{17}, size_t{0}, size_t{4}}) {
    const std::string err = plan_error({{"x", DType::kFloat32, {2, 2}, buf.data(), nbytes}});
    EXPECT_TRUE(starts_with(err, "size mismatch: ")) << nbytes << ": " << err;
  }
  EXPECT_EQ(plan_error({{"x", DType::kFloat32, {2, 2}, buf.data(), 16}}), "");
}

TEST(CodecEncodeErrors, InvalidShapesAndMissingDataAreRejected) {
  const std::vector<uint8_t> buf(64);
  const int64_t big = int64_t{1} << 62;
  for (const Shape &shape : {Shape{-1}, Shape{2, -3}, Shape{big, big}, Shape{big}}) {
    const std::string err = plan_error({{"x", DType::kInt64, shape, buf.data(), 8}});
    EXPECT_TRUE(starts_with(err, "size mismatch: ")) << err;
  }
  const std::string err = plan_error({{"x", DType::kUInt8, {4}, nullptr, 4}});
  EXPECT_TRUE(starts_with(err, "size mismatch: ")) << err;
}

TEST(CodecRoundTrip, Utf8NamesRoundTrip) {
  const uint8_t x = 7;
  const std::vector<TensorView> in = {{"caf\xc3\xa9", DType::kUInt8, {1}, &x, 1},
                                      {"\xe6\x97\xa5\xe6\x9c\xac", DType::kUInt8, {1}, &x, 1},
                                      {"\xf0\x9f\x98\x80", DType::kUInt8, {1}, &x, 1},
                                      {"", DType::kUInt8, {1}, &x, 1}};
  const std::string frame = encode(in, "", {});
  DecodedFrame out = decode_str(frame);
  ASSERT_EQ(out.tensors.size(), in.size());
  for (size_t t = 0; t < in.size(); ++t) expect_same_tensor(in[t], out.tensors[t]);
}

TEST(CodecEncodeErrors, NamesThatAreNotUtf8NeverProduceAFrameTheDecoderRejects) {
  // The decoder rejects entry names that are not UTF-8. The encoder must then refuse them too,
  // rather than write a frame that no decoder of this codec will read.
  const uint8_t x = 1;
  const struct {
    const char *why;
    std::string name;
  } cases[] = {{"invalid byte", "\xff"},
               {"cut two-byte sequence", "a\xc3"},
               {"overlong '/'", "\xc0\xaf"},
               {"UTF-16 surrogate", "\xed\xa0\x80"},
               {"past U+10FFFF", "\xf4\x90\x80\x80"}};
  for (const auto &c : cases) {
    std::string frame;
    try {
      frame = encode({{c.name, DType::kUInt8, {1}, &x, 1}}, "", {});
    } catch (const CodecError &) {
      continue; // refused at encode time: fine
    }
    try {
      decode_str(frame);
    } catch (const CodecError &e) {
      ADD_FAILURE() << c.why << ": encode() accepted the name, but decode() of its frame throws: " << e.what();
    }
  }
}

TEST(CodecEncodeErrors, InvalidMetaMsgpackIsRejected) {
  const struct {
    const char *why;
    std::string meta;
  } cases[] = {
      {"reserved byte 0xc1", std::string("\xc1", 1)},
      {"array missing an element", std::string("\x92\x01", 2)},
      {"str shorter than its header", std::string("\xa5" "ab", 3)},
      {"two values", std::string("\x01\x02", 2)},
      {"map missing its value", std::string("\x81\xa1k", 3)},
      // Headers that claim 2^32-1 elements in 5 bytes: rejected without allocating for them first.
      {"array32 header only", std::string("\xdd\xff\xff\xff\xff", 5)},
      {"map32 header only", std::string("\xdf\xff\xff\xff\xff", 5)},
  };
  for (const auto &c : cases) {
    const std::string err = plan_error({}, c.meta);
    EXPECT_TRUE(starts_with(err, "bad envelope: ")) << c.why << ": " << err;
  }
}

} // namespace
} // namespace jit::codec
