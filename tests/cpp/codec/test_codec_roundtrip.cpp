// Round trips through the C++ codec API (encode, decode) for every dtype, compression, shuffle and
// chunking choice, and for edge-case shapes; when the encoder stores a payload raw instead.
// Shared helpers are in codec_test_util.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "codec/codec.h"
#include "codec_test_util.h"

namespace jit::codec {
namespace {

using namespace ::jit::codec::test_util;

constexpr DType kAllDTypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kFloat8E4M3,
                                DType::kInt8,    DType::kUInt8,   DType::kInt16,    DType::kInt32,
                                DType::kInt64,   DType::kBool,    DType::kStr,      DType::kBytes};

// --- dtypes -------------------------------------------------------------------------------------

TEST(CodecDTypes, NamesAndItemsizesMatchTheWireFormatTable) {
  struct Row {
    DType dtype;
    const char *name;
    size_t itemsize;
    bool floating;
  };
  // Transcribed from docs/wire-format.md, "Dtypes".
  const Row rows[] = {{DType::kFloat32, "float32", 4, true},   {DType::kFloat16, "float16", 2, true},
                      {DType::kBFloat16, "bfloat16", 2, true}, {DType::kFloat8E4M3, "float8_e4m3fn", 1, true},
                      {DType::kInt8, "int8", 1, false},        {DType::kUInt8, "uint8", 1, false},
                      {DType::kInt16, "int16", 2, false},      {DType::kInt32, "int32", 4, false},
                      {DType::kInt64, "int64", 8, false},      {DType::kBool, "bool", 1, false},
                      {DType::kStr, "str", 1, false},          {DType::kBytes, "bytes", 1, false}};
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
      for (uint64_t len : w.chunks)
        sum += len;
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
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = 1.0f + 0.001f * static_cast<float>(i);
  const std::vector<TensorView> in = {{"f", DType::kFloat32, {4096}, values.data(), values.size() * sizeof(float)}};
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
  // hand-built frame in test_codec_malformed_header.cpp; this test ties the encoder to the decoder.)
  std::vector<uint16_t> values(2048);
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = static_cast<uint16_t>(0x3c00 + (i % 8));
  const std::vector<TensorView> in = {{"h", DType::kFloat16, {2048}, values.data(), values.size() * sizeof(uint16_t)}};
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
  const std::vector<TensorView> in = {
      {"f", DType::kFloat32, {}, &f, 4}, {"i", DType::kInt64, {}, &i, 8}, {"b", DType::kBool, {}, &b, 1}};
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    EncodeOptions opt;
    opt.compression = compression;
    opt.min_compress_bytes = 0;
    const std::string frame = encode(in, "", opt);
    for (const WireEntry &w : parse_envelope(frame).entries)
      EXPECT_TRUE(w.shape.empty()) << w.name;
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
      {"no_data", DType::kFloat32, {0}, nullptr, 0}, // data may be null when there are no bytes
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
    for (size_t t = 0; t < in.size(); ++t)
      expect_same_tensor(in[t], out.tensors[t]);
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
    for (size_t i = 0; i < n; ++i)
      expect_same_tensor(in[i], out.tensors[i]);
  }
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
  for (size_t t = 0; t < 2; ++t)
    expect_same_tensor(in[t], out.tensors[t]);
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

} // namespace
} // namespace jit::codec
