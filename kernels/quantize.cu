// CUDA kernels for lossy transport: fp8 e4m3fn / int8 quantization with fp32 scales, and float casts.
// Contracts live in jit_kernels.h; the CPU oracle is csrc/ops/quantize_ref.cpp.
//
// All kernels are memory-bound. They read and write packs of kVec elements with one vector instruction when the
// pointers are aligned for it (and, for row-structured work, when a row holds a whole number of packs); otherwise
// the same kernels run with packs of one element. Bit-exactness with the CPU reference relies on IEEE fp32 division
// and multiplication, so this file must not be compiled with --use_fast_math (kernels/CMakeLists.txt does not).
#include "convert.cuh"
#include "jit_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <type_traits>

namespace jit::kernels {

static_assert(kInvalidValue == static_cast<Status>(cudaErrorInvalidValue),
              "kInvalidValue must be cudaErrorInvalidValue");

namespace {

constexpr int kThreads = 256; // threads per block for every kernel here
constexpr int kVec = 4;       // elements per vector pack (16 bytes of fp32, 4 bytes of codes)
constexpr int kWarp = 32;
constexpr int64_t kMaxBlocks = 1 << 20;         // grid-stride loops cover the rest; far below the 2^31 - 1 limit
constexpr int64_t kWarpRowMaxPacks = 4 * kWarp; // rows up to this many packs get one warp each, not a block

// ---- element conversions ---------------------------------------------------------------------------------------

using detail::from_float;
using detail::to_float;

// N elements moved with one load/store instruction; the alignment makes nvcc emit 64/128-bit accesses.
template <typename T, int N> struct alignas(sizeof(T) * N) Pack { T v[N]; };

// |x| for finite x, 0 for NaN and +-Inf: the absmax ignores non-finite values (see jit_kernels.h).
__device__ __forceinline__ float finite_abs(float x) {
  const float a = fabsf(x);
  return a <= FLT_MAX ? a : 0.0f; // NaN compares false, Inf is above FLT_MAX
}

__host__ __device__ __forceinline__ float scale_from_absmax(float absmax, float qmax) {
  const float scale = absmax / qmax;
  return scale > 0.0f ? scale : 1.0f; // an all-zero (or underflowing) row must not divide by zero
}

// fp8 e4m3fn codes. The __nv_fp8_e4m3 constructor rounds to nearest even with __NV_SATFINITE (+-Inf and values
// beyond 448 become +-448, NaN becomes 0x7F): a cvt instruction on sm_89+, exact software emulation below.
struct Fp8Codec {
  using Code = uint8_t;
  static constexpr float kMax = kFp8E4M3Max;
  __device__ __forceinline__ static Code encode(float x) { return __nv_fp8_e4m3(x).__x; }
  __device__ __forceinline__ static float decode(Code c) {
    __nv_fp8_e4m3 f;
    f.__x = c;
    return static_cast<float>(f);
  }
};

// Symmetric int8 codes in [-127, 127]. rintf rounds to nearest even like the reference's std::nearbyint; clamping
// in float first keeps the conversion defined for Inf, and NaN is mapped to 0 explicitly (fmaxf would pick -127).
struct Int8Codec {
  using Code = int8_t;
  static constexpr float kMax = kInt8Max;
  __device__ __forceinline__ static Code encode(float x) {
    if (isnan(x)) return 0;
    return static_cast<Code>(fminf(fmaxf(rintf(x), -kInt8Max), kInt8Max));
  }
  __device__ __forceinline__ static float decode(Code c) { return static_cast<float>(c); }
};

// ---- reductions ------------------------------------------------------------------------------------------------

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Max over the whole block, returned to every thread. blockDim.x must be a multiple of 32. Safe to call repeatedly
// with the same smem: the leading barrier keeps a new round from overwriting values still being read.
__device__ __forceinline__ float block_max(float v, float *smem) {
  v = warp_max(v);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  __syncthreads();
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = lane < static_cast<int>(blockDim.x / kWarp) ? smem[lane] : 0.0f;
  return warp_max(v);
}

// ---- rowwise quantization --------------------------------------------------------------------------------------

// One row per block (long rows) or per warp (kWarpPerRow, short rows): absmax over the row, then encode it. The
// second pass re-reads the row, which is still in L1/L2 for all but huge rows.
// src [rows, cols], dst [rows, cols], scales [rows]; N > 1 requires cols % N == 0 and aligned pointers.
template <typename T, class Codec, int N, bool kWarpPerRow>
__global__ void __launch_bounds__(kThreads)
    quantize_rowwise_kernel(const T *__restrict__ src, int64_t rows, int64_t cols,
                            typename Codec::Code *__restrict__ dst, float *__restrict__ scales) {
  using Code = typename Codec::Code;
  __shared__ float smem[kWarp];
  const int group = kWarpPerRow ? kWarp : static_cast<int>(blockDim.x);
  const int lane = kWarpPerRow ? threadIdx.x % kWarp : threadIdx.x;
  const int64_t rows_per_block = kWarpPerRow ? blockDim.x / kWarp : 1;
  const int64_t first_row = blockIdx.x * rows_per_block + (kWarpPerRow ? threadIdx.x / kWarp : 0);
  const int64_t packs = cols / N;

  // Every thread of a block walks the same rows in block mode, so block_max's barriers are reached uniformly.
  for (int64_t row = first_row; row < rows; row += gridDim.x * rows_per_block) {
    const auto *in = reinterpret_cast<const Pack<T, N> *>(src + row * cols);
    auto *out = reinterpret_cast<Pack<Code, N> *>(dst + row * cols);

    float m = 0.0f;
    for (int64_t p = lane; p < packs; p += group) {
      const Pack<T, N> x = in[p];
#pragma unroll
      for (int i = 0; i < N; ++i)
        m = fmaxf(m, finite_abs(to_float(x.v[i])));
    }
    m = kWarpPerRow ? warp_max(m) : block_max(m, smem);
    const float scale = scale_from_absmax(m, Codec::kMax);
    if (lane == 0) scales[row] = scale;

    for (int64_t p = lane; p < packs; p += group) {
      const Pack<T, N> x = in[p];
      Pack<Code, N> q;
#pragma unroll
      for (int i = 0; i < N; ++i)
        q.v[i] = Codec::encode(to_float(x.v[i]) / scale);
      out[p] = q;
    }
  }
}

// ---- elementwise maps ------------------------------------------------------------------------------------------

// dst[i] = op(src[i]) over [numel], in packs of N plus a scalar tail of numel % N elements. Op::apply<K>(x, y, first)
// converts K elements starting at flat index `first`; a pack never straddles a row where Op cares about rows.
template <class Op, int N>
__global__ void __launch_bounds__(kThreads)
    map_kernel(const typename Op::In *__restrict__ src, typename Op::Out *__restrict__ dst, int64_t numel, Op op) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  const int64_t packs = numel / N;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t p = tid; p < packs; p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Pack<In, N> x = reinterpret_cast<const Pack<In, N> *>(src)[p];
    Pack<Out, N> y;
    op.template apply<N>(x.v, y.v, p * N);
    reinterpret_cast<Pack<Out, N> *>(dst)[p] = y;
  }
  const int64_t e = packs * N + tid;
  if (e < numel) op.template apply<1>(src + e, dst + e, e);
}

