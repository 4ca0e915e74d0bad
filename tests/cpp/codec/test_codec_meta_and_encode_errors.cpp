// The envelope's meta value, carried verbatim by encode and decode, and the errors the encoder
// raises (duplicate or non-UTF-8 names, sizes that do not match shapes, invalid meta msgpack).
// Shared helpers are in codec_test_util.h.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "codec/codec.h"
#include "codec_test_util.h"

namespace jit::codec {
namespace {

using namespace ::jit::codec::test_util;

// --- meta ---------------------------------------------------------------------------------------

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
  for (int i = 0; i < 8; ++i)
    out += static_cast<char>(bits >> (56 - 8 * i));
  return out;
}
std::string f32_bytes(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  std::string out = "\xca";
  for (int i = 0; i < 4; ++i)
    out += static_cast<char>(bits >> (24 - 8 * i));
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

TEST(CodecMeta, EnvelopeTailIsPatchedInPlaceAndResealed) {
  // meta = [1.5, -1.0]: its last value, a float64, is the envelope's last 9 bytes.
  const std::string placeholder = f64_bytes(-1.0), value = f64_bytes(42.25);
  const std::string meta = std::string("\x92") + f64_bytes(1.5) + placeholder;
  const std::vector<uint8_t> bytes = smooth_bytes(DType::kFloat32, 64);
  std::string frame = encode({view("x", DType::kFloat32, {64}, bytes)}, meta, {});
  const auto *want = reinterpret_cast<const uint8_t *>(placeholder.data());
  const auto *with = reinterpret_cast<const uint8_t *>(value.data());
  ASSERT_TRUE(patch_envelope_tail(frame, want, with, 9));
  // The decoder verifies the header checksum, so this also checks the re-seal.
  EXPECT_EQ(decode_str(frame).meta_msgpack, std::string("\x92") + f64_bytes(1.5) + value);
  // Bytes that are no longer the placeholder, or a short frame, are left alone.
  const std::string before = frame;
  EXPECT_FALSE(patch_envelope_tail(frame, want, with, 9));
  EXPECT_EQ(frame, before);
  std::string shorter = frame.substr(0, 16);
  EXPECT_FALSE(patch_envelope_tail(shorter, want, with, 9));
}

TEST(CodecMeta, ScalarMetaWithoutTensorsRoundTrips) {
  for (const std::string &meta : {std::string("\x2a"),
                                  std::string("\xa3"
                                              "abc"),
                                  std::string("\xc3"), std::string("\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18")}) {
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

bool starts_with(const std::string &s, const std::string &prefix) {
  return s.rfind(prefix, 0) == 0;
}

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
  for (size_t t = 0; t < in.size(); ++t)
    expect_same_tensor(in[t], out.tensors[t]);
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
      {"str shorter than its header", std::string("\xa5"
                                                  "ab",
                                                  3)},
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
