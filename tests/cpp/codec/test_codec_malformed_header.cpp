// Malformed frames, fixed header: the base frame itself, truncated frames, trailing data, bad
// magic, bad version and reserved fields, bad header and payload checksums; describe() reports
// the same errors. Each is rejected with a CodecError whose message starts with the problem's
// name from docs/wire-format.md, "Errors".
// Every frame is laid out by hand, independently of the encoder (see codec_test_util.h), and each
// test changes exactly one thing in the valid base frame.
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

// ---- the base frame ----------------------------------------------------------------------------

TEST(BaseFrame, DecodesToTheHandWrittenValues) {
  const std::string frame = base_frame().bytes();
  DecodedFrame out = decode(u8(frame), frame.size());
  ASSERT_EQ(out.tensors.size(), 2u);
  const DecodedTensor &a = out.tensors[0];
  EXPECT_EQ(a.name, "a");
  EXPECT_EQ(a.dtype, DType::kUInt8);
  EXPECT_EQ(a.shape, (Shape{4, 25}));
  ASSERT_EQ(a.nbytes, 100u);
  EXPECT_EQ(std::string(reinterpret_cast<const char *>(a.data), a.nbytes), a_bytes());
  EXPECT_TRUE(a.aliases_frame);
  const DecodedTensor &b = out.tensors[1];
  EXPECT_EQ(b.name, "b");
  EXPECT_EQ(b.dtype, DType::kFloat32);
  EXPECT_EQ(b.shape, (Shape{64}));
  ASSERT_EQ(b.nbytes, 256u);
  // The chunks were shuffled here as docs/wire-format.md describes; the decoder must undo exactly that.
  EXPECT_EQ(std::string(reinterpret_cast<const char *>(b.data), b.nbytes), b_raw());
  EXPECT_FALSE(b.aliases_frame);
  EXPECT_TRUE(out.meta_msgpack.empty());
}

TEST(BaseFrame, UnknownKeysAtBothLevelsAreIgnored) {
  Frame f = base_frame();
  f.top.set("x-future", Map().set("nested", uints_v({1, 2, 3})).value()).set("meta", nil_v());
  f.a().set("x-entry-field", array_v({str_v("v"), f64_v(1.5)})).set("comment", bin_v("\x00\x01"));
  EXPECT_TRUE(Decodes(f.bytes()));
}

TEST(BaseFrame, AbsentFilterMeansNone) {
  Frame f = base_frame();
  f.a().erase("filter");
  Chunks plain = zstd_chunks(b_raw(), 128, /*shuffle_k=*/0);
  set_b_chunks(f, plain);
  f.b().erase("filter");
  const std::string frame = f.bytes();
  DecodedFrame out = decode(u8(frame), frame.size());
  ASSERT_EQ(out.tensors.size(), 2u);
  EXPECT_EQ(std::string(reinterpret_cast<const char *>(out.tensors[1].data), 256), b_raw());
}

TEST(BaseFrame, PaddingContentIsIgnored) {
  Frame f = base_frame();
  for (size_t i = 100; i < 128; ++i)
    f.payload.bytes()[i] = '\xff'; // between payload a and payload b
  std::string frame = f.bytes();
  const size_t env_end = 32 + f.envelope().size();
  ASSERT_LT(env_end, align64(env_end)) << "the base envelope should leave padding before payload_base";
  for (size_t i = env_end; i < align64(env_end); ++i)
    frame[i] = '\xee';
  EXPECT_TRUE(Decodes(frame));
}

TEST(BaseFrame, MetaOfAnyTypeIsReturnedRepacked) {
  Frame f = base_frame();
  const Value meta = Map().set("encoder", str_v("clip")).set("ids", uints_v({7, 8})).value();
  f.top.set("meta", meta);
  const std::string frame = f.bytes();
  EXPECT_EQ(decode(u8(frame), frame.size()).meta_msgpack, pack(meta));
}

// ---- truncated ---------------------------------------------------------------------------------

TEST(Truncated, FewerBytesThanTheFixedHeader) {
  const std::string frame = base_frame().bytes();
  for (size_t len : {size_t{0}, size_t{1}, size_t{4}, size_t{31}}) {
    EXPECT_TRUE(Rejects(frame.substr(0, len), "truncated", "header")) << len;
  }
}

TEST(Truncated, EnvelopeLongerThanTheFrame) {
  Frame f = base_frame();
  const std::string full = f.bytes();
  f.header.envelope_nbytes = static_cast<uint32_t>(full.size()); // 32 + this > frame length
  EXPECT_TRUE(Rejects(f.bytes(), "truncated", "envelope"));
  // The same frame cut inside its envelope.
  EXPECT_TRUE(Rejects(full.substr(0, 40), "truncated", "envelope"));
}

TEST(Truncated, PayloadRegionLongerThanTheFrame) {
  const std::string frame = base_frame().bytes();
  EXPECT_TRUE(Rejects(frame.substr(0, frame.size() - 1), "truncated"));
  Frame f = base_frame();
  f.header.payload_nbytes = f.payload.bytes().size() + 1;
  EXPECT_TRUE(Rejects(f.bytes(), "truncated"));
}

TEST(Truncated, PayloadLengthThatOverflowsPastTheEndOfMemory) {
  for (uint64_t n : {kU64Max, kU64Max - 63, uint64_t{1} << 63}) {
    Frame f = base_frame();
    f.header.payload_nbytes = n;
    EXPECT_TRUE(Rejects(f.bytes(), "truncated")) << n;
  }
}