template <typename InT, typename OutT> struct CastOp {
  using In = InT;
  using Out = OutT;
  template <int K> __device__ __forceinline__ void apply(const In *x, Out *y, int64_t) const {
#pragma unroll
    for (int i = 0; i < K; ++i)
      y[i] = from_float<Out>(to_float(x[i]));
  }
};

// Decodes codes with the scale of their row; single_scale (per-tensor) always uses scales[0].
template <class Codec, typename OutT> struct DequantOp {
  using In = typename Codec::Code;
  using Out = OutT;
  const float *scales;
  int64_t cols;
  bool single_scale;
  bool small; // numel < 2^32: a 32-bit division (several times cheaper than 64-bit) finds the row

  template <int K> __device__ __forceinline__ void apply(const In *x, Out *y, int64_t first) const {
    int64_t row = 0;
    if (!single_scale) row = small ? static_cast<uint32_t>(first) / static_cast<uint32_t>(cols) : first / cols;
    const float scale = scales[row];
#pragma unroll
    for (int i = 0; i < K; ++i)
      y[i] = from_float<Out>(Codec::decode(x[i]) * scale);
  }
};

// Per-tensor encode with the scale the previous launches left in *scale.
template <typename InT> struct QuantScalarOp {
  using In = InT;
  using Out = uint8_t;
  const float *scale;
  template <int K> __device__ __forceinline__ void apply(const In *x, Out *y, int64_t) const {
    const float s = *scale;
#pragma unroll
    for (int i = 0; i < K; ++i)
      y[i] = Fp8Codec::encode(to_float(x[i]) / s);
  }
};

