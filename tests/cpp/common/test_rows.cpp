// Row operations: padding on stack, cutting on split, views versus copies.
#include <cstring>
#include <numeric>

#include <gtest/gtest.h>

#include "common/rows.h"

namespace jit {
namespace {

Tensor iota(const std::string &name, DType dtype, Shape shape, int64_t start = 0) {
  Tensor t = make_tensor(name, dtype, shape);
  auto *p = static_cast<int64_t *>(const_cast<void *>(t.data));
  std::iota(p, p + t.nbytes / 8, start);
  return t;
}

std::vector<int64_t> values(const Tensor &t) {
  const auto *p = static_cast<const int64_t *>(t.data);
  return std::vector<int64_t>(p, p + t.nbytes / 8);
}

TEST(Rows, ConcatPadsTheSequenceDimensionWithThePadValue) {
  Tensor a = iota("ids", DType::kInt64, {1, 3}, 1);  // [1 2 3]
  Tensor b = iota("ids", DType::kInt64, {2, 1}, 10); // [10] [11]
  Tensor out = concat_rows("ids", {a.view(), b.view()}, 1, -1);
  EXPECT_EQ(out.shape, Shape({3, 3}));
  EXPECT_EQ(values(out), std::vector<int64_t>({1, 2, 3, 10, -1, -1, 11, -1, -1}));
  Tensor plain = concat_rows("ids", {a.view(), a.view()}, -1, 0);
  EXPECT_EQ(plain.shape, Shape({2, 3}));
  EXPECT_THROW(concat_rows("ids", {a.view(), b.view()}, -1, 0), std::invalid_argument) << "lengths differ, no padding";
  Tensor f = make_tensor("f", DType::kFloat32, {1, 3});
  EXPECT_THROW(concat_rows("x", {a.view(), f.view()}, 1, 0), std::invalid_argument) << "dtypes differ";
  EXPECT_THROW(concat_rows("x", {}, 1, 0), std::invalid_argument);
}

TEST(Rows, ConcatPadsAnInnerDimensionRowByRow) {
  Tensor a = iota("s", DType::kInt64, {1, 2, 2}, 0); // rows of length 2 along dim 2
  Tensor b = iota("s", DType::kInt64, {1, 2, 3}, 100);
  Tensor out = concat_rows("s", {a.view(), b.view()}, 2, 0);
  EXPECT_EQ(out.shape, Shape({2, 2, 3}));
  EXPECT_EQ(values(out), std::vector<int64_t>({0, 1, 0, 2, 3, 0, 100, 101, 102, 103, 104, 105}));
}

TEST(Rows, SliceIsAViewWhenContiguousAndACopyOtherwise) {
  Tensor t = iota("h", DType::kInt64, {3, 4, 2}); // [rows, seq, dim]
  Tensor whole = slice_rows(t, 1, 2, -1, -1);
  EXPECT_EQ(whole.data, static_cast<const uint8_t *>(t.data) + 8 * 8);
  EXPECT_EQ(whole.shape, Shape({2, 4, 2}));
  Tensor cut = slice_rows(t, 2, 1, 1, 3); // one row, first 3 positions: a prefix
  EXPECT_EQ(cut.data, static_cast<const uint8_t *>(t.data) + 16 * 8);
  EXPECT_EQ(cut.shape, Shape({1, 3, 2}));
  EXPECT_EQ(values(cut), std::vector<int64_t>({16, 17, 18, 19, 20, 21}));
  EXPECT_EQ(cut.owner, t.owner) << "a view keeps the batch alive";
  Tensor two = slice_rows(t, 0, 2, 1, 1); // two rows cut: not contiguous
  EXPECT_NE(two.owner, t.owner);
  EXPECT_EQ(values(two), std::vector<int64_t>({0, 1, 8, 9}));
  Tensor inner = slice_rows(t, 1, 1, 2, 1); // cut along the last dimension: strided
  EXPECT_EQ(values(inner), std::vector<int64_t>({8, 10, 12, 14}));
}

TEST(Rows, FillValueRefusesNonZeroPadsItCannotRepresent) {
  std::vector<uint16_t> half(4, 7);
  fill_value(DType::kFloat16, half.data(), half.size(), 0);
  EXPECT_EQ(half[3], 0);
  EXPECT_THROW(fill_value(DType::kBFloat16, half.data(), half.size(), 1), std::invalid_argument);
  std::vector<float> f(2);
  fill_value(DType::kFloat32, f.data(), f.size(), -3);
  EXPECT_EQ(f[1], -3.0f);
}

} // namespace
} // namespace jit
