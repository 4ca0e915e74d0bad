// Lossy transport (transport.h): the quantize kernels' contract on the CPU, applied per output in
// blocks of rows (or samples) spread over the thread pool. Every block is a whole number of rows,
// so the result is the same bits for any thread count.
//
// float32 outputs (the common case) take loops specialised here on the inline conversions of
// float_formats.h, the same code the CPU references run, so the bits are the references' (and the
// kernels'); tests/cpp/ops/test_transport.cpp compares them. Other dtypes call the references.
#include "ops/transport.h"

#include <algorithm>
#include <array>

#include "common/thread_pool.h"
#include "ops/float_formats.h"
#include "ops/ops_ref.h"

namespace jit::ops {
namespace {

using kernels::FloatDtype;

// Elements per parallel task: big enough that the pool's overhead vanishes, small enough that a
// [64, 77, 4096] output spreads over every core.
constexpr int64_t kBlockElements = int64_t{1} << 16;

struct Mode {
  Transport mode;
  std::string_view name;
};
constexpr Mode kModes[] = {
    {Transport::kExact, "exact"},          {Transport::kBFloat16, "bf16"},
    {Transport::kFloat16, "fp16"},         {Transport::kFp8Rowwise, "fp8_rowwise"},
    {Transport::kFp8Tensor, "fp8_tensor"}, {Transport::kInt8Rowwise, "int8_rowwise"},
};

std::optional<FloatDtype> float_dtype(DType dtype) {
  switch (dtype) {
  case DType::kFloat32: return FloatDtype::kFloat32;
  case DType::kFloat16: return FloatDtype::kFloat16;
  case DType::kBFloat16: return FloatDtype::kBFloat16;
  default: return std::nullopt;
  }
}

// The dtype the values travel in.
DType wire_dtype(Transport mode, DType source) {
  switch (mode) {
  case Transport::kExact: return source;
  case Transport::kBFloat16: return DType::kBFloat16;
  case Transport::kFloat16: return DType::kFloat16;
  case Transport::kFp8Rowwise:
  case Transport::kFp8Tensor: return DType::kFloat8E4M3;
  case Transport::kInt8Rowwise: return DType::kInt8;
  }
  return source;
}

// [rows, cols] of a rowwise mode; a rank-1 output has one element per row.
struct Rows {
  int64_t rows;
  int64_t cols;
  Shape scales_shape;
};

Rows rows_of(const Shape &shape) {
  if (shape.size() <= 1) return {shape.empty() ? 1 : shape[0], 1, shape};
  Shape lead(shape.begin(), shape.end() - 1);
  int64_t rows = 1;
  for (int64_t d : lead)
    rows *= d;
  return {rows, shape.back(), lead};
}

int64_t numel_of(const Shape &shape) {
  const std::optional<uint64_t> n = shape_numel(shape);
  if (!n) throw TransportError("invalid shape");
  return static_cast<int64_t>(*n);
}

// Runs fn(first, count) over [0, n) in blocks of `per_block` (at least 1).
template <typename Fn> void for_blocks(int64_t n, int64_t per_block, size_t max_threads, Fn fn) {
  if (n <= 0) return;
  per_block = std::max<int64_t>(per_block, 1);
  const int64_t blocks = (n + per_block - 1) / per_block;
  parallel_for(
      static_cast<size_t>(blocks),
      [&](size_t b) {
        const int64_t first = static_cast<int64_t>(b) * per_block;
        fn(first, std::min(per_block, n - first));
      },
      max_threads);
}

// The references only ever fail argument checks (kernels::status_string lives with the kernels).
void check(kernels::Status status, const std::string &what) {
  if (status != kernels::kOk)
    throw TransportError(what + ": invalid arguments (status " + std::to_string(status) + ")");
}

const uint8_t *at(const void *p, int64_t element, size_t itemsize) {
  return static_cast<const uint8_t *>(p) + static_cast<size_t>(element) * itemsize;
}
uint8_t *at(void *p, int64_t element, size_t itemsize) {
  return static_cast<uint8_t *>(p) + static_cast<size_t>(element) * itemsize;
}

// ---- float32 fast loops (the references' formulas, without their per-element dtype dispatch) ----

float absmax_f32(const float *x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i)
    m = std::fmax(m, fmt::finite_abs(x[i]));
  return m;
}

// Quantizes `rows` rows of `cols` float32 values: one scale per row (qmax 448: fp8, 127: int8).
void quantize_rows_f32(const float *src, int64_t rows, int64_t cols, bool fp8, uint8_t *dst, float *scales) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *x = src + r * cols;
    uint8_t *out = dst + r * cols;
    const float scale = fmt::scale_from_absmax(absmax_f32(x, cols), fp8 ? kernels::kFp8E4M3Max : kernels::kInt8Max);
    scales[r] = scale;
    if (fp8) {
      for (int64_t j = 0; j < cols; ++j)
        out[j] = fmt::float_to_e4m3fn_branchless(x[j] / scale);
    } else {
      for (int64_t j = 0; j < cols; ++j)
        out[j] = static_cast<uint8_t>(fmt::encode_int8_branchless(x[j] / scale));
    }
  }
}

