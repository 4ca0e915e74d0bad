// Malformed frames: each is rejected with a CodecError whose message starts with the problem's name
// from docs/wire-format.md, "Errors", and each CodecLimits field is enforced.
//
// Every frame here is laid out by hand, independently of the encoder: msgpack-c packs the envelope,
// XXH3-64 gives the header and payload checksums, and compressed payloads are zstd frames holding
// one raw block, written byte by byte. Each test starts from one valid frame (checked to decode in
// BaseFrame.DecodesToTheHandWrittenValues) and changes exactly one thing, recomputing every other
// checksum and length, so that the intended defect is the only one present.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <msgpack.hpp>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "codec/codec.h"

namespace jit::codec {
namespace {

constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

// ---- msgpack values and maps -------------------------------------------------------------------

using Packer = msgpack::packer<msgpack::sbuffer>;
using Value = std::function<void(Packer &)>; // packs one msgpack value

Value uint_v(uint64_t v) {
  return [v](Packer &pk) { pk.pack_uint64(v); };
}
Value int_v(int64_t v) {
  return [v](Packer &pk) { pk.pack_int64(v); };
}
// Appends bytes verbatim (pack_bin_body writes its argument without a header).
void pack_raw(Packer &pk, const std::string &bytes) { pk.pack_bin_body(bytes.data(), static_cast<uint32_t>(bytes.size())); }
// A msgpack float64 (0xcb) even for integral values, which msgpack-c's pack_double() writes as integers.
Value f64_v(double v) {
  return [v](Packer &pk) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    std::string b = "\xcb";
    for (int i = 0; i < 8; ++i) b += static_cast<char>(bits >> (56 - 8 * i));
    pack_raw(pk, b);
  };
}
Value nil_v() {
  return [](Packer &pk) { pk.pack_nil(); };
}
Value str_v(std::string s) {
  return [s](Packer &pk) { pk.pack(s); };
}
Value bin_v(std::string s) {
  return [s](Packer &pk) {
    pk.pack_bin(static_cast<uint32_t>(s.size()));
    pk.pack_bin_body(s.data(), static_cast<uint32_t>(s.size()));
  };
}
Value array_v(std::vector<Value> items) {
  return [items](Packer &pk) {
    pk.pack_array(static_cast<uint32_t>(items.size()));
    for (const auto &v : items) v(pk);
  };
}
Value uints_v(const std::vector<uint64_t> &xs) {
  std::vector<Value> items;
  for (uint64_t x : xs) items.push_back(uint_v(x));
  return array_v(items);
}
// `levels` nested one-element arrays around the integer 1: [[[1]]] for 3.
Value nested_v(int levels) { return levels == 0 ? uint_v(1) : array_v({nested_v(levels - 1)}); }

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

std::string pack(const Value &v) {
  msgpack::sbuffer sb;
  Packer pk(sb);
  v(pk);
  return std::string(sb.data(), sb.size());
}

// ---- payload bytes -----------------------------------------------------------------------------

uint64_t xxh3(const std::string &s) { return XXH3_64bits(s.data(), s.size()); }

uint64_t align64(uint64_t n) { return (n + 63) / 64 * 64; }

// The byte shuffle of docs/wire-format.md: byte j of element i goes to position j * n + i.
std::string shuffle_bytes(const std::string &raw, size_t k) {
  const size_t n = raw.size() / k;
  std::string out(raw.size(), '\0');
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < k; ++j) out[j * n + i] = raw[i * k + j];
  }
  return out;
}

