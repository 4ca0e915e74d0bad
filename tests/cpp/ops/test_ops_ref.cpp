// CPU references of the kernels (csrc/ops): scalar fp8/bf16/fp16 rounding against known values and brute force,
// quantization error on Gaussian data, and preprocessing against hand-computed resizes. No GPU needed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "ops/ops_ref.h"

namespace jit::ops::ref {
namespace {

using kernels::kInvalidValue;
using kernels::kOk;

float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// The e4m3fn value of a code computed independently of the implementation: in double, with pow.
double e4m3_expected(int code) {
  const int e = (code >> 3) & 0xF, m = code & 7;
  const double v = e == 0 ? m / 512.0 : (1.0 + m / 8.0) * std::pow(2.0, e - 7);
  return (code & 0x80) ? -v : v;
}

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> v(n);
  for (auto &x : v)
    x = dist(rng);
  return v;
}

// sqrt(sum (x - y)^2 / sum x^2), in double.
double relative_rms(const std::vector<float> &x, const std::vector<float> &y) {
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    num += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    den += double(x[i]) * x[i];
  }
  return std::sqrt(num / den);
}

// ---- fp8 e4m3fn ------------------------------------------------------------------------------------------------

TEST(Fp8E4M3, KnownValues) {
  EXPECT_EQ(e4m3fn_to_float(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3fn_to_float(0x80)));
  EXPECT_EQ(e4m3fn_to_float(0x01), std::ldexp(1.0f, -9)); // smallest subnormal
  EXPECT_EQ(e4m3fn_to_float(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(e4m3fn_to_float(0x08), std::ldexp(1.0f, -6)); // smallest normal
  EXPECT_EQ(e4m3fn_to_float(0x38), 1.0f);
  EXPECT_EQ(e4m3fn_to_float(0x3C), 1.5f);
  EXPECT_EQ(e4m3fn_to_float(0x40), 2.0f);
  EXPECT_EQ(e4m3fn_to_float(0x77), 240.0f);
  EXPECT_EQ(e4m3fn_to_float(0x7E), 448.0f); // largest finite
  EXPECT_EQ(e4m3fn_to_float(0xB8), -1.0f);
  EXPECT_EQ(e4m3fn_to_float(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(e4m3fn_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3fn_to_float(0xFF)));

  EXPECT_EQ(float_to_e4m3fn(1.0f), 0x38);
  EXPECT_EQ(float_to_e4m3fn(-2.0f), 0xC0);
  EXPECT_EQ(float_to_e4m3fn(0.1f), 0x1D); // 0.1 lies between 0.09375 (0x1C) and 0.1015625 (0x1D), nearer the latter
}

TEST(Fp8E4M3, AllCodesDecode) {
  int finite_positive = 0;
  for (int code = 0; code < 256; ++code) {
    const float v = e4m3fn_to_float(static_cast<uint8_t>(code));
    if ((code & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(v)) << code;
      continue;
    }
    EXPECT_EQ(double(v), e4m3_expected(code)) << "code " << code;
    EXPECT_EQ(std::signbit(v), (code & 0x80) != 0) << code;
    if (code > 0 && code < 0x7F) {
      ++finite_positive;
      EXPECT_GT(v, e4m3fn_to_float(static_cast<uint8_t>(code - 1))) << "codes must increase with value: " << code;
    }
  }
  EXPECT_EQ(finite_positive, 126);
}

TEST(Fp8E4M3, EveryCodeRoundTrips) {
  for (int code = 0; code < 256; ++code) {
    const uint8_t c = static_cast<uint8_t>(code);
    if ((code & 0x7F) == 0x7F) {
      EXPECT_EQ(float_to_e4m3fn(e4m3fn_to_float(c)), 0x7F) << "NaN re-encodes as the canonical NaN";
    } else {
      EXPECT_EQ(float_to_e4m3fn(e4m3fn_to_float(c)), c) << "code " << code;
    }
  }
}

TEST(Fp8E4M3, TiesRoundToEven) {
  // Hand-picked midpoints: normal, across an exponent boundary, and subnormal.
  EXPECT_EQ(float_to_e4m3fn(1.0625f), 0x38); // between 1.0 (0x38, even) and 1.125 (0x39)
  EXPECT_EQ(float_to_e4m3fn(1.1875f), 0x3A); // between 1.125 (0x39) and 1.25 (0x3A, even)
  EXPECT_EQ(float_to_e4m3fn(1.9375f), 0x40); // between 1.875 (0x3F) and 2.0 (0x40, even): carries into the exponent
  EXPECT_EQ(float_to_e4m3fn(std::ldexp(1.0f, -10)), 0x00);     // half the smallest subnormal -> 0
  EXPECT_EQ(float_to_e4m3fn(3 * std::ldexp(1.0f, -10)), 0x02); // between 0x01 and 0x02 (even)
  EXPECT_EQ(float_to_e4m3fn(-std::ldexp(1.0f, -10)), 0x80);    // the sign survives underflow
  EXPECT_EQ(float_to_e4m3fn(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);

  // Every midpoint between adjacent finite codes goes to the even code, and its neighbours in fp32 go to the
  // nearer code.
  for (int code = 0; code < 0x7E; ++code) {
    const float lo = e4m3fn_to_float(static_cast<uint8_t>(code));
    const float hi = e4m3fn_to_float(static_cast<uint8_t>(code + 1));
    const float mid = (lo + hi) / 2; // exact: both have few significant bits
    const int even = code % 2 == 0 ? code : code + 1;
    EXPECT_EQ(float_to_e4m3fn(mid), even) << "midpoint after code " << code;
    EXPECT_EQ(float_to_e4m3fn(-mid), 0x80 | even) << "negative midpoint after code " << code;
    EXPECT_EQ(float_to_e4m3fn(std::nextafter(mid, 0.0f)), code);
    EXPECT_EQ(float_to_e4m3fn(std::nextafter(mid, 1000.0f)), code + 1);
  }
}

TEST(Fp8E4M3, SaturatesAndKeepsNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float x : {448.0f, 449.0f, 463.9f, 464.0f, 465.0f, 480.0f, 1e6f, 3e38f, inf}) {
    EXPECT_EQ(float_to_e4m3fn(x), 0x7E) << x;
    EXPECT_EQ(float_to_e4m3fn(-x), 0xFE) << -x;
  }
  EXPECT_EQ(float_to_e4m3fn(std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(float_to_e4m3fn(-std::numeric_limits<float>::quiet_NaN()), 0x7F);
  EXPECT_EQ(float_to_e4m3fn(1e-30f), 0x00);
  EXPECT_EQ(float_to_e4m3fn(-1e-30f), 0x80);
  EXPECT_EQ(float_to_e4m3fn(std::numeric_limits<float>::denorm_min()), 0x00);
}

// Brute force: the nearest finite code (ties to the even code), compared on random fp32 bit patterns that cover
// the whole e4m3 range and beyond.
TEST(Fp8E4M3, MatchesBruteForceNearest) {
  std::vector<double> values(0x7F);
  for (int code = 0; code < 0x7F; ++code)
    values[code] = e4m3_expected(code);
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> mantissa(0, 0x7FFFFF);
  std::uniform_int_distribution<int> exponent(127 - 14, 127 + 9); // 2^-14 .. 2^9
  for (int i = 0; i < 200000; ++i) {
    const float x = from_bits((uint32_t(exponent(rng)) << 23) | mantissa(rng));
    int best = 0;
    for (int code = 1; code < 0x7F; ++code) {
      const double d = std::fabs(values[code] - x), d_best = std::fabs(values[best] - x);
      if (d < d_best || (d == d_best && code % 2 == 0)) best = code;
    }
    ASSERT_EQ(float_to_e4m3fn(x), best) << "x = " << x;
  }
}

// ---- bf16 / fp16 -----------------------------------------------------------------------------------------------

TEST(Float16Formats, KnownValuesAndTies) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);       // tie -> even (down)
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);   // tie -> even (up)
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7F80); // rounds up to Inf
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::quiet_NaN()), 0x7FFF);

  EXPECT_EQ(float_to_fp16(1.0f), 0x3C00);
  EXPECT_EQ(float_to_fp16(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16(65519.0f), 0x7BFF);
  EXPECT_EQ(float_to_fp16(65520.0f), 0x7C00); // tie between 65504 (odd) and 65536 -> Inf
  EXPECT_EQ(float_to_fp16(-1e9f), 0xFC00);
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -24)), 0x0001);     // smallest subnormal
  EXPECT_EQ(float_to_fp16(std::ldexp(1.0f, -25)), 0x0000);     // tie -> 0
  EXPECT_EQ(float_to_fp16(3 * std::ldexp(1.0f, -25)), 0x0002); // tie -> even
  EXPECT_EQ(float_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(float_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(float_to_fp16(std::numeric_limits<float>::quiet_NaN()), 0x7FFF);
  EXPECT_EQ(fp16_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(fp16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_float(0xFC00), -std::numeric_limits<float>::infinity());
}

TEST(Float16Formats, EveryCodeRoundTrips) {
  for (uint32_t code = 0; code < 0x10000; ++code) {
    const uint16_t c = static_cast<uint16_t>(code);
    if ((code & 0x7FFF) > 0x7C00) {
      EXPECT_TRUE(std::isnan(fp16_to_float(c)));
    } else {
      ASSERT_EQ(float_to_fp16(fp16_to_float(c)), c) << "fp16 " << code;
    }
    if ((code & 0x7FFF) > 0x7F80) {
      EXPECT_TRUE(std::isnan(bf16_to_float(c)));
    } else {
      ASSERT_EQ(float_to_bf16(bf16_to_float(c)), c) << "bf16 " << code;
    }
  }
}

// ---- quantization ----------------------------------------------------------------------------------------------

TEST(QuantizeRef, Fp8RowwiseGaussianError) {
  const int64_t rows = 64, cols = 1024;
  const std::vector<float> x = gaussian(rows * cols, 1);
  std::vector<uint8_t> q(x.size());
  std::vector<float> scales(rows), y(x.size());
  ASSERT_EQ(quantize_fp8_rowwise(x.data(), FloatDtype::kFloat32, rows, cols, q.data(), scales.data()), kOk);
  ASSERT_EQ(dequantize_fp8_rowwise(q.data(), scales.data(), rows, cols, y.data(), FloatDtype::kFloat32), kOk);
  const double err = relative_rms(x, y);
  RecordProperty("fp8_rowwise_relative_rms", std::to_string(err));
  EXPECT_LT(err, 0.04);
  EXPECT_GT(err, 0.01) << "3 mantissa bits cannot be this accurate: is the data really quantized?";
  for (int64_t r = 0; r < rows; ++r) {
    float absmax = 0;
    for (int64_t j = 0; j < cols; ++j)
      absmax = std::max(absmax, std::fabs(x[r * cols + j]));
    EXPECT_EQ(scales[r], absmax / 448.0f);
  }
}

TEST(QuantizeRef, Bf16CastGaussianError) {
  const std::vector<float> x = gaussian(65536, 2);
  std::vector<uint16_t> h(x.size());
  std::vector<float> y(x.size());
  ASSERT_EQ(cast_float(x.data(), FloatDtype::kFloat32, h.data(), FloatDtype::kBFloat16, x.size()), kOk);
  ASSERT_EQ(cast_float(h.data(), FloatDtype::kBFloat16, y.data(), FloatDtype::kFloat32, x.size()), kOk);
  const double err = relative_rms(x, y);
  RecordProperty("bf16_relative_rms", std::to_string(err));
  EXPECT_LT(err, 0.003);
  // fp16 keeps 3 more mantissa bits than bf16.
  ASSERT_EQ(cast_float(x.data(), FloatDtype::kFloat32, h.data(), FloatDtype::kFloat16, x.size()), kOk);
  ASSERT_EQ(cast_float(h.data(), FloatDtype::kFloat16, y.data(), FloatDtype::kFloat32, x.size()), kOk);
  EXPECT_LT(relative_rms(x, y), 0.0004);
}

TEST(QuantizeRef, Int8RowwiseErrorBound) {
  const int64_t rows = 16, cols = 333;
  std::vector<float> x = gaussian(rows * cols, 3);
  for (int64_t j = 0; j < cols; ++j)
    x[5 * cols + j] *= 1e-3f; // a quiet row gets its own small scale
  std::vector<int8_t> q(x.size());
  std::vector<float> scales(rows), y(x.size());
  ASSERT_EQ(quantize_int8_rowwise(x.data(), FloatDtype::kFloat32, rows, cols, q.data(), scales.data()), kOk);
  ASSERT_EQ(dequantize_int8_rowwise(q.data(), scales.data(), rows, cols, y.data(), FloatDtype::kFloat32), kOk);
  for (int64_t r = 0; r < rows; ++r) {
    bool hit_max = false;
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t i = r * cols + j;
      ASSERT_GE(q[i], -127);
      hit_max |= std::abs(q[i]) == 127;
      // Half a step, plus fp32 rounding of the division and of the multiply.
      EXPECT_LE(std::fabs(x[i] - y[i]), scales[r] * (0.5f + 1e-5f)) << "row " << r << " col " << j;
    }
    EXPECT_TRUE(hit_max) << "the row's absmax element must map to +-127, row " << r;
  }
  EXPECT_LT(scales[5], scales[4] * 0.01f);
}

TEST(QuantizeRef, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  // Row 0: all zeros. Row 1: NaN and Inf next to finite values, which alone decide the scale.
  const std::vector<float> x = {0, 0, 0, 0, 1.0f, nan, -inf, -4.0f};
  std::vector<uint8_t> q(8);
  std::vector<int8_t> qi(8);
  std::vector<float> scales(2);
  ASSERT_EQ(quantize_fp8_rowwise(x.data(), FloatDtype::kFloat32, 2, 4, q.data(), scales.data()), kOk);
  EXPECT_EQ(scales[0], 1.0f);
  EXPECT_EQ(scales[1], 4.0f / 448.0f);
  EXPECT_EQ(q, (std::vector<uint8_t>{0, 0, 0, 0, float_to_e4m3fn(112.0f), 0x7F, 0xFE, 0xFE}));
  ASSERT_EQ(quantize_int8_rowwise(x.data(), FloatDtype::kFloat32, 2, 4, qi.data(), scales.data()), kOk);
  EXPECT_EQ(scales[1], 4.0f / 127.0f);
  EXPECT_EQ(qi, (std::vector<int8_t>{0, 0, 0, 0, 32, 0, -127, -127})); // 1 / (4 / 127) = 31.75

  // absmax 127 makes the scale exactly 1, so the halves below are exact ties: they round to even.
  const std::vector<float> ties = {127.0f, 63.5f, -62.5f, 0.5f};
  ASSERT_EQ(quantize_int8_rowwise(ties.data(), FloatDtype::kFloat32, 1, 4, qi.data(), scales.data()), kOk);
  EXPECT_EQ(scales[0], 1.0f);
  EXPECT_EQ(std::vector<int8_t>(qi.begin(), qi.begin() + 4), (std::vector<int8_t>{127, 64, -62, 0}));

  // A row of zero columns still gets its scale.
  scales = {0, 0};
  EXPECT_EQ(quantize_fp8_rowwise(nullptr, FloatDtype::kFloat32, 2, 0, nullptr, scales.data()), kOk);
  EXPECT_EQ(scales, (std::vector<float>{1, 1}));
}

TEST(QuantizeRef, Fp8PerTensorAndBf16Source) {
  const std::vector<float> x = gaussian(1001, 4);
  std::vector<uint16_t> xb(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    xb[i] = float_to_bf16(x[i]);
  std::vector<uint8_t> q(x.size()), qb(x.size());
  std::vector<uint16_t> yb(x.size());
  float scale = 0, scale_b = 0;
  ASSERT_EQ(quantize_fp8_per_tensor(x.data(), FloatDtype::kFloat32, x.size(), q.data(), &scale), kOk);
  ASSERT_EQ(quantize_fp8_per_tensor(xb.data(), FloatDtype::kBFloat16, x.size(), qb.data(), &scale_b), kOk);
  float absmax = 0;
  for (uint16_t b : xb)
    absmax = std::max(absmax, std::fabs(bf16_to_float(b)));
  EXPECT_EQ(scale_b, absmax / 448.0f);
  ASSERT_EQ(dequantize_fp8_per_tensor(qb.data(), &scale_b, x.size(), yb.data(), FloatDtype::kBFloat16), kOk);
  for (size_t i = 0; i < x.size(); ++i) {
    // The bf16 output is the fp32 product rounded once.
    EXPECT_EQ(yb[i], float_to_bf16(e4m3fn_to_float(qb[i]) * scale_b)) << i;
  }
  std::vector<float> y(x.size());
  ASSERT_EQ(dequantize_fp8_per_tensor(q.data(), &scale, x.size(), y.data(), FloatDtype::kFloat32), kOk);
  EXPECT_LT(relative_rms(x, y), 0.04);
}

TEST(QuantizeRef, RejectsBadArguments) {
  float s[2];
  uint8_t q[4];
  const float x[4] = {};
  const auto bad = static_cast<FloatDtype>(7);
  EXPECT_EQ(quantize_fp8_rowwise(x, FloatDtype::kFloat32, -1, 2, q, s), kInvalidValue);
  EXPECT_EQ(quantize_fp8_rowwise(x, FloatDtype::kFloat32, 2, -2, q, s), kInvalidValue);
  EXPECT_EQ(quantize_fp8_rowwise(x, bad, 2, 2, q, s), kInvalidValue);
  EXPECT_EQ(quantize_fp8_rowwise(nullptr, FloatDtype::kFloat32, 2, 2, q, s), kInvalidValue);
  EXPECT_EQ(quantize_fp8_rowwise(x, FloatDtype::kFloat32, 2, 2, q, nullptr), kInvalidValue);
  EXPECT_EQ(quantize_fp8_rowwise(x, FloatDtype::kFloat32, INT64_MAX, 2, q, s), kInvalidValue);
  EXPECT_EQ(quantize_fp8_rowwise(nullptr, FloatDtype::kFloat32, 0, 5, nullptr, nullptr), kOk);
  EXPECT_EQ(quantize_fp8_per_tensor(x, FloatDtype::kFloat32, 4, q, nullptr), kInvalidValue);
  EXPECT_EQ(dequantize_fp8_per_tensor(q, nullptr, 4, s, FloatDtype::kFloat32), kInvalidValue);
  EXPECT_EQ(cast_float(x, FloatDtype::kFloat32, s, bad, 1), kInvalidValue);
  EXPECT_EQ(cast_float(x, FloatDtype::kFloat32, nullptr, FloatDtype::kFloat16, 1), kInvalidValue);
  EXPECT_EQ(cast_float(nullptr, FloatDtype::kFloat32, nullptr, FloatDtype::kFloat16, 0), kOk);
}

// ---- preprocessing ---------------------------------------------------------------------------------------------

// Runs the reference in fp32 on one [h, w, c] frame (or n frames) and returns dst [n, c, out_h, out_w].
std::vector<float> preprocess(const std::vector<uint8_t> &src, int64_t n, int64_t h, int64_t w, int64_t c,
                              int64_t out_h, int64_t out_w, ResizeMode mode, const std::vector<float> &mean,
                              const std::vector<float> &std) {
  std::vector<float> dst(n * c * out_h * out_w);
  EXPECT_EQ(preprocess_nhwc_u8(src.data(), n, h, w, c, out_h, out_w, mean.data(), std.data(), mode,
                               FloatDtype::kFloat32, dst.data()),
            kOk);
  return dst;
}

// With mean 0 and std 1 the output is v / 255: this gives back v, the resampled pixel value.
std::vector<float> resample(const std::vector<uint8_t> &src, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
                            ResizeMode mode) {
  std::vector<float> v = preprocess(src, 1, h, w, 1, out_h, out_w, mode, {0.0f}, {1.0f});
  for (float &x : v)
    x *= 255.0f;
  return v;
}

void expect_near_all(const std::vector<float> &got, const std::vector<float> &want, float tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], tol) << "element " << i;
}

