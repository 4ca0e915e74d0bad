// Python-facing adapters for the transport and preprocessing kernels (jit_embedding.ops): raw addresses in, one
// exception out. bindings.cpp exposes each function as `_C.ops_<name>`; jit_embedding/ops.py allocates the tensors,
// validates shapes and dtypes and passes their data_ptr()s here.
//
// Torch-free: tensors arrive as addresses (uintptr_t) plus sizes, dtypes as the integer values of
// kernels::FloatDtype / kernels::ResizeMode, and the place to run as a flag:
//   cuda == false  the CPU reference (jit::ops::ref, csrc/ops/ops_ref.h) on HOST addresses, with the GIL released
//                  for the whole loop (a [4096, 1024] matrix takes tens of ms), so other Python threads keep going;
//                  `stream` is ignored.
//   cuda == true   the CUDA kernel (kernels/jit_kernels.h) on DEVICE addresses, enqueued on `stream` (a
//                  cudaStream_t as an integer; 0 is the legacy default stream) without synchronizing. Only in a
//                  build with JIT_HAVE_KERNELS (torch with CUDA and nvcc); otherwise it throws std::runtime_error.
//                  The caller makes the tensors' device current.
// The shapes, scale rule, rounding and resize formulas are the kernels' contracts (jit_kernels.h); the CPU
// reference and the kernel produce the same bits.
//
// Errors: rejected arguments (kInvalidValue) throw std::invalid_argument with the function's name and
// kernels::status_string, e.g. "quantize_fp8_rowwise: invalid argument" (pybind11 raises ValueError); any other
// non-zero Status, a failed launch, throws std::runtime_error naming the CUDA error (RuntimeError).
// The caller guarantees that every address spans the sizes given; nothing here can check that.
#pragma once

#include <cstdint>
#include <vector>

namespace jit::python::ops {

// Whether this build has the CUDA kernels (JIT_HAVE_KERNELS): if not, every call with cuda == true throws.
bool has_cuda_kernels();

// src [rows, cols] of src_dtype -> dst [rows, cols] e4m3fn codes (bytes), scales [rows] fp32.
void quantize_fp8_rowwise(uintptr_t src, int src_dtype, int64_t rows, int64_t cols, uintptr_t dst, uintptr_t scales,
                          bool cuda, uintptr_t stream);

// src [rows, cols] e4m3fn codes, scales [rows] fp32 -> dst [rows, cols] of dst_dtype.
void dequantize_fp8_rowwise(uintptr_t src, uintptr_t scales, int64_t rows, int64_t cols, uintptr_t dst, int dst_dtype,
                            bool cuda, uintptr_t stream);

// src [numel] of src_dtype -> dst [numel] e4m3fn codes, scale [1] fp32.
void quantize_fp8_per_tensor(uintptr_t src, int src_dtype, int64_t numel, uintptr_t dst, uintptr_t scale, bool cuda,
                             uintptr_t stream);

// src [numel] e4m3fn codes, scale [1] fp32 -> dst [numel] of dst_dtype.
void dequantize_fp8_per_tensor(uintptr_t src, uintptr_t scale, int64_t numel, uintptr_t dst, int dst_dtype, bool cuda,
                               uintptr_t stream);

// src [rows, cols] of src_dtype -> dst [rows, cols] int8 in [-127, 127], scales [rows] fp32.
void quantize_int8_rowwise(uintptr_t src, int src_dtype, int64_t rows, int64_t cols, uintptr_t dst, uintptr_t scales,
                           bool cuda, uintptr_t stream);

// src [rows, cols] int8, scales [rows] fp32 -> dst [rows, cols] of dst_dtype.
void dequantize_int8_rowwise(uintptr_t src, uintptr_t scales, int64_t rows, int64_t cols, uintptr_t dst, int dst_dtype,
                             bool cuda, uintptr_t stream);

// src [numel] of src_dtype -> dst [numel] of dst_dtype (one rounding; equal dtypes copy). dst must not overlap src.
void cast_float(uintptr_t src, int src_dtype, uintptr_t dst, int dst_dtype, int64_t numel, bool cuda, uintptr_t stream);

// src [n, h, w, c] uint8 -> dst [n, c, out_h, out_w] of out_dtype, resized with `mode` and normalized with mean[c]
// and std[c] (host values in [0, 1] units). Throws std::invalid_argument when mean or std does not have c entries.
void preprocess_nhwc_u8(uintptr_t src, int64_t n, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                        const std::vector<float> &mean, const std::vector<float> &std, int mode, int out_dtype,
                        uintptr_t dst, bool cuda, uintptr_t stream);

} // namespace jit::python::ops