// All 256 e4m3fn codes as float32 (exact), so restoring is one load and one multiply.
const std::array<float, 256> &e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c)
      t[static_cast<size_t>(c)] = fmt::e4m3fn_to_float(static_cast<uint8_t>(c));
    return t;
  }();
  return table;
}

// dst[r, j] = value(code[r, j]) * scales[r] in float32, for `rows` rows of `cols`.
void dequantize_rows_f32(const uint8_t *src, const float *scales, int64_t rows, int64_t cols, bool fp8, float *dst) {
  const std::array<float, 256> &table = e4m3_table();
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t *codes = src + r * cols;
    float *out = dst + r * cols;
    const float scale = scales[r];
    if (fp8) {
      for (int64_t j = 0; j < cols; ++j)
        out[j] = table[codes[j]] * scale;
    } else {
      for (int64_t j = 0; j < cols; ++j)
        out[j] = static_cast<float>(static_cast<int8_t>(codes[j])) * scale;
    }
  }
}

void cast_from_f32(const float *src, int64_t n, DType to, uint16_t *dst) {
  if (to == DType::kBFloat16) {
    for (int64_t i = 0; i < n; ++i)
      dst[i] = fmt::float_to_bf16(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i)
      dst[i] = fmt::float_to_fp16_branchless(src[i]);
  }
}

void cast_to_f32(const uint16_t *src, int64_t n, DType from, float *dst) {
  if (from == DType::kBFloat16) {
    for (int64_t i = 0; i < n; ++i)
      dst[i] = fmt::bf16_to_float(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i)
      dst[i] = fmt::fp16_to_float(src[i]);
  }
}

// The scales an answer must carry for `values` under `mode`.
Shape expected_scales_shape(Transport mode, const Shape &values) {
  if (mode == Transport::kFp8Tensor) return Shape{values.empty() ? 1 : values[0]};
  return rows_of(values).scales_shape;
}

std::string shape_text(const Shape &s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i)
    out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

} // namespace

std::string_view transport_name(Transport mode) {
  for (const Mode &m : kModes)
    if (m.mode == mode) return m.name;
  return "exact";
}

std::optional<Transport> transport_from_name(std::string_view name) {
  for (const Mode &m : kModes)
    if (m.name == name) return m.mode;
  return std::nullopt;
}

std::string transport_names() {
  std::string out;
  for (const Mode &m : kModes)
    out += (out.empty() ? "\"" : ", \"") + std::string(m.name) + "\"";
  return out;
}

bool transport_applies(Transport mode, DType dtype) {
  if (mode == Transport::kExact || !float_dtype(dtype)) return false;
  return wire_dtype(mode, dtype) != dtype;
}

bool transport_has_scales(Transport mode) {
  return mode == Transport::kFp8Rowwise || mode == Transport::kFp8Tensor || mode == Transport::kInt8Rowwise;
}

