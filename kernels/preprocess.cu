// CUDA kernel: uint8 NHWC frames -> normalized NCHW fp32/fp16/bf16, with an optional fused resize.
// Contract in jit_kernels.h (preprocess_nhwc_u8); CPU oracle in csrc/ops/preprocess_ref.cpp.
//
// One thread per output pixel computes all of its channels. The grid is 3-D (x: output columns, y: output rows,
// z: frames) so no thread ever divides to find its coordinates, and the per-row bilinear/area terms are uniform
// across a block. Reads are byte loads of C adjacent channels (neighbouring threads read neighbouring pixels, so a
// warp touches a few contiguous 32-byte sectors); writes are coalesced per output plane. The arithmetic follows
// the contract's op order with explicit fmaf, so nvcc's contraction cannot change a single bit versus the CPU.
#include "convert.cuh"
#include "jit_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace jit::kernels {
namespace {

constexpr int kThreadsX = 128;        // output columns per block; 224/256/512-wide outputs waste few threads
constexpr int64_t kMaxGridYZ = 65535; // CUDA's limit for gridDim.y and gridDim.z; loops cover larger sizes

// Everything the kernel needs, passed by value (about 200 bytes, far below the 4 KiB parameter limit), so mean and
// std need no device copy and no synchronization.
struct Params {
  const uint8_t *src; // [n, h, w, c]
  void *dst;          // [n, c, out_h, out_w]
  int64_t n, h, w, c, out_h, out_w;
  float scale_y, scale_x; // in / out, for bilinear source coordinates
  ResizeMode mode;
  float a[kMaxChannels], b[kMaxChannels]; // out = fma(v, a, b), see normalize_coefficients
};

using detail::from_float;

// One axis of bilinear sampling with align_corners=False: the two source indices and the weight of the second.
struct Tap {
  int64_t i0, i1;
  float l;
};

__device__ __forceinline__ Tap bilinear_tap(int64_t o, int64_t in, float scale) {
  // torch's area_pixel_compute_source_index: (o + 0.5) * scale - 0.5, clamped at 0 for linear modes.
  const float s = fmaxf(fmaf(static_cast<float>(o) + 0.5f, scale, -0.5f), 0.0f);
  const int64_t t = static_cast<int64_t>(s); // s >= 0, so truncation is floor
  const int64_t i0 = t < in - 1 ? t : in - 1;
  return Tap{i0, i0 + 1 < in ? i0 + 1 : in - 1, s - static_cast<float>(i0)};
}

// adaptive_avg_pool2d's window [start, end) along one axis: floor(o * in / out) to ceil((o + 1) * in / out).
__device__ __forceinline__ void area_window(int64_t o, int64_t in, int64_t out, int64_t *start, int64_t *end) {
  *start = (o * in) / out;
  *end = ((o + 1) * in + out - 1) / out;
}

// kC > 0 fixes the channel count at compile time (the common RGB case unrolls); kC == 0 reads it from p.c.
template <typename OutT, int kC> __global__ void __launch_bounds__(kThreadsX) preprocess_kernel(const Params p) {
  const int C = kC > 0 ? kC : static_cast<int>(p.c);
  OutT *const dst = static_cast<OutT *>(p.dst);
  const int64_t plane = p.out_h * p.out_w;

  for (int64_t img = blockIdx.z; img < p.n; img += gridDim.z) {
    const uint8_t *const frame = p.src + img * p.h * p.w * C;
    OutT *const out_img = dst + img * C * plane;
    for (int64_t oy = blockIdx.y; oy < p.out_h; oy += gridDim.y) {
      for (int64_t ox = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; ox < p.out_w;
           ox += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        OutT *const out_px = out_img + oy * p.out_w + ox; // channel c lives at out_px[c * plane]

        if (p.mode == ResizeMode::kNone) {
          const uint8_t *px = frame + (oy * p.w + ox) * C;
#pragma unroll
          for (int c = 0; c < (kC > 0 ? kC : kMaxChannels); ++c) {
            if (kC == 0 && c >= C) break;
            out_px[c * plane] = from_float<OutT>(fmaf(static_cast<float>(px[c]), p.a[c], p.b[c]));
          }
        } else if (p.mode == ResizeMode::kBilinear) {
          const Tap ty = bilinear_tap(oy, p.h, p.scale_y);
          const Tap tx = bilinear_tap(ox, p.w, p.scale_x);
          const uint8_t *r0 = frame + ty.i0 * p.w * C, *r1 = frame + ty.i1 * p.w * C;
#pragma unroll
          for (int c = 0; c < (kC > 0 ? kC : kMaxChannels); ++c) {
            if (kC == 0 && c >= C) break;
            const float p00 = r0[tx.i0 * C + c], p01 = r0[tx.i1 * C + c];
            const float p10 = r1[tx.i0 * C + c], p11 = r1[tx.i1 * C + c];
            const float top = fmaf(tx.l, p01 - p00, p00);
            const float bottom = fmaf(tx.l, p11 - p10, p10);
            const float v = fmaf(ty.l, bottom - top, top);
            out_px[c * plane] = from_float<OutT>(fmaf(v, p.a[c], p.b[c]));
          }
        } else { // kArea
          int64_t y0, y1, x0, x1;
          area_window(oy, p.h, p.out_h, &y0, &y1);
          area_window(ox, p.w, p.out_w, &x0, &x1);
          const float count = static_cast<float>((y1 - y0) * (x1 - x0));
          uint64_t sum[kC > 0 ? kC : kMaxChannels] = {}; // 64 bits like the reference: huge windows cannot wrap
          for (int64_t y = y0; y < y1; ++y) {
            const uint8_t *row = frame + (y * p.w + x0) * C;
            for (int64_t x = 0; x < x1 - x0; ++x) {
#pragma unroll
              for (int c = 0; c < (kC > 0 ? kC : kMaxChannels); ++c) {
                if (kC == 0 && c >= C) break;
                sum[c] += row[x * C + c];
              }
            }
          }
#pragma unroll
          for (int c = 0; c < (kC > 0 ? kC : kMaxChannels); ++c) {
            if (kC == 0 && c >= C) break;
            const float v = static_cast<float>(sum[c]) / count; // exact integer sum, one IEEE division
            out_px[c * plane] = from_float<OutT>(fmaf(v, p.a[c], p.b[c]));
          }
        }
      }
    }
  }
}

template <typename OutT> Status launch(const Params &p, cudaStream_t stream) {
  const dim3 block(kThreadsX);
  const dim3 grid(static_cast<unsigned>((p.out_w + kThreadsX - 1) / kThreadsX),
                  static_cast<unsigned>(std::min(p.out_h, kMaxGridYZ)),
                  static_cast<unsigned>(std::min(p.n, kMaxGridYZ)));
  if (p.c == 3) {
    preprocess_kernel<OutT, 3><<<grid, block, 0, stream>>>(p);
  } else {
    preprocess_kernel<OutT, 0><<<grid, block, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

} // namespace

Status preprocess_nhwc_u8(const uint8_t *src, int64_t n, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                          const float *mean, const float *std, ResizeMode mode, FloatDtype out_dtype, void *dst,
                          void *stream) {
  if (Status st = detail::check_preprocess(src, n, h, w, c, out_h, out_w, mean, std, mode, out_dtype, dst); st != kOk) {
    return st;
  }
  if (n == 0) return kOk;
  // gridDim.x covers the output width in one go: 128 * (2^31 - 1) columns is no practical limit, but say so.
  if ((out_w + kThreadsX - 1) / kThreadsX > INT32_MAX) return kInvalidValue;

  Params p{};
  p.src = src;
  p.dst = dst;
  p.n = n;
  p.h = h;
  p.w = w;
  p.c = c;
  p.out_h = out_h;
  p.out_w = out_w;
  p.scale_y = static_cast<float>(h) / static_cast<float>(out_h);
  p.scale_x = static_cast<float>(w) / static_cast<float>(out_w);
  p.mode = mode;
  for (int64_t i = 0; i < c; ++i)
    normalize_coefficients(mean[i], std[i], &p.a[i], &p.b[i]);

  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (out_dtype) {
  case FloatDtype::kFloat32: return launch<float>(p, s);
  case FloatDtype::kFloat16: return launch<__half>(p, s);
  case FloatDtype::kBFloat16: return launch<__nv_bfloat16>(p, s);
  }
  return kInvalidValue;
}

} // namespace jit::kernels
