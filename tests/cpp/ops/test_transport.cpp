// Lossy transport (csrc/ops/transport.h): shapes and dtypes of the wire form, round-trip error on
// Gaussian data, the same bits for any thread count, a sample's bits independent of its batch, and
// malformed answers refused.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "ops/float_formats.h"
#include "ops/ops_ref.h"
#include "ops/transport.h"

namespace jit::ops {
namespace {

Tensor gaussian(Shape shape, uint32_t seed, float sigma = 1.0f) {
  Tensor t = make_tensor("x", DType::kFloat32, std::move(shape));
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, sigma);
  float *p = static_cast<float *>(const_cast<void *>(t.data));
  for (size_t i = 0; i < t.nbytes / 4; ++i)
    p[i] = dist(rng);
  return t;
}

const float *floats(const Tensor &t) {
  return static_cast<const float *>(t.data);
}

double rel_rms(const Tensor &want, const Tensor &got) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < want.nbytes / 4; ++i) {
    const double d = double(got.dtype == DType::kFloat32 ? floats(got)[i] : 0) - floats(want)[i];
    err += d * d;
    ref += double(floats(want)[i]) * floats(want)[i];
  }
  return std::sqrt(err / ref);
}

Tensor round_trip(const Tensor &x, Transport mode, size_t threads = 0) {
  WireTensor w = encode_for_transport(x.view(), mode, threads);
  const TensorView scales = w.scales ? w.scales->view() : TensorView{};
  return decode_from_transport(w.values.view(), w.scales ? &scales : nullptr, mode, x.dtype, threads);
}

bool same_bytes(const Tensor &a, const Tensor &b) {
  return a.nbytes == b.nbytes && std::memcmp(a.data, b.data, a.nbytes) == 0;
}

TEST(Transport, NamesRoundTrip) {
  for (Transport m : {Transport::kExact, Transport::kBFloat16, Transport::kFloat16, Transport::kFp8Rowwise,
                      Transport::kFp8Tensor, Transport::kInt8Rowwise}) {
    EXPECT_EQ(transport_from_name(transport_name(m)), m);
  }
  EXPECT_FALSE(transport_from_name("fp4"));
  EXPECT_NE(transport_names().find("\"fp8_rowwise\""), std::string::npos);
}

TEST(Transport, AppliesOnlyToFloatsItChanges) {
  EXPECT_TRUE(transport_applies(Transport::kFp8Rowwise, DType::kFloat32));
  EXPECT_TRUE(transport_applies(Transport::kFp8Rowwise, DType::kBFloat16));
  EXPECT_FALSE(transport_applies(Transport::kBFloat16, DType::kBFloat16));
  EXPECT_FALSE(transport_applies(Transport::kFloat16, DType::kFloat16));
  EXPECT_FALSE(transport_applies(Transport::kFp8Rowwise, DType::kInt64));
  EXPECT_FALSE(transport_applies(Transport::kExact, DType::kFloat32));
  const Tensor ids = make_tensor("ids", DType::kInt64, {2, 3});
  EXPECT_THROW(encode_for_transport(ids.view(), Transport::kFp8Rowwise), TransportError);
}

TEST(Transport, WireShapesAndDtypes) {
  const Tensor x = gaussian({4, 7, 32}, 1);
  WireTensor r = encode_for_transport(x.view(), Transport::kFp8Rowwise);
  EXPECT_EQ(r.values.dtype, DType::kFloat8E4M3);
  EXPECT_EQ(r.values.shape, (Shape{4, 7, 32}));
  ASSERT_TRUE(r.scales);
  EXPECT_EQ(r.scales->shape, (Shape{4, 7}));
  WireTensor s = encode_for_transport(x.view(), Transport::kFp8Tensor);
  ASSERT_TRUE(s.scales);
  EXPECT_EQ(s.scales->shape, (Shape{4}));
  WireTensor i = encode_for_transport(x.view(), Transport::kInt8Rowwise);
  EXPECT_EQ(i.values.dtype, DType::kInt8);
  WireTensor b = encode_for_transport(x.view(), Transport::kBFloat16);
  EXPECT_EQ(b.values.dtype, DType::kBFloat16);
  EXPECT_FALSE(b.scales);
  // Rank 1: one element per row.
  const Tensor v = gaussian({5}, 2);
  WireTensor rv = encode_for_transport(v.view(), Transport::kFp8Rowwise);
  ASSERT_TRUE(rv.scales);
  EXPECT_EQ(rv.scales->shape, (Shape{5}));
}