// ---- per-tensor helpers ----------------------------------------------------------------------------------------

// Folds max |x| of the tensor into *absmax (zeroed beforehand). Non-negative floats order like their bit patterns,
// so an unsigned atomicMax on the bits is a float max.
template <typename T>
__global__ void __launch_bounds__(kThreads) absmax_kernel(const T *__restrict__ src, int64_t numel, float *absmax) {
  __shared__ float smem[kWarp];
  float m = 0.0f;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    m = fmaxf(m, finite_abs(to_float(src[i])));
  }
  m = block_max(m, smem);
  if (threadIdx.x == 0) atomicMax(reinterpret_cast<unsigned int *>(absmax), __float_as_uint(m));
}

__global__ void finalize_scale_kernel(float *scale) {
  *scale = scale_from_absmax(*scale, kFp8E4M3Max);
}

// ---- host-side dispatch ----------------------------------------------------------------------------------------

bool aligned(const void *p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks for `work` threads' worth of items (at least 1, so a scalar tail always has threads to run on).
unsigned blocks_for(int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(kMaxBlocks, (work + kThreads - 1) / kThreads)));
}

cudaStream_t as_stream(void *stream) {
  return static_cast<cudaStream_t>(stream);
}

// Calls f(T{}) with the CUDA element type of a FloatDtype (validated by the caller).
template <class F> void with_cuda_type(FloatDtype dtype, F &&f) {
  switch (dtype) {
  case FloatDtype::kFloat32: f(float{}); break;
  case FloatDtype::kFloat16: f(__half{}); break;
  case FloatDtype::kBFloat16: f(__nv_bfloat16{}); break;
  }
}

template <class Op>
Status launch_map(const typename Op::In *src, typename Op::Out *dst, int64_t numel, Op op, bool vector_ok,
                  cudaStream_t stream) {
  using In = typename Op::In;
  using Out = typename Op::Out;
  if (vector_ok && aligned(src, sizeof(In) * kVec) && aligned(dst, sizeof(Out) * kVec)) {
    map_kernel<Op, kVec><<<blocks_for(numel / kVec), kThreads, 0, stream>>>(src, dst, numel, op);
  } else {
    map_kernel<Op, 1><<<blocks_for(numel), kThreads, 0, stream>>>(src, dst, numel, op);
  }
  return cudaGetLastError();
}

template <class Codec>
Status quantize_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, typename Codec::Code *dst,
                        float *scales, void *stream) {
  if (Status st = detail::check_matrix(src, dst, scales, rows, cols, src_dtype); st != kOk) return st;
  if (rows == 0) return kOk;
  Status status = kOk;
  with_cuda_type(src_dtype, [&](auto tag) {
    using T = decltype(tag);
    const T *in = static_cast<const T *>(src);
    const bool vec = cols % kVec == 0 && aligned(in, sizeof(T) * kVec) && aligned(dst, kVec);
    const int64_t packs = vec ? cols / kVec : cols;
    const bool warp_per_row = packs <= kWarpRowMaxPacks;
    const int64_t rows_per_block = warp_per_row ? kThreads / kWarp : 1;
    const auto blocks = static_cast<unsigned>(std::min(kMaxBlocks, (rows + rows_per_block - 1) / rows_per_block));
    const cudaStream_t s = as_stream(stream);
    if (vec && warp_per_row) {
      quantize_rowwise_kernel<T, Codec, kVec, true><<<blocks, kThreads, 0, s>>>(in, rows, cols, dst, scales);
    } else if (vec) {
      quantize_rowwise_kernel<T, Codec, kVec, false><<<blocks, kThreads, 0, s>>>(in, rows, cols, dst, scales);
    } else if (warp_per_row) {
      quantize_rowwise_kernel<T, Codec, 1, true><<<blocks, kThreads, 0, s>>>(in, rows, cols, dst, scales);
    } else {
      quantize_rowwise_kernel<T, Codec, 1, false><<<blocks, kThreads, 0, s>>>(in, rows, cols, dst, scales);
    }
    status = cudaGetLastError();
  });
  return status;
}