TEST(PreprocessRef, NoResizeIsNormalization) {
  const int64_t n = 2, h = 3, w = 5, c = 3;
  std::vector<uint8_t> src(n * h * w * c);
  std::mt19937 rng(5);
  for (auto &b : src)
    b = static_cast<uint8_t>(rng() & 0xFF);
  src[0] = 0;
  src[1] = 255;
  const std::vector<float> mean = {0.485f, 0.456f, 0.406f}, std = {0.229f, 0.224f, 0.225f};
  const std::vector<float> out = preprocess(src, n, h, w, c, h, w, ResizeMode::kNone, mean, std);
  for (int64_t img = 0; img < n; ++img) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) {
          const double v = src[((img * h + y) * w + x) * c + ch];
          const double want = (v / 255.0 - mean[ch]) / std[ch]; // torchvision ToTensor + Normalize, in double
          EXPECT_NEAR(out[((img * c + ch) * h + y) * w + x], want, 4e-6) << img << " " << ch << " " << y << " " << x;
        }
      }
    }
  }
  // The 16-bit outputs are the fp32 results rounded once.
  std::vector<uint16_t> half(out.size()), bf(out.size());
  ASSERT_EQ(preprocess_nhwc_u8(src.data(), n, h, w, c, h, w, mean.data(), std.data(), ResizeMode::kNone,
                               FloatDtype::kFloat16, half.data()),
            kOk);
  ASSERT_EQ(preprocess_nhwc_u8(src.data(), n, h, w, c, h, w, mean.data(), std.data(), ResizeMode::kNone,
                               FloatDtype::kBFloat16, bf.data()),
            kOk);
  for (size_t i = 0; i < out.size(); ++i) {
    EXPECT_EQ(half[i], float_to_fp16(out[i]));
    EXPECT_EQ(bf[i], float_to_bf16(out[i]));
  }
}