TEST(Transport, RowwiseEqualsTheReferenceRowByRow) {
  const Tensor x = gaussian({3, 5, 64}, 3);
  WireTensor w = encode_for_transport(x.view(), Transport::kFp8Rowwise);
  std::vector<uint8_t> codes(3 * 5 * 64);
  std::vector<float> scales(15);
  ASSERT_EQ(ref::quantize_fp8_rowwise(x.data, kernels::FloatDtype::kFloat32, 15, 64, codes.data(), scales.data()),
            kernels::kOk);
  EXPECT_EQ(std::memcmp(codes.data(), w.values.data, codes.size()), 0);
  EXPECT_EQ(std::memcmp(scales.data(), w.scales->data, scales.size() * 4), 0);
}

// float32 outputs take transport.cpp's own loops; every other path calls the references. Both must
// give the references' bits, on any float32 bit pattern (NaN, Inf, subnormals, huge values).
TEST(Transport, Float32LoopsEqualTheReferencesOnAnyBits) {
  const int64_t rows = 64, cols = 96;
  Tensor x = make_tensor("x", DType::kFloat32, {rows, cols});
  uint32_t *bits = static_cast<uint32_t *>(const_cast<void *>(x.data));
  std::mt19937 rng(11);
  for (int64_t i = 0; i < rows * cols; ++i) {
    // Half the rows random bit patterns, half Gaussian with specials sprinkled in.
    if ((i / cols) % 2 == 0) {
      bits[i] = rng();
    } else {
      const float specials[] = {0.0f,
                                -0.0f,
                                1e-40f,
                                -3e-39f,
                                1e30f,
                                -464.0f,
                                448.0f,
                                65520.0f,
                                6e-5f,
                                std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::quiet_NaN()};
      float v = std::normal_distribution<float>(0.0f, 4.0f)(rng);
      if (rng() % 8 == 0) v = specials[rng() % 11];
      std::memcpy(&bits[i], &v, 4);
    }
  }
  using kernels::FloatDtype;
  const size_t n = static_cast<size_t>(rows * cols);
  { // fp8 and int8 rowwise, and their restore
    for (Transport m : {Transport::kFp8Rowwise, Transport::kInt8Rowwise}) {
      WireTensor w = encode_for_transport(x.view(), m);
      std::vector<uint8_t> codes(n);
      std::vector<float> scales(rows);
      if (m == Transport::kFp8Rowwise) {
        ASSERT_EQ(ref::quantize_fp8_rowwise(x.data, FloatDtype::kFloat32, rows, cols, codes.data(), scales.data()),
                  kernels::kOk);
      } else {
        ASSERT_EQ(ref::quantize_int8_rowwise(x.data, FloatDtype::kFloat32, rows, cols,
                                             reinterpret_cast<int8_t *>(codes.data()), scales.data()),
                  kernels::kOk);
      }
      EXPECT_EQ(std::memcmp(codes.data(), w.values.data, n), 0) << transport_name(m);
      EXPECT_EQ(std::memcmp(scales.data(), w.scales->data, scales.size() * 4), 0) << transport_name(m);
      const TensorView sv = w.scales->view();
      const Tensor back = decode_from_transport(w.values.view(), &sv, m, DType::kFloat32);
      std::vector<float> want(n);
      if (m == Transport::kFp8Rowwise) {
        ref::dequantize_fp8_rowwise(codes.data(), scales.data(), rows, cols, want.data(), FloatDtype::kFloat32);
      } else {
        ref::dequantize_int8_rowwise(reinterpret_cast<const int8_t *>(codes.data()), scales.data(), rows, cols,
                                     want.data(), FloatDtype::kFloat32);
      }
      EXPECT_EQ(std::memcmp(want.data(), back.data, n * 4), 0) << transport_name(m);
    }
  }
  { // fp8 per sample
    WireTensor w = encode_for_transport(x.view(), Transport::kFp8Tensor);
    for (int64_t r = 0; r < rows; ++r) {
      std::vector<uint8_t> codes(cols);
      float scale = 0;
      ref::quantize_fp8_per_tensor(floats(x) + r * cols, FloatDtype::kFloat32, cols, codes.data(), &scale);
      EXPECT_EQ(std::memcmp(codes.data(), static_cast<const uint8_t *>(w.values.data) + r * cols, cols), 0) << r;
      EXPECT_EQ(std::memcmp(&scale, floats(*w.scales) + r, 4), 0) << r;
    }
  }
  for (Transport m : {Transport::kBFloat16, Transport::kFloat16}) { // casts, both ways
    WireTensor w = encode_for_transport(x.view(), m);
    const FloatDtype narrow = m == Transport::kBFloat16 ? FloatDtype::kBFloat16 : FloatDtype::kFloat16;
    std::vector<uint16_t> want(n);
    ref::cast_float(x.data, FloatDtype::kFloat32, want.data(), narrow, static_cast<int64_t>(n));
    EXPECT_EQ(std::memcmp(want.data(), w.values.data, n * 2), 0) << transport_name(m);
    const Tensor back = decode_from_transport(w.values.view(), nullptr, m, DType::kFloat32);
    std::vector<float> wide(n);
    ref::cast_float(want.data(), narrow, wide.data(), FloatDtype::kFloat32, static_cast<int64_t>(n));
    EXPECT_EQ(std::memcmp(wide.data(), back.data, n * 4), 0) << transport_name(m);
  }
}