// ---- trailing data -----------------------------------------------------------------------------

TEST(TrailingData, BytesAfterTheLastPayload) {
  const std::string frame = base_frame().bytes();
  EXPECT_TRUE(Rejects(frame + '\0', "trailing data"));
  EXPECT_TRUE(Rejects(frame + std::string(64, '\0'), "trailing data"));
  Frame f = base_frame();
  f.header.payload_nbytes = f.payload.bytes().size() - 1; // the header accounts for one byte less
  EXPECT_TRUE(Rejects(f.bytes(), "trailing data"));
}

// ---- bad magic ---------------------------------------------------------------------------------

TEST(BadMagic, FirstFourBytesAreNotJEMB) {
  for (const char *magic : {"JEMC", "jemb", "BMEJ", "\0\0\0\0"}) {
    Frame f = base_frame();
    f.header.magic = std::string(magic, 4);
    EXPECT_TRUE(Rejects(f.bytes(), "bad magic")) << magic;
  }
}

// ---- bad version -------------------------------------------------------------------------------

TEST(BadVersion, VersionOtherThanOne) {
  for (int v : {0, 2, 255}) {
    Frame f = base_frame();
    f.header.version = static_cast<uint8_t>(v);
    EXPECT_TRUE(Rejects(f.bytes(), "bad version")) << v;
  }
}

TEST(BadVersion, EveryReservedFlagBit) {
  for (int bit = 0; bit < 8; ++bit) {
    Frame f = base_frame();
    f.header.flags = static_cast<uint8_t>(1u << bit);
    EXPECT_TRUE(Rejects(f.bytes(), "bad version")) << "flag bit " << bit;
  }
}

TEST(BadVersion, NonZeroReservedFields) {
  for (uint16_t v : {uint16_t{1}, uint16_t{0x8000}}) {
    Frame f = base_frame();
    f.header.reserved16 = v;
    EXPECT_TRUE(Rejects(f.bytes(), "bad version")) << "reserved16 " << v;
  }
  for (uint32_t v : {uint32_t{1}, uint32_t{0x80000000u}}) {
    Frame f = base_frame();
    f.header.reserved32 = v;
    EXPECT_TRUE(Rejects(f.bytes(), "bad version")) << "reserved32 " << v;
  }
}

// ---- bad checksum ------------------------------------------------------------------------------

TEST(BadChecksum, HeaderChecksumDoesNotMatch) {
  const std::string good = base_frame().bytes();
  uint64_t sum;
  std::memcpy(&sum, good.data() + 24, 8);
  Frame f = base_frame();
  f.header.checksum = sum ^ 1;
  EXPECT_TRUE(Rejects(f.bytes(), "bad checksum", "header"));
}

TEST(BadChecksum, EnvelopeChangedAfterTheHeaderChecksum) {
  const std::string good = base_frame().bytes();
  uint64_t sum;
  std::memcpy(&sum, good.data() + 24, 8);
  Frame f = base_frame();
  f.a().set("name", str_v("c")); // same length, still a valid envelope
  f.header.checksum = sum;
  EXPECT_TRUE(Rejects(f.bytes(), "bad checksum", "header"));
}

TEST(BadChecksum, UncompressedPayloadDoesNotMatchItsChecksum) {
  Frame f = base_frame();
  f.payload.bytes()[50] ^= 0x01;
  EXPECT_TRUE(Rejects(f.bytes(), "bad checksum", "'a'"));
  Frame g = base_frame();
  g.a().set("checksum", uint_v(xxh3(a_bytes()) + 1));
  EXPECT_TRUE(Rejects(g.bytes(), "bad checksum", "'a'"));
}

TEST(BadChecksum, CompressedPayloadDoesNotMatchItsChecksum) {
  Frame f = base_frame();
  f.payload.bytes().back() ^= 0x01; // a raw-block byte: still decompresses, to a different value
  EXPECT_TRUE(Rejects(f.bytes(), "bad checksum", "'b'"));
  DecodeOptions no_verify;
  no_verify.verify_checksums = false;
  EXPECT_TRUE(Decodes(f.bytes(), no_verify)) << "verify_checksums=false skips payload checksums";
}

// ---- describe ----------------------------------------------------------------------------------

TEST(DescribeMalformed, HeaderAndEnvelopeErrorsUseTheSameNames) {
  const auto describe_error = [](const std::string &frame) -> std::string {
    try {
      describe(u8(frame), frame.size());
    } catch (const CodecError &e) {
      return e.what();
    }
    return "<described without error>";
  };
  Frame magic = base_frame();
  magic.header.magic = "JEMX";
  EXPECT_EQ(describe_error(magic.bytes()).rfind("bad magic: ", 0), 0u);
  EXPECT_EQ(describe_error(base_frame().bytes().substr(0, 20)).rfind("truncated: ", 0), 0u);
  EXPECT_EQ(describe_error(base_frame().bytes() + "x").rfind("trailing data: ", 0), 0u);
  EXPECT_EQ(describe_error(assemble("\xc1", "")).rfind("bad envelope: ", 0), 0u);
  Frame sum = base_frame();
  sum.header.checksum = 0;
  EXPECT_EQ(describe_error(sum.bytes()).rfind("bad checksum: ", 0), 0u);
}

} // namespace
} // namespace jit::codec
