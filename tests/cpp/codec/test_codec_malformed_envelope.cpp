// Malformed frames, envelope and entries: bad envelope msgpack and keys, size mismatches,
// offsets out of range, unknown dtypes, codecs and filters, duplicate names. Each is rejected with
// a CodecError whose message starts with the problem's name from docs/wire-format.md, "Errors".
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

// ---- bad envelope ------------------------------------------------------------------------------

TEST(BadEnvelope, EnvelopeIsNotMsgpack) {
  const std::string payload = base_frame().payload.bytes();
  EXPECT_TRUE(Rejects(assemble("\xc1", payload), "bad envelope"));                            // reserved byte
  EXPECT_TRUE(Rejects(assemble("", ""), "bad envelope"));                                     // nothing at all
  EXPECT_TRUE(Rejects(assemble(std::string("\x81\xa7tensors", 9), payload), "bad envelope")); // value missing
}

TEST(BadEnvelope, EnvelopeCutShort) {
  Frame f = base_frame();
  std::string env = f.envelope();
  env.pop_back();
  EXPECT_TRUE(Rejects(assemble(env, f.payload.bytes()), "bad envelope"));
}

TEST(BadEnvelope, BytesAfterTheEnvelopeValue) {
  Frame f = base_frame();
  EXPECT_TRUE(Rejects(assemble(f.envelope() + '\xc0', f.payload.bytes()), "bad envelope", "after"));
}

TEST(BadEnvelope, EnvelopeIsNotAMap) {
  Frame f = base_frame();
  std::vector<Value> list;
  for (const Map &m : f.entries)
    list.push_back(m.value());
  EXPECT_TRUE(Rejects(assemble(pack(array_v(list)), f.payload.bytes()), "bad envelope", "not a msgpack map"));
  EXPECT_TRUE(Rejects(assemble(pack(str_v("tensors")), ""), "bad envelope", "not a msgpack map"));
}

TEST(BadEnvelope, TensorsMissingOrNotAnArray) {
  Frame f = base_frame();
  const std::string payload = f.payload.bytes();
  EXPECT_TRUE(Rejects(assemble(pack(Map().set("meta", nil_v()).value()), payload), "bad envelope", "'tensors'"));
  for (const Value &v : {uint_v(2), nil_v(), str_v("a,b"), Map().set("a", uint_v(0)).value()}) {
    Frame g = base_frame();
    g.top.set("tensors", v);
    EXPECT_TRUE(Rejects(g.bytes(), "bad envelope", "'tensors'"));
  }
}

TEST(BadEnvelope, EntryIsNotAMap) {
  for (const Value &v : {uint_v(1), array_v({str_v("name"), str_v("a")}), nil_v()}) {
    Frame f = base_frame();
    f.top.set("tensors", array_v({v}));
    EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", "not a map"));
  }
}

TEST(BadEnvelope, EveryRequiredEntryKeyMissing) {
  // Every key the spec lists except "filter" (optional); chunk_size and chunks for zstd entries only.
  for (const char *key : {"name", "dtype", "shape", "offset", "nbytes", "codec", "raw_nbytes", "checksum"}) {
    Frame f = base_frame();
    f.a().erase(key);
    EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", std::string("'") + key + "'")) << "entry a without " << key;
    Frame g = base_frame();
    g.b().erase(key);
    EXPECT_TRUE(Rejects(g.bytes(), "bad envelope", std::string("'") + key + "'")) << "entry b without " << key;
  }
  for (const char *key : {"chunk_size", "chunks"}) {
    Frame f = base_frame();
    f.b().erase(key);
    EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", std::string("'") + key + "'")) << key;
  }
}

TEST(BadEnvelope, EveryEntryKeyWithTheWrongType) {
  const struct {
    const char *key;
    Value value;
  } cases[] = {
      {"name", uint_v(1)},
      {"name", bin_v("b")},
      {"dtype", uint_v(0)},
      {"shape", str_v("[64]")},
      {"shape", uint_v(64)},
      {"offset", str_v("128")},
      {"offset", int_v(-64)},
      {"nbytes", nil_v()},
      {"nbytes", f64_v(280.0)},
      {"codec", uint_v(1)},
      {"raw_nbytes", int_v(-256)},
      {"raw_nbytes", f64_v(256.0)},
      {"checksum", str_v("0")},
      {"filter", uint_v(1)},
      {"filter", nil_v()},
      {"chunk_size", str_v("128")},
      {"chunks", Map().set("0", uint_v(140)).value()},
      {"chunks", uint_v(280)},
  };
  for (const auto &c : cases) {
    Frame f = base_frame();
    f.b().set(c.key, c.value);
    EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", std::string("'") + c.key + "'")) << c.key;
  }
}

