// Torch-free CUDA kernels for jit-embedding: lossy transport (fp8/int8/bf16/fp16) and image preprocessing.
//
// Every function takes raw device pointers plus a CUDA stream passed as `void*` (a cudaStream_t; nullptr is the
// legacy default stream), enqueues its work on that stream and returns without synchronizing. This header does not
// include any CUDA header, so plain C++ code (the Python bindings, the server) can include it; only kernels/*.cu
// need nvcc.
//
// Status: every function returns 0 (kOk) on success, or a cudaError_t value: kInvalidValue (cudaErrorInvalidValue)
// for rejected arguments, detected before anything is enqueued, or the error of a failed launch
// (cudaGetLastError() right after it). Errors of kernels that fail while running surface later, at the next
// synchronizing call, as usual in CUDA.
//
// 16-bit floats: bf16 and fp16 values are raw IEEE bit patterns, held on the host as uint16_t.
// fp8: e4m3fn ("fn": finite, no infinities), bias 7, largest finite 448, NaN = 0x7F / 0xFF.
// NaN in float32 outputs: its payload and sign are unspecified. The GPU writes its canonical NaN (0x7FFFFFFF) where
// the x86 reference keeps the quiet NaN it decoded; every other bit, and 16-bit NaNs (0x7FFF), match.
//
// The CPU references in csrc/ops/ops_ref.h (namespace jit::ops::ref) have the same signatures minus the stream and
// produce bit-identical results (up to NaN payloads, above); tests/cpp/ops/test_kernels_gpu.cpp checks that on a GPU.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

