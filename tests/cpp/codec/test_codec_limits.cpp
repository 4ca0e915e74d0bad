// Malformed frames, payloads and limits: corrupt zstd chunks, and every CodecLimits field enforced
// (with its documented default) before the decoder allocates for what a frame claims.
// Every frame is laid out by hand, independently of the encoder (see codec_test_util.h), and each
// test changes exactly one thing in the valid base frame.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "codec/codec.h"
#include "codec_test_util.h"

namespace jit::codec {
namespace {

using namespace ::jit::codec::test_util;

// ---- corrupt payload ---------------------------------------------------------------------------

TEST(CorruptPayload, ChunkThatIsNotAZstdFrame) {
  Frame f = base_frame();
  Chunks c = zstd_chunks(b_raw(), 128, 4);
  Chunks bad;
  bad.add(std::string(c.lens[0], '\x5a')); // same length, not zstd
  bad.add(c.stored.substr(c.lens[0]));
  set_b_chunks(f, bad);
  EXPECT_TRUE(Rejects(f.bytes(), "corrupt payload", "chunk 0"));
  DecodeOptions no_verify;
  no_verify.verify_checksums = false;
  EXPECT_TRUE(Rejects(f.bytes(), "corrupt payload", "chunk 0", no_verify)) << "without checksums as well";
}

TEST(CorruptPayload, ChunkThatDecompressesToFewerBytesThanItsShare) {
  Frame f = base_frame();
  Chunks c;
  c.add(zstd_raw_frame(shuffle_bytes(b_raw().substr(0, 128), 4)));
  c.add(zstd_raw_frame(std::string(100, '\x01'))); // chunk 1 must hold 128 bytes
  set_b_chunks(f, c);
  EXPECT_TRUE(Rejects(f.bytes(), "corrupt payload", "chunk 1 decompressed to 100 bytes, expected 128"));
}

TEST(CorruptPayload, ChunkThatDecompressesToMoreBytesThanItsShare) {
  Frame f = base_frame();
  Chunks c;
  c.add(zstd_raw_frame(std::string(132, '\x01'))); // chunk 0 must hold 128 bytes
  c.add(zstd_raw_frame(shuffle_bytes(b_raw().substr(128), 4)));
  set_b_chunks(f, c);
  EXPECT_TRUE(Rejects(f.bytes(), "corrupt payload", "chunk 0"));
}

TEST(CorruptPayload, EmptyAndCutZstdFrames) {
  const Chunks good = zstd_chunks(b_raw(), 128, 4);
  Frame empty = base_frame();
  Chunks e;
  e.stored = good.stored;
  e.lens = {0, good.stored.size()}; // chunk 0 has no bytes, chunk 1 holds two frames (256 raw bytes)
  set_b_chunks(empty, e);
  EXPECT_TRUE(Rejects(empty.bytes(), "corrupt payload", "chunk"));

  Frame cut = base_frame();
  Chunks c;
  c.add(good.stored.substr(0, good.lens[0] - 10)); // a raw block 10 bytes short of its Block_Size
  c.add(good.stored.substr(good.lens[0]));
  set_b_chunks(cut, c);
  EXPECT_TRUE(Rejects(cut.bytes(), "corrupt payload", "chunk 0"));
}

// ---- over limit: every CodecLimits field -------------------------------------------------------

TEST(OverLimit, MaxFrameBytes) {
  const std::string frame = base_frame().bytes();
  EXPECT_TRUE(Decodes(frame, with_limits([&](CodecLimits &l) { l.max_frame_bytes = frame.size(); })));
  EXPECT_TRUE(Rejects(frame, "over limit", "max_frame_bytes",
                      with_limits([&](CodecLimits &l) { l.max_frame_bytes = frame.size() - 1; })));
}

TEST(OverLimit, MaxEnvelopeBytes) {
  Frame f = base_frame();
  const uint64_t env = f.envelope().size();
  EXPECT_TRUE(Decodes(f.bytes(), with_limits([&](CodecLimits &l) { l.max_envelope_bytes = env; })));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "max_envelope_bytes",
                      with_limits([&](CodecLimits &l) { l.max_envelope_bytes = env - 1; })));
  // Checked before the envelope length is compared with the frame: a huge claim is "over limit".
  f.header.envelope_nbytes = 0xFFFFFFFFu;
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "max_envelope_bytes"));
}