// One complete zstd frame (RFC 8878) holding `content` in a single raw block: magic, a frame header
// with Single_Segment set and a 4-byte Frame_Content_Size, then one last raw block.
std::string zstd_raw_frame(const std::string &content) {
  std::string f = "\x28\xb5\x2f\xfd";
  f += '\xa0'; // Frame_Content_Size_flag 2 (4 bytes), Single_Segment_flag 1, no checksum, no dictionary
  const uint32_t size = static_cast<uint32_t>(content.size());
  for (int i = 0; i < 4; ++i) f += static_cast<char>(size >> (8 * i));
  const uint32_t block = 1u | (0u << 1) | (size << 3); // Last_Block, Block_Type Raw, Block_Size
  for (int i = 0; i < 3; ++i) f += static_cast<char>(block >> (8 * i));
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
Chunks zstd_chunks(const std::string &raw, size_t chunk_size, size_t shuffle_k) {
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

Map none_entry(const std::string &name, const std::string &dtype, const std::vector<uint64_t> &shape,
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

Map zstd_entry(const std::string &name, const std::string &dtype, const std::vector<uint64_t> &shape,
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

template <typename T> void store_le(std::string &s, size_t off, T v) { std::memcpy(&s[off], &v, sizeof(T)); }

// Lays out a frame: the 32-byte header, the envelope, zero padding up to a multiple of 64, then the
// payload region. The header checksum covers header bytes [0, 24) and envelope_nbytes envelope bytes.
std::string assemble(const std::string &envelope, const std::string &payload, const Header &h = {}) {
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
std::string a_bytes() {
  std::string a(100, '\0');
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<char>(i * 7);
  return a;
}
std::string b_raw() {
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
    for (const Map &m : entries) list.push_back(m.value());
    Map root;
    root.set("tensors", array_v(list));
    for (const auto &kv : top.items()) root.set(kv.first, kv.second);
    return pack(root.value());
  }
  std::string bytes() const { return assemble(envelope(), payload.bytes(), header); }
  Map &a() { return entries.at(0); }
  Map &b() { return entries.at(1); }
};

Frame base_frame() {
  Frame f;
  const std::string a = a_bytes();
  f.entries.push_back(none_entry("a", "uint8", {4, 25}, f.payload.add(a), a));
  const Chunks b = zstd_chunks(b_raw(), 128, 4);
  f.entries.push_back(zstd_entry("b", "float32", {64}, f.payload.add(b.stored), b, 256, 128, "shuffle"));
  return f;
}

// Replaces b's compressed payload (it stays last in the region) and its nbytes, checksum and chunks.
void set_b_chunks(Frame &f, const Chunks &c) {
  std::string &region = f.payload.bytes();
  region.resize(128);
  region += c.stored;
  f.b().set("nbytes", uint_v(c.stored.size())).set("checksum", uint_v(xxh3(c.stored))).set("chunks", uints_v(c.lens));
}

// ---- assertions --------------------------------------------------------------------------------

const uint8_t *u8(const std::string &s) { return reinterpret_cast<const uint8_t *>(s.data()); }

// The message of the CodecError that decode() throws, or a description of what happened instead.
std::string decode_error(const std::string &frame, const DecodeOptions &opt = {}) {
  try {
    decode(u8(frame), frame.size(), opt);
  } catch (const CodecError &e) {
    return e.what();
  } catch (const std::exception &e) {
    return std::string("<not a CodecError: ") + e.what() + ">";
  }
  return "<decoded without error>";
}

// decode() throws CodecError "<prefix>: ...", with `detail` somewhere in the message.
::testing::AssertionResult Rejects(const std::string &frame, const std::string &prefix, const std::string &detail = "",
                                   const DecodeOptions &opt = {}) {
  const std::string msg = decode_error(frame, opt);
  if (msg.rfind(prefix + ": ", 0) != 0) {
    return ::testing::AssertionFailure() << "expected \"" << prefix << ": ...\", got \"" << msg << "\"";
  }
  if (msg.find(detail) == std::string::npos) {
    return ::testing::AssertionFailure() << "expected \"" << detail << "\" in \"" << msg << "\"";
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult Decodes(const std::string &frame, const DecodeOptions &opt = {}) {
  try {
    decode(u8(frame), frame.size(), opt);
  } catch (const std::exception &e) {
    return ::testing::AssertionFailure() << "decode threw: " << e.what();
  }
  return ::testing::AssertionSuccess();
}

DecodeOptions with_limits(const std::function<void(CodecLimits &)> &edit) {
  DecodeOptions opt;
  edit(opt.limits);
  return opt;
}

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
  for (size_t i = 100; i < 128; ++i) f.payload.bytes()[i] = '\xff'; // between payload a and payload b
  std::string frame = f.bytes();
  const size_t env_end = 32 + f.envelope().size();
  ASSERT_LT(env_end, align64(env_end)) << "the base envelope should leave padding before payload_base";
  for (size_t i = env_end; i < align64(env_end); ++i) frame[i] = '\xee';
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

// ---- bad envelope ------------------------------------------------------------------------------

TEST(BadEnvelope, EnvelopeIsNotMsgpack) {
  const std::string payload = base_frame().payload.bytes();
  EXPECT_TRUE(Rejects(assemble("\xc1", payload), "bad envelope"));                // reserved byte
  EXPECT_TRUE(Rejects(assemble("", ""), "bad envelope"));                         // nothing at all
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
  for (const Map &m : f.entries) list.push_back(m.value());
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
  for (const Value &dims : {array_v({int_v(-64)}), array_v({str_v("64")}), array_v({f64_v(64.0)}),
                            array_v({nil_v()}), uints_v({uint64_t{1} << 63})}) {
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
    for (size_t i = 0; i < n; ++i) f.entries.push_back(none_entry("e" + std::to_string(i), "uint8", {0}, 0, ""));
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
  EXPECT_TRUE(Rejects(base_frame().bytes(), "over limit", "",
                      with_limits([](CodecLimits &l) { l.max_depth = 3; })));
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
  EXPECT_TRUE(Rejects(base_frame().bytes(), "over limit", "",
                      with_limits([](CodecLimits &l) { l.max_array_length = 10; })));
  Frame f = base_frame();
  f.top.set("meta", array_v(std::vector<Value>(100, nil_v())));
  EXPECT_TRUE(Decodes(f.bytes(), with_limits([](CodecLimits &l) { l.max_array_length = 100; })));
  EXPECT_TRUE(Rejects(f.bytes(), "over limit", "", with_limits([](CodecLimits &l) { l.max_array_length = 99; })));
  Map big;
  for (int i = 0; i < 100; ++i) big.set("k" + std::to_string(i), nil_v());
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