namespace jit::kernels {

using Status = int;
constexpr Status kOk = 0;
constexpr Status kInvalidValue = 1; // == cudaErrorInvalidValue (static_assert in quantize.cu)

// Floating-point element types the kernels read and write. bf16/fp16 are 16-bit bit patterns (uint16_t on the host).
enum class FloatDtype : int32_t {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
};

// How preprocess_nhwc_u8 maps [H, W] to [out_h, out_w].
enum class ResizeMode : int32_t {
  kNone = 0,     // no resize: out_h == h and out_w == w are required
  kBilinear = 1, // torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False)
  kArea = 2,     // torch.nn.functional.adaptive_avg_pool2d (== interpolate(mode="area"))
};

constexpr float kFp8E4M3Max = 448.0f; // largest finite e4m3fn value: scales map a row's absmax onto it
constexpr float kInt8Max = 127.0f;    // symmetric int8: codes in [-127, 127], -128 is never produced
constexpr int kMaxChannels = 16;      // preprocess: mean/std travel by value in the kernel's parameters

// Bytes per element of a FloatDtype (0 for a value outside the enum).
inline size_t float_dtype_size(FloatDtype dtype) {
  switch (dtype) {
  case FloatDtype::kFloat32: return 4;
  case FloatDtype::kFloat16:
  case FloatDtype::kBFloat16: return 2;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Quantization. Scale rule shared by all the rowwise/per-tensor functions (qmax = 448 for fp8, 127 for int8):
//   absmax = max |x| over the row (or tensor), ignoring NaN and +-Inf, so one bad value cannot wipe out the row;
//   scale  = absmax / qmax, computed in fp32; a scale of 0 (all-zero row, or absmax so tiny it underflows) is
//            replaced by 1, so decoding never multiplies by 0 by surprise and encoding never divides by 0;
//   code   = encode(x / scale) with an IEEE fp32 division (no reciprocal: the CPU reference matches bit for bit);
//   decode = float(code) * scale (one fp32 multiply), then rounded to the output dtype to nearest, ties to even.
// fp8 encode: round to nearest even, saturating to +-448 (Inf too); NaN becomes 0x7F.
// int8 encode: round to nearest even, clamped to [-127, 127]; NaN becomes 0.
// ---------------------------------------------------------------------------------------------------------------

// Quantizes each row of a matrix to fp8 e4m3fn with one fp32 scale per row.
//   src    [rows, cols] of src_dtype, contiguous (device)
//   dst    [rows, cols] e4m3fn codes (device)
//   scales [rows] fp32 (device); row r decodes as e4m3_to_float(dst[r, j]) * scales[r]
// Rows with cols == 0 get scale 1. rows == 0 enqueues nothing. Runs one thread block (or one warp, for short rows)
// per row. Returns kInvalidValue for negative sizes, null pointers with a non-empty matrix, or a bad dtype.
Status quantize_fp8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, uint8_t *dst,
                            float *scales, void *stream);

// Inverse of quantize_fp8_rowwise: dst[r, j] = e4m3_to_float(src[r, j]) * scales[r], rounded to dst_dtype.
//   src [rows, cols] e4m3fn codes, scales [rows] fp32, dst [rows, cols] of dst_dtype (all device)
// Returns kInvalidValue for negative sizes, null pointers with a non-empty matrix, or a bad dtype.
Status dequantize_fp8_rowwise(const uint8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                              FloatDtype dst_dtype, void *stream);

// Quantizes a whole tensor to fp8 e4m3fn with a single fp32 scale (the scale rule above, over all elements).
//   src [numel] of src_dtype, dst [numel] e4m3fn codes, scale [1] fp32 (all device)
// The GPU version uses *scale as scratch for the absmax (memset, atomic max, finalize, then encode: four launches
// on `stream`), so *scale must not be read by other streams until this work is done. numel == 0 writes scale 1.
// Returns kInvalidValue for a negative numel, null pointers, or a bad dtype.
Status quantize_fp8_per_tensor(const void *src, FloatDtype src_dtype, int64_t numel, uint8_t *dst, float *scale,
                               void *stream);

// Inverse of quantize_fp8_per_tensor: dst[i] = e4m3_to_float(src[i]) * scale[0], rounded to dst_dtype.
//   src [numel] e4m3fn codes, scale [1] fp32, dst [numel] of dst_dtype (all device)
// Returns kInvalidValue for a negative numel, a null scale, null src/dst with numel > 0, or a bad dtype.
Status dequantize_fp8_per_tensor(const uint8_t *src, const float *scale, int64_t numel, void *dst, FloatDtype dst_dtype,
                                 void *stream);

// Quantizes each row to symmetric int8 with one fp32 scale per row (scale = absmax / 127).
//   src [rows, cols] of src_dtype, dst [rows, cols] int8 in [-127, 127], scales [rows] fp32 (all device)
// Every element satisfies |x - dst * scale| <= scale / 2 (up to fp32 rounding) unless x is NaN or Inf.
// Returns kInvalidValue for negative sizes, null pointers with a non-empty matrix, or a bad dtype.
Status quantize_int8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, int8_t *dst,
                             float *scales, void *stream);

// Inverse of quantize_int8_rowwise: dst[r, j] = float(src[r, j]) * scales[r], rounded to dst_dtype.
//   src [rows, cols] int8, scales [rows] fp32, dst [rows, cols] of dst_dtype (all device)
// Returns kInvalidValue for negative sizes, null pointers with a non-empty matrix, or a bad dtype.
Status dequantize_int8_rowwise(const int8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                               FloatDtype dst_dtype, void *stream);

// Converts numel elements between float dtypes: fp32 -> bf16/fp16 rounds to nearest even (overflow to fp16 gives
// Inf, NaN gives the canonical NaN 0x7FFF); bf16/fp16 -> fp32 is exact; bf16 <-> fp16 goes through fp32 (a single
// rounding). Equal dtypes copy.
//   src [numel] of src_dtype, dst [numel] of dst_dtype (device, not overlapping)
// Returns kInvalidValue for a negative numel, null pointers with numel > 0, or a bad dtype.
Status cast_float(const void *src, FloatDtype src_dtype, void *dst, FloatDtype dst_dtype, int64_t numel, void *stream);

// ---------------------------------------------------------------------------------------------------------------
// Preprocessing
// ---------------------------------------------------------------------------------------------------------------

// Turns uint8 frames into normalized planar floats, resizing on the way (one fused pass, no intermediate buffer).
//   src  [n, h, w, c] uint8, channels last (device)
//   mean [c], std [c] fp32 HOST pointers, in [0, 1] units like torchvision's Normalize (CLIP: 0.481.., 0.268..;
//        a VAE's [-1, 1] input: mean 0.5, std 0.5); copied into the launch parameters, so they may be freed on return
//   dst  [n, c, out_h, out_w] of out_dtype (device)
// For each output pixel, v = resample(src) in [0, 255] as fp32, then out = fma(v, a[c], b[c]) with
// a[c], b[c] = normalize_coefficients(mean[c], std[c]), rounded to out_dtype to nearest even.
// Resampling (fp32, the exact op order is part of the contract so the CPU reference matches bit for bit):
//   kNone:     v = src[n, y, x, c].
//   kBilinear: per axis, scale = float(in) / float(out); s = max(0, fma(float(o) + 0.5, scale, -0.5)); i0 = int(s)
//              (clamped to in - 1), i1 = min(i0 + 1, in - 1), l = s - float(i0); then with the four neighbours
//              top = fma(lx, p01 - p00, p00), bottom = fma(lx, p11 - p10, p10), v = fma(ly, bottom - top, top).
//              This is interpolate(align_corners=False, antialias=False) applied to the frame converted to fp32
//              (torch's uint8 fast path rounds its result to uint8; this keeps the fraction).
//   kArea:     the output pixel (oy, ox) averages rows [floor(oy*h/out_h), ceil((oy+1)*h/out_h)) and the columns
//              likewise: v = float(integer sum) / float(count), exactly adaptive_avg_pool2d's windows.
// n == 0 enqueues nothing. Returns kInvalidValue when c is not in [1, kMaxChannels], h, w, out_h or out_w < 1,
// n < 0, a std is 0 or not finite, a mean is not finite, kNone is asked with a size change, pointers are null with
// n > 0, or an enum is out of range.
Status preprocess_nhwc_u8(const uint8_t *src, int64_t n, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                          const float *mean, const float *std, ResizeMode mode, FloatDtype out_dtype, void *dst,
                          void *stream);

// The affine map out = fma(v, *a, *b) that equals (v / 255 - mean) / std up to fp32 rounding: a = 1 / (255 * std),
// b = -mean / std. Shared by the kernel and the CPU reference so both use the very same coefficients.
inline void normalize_coefficients(float mean, float std, float *a, float *b) {
  *a = 1.0f / (255.0f * std);
  *b = -mean / std;
}

// A short description of a Status (cudaGetErrorString for CUDA errors, "ok" for 0). Never null.
const char *status_string(Status status);

namespace detail {

// Argument checks shared by the kernels and the CPU references, so both reject exactly the same inputs.
inline bool valid_dtype(FloatDtype dtype) {
  return float_dtype_size(dtype) != 0;
}

inline Status check_matrix(const void *src, const void *dst, const void *scales, int64_t rows, int64_t cols,
                           FloatDtype dtype) {
  if (rows < 0 || cols < 0 || !valid_dtype(dtype)) return kInvalidValue;
  if (cols > 0 && rows > INT64_MAX / cols) return kInvalidValue; // rows * cols must be addressable
  if (rows > 0 && (scales == nullptr || (cols > 0 && (src == nullptr || dst == nullptr)))) return kInvalidValue;
  return kOk;
}

// Whether the product of non-negative factors fits in int64_t.
inline bool product_fits(int64_t a, int64_t b, int64_t c, int64_t d) {
  int64_t p = a;
  for (int64_t f : {b, c, d}) {
    if (f != 0 && p > INT64_MAX / f) return false;
    p *= f;
  }
  return true;
}

inline Status check_preprocess(const uint8_t *src, int64_t n, int64_t h, int64_t w, int64_t c, int64_t out_h,
                               int64_t out_w, const float *mean, const float *std, ResizeMode mode,
                               FloatDtype out_dtype, const void *dst) {
  if (n < 0 || h < 1 || w < 1 || out_h < 1 || out_w < 1 || c < 1 || c > kMaxChannels) return kInvalidValue;
  // Both element counts must be addressable, with room for the kernel to round out_w up to whole blocks.
  if (!product_fits(n, h, w, c) || !product_fits(n, c, out_h, out_w) || out_w > INT64_MAX / 2) return kInvalidValue;
  if (!valid_dtype(out_dtype)) return kInvalidValue;
  if (mode != ResizeMode::kNone && mode != ResizeMode::kBilinear && mode != ResizeMode::kArea) return kInvalidValue;
  if (mode == ResizeMode::kNone && (out_h != h || out_w != w)) return kInvalidValue;
  if (mean == nullptr || std == nullptr) return kInvalidValue;
  for (int64_t i = 0; i < c; ++i) {
    if (!std::isfinite(mean[i]) || !std::isfinite(std[i]) || std[i] == 0.0f) return kInvalidValue;
  }
  if (n > 0 && (src == nullptr || dst == nullptr)) return kInvalidValue;
  return kOk;
}

} // namespace detail
} // namespace jit::kernels
