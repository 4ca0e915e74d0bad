#include "common/types.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

namespace jit {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  size_t itemsize;
  bool floating;
};

// Names follow torch's dtype names so that Python wrappers map them without a table of their own.
constexpr std::array<DTypeInfo, 12> kDTypes = {{
    {DType::kFloat32, "float32", 4, true},
    {DType::kFloat16, "float16", 2, true},
    {DType::kBFloat16, "bfloat16", 2, true},
    {DType::kFloat8E4M3, "float8_e4m3fn", 1, true},
    {DType::kInt8, "int8", 1, false},
    {DType::kUInt8, "uint8", 1, false},
    {DType::kInt16, "int16", 2, false},
    {DType::kInt32, "int32", 4, false},
    {DType::kInt64, "int64", 8, false},
    {DType::kBool, "bool", 1, false},
    {DType::kStr, "str", 1, false},
    {DType::kBytes, "bytes", 1, false},
}};

const DTypeInfo &info(DType dtype) {
  return kDTypes[static_cast<size_t>(dtype)];
}

} // namespace

size_t dtype_itemsize(DType dtype) {
  return info(dtype).itemsize;
}
std::string_view dtype_name(DType dtype) {
  return info(dtype).name;
}
bool dtype_is_floating(DType dtype) {
  return info(dtype).floating;
}

std::optional<DType> dtype_from_name(std::string_view name) {
  for (const auto &d : kDTypes) {
    if (d.name == name) return d.dtype;
  }
  return std::nullopt;
}

std::optional<uint64_t> shape_numel(const Shape &shape) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

Tensor make_tensor(std::string name, DType dtype, Shape shape) {
  auto numel = shape_numel(shape);
  if (!numel) throw std::invalid_argument("make_tensor: invalid shape for '" + name + "'");
  Tensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.nbytes = *numel * dtype_itemsize(dtype);
  size_t alloc = (std::max<size_t>(t.nbytes, 1) + 63) / 64 * 64;
  void *p = std::aligned_alloc(64, alloc);
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, alloc);
  t.owner = std::shared_ptr<void>(p, [](void *q) { std::free(q); });
  t.data = p;
  return t;
}

} // namespace jit