TEST(BadEnvelope, ShapeDimensionThatIsNotANonNegativeInteger) {
  for (const Value &dims : {array_v({int_v(-64)}), array_v({str_v("64")}), array_v({f64_v(64.0)}), array_v({nil_v()}),
                            uints_v({uint64_t{1} << 63})}) {
    Frame f = base_frame();
    f.b().set("shape", dims);
    EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", "shape dimension 0")) << pack(dims).size();
  }
}

TEST(BadEnvelope, ChunkLengthThatIsNotAnInteger) {
  Frame f = base_frame();
  f.b().set("chunks", array_v({int_v(-140), uint_v(140)}));
  EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", "chunk sizes must be integers"));
  Frame g = base_frame();
  g.b().set("chunks", array_v({uint_v(140), str_v("140")}));
  EXPECT_TRUE(Rejects(g.bytes(), "bad envelope", "chunk sizes must be integers"));
}

TEST(BadEnvelope, NameThatIsNotUtf8) {
  for (const char *name : {"\xff", "a\xc3", "\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                           "\xf8\x88\x80\x80\x80", "\x80"}) {
    Frame f = base_frame();
    f.a().set("name", str_v(name));
    EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", "UTF-8")) << ::testing::PrintToString(std::string(name));
  }
  for (const char *name : {"caf\xc3\xa9", "\xe6\x97\xa5", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", ""}) {
    Frame f = base_frame();
    f.a().set("name", str_v(name));
    EXPECT_TRUE(Decodes(f.bytes())) << ::testing::PrintToString(std::string(name));
  }
}

TEST(BadEnvelope, UncompressedPayloadWithTheShuffleFilter) {
  Frame f = base_frame();
  f.a().set("filter", str_v("shuffle"));
  EXPECT_TRUE(Rejects(f.bytes(), "bad envelope", "shuffled"));
}

// ---- size mismatch -----------------------------------------------------------------------------

TEST(SizeMismatch, RawNbytesIsNotShapeTimesItemsize) {
  for (uint64_t raw : {uint64_t{99}, uint64_t{101}, uint64_t{0}}) {
    Frame f = base_frame();
    f.a().set("raw_nbytes", uint_v(raw));
    EXPECT_TRUE(Rejects(f.bytes(), "size mismatch", "raw_nbytes")) << "a " << raw;
  }
  for (uint64_t raw : {uint64_t{255}, uint64_t{64}, uint64_t{512}}) {
    Frame f = base_frame();
    f.b().set("raw_nbytes", uint_v(raw));
    EXPECT_TRUE(Rejects(f.bytes(), "size mismatch", "raw_nbytes")) << "b " << raw;
  }
  Frame g = base_frame();
  g.a().set("shape", uints_v({4, 24})); // 96 elements, raw_nbytes 100
  EXPECT_TRUE(Rejects(g.bytes(), "size mismatch", "raw_nbytes"));
}

TEST(SizeMismatch, UncompressedNbytesDiffersFromRawNbytes) {
  Frame f = base_frame();
  f.a().set("nbytes", uint_v(99)).set("checksum", uint_v(xxh3(a_bytes().substr(0, 99))));
  EXPECT_TRUE(Rejects(f.bytes(), "size mismatch", "nbytes 99 != raw_nbytes 100"));
  Frame g = base_frame();
  g.a().set("nbytes", uint_v(101)).set("checksum", uint_v(xxh3(a_bytes() + '\0')));
  EXPECT_TRUE(Rejects(g.bytes(), "size mismatch", "nbytes 101 != raw_nbytes 100"));
}

TEST(SizeMismatch, ChunkCountDoesNotMatchChunkSize) {
  const std::string good = base_frame().bytes();
  Frame f = base_frame();
  f.b().set("chunk_size", uint_v(64)); // 256 raw bytes need 4 chunks of 64, the frame has 2
  EXPECT_TRUE(Rejects(f.bytes(), "size mismatch", "chunks"));
  Frame g = base_frame();
  g.b().set("chunk_size", uint_v(256)); // needs 1 chunk
  EXPECT_TRUE(Rejects(g.bytes(), "size mismatch", "chunks"));
  Frame h = base_frame();
  Chunks three = zstd_chunks(b_raw(), 128, 4);
  three.add(zstd_raw_frame(std::string(4, '\0')));
  set_b_chunks(h, three);
  EXPECT_TRUE(Rejects(h.bytes(), "size mismatch", "chunks"));
}

TEST(SizeMismatch, ChunkSizeZeroOrNotAMultipleOfTheItemsize) {
  for (uint64_t cs : {uint64_t{0}, uint64_t{126}, uint64_t{129}, uint64_t{2}}) {
    Frame f = base_frame();
    f.b().set("chunk_size", uint_v(cs));
    EXPECT_TRUE(Rejects(f.bytes(), "size mismatch", "chunk_size")) << cs;
  }
}

TEST(SizeMismatch, ChunkLengthsDoNotAddUpToNbytes) {
  const Chunks c = zstd_chunks(b_raw(), 128, 4);
  const uint64_t l0 = c.lens[0], l1 = c.lens[1];
  Frame fewer = base_frame();
  fewer.b().set("chunks", uints_v({l0, l1 - 1}));
  EXPECT_TRUE(Rejects(fewer.bytes(), "size mismatch", "add up to"));
  Frame more = base_frame();
  more.b().set("chunks", uints_v({l0, l1 + 1}));
  EXPECT_TRUE(Rejects(more.bytes(), "size mismatch", "exceed"));
  Frame overflow = base_frame();
  overflow.b().set("chunks", uints_v({kU64Max, l0 + l1 + 1}));
  EXPECT_TRUE(Rejects(overflow.bytes(), "size mismatch", "exceed"));
}

// ---- out of range ------------------------------------------------------------------------------

TEST(OutOfRange, OffsetNotAMultipleOf64) {
  for (uint64_t off : {uint64_t{1}, uint64_t{32}, uint64_t{63}, uint64_t{65}}) {
    Frame f = base_frame();
    f.a().set("offset", uint_v(off));
    EXPECT_TRUE(Rejects(f.bytes(), "out of range", "multiple of 64")) << off;
  }
}

TEST(OutOfRange, PayloadEndsPastThePayloadRegion) {
  const uint64_t region = base_frame().payload.bytes().size();
  Frame f = base_frame();
  f.b().set("offset", uint_v(192)); // b moved one alignment step: its last 64 bytes are past the end
  EXPECT_TRUE(Rejects(f.bytes(), "out of range", "'b'"));
  Frame g = base_frame();
  g.a().set("offset", uint_v(align64(region)));
  EXPECT_TRUE(Rejects(g.bytes(), "out of range", "'a'"));
  Frame h = base_frame();
  h.a().set("offset", uint_v(kU64Max & ~uint64_t{63})); // offset + nbytes overflows
  EXPECT_TRUE(Rejects(h.bytes(), "out of range", "'a'"));
  Frame k = base_frame();
  k.a().set("nbytes", uint_v(kU64Max)).set("raw_nbytes", uint_v(100));
  EXPECT_TRUE(Rejects(k.bytes(), "out of range", "'a'"));
}

// ---- unknown dtype, unknown codec, duplicate name ----------------------------------------------

TEST(UnknownDtype, NamesNotInTheDtypeTable) {
  for (const char *dtype : {"float64", "Float32", "", "float8_e5m2", "complex64", "uint8 "}) {
    Frame f = base_frame();
    f.a().set("dtype", str_v(dtype));
    EXPECT_TRUE(Rejects(f.bytes(), "unknown dtype", std::string("'") + dtype + "'")) << dtype;
  }
}

TEST(UnknownCodec, CodecNamesNotInTheSpec) {
  for (const char *codec : {"lz4", "ZSTD", "", "gzip"}) {
    Frame f = base_frame();
    f.a().set("codec", str_v(codec));
    EXPECT_TRUE(Rejects(f.bytes(), "unknown codec", std::string("'") + codec + "'")) << "a " << codec;
    Frame g = base_frame();
    g.b().set("codec", str_v(codec));
    EXPECT_TRUE(Rejects(g.bytes(), "unknown codec", std::string("'") + codec + "'")) << "b " << codec;
  }
}

TEST(UnknownCodec, FilterNamesNotInTheSpec) {
  for (const char *filter : {"bitshuffle", "delta", "Shuffle", ""}) {
    Frame f = base_frame();
    f.b().set("filter", str_v(filter));
    EXPECT_TRUE(Rejects(f.bytes(), "unknown codec", std::string("'") + filter + "'")) << "b " << filter;
    Frame g = base_frame();
    g.a().set("filter", str_v(filter));
    EXPECT_TRUE(Rejects(g.bytes(), "unknown codec", std::string("'") + filter + "'")) << "a " << filter;
  }
}

TEST(DuplicateName, TwoEntriesWithTheSameName) {
  Frame f = base_frame();
  f.b().set("name", str_v("a"));
  EXPECT_TRUE(Rejects(f.bytes(), "duplicate name", "'a'"));
  Frame g = base_frame(); // a third entry that reuses b's bytes under b's name
  g.entries.push_back(g.b());
  EXPECT_TRUE(Rejects(g.bytes(), "duplicate name", "'b'"));
}

} // namespace
} // namespace jit::codec