// The branchless encoders the float32 loops use agree with the plain ones on every float32 input.
TEST(Transport, BranchlessEncodersEqualThePlainOnesOnAllInputs) {
  std::atomic<uint64_t> fp8_mismatch{0}, int8_mismatch{0}, fp16_mismatch{0};
  constexpr uint64_t kSlices = 256;
  parallel_for(kSlices, [&](size_t slice) {
    uint64_t bad8 = 0, bad_int = 0, bad16 = 0;
    const uint64_t first = (uint64_t{1} << 32) / kSlices * slice;
    for (uint64_t i = first; i < first + (uint64_t{1} << 32) / kSlices; ++i) {
      const float x = fmt::from_bits(static_cast<uint32_t>(i));
      bad8 += fmt::float_to_e4m3fn_branchless(x) != fmt::float_to_e4m3fn(x);
      bad_int += fmt::encode_int8_branchless(x) != fmt::encode_int8(x);
      bad16 += fmt::float_to_fp16_branchless(x) != fmt::float_to_fp16(x);
    }
    fp8_mismatch += bad8;
    int8_mismatch += bad_int;
    fp16_mismatch += bad16;
  });
  EXPECT_EQ(fp8_mismatch.load(), 0u);
  EXPECT_EQ(int8_mismatch.load(), 0u);
  EXPECT_EQ(fp16_mismatch.load(), 0u);
}

TEST(Transport, RoundTripErrorOnGaussianData) {
  const Tensor x = gaussian({256, 1024}, 4);
  EXPECT_LT(rel_rms(x, round_trip(x, Transport::kBFloat16)), 0.0025);
  EXPECT_GT(rel_rms(x, round_trip(x, Transport::kBFloat16)), 0.001);
  EXPECT_LT(rel_rms(x, round_trip(x, Transport::kFloat16)), 0.0005);
  const double fp8 = rel_rms(x, round_trip(x, Transport::kFp8Rowwise));
  EXPECT_GT(fp8, 0.02);
  EXPECT_LT(fp8, 0.032);
  EXPECT_LT(rel_rms(x, round_trip(x, Transport::kInt8Rowwise)), 0.01);
  EXPECT_LT(rel_rms(x, round_trip(x, Transport::kFp8Tensor)), 0.035);
}

TEST(Transport, SameBitsForAnyThreadCount) {
  const Tensor x = gaussian({33, 17, 129}, 5);
  for (Transport m : {Transport::kBFloat16, Transport::kFp8Rowwise, Transport::kFp8Tensor, Transport::kInt8Rowwise}) {
    EXPECT_TRUE(same_bytes(round_trip(x, m, 1), round_trip(x, m, 0))) << transport_name(m);
    WireTensor one = encode_for_transport(x.view(), m, 1);
    WireTensor all = encode_for_transport(x.view(), m, 0);
    EXPECT_TRUE(same_bytes(one.values, all.values)) << transport_name(m);
  }
}

