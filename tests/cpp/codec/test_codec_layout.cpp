// The layout guarantees of docs/wire-format.md that the encoder must keep (64-byte alignment, zero
// padding, frame length), plan_encode + write, determinism across thread counts, decode options,
// and describe(). Shared helpers are in codec_test_util.h.
#include <gtest/gtest.h>

#include <sstream>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "codec/codec.h"
#include "codec_test_util.h"

namespace jit::codec {
namespace {

using namespace ::jit::codec::test_util;

// More threads than a small CI machine has cores, so that "one thread vs many" really compares two
// schedules. parallel_threads() reads this once, on first use; an explicit JIT_NUM_THREADS wins.
[[maybe_unused]] const bool kManyThreads = [] { return setenv("JIT_NUM_THREADS", "4", /*overwrite=*/0) == 0; }();

// Byte equality of two frames, reporting the sizes and the first difference. (EXPECT_EQ on
// multi-megabyte binary strings would print a line diff whose cost grows with the square of the size.)
::testing::AssertionResult SameBytes(const std::string &a, const std::string &b) {
  if (a == b) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i])
    ++i;
  return ::testing::AssertionFailure() << "byte strings differ: sizes " << a.size() << " and " << b.size()
                                       << ", first difference at offset " << i;
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
      for (size_t t = 0; t < in.size(); ++t)
        expect_same_tensor(in[t], out.tensors[t]);
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
  for (size_t i = 32 + envelope_nbytes(frame); i < payload_base(frame); ++i)
    EXPECT_EQ(frame[i], '\0') << i;
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
      for (uint64_t i = prev_end; i < w.offset; ++i)
        EXPECT_EQ(frame[base + i], '\0') << "padding before " << w.name;
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
  for (size_t t = 0; t < in.size(); ++t)
    expect_same_tensor(in[t], moved.tensors[t]);
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
      for (size_t t = 0; t < in.size(); ++t)
        expect_same_tensor(in[t], out.tensors[t]);
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

} // namespace
} // namespace jit::codec
