// CacheKey stability and sensitivity, and Entry's integrity checks.
#include <cstring>
#include <set>

#include <gtest/gtest.h>

#include "cache/cache.h"
#include "cache_test_util.h"

namespace jit::cache {
namespace {

struct Inputs {
  std::vector<uint8_t> pixels = std::vector<uint8_t>(2 * 3 * 4);
  std::vector<int64_t> ids = {101, 2023, 102};
  Inputs() {
    for (size_t i = 0; i < pixels.size(); ++i)
      pixels[i] = static_cast<uint8_t>(i * 7);
  }
  std::vector<TensorView> views() const {
    return {TensorView{"pixels", DType::kUInt8, {2, 3, 4}, pixels.data(), pixels.size()},
            TensorView{"ids", DType::kInt64, {3}, ids.data(), ids.size() * sizeof(int64_t)}};
  }
};

CacheKey key_of(const std::vector<TensorView> &v, std::string enc = "vae", std::string ver = "sha256:abc",
                std::string params = "{}") {
  return CacheKey::for_inputs(enc, ver, params, v);
}

TEST(CacheKey, GoldenHexIsStable) {
  Inputs in;
  // Changing these values empties every deployed cache: only on purpose, with the framing version.
  // Cross-checked against Python's xxhash.xxh3_128 over the framing described in csrc/cache/key.cpp.
  EXPECT_EQ(key_of(in.views()).hex(), "e6025b23dbec9495adf56742a61f16f9");
  EXPECT_EQ(CacheKey::for_sample_key("vae", "sha256:abc", "img/0001.png").hex(), "93619af5767450f0163cab35f96865a2");
  EXPECT_EQ(CacheKey::content_of_inputs("{}", in.views()).hex(), "c4f78f53dfd936503f819de542453521");
}

TEST(CacheKey, KeyIsTheContentDigestBoundToEncoderAndVersion) {
  Inputs in;
  const CacheKey content = CacheKey::content_of_inputs("{}", in.views());
  EXPECT_EQ(CacheKey::bind("vae", "sha256:abc", content), key_of(in.views()));
  EXPECT_NE(CacheKey::bind("vae", "sha256:abd", content), key_of(in.views()));
  EXPECT_NE(CacheKey::bind("vae", "sha256:abc", content), content);
  EXPECT_EQ(CacheKey::bind("vae", "v", CacheKey::content_of_sample_key("k")),
            CacheKey::for_sample_key("vae", "v", "k"));
  EXPECT_NE(CacheKey::content_of_sample_key(""), CacheKey::content_of_inputs("", {}));
}

// A row of a padded batch hashes like the sample on its own, before it was padded.
TEST(CacheKey, RowOfAPaddedBatchEqualsTheUnpaddedSample) {
  // ids [2, 5] right-padded with 0; row 1 is really [3]. states [2, 5, 2] padded along dim 1, and
  // feats [2, 2, 5] padded along dim 2 (a strided cut).
  std::vector<int64_t> ids = {1, 2, 3, 4, 5, 7, 8, 9, 0, 0};
  std::vector<float> states(2 * 5 * 2), feats(2 * 2 * 5);
  for (size_t i = 0; i < states.size(); ++i)
    states[i] = static_cast<float>(i);
  for (size_t i = 0; i < feats.size(); ++i)
    feats[i] = static_cast<float>(100 + i);
  std::vector<TensorView> batch = {{"ids", DType::kInt64, {2, 5}, ids.data(), ids.size() * 8},
                                   {"states", DType::kFloat32, {2, 5, 2}, states.data(), states.size() * 4},
                                   {"feats", DType::kFloat32, {2, 2, 5}, feats.data(), feats.size() * 4}};
  std::vector<int64_t> own_ids = {7, 8, 9};
  std::vector<float> own_states = {10, 11, 12, 13, 14, 15};
  std::vector<float> own_feats = {110, 111, 112, 115, 116, 117};
  std::vector<TensorView> sample = {{"ids", DType::kInt64, {3}, own_ids.data(), 24},
                                    {"states", DType::kFloat32, {3, 2}, own_states.data(), 24},
                                    {"feats", DType::kFloat32, {2, 3}, own_feats.data(), 24}};
  const std::vector<int> seq_dims = {1, 1, 2};
  EXPECT_EQ(CacheKey::content_of_row("p", batch, 1, seq_dims, 3), CacheKey::content_of_inputs("p", sample));
  EXPECT_NE(CacheKey::content_of_row("p", batch, 1, seq_dims, 4), CacheKey::content_of_inputs("p", sample));
  // Uncut rows: no seq dims, or length -1, hash the whole row.
  std::vector<TensorView> row0 = {{"ids", DType::kInt64, {5}, ids.data(), 40},
                                  {"states", DType::kFloat32, {5, 2}, states.data(), 40},
                                  {"feats", DType::kFloat32, {2, 5}, feats.data(), 40}};
  EXPECT_EQ(CacheKey::content_of_row("p", batch, 0, {}, -1), CacheKey::content_of_inputs("p", row0));
  EXPECT_EQ(CacheKey::content_of_row("p", batch, 0, seq_dims, 5), CacheKey::content_of_inputs("p", row0));
  EXPECT_THROW(CacheKey::content_of_row("p", batch, 2, seq_dims, 3), CacheError);
  EXPECT_THROW(CacheKey::content_of_row("p", batch, 1, seq_dims, 6), CacheError);
  EXPECT_THROW(CacheKey::content_of_row("p", batch, 1, {1}, 3), CacheError);
}

TEST(CacheKey, EveryFieldChangesTheKey) {
  Inputs in;
  const CacheKey base = key_of(in.views());
  std::set<std::string> seen = {base.hex()};
  auto expect_new = [&](const CacheKey &k, const char *what) {
    EXPECT_TRUE(seen.insert(k.hex()).second) << what << " did not change the key";
  };
  expect_new(key_of(in.views(), "vae2"), "encoder name");
  expect_new(key_of(in.views(), "vae", "sha256:abd"), "version");
  expect_new(key_of(in.views(), "vae", "sha256:abc", "{\"size\":256}"), "params");
  auto v = in.views();
  v[0].name = "pixelz";
  expect_new(key_of(v), "input name");
  v = in.views();
  v[0].dtype = DType::kInt8;
  expect_new(key_of(v), "dtype");
  v = in.views();
  v[0].shape = {3, 2, 4};
  expect_new(key_of(v), "shape");
  v = in.views();
  v[0].shape = {24};
  expect_new(key_of(v), "rank");
  Inputs flipped;
  flipped.pixels[5] ^= 1;
  expect_new(key_of(flipped.views()), "one data bit");
  expect_new(key_of({in.views()[0]}), "a missing input");
  expect_new(CacheKey::for_sample_key("vae", "sha256:abc", "x"), "sample key");
  expect_new(CacheKey::for_sample_key("vae", "sha256:abd", "x"), "sample key version");
}

TEST(CacheKey, InputOrderDoesNotMatterButFramingIsUnambiguous) {
  Inputs in;
  auto v = in.views();
  std::swap(v[0], v[1]);
  EXPECT_EQ(key_of(v), key_of(in.views()));
  // Concatenations that agree byte for byte must still differ: every field is length-prefixed.
  EXPECT_NE(key_of(in.views(), "ab", "c"), key_of(in.views(), "a", "bc"));
  EXPECT_NE(CacheKey::for_sample_key("a", "b", "c"), CacheKey::for_sample_key("a", "", "bc"));
  EXPECT_NE(CacheKey::for_inputs("e", "v", "", {}), CacheKey::for_sample_key("e", "v", ""));
}

TEST(CacheKey, RejectsDuplicateNamesAndBadSizes) {
  Inputs in;
  auto v = in.views();
  v[1].name = v[0].name;
  EXPECT_THROW(key_of(v), CacheError);
  v = in.views();
  v[0].nbytes -= 1;
  EXPECT_THROW(key_of(v), CacheError);
}

TEST(CacheKey, HexRoundTrip) {
  CacheKey k(0x0123456789abcdefull, 0xfedcba9876543210ull);
  EXPECT_EQ(k.hex(), "0123456789abcdeffedcba9876543210");
  EXPECT_EQ(CacheKey::from_hex(k.hex()), k);
  EXPECT_FALSE(CacheKey::from_hex("0123"));
  EXPECT_FALSE(CacheKey::from_hex("0123456789ABCDEFfedcba9876543210"));
  EXPECT_FALSE(CacheKey::from_hex("0123456789abcdefXedcba9876543210"));
}

TEST(Entry, RoundTripCarriesVersionAndTensors) {
  auto s = testing::make_sample("a", 16, 2.5f, "v7", 1234);
  auto e = Entry::parse(s.key, s.entry.frame());
  ASSERT_TRUE(e);
  EXPECT_EQ(e->version(), "v7");
  EXPECT_EQ(e->encoder(), "enc");
  EXPECT_EQ(e->created_unix_ms(), 1234);
  ASSERT_EQ(e->tensors().size(), 1u);
  EXPECT_EQ(e->tensors()[0].shape, Shape({16}));
  EXPECT_EQ(testing::first_float(*e), 2.5f);
}

TEST(Entry, WrongKeyCorruptionAndTruncationAreRejected) {
  auto a = testing::make_sample("a");
  auto b = testing::make_sample("b");
  std::string why;
  EXPECT_FALSE(Entry::parse(b.key, a.entry.frame(), &why));
  EXPECT_NE(why.find("wrong key"), std::string::npos) << why;

  std::string bytes = *a.entry.frame();
  bytes[bytes.size() - 3] ^= 0x40; // in the payload: the payload checksum catches it
  EXPECT_FALSE(Entry::parse(a.key, std::make_shared<const std::string>(bytes), &why));
  bytes = *a.entry.frame();
  bytes[40] ^= 0x01; // in the envelope: the header checksum catches it
  EXPECT_FALSE(Entry::parse(a.key, std::make_shared<const std::string>(bytes), &why));
  bytes = a.entry.frame()->substr(0, a.entry.nbytes() / 2);
  EXPECT_FALSE(Entry::parse(a.key, std::make_shared<const std::string>(bytes), &why));
  EXPECT_FALSE(Entry::parse(a.key, std::make_shared<const std::string>(""), &why));
}

} // namespace
} // namespace jit::cache