TEST(PreprocessRef, ChannelsBecomePlanes) {
  // 1 frame, 1 x 2 pixels, 4 channels: pixel p channel c holds 10 * c + p.
  const std::vector<uint8_t> src = {0, 10, 20, 30, 1, 11, 21, 31};
  std::vector<float> v = preprocess(src, 1, 1, 2, 4, 1, 2, ResizeMode::kNone, {0, 0, 0, 0}, {1, 1, 1, 1});
  for (float &x : v)
    x *= 255.0f;
  expect_near_all(v, {0, 1, 10, 11, 20, 21, 30, 31}, 1e-4f);
}

TEST(PreprocessRef, Bilinear2x2To4x4) {
  // torch.nn.functional.interpolate(t, size=(4, 4), mode="bilinear", align_corners=False) on [[0, 40], [80, 120]]:
  // per axis the output samples source coordinates -0.25 (clamped to 0), 0.25, 0.75 and 1.25 (clamped to 1).
  const std::vector<float> want = {0,  10, 30,  40,  //
                                   20, 30, 50,  60,  //
                                   60, 70, 90,  100, //
                                   80, 90, 110, 120};
  expect_near_all(resample({0, 40, 80, 120}, 2, 2, 4, 4, ResizeMode::kBilinear), want, 1e-4f);
}

