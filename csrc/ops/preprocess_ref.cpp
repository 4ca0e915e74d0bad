// CPU reference for kernels/preprocess.cu: uint8 NHWC frames -> normalized NCHW, with an optional resize.
//
// Written as the contract in jit_kernels.h reads: for every output pixel, resample in fp32 (none / bilinear with
// align_corners=False / area averaging), then out = fma(v, a[c], b[c]) rounded to the output dtype. Every fused
// multiply-add is an explicit std::fma, exactly where the kernel has an fmaf, and every other step is a single IEEE
// fp32 operation, so the results match the kernel bit for bit and do not depend on the compiler's contraction.
#include "ops/ops_ref.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace jit::ops::ref {
namespace {

using kernels::kOk;

// Bilinear sampling along one axis: source indices i0 <= i1 and the weight l of i1 (i0 gets 1 - l implicitly).
struct Tap {
  int64_t i0, i1;
  float l;
};

// align_corners=False: output index o samples source coordinate (o + 0.5) * in / out - 0.5, clamped at 0 (as
// torch's area_pixel_compute_source_index does for linear modes), which centres the output grid on the input grid.
Tap bilinear_tap(int64_t o, int64_t in, float scale) {
  const float s = std::fmax(std::fma(static_cast<float>(o) + 0.5f, scale, -0.5f), 0.0f);
  // int(s) <= in - 1 holds mathematically (s < in - 0.5); the clamp guards against rounding all the same.
  const int64_t i0 = std::min(static_cast<int64_t>(s), in - 1);
  return Tap{i0, std::min(i0 + 1, in - 1), s - static_cast<float>(i0)};
}

// Averaging window [start, end) of output index o along one axis, as adaptive_avg_pool2d: floor(o * in / out) to
// ceil((o + 1) * in / out). Windows tile the input exactly when in is a multiple of out; otherwise neighbours may
// share a pixel, and upsampling (out > in) repeats pixels.
void area_window(int64_t o, int64_t in, int64_t out, int64_t *start, int64_t *end) {
  *start = (o * in) / out;
  *end = ((o + 1) * in + out - 1) / out;
}

// The resampled value (0..255, fp32) of channel ch at output pixel (oy, ox) of one frame [h, w, c].
float sample(const uint8_t *frame, int64_t h, int64_t w, int64_t c, int64_t ch, int64_t oy, int64_t ox, int64_t out_h,
             int64_t out_w, ResizeMode mode) {
  auto pixel = [&](int64_t y, int64_t x) { return static_cast<float>(frame[(y * w + x) * c + ch]); };
  switch (mode) {
  case ResizeMode::kNone: return pixel(oy, ox);
  case ResizeMode::kBilinear: {
    const Tap ty = bilinear_tap(oy, h, static_cast<float>(h) / static_cast<float>(out_h));
    const Tap tx = bilinear_tap(ox, w, static_cast<float>(w) / static_cast<float>(out_w));
    const float p00 = pixel(ty.i0, tx.i0), p01 = pixel(ty.i0, tx.i1);
    const float p10 = pixel(ty.i1, tx.i0), p11 = pixel(ty.i1, tx.i1);
    // Lerp form a + l * (b - a): differences of bytes are exact, and one rounding per lerp keeps the result
    // within the two neighbours (no overshoot past 255 from rounding).
    const float top = std::fma(tx.l, p01 - p00, p00);
    const float bottom = std::fma(tx.l, p11 - p10, p10);
    return std::fma(ty.l, bottom - top, top);
  }
  case ResizeMode::kArea: {
    int64_t y0, y1, x0, x1;
    area_window(oy, h, out_h, &y0, &y1);
    area_window(ox, w, out_w, &x0, &x1);
    uint64_t sum = 0; // exact integer sum (64 bits: a whole-frame window of a huge frame still fits)
    for (int64_t y = y0; y < y1; ++y) {
      for (int64_t x = x0; x < x1; ++x)
        sum += frame[(y * w + x) * c + ch];
    }
    return static_cast<float>(sum) / static_cast<float>((y1 - y0) * (x1 - x0));
  }
  }
  return 0.0f; // unreachable: the mode was validated
}

} // namespace

Status preprocess_nhwc_u8(const uint8_t *src, int64_t n, int64_t h, int64_t w, int64_t c, int64_t out_h, int64_t out_w,
                          const float *mean, const float *std, ResizeMode mode, FloatDtype out_dtype, void *dst) {
  if (Status st = kernels::detail::check_preprocess(src, n, h, w, c, out_h, out_w, mean, std, mode, out_dtype, dst);
      st != kOk) {
    return st;
  }
  // The very same coefficients the kernel receives: (v / 255 - mean) / std == fma(v, a, b) up to rounding.
  std::vector<float> a(c), b(c);
  for (int64_t ch = 0; ch < c; ++ch)
    kernels::normalize_coefficients(mean[ch], std[ch], &a[ch], &b[ch]);

  const int64_t plane = out_h * out_w;
  for (int64_t img = 0; img < n; ++img) {
    const uint8_t *frame = src + img * h * w * c;
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t oy = 0; oy < out_h; ++oy) {
        for (int64_t ox = 0; ox < out_w; ++ox) {
          const float v = sample(frame, h, w, c, ch, oy, ox, out_h, out_w, mode);
          // dst is [n, c, out_h, out_w]: planar, one plane per channel.
          store_float(dst, out_dtype, (img * c + ch) * plane + oy * out_w + ox, std::fma(v, a[ch], b[ch]));
        }
      }
    }
  }
  return kOk;
}

} // namespace jit::ops::ref