WireTensor encode_for_transport(const TensorView &output, Transport mode, size_t max_threads) {
  if (!transport_applies(mode, output.dtype))
    throw TransportError("output '" + output.name + "' (" + std::string(dtype_name(output.dtype)) +
                         ") cannot travel as " + std::string(transport_name(mode)));
  if (output.shape.empty()) throw TransportError("output '" + output.name + "' has no batch dimension");
  const FloatDtype src_dtype = *float_dtype(output.dtype);
  const size_t src_size = dtype_itemsize(output.dtype);
  const int64_t numel = numel_of(output.shape);
  const std::string what = "transport " + std::string(transport_name(mode)) + " of '" + output.name + "'";
  WireTensor out{make_tensor(output.name, wire_dtype(mode, output.dtype), output.shape), std::nullopt};
  void *values = const_cast<void *>(out.values.data);

  switch (mode) {
  case Transport::kBFloat16:
  case Transport::kFloat16: {
    const FloatDtype dst_dtype = *float_dtype(out.values.dtype);
    const size_t dst_size = dtype_itemsize(out.values.dtype);
    for_blocks(numel, kBlockElements, max_threads, [&](int64_t first, int64_t count) {
      if (output.dtype == DType::kFloat32) {
        cast_from_f32(static_cast<const float *>(output.data) + first, count, out.values.dtype,
                      reinterpret_cast<uint16_t *>(at(values, first, dst_size)));
        return;
      }
      check(ref::cast_float(at(output.data, first, src_size), src_dtype, at(values, first, dst_size), dst_dtype, count),
            what);
    });
    return out;
  }
  case Transport::kFp8Rowwise:
  case Transport::kInt8Rowwise: {
    const Rows r = rows_of(output.shape);
    out.scales = make_tensor(output.name, DType::kFloat32, r.scales_shape);
    float *scales = static_cast<float *>(const_cast<void *>(out.scales->data));
    for_blocks(r.rows, kBlockElements / std::max<int64_t>(r.cols, 1), max_threads, [&](int64_t first, int64_t count) {
      const void *src = at(output.data, first * r.cols, src_size);
      if (output.dtype == DType::kFloat32) {
        quantize_rows_f32(static_cast<const float *>(src), count, r.cols, mode == Transport::kFp8Rowwise,
                          at(values, first * r.cols, 1), scales + first);
        return;
      }
      if (mode == Transport::kFp8Rowwise) {
        check(ref::quantize_fp8_rowwise(src, src_dtype, count, r.cols, at(values, first * r.cols, 1), scales + first),
              what);
      } else {
        check(ref::quantize_int8_rowwise(src, src_dtype, count, r.cols,
                                         reinterpret_cast<int8_t *>(at(values, first * r.cols, 1)), scales + first),
              what);
      }
    });
    return out;
  }
  case Transport::kFp8Tensor: {
    const int64_t batch = output.shape[0];
    const int64_t per_sample = batch > 0 ? numel / batch : 0;
    out.scales = make_tensor(output.name, DType::kFloat32, Shape{batch});
    float *scales = static_cast<float *>(const_cast<void *>(out.scales->data));
    for_blocks(batch, 1, max_threads, [&](int64_t sample, int64_t) {
      if (output.dtype == DType::kFloat32) {
        quantize_rows_f32(static_cast<const float *>(output.data) + sample * per_sample, 1, per_sample, true,
                          at(values, sample * per_sample, 1), scales + sample);
        return;
      }
      check(ref::quantize_fp8_per_tensor(at(output.data, sample * per_sample, src_size), src_dtype, per_sample,
                                         at(values, sample * per_sample, 1), scales + sample),
            what);
    });
    return out;
  }
  case Transport::kExact: break;
  }
  throw TransportError(what + ": unsupported mode");
}