TEST(OverLimit, MaxEntries) {
  const std::string frame = base_frame().bytes();
  EXPECT_TRUE(Decodes(frame, with_limits([](CodecLimits &l) { l.max_entries = 2; })));
  EXPECT_TRUE(Rejects(frame, "over limit", "max_entries", with_limits([](CodecLimits &l) { l.max_entries = 1; })));
}

TEST(OverLimit, DefaultMaxEntriesIs4096) {
  for (size_t n : {size_t{4096}, size_t{4097}}) {
    Frame f;
    for (size_t i = 0; i < n; ++i)
      f.entries.push_back(none_entry("e" + std::to_string(i), "uint8", {0}, 0, ""));
    if (n == 4096) {
      EXPECT_TRUE(Decodes(f.bytes()));
    } else {
      EXPECT_TRUE(Rejects(f.bytes(), "over limit", "max_entries"));
    }
  }
}

TEST(OverLimit, MaxRank) {
  const std::string frame = base_frame().bytes(); // "a" has rank 2
  EXPECT_TRUE(Decodes(frame, with_limits([](CodecLimits &l) { l.max_rank = 2; })));
  EXPECT_TRUE(Rejects(frame, "over limit", "max_rank", with_limits([](CodecLimits &l) { l.max_rank = 1; })));
}

TEST(OverLimit, DefaultMaxRankIs8) {
  Frame f = base_frame();
  f.a().set("shape", uints_v({1, 1, 1, 1, 1, 1, 4, 25}));
  EXPECT_TRUE(Decodes(f.bytes()));
  f.a().set("shape", uints_v({1, 1, 1, 1, 1, 1, 1, 4, 25}));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "max_rank"));
}

TEST(OverLimit, MaxTensorBytesForUncompressedAndCompressedEntries) {
  const std::string frame = base_frame().bytes(); // a: 100 raw bytes, b: 256
  EXPECT_TRUE(Decodes(frame, with_limits([](CodecLimits &l) { l.max_tensor_bytes = 256; })));
  EXPECT_TRUE(Rejects(frame, "over limit", "'b'", with_limits([](CodecLimits &l) { l.max_tensor_bytes = 255; })));
  EXPECT_TRUE(Rejects(frame, "over limit", "'a'", with_limits([](CodecLimits &l) { l.max_tensor_bytes = 99; })));
}

TEST(OverLimit, DecompressionBombIsRejectedBeforeAllocating) {
  // A compressed entry that claims 3 GiB after decompression: over the 2 GiB default.
  Frame f = base_frame();
  const uint64_t numel = (3ull << 30) / 4;
  const uint64_t chunk = 1ull << 30;
  f.b().set("shape", uints_v({numel})).set("raw_nbytes", uint_v(numel * 4)).set("chunk_size", uint_v(chunk));
  f.b().set("chunks", uints_v({140, 70, 70}));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "max_tensor_bytes"));
}

TEST(OverLimit, ShapeWhoseByteCountOverflows) {
  Frame f = base_frame();
  f.a().set("shape", uints_v({uint64_t{1} << 32, uint64_t{1} << 32})); // 2^64 elements
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "overflows"));
  Frame g = base_frame();
  g.b().set("shape", uints_v({uint64_t{1} << 62})); // 2^62 float32: 2^64 bytes
  EXPECT_TRUE(Rejects(g.bytes(), "over limit", "overflows"));
}

TEST(OverLimit, MaxDecompressedBytesCountsOnlyCompressedEntries) {
  // a (100 raw, uncompressed) + b (256, compressed) = 356, but only b counts.
  EXPECT_TRUE(Decodes(base_frame().bytes(), with_limits([](CodecLimits &l) { l.max_decompressed_bytes = 256; })));
  EXPECT_TRUE(Rejects(base_frame().bytes(), "over limit", "max_decompressed_bytes",
                      with_limits([](CodecLimits &l) { l.max_decompressed_bytes = 255; })));
  // Two compressed entries, each within the limit, together over it.
  Frame f = base_frame();
  const Chunks c = zstd_chunks(b_raw(), 128, 4);
  f.entries.push_back(zstd_entry("c", "float32", {64}, f.payload.add(c.stored), c, 256, 128, "shuffle"));
  EXPECT_TRUE(Decodes(f.bytes(), with_limits([](CodecLimits &l) { l.max_decompressed_bytes = 512; })));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "max_decompressed_bytes",
                      with_limits([](CodecLimits &l) { l.max_decompressed_bytes = 511; })));
}

