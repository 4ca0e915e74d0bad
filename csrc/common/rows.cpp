// Row operations: padding on stack, cutting on split (see rows.h).
#include "common/rows.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace jit {

namespace {

// Bytes of one row of `shape` split around `dim`: outer runs before it, inner bytes after it.
void split_at(const Shape &shape, int dim, size_t itemsize, size_t &outer, size_t &inner) {
  outer = 1;
  inner = itemsize;
  for (int d = 1; d < dim; ++d)
    outer *= static_cast<size_t>(shape[static_cast<size_t>(d)]);
  for (size_t d = static_cast<size_t>(dim) + 1; d < shape.size(); ++d)
    inner *= static_cast<size_t>(shape[d]);
}

std::string shape_text(const Shape &shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

} // namespace

void fill_value(DType dtype, void *dst, size_t count, int64_t value) {
  auto fill = [&](auto v) {
    auto *p = static_cast<decltype(v) *>(dst);
    std::fill(p, p + count, v);
  };
  switch (dtype) {
  case DType::kFloat32: return fill(static_cast<float>(value));
  case DType::kInt8: return fill(static_cast<int8_t>(value));
  case DType::kUInt8:
  case DType::kBool: return fill(static_cast<uint8_t>(value));
  case DType::kInt16: return fill(static_cast<int16_t>(value));
  case DType::kInt32: return fill(static_cast<int32_t>(value));
  case DType::kInt64: return fill(static_cast<int64_t>(value));
  default:
    if (value != 0)
      throw std::invalid_argument("cannot pad a " + std::string(dtype_name(dtype)) + " tensor with a non-zero value");
    std::memset(dst, 0, count * dtype_itemsize(dtype));
  }
}

void copy_padded(const TensorView &src, int dim, int64_t target, uint8_t *dst) {
  size_t outer, inner;
  split_at(src.shape, dim, dtype_itemsize(src.dtype), outer, inner);
  const size_t len = static_cast<size_t>(src.shape[static_cast<size_t>(dim)]);
  const auto *in = static_cast<const uint8_t *>(src.data);
  const size_t runs = static_cast<size_t>(src.shape[0]) * outer;
  for (size_t r = 0; r < runs; ++r)
    std::memcpy(dst + r * static_cast<size_t>(target) * inner, in + r * len * inner, len * inner);
}

Tensor slice_rows(const Tensor &t, size_t row0, size_t rows, int dim, int64_t len) {
  const size_t total = static_cast<size_t>(t.shape[0]);
  const size_t row_bytes = total ? t.nbytes / total : 0;
  const bool cut = dim >= 1 && len >= 0 && len != t.shape[static_cast<size_t>(dim)];
  size_t outer = 1, inner = 0;
  if (cut) split_at(t.shape, dim, dtype_itemsize(t.dtype), outer, inner);
  if (!cut || (outer == 1 && rows == 1)) {
    // Contiguous in `t`: a view sharing its owner.
    Tensor v = t;
    v.shape[0] = static_cast<int64_t>(rows);
    if (cut) v.shape[static_cast<size_t>(dim)] = len;
    v.data = static_cast<const uint8_t *>(t.data) + row0 * row_bytes;
    v.nbytes = cut ? static_cast<size_t>(len) * inner : rows * row_bytes;
    return v;
  }
  Shape shape = t.shape;
  shape[0] = static_cast<int64_t>(rows);
  shape[static_cast<size_t>(dim)] = len;
  Tensor out = make_tensor(t.name, t.dtype, shape);
  const size_t full = static_cast<size_t>(t.shape[static_cast<size_t>(dim)]);
  const auto *in = static_cast<const uint8_t *>(t.data) + row0 * row_bytes;
  auto *dst = static_cast<uint8_t *>(const_cast<void *>(out.data));
  const size_t keep = static_cast<size_t>(len) * inner;
  for (size_t r = 0; r < rows * outer; ++r)
    std::memcpy(dst + r * keep, in + r * full * inner, keep);
  return out;
}

Tensor concat_rows(std::string name, const std::vector<TensorView> &parts, int dim, int64_t pad_value) {
  if (parts.empty()) throw std::invalid_argument("concat_rows: no parts for '" + name + "'");
  const TensorView &first = parts[0];
  if (first.shape.empty()) throw std::invalid_argument("concat_rows: '" + name + "' has no batch dimension");
  const bool padded = dim >= 1;
  if (padded && static_cast<size_t>(dim) >= first.shape.size())
    throw std::invalid_argument("concat_rows: '" + name + "' has no dimension " + std::to_string(dim));
  Shape shape = first.shape;
  shape[0] = 0;
  for (const TensorView &p : parts) {
    if (p.dtype != first.dtype || p.shape.size() != first.shape.size())
      throw std::invalid_argument("concat_rows: '" + name + "' parts of shapes " + shape_text(first.shape) + " " +
                                  std::string(dtype_name(first.dtype)) + " and " + shape_text(p.shape) + " " +
                                  std::string(dtype_name(p.dtype)) + " do not stack");
    for (size_t d = 1; d < shape.size(); ++d) {
      if (padded && d == static_cast<size_t>(dim)) {
        shape[d] = std::max(shape[d], p.shape[d]);
      } else if (p.shape[d] != first.shape[d]) {
        throw std::invalid_argument("concat_rows: '" + name + "' parts of shapes " + shape_text(first.shape) + " and " +
                                    shape_text(p.shape) + " differ in dimension " + std::to_string(d));
      }
    }
    shape[0] += p.shape[0];
  }
  Tensor out = make_tensor(std::move(name), first.dtype, shape);
  auto *dst = static_cast<uint8_t *>(const_cast<void *>(out.data));
  if (padded && pad_value != 0) fill_value(out.dtype, dst, out.nbytes / dtype_itemsize(out.dtype), pad_value);
  const size_t out_row_bytes = shape[0] ? out.nbytes / static_cast<size_t>(shape[0]) : 0;
  for (const TensorView &p : parts) {
    if (padded && p.shape[static_cast<size_t>(dim)] != shape[static_cast<size_t>(dim)]) {
      copy_padded(p, dim, shape[static_cast<size_t>(dim)], dst);
    } else if (p.nbytes) {
      std::memcpy(dst, p.data, p.nbytes);
    }
    dst += static_cast<size_t>(p.shape[0]) * out_row_bytes;
  }
  return out;
}

} // namespace jit