Tensor decode_from_transport(const TensorView &values, const TensorView *scales, Transport mode, DType dtype,
                             size_t max_threads) {
  const std::string what = "transport " + std::string(transport_name(mode)) + " of '" + values.name + "'";
  const std::optional<FloatDtype> dst_dtype = float_dtype(dtype);
  if (!dst_dtype) throw TransportError(what + ": cannot restore to " + std::string(dtype_name(dtype)));
  if (mode == Transport::kExact) throw TransportError(what + ": nothing to restore");
  const DType expected = wire_dtype(mode, dtype);
  if (values.dtype != expected)
    throw TransportError(what + ": values are " + std::string(dtype_name(values.dtype)) + ", expected " +
                         std::string(dtype_name(expected)));
  if (values.shape.empty()) throw TransportError(what + ": values have no batch dimension");
  const int64_t numel = numel_of(values.shape);
  if (values.nbytes != static_cast<size_t>(numel) * dtype_itemsize(values.dtype))
    throw TransportError(what + ": values hold " + std::to_string(values.nbytes) + " bytes for shape " +
                         shape_text(values.shape));
  const float *scale_data = nullptr;
  if (transport_has_scales(mode)) {
    const Shape want = expected_scales_shape(mode, values.shape);
    if (scales == nullptr) throw TransportError(what + ": the answer has no scales");
    if (scales->dtype != DType::kFloat32 || scales->shape != want ||
        scales->nbytes != static_cast<size_t>(numel_of(want)) * 4)
      throw TransportError(what + ": scales must be float32 " + shape_text(want) + ", got " +
                           std::string(dtype_name(scales->dtype)) + " " + shape_text(scales->shape));
    scale_data = static_cast<const float *>(scales->data);
  }
  Tensor out = make_tensor(values.name, dtype, values.shape);
  void *dst = const_cast<void *>(out.data);
  const size_t dst_size = dtype_itemsize(dtype);

  switch (mode) {
  case Transport::kBFloat16:
  case Transport::kFloat16: {
    const FloatDtype src_dtype = *float_dtype(values.dtype);
    const size_t src_size = dtype_itemsize(values.dtype);
    for_blocks(numel, kBlockElements, max_threads, [&](int64_t first, int64_t count) {
      if (dtype == DType::kFloat32) {
        cast_to_f32(reinterpret_cast<const uint16_t *>(at(values.data, first, src_size)), count, values.dtype,
                    static_cast<float *>(dst) + first);
        return;
      }
      check(ref::cast_float(at(values.data, first, src_size), src_dtype, at(dst, first, dst_size), *dst_dtype, count),
            what);
    });
    return out;
  }
  case Transport::kFp8Rowwise:
  case Transport::kInt8Rowwise: {
    const Rows r = rows_of(values.shape);
    for_blocks(r.rows, kBlockElements / std::max<int64_t>(r.cols, 1), max_threads, [&](int64_t first, int64_t count) {
      const uint8_t *src = at(values.data, first * r.cols, 1);
      if (dtype == DType::kFloat32) {
        dequantize_rows_f32(src, scale_data + first, count, r.cols, mode == Transport::kFp8Rowwise,
                            static_cast<float *>(dst) + first * r.cols);
        return;
      }
      if (mode == Transport::kFp8Rowwise) {
        check(ref::dequantize_fp8_rowwise(src, scale_data + first, count, r.cols, at(dst, first * r.cols, dst_size),
                                          *dst_dtype),
              what);
      } else {
        check(ref::dequantize_int8_rowwise(reinterpret_cast<const int8_t *>(src), scale_data + first, count, r.cols,
                                           at(dst, first * r.cols, dst_size), *dst_dtype),
              what);
      }
    });
    return out;
  }
  case Transport::kFp8Tensor: {
    const int64_t batch = values.shape[0];
    const int64_t per_sample = batch > 0 ? numel / batch : 0;
    for_blocks(batch, 1, max_threads, [&](int64_t sample, int64_t) {
      if (dtype == DType::kFloat32) {
        dequantize_rows_f32(at(values.data, sample * per_sample, 1), scale_data + sample, 1, per_sample, true,
                            static_cast<float *>(dst) + sample * per_sample);
        return;
      }
      check(ref::dequantize_fp8_per_tensor(at(values.data, sample * per_sample, 1), scale_data + sample, per_sample,
                                           at(dst, sample * per_sample, dst_size), *dst_dtype),
            what);
    });
    return out;
  }
  case Transport::kExact: break;
  }
  throw TransportError(what + ": unsupported mode");
}

} // namespace jit::ops