TEST(Transport, ASamplesBitsDoNotDependOnItsBatch) {
  // Sample 0 alone and beside a sample 100x larger: fp8_tensor's scale covers one sample only.
  Tensor pair = gaussian({2, 300}, 6);
  float *p = static_cast<float *>(const_cast<void *>(pair.data));
  for (int i = 300; i < 600; ++i)
    p[i] *= 100.0f;
  Tensor alone = make_tensor("x", DType::kFloat32, {1, 300});
  std::memcpy(const_cast<void *>(alone.data), pair.data, 300 * 4);
  for (Transport m : {Transport::kFp8Tensor, Transport::kFp8Rowwise, Transport::kInt8Rowwise}) {
    const Tensor a = round_trip(alone, m), b = round_trip(pair, m);
    EXPECT_EQ(std::memcmp(a.data, b.data, 300 * 4), 0) << transport_name(m);
  }
}

TEST(Transport, EmptyOutputsTravel) {
  for (Shape s : {Shape{0, 8}, Shape{3, 0}, Shape{0}}) {
    const Tensor x = make_tensor("x", DType::kFloat32, s);
    for (Transport m : {Transport::kFp8Rowwise, Transport::kFp8Tensor, Transport::kInt8Rowwise, Transport::kFloat16}) {
      const Tensor r = round_trip(x, m);
      EXPECT_EQ(r.shape, s);
      EXPECT_EQ(r.nbytes, 0u);
    }
  }
}

TEST(Transport, Bf16SourceRestoresToBf16) {
  // A bfloat16 output encodes as its exact float32 widening would, and restores to bfloat16 by one
  // rounding of the float32 result.
  const Tensor wide = gaussian({2, 64}, 8);
  Tensor x = make_tensor("x", DType::kBFloat16, {2, 64});
  Tensor x32 = make_tensor("x", DType::kFloat32, {2, 64});
  uint16_t *p = static_cast<uint16_t *>(const_cast<void *>(x.data));
  float *q = static_cast<float *>(const_cast<void *>(x32.data));
  for (int i = 0; i < 128; ++i) {
    p[i] = ref::float_to_bf16(floats(wide)[i]);
    q[i] = ref::bf16_to_float(p[i]);
  }
  const Tensor r = round_trip(x, Transport::kFp8Rowwise);
  const Tensor r32 = round_trip(x32, Transport::kFp8Rowwise);
  ASSERT_EQ(r.dtype, DType::kBFloat16);
  const uint16_t *rb = static_cast<const uint16_t *>(r.data);
  for (int i = 0; i < 128; ++i)
    EXPECT_EQ(rb[i], ref::float_to_bf16(floats(r32)[i])) << i;
}

TEST(Transport, MalformedAnswersAreRefused) {
  const Tensor x = gaussian({4, 16}, 7);
  WireTensor w = encode_for_transport(x.view(), Transport::kFp8Rowwise);
  const TensorView scales = w.scales->view();
  // Missing scales, wrong scale shape, wrong value dtype, a target dtype that is not float.
  EXPECT_THROW(decode_from_transport(w.values.view(), nullptr, Transport::kFp8Rowwise, DType::kFloat32),
               TransportError);
  TensorView bad_scales = scales;
  bad_scales.shape = {2};
  bad_scales.nbytes = 8;
  EXPECT_THROW(decode_from_transport(w.values.view(), &bad_scales, Transport::kFp8Rowwise, DType::kFloat32),
               TransportError);
  EXPECT_THROW(decode_from_transport(w.values.view(), &scales, Transport::kInt8Rowwise, DType::kFloat32),
               TransportError);
  EXPECT_THROW(decode_from_transport(w.values.view(), &scales, Transport::kFp8Rowwise, DType::kInt32), TransportError);
  TensorView short_values = w.values.view();
  short_values.nbytes -= 1;
  EXPECT_THROW(decode_from_transport(short_values, &scales, Transport::kFp8Rowwise, DType::kFloat32), TransportError);
}

} // namespace
} // namespace jit::ops