template <class Codec>
Status dequantize(const typename Codec::Code *src, const float *scales, int64_t rows, int64_t cols, bool single_scale,
                  void *dst, FloatDtype dst_dtype, void *stream) {
  if (Status st = detail::check_matrix(src, dst, scales, rows, cols, dst_dtype); st != kOk) return st;
  const int64_t numel = rows * cols;
  if (numel == 0) return kOk;
  Status status = kOk;
  with_cuda_type(dst_dtype, [&](auto tag) {
    using T = decltype(tag);
    const DequantOp<Codec, T> op{scales, cols, single_scale, numel < (int64_t{1} << 32)};
    // A pack must stay within one row so that one scale serves all of its elements.
    const bool vector_ok = single_scale || cols % kVec == 0;
    status = launch_map(src, static_cast<T *>(dst), numel, op, vector_ok, as_stream(stream));
  });
  return status;
}

} // namespace

// ---- public API --------------------------------------------------------------------------------------------------

Status quantize_fp8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, uint8_t *dst,
                            float *scales, void *stream) {
  return quantize_rowwise<Fp8Codec>(src, src_dtype, rows, cols, dst, scales, stream);
}

Status dequantize_fp8_rowwise(const uint8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                              FloatDtype dst_dtype, void *stream) {
  return dequantize<Fp8Codec>(src, scales, rows, cols, false, dst, dst_dtype, stream);
}

Status quantize_int8_rowwise(const void *src, FloatDtype src_dtype, int64_t rows, int64_t cols, int8_t *dst,
                             float *scales, void *stream) {
  return quantize_rowwise<Int8Codec>(src, src_dtype, rows, cols, dst, scales, stream);
}

Status dequantize_int8_rowwise(const int8_t *src, const float *scales, int64_t rows, int64_t cols, void *dst,
                               FloatDtype dst_dtype, void *stream) {
  return dequantize<Int8Codec>(src, scales, rows, cols, false, dst, dst_dtype, stream);
}

Status quantize_fp8_per_tensor(const void *src, FloatDtype src_dtype, int64_t numel, uint8_t *dst, float *scale,
                               void *stream) {
  // A [1, numel] matrix has the same argument rules, except that the scale is always written.
  if (Status st = detail::check_matrix(src, dst, scale, 1, numel, src_dtype); st != kOk) return st;
  const cudaStream_t s = as_stream(stream);
  // *scale holds the absmax until finalize_scale_kernel turns it into the scale: no extra scratch allocation.
  if (cudaError_t err = cudaMemsetAsync(scale, 0, sizeof(float), s); err != cudaSuccess) return err;
  Status status = kOk;
  with_cuda_type(src_dtype, [&](auto tag) {
    using T = decltype(tag);
    const T *in = static_cast<const T *>(src);
    if (numel > 0) absmax_kernel<T><<<blocks_for(numel), kThreads, 0, s>>>(in, numel, scale);
    finalize_scale_kernel<<<1, 1, 0, s>>>(scale);
    if ((status = cudaGetLastError()) != kOk || numel == 0) return;
    status = launch_map(in, dst, numel, QuantScalarOp<T>{scale}, true, s);
  });
  return status;
}

Status dequantize_fp8_per_tensor(const uint8_t *src, const float *scale, int64_t numel, void *dst, FloatDtype dst_dtype,
                                 void *stream) {
  return dequantize<Fp8Codec>(src, scale, 1, numel, true, dst, dst_dtype, stream);
}

Status cast_float(const void *src, FloatDtype src_dtype, void *dst, FloatDtype dst_dtype, int64_t numel, void *stream) {
  if (numel < 0 || !detail::valid_dtype(src_dtype) || !detail::valid_dtype(dst_dtype)) return kInvalidValue;
  if (numel == 0) return kOk;
  if (src == nullptr || dst == nullptr) return kInvalidValue;
  const cudaStream_t s = as_stream(stream);
  if (src_dtype == dst_dtype) {
    return cudaMemcpyAsync(dst, src, static_cast<size_t>(numel) * float_dtype_size(src_dtype), cudaMemcpyDeviceToDevice,
                           s);
  }
  Status status = kOk;
  with_cuda_type(src_dtype, [&](auto in_tag) {
    with_cuda_type(dst_dtype, [&](auto out_tag) {
      using In = decltype(in_tag);
      using Out = decltype(out_tag);
      if constexpr (!std::is_same_v<In, Out>) { // equal types were copied above; skip instantiating them
        status = launch_map(static_cast<const In *>(src), static_cast<Out *>(dst), numel, CastOp<In, Out>{}, true, s);
      }
    });
  });
  return status;
}

const char *status_string(Status status) {
  if (status == kOk) return "ok";
  return cudaGetErrorString(static_cast<cudaError_t>(status));
}

} // namespace jit::kernels
