// CPU references for the CUDA kernels in kernels/jit_kernels.h: the same functions with the same signatures minus
// the stream, in namespace jit::ops::ref. They serve twice: as the CPU fallback when there is no GPU (a server on a
// CPU host, a client dequantizing a response), and as the oracle the GPU tests compare the kernels against.
//
// Every function here produces exactly the bits its kernel produces (tests/cpp/ops/test_kernels_gpu.cpp checks it),
// so the code is written plainly, one element at a time, with the contract's operation order spelled out.
// All pointers are HOST pointers. Torch-free; needs no CUDA header.
//
// Contracts (scale rule, rounding, NaN/Inf handling, resize semantics, argument errors) are in jit_kernels.h.
#pragma once

#include <cstdint>

#include "jit_kernels.h"

namespace jit::ops::ref {

using kernels::FloatDtype;
using kernels::ResizeMode;
using kernels::Status;

// ---- scalar conversions (bit patterns; round to nearest, ties to even) -----------------------------------------

// fp32 -> fp8 e4m3fn code, like CUDA's __nv_fp8_e4m3(float) (__NV_SATFINITE): round to nearest even, including
// into the subnormal range (multiples of 2^-9); magnitudes above 448 and +-Inf saturate to +-448 (0x7E / 0xFE);
// NaN gives 0x7F. Values that round to zero keep their sign (-tiny -> 0x80).
uint8_t float_to_e4m3fn(float x);

// e4m3fn code -> fp32, exact for all 256 codes: 0x7F and 0xFF are NaN, there is no infinity.
float e4m3fn_to_float(uint8_t code);

// fp32 -> bf16 bits, round to nearest even; overflow gives +-Inf; NaN gives 0x7FFF (as __float2bfloat16_rn).
uint16_t float_to_bf16(float x);

// bf16 bits -> fp32 (exact: bf16 is the top half of an fp32).
float bf16_to_float(uint16_t bits);

// fp32 -> IEEE fp16 bits, round to nearest even including subnormals; magnitudes from 65520 up give +-Inf; NaN
// gives 0x7FFF (as __float2half_rn).
uint16_t float_to_fp16(float x);

// fp16 bits -> fp32 (exact).
float fp16_to_float(uint16_t bits);

// Reads element i of a [numel] array of `dtype` (fp32, or 16-bit patterns) as fp32. Exact.
float load_float(const void *data, FloatDtype dtype, int64_t i);

// Writes fp32 value x as element i of an array of `dtype`, rounding to nearest even for the 16-bit dtypes.
void store_float(void *data, FloatDtype dtype, int64_t i, float x);

// ---- quantization (quantize_ref.cpp) ---------------------------------------------------------------------------

// src [rows, cols] of src_dtype -> dst [rows, cols] e4m3fn codes, scales [rows] fp32. See jit_kernels.h.
Status quantize_fp8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, uint8_t *dst,
                            float *scales);

// src [rows, cols] e4m3fn codes, scales [rows] -> dst [rows, cols] of dst_dtype: e4m3fn_to_float(code) * scale.
Status dequantize_fp8_rowwise(const uint8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                              FloatDtype dst_dtype);

// src [numel] of src_dtype -> dst [numel] e4m3fn codes, scale [1] fp32 (one scale over the whole tensor).
Status quantize_fp8_per_tensor(const void *src, FloatDtype src_dtype, int64_t numel, uint8_t *dst, float *scale);

// src [numel] e4m3fn codes, scale [1] -> dst [numel] of dst_dtype.
Status dequantize_fp8_per_tensor(const uint8_t *src, const float *scale, int64_t numel, void *dst,
                                 FloatDtype dst_dtype);

// src [rows, cols] of src_dtype -> dst [rows, cols] int8 in [-127, 127], scales [rows] = absmax / 127.
Status quantize_int8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, int8_t *dst,
                             float *scales);

// src [rows, cols] int8, scales [rows] -> dst [rows, cols] of dst_dtype: float(code) * scale.
Status dequantize_int8_rowwise(const int8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                               FloatDtype dst_dtype);

// src [numel] of src_dtype -> dst [numel] of dst_dtype, through fp32 (one rounding). Equal dtypes copy.
Status cast_float(const void *src, FloatDtype src_dtype, void *dst, FloatDtype dst_dtype, int64_t numel);

// ---- preprocessing (preprocess_ref.cpp) ------------------------------------------------------------------------

// src [n, h, w, c] uint8 -> dst [n, c, out_h, out_w] of out_dtype, normalized with mean[c] / std[c] ([0, 1] units)
// after an optional resize (none, bilinear align_corners=False, area). See jit_kernels.h for the exact formulas.
Status preprocess_nhwc_u8(const uint8_t *src, int64_t n, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                          const float *mean, const float *std, ResizeMode mode, FloatDtype out_dtype, void *dst);

} // namespace jit::ops::ref