TEST(PreprocessRef, BilinearDownscaleAndOddSizes) {
  // 4x4 -> 2x2 samples at 0.5 and 2.5: each output is the mean of a 2x2 block (no antialiasing).
  std::vector<uint8_t> src(16);
  for (int i = 0; i < 16; ++i)
    src[i] = static_cast<uint8_t>(i * 16);
  expect_near_all(resample(src, 4, 4, 2, 2, ResizeMode::kBilinear), {40, 72, 168, 200}, 1e-4f);
  // 3 -> 2 columns: coordinates 0.25 and 1.75.
  expect_near_all(resample({0, 100, 200}, 1, 3, 1, 2, ResizeMode::kBilinear), {25, 175}, 1e-4f);
  // The same along rows, and a single pixel upscaled stays constant.
  expect_near_all(resample({0, 100, 200}, 3, 1, 2, 1, ResizeMode::kBilinear), {25, 175}, 1e-4f);
  expect_near_all(resample({77}, 1, 1, 3, 2, ResizeMode::kBilinear), {77, 77, 77, 77, 77, 77}, 1e-4f);
  // 2 -> 3 columns: coordinates (o + 0.5) * 2/3 - 0.5 = -1/6 (-> 0), 0.5, 7/6 (-> index 1).
  expect_near_all(resample({0, 90}, 1, 2, 1, 3, ResizeMode::kBilinear), {0, 45, 90}, 1e-4f);
}

