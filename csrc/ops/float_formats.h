// Software fp8 e4m3fn / bf16 / fp16 conversions, inline: the one implementation behind the CPU
// references (ops_ref.h declares them as functions) and the transport's fast loops (transport.cpp),
// which must produce the very same bits. Everything rounds to nearest, ties to even, with one IEEE
// fp32 operation per step; include it only in files built with -ffp-contract=off (jit_ops).
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace jit::ops::fmt {

inline uint32_t bits_of(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

inline float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// Rounds a truncated code to nearest, ties to even: `dropped` holds the bits cut off and `half` is
// the value of the highest of them. A carry out of the mantissa bumps the exponent field, as IEEE
// rounding requires. Shared by every narrowing conversion below so they round identically.
inline uint32_t round_half_even(uint32_t code, uint32_t dropped, uint32_t half) {
  return dropped > half || (dropped == half && (code & 1)) ? code + 1 : code;
}

// |x| for finite x, 0 for NaN and +-Inf: the absmax ignores non-finite values so one bad element
// cannot zero out the rest of its row (Inf would make the scale Inf and every finite code 0).
inline float finite_abs(float x) {
  const float a = std::fabs(x);
  return a <= FLT_MAX ? a : 0.0f;
}

// The shared scale rule (jit_kernels.h): absmax / qmax, or 1 when that is 0.
inline float scale_from_absmax(float absmax, float qmax) {
  const float scale = absmax / qmax;
  return scale > 0.0f ? scale : 1.0f;
}

// fp32 -> e4m3fn code (ops_ref.h has the contract).
inline uint8_t float_to_e4m3fn(float x) {
  if (std::isnan(x)) return 0x7F; // the canonical NaN, whatever the input's sign (as CUDA)
  const uint8_t sign = std::signbit(x) ? 0x80 : 0x00;
  const float a = std::fabs(x);
  // 464 is halfway between 448 (the largest finite, 0x7E) and the would-be next value 480. Ties go
  // to even, and 448's mantissa 0b110 is even, so only magnitudes strictly above 464 "round past"
  // 448; with saturation every such value (and Inf) becomes 448 anyway, so one comparison covers both.
  if (a >= 464.0f) return sign | 0x7E;
  // Subnormals (and zero): below the smallest normal 2^-6, codes 0..7 are multiples of 2^-9.
  // Scaling by 2^9 is exact, and nearbyint rounds to nearest even; a result of 8 is the smallest
  // normal, whose code is also 8.
  if (a < 0.015625f) return sign | static_cast<uint8_t>(std::nearbyint(a * 512.0f));
  // Normals: keep fp32's top 3 mantissa bits, round on the 20 dropped bits. A carry out of the
  // mantissa correctly bumps the exponent field; a < 464 guarantees the result stays at most 0x7E.
  const uint32_t b = bits_of(a);
  const uint32_t exponent = (b >> 23) - 127 + 7; // in [1, 15]
  const uint32_t mantissa = b & 0x7FFFFF;
  const uint32_t code = round_half_even((exponent << 3) | (mantissa >> 20), mantissa & 0xFFFFF, 0x80000);
  return sign | static_cast<uint8_t>(code);
}

// The same function as float_to_e4m3fn, written without branches (every case computed, then one
// selected) so that loops over it vectorise. test_transport.cpp checks the two agree on all 2^32
// inputs. Normals round on the bits they drop; subnormals round by adding 1.5 * 2^23, whose
// addition rounds to an integer, to nearest even, exactly as nearbyint does.
inline uint8_t float_to_e4m3fn_branchless(float x) {
  const uint32_t b = bits_of(x);
  const uint32_t sign = (b >> 24) & 0x80;
  const uint32_t abits = b & 0x7FFFFFFF;
  const float a = from_bits(abits);
  const uint32_t normal = ((abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20) - (120u << 3);
  const uint32_t subnormal = bits_of(a * 512.0f + 12582912.0f) - 0x4B400000u;
  uint32_t code = a < 0.015625f ? subnormal : normal;
  code = a >= 464.0f ? 0x7Eu : code;
  return abits > 0x7F800000u ? uint8_t{0x7F} : static_cast<uint8_t>(sign | code);
}

// e4m3fn code -> fp32, exact for all 256 codes: 0x7F and 0xFF are NaN, there is no infinity.
inline float e4m3fn_to_float(uint8_t code) {
  const bool negative = code & 0x80;
  const int exponent = (code >> 3) & 0xF;
  const int mantissa = code & 0x7;
  float v;
  if (exponent == 0xF && mantissa == 0x7) {
    v = std::numeric_limits<float>::quiet_NaN(); // e4m3fn spends only S.1111.111 on NaN
  } else if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -9); // subnormal: mantissa * 2^(1 - 7 - 3)
  } else {
    v = std::ldexp(static_cast<float>(8 + mantissa), exponent - 7 - 3); // 1.mmm * 2^(e - 7)
  }
  return negative ? -v : v;
}

// fp32 -> bf16 bits; NaN gives 0x7FFF. bf16 is the top half of an fp32 with the same exponent
// range, so rounding is purely on the low 16 bits; a carry propagates into the exponent (and up to
// Inf) exactly as round-to-nearest-even requires.
inline uint16_t float_to_bf16(float x) {
  if (std::isnan(x)) return 0x7FFF;
  const uint32_t b = bits_of(x);
  return static_cast<uint16_t>(round_half_even(b >> 16, b & 0xFFFF, 0x8000));
}

inline float bf16_to_float(uint16_t bits) {
  return from_bits(static_cast<uint32_t>(bits) << 16);
}

// fp32 -> IEEE fp16 bits, subnormals included; from 65520 up gives +-Inf; NaN gives 0x7FFF.
inline uint16_t float_to_fp16(float x) {
  if (std::isnan(x)) return 0x7FFF;
  const uint16_t sign = std::signbit(x) ? 0x8000 : 0x0000;
  const float a = std::fabs(x);
  // 65520 is halfway between the largest finite fp16 65504 (mantissa all ones, odd) and 65536:
  // ties go up to Inf.
  if (a >= 65520.0f) return sign | 0x7C00;
  // Subnormals (and zero): multiples of 2^-24 below 2^-14. Scaling by 2^24 is exact even for fp32
  // subnormals; a result of 1024 is the smallest normal, whose code is also 1024.
  if (a < 6.103515625e-05f) return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  const uint32_t b = bits_of(a);
  const uint32_t exponent = (b >> 23) - 127 + 15; // in [1, 30]
  const uint32_t mantissa = b & 0x7FFFFF;
  const uint32_t code = round_half_even((exponent << 10) | (mantissa >> 13), mantissa & 0x1FFF, 0x1000);
  return sign | static_cast<uint16_t>(code);
}

// float_to_fp16 without branches (see float_to_e4m3fn_branchless). Checked on all 2^32 inputs.
inline uint16_t float_to_fp16_branchless(float x) {
  const uint32_t b = bits_of(x);
  const uint32_t sign = (b >> 16) & 0x8000;
  const uint32_t abits = b & 0x7FFFFFFF;
  const float a = from_bits(abits);
  const uint32_t normal = ((abits + 0xFFF + ((abits >> 13) & 1)) >> 13) - (112u << 10);
  const uint32_t subnormal = bits_of(a * 16777216.0f + 12582912.0f) - 0x4B400000u;
  uint32_t code = a < 6.103515625e-05f ? subnormal : normal;
  code = a >= 65520.0f ? 0x7C00u : code;
  return abits > 0x7F800000u ? uint16_t{0x7FFF} : static_cast<uint16_t>(sign | code);
}

inline float fp16_to_float(uint16_t bits) {
  const bool negative = bits & 0x8000;
  const int exponent = (bits >> 10) & 0x1F;
  const int mantissa = bits & 0x3FF;
  float v;
  if (exponent == 0x1F) {
    v = mantissa ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
  } else if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -24); // subnormal: mantissa * 2^(1 - 15 - 10)
  } else {
    v = std::ldexp(static_cast<float>(1024 + mantissa), exponent - 15 - 10);
  }
  return negative ? -v : v;
}

// Symmetric int8: round to nearest even (nearbyint in the default rounding mode), clamp in float
// (so Inf is defined), NaN -> 0.
inline int8_t encode_int8(float x) {
  if (std::isnan(x)) return 0;
  const float r = std::nearbyint(x);
  return static_cast<int8_t>(std::fmin(std::fmax(r, -127.0f), 127.0f));
}

// encode_int8 without branches (see float_to_e4m3fn_branchless): clamping before rounding gives
// the same code, and the magic addition rounds to nearest even. Checked on all 2^32 inputs.
inline int8_t encode_int8_branchless(float x) {
  const float clamped = x < -127.0f ? -127.0f : (x > 127.0f ? 127.0f : x); // NaN passes through
  const float rounded = (clamped + 12582912.0f) - 12582912.0f;
  return x != x ? int8_t{0} : static_cast<int8_t>(static_cast<int32_t>(rounded));
}

} // namespace jit::ops::fmt
