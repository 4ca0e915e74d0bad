// CPU references for kernels/quantize.cu: software fp8 e4m3fn / bf16 / fp16 rounding and the rowwise, per-tensor
// and cast operations built on them. Plain loops, one element at a time: clarity first, this is the oracle.
//
// Floating-point discipline: everything is fp32 arithmetic with one IEEE operation per step (no reciprocals, no
// fused multiply-adds), matching the kernels' operation order, so the results agree bit for bit.
#include "ops/ops_ref.h"

#include "ops/float_formats.h"

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

namespace jit::ops::ref {
namespace {

using fmt::encode_int8;
using fmt::finite_abs;
using fmt::scale_from_absmax;
using kernels::kInvalidValue;
using kernels::kOk;

float row_absmax(const void *src, FloatDtype dtype, int64_t first, int64_t count) {
  float m = 0.0f;
  for (int64_t j = 0; j < count; ++j)
    m = std::fmax(m, finite_abs(load_float(src, dtype, first + j)));
  return m;
}

} // namespace

// ---- scalar conversions (float_formats.h holds the one implementation) ------------------------------------------

uint8_t float_to_e4m3fn(float x) {
  return fmt::float_to_e4m3fn(x);
}

float e4m3fn_to_float(uint8_t code) {
  return fmt::e4m3fn_to_float(code);
}

uint16_t float_to_bf16(float x) {
  return fmt::float_to_bf16(x);
}

float bf16_to_float(uint16_t bits) {
  return fmt::bf16_to_float(bits);
}

uint16_t float_to_fp16(float x) {
  return fmt::float_to_fp16(x);
}

float fp16_to_float(uint16_t bits) {
  return fmt::fp16_to_float(bits);
}

float load_float(const void *data, FloatDtype dtype, int64_t i) {
  switch (dtype) {
  case FloatDtype::kFloat32: return static_cast<const float *>(data)[i];
  case FloatDtype::kFloat16: return fp16_to_float(static_cast<const uint16_t *>(data)[i]);
  case FloatDtype::kBFloat16: return bf16_to_float(static_cast<const uint16_t *>(data)[i]);
  }
  return std::numeric_limits<float>::quiet_NaN(); // unreachable for a validated dtype
}

void store_float(void *data, FloatDtype dtype, int64_t i, float x) {
  switch (dtype) {
  case FloatDtype::kFloat32: static_cast<float *>(data)[i] = x; break;
  case FloatDtype::kFloat16: static_cast<uint16_t *>(data)[i] = float_to_fp16(x); break;
  case FloatDtype::kBFloat16: static_cast<uint16_t *>(data)[i] = float_to_bf16(x); break;
  }
}

// ---- quantization ------------------------------------------------------------------------------------------------

Status quantize_fp8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, uint8_t *dst,
                            float *scales) {
  if (Status st = kernels::detail::check_matrix(src, dst, scales, rows, cols, src_dtype); st != kOk) return st;
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = scale_from_absmax(row_absmax(src, src_dtype, r * cols, cols), kernels::kFp8E4M3Max);
    scales[r] = scale;
    for (int64_t j = 0; j < cols; ++j) {
      dst[r * cols + j] = float_to_e4m3fn(load_float(src, src_dtype, r * cols + j) / scale);
    }
  }
  return kOk;
}

Status dequantize_fp8_rowwise(const uint8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                              FloatDtype dst_dtype) {
  if (Status st = kernels::detail::check_matrix(src, dst, scales, rows, cols, dst_dtype); st != kOk) return st;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      store_float(dst, dst_dtype, r * cols + j, e4m3fn_to_float(src[r * cols + j]) * scales[r]);
    }
  }
  return kOk;
}

Status quantize_fp8_per_tensor(const void *src, FloatDtype src_dtype, int64_t numel, uint8_t *dst, float *scale) {
  // A [1, numel] matrix has the same argument rules; the scale is written even for numel == 0.
  if (Status st = kernels::detail::check_matrix(src, dst, scale, 1, numel, src_dtype); st != kOk) return st;
  const float s = scale_from_absmax(row_absmax(src, src_dtype, 0, numel), kernels::kFp8E4M3Max);
  *scale = s;
  for (int64_t i = 0; i < numel; ++i)
    dst[i] = float_to_e4m3fn(load_float(src, src_dtype, i) / s);
  return kOk;
}

Status dequantize_fp8_per_tensor(const uint8_t *src, const float *scale, int64_t numel, void *dst,
                                 FloatDtype dst_dtype) {
  if (Status st = kernels::detail::check_matrix(src, dst, scale, 1, numel, dst_dtype); st != kOk) return st;
  for (int64_t i = 0; i < numel; ++i)
    store_float(dst, dst_dtype, i, e4m3fn_to_float(src[i]) * scale[0]);
  return kOk;
}

Status quantize_int8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, int8_t *dst,
                             float *scales) {
  if (Status st = kernels::detail::check_matrix(src, dst, scales, rows, cols, src_dtype); st != kOk) return st;
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = scale_from_absmax(row_absmax(src, src_dtype, r * cols, cols), kernels::kInt8Max);
    scales[r] = scale;
    for (int64_t j = 0; j < cols; ++j)
      dst[r * cols + j] = encode_int8(load_float(src, src_dtype, r * cols + j) / scale);
  }
  return kOk;
}

Status dequantize_int8_rowwise(const int8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                               FloatDtype dst_dtype) {
  if (Status st = kernels::detail::check_matrix(src, dst, scales, rows, cols, dst_dtype); st != kOk) return st;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) {
      store_float(dst, dst_dtype, r * cols + j, static_cast<float>(src[r * cols + j]) * scales[r]);
    }
  }
  return kOk;
}

Status cast_float(const void *src, FloatDtype src_dtype, void *dst, FloatDtype dst_dtype, int64_t numel) {
  if (numel < 0 || !kernels::detail::valid_dtype(src_dtype) || !kernels::detail::valid_dtype(dst_dtype)) {
    return kInvalidValue;
  }
  if (numel == 0) return kOk;
  if (src == nullptr || dst == nullptr) return kInvalidValue;
  if (src_dtype == dst_dtype) { // a plain copy keeps NaN payloads, as the kernel's cudaMemcpyAsync does
    std::memcpy(dst, src, static_cast<size_t>(numel) * kernels::float_dtype_size(src_dtype));
    return kOk;
  }
  for (int64_t i = 0; i < numel; ++i)
    store_float(dst, dst_dtype, i, load_float(src, src_dtype, i));
  return kOk;
}

} // namespace jit::ops::ref