TEST(PreprocessRef, AreaIsAdaptiveAvgPool) {
  std::vector<uint8_t> src(16);
  for (int i = 0; i < 16; ++i)
    src[i] = static_cast<uint8_t>(i * 16);
  // 4x4 -> 2x2: means of the 2x2 blocks.
  expect_near_all(resample(src, 4, 4, 2, 2, ResizeMode::kArea), {40, 72, 168, 200}, 1e-4f);
  // 4x4 -> 1x1: the mean of everything.
  expect_near_all(resample(src, 4, 4, 1, 1, ResizeMode::kArea), {120}, 1e-4f);
  // 5 -> 2: adaptive windows [0, 3) and [2, 5) share the middle pixel.
  expect_near_all(resample({0, 10, 20, 30, 40}, 1, 5, 1, 2, ResizeMode::kArea), {10, 30}, 1e-4f);
  // 2 -> 4: upsampling repeats pixels.
  expect_near_all(resample({8, 200}, 2, 1, 4, 1, ResizeMode::kArea), {8, 8, 200, 200}, 1e-4f);
}

TEST(PreprocessRef, RejectsBadArguments) {
  const uint8_t src[48] = {};
  float dst[48];
  const float mean[17] = {}, std[17] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  const float zero_std[1] = {0.0f}, nan_mean[1] = {std::numeric_limits<float>::quiet_NaN()};
  auto run = [&](int64_t n, int64_t c, int64_t out_h, ResizeMode mode, const float *m, const float *s,
                 FloatDtype dtype = FloatDtype::kFloat32) {
    return preprocess_nhwc_u8(src, n, 4, 4, c, out_h, 4, m, s, mode, dtype, dst);
  };
  EXPECT_EQ(run(1, 3, 4, ResizeMode::kNone, mean, std), kOk);
  EXPECT_EQ(run(0, 3, 4, ResizeMode::kNone, mean, std), kOk);
  EXPECT_EQ(run(-1, 3, 4, ResizeMode::kNone, mean, std), kInvalidValue);
  EXPECT_EQ(run(1, 0, 4, ResizeMode::kNone, mean, std), kInvalidValue);
  EXPECT_EQ(run(1, 17, 4, ResizeMode::kNone, mean, std), kInvalidValue);
  EXPECT_EQ(run(1, 3, 2, ResizeMode::kNone, mean, std), kInvalidValue); // kNone cannot change the size
  EXPECT_EQ(run(1, 3, 0, ResizeMode::kArea, mean, std), kInvalidValue);
  EXPECT_EQ(run(1, 1, 2, static_cast<ResizeMode>(9), mean, std), kInvalidValue);
  EXPECT_EQ(run(1, 1, 2, ResizeMode::kArea, mean, zero_std), kInvalidValue);
  EXPECT_EQ(run(1, 1, 2, ResizeMode::kArea, nan_mean, std), kInvalidValue);
  EXPECT_EQ(run(1, 1, 2, ResizeMode::kArea, nullptr, std), kInvalidValue);
  EXPECT_EQ(run(1, 1, 2, ResizeMode::kArea, mean, std, static_cast<FloatDtype>(3)), kInvalidValue);
  // Element counts past int64 are refused before any pointer arithmetic (torch could never allocate them, but a C
  // caller can ask).
  const int64_t big = int64_t{1} << 40;
  EXPECT_EQ(preprocess_nhwc_u8(src, big, big, 4, 3, 4, 4, mean, std, ResizeMode::kArea, FloatDtype::kFloat32, dst),
            kInvalidValue);
  EXPECT_EQ(preprocess_nhwc_u8(src, big, 4, 4, 3, big, 4, mean, std, ResizeMode::kBilinear, FloatDtype::kFloat32, dst),
            kInvalidValue);
  EXPECT_EQ(
      preprocess_nhwc_u8(src, 1, 4, 4, 3, 4, INT64_MAX, mean, std, ResizeMode::kBilinear, FloatDtype::kFloat32, dst),
      kInvalidValue);
}

} // namespace
} // namespace jit::ops::ref
