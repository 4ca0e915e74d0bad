// The CUDA kernels (kernels/) against their CPU references (csrc/ops), bit for bit, over every dtype, odd sizes,
// misaligned pointers (which take the scalar paths) and special values.
//
// Two groups: tests that need no device (the references against CUDA's own host-side conversion code in
// cuda_fp8.h / cuda_bf16.h / cuda_fp16.h, and argument checks that reject before any CUDA call), and the KernelsGpu
// fixture, which skips with a named reason when there is no usable CUDA device.
#include <gtest/gtest.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "jit_kernels.h"
#include "ops/ops_ref.h"

namespace jit::kernels {
namespace {

namespace ref = jit::ops::ref;

float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// fp32 values that stress rounding: for every exponent from far below e4m3's range to beyond fp16's, every
// pattern of the top 12 mantissa bits with a few low ("sticky") patterns, both signs; plus specials.
std::vector<float> rounding_probes() {
  std::vector<float> v;
  for (uint32_t exponent = 127 - 30; exponent <= 127 + 20; ++exponent) {
    for (uint32_t top = 0; top < (1u << 12); ++top) {
      for (uint32_t low : {0u, 1u, 0x3FFu, 0x7FFu}) {
        const uint32_t bits = (exponent << 23) | (top << 11) | low;
        v.push_back(from_bits(bits));
        v.push_back(-from_bits(bits));
      }
    }
  }
  for (float x : {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-45f, 3e38f, -3e38f})
    v.push_back(x);
  std::mt19937 rng(11);
  for (int i = 0; i < 200000; ++i)
    v.push_back(from_bits(static_cast<uint32_t>(rng())));
  return v;
}

// ---- the references against CUDA's host-side conversions (no device needed) -----------------------------------

TEST(CudaHeaderCrossCheck, Fp8EncodeMatchesCuda) {
  int mismatches = 0;
  for (float x : rounding_probes()) {
    const uint8_t cuda = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
    const uint8_t mine = ref::float_to_e4m3fn(x);
    if (cuda != mine && mismatches++ < 10)
      ADD_FAILURE() << "x = " << x << ": cuda " << int(cuda) << ", ref " << int(mine);
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(CudaHeaderCrossCheck, Fp8DecodeMatchesCuda) {
  for (int code = 0; code < 256; ++code) {
    __nv_fp8_e4m3 f;
    f.__x = static_cast<__nv_fp8_storage_t>(code);
    const float cuda = static_cast<float>(f), mine = ref::e4m3fn_to_float(static_cast<uint8_t>(code));
    if (std::isnan(cuda) || std::isnan(mine)) {
      EXPECT_TRUE(std::isnan(cuda) && std::isnan(mine)) << code;
    } else {
      EXPECT_EQ(cuda, mine) << code;
      EXPECT_EQ(std::signbit(cuda), std::signbit(mine)) << code;
    }
  }
}

TEST(CudaHeaderCrossCheck, Bf16AndFp16EncodeMatchCuda) {
  int mismatches = 0;
  for (float x : rounding_probes()) {
    const __nv_bfloat16_raw b = __float2bfloat16_rn(x);
    const __half_raw h = __float2half_rn(x);
    if ((b.x != ref::float_to_bf16(x) || h.x != ref::float_to_fp16(x)) && mismatches++ < 10) {
      ADD_FAILURE() << "x = " << x << ": cuda bf16 " << b.x << " fp16 " << h.x << ", ref bf16 " << ref::float_to_bf16(x)
                    << " fp16 " << ref::float_to_fp16(x);
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(KernelArgs, RejectedBeforeAnyCudaCall) {
  // Argument checks run first, so these hold on machines without a GPU too.
  const float mean[1] = {0}, std[1] = {1};
  EXPECT_EQ(quantize_fp8_rowwise(nullptr, FloatDtype::kFloat32, 2, 2, nullptr, nullptr, nullptr), kInvalidValue);
  EXPECT_EQ(quantize_int8_rowwise(nullptr, FloatDtype::kFloat32, -1, 2, nullptr, nullptr, nullptr), kInvalidValue);
  EXPECT_EQ(dequantize_fp8_per_tensor(nullptr, nullptr, 4, nullptr, FloatDtype::kFloat32, nullptr), kInvalidValue);
  EXPECT_EQ(cast_float(nullptr, static_cast<FloatDtype>(5), nullptr, FloatDtype::kFloat32, 1, nullptr), kInvalidValue);
  EXPECT_EQ(preprocess_nhwc_u8(nullptr, 1, 2, 2, 1, 3, 3, mean, std, ResizeMode::kNone, FloatDtype::kFloat32, nullptr,
                               nullptr),
            kInvalidValue);
  EXPECT_EQ(quantize_fp8_rowwise(nullptr, FloatDtype::kFloat32, 0, 7, nullptr, nullptr, nullptr), kOk);
  EXPECT_STREQ(status_string(kOk), "ok");
  EXPECT_STRNE(status_string(kInvalidValue), "");
}

// ---- device tests --------------------------------------------------------------------------------------------------

// Asserts that a kernel call returned kOk, naming the call and the error otherwise (expr runs once).
#define CUDA_OK(expr)                                                                                                  \
  do {                                                                                                                 \
    const Status status_ = (expr);                                                                                     \
    ASSERT_EQ(status_, kOk) << #expr << ": " << status_string(status_);                                                \
  } while (0)

// A device allocation of `bytes` plus `offset` bytes in front, so ptr() can be deliberately misaligned.
class DeviceBuffer {
public:
  DeviceBuffer(size_t bytes, size_t offset = 0) : bytes_(bytes), offset_(offset) {
    if (cudaMalloc(&base_, bytes + offset + 16) != cudaSuccess) base_ = nullptr;
  }
  ~DeviceBuffer() { cudaFree(base_); }
  DeviceBuffer(const DeviceBuffer &) = delete;
  DeviceBuffer &operator=(const DeviceBuffer &) = delete;
  void *ptr() const { return static_cast<char *>(base_) + offset_; }
  bool ok() const { return base_ != nullptr; }
  void upload(const void *src) const { cudaMemcpy(ptr(), src, bytes_, cudaMemcpyHostToDevice); }
  template <typename T> std::vector<T> download() const {
    std::vector<T> out(bytes_ / sizeof(T));
    cudaMemcpy(out.data(), ptr(), bytes_, cudaMemcpyDeviceToHost);
    return out;
  }

private:
  void *base_ = nullptr;
  size_t bytes_, offset_;
};

// Element i of a host array of `dtype`, as an fp32 NaN test (bit patterns differ among NaNs; all NaNs are equal).
bool is_nan(const std::vector<uint8_t> &bytes, FloatDtype dtype, size_t i) {
  return std::isnan(ref::load_float(bytes.data(), dtype, static_cast<int64_t>(i)));
}

// Byte-wise equality of two arrays of `dtype`, where any two NaNs count as equal. Reports the first mismatches.
void expect_same(const std::vector<uint8_t> &gpu, const std::vector<uint8_t> &cpu, FloatDtype dtype,
                 const std::string &what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  const size_t size = float_dtype_size(dtype), n = gpu.size() / size;
  int bad = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(&gpu[i * size], &cpu[i * size], size) == 0) continue;
    if (is_nan(gpu, dtype, i) && is_nan(cpu, dtype, i)) continue;
    if (bad++ < 5) {
      ADD_FAILURE() << what << ": element " << i << " gpu " << ref::load_float(gpu.data(), dtype, i) << " cpu "
                    << ref::load_float(cpu.data(), dtype, i);
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

// fp8 codes compare equal when identical or both NaN (0x7F / 0xFF).
void expect_same_codes(const std::vector<uint8_t> &gpu, const std::vector<uint8_t> &cpu, bool fp8,
                       const std::string &what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < gpu.size(); ++i) {
    if (gpu[i] == cpu[i] || (fp8 && (gpu[i] & 0x7F) == 0x7F && (cpu[i] & 0x7F) == 0x7F)) continue;
    if (bad++ < 5) ADD_FAILURE() << what << ": code " << i << " gpu " << int(gpu[i]) << " cpu " << int(cpu[i]);
  }
  EXPECT_EQ(bad, 0) << what;
}

// n values of `dtype` (as bytes): Gaussian rows of very different magnitudes, with specials sprinkled in.
std::vector<uint8_t> test_values(int64_t n, int64_t cols, FloatDtype dtype, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> gauss(0.0f, 1.0f);
  std::vector<uint8_t> bytes(n * float_dtype_size(dtype));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = cols > 0 ? i / cols : 0;
    float x = gauss(rng) * std::ldexp(1.0f, static_cast<int>(row % 7) * 4 - 12); // 2^-12 .. 2^12
    if (row % 5 == 3) x = 0.0f;                                                  // all-zero rows
    if (i % 97 == 13) x = NAN;
    if (i % 89 == 7) x = (i & 1) ? INFINITY : -INFINITY;
    ref::store_float(bytes.data(), dtype, i, x);
  }
  return bytes;
}

const FloatDtype kDtypes[] = {FloatDtype::kFloat32, FloatDtype::kFloat16, FloatDtype::kBFloat16};

std::string dtype_label(FloatDtype d) {
  return d == FloatDtype::kFloat32 ? "f32" : d == FloatDtype::kFloat16 ? "f16" : "bf16";
}

class KernelsGpu : public ::testing::Test {
protected:
  void SetUp() override {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) GTEST_SKIP() << "no CUDA device: " << cudaGetErrorString(err);
    if (count == 0) GTEST_SKIP() << "no CUDA device: cudaGetDeviceCount returned 0";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  void sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  cudaStream_t stream_ = nullptr;
};

// Shapes chosen to hit each path: warp-per-row and block-per-row, vector packs and scalar (odd cols), empty.
const int64_t kShapes[][2] = {{1, 1},    {3, 7},   {5, 128},    {4, 129}, {7, 512}, {3, 513},
                              {2, 4096}, {33, 64}, {1, 100003}, {0, 5},   {4, 0},   {1000, 12}};

TEST_F(KernelsGpu, RowwiseQuantizeMatchesReference) {
  for (bool fp8 : {true, false}) {
    for (FloatDtype dtype : kDtypes) {
      for (const auto &shape : kShapes) {
        for (size_t offset : {size_t{0}, float_dtype_size(dtype)}) { // one element off: misaligned, scalar path
          const int64_t rows = shape[0], cols = shape[1], n = rows * cols;
          const std::string what = std::string(fp8 ? "fp8 " : "int8 ") + dtype_label(dtype) + " " +
                                   std::to_string(rows) + "x" + std::to_string(cols) + " offset " +
                                   std::to_string(offset);
          const std::vector<uint8_t> src = test_values(n, cols, dtype, static_cast<uint32_t>(rows * 31 + cols));
          std::vector<uint8_t> codes(n);
          std::vector<float> scales(rows);
          if (fp8) {
            ASSERT_EQ(ref::quantize_fp8_rowwise(src.data(), dtype, rows, cols, codes.data(), scales.data()), kOk);
          } else {
            ASSERT_EQ(ref::quantize_int8_rowwise(src.data(), dtype, rows, cols,
                                                 reinterpret_cast<int8_t *>(codes.data()), scales.data()),
                      kOk);
          }
          DeviceBuffer d_src(src.size(), offset), d_codes(n), d_scales(rows * sizeof(float));
          ASSERT_TRUE(d_src.ok() && d_codes.ok() && d_scales.ok());
          d_src.upload(src.data());
          if (fp8) {
            CUDA_OK(quantize_fp8_rowwise(d_src.ptr(), dtype, rows, cols, static_cast<uint8_t *>(d_codes.ptr()),
                                         static_cast<float *>(d_scales.ptr()), stream_));
          } else {
            CUDA_OK(quantize_int8_rowwise(d_src.ptr(), dtype, rows, cols, static_cast<int8_t *>(d_codes.ptr()),
                                          static_cast<float *>(d_scales.ptr()), stream_));
          }
          sync();
          expect_same_codes(d_codes.download<uint8_t>(), codes, fp8, what);
          EXPECT_EQ(d_scales.download<float>(), scales) << what;
        }
      }
    }
  }
}

TEST_F(KernelsGpu, DequantizeMatchesReference) {
  for (bool fp8 : {true, false}) {
    for (FloatDtype dtype : kDtypes) {
      for (const auto &shape : kShapes) {
        const int64_t rows = shape[0], cols = shape[1], n = rows * cols;
        std::mt19937 rng(static_cast<uint32_t>(n + 1));
        std::vector<uint8_t> codes(n); // every code, NaN codes included
        for (auto &c : codes)
          c = static_cast<uint8_t>(rng());
        std::vector<float> scales(rows);
        for (auto &s : scales)
          s = std::ldexp(1.0f + (rng() % 1000) / 1000.0f, static_cast<int>(rng() % 40) - 20);
        for (size_t offset : {size_t{0}, float_dtype_size(dtype)}) {
          const std::string what = std::string(fp8 ? "fp8 " : "int8 ") + dtype_label(dtype) + " " +
                                   std::to_string(rows) + "x" + std::to_string(cols) + " offset " +
                                   std::to_string(offset);
          std::vector<uint8_t> want(n * float_dtype_size(dtype));
          if (fp8) {
            ASSERT_EQ(ref::dequantize_fp8_rowwise(codes.data(), scales.data(), rows, cols, want.data(), dtype), kOk);
          } else {
            ASSERT_EQ(ref::dequantize_int8_rowwise(reinterpret_cast<const int8_t *>(codes.data()), scales.data(), rows,
                                                   cols, want.data(), dtype),
                      kOk);
          }
          DeviceBuffer d_codes(n), d_scales(rows * sizeof(float)), d_dst(want.size(), offset);
          ASSERT_TRUE(d_codes.ok() && d_scales.ok() && d_dst.ok());
          d_codes.upload(codes.data());
          d_scales.upload(scales.data());
          if (fp8) {
            CUDA_OK(dequantize_fp8_rowwise(static_cast<const uint8_t *>(d_codes.ptr()),
                                           static_cast<const float *>(d_scales.ptr()), rows, cols, d_dst.ptr(), dtype,
                                           stream_));
          } else {
            CUDA_OK(dequantize_int8_rowwise(static_cast<const int8_t *>(d_codes.ptr()),
                                            static_cast<const float *>(d_scales.ptr()), rows, cols, d_dst.ptr(), dtype,
                                            stream_));
          }
          sync();
          expect_same(d_dst.download<uint8_t>(), want, dtype, what);
        }
      }
    }
  }
}

TEST_F(KernelsGpu, PerTensorFp8MatchesReference) {
  for (FloatDtype dtype : kDtypes) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{100001}, int64_t{(1 << 22) + 3}}) {
      for (size_t offset : {size_t{0}, float_dtype_size(dtype)}) {
        const std::string what = dtype_label(dtype) + " n " + std::to_string(n) + " offset " + std::to_string(offset);
        // One row's worth of magnitudes so the tensor absmax is finite and not dominated by the 2^12 rows.
        const std::vector<uint8_t> src = test_values(n, n + 1, dtype, static_cast<uint32_t>(n));
        std::vector<uint8_t> codes(n), back(n * float_dtype_size(dtype));
        float scale = 0;
        ASSERT_EQ(ref::quantize_fp8_per_tensor(src.data(), dtype, n, codes.data(), &scale), kOk);
        ASSERT_EQ(ref::dequantize_fp8_per_tensor(codes.data(), &scale, n, back.data(), dtype), kOk);

        DeviceBuffer d_src(src.size(), offset), d_codes(n), d_scale(sizeof(float)), d_back(back.size(), offset);
        ASSERT_TRUE(d_src.ok() && d_codes.ok() && d_scale.ok() && d_back.ok());
        d_src.upload(src.data());
        auto *scale_ptr = static_cast<float *>(d_scale.ptr());
        CUDA_OK(
            quantize_fp8_per_tensor(d_src.ptr(), dtype, n, static_cast<uint8_t *>(d_codes.ptr()), scale_ptr, stream_));
        CUDA_OK(dequantize_fp8_per_tensor(static_cast<const uint8_t *>(d_codes.ptr()), scale_ptr, n, d_back.ptr(),
                                          dtype, stream_));
        sync();
        EXPECT_EQ(d_scale.download<float>()[0], scale) << what;
        expect_same_codes(d_codes.download<uint8_t>(), codes, true, what);
        expect_same(d_back.download<uint8_t>(), back, dtype, what);
      }
    }
  }
}

TEST_F(KernelsGpu, CastMatchesReference) {
  const std::vector<float> probes = rounding_probes();
  for (FloatDtype from : kDtypes) {
    for (FloatDtype to : kDtypes) {
      for (int64_t n : {int64_t{1}, int64_t{5}, int64_t{1003}, static_cast<int64_t>(probes.size())}) {
        for (size_t offset : {size_t{0}, float_dtype_size(from)}) {
          const std::string what = dtype_label(from) + "->" + dtype_label(to) + " n " + std::to_string(n) + " offset " +
                                   std::to_string(offset);
          std::vector<uint8_t> src(n * float_dtype_size(from)), want(n * float_dtype_size(to));
          for (int64_t i = 0; i < n; ++i)
            ref::store_float(src.data(), from, i, probes[i]);
          ASSERT_EQ(ref::cast_float(src.data(), from, want.data(), to, n), kOk);
          DeviceBuffer d_src(src.size(), offset), d_dst(want.size());
          ASSERT_TRUE(d_src.ok() && d_dst.ok());
          d_src.upload(src.data());
          CUDA_OK(cast_float(d_src.ptr(), from, d_dst.ptr(), to, n, stream_));
          sync();
          expect_same(d_dst.download<uint8_t>(), want, to, what);
        }
      }
    }
  }
}

TEST_F(KernelsGpu, PreprocessMatchesReference) {
  struct Case {
    int64_t n, h, w, out_h, out_w;
  };
  const Case cases[] = {{2, 7, 5, 7, 5},      {1, 2, 2, 4, 4},         {3, 16, 16, 7, 11},     {1, 1, 1, 4, 3},
                        {2, 67, 131, 32, 48}, {1, 224, 200, 224, 200}, {1, 480, 640, 224, 224}};
  const float mean[4] = {0.481f, 0.458f, 0.408f, 0.5f}, std[4] = {0.269f, 0.261f, 0.276f, 0.5f};
  for (ResizeMode mode : {ResizeMode::kNone, ResizeMode::kBilinear, ResizeMode::kArea}) {
    for (FloatDtype dtype : kDtypes) {
      for (int64_t c : {1, 3, 4}) {
        for (const Case &k : cases) {
          if (mode == ResizeMode::kNone && (k.out_h != k.h || k.out_w != k.w)) continue;
          const std::string what = "mode " + std::to_string(static_cast<int>(mode)) + " " + dtype_label(dtype) + " c " +
                                   std::to_string(c) + " " + std::to_string(k.h) + "x" + std::to_string(k.w) + "->" +
                                   std::to_string(k.out_h) + "x" + std::to_string(k.out_w);
          std::vector<uint8_t> src(k.n * k.h * k.w * c);
          std::mt19937 rng(static_cast<uint32_t>(src.size()));
          for (auto &b : src)
            b = static_cast<uint8_t>(rng());
          std::vector<uint8_t> want(k.n * c * k.out_h * k.out_w * float_dtype_size(dtype));
          ASSERT_EQ(ref::preprocess_nhwc_u8(src.data(), k.n, k.h, k.w, c, k.out_h, k.out_w, mean, std, mode, dtype,
                                            want.data()),
                    kOk);
          DeviceBuffer d_src(src.size(), 1), d_dst(want.size()); // odd source address: byte loads must cope
          ASSERT_TRUE(d_src.ok() && d_dst.ok());
          d_src.upload(src.data());
          CUDA_OK(preprocess_nhwc_u8(static_cast<const uint8_t *>(d_src.ptr()), k.n, k.h, k.w, c, k.out_h, k.out_w,
                                     mean, std, mode, dtype, d_dst.ptr(), stream_));
          sync();
          expect_same(d_dst.download<uint8_t>(), want, dtype, what);
        }
      }
    }
  }
}

} // namespace
} // namespace jit::kernels