TEST(OverLimit, MaxDepth) {
  // The base envelope nests four containers deep: root map, tensors, entry map, shape / chunks.
  EXPECT_TRUE(Decodes(base_frame().bytes(), with_limits([](CodecLimits &l) { l.max_depth = 4; })));
  EXPECT_TRUE(Rejects(base_frame().bytes(), "over limit", "", with_limits([](CodecLimits &l) { l.max_depth = 3; })));
  // meta of six nested arrays: seven levels with the root map.
  Frame f = base_frame();
  f.top.set("meta", nested_v(6));
  EXPECT_TRUE(Decodes(f.bytes(), with_limits([](CodecLimits &l) { l.max_depth = 7; })));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "", with_limits([](CodecLimits &l) { l.max_depth = 6; })));
}

TEST(OverLimit, DefaultMaxDepthIs32) {
  Frame f = base_frame();
  f.top.set("meta", nested_v(31)); // 32 levels
  EXPECT_TRUE(Decodes(f.bytes()));
  f.top.set("meta", nested_v(32)); // 33 levels
  EXPECT_TRUE(Rejects(f.bytes(), "over limit"));
}

TEST(OverLimit, MaxArrayLengthForArraysAndMaps) {
  // Entry b is the largest container of the base envelope: a map of 11 pairs.
  EXPECT_TRUE(Decodes(base_frame().bytes(), with_limits([](CodecLimits &l) { l.max_array_length = 11; })));
  EXPECT_TRUE(
      Rejects(base_frame().bytes(), "over limit", "", with_limits([](CodecLimits &l) { l.max_array_length = 10; })));
  Frame f = base_frame();
  f.top.set("meta", array_v(std::vector<Value>(100, nil_v())));
  EXPECT_TRUE(Decodes(f.bytes(), with_limits([](CodecLimits &l) { l.max_array_length = 100; })));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "", with_limits([](CodecLimits &l) { l.max_array_length = 99; })));
  Map big;
  for (int i = 0; i < 100; ++i)
    big.set("k" + std::to_string(i), nil_v());
  Frame g = base_frame();
  g.top.set("meta", big.value());
  EXPECT_TRUE(Decodes(g.bytes(), with_limits([](CodecLimits &l) { l.max_array_length = 100; })));
  EXPECT_TRUE(Rejects(g.bytes(), "over limit", "", with_limits([](CodecLimits &l) { l.max_array_length = 99; })));
}

TEST(OverLimit, DefaultMaxArrayLengthIs65536) {
  Frame f = base_frame();
  f.top.set("meta", array_v(std::vector<Value>(65536, nil_v())));
  EXPECT_TRUE(Decodes(f.bytes()));
  f.top.set("meta", array_v(std::vector<Value>(65537, nil_v())));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit"));
}

TEST(OverLimit, ArrayHeaderClaimingMoreElementsThanTheEnvelopeHoldsIsRejectedWithoutAllocating) {
  // array32 of 2^32-1 elements in a 5-byte envelope: the parser must not allocate 2^32 objects first.
  // Either name fits ("not valid msgpack", or the bound the decoder derives from the envelope length).
  const std::string frame = assemble(std::string("\xdd\xff\xff\xff\xff", 5), "");
  const std::string msg = decode_error(frame);
  EXPECT_TRUE(msg.rfind("over limit: ", 0) == 0 || msg.rfind("bad envelope: ", 0) == 0) << msg;
  const std::string map_frame = assemble(std::string("\xdf\xff\xff\xff\xff", 5), "");
  const std::string map_msg = decode_error(map_frame);
  EXPECT_TRUE(map_msg.rfind("over limit: ", 0) == 0 || map_msg.rfind("bad envelope: ", 0) == 0) << map_msg;
}

TEST(OverLimit, MaxChunks) {
  const std::string frame = base_frame().bytes(); // b has 2 chunks
  EXPECT_TRUE(Decodes(frame, with_limits([](CodecLimits &l) { l.max_chunks = 2; })));
  EXPECT_TRUE(Rejects(frame, "over limit", "max_chunks", with_limits([](CodecLimits &l) { l.max_chunks = 1; })));
}

} // namespace
} // namespace jit::codec
